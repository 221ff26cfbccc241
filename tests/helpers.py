"""Shared test helpers (importable as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch
from torch import nn

from convscope.core.hooks import count_hooks


def model_state(net: nn.Module) -> dict:
    """Everything a method could leave changed on a module: each parameter's and buffer's
    identity, storage, strides (memory format) and values, ``requires_grad``, training flags,
    hooks and module attributes."""
    tensors = {f"p:{n}": p for n, p in net.named_parameters()}
    tensors.update({f"b:{n}": b for n, b in net.named_buffers()})
    return {
        "tensors": {k: (id(t), t.data_ptr(), t.stride(), t.detach().clone()) for k, t in tensors.items()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "training": {n: m.training for n, m in net.named_modules()},
        "hooks": count_hooks(net),
        "attrs": {n: sorted(vars(m)) for n, m in net.named_modules()},
    }


def assert_same_state(a: dict, b: dict) -> None:
    """Two :func:`model_state` snapshots agree (assertion messages name what changed)."""
    assert a["requires_grad"] == b["requires_grad"]
    assert a["training"] == b["training"]
    assert a["hooks"] == b["hooks"]
    assert a["attrs"] == b["attrs"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k, (ida, ptra, sta, va) in a["tensors"].items():
        idb, ptrb, stb, vb = b["tensors"][k]
        assert (ida, ptra, sta) == (idb, ptrb, stb), f"{k} changed (identity, storage or memory format)"
        assert torch.equal(va, vb), f"{k} changed value"


class MetricNet(nn.Module):
    """A plain model for the metric tests: conv, functional ReLU, pool, linear; 1 x 12 x 12
    pixels in [0, 1] (unnormalised), 3 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.max_pool2d(torch.nn.functional.relu(self.conv(x)), 2).flatten(1))


def metric_setup(seed: int = 0):
    """(net, loaded model, x (3, 1, 12, 12) with a zero pixel, random maps (3, 12, 12), predicted
    classes as NumPy) for the metric tests."""
    import convscope as cs

    torch.manual_seed(seed)
    net = MetricNet().eval()
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 12, "channels": 1},
                       class_names=["a", "b", "c"])
    x = torch.rand(3, 1, 12, 12)
    x[:, :, 0, 0] = 0.0
    maps = torch.randn(3, 12, 12)
    with torch.no_grad():
        y = net(x).argmax(1).numpy()
    return net, lm, x, maps, y


def grad_x_input(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Gradient x input of the target logit, channels summed (B, H, W): an explainer written with
    plain autograd, independent of convscope's methods."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).gather(1, t[:, None].long()).sum(), x)
    return (g * x).sum(1).detach()
