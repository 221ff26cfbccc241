"""The metric catalogue (#33) against Quantus 0.6.0 on the same plain model, images, maps and masks.

The model is a plain nn.Module on unnormalised [0, 1] pixels with functional ReLUs; its images have
a zero pixel, so Quantus's ``"black"`` (each image's minimum) is convscope's ``"min"``.
Maps are continuous random values (no ties, whose order Quantus leaves to NumPy's sort).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus  # noqa: E402  (the dev extra has it: a missing peer fails, not skips; conftest.py)
import torch
from helpers import metric_setup
from torch import nn

from convscope.methods.evaluation import complexity as co
from convscope.methods.evaluation import faithfulness as fa
from convscope.methods.evaluation import localisation as lo


@pytest.fixture(scope="module")
def setup():
    return metric_setup()


def _q(metric, net, x, maps, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = maps[:, None].numpy().copy()
        return np.asarray(metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=a, device="cpu", **kw),
                          dtype=float)


QKW = {"disable_warnings": True, "normalise": False, "abs": False}


def test_pixel_flipping_equals_quantus(setup):
    net, lm, x, maps, y = setup
    for step in (1, 4):
        q = _q(quantus.PixelFlipping(features_in_step=step, **QKW), net, x, maps, y)
        c = fa.pixel_flipping(lm, x, maps, baseline="min", features_in_step=step)
        assert c.scores.shape == (3, 144 // step + 1)
        np.testing.assert_allclose(c.scores[:, 1:].numpy(), q, atol=1e-5)
        # the area: trapezoid over the fraction flipped, from the intact start (hand formula)
        y_all = c.scores.double().numpy()
        hand = ((y_all[:, 1:] + y_all[:, :-1]) / 2).sum(1) / (144 // step)
        np.testing.assert_allclose(c.auc.numpy(), hand, atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_equals_quantus(setup, order):
    net, lm, x, maps, y = setup
    # patch 5 on 12 px: the grid is padded (1, 2) around the image, as in Quantus
    metric = quantus.RegionPerturbation(patch_size=5, order=order, regions_evaluation=6, **QKW)
    q = _q(metric, net, x, maps, y)
    c = fa.region_perturbation(lm, x, maps, baseline="min", patch_size=5, order=order, regions=6)
    np.testing.assert_allclose(c.deltas.numpy(), q, atol=1e-5)
    np.testing.assert_allclose(c.aopc.numpy(), q.sum(1) / 7, atol=1e-5)  # Samek et al. eq. 12


def test_selectivity_equals_quantus(setup):
    net, lm, x, maps, y = setup
    q = _q(quantus.Selectivity(patch_size=4, **QKW), net, x, maps, y)
    c = fa.selectivity(lm, x, maps, baseline="min", patch_size=4)
    np.testing.assert_allclose(c.scores.numpy(), q, atol=1e-5)


@pytest.mark.parametrize("step", [1, 4])
def test_faithfulness_estimate_equals_quantus(setup, step):
    net, lm, x, maps, y = setup
    q = _q(quantus.FaithfulnessEstimate(features_in_step=step, **QKW), net, x, maps, y)
    c = fa.faithfulness_estimate(lm, x, maps, baseline="min", features_in_step=step)
    np.testing.assert_allclose(c.numpy(), q, atol=1e-5)


def test_monotonicity_by_hand_where_quantus_never_inserts(setup):
    net, lm, x, maps, y = setup
    # Quantus 0.6.0 replaces baseline pixels by the baseline: every map passes
    q = _q(quantus.Monotonicity(features_in_step=36, **QKW), net, x, maps, y)
    assert q.all()
    got = fa.monotonicity(lm, x, maps, baseline="min", features_in_step=36)
    # hand: put 36 pixels back at a time, least relevant first, one image at a time
    want = []
    for i in range(3):
        order = torch.argsort(maps[i].flatten())
        cur = torch.full((144,), float(x[i].min()))
        scores = []
        for j in range(4):
            idx = order[j * 36:(j + 1) * 36]
            cur[idx] = x[i].flatten()[idx]
            with torch.no_grad():
                scores.append(float(torch.softmax(net(cur.view(1, 1, 12, 12)), 1)[0, y[i]]))
        want.append(all(b >= a for a, b in zip(scores, scores[1:], strict=False)))
    assert got.tolist() == want
    assert not all(want)  # random maps are not all monotonic: the check can fail


def test_complexity_equals_quantus(setup):
    _, _, x, maps, y = setup
    kw = {"disable_warnings": True}
    q = _q(quantus.Sparseness(**kw), None, x, maps, y)
    np.testing.assert_allclose(co.sparseness(maps).numpy(), q, atol=1e-5)
    q = _q(quantus.Complexity(**kw), None, x, maps, y)
    np.testing.assert_allclose(co.entropy_complexity(maps).numpy(), q, atol=1e-5)
    # Quantus normalises by the batch's maximum: compare one map at a time
    for i in range(3):
        q = _q(quantus.EffectiveComplexity(eps=0.3, **kw), None, x[i:i + 1], maps[i:i + 1], y[i:i + 1])
        assert co.effective_complexity(maps[i:i + 1], eps=0.3).tolist() == q.astype(int).tolist()


def test_complexity_analytic_cases():
    one = torch.zeros(1, 4, 4)
    one[0, 1, 2] = 3.0
    flat = torch.ones(1, 4, 4)
    assert co.sparseness(one).item() == pytest.approx(15 / 16)
    assert co.sparseness(flat).item() == pytest.approx(0.0, abs=1e-7)
    assert co.entropy_complexity(one).item() == pytest.approx(0.0, abs=1e-7)
    assert co.entropy_complexity(flat).item() == pytest.approx(np.log(16), abs=1e-6)
    assert co.effective_complexity(one).tolist() == [1]
    assert co.effective_complexity(flat).tolist() == [16]


def _masks():
    s = torch.zeros(3, 12, 12, dtype=torch.bool)
    s[:, 2:6, 3:9] = True
    s[1, 8:, 8:] = True
    return s


def _qs(metric, x, maps, masks, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = maps[:, None].numpy().copy()
        return np.asarray(metric(model=None, x_batch=x.numpy(), y_batch=y, a_batch=a,
                                 s_batch=masks[:, None].numpy().astype(float)), dtype=float)


def test_localisation_equals_quantus(setup):
    _, _, x, maps, y = setup
    s = _masks()
    pairs = [
        (quantus.TopKIntersection(k=20, **QKW), lo.top_k_intersection(maps, s, 20)),
        (quantus.TopKIntersection(k=20, concept_influence=True, **QKW),
         lo.top_k_intersection(maps, s, 20, concept_influence=True)),
        (quantus.RelevanceRankAccuracy(**QKW), lo.relevance_rank_accuracy(maps, s)),
        (quantus.RelevanceMassAccuracy(**QKW), lo.relevance_mass_accuracy(maps, s)),
        (quantus.AttributionLocalisation(positive_attributions=True, **QKW),
         lo.attribution_localisation(maps, s)),
        (quantus.AUC(**QKW), lo.localisation_auc(maps, s)),
    ]
    for metric, ours in pairs:
        np.testing.assert_allclose(ours.numpy(), _qs(metric, x, maps, s, y), atol=1e-5,
                                   err_msg=type(metric).__name__)


def test_attribution_localisation_weighted_by_hand():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 1, 1] = 3.0, 1.0, -5.0  # the negative value is ignored
    s = torch.zeros(1, 4, 4, dtype=torch.bool)
    s[0, :2, :2] = True
    assert lo.attribution_localisation(maps, s).item() == pytest.approx(0.75)
    assert lo.attribution_localisation(maps, s, weighted=True).item() == pytest.approx(0.75 * 16 / 4)


def test_focus_equals_quantus_and_mosaics():
    torch.manual_seed(1)
    q = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    am = torch.randn(3, 24, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantus.Focus(mosaic_shape=(1, 24, 24), **QKW)(
            model=nn.Identity(), x_batch=np.random.rand(3, 1, 24, 24).astype(np.float32),
            y_batch=np.zeros(3, int), a_batch=am[:, None].numpy(), custom_batch=q.int().tolist())
    np.testing.assert_allclose(lo.focus(am, q).numpy(), want, atol=1e-5)
    imgs = torch.arange(6.0)[:, None, None, None].expand(6, 1, 2, 2)
    mos, quads = lo.mosaic(imgs, torch.tensor([0, 1, 0, 1, 2, 2]), 0, n=4)
    assert mos.shape == (4, 1, 4, 4) and quads.sum(1).tolist() == [2, 2, 2, 2]
    # the target images (values 0 and 2) sit in the marked quadrants
    for m, qd in zip(mos, quads, strict=True):
        tiles = [m[0, :2, :2], m[0, :2, 2:], m[0, 2:, :2], m[0, 2:, 2:]]
        assert [int(t[0, 0]) in (0, 2) for t in tiles] == qd.tolist()
