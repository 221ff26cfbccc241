"""Smooth and efficient MPRT, continuity, relative representation stability and input invariance
(#33) against Quantus 0.6.0 given the same randomised models and draws, and against hand
computations where Quantus departs from the paper."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import quantus  # noqa: E402  (the dev extra has it: a missing peer fails, not skips; conftest.py)
import scipy.stats
import torch
from helpers import grad_x_input, metric_setup
from torch import nn

import convscope as cs
from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.methods.evaluation import axiomatic as ax
from convscope.methods.evaluation import randomisation as ra
from convscope.methods.evaluation import randomisation_revisited as rr
from convscope.methods.evaluation import robustness as ro


def _fixed(p: torch.Tensor) -> torch.Tensor:
    return torch.cos(torch.arange(p.numel(), dtype=p.dtype) * 1.7).view_as(p) * 0.3


class FixedConv(nn.Conv2d):
    """A convolution whose re-initialisation ignores the random state: Quantus's randomised
    layers and convscope's are then the same, whatever seeds each uses."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(_fixed(self.weight))
            self.bias.copy_(_fixed(self.bias))


class FixedLinear(nn.Linear):
    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(_fixed(self.weight))
            self.bias.copy_(_fixed(self.bias))


class Net(nn.Module):
    """Unpadded conv, functional ReLU, pool, linear; 1 x 12 x 12 pixels in [0, 1], 3 classes."""

    def __init__(self, conv: type[nn.Conv2d] = nn.Conv2d, fc: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.conv = conv(1, 4, 3)
        self.fc = fc(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.max_pool2d(torch.nn.functional.relu(self.conv(x)), 2).flatten(1))


def _net(fixed: bool = True) -> tuple[nn.Module, object, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    net = (Net(FixedConv, FixedLinear) if fixed else Net()).eval()
    with torch.no_grad():
        for p in net.parameters():  # the "trained" weights: not the re-initialisation's
            p.normal_(0.0, 0.3)
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 12, "channels": 1},
                       class_names=["a", "b", "c"])
    x = torch.rand(4, 1, 12, 12)
    x[:, :, 0, 0] = 0.0
    with torch.no_grad():
        y = net(x).argmax(1).numpy()
    return net, lm, x, y


def gxi(lm_, xx, t):
    return grad_x_input(lm_.model, xx, t)


def _q_explain(model, inputs, targets, **kw):
    return grad_x_input(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]


def _call(metric, net, x, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=net, x_batch=x.numpy(), y_batch=y, device="cpu", **kw)


def test_smooth_mprt_stages_equal_quantus_and_average_leaves_out_the_trained_model():
    net, lm, x, y = _net()
    q = _call(quantus.SmoothMPRT(nr_samples=1, layer_order="bottom_up", disable_warnings=True), net, x, y,
              a_batch=None, explain_func=quantus.explain, explain_func_kwargs={"method": "InputXGradient"})
    assert list(q) == ["original", "conv", "fc"]
    want = np.mean([q["conv"], q["fc"]], axis=0)
    got = rr.smooth_mprt(lm, x, gxi, n_samples=1, targets=torch.as_tensor(y))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Quantus's "average" puts the un-randomised model's 1.0 into the mean; the paper's does not
    q_avg = _call(quantus.SmoothMPRT(nr_samples=1, layer_order="bottom_up", disable_warnings=True,
                                     return_average_correlation=True), net, x, y, a_batch=None,
                  explain_func=quantus.explain, explain_func_kwargs={"method": "InputXGradient"})
    np.testing.assert_allclose(q_avg, np.mean([q["original"], q["conv"], q["fc"]], axis=0), rtol=1e-6)
    assert not np.allclose(q_avg, got.numpy(), atol=1e-3)


def test_smooth_mprt_by_hand_with_given_noise():
    net, lm, x, y = _net()
    t = torch.as_tensor(y)
    n = 3
    d = torch.randn(n - 1, *x.shape, generator=torch.Generator().manual_seed(4)) * 0.05

    def smooth(model):  # the mean of the maps of the noisy copies and of x itself
        return (grad_x_input(model, x + d[0], t) + grad_x_input(model, x + d[1], t)
                + grad_x_input(model, x, t)) / 3

    base = smooth(net)
    stage1 = copy.deepcopy(net)
    stage1.conv.reset_parameters()  # bottom-up: the input side first
    stage2 = copy.deepcopy(stage1)
    stage2.fc.reset_parameters()
    s1, s2 = smooth(stage1), smooth(stage2)
    hand = [np.mean([scipy.stats.spearmanr(base[i].abs().flatten(), s[i].abs().flatten())[0]
                     for s in (s1, s2)]) for i in range(len(x))]
    got = rr.smooth_mprt(lm, x, gxi, n_samples=n, noise=d, targets=t)
    np.testing.assert_allclose(got.numpy(), hand, rtol=1e-5, atol=1e-6)
    assert torch.equal(net.conv.weight, _net()[0].conv.weight)  # the caller's model is untouched
    # the seeded draws are the same at every call, with std = magnitude * (max - min) per image
    a = rr.smooth_mprt(lm, x, gxi, n_samples=4, noise_magnitude=0.2, seed=3)
    assert torch.equal(a, rr.smooth_mprt(lm, x, gxi, n_samples=4, noise_magnitude=0.2, seed=3))
    ident = rr.smoothed(lambda lm_, xx, tt: xx[:, 0], n_samples=2001, noise_magnitude=0.5, seed=1)
    xs = x * torch.tensor([1.0, 2.0, 0.5, 1.0])[:, None, None, None]
    noise_sd = (ident(lm, xs, t) - xs[:, 0].double()) * 2001 / 2000
    want_sd = 0.5 * (xs.amax((1, 2, 3)) - xs.amin((1, 2, 3))).double() / np.sqrt(2000)
    np.testing.assert_allclose(noise_sd.flatten(1).std(1).numpy(), want_sd.numpy(), rtol=0.15)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_mprt_equals_quantus_given_the_same_randomised_layers(mode):
    net, lm, x, y = _net()
    order = {"cascading": "top_down", "independent": "independent"}[mode]
    q = _call(quantus.MPRT(layer_order=order, disable_warnings=True), net, x, y, a_batch=None,
              explain_func=_q_explain)
    stages = [k for k in q if k != "original"]
    assert stages == (["fc", "conv"] if mode == "cascading" else ["conv", "fc"])
    got = ra.mprt(lm, x, gxi, mode=mode, targets=torch.as_tensor(y))
    np.testing.assert_allclose(got.numpy(), np.mean([q[k] for k in stages], axis=0), rtol=1e-5, atol=1e-6)


def test_efficient_mprt_equals_quantus():
    # fixed re-initialisation: both randomise to the same model
    net, lm, x, y = _net()
    q = _call(quantus.EfficientMPRT(disable_warnings=True), net, x, y, a_batch=None, explain_func=_q_explain)
    got = rr.efficient_mprt(lm, x, gxi, targets=torch.as_tensor(y))
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-5, atol=1e-7)
    # a plain model, given Quantus's randomised model (torch.manual_seed(seed + 1) before each reset)
    net, lm, x, y = _net(fixed=False)
    rand = copy.deepcopy(net)
    for m in rand.modules():
        if hasattr(m, "reset_parameters"):
            torch.manual_seed(43)
            m.reset_parameters()
    q = _call(quantus.EfficientMPRT(seed=42, disable_warnings=True), net, x, y, a_batch=None,
              explain_func=_q_explain)
    got = rr.efficient_mprt(lm, x, gxi, targets=torch.as_tensor(y), random_model=rand)
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-5, atol=1e-7)
    # a map that ignores the model does not change: eMPRT 0, the worst
    same = rr.efficient_mprt(lm, x, lambda lm_, xx, t: xx[:, 0] + 0.0)
    np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-12)


def test_discrete_entropy_analytic():
    m = torch.zeros(2, 4, 4)
    m[0, :2] = 1.0  # two equally full bins: log 2
    m[1] = torch.arange(16.0).view(4, 4)  # 16 values in 16 bins: log 16
    np.testing.assert_allclose(rr.discrete_entropy(m, 16).numpy(), [np.log(2), np.log(16)], rtol=1e-12)


def test_continuity_equals_quantus():
    net, lm, x, maps, y = metric_setup()
    def q_explain(model, inputs, targets, **kw):  # the gradient: the last step blanks the image, and
        return _grad_of(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]

    q = _call(quantus.Continuity(nr_steps=6, abs=False, normalise=False, disable_warnings=True), net, x, y,
              a_batch=None, explain_func=q_explain)  # Quantus refuses an all-zero map (x . grad there)
    got = ro.continuity(lm, x, _grad, n_steps=6, baseline="min", targets=torch.as_tensor(y))
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-5)
    # a map that ignores the input scores 0; the input itself: ||x - x'||_1 / ||x - x'||_2 >= 1
    assert ro.continuity(lm, x, lambda lm_, xx, t: torch.ones(len(xx), 12, 12)).abs().max() == 0
    assert (ro.continuity(lm, x, lambda lm_, xx, t: xx[:, 0], n_steps=6) >= 1).all()


def test_relative_representation_stability_equals_quantus():
    net, lm, x, _, y = metric_setup()
    n = 4
    np.random.seed(1)
    want = _call(quantus.RelativeRepresentationStability(nr_samples=n, layer_names=["conv"], normalise=False,
                                                         abs=False, disable_warnings=True), net, x, y,
                 a_batch=None, explain_func=_q_explain)
    np.random.seed(1)
    d = torch.as_tensor(np.stack([np.random.uniform(0.02, 0.2, (3, 144)) for _ in range(n)]))
    d = d.view(n, 3, 1, 12, 12)
    got = ro.relative_stability(lm, x, gxi, kind="representation", layer="conv", targets=torch.as_tensor(y),
                                noise=d)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # without layer=: the model's default layer, else its last spatial layer (here "conv")
    by_default = ro.relative_stability(lm, x, gxi, kind="representation", targets=torch.as_tensor(y), noise=d)
    torch.testing.assert_close(by_default, got)


def _grad_of(net, xx, t):
    xx = xx.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xx).gather(1, t[:, None].long()).sum(), xx)
    return g.sum(1)


def _grad(lm_, xx, t):
    return _grad_of(lm_.model, xx, t)


def test_input_invariance_equals_quantus_and_kindermans():
    net, lm, x, y = _net(fixed=False)
    plain = {_grad: _grad_of, gxi: grad_x_input}
    for explainer, invariant in ((_grad, 1.0), (gxi, 0.0)):  # Kindermans et al.: the gradient is invariant,
        def q_explain(model, inputs, targets, f=plain[explainer], **kw):  # gradient x input is not
            return f(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]
        q = _call(quantus.InputInvariance(disable_warnings=True), net, x, y, a_batch=None,
                  explain_func=q_explain)
        got = ax.input_invariance(lm, x, explainer, targets=torch.as_tensor(y))
        np.testing.assert_array_equal(got.numpy(), np.asarray(q, dtype=float))
        assert (got == invariant).all()
    # the shifted model computes on x - 1 what the model computes on x
    twin, name = ax.shifted_model(net, -1.0)
    assert name == "conv"
    torch.testing.assert_close(twin(x - 1.0), net(x), atol=1e-5, rtol=1e-5)


def test_input_invariance_warns_where_padding_breaks_the_compensation():
    net, lm, x, maps, y = metric_setup()  # its first convolution pads with zeros
    with pytest.warns(UnreliableResultWarning, match="pads with zeros"):
        ax.input_invariance(lm, x, _grad)
    nobias = cs.load_model(nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(200, 3)),
                           preprocessing={"preset": "none", "size": 12, "channels": 1})
    with pytest.raises(InputError, match="bias"):
        ax.input_invariance(nobias, x, _grad)


def test_the_grid_puts_input_invariances_padding_warning_in_its_notes():
    net, lm, x, maps, y = metric_setup()  # its first convolution pads with zeros
    x = torch.cat([x, torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(5))])  # 8: no
    with warnings.catch_warnings(record=True) as caught:  # few-images note
        warnings.simplefilter("always")
        tab = cs.evaluate(lm, x, {"grad": _grad, "gxi": gxi}, metrics=["input_invariance"], progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, UnreliableResultWarning)]
    # the notes a caller on another thread reads (the web app's /trust page) carry it, once for both
    # methods (the gap is the model's, not the method's), and it is warned once, as the notes are
    assert [n for n in tab.notes if "pads with zeros" in n] == said and len(said) == 1
    assert said[0].startswith("input_invariance: ") and "\n" not in said[0]
    unpadded = _net(fixed=False)[1]  # exact compensation: no note
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableResultWarning)
        tab = cs.evaluate(unpadded, x, {"grad": _grad}, metrics=["input_invariance"], progress=False)
    assert tab.notes == ()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1, 10**9])
def test_options_validated_at_the_edge(bad):
    net, lm, x, maps, y = metric_setup()
    with pytest.raises(InputError):
        rr.smooth_mprt(lm, x, gxi, n_samples=bad)
    with pytest.raises(InputError):
        rr.efficient_mprt(lm, x, gxi, n_bins=bad)
    with pytest.raises(InputError):
        ro.continuity(lm, x, gxi, n_steps=bad)
    if bad != 0 and bad != 10**9:
        with pytest.raises(InputError):
            rr.smooth_mprt(lm, x, gxi, noise_magnitude=bad)
    if not np.isfinite(bad):
        with pytest.raises(InputError):
            ax.input_invariance(lm, x, _grad, shift=bad)
    if not np.isfinite(bad) or bad < 0:
        with pytest.raises(InputError):
            ax.input_invariance(lm, x, _grad, atol=bad)
    with pytest.raises(InputError, match="stability"):
        ro.relative_stability(lm, x, gxi, kind="representations")


def test_grid_runs_the_new_metrics_with_their_stated_defaults():
    net, lm, x, y = _net(fixed=False)
    x = torch.cat([x, torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))])
    names = ["smooth_mprt", "efficient_mprt", "continuity", "relative_representation_stability",
             "input_invariance"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableResultWarning)  # 8 images: wide intervals
        tab = cs.evaluate(lm, x, {"grad": _grad, "gxi": gxi}, metrics=names,
                          options={"relative_representation_stability": {"layer": "conv"},
                                   "smooth_mprt": {"n_samples": 3}}, progress=False)
    for m in names:
        assert np.isfinite(tab.scores["grad"][m]).all(), m
    assert tab.options["smooth_mprt"]["n_samples"] == 3 and tab.options["efficient_mprt"]["n_bins"] == 100
    np.testing.assert_array_equal(tab.scores["grad"]["input_invariance"], 1.0)
    np.testing.assert_array_equal(tab.scores["gxi"]["input_invariance"], 0.0)
    want = ro.continuity(lm, x, _grad)  # the grid's default targets: the predicted classes
    np.testing.assert_allclose(tab.scores["grad"]["continuity"], want.double().numpy(), rtol=1e-6)


def test_batched_rank_correlation_equals_scipy_with_ties():
    from convscope.methods.evaluation.sanity import spearman_rows

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 200, generator=g).double(), torch.randn(6, 200, generator=g).double()
    a[:, :60] = 0.0  # ties, as in maps with dead pixels
    b[:, 40:90] = 1.5
    b[2] = a[2] * 3  # a monotone copy: 1
    a[5] = 0.7  # a constant row: no ranking, 0
    want = [scipy.stats.spearmanr(u, v)[0] for u, v in zip(a.numpy(), b.numpy(), strict=True)]
    want[5] = 0.0
    np.testing.assert_allclose(spearman_rows(a, b).numpy(), want, atol=1e-12)


def test_edge_cases_say_what_is_wrong():
    net, lm, x, maps, y = metric_setup()
    const = rr.efficient_mprt(lm, x, lambda lm_, xx, t: torch.ones(len(xx), 12, 12))
    assert torch.isnan(const).all()  # a constant map has no entropy to compare: NaN, not a score
    with pytest.raises(cs.errors.ConvscopeError, match="nosuch"):
        ro.relative_stability(lm, x, gxi, kind="representation", layer="nosuch")
    with pytest.raises(InputError, match="noise must be"):
        rr.smooth_mprt(lm, x, gxi, n_samples=3, noise=torch.zeros(1, *x.shape))
    with pytest.raises(InputError, match="mode"):
        rr.smooth_mprt(lm, x, gxi, n_samples=2, mode="sideways")


def test_smoothed_explains_one_noisy_batch_at_a_time_in_the_input_dtype():
    # the noise is never built for all samples at once: each call sees B images in x's dtype
    seen = []

    def probe(lm_, xx, tt):
        seen.append((xx.shape[0], xx.dtype))
        return xx[:, 0]

    x = torch.rand(3, 1, 8, 8)
    f = rr.smoothed(probe, n_samples=5, noise_magnitude=0.1, seed=0)
    out = f(None, x, torch.zeros(3, dtype=torch.long))
    assert seen == [(3, torch.float32)] * 5 and out.shape == (3, 8, 8)
    assert torch.equal(out, f(None, x, torch.zeros(3, dtype=torch.long)))  # the same draws each call
