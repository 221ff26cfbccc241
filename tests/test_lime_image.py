"""LIME for images: the sampler (the lime package's fair coins, in complementary pairs), the
estimand it targets, one evaluation per distinct coalition, and the split-half stopping rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import convscope as cs
from convscope.methods.attribution._sampling import lime_image_samples
from convscope.methods.attribution._surrogate import lime_weights, pair_halves

pytestmark = pytest.mark.filterwarnings("ignore:convscope assumed")  # GridNet states no preprocessing


class GridNet(nn.Module):
    """A fixed non-linear model of a 1 x 16 x 16 image over a 4 x 4 grid of 4 px cells: the class-0
    logit is a weighted sum of the cells' means plus a product of two cells (an interaction the
    linear surrogate cannot absorb); class 1 is its negative. Counts the inputs it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.linspace(-1.0, 2.0, 16))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        cells = x.reshape(x.shape[0], 4, 4, 4, 4).mean((2, 4)).reshape(x.shape[0], 16)
        s = cells @ self.w + 3 * cells[:, 3] * cells[:, 12]
        return torch.stack([s, -s], 1)


def _grid_seg(cells: int = 4, size: int = 16) -> torch.Tensor:
    c = size // cells
    r = torch.arange(size) // c
    return r[:, None] * cells + r[None, :]


def test_samples_are_fair_coins_in_complementary_pairs():
    z = lime_image_samples(2001, 10, torch.Generator().manual_seed(0))
    assert z.shape == (2001, 10) and bool((z[0] == 1).all())
    torch.testing.assert_close(z[1::2] + z[2::2], torch.ones(1000, 10))  # each pair: z and 1 - z
    assert abs(float(z[1::2].mean()) - 0.5) < 0.02  # the first of each pair: a fair coin per segment
    again = lime_image_samples(2001, 10, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    assert lime_image_samples(4, 3, torch.Generator().manual_seed(0)).shape == (4, 3)  # odd: a half pair


def test_pair_halves_never_split_a_pair():
    a, b = pair_halves(11)
    assert a[0] == 0 and b[0] == 0
    assert sorted(torch.cat([a[1:], b[1:]]).tolist()) == list(range(1, 11))
    for half in (a, b):
        s = set(half.tolist())
        for i in range(1, 11, 2):
            assert (i in s) == (i + 1 in s)


def test_lime_targets_the_lime_package_estimand():
    """With many samples the weights approach the exact weighted least squares over all 2^d
    coalitions, each with probability 2^-d and LIME's kernel weight (the lime package's image
    estimand); with d = 8 every coalition recurs, so only the distinct ones reach the model."""
    seg = torch.arange(16).view(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1) // 2  # 8 segments
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    opts = dict(method="lime", target=0, segmentation=seg, hide="zero", score="raw", check_every=4000,
                converge=None, alpha=0.0, eval_batch_size=64)
    bare, net = GridNet(), GridNet()
    cs.explain(bare, x, n_samples=2, **opts)  # loading, the clean pass and one coalition
    e = cs.explain(net, x, n_samples=4000, **opts)
    assert net.seen - bare.seen <= 2**8 - 2  # each distinct coalition but the all-shown one, once
    d = 8
    z = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))
    with torch.no_grad():
        y = net(torch.where(z.bool()[:, seg][:, None], x, torch.zeros_like(x)))[:, 0].double()
    w = lime_weights(z, 0.25).double()
    a = torch.cat([torch.ones(len(z), 1, dtype=torch.float64), z.double()], 1)
    exact = torch.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * y))[1:]
    got = torch.tensor(e.diagnostics["segment_weights"][0], dtype=torch.float64)
    assert float((got - exact).abs().max()) < 0.05 * float(exact.abs().max())


def test_split_half_rule_stops_at_the_predicted_rank_correlation_and_it_holds():
    net = GridNet()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    opts = dict(method="lime", target=0, segmentation=_grid_seg(), hide="zero", n_samples=3000,
                check_every=50)
    runs = [cs.explain(net, x, seed=s, **opts).diagnostics for s in range(8)]
    for d in runs:
        assert d["n_samples"][0] < 3000 and d["reliability"][0] >= 0.9  # stopped by the default rule
    actual = [spearmanr(runs[i]["segment_weights"][0], runs[i + 1]["segment_weights"][0])[0]
              for i in range(0, 8, 2)]
    # the rule's promise: two seeds agree about as well as predicted (0.9); 0.8 leaves room for the
    # spread of four seed pairs
    assert np.mean(actual) >= 0.8
    full = cs.explain(net, x, seed=0, converge=None, **opts).diagnostics
    assert full["n_samples"][0] == 3000


@pytest.mark.parametrize("converge", [0.3, 0.05])
def test_a_tighter_rule_uses_more_samples(converge):
    net = GridNet()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    opts = dict(method="lime", target=0, segmentation=_grid_seg(), hide="zero", n_samples=5000,
                check_every=50, seed=0)
    e = cs.explain(net, x, converge=converge, **opts)
    d = e.diagnostics
    assert d["reliability"][0] >= 1 - converge
    if converge == 0.05:
        loose = cs.explain(net, x, converge=0.3, **opts)
        assert d["n_samples"][0] > loose.diagnostics["n_samples"][0]
