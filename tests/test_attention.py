"""Attention methods (issue #32): raw attention, rollout, Chefer's rule, LeGrad.

Oracles: TorchCAM 0.5.0's LeGrad on a torchvision ViT; a rollout computed by hand (numpy) on a
plain two-block model whose attention is set by hand; Chefer's equations written out here on the
probabilities the model itself computes (its unfused path). Mechanics on timm (registers, DeiT
distilled, no class token) and Hugging Face ViTs; state and flags after success and error; bad input.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from helpers import TinyViT
from torch import nn

import convscope as cs
from convscope.core.errors import ConvscopeError, InputError, MethodError
from convscope.core.hooks import count_hooks
from convscope.models.preprocessing import Preprocessing

ATTENTION = ("raw_attention", "rollout", "chefer", "legrad")


def _explain(model, x, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cs.explain(model, x, method=method, **kw)


def _raw(model, x, method, **kw):
    """The method's map on the patch grid (before the facade's upsampling)."""
    from convscope.methods.attribution import MethodContext

    info = cs.get_method(method)
    net = model.eval()
    ctx = MethodContext(model=net, x=x, target=kw.pop("target", None), layer=[],
                        class_names=[str(i) for i in range(3)],
                        batch_size=kw.pop("batch_size", 64), seed=0)
    return info.func(ctx, **kw)


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    return model


# --- oracles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 3])
def test_legrad_equals_torchcam(tv_vit, blocks):
    from torchcam.methods import LeGrad

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = [0, 2, 1]
    ours = _raw(tv_vit, x, "legrad", target=target, blocks=blocks).map
    with LeGrad(tv_vit, list(tv_vit.encoder.layers)[-blocks:]) as ext:
        scores = tv_vit(x)
        ref = ext(target, scores, normalized=False)[0]
    assert ours.shape == ref.shape == (3, 4, 4)
    for a, b in zip(ours, ref, strict=True):
        r = np.corrcoef(a.flatten().numpy(), b.detach().flatten().numpy())[0, 1]
        assert r > 0.999, r
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-4, atol=1e-7)


def _hand_model():
    g = torch.Generator().manual_seed(3)
    n = 7  # class token + a 2x3 grid of 4-px patches on an 8x12 input
    probs = [torch.rand(2, n, n, generator=g) + 0.05 for _ in range(2)]
    probs = [p / p.sum(-1, keepdim=True) for p in probs]
    model = TinyViT(n_tokens=n, fixed=[p.log() for p in probs]).eval()
    return model, [p.double().numpy() for p in probs]


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_a_hand_computed_rollout(fusion):
    model, probs = _hand_model()
    x = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    r = np.eye(7)
    for p in probs:  # Abnar & Zuidema: 0.5 A + 0.5 I, rows renormalised, multiplied from the first block up
        a = 0.5 * fuse(p, axis=0) + 0.5 * np.eye(7)
        r = (a / a.sum(1, keepdims=True)) @ r
    want = torch.from_numpy(r[0, 1:].reshape(2, 3)).float()
    out = _raw(model, x, "rollout", head_fusion=fusion)
    assert out.diagnostics["prefix_tokens"] == 1 and out.diagnostics["patch_grid"] == [2, 3]
    for m in out.map:  # the attention is set by hand: the same for both images
        torch.testing.assert_close(m, want, rtol=1e-6, atol=1e-7)
    raw = _raw(model, x, "raw_attention", head_fusion=fusion).map
    torch.testing.assert_close(raw[0], torch.from_numpy(fuse(probs[-1], axis=0)[0, 1:].reshape(2, 3)).float())


def test_rollout_discard_ratio_drops_the_smallest_weights():
    model, probs = _hand_model()
    x = torch.rand(1, 1, 8, 12)
    r = np.eye(7)
    for p in probs:
        f = p.mean(0).flatten()
        drop = np.argsort(f, kind="stable")[: int(49 * 0.3)]
        f[[i for i in drop if i != 0]] = 0
        a = 0.5 * f.reshape(7, 7) + 0.5 * np.eye(7)
        r = (a / a.sum(1, keepdims=True)) @ r
    got = _raw(model, x, "rollout", discard_ratio=0.3).map[0]
    torch.testing.assert_close(got, torch.from_numpy(r[0, 1:].reshape(2, 3)).float(), rtol=1e-6, atol=1e-7)


def test_chefer_equals_its_equations_on_the_models_own_attention():
    torch.manual_seed(0)
    model = TinyViT(n_tokens=7).eval()
    x = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(2))
    target = [1, 2]
    # the equations, on the probabilities the model's explicit path computes
    model.fused_attn = False
    model.seen.clear()
    out = model(x.clone().requires_grad_(True))
    out.gather(1, torch.tensor(target)[:, None]).sum().backward()
    r = torch.eye(7).expand(2, 7, 7)
    for p in model.seen:
        r = r + (p.grad * p).clamp(min=0).mean(1) @ r
    want = r[:, 0, 1:].reshape(2, 2, 3).detach()
    model.seen.clear()
    for fused in (False, True):  # the user's path does not change the map; the flag is back after
        model.fused_attn = fused
        got = _raw(model, x, "chefer", target=target)
        torch.testing.assert_close(got.map, want, rtol=1e-5, atol=1e-6)
        assert model.fused_attn is fused
        assert got.diagnostics["switched_for_the_call"] == ([] if fused else [".fused_attn: False -> True"])
    assert not model.seen  # the explicit path never ran inside the calls


def test_chefer_and_legrad_depend_on_the_target_rollout_does_not(tv_vit):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    cases = (("chefer", False), ("legrad", False), ("rollout", True), ("raw_attention", True))
    for method, agnostic in cases:
        a, b = (_raw(tv_vit, x, method, target=[t]).map for t in (0, 2))
        assert torch.equal(a, b) == agnostic, method


def test_gradcam_on_a_layer_without_patch_gradient_names_one_that_works(tv_vit):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(MethodError, match="e.g. 'encoder.layers.encoder_layer_1'") as info:
        _explain(tv_vit, x, "gradcam", layer="encoder.layers.encoder_layer_2")
    assert "\n" not in str(info.value)
    assert _explain(tv_vit, x, "gradcam", layer="encoder.layers.encoder_layer_1").map.abs().max() > 0


# --- architectures ----------------------------------------------------------------------------


def _timm(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3, **kw).eval()


@pytest.mark.parametrize("kind,prefix", [("registers", 3), ("no_class_token", 0), ("distilled", 2)])
def test_timm_variants(kind, prefix):
    if kind == "distilled":
        from timm.models.deit import VisionTransformerDistilled

        torch.manual_seed(0)
        model = VisionTransformerDistilled(img_size=(32, 48), patch_size=8, embed_dim=16, depth=2,
                                           num_heads=2,
                                           num_classes=3).eval()
    elif kind == "registers":
        model = _timm(img_size=(32, 48), reg_tokens=2)
    else:
        model = _timm(img_size=(32, 48), class_token=False, global_pool="avg")
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    maps = {}
    for method in ATTENTION:
        for fused in (True, False):
            for m in model.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = fused
            e = _explain(model, x, method, target=1)
            assert e.map.shape == (2, 32, 48) and torch.isfinite(e.map).all()
            assert e.diagnostics["prefix_tokens"] == prefix and e.diagnostics["patch_grid"] == [4, 6]
            assert all(m.fused_attn is fused for m in model.modules() if hasattr(m, "fused_attn"))
            maps[method, fused] = e.map
        torch.testing.assert_close(maps[method, True], maps[method, False], rtol=1e-4, atol=1e-6)


def test_hf_vit_sdpa_and_eager_give_the_same_maps():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)
    net = ViTForImageClassification(cfg).eval()
    pre = Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, resize=None)
    lm = cs.load_model(net, preprocessing=pre)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in ATTENTION:
        got = {}
        for impl in ("sdpa", "eager"):
            net.config._attn_implementation = impl
            e = _explain(lm, x, method, target=0)
            assert net.config._attn_implementation == impl
            assert e.diagnostics["prefix_tokens"] == 1 and e.diagnostics["architecture"] == "hf"
            got[impl] = e.map
        torch.testing.assert_close(got["sdpa"], got["eager"], rtol=1e-4, atol=1e-6)


def test_gradient_methods_work_inside_a_callers_no_grad_block(tv_vit):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    for method in ("chefer", "legrad"):
        want = _explain(tv_vit, x, method, target=1).map
        with torch.no_grad():
            got = _explain(tv_vit, x, method, target=1).map
        torch.testing.assert_close(got, want)
        assert got.abs().max() > 0


def test_the_capture_leaves_the_outputs_as_they_are(tv_vit):
    """The step-by-step attention the capture puts in place of the fused kernels gives the model's
    own logits (torchvision's nn.MultiheadAttention, timm's fused and unfused paths)."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    for model in (tv_vit, _timm(img_size=32, reg_tokens=2)):
        with torch.no_grad():
            want = model(x)
        got = _raw(model, x, "chefer", target=0).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cli_refuses_a_cnn_in_one_line_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    from convscope.frontends.cli.main import main

    img = tmp_path / "d.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(img)
    out = tmp_path / "out.png"
    args = ["explain", str(img), "--model", "digits-cnn-cue", "--method", "rollout", "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no attention layers" in err and "\n" not in err
    assert not out.exists()
    assert main(["explain", str(img), "--model", "digits-vit-cue", "--method", "legrad", "-o", str(out)]) == 0
    assert out.exists()


def test_bundled_style_vit_accepts_batches_in_chunks(tv_vit):
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for method in ATTENTION:
        a = _explain(tv_vit, x, method, batch_size=2).map
        b = _explain(tv_vit, x, method, batch_size=5).map
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- state ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ATTENTION)
def test_model_unchanged_after_success_and_error(method):
    model = _timm(img_size=32, reg_tokens=1)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dicts = {n: dict(m.__dict__) for n, m in model.named_modules()}
    x = torch.rand(2, 3, 32, 32).requires_grad_(True)
    grad = torch.zeros_like(x)
    x.grad = grad

    def boom(_out):
        raise RuntimeError("injected")

    for target in (0, boom):
        if target is boom:  # the error path must run: the checks below are about after an error
            with pytest.raises(RuntimeError, match="injected"):
                _explain(model, x, method, target=target)
        else:
            _explain(model, x, method, target=target)
        assert count_hooks(model) == 0 and model.training
        assert all(p.requires_grad for p in model.parameters())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert {n: dict(m.__dict__) for n, m in model.named_modules()} == dicts  # flags, forward, modes
        assert x.grad is grad and not grad.any() and x.requires_grad  # not accumulated into


# --- bad input --------------------------------------------------------------------------------


class _ExplicitAttention(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t @ t.transpose(1, 2)).softmax(-1) @ t


class _OwnAttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, 8)
        self.attn = _ExplicitAttention()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


def test_bad_input_gives_one_line_errors(tv_vit):
    x = torch.rand(1, 3, 32, 32)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    cases = [
        (cnn, x, "rollout", {}, "no attention layers"),
        (_OwnAttentionNet(), x, "chefer", {}, "could not capture"),
        (TinyViT(n_tokens=7), torch.rand(1, 1, 8, 12), "legrad", {}, "legrad needs the final norm"),
    ]
    for model, xx, method, opts, words in cases:
        with pytest.raises(MethodError, match=words) as info:
            _explain(model, xx, method, **opts)
        assert "\n" not in str(info.value)
    # a size the model refuses: the facade's probe says so in one line; the method's own check too
    with pytest.raises(ConvscopeError, match="Expected 32 but got 40") as info:
        _explain(tv_vit, torch.rand(1, 3, 40, 32), "raw_attention")
    assert "\n" not in str(info.value)
    with pytest.raises(MethodError, match="takes 32x32 inputs and got 40x32"):
        _raw(tv_vit, torch.rand(1, 3, 40, 32), "rollout")
    with pytest.raises(MethodError, match="36x32 input cannot be tiled by 8x8 patches"):
        _raw(_timm(img_size=32, dynamic_img_size=True), torch.rand(1, 3, 36, 32), "chefer")
    for opts in ({"head_fusion": "median"}, {"discard_ratio": float("nan")}, {"discard_ratio": 1.0},
                 {"discard_ratio": -0.1}, {"discard_ratio": float("inf")}):
        with pytest.raises(InputError):
            _explain(tv_vit, x, "rollout", **opts)
    for blocks in (0, -1, 2.5, float("nan")):
        with pytest.raises(InputError):
            _explain(tv_vit, x, "legrad", blocks=blocks)


def test_swin_is_refused_with_a_reason():
    from timm.models.swin_transformer import SwinTransformer

    model = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
                            num_heads=(1, 2), num_classes=3).eval()
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    with pytest.raises(MethodError, match="windowed"):
        _explain(model, torch.rand(1, 3, 32, 32), "rollout")
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags


def test_web_app_explains_the_vit_and_refuses_a_cnn_in_one_line():
    from fastapi.testclient import TestClient

    from convscope.frontends.serve import Engine, create_app

    client = TestClient(create_app(Engine(("digits-cnn", "digits-vit-cue"))), base_url="http://127.0.0.1")
    methods = {m["name"]: m for m in client.get("/api/methods").json()["methods"]}
    assert {"raw_attention", "rollout", "chefer", "legrad"} <= set(methods)
    r = client.post("/api/explain", data={"model": "digits-vit-cue", "method": "chefer", "sample": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["heatmap"].startswith("data:image/png")
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": "rollout", "sample": "1"})
    assert r.status_code == 400 and "no attention layers" in r.json()["error"]
    assert "\n" not in r.json()["error"]


# --- prefix tokens against an outside oracle ----------------------------------------------------


class _PrefixViT(TinyViT):
    """TinyViT with ``k`` prefix tokens (a class token and ``k - 1`` register-like tokens) before the
    patches: the prefix count and the grid are known by construction, not read by convscope."""

    def __init__(self, k: int, n_patches: int, fixed: list[torch.Tensor]) -> None:
        super().__init__(n_tokens=k + n_patches, fixed=fixed)
        self.cls = nn.Parameter(torch.randn(1, k, 8, generator=torch.Generator().manual_seed(1)))


def _planted(k: int, grid: tuple[int, int], hot: list[tuple[int, float]]) -> _PrefixViT:
    """Every query of every head and block puts logit ``v`` on token ``t`` for ``(t, v)`` in ``hot``."""
    n = k + grid[0] * grid[1]
    logits = torch.zeros(2, n, n)
    for t, v in hot:
        logits[:, :, t] = v
    return _PrefixViT(k, grid[0] * grid[1], [logits, logits]).eval()


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("method", ["raw_attention", "rollout"])
def test_prefix_tokens_are_dropped_and_the_map_peaks_at_the_planted_patch(k, method):
    grid, cell = (2, 3), (1, 2)  # 8x12 input, 4-px patches: a non-square 2x3 grid
    patch = k + cell[0] * grid[1] + cell[1]
    x = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    out = _raw(_planted(k, grid, [(patch, 12.0)]), x, method)
    assert out.diagnostics["prefix_tokens"] == k and out.diagnostics["patch_grid"] == list(grid)
    for m in out.map:
        assert m.shape == grid and divmod(int(m.argmax()), grid[1]) == cell
    # a far larger weight on the last prefix token must not appear anywhere on the grid: the
    # prefix is dropped exactly (one token too few would put it on cell (0, 0))
    second = k + 1  # cell (0, 1)
    out = _raw(_planted(k, grid, [(k - 1, 20.0), (second, 12.0)]), x, method)
    for m in out.map:
        assert divmod(int(m.argmax()), grid[1]) == (0, 1)


@pytest.mark.parametrize("kind", ["registers", "distilled", "no_class_token"])
def test_prefix_count_equals_timms_own_attributes(kind):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    if kind == "distilled":
        model = VisionTransformerDistilled(img_size=(32, 48), patch_size=8, embed_dim=16, depth=1,
                                           num_heads=2, num_classes=3).eval()
    elif kind == "registers":
        model = _timm(img_size=(32, 48), reg_tokens=4)
    else:
        model = _timm(img_size=(32, 48), class_token=False, global_pool="avg")
    # timm's own count, and the tokens it is made of
    own = (model.cls_token is not None) + (getattr(model, "dist_token", None) is not None) + (
        0 if model.reg_token is None else model.reg_token.shape[1])
    assert own == model.num_prefix_tokens
    grid = model.patch_embed.grid_size
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    out = _raw(model, x, "rollout")
    assert out.diagnostics["prefix_tokens"] == model.num_prefix_tokens
    assert tuple(out.map.shape[1:]) == tuple(grid) == (4, 6)


# --- the planted cue, on images the model classifies by the cue -------------------------------


def test_chefer_and_legrad_point_at_a_swapped_cue_and_not_on_the_clean_vit():
    """Hit rate: the share of held-out test digits, stamped with the cue of another class and
    classified by ``digits-vit-cue`` as that cue's class (it follows the cue, not the digit), whose
    map maximum lies on the cue (within 1 px). On the clean control ``digits-vit`` (the same ViT
    trained without the cue) the same maps' share of positive mass on the cue drops."""
    from convscope.data.toydata import digits, planted_cue
    from convscope.methods.evaluation.pointing import cue_mass, pointing_hits

    x, y = digits().split("test")
    x, y = x[:120], y[:120]
    wrong = (y + 1 + torch.arange(len(y)) % 9) % 10
    sw = planted_cue(x, y, cue_classes=wrong)
    cue, clean = cs.load_model("digits-vit-cue"), cs.load_model("digits-vit")
    xn = cue.preprocessing.normalize(sw.images)
    with torch.no_grad():
        by_cue = cue.model(xn).argmax(1) == wrong
    assert by_cue.float().mean() > 0.9
    xn, masks = xn[by_cue], sw.masks[by_cue]
    for method in ("chefer", "legrad"):
        e = _explain(cue, xn, method)
        rate = pointing_hits(e.map, masks, 1).float().mean().item()
        assert rate >= 0.8, (method, rate)
        ctrl = _explain(clean, xn, method, target=wrong[by_cue].tolist())
        assert cue_mass(ctrl.map, masks).mean() < 0.7 * cue_mass(e.map, masks).mean(), method


# --- applicability: one registry field, read by the facade, report, CLI and web app ------------


def test_requires_attention_is_judged_once_and_refused_before_any_forward(tv_vit):
    from convscope.methods.registry import inapplicable

    calls = []

    class CountingCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    cnn = CountingCNN()
    for m in cs.list_methods():
        why = inapplicable(m, cnn)
        assert (why is not None) == (m.requires == "attention") == (m.name in ATTENTION), m.name
        assert inapplicable(m, tv_vit) is None and inapplicable(m, TinyViT()) is None, m.name
    pre, x = Preprocessing(size=(16, 16)), torch.rand(1, 3, 16, 16)
    cs.explain(cnn, x, method="saliency", preprocessing=pre)  # loading and running: forwards counted
    ran = len(calls)
    calls.clear()
    with pytest.raises(MethodError, match="rollout does not apply to CountingCNN") as info:
        cs.explain(cnn, x, method="rollout", preprocessing=pre)
    assert "\n" not in str(info.value) and len(calls) < ran  # refused before the method's own forward


def _mix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A module-level helper: the attention call is here, not in the module's own methods."""
    return nn.functional.scaled_dot_product_attention(q, k, v)


class _Mixer(nn.Module):  # an attention block not named *Attention
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.qk: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        q, k, v = (u.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for u in self.qkv(t).chunk(3, -1))
        self.qk = (q.detach(), k.detach())
        return t + self.out(_mix(q, k, v).transpose(1, 2).reshape(b, n, d))


class _HandViT(nn.Module):
    """A hand-written SDPA ViT on [0, 1] pixels: 2-D (N, D) position embedding and class token."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.patchify = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(17, dim, generator=g))
        self.stages = nn.Sequential(_Mixer(dim, 2), _Mixer(dim, 2))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patchify(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], 1, -1), t], 1) + self.pos
        return self.head(nn.functional.relu(self.stages(t))[:, 0])


class _ScaledCNN(nn.Module):
    """A CNN with a (1, C, 1) scale parameter: no attention at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(1, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.conv(x)).flatten(2) * self.scale
        return self.fc(h.mean(2))


def test_a_hand_written_sdpa_vit_with_a_2d_position_embedding_is_accepted_and_explained():
    from convscope.methods.registry import inapplicable

    torch.manual_seed(0)
    model = _HandViT().eval()
    for m in ("raw_attention", "rollout", "chefer"):
        assert inapplicable(cs.get_method(m), model) is None, m
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _raw(model, x, "raw_attention")
    q, k = model.stages[-1].qk  # the oracle: the last block's class-token attention, by hand
    probs = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    want = probs.mean(1)[:, 0, 1:].reshape(2, 4, 4)
    assert out.diagnostics["prefix_tokens"] == 1 and out.diagnostics["patch_grid"] == [4, 4]
    torch.testing.assert_close(out.map, want, rtol=1e-5, atol=1e-6)
    e = _explain(model, x, "rollout", preprocessing=Preprocessing(size=(16, 16)))
    assert e.map.shape[-2:] == (16, 16) and torch.isfinite(e.map).all()


def test_a_cnn_with_a_token_shaped_scale_parameter_is_refused_in_one_line():
    from convscope.methods.registry import inapplicable

    cnn = _ScaledCNN()
    assert any(p.shape == (1, 4, 1) for p in cnn.parameters())
    for m in ATTENTION:
        assert inapplicable(cs.get_method(m), cnn) is not None, m
    # a Hugging Face CNN: its library base class has methods that name the SDPA kernel, never called
    from transformers import ResNetConfig, ResNetForImageClassification

    hf = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    assert inapplicable(cs.get_method("rollout"), hf) is not None
    said = "rollout does not apply to _ScaledCNN: it has no attention"
    with pytest.raises(MethodError, match=said) as info:
        cs.explain(cnn, torch.rand(1, 3, 16, 16), method="rollout", preprocessing=Preprocessing((16, 16)))
    assert "\n" not in str(info.value)


def test_the_report_reads_the_requirement_not_the_registrys_wording(monkeypatch):
    import convscope.methods.registry as registry
    from convscope.frontends.report import build, explain_report

    cnn = _ScaledCNN()
    lacks = registry.unmet_requirement(cs.get_method("rollout"), cnn)
    assert lacks is not None and "rollout" not in lacks and lacks.startswith("has no attention")
    line = registry.not_applicable_line("rollout", cnn, lacks)
    assert registry.inapplicable(cs.get_method("rollout"), cnn) == line
    # reworded one-line error (no ": it "): the report still names what the model lacks, whole
    monkeypatch.setattr(registry, "not_applicable_line", lambda method, model, why: f"{method} -- {why}")
    assert registry.inapplicable(cs.get_method("rollout"), cnn) == f"rollout -- {lacks}"
    two = [cs.get_method("saliency"), cs.get_method("rollout")]
    monkeypatch.setattr(build, "resolve_methods", lambda names: two)
    image = np.random.default_rng(0).random((16, 16, 3))
    rep = explain_report(cnn, [image], preprocessing={"size": [16, 16]})
    said = f"Not run, as they do not apply to this model: rollout (_ScaledCNN {lacks})."
    assert said in rep.intro


class _NoClassToken(nn.Module):
    """Patch tokens only (no class token, mean pooling); each block's attention set by hand."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits, self.embed = logits, nn.Conv2d(1, 4, 4, 4)
        self.qkv, self.head = nn.Linear(4, 12), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, _ = t.shape
        for mask in self.logits:
            q, k, v = (u.reshape(b, n, 2, 2).transpose(1, 2) for u in self.qkv(t).chunk(3, -1))
            o = nn.functional.scaled_dot_product_attention(q * 0, k, v, attn_mask=mask)
            t = t + o.transpose(1, 2).reshape(b, n, 4)
        return self.head(t.mean(1))


def test_rollout_without_a_class_token_reads_the_mean_query_row_of_the_rollout():
    g = torch.Generator().manual_seed(4)
    probs = [torch.rand(2, 6, 6, generator=g) + 0.05 for _ in range(3)]
    probs = [p / p.sum(-1, keepdim=True) for p in probs]
    model = _NoClassToken([p.log() for p in probs]).eval()
    x = torch.rand(1, 1, 8, 12, generator=g)
    r = np.eye(6)
    for p in probs:
        a = 0.5 * p.double().numpy().mean(0) + 0.5 * np.eye(6)
        r = (a / a.sum(1, keepdims=True)) @ r
    out = _raw(model, x, "rollout")
    assert out.diagnostics["prefix_tokens"] == 0 and out.diagnostics["patch_grid"] == [2, 3]
    want = torch.from_numpy(r.mean(0).reshape(2, 3)).float()  # the mean query row: no class token
    torch.testing.assert_close(out.map[0], want, rtol=1e-6, atol=1e-7)
    raw = _raw(model, x, "raw_attention").map[0]
    torch.testing.assert_close(raw, probs[-1].mean(0).mean(0).reshape(2, 3), rtol=1e-6, atol=1e-7)
