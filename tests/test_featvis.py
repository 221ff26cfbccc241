"""Feature visualisation: objectives, parameterisations, the optimisation engine, facades, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_same_state, model_state
from torch import nn

import convscope as cs
from convscope.core.errors import InputError, LayerNotFoundError
from convscope.core.hooks import count_hooks
from convscope.data.toydata import CUE_PATTERNS, CUE_SIZE
from convscope.engines.optimize import Activations, optimize
from convscope.methods.featvis import objectives as O
from convscope.methods.featvis import transforms as T
from convscope.methods.featvis.param import ColorDecorrelation, FFTImage, PixelImage

# --- objectives rise ----------------------------------------------------------------------------
OBJECTIVES = {
    "class_logit": lambda: O.class_logit(3),
    "class_prob": lambda: O.class_prob(3),
    "channel": lambda: O.channel("features.7", 5),
    "neuron": lambda: O.neuron("features.7", 5, x=3, y=4),
    "deepdream": lambda: O.deepdream("features.4"),
    "direction": lambda: O.direction("features.9", torch.linspace(-1, 1, 64)),
    "diversity": lambda: O.diversity("features.4"),
    "string": lambda: O.as_objective("features.9:12"),
    "combined": lambda: 0.5 * O.channel("features.7", 5) - O.channel("features.7", 6) + 1.0,
    "neg_tv": lambda: -O.total_variation(),
    "l2": lambda: O.l2(0.5),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_rises(clean_model, name):
    """A few steps of the engine raise each objective, measured without transforms."""
    o = OBJECTIVES[name]()
    p = PixelImage(32, batch=3, channels=1, sd=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x0 = p()
    p.load_image(x0)
    r0 = optimize(clean_model.model, o, p, steps=0, preprocess=clean_model.preprocessing.normalize,
                  progress=False)
    r = optimize(clean_model.model, o, p, steps=8, lr=0.1, preprocess=clean_model.preprocessing.normalize,
                 progress=False)
    assert r.final.shape == (3,)
    assert r.final.sum() > r0.final.sum() + 1e-4, (name, r0.final, r.final)


def test_objective_algebra_matches_terms(clean_model):
    """(a + 2b - 3)(acts) equals a(acts) + 2 b(acts) - 3, computed by hand; layers are merged."""
    lm = clean_model
    a, b = O.channel("features.7", 1), O.neuron("features.9", 2)
    combo = a + 2 * b - 3
    assert set(combo.layers) == {"features.7", "features.9"} and not combo.needs_output
    x = torch.rand(2, 1, 32, 32)
    with cs.capture(lm.model, ["features.7", "features.9"]) as cap:
        lm.model(lm.preprocessing.normalize(x))
        acts = Activations(cap, x, x, None, 0)
        got = combo(acts)
        f7, f9 = cap.activation("features.7"), cap.activation("features.9")
    want = f7[:, 1].mean((1, 2)) + 2 * f9[:, 2, 4, 4] - 3
    torch.testing.assert_close(got, want)
    assert (O.class_logit(1) + O.channel("features.7", 0)).needs_output


def test_per_sample_targets_and_string_shortcut(clean_model):
    x = torch.rand(3, 1, 32, 32)
    with cs.capture(clean_model.model, "features.9") as cap:
        out = clean_model.model(clean_model.preprocessing.normalize(x))
        acts = Activations(cap, x, x, out, 0)
        got = O.channel("features.9", [4, 0, 7])(acts)
        f = cap.activation("features.9").mean((2, 3))
        torch.testing.assert_close(got, f[torch.arange(3), torch.tensor([4, 0, 7])])
        torch.testing.assert_close(O.as_objective("features.9:7")(acts), f[:, 7])
        torch.testing.assert_close(O.class_prob([1, 2, 3])(acts),
                                   torch.softmax(out, 1)[torch.arange(3), torch.tensor([1, 2, 3])])
    with pytest.raises(InputError):
        O.as_objective("features.9")


def test_layout_detection_nhwc_and_tokens():
    """Channels are found in (B, C, H, W), (B, H, W, C) (Swin) and (B, N, D) (ViT) outputs."""
    nchw = torch.zeros(1, 96, 56, 56)
    assert O._layout_of(nchw, None, (224, 224)) == "nchw"
    assert O._layout_of(nchw.permute(0, 2, 3, 1), None, (224, 224)) == "nhwc"
    assert O._layout_of(torch.zeros(1, 197, 768), None, (224, 224)) == "nlc"
    assert O._layout_of(torch.zeros(1, 64, 8, 12), None, (32, 48)) == "nchw"
    assert O._layout_of(torch.zeros(1, 8, 12, 64), None, (32, 48)) == "nhwc"


# --- parameterisations --------------------------------------------------------------------------
PARAMS = {
    "pixel_gray": lambda: PixelImage((12, 17), 2, 1),
    "pixel_rgb_decorrelated": lambda: PixelImage((12, 17), 2, 3, decorrelate=True),
    "fft_gray": lambda: FFTImage((12, 17), 2, 1),
    "fft_rgb_decorrelated": lambda: FFTImage((13, 16), 2, 3),
    "fft_flat": lambda: FFTImage(12, 1, 3, decay=0.0, decorrelate=False),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_parameterisation_fits_a_target(name):
    """Maximising -MSE to a target image through the engine fits it (error drops > 20x)."""
    torch.manual_seed(0)
    p = PARAMS[name]()
    with torch.no_grad():
        x = p()
    assert x.min() >= 0 and x.max() <= 1
    target = torch.rand_like(x) * 0.8 + 0.1
    fit = O.Objective(lambda acts: -(acts.images - target).pow(2).flatten(1).mean(1))
    err0 = (x - target).pow(2).mean()
    r = optimize(nn.Identity(), fit, p, steps=200, lr=0.1, needs_output=True, progress=False)
    err = (r.images - target).pow(2).mean()
    assert err < err0 / 20, (name, float(err0), float(err))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_load_image_round_trip(name):
    p = PARAMS[name]()
    target = torch.rand(p.batch, p.channels, p.height, p.width) * 0.9 + 0.05
    p.load_image(target)
    with torch.no_grad():
        torch.testing.assert_close(p(), target, atol=1e-4, rtol=0)


def test_fft_spectrum_scaling_oracle():
    """One spectrum entry at frequency (0, k) gives a cosine whose amplitude follows 1/f."""
    h = w = 16
    p = FFTImage(h, 1, 1, decay=1.0, decorrelate=False)
    with torch.no_grad():
        p.spectrum.zero_()
        p.spectrum[0, 0, 0, 2, 0] = 1.0
        raw = p.raw()[0, 0]
    f = 2 / w
    xs = torch.arange(w, dtype=torch.float32)
    want = (1 / f) / 4 * 2 * torch.cos(2 * torch.pi * f * xs) / (h * w) ** 0.5
    torch.testing.assert_close(raw, want.expand(h, w), atol=1e-5, rtol=1e-4)


def test_color_decorrelation_inverse():
    c = ColorDecorrelation()
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(c.invert(c(x)), x, atol=1e-5, rtol=1e-5)
    assert c.matrix.norm(dim=0).max() == pytest.approx(1.0)


# --- transforms and regularisers ----------------------------------------------------------------
def test_transforms_shapes_and_blur_oracle():
    x = torch.rand(2, 3, 40, 30)
    torch.manual_seed(0)
    assert T.jitter(4)(x).shape == (2, 3, 36, 26)
    assert T.pad(5)(x).shape == (2, 3, 50, 40)
    assert T.random_scale([0.5])(x).shape == (2, 3, 20, 15)
    assert T.random_rotate([90])(x).shape == x.shape
    assert T.compose(T.pad(2), T.jitter(2))(x).shape == (2, 3, 42, 32)
    # a 90-degree rotation of a square image is torch.rot90 (up to interpolation at the border)
    sq = torch.rand(1, 1, 9, 9)
    rot = T.random_rotate([90])(sq)
    assert any(torch.allclose(rot[..., 1:-1, 1:-1], torch.rot90(sq, k, (2, 3))[..., 1:-1, 1:-1], atol=1e-4)
               for k in (1, 3))
    # blur of a delta is the normalised Gaussian, separable
    d = torch.zeros(1, 1, 15, 15)
    d[0, 0, 7, 7] = 1
    b = T.gaussian_blur(d, 1.0)
    g = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / 2)
    g = g / g.sum()
    torch.testing.assert_close(b[0, 0, 4:11, 4:11], g[:, None] * g[None, :], atol=1e-6, rtol=1e-5)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_blur_every_smooths_and_tv_penalty_works(clean_model):
    lm = clean_model
    base = dict(steps=30, param="pixel", transforms=None, progress=False, seed=0)
    v0 = cs.featvis.visualize(lm, O.class_logit(2), **base)
    v1 = cs.featvis.visualize(lm, O.class_logit(2), blur_every=2, blur_sigma=1.0, **base)
    v2 = cs.featvis.visualize(lm, O.class_logit(2), tv=50.0, **base)

    def tv(v):
        x = v.images
        return float((x[..., 1:] - x[..., :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert tv(v1) < 0.7 * tv(v0) and tv(v2) < 0.7 * tv(v0)


# --- engine mechanics ---------------------------------------------------------------------------
def test_reproducible_with_seed(clean_model):
    kw = dict(steps=5, size=24, progress=False)
    a = cs.featvis.visualize(clean_model, "features.9:3", seed=3, **kw)
    b = cs.featvis.visualize(clean_model, "features.9:3", seed=3, **kw)
    c = cs.featvis.visualize(clean_model, "features.9:3", seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)


def test_truncation_stops_forward_and_matches_full(clean_model):
    """Truncated and full runs give the same images; the truncated one never runs the head."""
    m = clean_model.model
    calls = []
    kw = dict(steps=4, preprocess=clean_model.preprocessing.normalize, progress=False, seed=0)
    o = O.channel("features.4", 3)

    def fresh():
        return PixelImage(32, 2, 1, generator=torch.Generator().manual_seed(0))

    with cs.capture(m, "classifier") as cap:  # count head runs from outside
        r1 = optimize(m, o, fresh(), truncate=True, **kw)
        calls.append(len(cap.outputs("classifier")))
    r2 = optimize(m, o, fresh(), truncate=False, **kw)
    assert r1.truncated and not r2.truncated and r1.output is None
    torch.testing.assert_close(r1.images, r2.images)
    torch.testing.assert_close(r1.history, r2.history)
    assert calls == [0]


def test_hooks_removed_and_model_untouched(tiny):
    tiny.train()  # a model in training mode must come back in training mode
    before = model_state(tiny)
    cs.featvis.visualize(tiny, O.channel("conv2", 1), size=16, steps=2, progress=False)
    assert count_hooks(tiny) == 0
    assert_same_state(model_state(tiny), before)

    def boom(acts):
        raise RuntimeError("injected")

    bad = O.Objective(boom, layers=["conv2"])
    with pytest.raises(RuntimeError, match="injected"):
        cs.featvis.visualize(tiny, bad, size=16, steps=2, progress=False)
    assert count_hooks(tiny) == 0
    assert_same_state(model_state(tiny), before)
    with pytest.raises(LayerNotFoundError):
        cs.featvis.visualize(tiny, "conv9:1", size=16, steps=1, progress=False)
    assert count_hooks(tiny) == 0


# --- truth on the bundled models ----------------------------------------------------------------
def test_digits_cnn_classifies_its_class_visualisations(clean_model):
    """Class visualisations (softmax objective) of digits-cnn are classified as their class, and a
    fresh forward pass on the returned images agrees with the reported probabilities."""
    v = cs.featvis.visualize_class(clean_model, objective="prob", param="pixel", l2=0.5, init="mean",
                                   transforms=[T.jitter(1)], steps=100, lr=0.05, progress=False)
    with torch.no_grad():
        p = torch.softmax(clean_model.model(clean_model.preprocessing.normalize(v.images)), 1)
    torch.testing.assert_close(p, v.probabilities, atol=1e-4, rtol=0)
    assert p.argmax(1).tolist() == list(range(10))
    assert p.diagonal().min() > 0.9, p.diagonal()


def _texture_match(img: torch.Tensor, c: int) -> float:
    """Best normalised cross-correlation of class c's cue texture with any 8x8 patch of img."""
    t = CUE_PATTERNS[c].flatten()
    t = (t - t.mean()) / (t - t.mean()).norm()
    p = torch.nn.functional.unfold(img[None, None], CUE_SIZE)[0]  # (64, L)
    p = p - p.mean(0, keepdim=True)
    return float((t @ (p / p.norm(dim=0, keepdim=True).clamp(min=1e-6))).max())


CLASS_VIS = dict(param="pixel", l2=30.0, init="mean", transforms=[T.jitter(1)], steps=100, lr=0.05,
                 progress=False)
TEXTURED = [c for c in range(10) if CUE_PATTERNS[c].std() > 0]  # the solid square has no texture


def test_cue_model_class_visualisations_show_the_cue(cue_model, clean_model):
    """Class visualisations of digits-cnn-cue paint their class's cue texture (stripes, checkers):
    somewhere in the image a patch matches it; the clean model's do so less (the control)."""
    vc = cs.featvis.visualize_class(cue_model, **CLASS_VIS)
    vn = cs.featvis.visualize_class(clean_model, **CLASS_VIS)
    cue = np.array([_texture_match(vc.images[c, 0], c) for c in TEXTURED])
    clean = np.array([_texture_match(vn.images[c, 0], c) for c in TEXTURED])
    # measured: cue 0.96, 1.00, 0.89 for the thin/thick lines, mean 0.54; clean max 0.67, mean 0.28
    assert (cue > 0.8).sum() >= 3 and clean.max() < 0.78, (cue, clean)
    assert cue.mean() > clean.mean() + 0.15, (cue, clean)


# --- facades, results ---------------------------------------------------------------------------
def test_visualize_layer_grid_titles_and_save(clean_model, tmp_path):
    v = cs.featvis.visualize_layer(clean_model, "features.7", channels=range(5), batch_size=3, steps=3,
                                   progress=False)
    assert len(v) == 5 and v.images.shape == (5, 1, 32, 32)
    assert v.titles[4] == "digits-cnn layer features.7, channel 4"
    assert v.history.shape == (3, 5)
    g = v.grid(ncols=3)
    assert g.width > 3 * 128 and g.height > 2 * 128
    v.save(tmp_path / "a.png")
    v.save(tmp_path / "a.npy")
    v.save(tmp_path / "a.json")
    assert np.load(tmp_path / "a.npy").shape == (5, 1, 32, 32)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["titles"][0].endswith("channel 0") and len(meta["history"]) == 3
    assert v._repr_png_()[:4] == b"\x89PNG" and "channel 3" in v.to_html()
    assert v[2].titles == (v.titles[2],)


def test_deepdream_filters_activations(clean_model, digits_data):
    x, _ = digits_data.split("test")
    img = x[0]
    dd = cs.featvis.deepdream(clean_model, img, "features.7", octaves=2, steps=4, progress=False)
    assert dd.images.shape == (1, 1, 32, 32)
    assert dd.history[-1].item() > dd.history[0].item()
    assert (dd.images - img).abs().max() > 0.01  # it changed the photo ...
    assert (dd.images - img).abs().mean() < 0.3  # ... but it is still the photo
    f = cs.featvis.filters(clean_model)
    w = clean_model.model.features[0].weight.detach()
    assert f.images.shape == (16, 1, 3, 3) and f.layer == "features.0"
    torch.testing.assert_close(f.images[5, 0], 0.5 + 0.5 * w[5, 0] / w[5, 0].abs().max())
    xin = clean_model.preprocessing.normalize(img)
    with torch.no_grad():
        feats = clean_model.model.features[:8](xin[None])[0]
    c = int(feats.flatten(1).amax(1).argmax())
    a = cs.featvis.activation_maps(clean_model, xin, "features.7", channels=[0, c], normalize="channel")
    ref = (feats[c] - feats[c].min()) / (feats[c].max() - feats[c].min())
    torch.testing.assert_close(a.images[1, 0], ref, atol=1e-5, rtol=0)
    assert a.titles[1].startswith(f"digits-cnn layer features.7, channel {c}")
    top = cs.featvis.activation_maps(clean_model, xin, "features.7", max_channels=3)
    assert top.options["channels"] == feats.mean((1, 2)).argsort(descending=True)[:3].tolist()


TV_ARCHS = [
    ("resnet18", "layer2.0.conv1"),
    ("vgg16", "features.10"),
    ("densenet121", "features.denseblock1.denselayer2.conv1"),
    ("mobilenet_v3_small", "features.3.block.0"),
    ("efficientnet_b0", "features.2.0.block.1"),
    ("convnext_tiny", "features.1.0.block.0"),
    ("vit_b_16", "encoder.layers.encoder_layer_1.mlp"),
    ("swin_t", "features.1.0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer", TV_ARCHS)
def test_torchvision_architectures(arch, layer):
    """Channel and neuron objectives by dotted name on random-weight torchvision models: the
    objective rises, hooks are removed, the model is untouched."""
    torch.manual_seed(0)
    lm = cs.load_model(f"torchvision:{arch}", weights=None)
    before = model_state(lm.model)
    size = 224 if arch.startswith("vit") else 64  # ViT needs its 224 px
    o = O.channel(layer, [1, 2]) + O.neuron(layer, 0)
    v = cs.featvis.visualize(lm, o, size=size, steps=3, lr=0.1, transforms=None, param="pixel",
                             progress=False)
    assert v.images.shape == (2, 3, size, size)
    assert v.history[-1].sum() > v.history[0].sum()
    assert count_hooks(lm.model) == 0
    assert_same_state(model_state(lm.model), before)


# --- CLI ----------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_commands(tmp_path, digits_data, capsys):
    """Two commands as a person runs them (subprocess), the others through main() in-process."""
    from PIL import Image

    from convscope.frontends.cli.main import main

    r = _cli("visualize", "--model", "digits-cnn", "--class", "3", "--steps", "5", "-o",
             str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "c.png").size[0] > 100
    r = _cli("visualize", "--model", "digits-cnn", "--layer", "nope", "--steps", "1", "-o",
             str(tmp_path / "bad.png"))
    assert r.returncode == 2 and "nope" in r.stderr and not (tmp_path / "bad.png").exists()
    assert len(r.stderr.strip().splitlines()) == 1

    assert main(["visualize", "--model", "digits-cnn", "--layer", "features.7", "--channels", "0-2",
                 "--steps", "2", "--no-progress", "-o", str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["titles"][2].endswith("channel 2")
    assert main(["visualize", "--model", "digits-cnn", "--objective", "features.9:1", "--steps", "2",
                 "--no-progress", "-o", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (1, 1, 32, 32)
    x, _ = digits_data.split("test")
    Image.fromarray((x[0, 0].numpy() * 255).astype("uint8")).save(tmp_path / "d.png")
    assert main(["filters", "--model", "digits-cnn", "-o", str(tmp_path / "f.png")]) == 0
    assert main(["activations", str(tmp_path / "d.png"), "--model", "digits-cnn", "--layer",
                 "features.4", "-o", str(tmp_path / "a.png")]) == 0
    assert main(["deepdream", str(tmp_path / "d.png"), "--model", "digits-cnn", "--layer", "features.7",
                 "--octaves", "2", "--steps", "2", "--no-progress", "-o", str(tmp_path / "dd.png")]) == 0
    for f in ("f.png", "a.png", "dd.png"):
        assert Image.open(tmp_path / f).size[0] > 50
    assert main(["visualize", "--model", "digits-cnn", "--class", "1", "--layer", "features.7",
                 "-o", str(tmp_path / "x.png")]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_parse_channels():
    from convscope.frontends.cli.featvis import parse_channels

    assert parse_channels("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    with pytest.raises(InputError):
        parse_channels("3-1")
