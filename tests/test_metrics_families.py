"""Robustness, randomisation and axiomatic metrics (#33) against Quantus 0.6.0 given the same
draws, or against hand computations where Quantus follows another convention than the paper."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus  # noqa: E402  (the dev extra has it: a missing peer fails, not skips; conftest.py)
import torch
from helpers import grad_x_input, metric_setup
from torch import nn

from convscope.methods.evaluation import axiomatic as ax
from convscope.methods.evaluation import randomisation as ra
from convscope.methods.evaluation import robustness as ro


@pytest.fixture(scope="module")
def setup():
    return metric_setup()


def _quantus(metric, net, x, y, explain, a=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = explain(net, x.numpy(), y) if a is None else a
        return np.asarray(metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=a, explain_func=explain,
                                 device="cpu"), dtype=float)


@pytest.mark.parametrize("name", ["max", "avg", "lipschitz"])
def test_robustness_equals_quantus_given_its_draws(setup, name):
    net, lm, x, _, y = setup

    def q_explain(model, inputs, targets, **kw):
        return grad_x_input(net, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]

    def explainer(lm_, xx, t):
        return grad_x_input(net, xx, t)

    n, kw = 5, {"disable_warnings": True, "normalise": False, "abs": False, "nr_samples": 5}
    metric, ours = {
        "max": (quantus.MaxSensitivity(lower_bound=0.1, **kw), ro.max_sensitivity),
        "avg": (quantus.AvgSensitivity(lower_bound=0.1, **kw), ro.avg_sensitivity),
        "lipschitz": (quantus.LocalLipschitzEstimate(perturb_std=0.1, **kw), ro.local_lipschitz_estimate),
    }[name]
    np.random.seed(3)
    want = _quantus(metric, net, x, y, q_explain)
    np.random.seed(3)  # the same draws, in Quantus's order: one (B, C*H*W) array per sample
    if name == "lipschitz":
        d = np.stack([np.random.normal(0.0, 0.1, (3, 144)) for _ in range(n)])
    else:
        d = np.stack([np.random.uniform(-0.1, 0.1, (3, 144)) for _ in range(n)])
    got = ours(lm, x, explainer, targets=torch.as_tensor(y), noise=torch.as_tensor(d).view(n, 3, 1, 12, 12))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_robustness_analytic_and_seeded(setup):
    net, lm, x, _, y = setup

    def constant(lm_, xx, t):  # ignores the input: perfectly robust
        return torch.ones(xx.shape[0], 12, 12)

    def identity(lm_, xx, t):  # the map is the input: its change is the noise itself
        return xx[:, 0]

    assert ro.avg_sensitivity(lm, x, constant).abs().max() == 0
    assert ro.local_lipschitz_estimate(lm, x, constant).abs().max() == 0
    lip = ro.local_lipschitz_estimate(lm, x, identity, std=0.05, n_samples=3)
    np.testing.assert_allclose(lip.numpy(), 1.0, rtol=1e-5)  # ||d|| / ||d||
    a = ro.avg_sensitivity(lm, x, identity, seed=1)
    assert torch.equal(a, ro.avg_sensitivity(lm, x, identity, seed=1))
    assert (ro.max_sensitivity(lm, x, identity, seed=1) >= a).all()


def _ssim_2d(a, b, batched=True):
    """The paper's similarity, written here with scikit-image alone: SSIM of the 2-D absolute maps
    scaled to [0, 1], 7 x 7 window (not convscope's code)."""
    from skimage.metrics import structural_similarity

    out = []
    for u, v in zip(np.abs(a), np.abs(b), strict=True):
        u, v = u.reshape(12, 12), v.reshape(12, 12)
        out.append(structural_similarity(u / u.max(), v / v.max(), data_range=1.0, win_size=7))
    return np.asarray(out)


def test_random_logit_equals_quantus_given_the_papers_ssim(setup):
    net, lm, x, _, y = setup
    asked = []

    def q_explain(model, inputs, targets, **kw):
        asked.append(np.asarray(targets).tolist())
        return grad_x_input(net, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]

    def explainer(lm_, xx, t):
        return grad_x_input(net, xx, t)

    # Quantus draws the other class and explains it; its similarity is given the paper's 2-D SSIM
    want = _quantus(quantus.RandomLogit(num_classes=3, seed=42, normalise=False, abs=False,
                                        similarity_func=_ssim_2d, disable_warnings=True),
                    net, x, y, q_explain)
    other = ra.off_classes(torch.as_tensor(y), 3, 42)
    assert other.tolist() == asked[-1] and (other != torch.as_tensor(y)).all()
    got = ra.random_logit(lm, x, explainer, targets=torch.as_tensor(y))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Quantus's own convention (SSIM of the flattened signed maps) gives other numbers
    flat = _quantus(quantus.RandomLogit(num_classes=3, seed=42, disable_warnings=True), net, x, y, q_explain)
    assert not np.allclose(flat, want, atol=1e-3)
    # a map that ignores the class scores 1: the worst
    same = ra.random_logit(lm, x, lambda lm_, xx, t: xx[:, 0], targets=torch.as_tensor(y))
    np.testing.assert_allclose(same.numpy(), 1.0, atol=1e-6)


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_completeness_by_hand():
    import convscope as cs

    torch.manual_seed(0)
    net = Linear().eval()
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 4, "channels": 1})
    x = torch.rand(2, 1, 4, 4)
    t = torch.tensor([0, 1])
    gxi = net.fc.weight[t].detach().view(2, 4, 4) * x[:, 0]  # exact for a linear model, baseline 0
    np.testing.assert_allclose(ax.completeness(lm, x, gxi, targets=t).numpy(), 0.0, atol=1e-5)
    half = ax.completeness(lm, x, gxi / 2, targets=t)
    np.testing.assert_allclose(half.numpy(), 0.5, atol=1e-5)  # |s/2 - s| / |s|


def test_non_sensitivity_equals_quantus_on_non_negative_maps(setup):
    net, lm, x, maps, y = setup
    a = maps.abs()
    a[:, :6] = 0.0  # the top half gets no attribution
    kw = {"disable_warnings": True, "normalise": False, "abs": False}
    want = _quantus(quantus.NonSensitivity(eps=1e-5, **kw), net, x, y, None, a=a[:, None].numpy())
    got = ax.non_sensitivity(lm, x, a, baseline="min", targets=torch.as_tensor(y))
    assert got.tolist() == want.astype(int).tolist()
    # a map exactly on the pixels that move the score scores 0
    moved = torch.zeros(3, 144)
    base = x.amin((1, 2, 3), keepdim=True).expand_as(x)
    with torch.no_grad():
        f0 = torch.softmax(net(x), 1)[range(3), y]
        for i in range(144):
            xi = x.clone().flatten(2)
            xi[:, :, i] = base.flatten(2)[:, :, i]
            moved[:, i] = (torch.softmax(net(xi.view_as(x)), 1)[range(3), y] - f0).abs()
    oracle = torch.where(moved >= 1e-5, 1.0, 0.0).view(3, 12, 12)
    assert ax.non_sensitivity(lm, x, oracle, baseline="min", targets=torch.as_tensor(y)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("step", [1, 4])
def test_monotonicity_correlation_equals_quantus(setup, step):
    from convscope.methods.evaluation import faithfulness_stats as st

    net, lm, x, maps, y = setup
    metric = quantus.MonotonicityCorrelation(nr_samples=1, features_in_step=step, perturb_baseline="black",
                                             abs=False, normalise=False, disable_warnings=True)
    want = _quantus(metric, net, x, y, None, a=maps[:, None].numpy())
    got = st.monotonicity_correlation(lm, x, maps, baseline="min", features_in_step=step)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_sensitivity_n_and_infidelity_on_a_linear_model():
    import convscope as cs
    from convscope.methods.evaluation import faithfulness_stats as st

    torch.manual_seed(0)
    net = Linear().eval()
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 4, "channels": 1})
    x = torch.rand(3, 1, 4, 4)
    t = torch.tensor([0, 1, 0])
    gxi = net.fc.weight[t].detach().view(3, 4, 4) * x[:, 0]  # complete for the logit, baseline 0
    sens = st.sensitivity_n(lm, x, gxi, sizes=[1, 4, 8], n_samples=20, targets=t)
    np.testing.assert_allclose(sens.numpy(), 1.0, atol=1e-5)  # the drop IS the attribution sum
    # infidelity compares I . Phi with the drop: the gradient (the weights) is exact for a linear model,
    # gradient x input is not
    grad = net.fc.weight[t].detach().view(3, 4, 4)
    np.testing.assert_allclose(st.infidelity(lm, x, grad, targets=t, patch_size=2).numpy(), 0.0, atol=1e-9)
    assert (st.infidelity(lm, x, gxi, targets=t, patch_size=2) > 1e-4).all()
    rnd = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert (st.sensitivity_n(lm, x, rnd, sizes=[4], n_samples=20, targets=t) < 0.9).all()
    # hand: one sample, the patch's attribution sum against the logit drop
    inf = st.infidelity(lm, x, rnd, targets=t, patch_size=2, n_samples=1, seed=5)
    g = torch.Generator().manual_seed(5)
    top, left = torch.randint(0, 3, (3, 1), generator=g), torch.randint(0, 3, (3, 1), generator=g)
    for i in range(3):
        patch = torch.zeros(4, 4, dtype=torch.bool)
        patch[top[i, 0]:top[i, 0] + 2, left[i, 0]:left[i, 0] + 2] = True
        drop = float((net.fc.weight[t[i]] * (x[i, 0] * patch).flatten()).sum())
        want = (float((rnd[i] * x[i, 0] * patch).sum()) - drop) ** 2
        assert inf[i].item() == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_relative_stability_input_equals_quantus_output_by_hand(setup):
    net, lm, x, _, y = setup

    def q_explain(model, inputs, targets, **kw):
        return grad_x_input(net, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]

    def explainer(lm_, xx, t):
        return grad_x_input(net, xx, t)

    n = 4
    np.random.seed(1)
    kw = {"nr_samples": n, "normalise": False, "abs": False, "disable_warnings": True}
    want = _quantus(quantus.RelativeInputStability(**kw), net, x, y, q_explain)
    np.random.seed(1)
    draws = np.stack([np.random.uniform(0.02, 0.2, (3, 144)) for _ in range(n)])
    d = torch.as_tensor(draws).view(n, 3, 1, 12, 12)
    yt = torch.as_tensor(y)
    with torch.no_grad():
        for k in range(n):  # no draw changes the class here
            assert (net(x + d[k].float()).argmax(-1) == yt).all()
    got = ro.relative_stability(lm, x, explainer, kind="input", targets=yt, noise=d)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # output stability, the paper's eq. 5: relative change of the logits in the denominator
    ros = ro.relative_stability(lm, x, explainer, kind="output", targets=yt, noise=d)
    e0 = grad_x_input(net, x, yt).double().flatten(1)
    e0_div = torch.where(e0 == 0, torch.full_like(e0, 1e-6), e0)  # a zero divisor counts as eps
    h0 = net(x).detach().double()
    hand = []
    for k in range(n):
        xp = (x.double() + d[k]).float()
        ep = grad_x_input(net, xp, yt).double().flatten(1)
        hp = net(xp).detach().double()
        hand.append((((e0 - ep) / e0_div).norm(dim=1) / ((h0 - hp) / h0).norm(dim=1)))
    np.testing.assert_allclose(ros.numpy(), torch.stack(hand).amax(0).numpy(), rtol=1e-4)


def test_consistency_by_hand():
    maps = torch.zeros(5, 4, 4)
    maps[[0, 1, 2], 0, :2] = torch.tensor([2.0, 1.0])  # images 0-2 select the same two pixels
    maps[[3, 4], 3, 2:] = torch.tensor([2.0, 1.0])  # images 3-4 select two others
    maps[4, 1, 1] = 0.5  # below the top 2: still the same explanation
    pred = torch.tensor([1, 1, 0, 2, 2])
    got = ro.consistency(maps, pred, n=2)
    np.testing.assert_allclose(got.numpy(), [0.5, 0.5, 0.0, 1.0, 1.0])
    alone = ro.consistency(torch.eye(4).view(4, 2, 2), torch.zeros(4), n=1)
    assert torch.isnan(alone).all()  # no other image shares an explanation: no evidence either way


class FirstPixels(nn.Module):
    """Logits = the first three pixels: predictions that vary with the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 1.0


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_sufficiency_equals_quantus_where_an_image_has_neighbours(threshold):
    from convscope.methods.evaluation import faithfulness_stats as st

    net = FirstPixels().eval()
    x = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    a = torch.rand(10, 12, 12, generator=torch.Generator().manual_seed(4))
    a[5:] = a[:5] + 0.05 * torch.rand(5, 12, 12, generator=torch.Generator().manual_seed(5))  # near pairs
    pred = net(x).argmax(1)
    assert len(set(pred.tolist())) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = np.asarray(quantus.Sufficiency(threshold=threshold, disable_warnings=True)(
            model=net, x_batch=x.numpy(), y_batch=pred.numpy(), a_batch=a[:, None].numpy(), device="cpu"))
    got = st.sufficiency(a, pred, threshold).numpy()
    has = np.isfinite(got)
    assert has.any()
    np.testing.assert_allclose(got[has], want[has], atol=1e-6)
    np.testing.assert_allclose(want[~has], 0.0)  # Quantus's 0 where there is no neighbour: NaN here
