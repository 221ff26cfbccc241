"""Shared test helpers (importable as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class TinyViT(nn.Module):
    """A plain ViT on [0, 1] one-channel pixels with functional ReLUs: ``fused_attn`` picks
    ``F.scaled_dot_product_attention`` or an explicit softmax (whose probabilities it keeps in
    ``seen``); ``fixed`` (per block, (heads, N, N) logits) sets the attention by hand."""

    def __init__(self, dim: int = 8, heads: int = 2, depth: int = 2, patch: int = 4, classes: int = 3,
                 n_tokens: int = 7, fixed: list[torch.Tensor] | None = None, channels: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.n_heads, self.fixed, self.fused_attn, self.seen = heads, fixed, True, []
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim, generator=g) * 0.5)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(depth))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.fc = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: int) -> torch.Tensor:
        mask = None
        if self.fixed is not None:
            q, mask = q * 0, self.fixed[i]
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (0 if mask is None else mask)
        p = s.softmax(-1)
        if p.requires_grad:
            p.retain_grad()
        self.seen.append(p)
        return p @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        b, n, d = t.shape
        for i, (qkv, proj, fc) in enumerate(zip(self.qkv, self.proj, self.fc, strict=True)):
            q, k, v = (u.reshape(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)
                       for u in qkv(t).chunk(3, -1))
            t = t + proj(self.attend(q, k, v, i).transpose(1, 2).reshape(b, n, d))
            t = t + fc(F.relu(t))
        return self.head(t[:, 0])


def plain_vit(method: str, size: int, classes: int, channels: int = 3) -> nn.Module:
    """A small ViT with 4x4 patches for registry-wide tests of an attention method: ``TinyViT``, or
    for LeGrad (which needs a known family's final norm and head) a torchvision one."""
    if method == "legrad":
        import torchvision

        torch.manual_seed(0)
        net = torchvision.models.VisionTransformer(image_size=size, patch_size=4, num_layers=2, num_heads=2,
                                                   hidden_dim=8, mlp_dim=16, num_classes=classes)
        nn.init.normal_(net.heads.head.weight)  # torchvision starts the head at zero
        return net
    return TinyViT(channels=channels, classes=classes, n_tokens=(size // 4) ** 2 + 1)

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
