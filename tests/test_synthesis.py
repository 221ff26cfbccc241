"""Synthesis: adversarial and fooling images, inversion, Gram textures, style, Efros-Leung."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from helpers import assert_same_state, model_state

import convscope as cs
from convscope.core.errors import InputError, LayerNotFoundError, MethodError
from convscope.core.hooks import count_hooks
from convscope.methods.synthesis import (
    AdversarialResult,
    attack,
    efros_leung,
    fgsm,
    fooling_image,
    inversion_strip,
    invert,
    pgd,
    style_transfer,
    texture,
)
from convscope.methods.synthesis._common import gram
from convscope.methods.synthesis.efros_leung import gaussian_window, patch_distances, source_patches


@pytest.fixture(scope="module")
def test_digits(digits_data):
    x, y = digits_data.split("test")
    return x, y


# --- adversarial -------------------------------------------------------------------------------
def test_targeted_pgd_reaches_target_within_exact_linf_budget(clean_model, test_digits):
    x, y = test_digits
    x, y = x[:60], y[:60]
    target = (y + 3) % 10
    before = model_state(clean_model.model)
    clean_model.model.train()  # must come back in train mode
    eps = 0.2  # in pixel units; 0.15 reaches ~88% of these targets, 0.2 all of them
    r = pgd(clean_model, x, eps=eps, norm="linf", steps=20, target=target.tolist(), seed=0, space="pixels")
    assert clean_model.model.training
    clean_model.model.eval()
    assert count_hooks(clean_model.model) == 0
    assert_same_state(model_state(clean_model.model), before)
    assert all(p.requires_grad for p in clean_model.model.parameters())
    # the budget holds exactly (float64 on the float32 values), and the pixels stay valid
    d = r.adversarial.double() - x.double()
    assert float(d.abs().max()) <= eps
    assert float(r.adversarial.min()) >= 0.0 and float(r.adversarial.max()) <= 1.0
    assert torch.equal(r.original, x)
    # success judged by an independent forward pass
    pre = clean_model.preprocessing
    with torch.no_grad():
        pred = clean_model.model(pre.normalize(r.adversarial)).argmax(1)
    assert torch.equal(pred, r.predictions)
    rate = float((pred == target).float().mean())
    assert rate >= 0.95, rate
    assert torch.equal(r.success, pred == target)
    assert r.targets is not None and torch.equal(r.targets, target)
    # confidences reported: target probability after the attack is the softmax entry
    i = int(torch.nonzero(r.success)[0])
    assert r.confidence(i)["target_after"] == pytest.approx(float(r.probs_adversarial[i, target[i]]))


def test_enforce_budget_is_exact_and_minimal():
    from convscope.methods.synthesis.adversarial import enforce_budget

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 0.8 + 0.1
    eps = 0.1
    x = x0 + eps * torch.sign(torch.randn(x0.shape, generator=g))  # float32 rounding overshoots
    assert float((x.double() - x0.double()).abs().max()) > eps  # the case being fixed exists
    y = enforce_budget(x, x0, eps, "linf")
    assert float((y.double() - x0.double()).abs().max()) <= eps
    assert float((y - x).abs().max()) <= 1e-7  # moved by at most a float step
    big = x0 + torch.randn(x0.shape, generator=g)
    z = enforce_budget(big, x0, 2.0, "l2")
    assert float((z.double() - x0.double()).flatten(1).norm(dim=1).max()) <= 2.0
    assert 0.0 <= float(z.min()) and float(z.max()) <= 1.0


def test_budget_decides_untargeted_success(clean_model, test_digits):
    x, y = test_digits
    x, y = x[:40], y[:40]
    weak = pgd(clean_model, x, eps=0.002, steps=5, labels=y.tolist(), space="pixels")
    strong = pgd(clean_model, x, eps=0.15, steps=10, labels=y.tolist(), space="pixels")
    assert weak.success_rate < 0.15 < 0.9 < strong.success_rate


def test_fgsm_matches_independent_implementation(clean_model, test_digits):
    x, _ = test_digits
    x = x[:32]
    eps = 0.05
    r = fgsm(clean_model, x, eps=eps, space="pixels")
    net, pre = clean_model.model, clean_model.preprocessing
    xx = x.clone().requires_grad_(True)
    logits = net(pre.normalize(xx))
    F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum").backward()
    oracle = (x + eps * xx.grad.sign()).clamp(0, 1)
    assert torch.allclose(r.adversarial, oracle, atol=1e-6)
    assert float(r.linf.max()) <= eps


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_l2_budget_respected(clean_model, test_digits, method):
    x, _ = test_digits
    x = x[:32]
    eps = 1.0
    f = fgsm if method == "fgsm" else pgd
    kw = {} if method == "fgsm" else {"steps": 10}
    r = f(clean_model, x, eps=eps, norm="l2", space="pixels", **kw)
    n = (r.adversarial.double() - x.double()).flatten(1).norm(dim=1)
    assert float(n.max()) <= eps
    assert float(n.min()) > 0.5 * eps  # the budget is used, not ignored
    assert torch.allclose(r.l2, n)
    assert 0.0 <= float(r.adversarial.min()) and float(r.adversarial.max()) <= 1.0


def test_attack_seeded_and_batch_independent(clean_model, test_digits):
    x, _ = test_digits
    x = x[:12]
    a = pgd(clean_model, x, eps=0.1, steps=5, seed=3, batch_size=64, space="pixels")
    b = pgd(clean_model, x, eps=0.1, steps=5, seed=3, batch_size=64, space="pixels")
    c = pgd(clean_model, x, eps=0.1, steps=5, seed=4, batch_size=64, space="pixels")
    d = pgd(clean_model, x, eps=0.1, steps=5, seed=3, batch_size=6, space="pixels")
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)
    # a sign can flip where a gradient is ~0 under another batch layout; nearly all pixels agree
    assert float((a.adversarial - d.adversarial).abs().le(1e-5).float().mean()) > 0.99


def test_fooling_images_from_noise_and_photo(clean_model, test_digits):
    r = fooling_image(clean_model, 7, n=3, steps=25, seed=1, space="pixels")
    assert r.method == "fooling" and bool(r.success.all())
    assert (r.predictions == 7).all() and float(r.probs_adversarial[:, 7].min()) > 0.5
    x, y = test_digits
    photo = x[int(torch.nonzero(y == 1)[0])]
    r2 = fooling_image(clean_model, "8", image=photo, eps=0.2, steps=25, space="pixels")
    assert bool(r2.success.all()) and float(r2.linf.max()) <= 0.2


def test_attack_input_errors(clean_model, test_digits):
    x, _ = test_digits
    with pytest.raises(InputError):
        pgd(clean_model, x[:2] * 3, eps=0.1, space="pixels")  # not pixels in [0, 1]
    with pytest.raises(InputError):
        pgd(clean_model, x[:2], eps=0.1, norm="l3", space="pixels")
    with pytest.raises(cs.errors.TargetError):
        pgd(clean_model, x[:2], eps=0.1, target=[1, 2, 3], space="pixels")


def test_adversarial_result_renders_and_saves(clean_model, test_digits, tmp_path):
    x, _ = test_digits
    r = attack(clean_model, x[:3], eps=0.1, steps=3, target=4, space="pixels")
    assert isinstance(r, AdversarialResult) and len(r) == 3
    png = r._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img" in r.to_html() and "success" in r.to_html()
    r.save(tmp_path / "a.png")
    r.save(tmp_path / "a.npy")
    r.save(tmp_path / "a.json")
    assert np.load(tmp_path / "a.npy").shape == (3, 1, 32, 32)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["targeted"] and len(meta["linf"]) == 3 and meta["targets"] == [4, 4, 4]
    with pytest.raises(InputError):
        r.save(tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()


# --- Efros-Leung -------------------------------------------------------------------------------
def test_patch_distances_match_bruteforce():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(3, 12, 10, generator=g)
    w = 5
    p, centres = source_patches(src, w)
    stacked = torch.cat([p * p, p], 1)
    gauss = gaussian_window(w)
    win = torch.rand(3, w, w, generator=g)
    valid = (torch.rand(w, w, generator=g) > 0.4).float()
    d = patch_distances(stacked, win, valid, gauss)
    h = w // 2
    for k in range(len(centres)):
        r, c = int(centres[k, 0]), int(centres[k, 1])
        sp = src[:, r - h:r + h + 1, c - h:c + h + 1].double()
        gm = (gauss * valid).double()
        ref = (gm * (sp - win.double()) ** 2).sum() / (3 * gm.sum())
        assert abs(float(d[k]) - float(ref)) < 1e-5


def test_efros_leung_copies_every_pixel_from_the_source():
    src = skimage.data.brick()[:96, :96]
    r = efros_leung(src, 36, window=7, source_size=40, seed=0, progress=False)
    s = r.references[0][1]
    coords = r.extras["source_coords"]
    assert r.image.shape == (1, 36, 36) and coords.shape == (36, 36, 2)
    assert (coords >= 0).all()
    assert (coords[..., 0] < s.shape[1]).all() and (coords[..., 1] < s.shape[2]).all()
    # every output pixel is the source pixel recorded for it ...
    assert torch.equal(r.image, s[:, coords[..., 0], coords[..., 1]])
    # ... and therefore every 3x3 patch is assembled from source pixels; most are whole source
    # patches (neighbours copied from neighbours), which is what makes it a texture, not noise
    dy = coords[1:, :, :] - coords[:-1, :, :]
    dx = coords[:, 1:, :] - coords[:, :-1, :]
    coherent = ((dy == torch.tensor([1, 0])).all(-1).float().mean()
                + (dx == torch.tensor([0, 1])).all(-1).float().mean()) / 2
    assert float(coherent) > 0.3
    again = efros_leung(src, 36, window=7, source_size=40, seed=0, progress=False)
    other = efros_leung(src, 36, window=7, source_size=40, seed=1, progress=False)
    assert torch.equal(again.image, r.image) and not torch.equal(other.image, r.image)


def test_efros_leung_input_errors():
    with pytest.raises(InputError):
        efros_leung(torch.rand(1, 8, 8), 16, window=9)  # source smaller than the window
    with pytest.raises(InputError):
        efros_leung(torch.rand(1, 16, 16), 16, window=4)


# --- inversion, texture, style ------------------------------------------------------------------
def test_gram_oracle():
    f = torch.randn(2, 3, 4, 5)
    g = gram(f)
    ref = torch.einsum("bihw,bjhw->bij", f, f) / 20
    assert torch.allclose(g, ref, atol=1e-6)


def test_shallow_inversion_is_close_and_deep_is_not(clean_model, test_digits):
    from skimage.metrics import structural_similarity

    x, _ = test_digits
    img = x[5:6]
    before = model_state(clean_model.model)
    r = inversion_strip(clean_model, img, ["features.1", "features.9"], steps=100, seed=0,
                        progress=False, space="pixels")
    assert count_hooks(clean_model.model) == 0
    assert_same_state(model_state(clean_model.model), before)
    shallow, deep = r.images[0, 0].double().numpy(), r.images[1, 0].double().numpy()
    orig = img[0, 0].double().numpy()
    s1 = structural_similarity(shallow, orig, data_range=1.0)
    s2 = structural_similarity(deep, orig, data_range=1.0)
    assert s1 > 0.8, s1
    assert s2 < s1
    for layer in ("features.1", "features.9"):
        h = r.history[f"{layer}:loss"]
        assert h[-1] < 0.1 * h[0]


def test_invert_loss_falls_and_is_seeded(clean_model, test_digits):
    x, _ = test_digits
    a = invert(clean_model, x[:2], "features.3", steps=40, seed=2, progress=False, space="pixels")
    b = invert(clean_model, x[:2], "features.3", steps=40, seed=2, progress=False, space="pixels")
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (2, 1, 32, 32)
    assert a.diagnostics["final_loss"] < 0.2 * a.diagnostics["initial_loss"]
    assert a.history["features"][-1] < a.history["features"][0]


def test_gram_texture_loss_falls(clean_model):
    src = skimage.data.brick()[:128, :128]
    r = texture(clean_model, src, source_size=32, size=32, steps=60, seed=0, progress=False, space="pixels")
    assert r.images.shape == (1, 1, 32, 32)
    assert r.layers == ("features.1", "features.6", "features.9")
    assert r.diagnostics["final_loss"] < 0.05 * r.diagnostics["initial_loss"]
    assert 0.0 <= float(r.images.min()) and float(r.images.max()) <= 1.0
    # the texture matches the source's Gram statistics better than another texture does
    from convscope.methods.synthesis._features import reference_features

    grass = cs.synthesis._common.load_pixels(skimage.data.grass()[:128, :128], size=32)
    feats = {k: reference_features(clean_model, t, r.layers) for k, t in
             [("made", r.images), ("src", r.references[0][1][None]), ("grass", grass)]}

    def dist(a, b):
        return sum(float(((gram(feats[a][n]) - gram(feats[b][n])) ** 2).sum()
                         / (gram(feats[b][n]) ** 2).sum()) for n in r.layers)

    assert dist("made", "src") < dist("grass", "src")


def test_style_transfer_losses_fall(clean_model):
    content = skimage.data.camera()[100:356, 150:406]
    style = skimage.data.gravel()[:128, :128]
    r = style_transfer(clean_model, content, style, size=32, style_size=32, steps=60, seed=0,
                       progress=False, space="pixels")
    d = r.diagnostics
    assert d["initial_content"] == pytest.approx(0.0, abs=1e-9)  # starts at the content image
    assert d["final_style"] < 0.3 * d["initial_style"]
    assert d["final_loss"] < 0.3 * d["initial_loss"]
    assert d["final_content"] < 1.0  # the content is kept (relative error)
    assert r.images.shape == (1, 1, 32, 32)
    assert [t for t, _ in r.references] == ["content", "style"]


def test_mechanics_on_random_torchvision_models(tmp_path):
    vgg = cs.load_model("torchvision:squeezenet1_1", weights=None)  # VGG-like, small
    net = vgg.model
    before = model_state(net)
    r = style_transfer(vgg, torch.rand(3, 32, 32), torch.rand(3, 32, 32), steps=2, progress=False,
                       space="pixels")
    assert r.images.shape == (1, 3, 32, 32) and count_hooks(net) == 0
    assert_same_state(model_state(net), before)
    assert r.options["content_layers"] and len(r.options["style_layers"]) >= 3
    res = cs.load_model("torchvision:resnet18", weights=None)
    t = texture(res, torch.rand(3, 32, 32), steps=2, param="fft", progress=False, space="pixels")
    assert t.images.shape == (1, 3, 32, 32) and count_hooks(res.model) == 0
    t.save(tmp_path / "t.png")
    t.save_image(tmp_path / "t_only.png")
    from PIL import Image

    assert Image.open(tmp_path / "t_only.png").size == (32, 32)
    assert t._repr_png_()[:4] == b"\x89PNG" and "<img" in t.to_html()


def test_failures_leave_no_hooks_and_model_state(clean_model, test_digits):
    x, _ = test_digits
    net = clean_model.model
    with pytest.raises(LayerNotFoundError):
        invert(clean_model, x[:1], "features.99", steps=2, space="pixels")
    with pytest.raises(MethodError):  # a 2-D output cannot be inverted as a feature map
        invert(clean_model, x[:1], "classifier", steps=2, space="pixels")
    assert count_hooks(net) == 0 and not net.training
    assert all(p.requires_grad for p in net.parameters())


def test_inputs_not_mutated(clean_model, test_digits):
    x, _ = test_digits
    x = x[:4].clone()
    keep = x.clone()
    pgd(clean_model, x, eps=0.1, steps=2, space="pixels")
    invert(clean_model, x[:1], "features.1", steps=2, space="pixels")
    assert torch.equal(x, keep) and x.grad is None and not x.requires_grad


def test_model_copy_untouched_by_everything(test_digits):
    # a private model: parameters bit-identical after every task, no hooks left
    lm = cs.load_model("digits-cnn")
    ref = copy.deepcopy(lm.model.state_dict())
    x, _ = test_digits
    fooling_image(lm, 2, steps=3, space="pixels")
    texture(lm, torch.rand(1, 24, 24), steps=3, progress=False, space="pixels")
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in ref.items())
    assert count_hooks(lm.model) == 0


def test_attack_method_fgsm_is_one_step_like_fgsm(clean_model, test_digits):
    """``attack(method="fgsm")`` runs the single-step method (not a 10-step PGD under its name)."""
    x, _ = test_digits
    a = attack(clean_model, x[:4], eps=0.05, method="fgsm", space="pixels")
    b = fgsm(clean_model, x[:4], eps=0.05, space="pixels")
    assert a.options["steps"] == 1 and a.options["step_size"] == 0.05
    assert torch.equal(a.adversarial, b.adversarial)
    p = attack(clean_model, x[:4], eps=0.05, space="pixels")  # pgd: 10 steps from a random start
    assert p.method == "pgd" and p.options["steps"] == 10 and not torch.equal(p.adversarial, a.adversarial)
    with pytest.raises(cs.errors.InputError, match="method='fgsm' is a single step"):
        attack(clean_model, x[:2], eps=0.05, method="fgsm", steps=5, space="pixels")
