"""Evaluation metrics, each checked on a model whose true cause is known or on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.core.hooks import count_hooks
from convscope.methods.evaluation import (
    as_explainer,
    boxes_to_masks,
    deletion,
    energy_pointing_game,
    faithfulness_correlation,
    gini,
    insertion,
    map_similarity,
    max_sensitivity,
    model_randomization,
    pixel_ranks,
    pointing_game,
    randomizable_layers,
    sobel_explainer,
)
from convscope.methods.evaluation.curves import auc


class Linear(nn.Module):
    """logit_k = sum_ij w_k,ij x_ij: the true contribution of pixel ij to class k is w_k,ij x_ij."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())  # (K, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,khw->bk", x, self.w)


def _lin4():
    # 2x2 image of ones, class 0 weights 4, 3, 2, 1; class 1 all zero
    w = torch.zeros(2, 2, 2)
    w[0] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    return Linear(w), torch.ones(1, 1, 2, 2), w[0][None]


# --- curve areas: hand-computed -------------------------------------------------------------------
def test_auc_is_the_trapezoid_rule():
    f = torch.tensor([0.0, 0.25, 0.5, 1.0])
    s = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(auc(f, s), torch.tensor([0.25 + 0.125, 0.125 + 0.25 + 0.5]))


def test_deletion_and_insertion_areas_by_hand():
    net, x, amap = _lin4()
    kw = dict(targets=0, baseline=0.0, score="logit", steps=4)
    d = deletion(net, x, amap, **kw)
    torch.testing.assert_close(d.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(d.scores, torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0]]))
    assert d.auc.item() == pytest.approx(0.25 * (8 + 4.5 + 2 + 0.5))  # 3.75
    i = insertion(net, x, amap, **kw)
    torch.testing.assert_close(i.scores, torch.tensor([[0.0, 4.0, 7.0, 9.0, 10.0]]))
    assert i.auc.item() == pytest.approx(6.25)
    dl = deletion(net, x, amap, order="least", **kw)
    torch.testing.assert_close(dl.scores, torch.tensor([[10.0, 9.0, 7.0, 4.0, 0.0]]))
    assert dl.auc.item() == pytest.approx(6.25)
    assert not d.higher_is_better and i.higher_is_better and dl.higher_is_better
    # two steps of two pixels: 10 -> 3 -> 0
    d2 = deletion(net, x, amap, **{**kw, "steps": 2})
    torch.testing.assert_close(d2.scores, torch.tensor([[10.0, 3.0, 0.0]]))
    assert d2.auc.item() == pytest.approx(0.5 * (6.5 + 1.5))


def test_probability_score_and_baseline_tensor():
    net, x, amap = _lin4()
    d = deletion(net, x, amap, targets=0, baseline=torch.zeros(1, 2, 2), steps=4)
    logits0 = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])
    expected = torch.softmax(torch.stack([logits0, torch.zeros(5)], 1), 1)[:, 0]
    torch.testing.assert_close(d.scores[0], expected)


def test_ties_are_broken_at_random_but_seeded():
    maps = torch.zeros(3, 8, 8)
    r1, r2, r3 = pixel_ranks(maps, seed=1), pixel_ranks(maps, seed=1), pixel_ranks(maps, seed=2)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert torch.equal(r1.sort(1).values, torch.arange(64).expand(3, 64))  # a permutation
    # ties never follow the raster order
    assert not torch.equal(r1[0], torch.arange(64))


def test_curve_matches_a_one_image_at_a_time_oracle(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))  # no ties
    black = cue_model.preprocessing.normalize(torch.zeros(1, 1, 32, 32))
    d = deletion(cue_model, x, maps, baseline="black", steps=8, batch_size=5)
    net = cue_model.model
    with torch.no_grad():
        for b in range(3):
            order = maps[b].flatten().argsort(descending=True)
            t = int(net(x[b:b + 1]).argmax())
            for k in range(9):
                img = x[b].clone().flatten(1)
                img[:, order[: k * 128]] = black.flatten()[0]
                p = torch.softmax(net(img.view(1, 1, 32, 32)), 1)[0, t]
                assert d.scores[b, k].item() == pytest.approx(p.item(), abs=1e-5)


# --- the true attribution beats a random one -------------------------------------------------------
def test_true_contribution_beats_random_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, 8, generator=g)
    x = torch.rand(4, 1, 8, 8, generator=g)
    net = Linear(w)
    targets = torch.tensor([0, 1, 2, 0])
    true = w[targets] * x[:, 0]  # exact contributions to the target logit
    rnd = torch.rand(4, 8, 8, generator=g)
    kw = dict(targets=targets, baseline=0.0, score="logit", steps=16)
    assert (deletion(net, x, true, **kw).auc < deletion(net, x, rnd, **kw).auc).all()
    assert (insertion(net, x, true, **kw).auc > insertion(net, x, rnd, **kw).auc).all()
    # faithfulness correlation: the drop is exactly the attribution sum
    fc = faithfulness_correlation(net, x, true, targets=targets, n_samples=30, subset_size=6)
    torch.testing.assert_close(fc, torch.ones(4))
    fr = faithfulness_correlation(net, x, rnd, targets=targets, n_samples=30, subset_size=6)
    assert (fr < 0.9).all()


def test_cue_mask_beats_random_on_the_cue_model(cue_model, cue_test):
    n = 16
    x = cue_model.preprocessing.normalize(cue_test.images[:n])
    cue = cue_test.masks[:n].float()
    rnd = torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(0))
    # a blurred baseline: pixel-wise removal on black leaves a speckle the texture cue model reads
    # as another texture (docs/evaluation.md)
    kw = dict(baseline="blur", steps=16)
    d_cue, d_rnd = deletion(cue_model, x, cue, **kw).auc, deletion(cue_model, x, rnd, **kw).auc
    i_cue, i_rnd = insertion(cue_model, x, cue, **kw).auc, insertion(cue_model, x, rnd, **kw).auc
    assert d_cue.mean() < d_rnd.mean() - 0.2, (d_cue.mean(), d_rnd.mean())  # measured 0.15 vs 0.46
    assert i_cue.mean() > i_rnd.mean() + 0.3, (i_cue.mean(), i_rnd.mean())  # measured 0.97 vs 0.54
    f_cue = faithfulness_correlation(cue_model, x, cue, baseline="blur", n_samples=40)
    f_rnd = faithfulness_correlation(cue_model, x, rnd, baseline="blur", n_samples=40)
    assert f_cue.mean() > f_rnd.mean() + 0.2, (f_cue.mean(), f_rnd.mean())


def test_curves_leave_model_untouched_and_check_inputs(cue_model, cue_test):
    net = cue_model.model
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    x0 = x.clone()
    try:
        deletion(cue_model, x, torch.rand(2, 32, 32), steps=4)
        assert net.training and all(p.requires_grad for p in net.parameters())
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert torch.equal(x, x0) and count_hooks(net) == 0
    finally:
        net.eval()
    with pytest.raises(InputError, match="do not match"):
        deletion(cue_model, x, torch.rand(2, 16, 16))
    with pytest.raises(InputError, match="baseline"):
        insertion(cue_model, x, torch.rand(2, 32, 32), baseline="purple")


# --- pointing game ----------------------------------------------------------------------------------
def test_pointing_game_with_masks_boxes_and_tolerance():
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 3] = 1.0  # inside box 0
    maps[1, 6, 6] = 1.0  # one pixel right of box 1
    maps[2, 0, 9] = 1.0  # far away
    boxes = torch.tensor([[3, 2, 5, 4], [4, 5, 6, 7], [0, 5, 2, 7]])  # x0, y0, x1, y1
    masks = boxes_to_masks(boxes, (10, 10))
    assert masks[0, 2, 3] and masks[0, 3, 4] and not masks[0, 4, 3] and masks[0].sum() == 4
    assert pointing_game(maps, boxes).tolist() == [True, False, False]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, True, False]
    # several boxes per image: the union counts
    multi = [[[3, 2, 5, 4]], [[0, 0, 1, 1], [6, 6, 7, 7]], [[9, 0, 10, 1]]]
    assert pointing_game(maps, multi).tolist() == [True, True, True]
    with pytest.raises(InputError):
        pointing_game(maps, torch.zeros(3, 10, 10, dtype=torch.bool))  # empty region


def test_energy_pointing_game_by_hand():
    maps = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    box = [[[0, 0, 1, 2]]]  # left column: 1 + 3 of positive mass 6
    assert energy_pointing_game(maps, box).item() == pytest.approx(4 / 6)


def test_pointing_game_hits_the_planted_cue(cue_model, clean_model, cue_test):
    n = 100
    x = cue_model.preprocessing.normalize(cue_test.images[:n])
    boxes = cue_test.boxes()[:n]
    cue_rate = pointing_game(cs.explain(cue_model, x).map, boxes, tolerance=1).float().mean()
    clean_rate = pointing_game(cs.explain(clean_model, x).map, boxes, tolerance=1).float().mean()
    assert cue_rate > 0.6 and clean_rate < 0.1, (cue_rate, clean_rate)
    oracle = pointing_game(cue_test.masks[:n].float(), boxes)
    assert oracle.all()


# --- sparsity ------------------------------------------------------------------------------------
def test_gini_by_hand():
    n = 16
    uniform = torch.ones(1, 4, 4)
    onehot = torch.zeros(1, 4, 4)
    onehot[0, 1, 2] = -5.0
    half = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert gini(uniform).item() == pytest.approx(0.0, abs=1e-7)
    assert gini(onehot).item() == pytest.approx((n - 1) / n)
    assert gini(half).item() == pytest.approx(0.5)
    assert gini(half * 7).item() == pytest.approx(0.5)  # scale-invariant
    assert gini(torch.zeros(1, 3, 3)).item() == 0.0


# --- max-sensitivity --------------------------------------------------------------------------------
def test_max_sensitivity_analytic_cases():
    g = torch.Generator().manual_seed(0)
    net = Linear(torch.randn(2, 6, 6, generator=g))
    x = torch.rand(3, 1, 6, 6, generator=g) + 1.0
    # saliency of a linear model is its weights: no perturbation changes it
    s = max_sensitivity(net, x, "saliency", radius=0.3, n_samples=4)
    torch.testing.assert_close(s, torch.zeros(3), atol=1e-6, rtol=0)

    def identity(lm, xx, t):
        return xx[:, 0]

    r = 0.05
    s_id = max_sensitivity(net, x, identity, radius=r, n_samples=16)
    bound = r * 6 / x.flatten(1).norm(dim=1)  # ||d||_2 <= r sqrt(N), N = 36
    assert (s_id <= bound + 1e-6).all() and (s_id > 0.5 * bound).all()


# --- sanity check ------------------------------------------------------------------------------------
def test_map_similarity_against_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 9, 9, generator=g), torch.rand(2, 9, 9, generator=g)
    rho, ssim = map_similarity(a, b)
    for i in range(2):
        assert rho[i].item() == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel())[0], abs=1e-9)
    rho_same, ssim_same = map_similarity(a, a * 3)
    torch.testing.assert_close(rho_same, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(ssim_same, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (ssim < 0.5).all()


def test_randomisation_fails_an_edge_detector_and_passes_saliency(cue_model, cue_test):
    net = cue_model.model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = cue_model.preprocessing.normalize(cue_test.images[:12])
    edges = model_randomization(cue_model, x, sobel_explainer)
    sal = model_randomization(cue_model, x, "saliency")
    assert edges.stages == list(reversed(randomizable_layers(net)))
    assert edges.spearman.shape == (5, 12) and edges.ssim.shape == (5, 12)
    assert not edges.passed and edges.similarity > 0.99 and edges.final_ssim > 0.99
    assert sal.passed, sal.similarity  # measured 0.46
    assert sal.final_spearman < 0.4 and sal.final_ssim < 0.3  # measured 0.16 and 0.05
    # the similarity falls as more of the network is random
    s = sal.spearman.mean(1)
    assert s[-1] < s[0] - 0.3
    # the caller's model is never touched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert count_hooks(net) == 0 and not net.training


def test_guided_backprop_fails_the_randomisation_check(cue_model, cue_test):
    """Adebayo et al. 2018: guided backprop barely changes when the top layers are randomised."""
    x = cue_model.preprocessing.normalize(cue_test.images[:12])
    gbp = model_randomization(cue_model, x, "guided_backprop")
    sal = model_randomization(cue_model, x, "saliency")
    # classifier, then the top convolution randomised: the map nearly unchanged (0.86, 0.83),
    # while the plain gradient already moves (0.65, 0.55)
    g, v = gbp.spearman[:2].mean(1), sal.spearman[:2].mean(1)
    assert (g > 0.75).all() and (g > v + 0.1).all(), (g, v)
    # over the whole cascade it stays the most similar (0.66 vs 0.42); only the early layers,
    # randomised last, change it, so the verdict at threshold 0.7 passes narrowly
    assert gbp.similarity > sal.similarity + 0.15


def test_independent_randomisation_restores_each_layer(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:4])
    ex = as_explainer("saliency")
    casc = model_randomization(cue_model, x, ex, mode="cascading")
    ind = model_randomization(cue_model, x, ex, mode="independent")
    # stage 1 randomises only the classifier in both modes, with the same seed
    torch.testing.assert_close(casc.spearman[0], ind.spearman[0])
    # later independent stages keep the classifier trained: unlike cascading, they differ
    assert not torch.allclose(casc.spearman[2], ind.spearman[2])
    with pytest.raises(InputError):
        _ = ind.passed
    rows = casc.rows()
    assert [r["layer"] for r in rows] == casc.stages and all(np.isfinite(r["spearman"]) for r in rows)


def test_curves_accept_a_black_box_predict_function(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    net = cue_model.model

    def predict(batch: np.ndarray) -> np.ndarray:  # a NumPy black box
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    # a tensor baseline is in model space: the black box has no preprocessing to map pixels
    kw = dict(baseline=torch.zeros(()), steps=6, targets=[1, 2, 3])
    torch.testing.assert_close(deletion(predict, x, maps, **kw).scores,
                               deletion(cue_model, x, maps, batch_size=7, **kw).scores)
