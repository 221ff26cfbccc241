"""The metric catalogue (#33): ROAD and IROF, the known order on the bundled cue model, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus  # noqa: E402  (the dev extra has it: a missing peer fails, not skips; conftest.py)
import torch
from helpers import assert_same_state, metric_setup, model_state

import convscope as cs
from convscope.core.errors import InputError
from convscope.methods.evaluation import complexity as co
from convscope.methods.evaluation import faithfulness as fa
from convscope.methods.evaluation import faithfulness_sets as fs
from convscope.methods.evaluation import localisation as lo
from convscope.methods.evaluation.explainers import sobel_explainer


def test_imputation_equals_quantus_and_solves_the_neighbour_equations():
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    img = rng.random((2, 9, 7))
    for n_removed in (1, 12, 40, 62):  # up to all but one pixel
        idx = rng.permutation(63)[:n_removed]
        removed = np.zeros(63, bool)
        removed[idx] = True
        ours = fs.impute(img, removed.reshape(9, 7))
        np.testing.assert_allclose(ours, noisy_linear_imputation(img.copy(), idx, noise=0.0), atol=1e-10)
        assert np.array_equal(ours.reshape(2, -1)[:, ~removed], img.reshape(2, -1)[:, ~removed])
    # a pixel inside a known constant region is imputed to that constant
    flat = np.full((1, 5, 5), 0.3)
    hole = np.zeros((5, 5), bool)
    hole[2, 2] = True
    assert fs.impute(flat, hole)[0, 2, 2] == pytest.approx(0.3)


def test_road_equals_quantus_without_noise(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:4])
    jitter = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = cue_test.masks[:4].float() + 0.01 * jitter
    y = cue_model.model(x).argmax(1)
    pct = [5, 20, 40, 60]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantus.ROAD(noise=0.0, percentages=pct, normalise=False, abs=False, disable_warnings=True)(
            model=cue_model.model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(),
            device="cpu")
    got = fs.road(cue_model, x, maps, noise=0.0, percentages=pct, targets=y)
    np.testing.assert_allclose(got.accuracy.numpy(), [want[p] for p in pct], atol=1e-6)
    # LeRF removes the least relevant pixels first: Quantus's (MoRF-only) ROAD on the reversed maps
    # (2 - maps: the same pixels in the opposite order; Quantus refuses an all-negative map)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantus.ROAD(noise=0.0, percentages=pct, normalise=False, abs=False, disable_warnings=True)(
            model=cue_model.model, x_batch=x.numpy(), y_batch=y.numpy(),
            a_batch=(2.0 - maps[:, None]).numpy(),
            device="cpu")
    lerf = fs.road(cue_model, x, maps, order="lerf", noise=0.0, percentages=pct, targets=y)
    np.testing.assert_allclose(lerf.accuracy.numpy(), [want[p] for p in pct], atol=1e-6)
    assert lerf.accuracy.mean() > got.accuracy.mean()  # the cue mask: keeping the cue keeps the class
    noisy = fs.road(cue_model, x, maps, percentages=pct, targets=y, seed=3)
    assert torch.equal(noisy.scores, fs.road(cue_model, x, maps, percentages=pct, targets=y, seed=3).scores)


def test_irof_by_hand():
    net, lm, x, maps, y = metric_setup()
    seg = torch.zeros(3, 12, 12, dtype=torch.long)
    seg[:, :6, 6:], seg[:, 6:, :6], seg[:, 6:, 6:] = 1, 2, 3
    got = fs.irof(lm, x, maps, segments=seg * 5, targets=torch.as_tensor(y))  # labels need not be 0..S-1
    for i in range(3):
        means = torch.stack([maps[i][seg[i] == s].mean() for s in range(4)])
        fill = x[i].mean((-2, -1), keepdim=True)
        cur = x[i].clone()
        with torch.no_grad():
            f0 = torch.softmax(net(x[i:i + 1]), 1)[0, y[i]]
            ys = [1.0]
            for s in torch.argsort(-means).tolist():
                cur = torch.where(seg[i] == s, fill, cur)
                ys.append(float(torch.softmax(net(cur[None]), 1)[0, y[i]] / f0))
        area = sum((a + b) / 2 for a, b in zip(ys, ys[1:], strict=False)) / 4
        assert got[i].item() == pytest.approx(1 - area, abs=1e-5)


def _cue_batch(cue_model, cue_test, n=12):
    x = cue_model.preprocessing.normalize(cue_test.images[:n])
    masks = cue_test.masks[:n]
    maps = {
        "cue mask": masks.float(),
        "grad-cam": cs.explain(cue_model, x, method="gradcam").map,
        "sobel": sobel_explainer(cue_model, x, torch.zeros(n, dtype=torch.long)),
        "random": torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(0)),
    }
    return x, masks, maps


def test_maps_that_find_the_cue_beat_random_and_sobel(cue_model, cue_test):
    x, masks, maps = _cue_batch(cue_model, cue_test)
    # faithfulness: region perturbation (MoRF AOPC, 4 px patches on a blurred baseline: black
    # speckles read as another texture to this model, docs/evaluation.md)
    aopc = {k: fa.region_perturbation(cue_model, x, m, patch_size=4, regions=16, baseline="blur").aopc.mean()
            for k, m in maps.items()}
    flip = {k: fa.pixel_flipping(cue_model, x, m, features_in_step=16, baseline="blur").auc.mean()
            for k, m in maps.items()}
    loc = {k: lo.relevance_rank_accuracy(m, masks).mean() for k, m in maps.items()}
    auc = {k: lo.localisation_auc(m, masks).mean() for k, m in maps.items()}
    for good in ("cue mask", "grad-cam"):
        for bad in ("random", "sobel"):
            # measured (12 images): AOPC cue 0.73, Grad-CAM 0.67, Sobel 0.50, random 0.06; flipping
            # area 0.19, 0.19, 0.30, 0.46; rank accuracy 1.0, 0.76, 0.47, 0.07; AUC 1.0, 0.94, 0.79, 0.50
            assert aopc[good] > aopc[bad] + 0.1, (good, bad, aopc)
            assert flip[good] < flip[bad] - 0.05, (good, bad, flip)
            assert loc[good] > loc[bad] + 0.2, (good, bad, loc)
            assert auc[good] > auc[bad] + 0.1, (good, bad, auc)
    # a random map scores as random: chance level on the localisation metrics
    share = masks.flatten(1).float().mean(1)
    assert abs(float(auc["random"]) - 0.5) < 0.06
    assert abs(float((lo.relevance_mass_accuracy(maps["random"], masks) - share).mean())) < 0.03
    influence = lo.top_k_intersection(maps["random"], masks, 200, concept_influence=True)
    assert abs(float(influence.mean()) - 1) < 0.25


def test_metrics_leave_the_model_as_it_was(cue_model, cue_test):
    x, masks, maps = _cue_batch(cue_model, cue_test, n=2)
    before = model_state(cue_model.model)
    fa.pixel_flipping(cue_model, x, maps["grad-cam"], features_in_step=64)
    fs.irof(cue_model, x, maps["grad-cam"])
    assert_same_state(before, model_state(cue_model.model))


def test_bad_input_is_one_line_errors(cue_model, cue_test):
    x, masks, maps = _cue_batch(cue_model, cue_test, n=2)
    m = maps["grad-cam"]
    empty, full = masks.clone(), masks.clone()
    empty[1] = False
    full[0] = True
    nan = m.clone()
    nan[0, 3, 3] = float("nan")
    inf = m.clone()
    inf[1, 0, 0] = float("inf")
    cases = [
        lambda: fa.pixel_flipping(cue_model, x, m[:, :16]),  # wrong map shape
        lambda: fa.region_perturbation(cue_model, x, m[:1]),  # wrong batch
        lambda: lo.relevance_rank_accuracy(m, empty),
        lambda: lo.localisation_auc(m, full),
        lambda: lo.top_k_intersection(m, None),  # a mask metric without a mask
        lambda: fa.faithfulness_estimate(cue_model, x, nan),
        lambda: co.sparseness(inf),
        lambda: fa.region_perturbation(cue_model, x, m, patch_size=0),
        lambda: fa.region_perturbation(cue_model, x, m, patch_size=float("nan")),
        lambda: fa.pixel_flipping(cue_model, x, m, features_in_step=7),  # does not divide 1024
        lambda: fa.pixel_flipping(cue_model, x, m, features_in_step=-1),
        lambda: fa.region_perturbation(cue_model, x, m, regions=10**30 * 0),
        lambda: fs.road(cue_model, x, m, noise=float("inf")),
        lambda: fs.road(cue_model, x, m, percentages=[0, 50]),
        lambda: co.effective_complexity(m, eps=-1.0),
        lambda: lo.top_k_intersection(m, masks, k=10**9),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(InputError) as err:
            case()
        assert "\n" not in str(err.value), (i, str(err.value))
