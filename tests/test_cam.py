"""The CAM family: oracles on tiny hand-built nets, token grids, several layers, the planted cue."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.core.errors import MethodError
from convscope.core.hooks import count_hooks
from convscope.models.tokens import grid_layout, to_grid

CAMS = ["cam", "gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam", "guided_gradcam"]
GRAD_RULES = ["gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam"]


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU (layer "act", the CAM layer) -> GAP -> linear."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, k)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.relu1(self.conv1(x)))).mean((2, 3)))


@pytest.fixture
def gapnet():
    torch.manual_seed(1)
    net = GapNet().eval()
    with torch.no_grad():
        net.conv2.bias.add_(0.3)  # most units active
    return net


@pytest.fixture
def xs():
    torch.manual_seed(2)
    return torch.randn(3, 2, 7, 9)


def _reference(net, x, targets):
    """Activations A and dS/dA by plain autograd, without convscope (numpy out)."""
    h = net.relu1(net.conv1(x))
    a = net.act(net.conv2(h)).detach().requires_grad_(True)
    logits = net.fc(a.mean((2, 3)))
    s = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (g,) = torch.autograd.grad(s, a)
    return a.detach().double().numpy(), g.double().numpy()


def _relu(m):
    return np.maximum(m, 0.0)


def _oracle(name, a, g, w_head=None, targets=None):
    """Independent numpy implementations of each rule, sample by sample, channel by channel."""
    out = []
    for b in range(a.shape[0]):
        A, G = a[b], g[b]
        m = np.zeros(A.shape[1:])
        for k in range(A.shape[0]):
            if name == "gradcam":
                m += G[k].mean() * A[k]
            elif name == "gradcam_pp":
                # g^2 / (2 g^2 + sum(A) g^3) simplifies to 1 / (2 + sum(A) g) where g != 0
                alpha = np.where(G[k] != 0, 1.0 / (2.0 + A[k].sum() * G[k]), 0.0)
                m += (alpha * np.maximum(G[k], 0)).sum() * A[k]
            elif name == "xgradcam":
                m += (A[k] * G[k]).sum() / A[k].sum() * A[k] if A[k].sum() != 0 else 0.0
            elif name == "hirescam":
                m += G[k] * A[k]
            elif name == "layercam":
                m += np.maximum(G[k], 0) * A[k]
            elif name == "cam":
                m += w_head[targets[b], k] * A[k]
        out.append(_relu(m))
    return np.stack(out)


@pytest.mark.parametrize("name", GRAD_RULES + ["cam"])
def test_rules_match_independent_reimplementation(name, gapnet, xs):
    targets = [0, 3, 1]
    e = cs.explain(gapnet, xs, method=name, layer="act", target=targets)
    a, g = _reference(gapnet, xs, targets)
    want = _oracle(name, a, g, gapnet.fc.weight.detach().double().numpy(), targets)
    assert e.map.shape == (3, 7, 9) and e.raw.shape == (3, 1, 7, 9)
    np.testing.assert_allclose(e.map.double().numpy(), want, rtol=1e-4, atol=1e-6)
    assert np.ptp(want) > 0 and list(e.targets) == targets
    assert count_hooks(gapnet) == 0


def test_cam_is_gradcam_and_hirescam_up_to_scale_on_a_gap_head(gapnet, xs):
    kw = dict(layer="act", target=[2, 2, 0])
    c = cs.explain(gapnet, xs, method="cam", **kw).map
    hw = 7 * 9
    # on a GAP + linear head dS/dA_kij = W[t, k] / (h w): Grad-CAM and HiResCAM are CAM / (h w)
    for name in ("gradcam", "hirescam"):
        m = cs.explain(gapnet, xs, method=name, **kw).map
        torch.testing.assert_close(m * hw, c, rtol=1e-4, atol=1e-5)
    # hand-computed CAM: the head's class weights on the feature maps
    with torch.no_grad():
        a = gapnet.act(gapnet.conv2(gapnet.relu1(gapnet.conv1(xs))))
        w = gapnet.fc.weight[[2, 2, 0]]
    torch.testing.assert_close(c, torch.einsum("bk,bkhw->bhw", w, a).clamp(min=0))


def test_cam_with_callable_target_uses_the_score_gradient_through_the_head(gapnet, xs):
    e = cs.explain(gapnet, xs, method="cam", layer="act", target=lambda o: o[:, 1] - 2 * o[:, 3])
    w = gapnet.fc.weight.detach()
    with torch.no_grad():
        a = gapnet.act(gapnet.conv2(gapnet.relu1(gapnet.conv1(xs))))
    want = torch.einsum("k,bkhw->bhw", w[1] - 2 * w[3], a).clamp(min=0)
    torch.testing.assert_close(e.map, want)


def test_cam_refuses_models_without_a_gap_linear_head(gapnet, xs):
    # a layer before the last ReLU: the head does not see its spatial mean
    with pytest.raises(MethodError, match="global-average-pooling"):
        cs.explain(gapnet, xs, method="cam", layer="conv2")
    flat = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 9, 3))
    with pytest.raises(MethodError, match="global-average-pooling"):
        cs.explain(flat, xs, method="cam", layer="1")
    assert count_hooks(flat) == 0 and count_hooks(gapnet) == 0
    # gradcam works where CAM does not
    assert torch.isfinite(cs.explain(flat, xs, method="gradcam", layer="1").map).all()


@pytest.mark.parametrize("center", [False, True])
def test_eigencam_is_the_first_principal_projection(center, gapnet, xs):
    e = cs.explain(gapnet, xs, method="eigencam", layer="act", center=center)
    with torch.no_grad():
        a = gapnet.act(gapnet.conv2(gapnet.relu1(gapnet.conv1(xs)))).double().numpy()
    for b in range(3):
        m = a[b].reshape(6, -1).T  # (h w, K)
        if center:
            m = m - m.mean(0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        p = m @ vt[0]
        p = p if p[np.abs(p).argmax()] > 0 else -p
        np.testing.assert_allclose(e.map[b].double().numpy().ravel(), _relu(p), rtol=1e-4, atol=1e-6)
    # class-agnostic
    other = cs.explain(gapnet, xs, method="eigencam", layer="act", center=center, target=3)
    torch.testing.assert_close(e.map, other.map)
    if not center:  # non-negative activations: the uncentred projection is non-negative
        assert (e.raw > 0).float().mean() > 0.5


def test_guided_gradcam_is_guided_backprop_times_gradcam(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    gg = cs.explain(cue_model, x, method="guided_gradcam", target=[1, 2, 3])
    gb = cs.explain(cue_model, x, method="guided_backprop", target=[1, 2, 3])
    gc = cs.explain(cue_model, x, method="gradcam", target=[1, 2, 3])
    torch.testing.assert_close(gg.raw, gb.raw * gc.map[:, None])
    torch.testing.assert_close(gg.map, (gb.raw * gc.map[:, None]).abs().amax(1))


@pytest.mark.parametrize("name", CAMS)
def test_per_sample_targets_equal_one_by_one(name, cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:4])
    targets = [7, 0, 3, 3]
    both = cs.explain(cue_model, x, method=name, target=targets)
    for i, t in enumerate(targets):
        one = cs.explain(cue_model, x[i : i + 1], method=name, target=t)
        torch.testing.assert_close(both.map[i : i + 1], one.map, rtol=1e-4, atol=1e-6)
    assert both.targets == tuple(targets)


def test_several_layers_are_normalised_and_averaged(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    e = cs.explain(cue_model, x, method="layercam", layer=["features.6", "features.9"])
    assert e.raw.shape == (3, 2, 32, 32) and e.diagnostics["layers"] == ["features.6", "features.9"]
    assert e.diagnostics["layer_grid"] == {"features.6": [16, 16], "features.9": [8, 8]}
    singles = [cs.explain(cue_model, x, method="layercam", layer=n).map for n in ("features.6", "features.9")]
    for i, s in enumerate(singles):
        torch.testing.assert_close(e.raw[:, i], s)
    want = sum(s / s.flatten(1).amax(1)[:, None, None] for s in singles) / 2
    torch.testing.assert_close(e.map, want)
    # a glob picks the same two layers
    g = cs.explain(cue_model, x, method="layercam", layer="features.[69]")
    torch.testing.assert_close(g.map, e.map)


def test_map_is_bilinear_upsampling_of_the_layer_map(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    e = cs.explain(cue_model, x, method="hirescam")  # default layer features.9, 8x8
    net = cue_model.model
    xr = x.clone().requires_grad_(True)
    a = net.features(xr)
    logits = net.classifier(net.pool(a).flatten(1))
    t = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), a)
    small = (g * a).sum(1).clamp(min=0).detach()
    want = F.interpolate(small[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(e.map, want, rtol=1e-4, atol=1e-6)
    assert e.layer == "features.9"


# --- tokens ----------------------------------------------------------------------------------


class TinyViT(nn.Module):
    """Patchify, prepend a class token, one token-wise block ("block"), read the class token."""

    def __init__(self, patch: int = 4, dim: int = 8, k: int = 3, cls: bool = True) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if cls else None
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, k)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        t = self.block(t)
        pooled = t.mean(1) + torch.tanh(self.mix(t)).amax(1)  # every token matters
        return self.head(pooled)


class TinySwin(nn.Module):
    """Channels-last stages, as torchvision's Swin: (B, H, W, C) outputs."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.stage = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, k)

    def forward(self, x):
        t = self.stage(self.embed(x).permute(0, 2, 3, 1))  # (B, h, w, C)
        return self.head((t ** 2).mean((1, 2)))


@pytest.mark.parametrize("cls", [True, False])
@pytest.mark.parametrize("size", [(16, 16), (16, 32)])
def test_token_layers_become_grids(cls, size):
    torch.manual_seed(0)
    net = TinyViT(cls=cls).eval()
    x = torch.randn(2, 3, *size)
    e = cs.explain(net, x, method="hirescam", layer="block", target=[0, 2])
    h, w = size[0] // 4, size[1] // 4
    assert e.diagnostics["layer_grid"]["block"] == [h, w]
    assert e.diagnostics["layer_layout"]["block"] == ("cls_tokens" if cls else "tokens")
    # oracle: grad * act per token, reshaped by hand
    xr = x.clone().requires_grad_(True)
    t = net.embed(xr).flatten(2).transpose(1, 2)
    if cls:
        t = torch.cat([net.cls.expand(2, -1, -1), t], 1)
    a = net.block(t)
    pooled = a.mean(1) + torch.tanh(net.mix(a)).amax(1)
    s = net.head(pooled)[[0, 1], [0, 2]].sum()
    (g,) = torch.autograd.grad(s, a)
    tok = (g * a).sum(2).detach()[:, 1:] if cls else (g * a).sum(2).detach()
    small = tok.reshape(2, h, w).clamp(min=0)
    want = F.interpolate(small[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(e.map, want, rtol=1e-4, atol=1e-6)
    assert small.std() > 0


def test_channels_last_layers_are_detected():
    torch.manual_seed(0)
    net = TinySwin().eval()
    x = torch.randn(2, 3, 16, 24)
    e = cs.explain(net, x, method="layercam", layer="stage", target=1)
    assert e.diagnostics["layer_layout"]["stage"] == "nhwc"
    assert e.diagnostics["layer_grid"]["stage"] == [4, 6]
    xr = x.clone().requires_grad_(True)
    a = net.stage(net.embed(xr).permute(0, 2, 3, 1))
    (g,) = torch.autograd.grad(net.head((a**2).mean((1, 2)))[:, 1].sum(), a)
    small = (g.clamp(min=0) * a).sum(3).detach().clamp(min=0)
    want = F.interpolate(small[:, None], size=(16, 24), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(e.map, want, rtol=1e-4, atol=1e-6)


def test_grid_layout_rules_and_errors():
    assert grid_layout((2, 197, 768), (224, 224)) == ("cls_tokens", 14, 14)
    assert grid_layout((2, 196, 768), (224, 224)) == ("tokens", 14, 14)
    assert grid_layout((2, 7, 7, 768), (224, 224)) == ("nhwc", 7, 7)
    assert grid_layout((2, 512, 7, 7), (224, 224)) == ("nchw", 7, 7)
    assert grid_layout((2, 8, 8, 8), (32, 32)) == ("nchw", 8, 8)  # ambiguous: channels first
    assert grid_layout((2, 8, 8, 8), (32, 32), "nhwc") == ("nhwc", 8, 8)
    assert grid_layout((2, 1 + 14 * 28, 16), (224, 448)) == ("cls_tokens", 14, 28)
    t = torch.arange(2 * 5 * 3.0).view(2, 5, 3)  # cls + 2x2 tokens, 3 channels
    g = to_grid(t, "cls_tokens", 2, 2)
    assert g.shape == (2, 3, 2, 2) and g[1, 2, 1, 0] == t[1, 1 + 2, 2]
    with pytest.raises(MethodError, match="spatial map"):
        grid_layout((2, 10), (32, 32))
    with pytest.raises(MethodError, match="unknown layout"):
        grid_layout((2, 4, 4, 4), (16, 16), "hwc")


# The planted-cue claims of every CAM (rates, layers, the clean control) are registry metadata
# (`claims=` in attribution/cam.py), checked by tests/test_truth.py.
