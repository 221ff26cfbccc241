"""The evaluation metrics' shared keyword options are declared once (option groups in
``methods/evaluation/_options.py``): every metric that takes a group shows its fields in its
signature with the stated defaults, checks them from the one declaration, and refuses an unknown
keyword the way Python does, naming the metric."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from helpers import metric_setup

from convscope.core.errors import InputError
from convscope.methods.evaluation import faithfulness as fa
from convscope.methods.evaluation import faithfulness_stats as st
from convscope.methods.evaluation import robustness as ro
from convscope.methods.evaluation import sensitivity as se
from convscope.methods.evaluation._options import LOGIT, Perturbations, Removals

ROBUST = {se.max_sensitivity: {"radius": 0.1}, ro.avg_sensitivity: {"radius": 0.1},
          ro.local_lipschitz_estimate: {"std": 0.1},
          ro.relative_stability: {"kind": "input", "layer": None, "low": 0.02, "high": 0.2, "eps": 1e-6}}
FAITHFUL = {fa.pixel_flipping: ({"features_in_step": 1}, "probability"),
            fa.faithfulness_estimate: ({"features_in_step": 1}, "logit"),
            fa.monotonicity: ({"features_in_step": 1}, "probability"),
            st.monotonicity_correlation: ({"features_in_step": 1, "eps": 1e-5}, "probability"),
            st.sensitivity_n: ({"sizes": None, "n_samples": 100}, "logit"),
            st.infidelity: ({"patch_size": 4, "n_samples": 32}, "logit")}


def _keywords(f) -> dict[str, object]:
    return {p.name: p.default for p in inspect.signature(f).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _defaults(group: type, **over: object) -> dict[str, object]:
    return {fl.name: over.get(fl.name, fl.default) for fl in dataclasses.fields(group)}


def test_signatures_show_each_group_with_the_stated_defaults():
    for f, own in ROBUST.items():
        assert _keywords(f) == {**own, **_defaults(Perturbations)}, f.__name__
    for f, (own, score) in FAITHFUL.items():
        assert _keywords(f) == {**own, **_defaults(Removals, score=score)}, f.__name__
    assert LOGIT == {"score": "logit"}
    # the documented defaults of the groups themselves (Quantus's where the docs say so)
    assert _defaults(Perturbations) == {"targets": None, "n_samples": 8, "maps": None, "seed": 0,
                                        "batch_size": 32, "noise": None}
    assert _defaults(Removals) == {"targets": None, "baseline": "black", "score": "probability",
                                   "batch_size": "auto", "seed": 0, "progress": None}


@pytest.mark.parametrize("bad", [0, -1, 2.5, float("nan"), True])
def test_one_declaration_checks_every_robustness_metric(bad):
    net, lm, x, maps, y = metric_setup()
    for f in ROBUST:
        with pytest.raises(InputError, match="^n_samples must be an integer >= 1"):
            f(lm, x, "saliency", n_samples=bad)
    for f, name in ((se.max_sensitivity, "radius"), (ro.avg_sensitivity, "radius"),
                    (ro.local_lipschitz_estimate, "std")):
        if bad != 2.5:  # 2.5 is a fine radius
            with pytest.raises(InputError, match=f"^{name} must be a finite number > 0"):
                f(lm, x, "saliency", **{name: bad})
    with pytest.raises(InputError, match="^n_samples must be an integer >= 1"):
        st.infidelity(lm, x, maps, n_samples=bad)


def test_unknown_keywords_are_refused_naming_the_metric():
    net, lm, x, maps, y = metric_setup()
    for f in [*ROBUST, *FAITHFUL]:
        says = rf"^{f.__name__}\(\) got an unexpected keyword argument 'nsamples'"
        with pytest.raises(TypeError, match=says):
            f(lm, x, maps, nsamples=3)


def test_options_reach_the_metric():
    """Given options change the result as they should: the group is passed on, not dropped."""
    net, lm, x, maps, y = metric_setup()
    t = torch.as_tensor(y)
    a = se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=3, seed=1)
    assert torch.equal(a, se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=3, seed=1))
    assert not torch.equal(a, se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=3, seed=2))
    noise = torch.zeros(2, *x.shape, dtype=torch.float64)  # no perturbation: no change at all
    assert (se.max_sensitivity(lm, x, "saliency", targets=t, noise=noise) == 0).all()
    prob = fa.pixel_flipping(lm, x, maps, targets=t, features_in_step=16, batch_size=7, progress=False)
    logit = fa.pixel_flipping(lm, x, maps, targets=t, features_in_step=16, score="logit", progress=False)
    assert (prob.scores <= 1).all() and not torch.allclose(prob.scores, logit.scores)
    est = fa.faithfulness_estimate(lm, x, maps, features_in_step=16, progress=False)  # logit default
    assert torch.equal(est, fa.faithfulness_estimate(lm, x, maps, features_in_step=16, score="logit",
                                                     progress=False))


SEED_BAD = [-1, 2**32, 10**30, 2.5, 1.0, float("nan"), float("inf"), True, "0", None]
BATCH_BAD = [0, -1, 2.5, 1.0, float("nan"), float("inf"), -float("inf"), True, "32", "Auto", None]


@pytest.mark.parametrize("bad", SEED_BAD)
def test_seed_is_refused_in_one_line_by_every_metric_of_both_groups(bad):
    """The seed is declared once (the project's [0, 2**32 - 1]) and checked when the group is made,
    before any work: not torch's RuntimeError from manual_seed, not a negative seed run as given."""
    net, lm, x, maps, y = metric_setup()
    for f in [*ROBUST, *FAITHFUL]:
        with pytest.raises(InputError, match=r"^seed must be an integer in \[0, 4294967295\], got ") as e:
            f(lm, x, "saliency" if f in ROBUST else maps, seed=bad)
        assert "\n" not in str(e.value), f.__name__


@pytest.mark.parametrize("bad", BATCH_BAD)
def test_batch_size_is_refused_in_one_line_by_every_metric_of_both_groups(bad):
    net, lm, x, maps, y = metric_setup()
    for f in ROBUST:
        with pytest.raises(InputError, match=r"^batch_size must be an integer >= 1, got ") as e:
            f(lm, x, "saliency", batch_size=bad)
        assert "\n" not in str(e.value), f.__name__
    for f in FAITHFUL:  # these also take "auto"; the message says so
        with pytest.raises(InputError, match=r"^batch_size must be an integer >= 1 or 'auto', got ") as e:
            f(lm, x, maps, batch_size=bad)
        assert "\n" not in str(e.value), f.__name__


def test_groups_check_seed_and_batch_size_when_made_and_take_their_edges():
    """The groups themselves refuse (no model needed), and the edges of the ranges are taken."""
    for group in (Perturbations, Removals):
        for bad in (-1, 2**32, 2.5):
            with pytest.raises(InputError, match="^seed must be "):
                group(seed=bad)
        for bad in (0, True, "x"):
            with pytest.raises(InputError, match="^batch_size must be "):
                group(batch_size=bad)
        for seed in (0, 2**32 - 1):
            assert group(seed=seed).seed == seed
        assert group(batch_size=1).batch_size == 1
        assert group(batch_size=10**6).batch_size == 10**6  # more than the batch: one chunk
    assert Removals(batch_size="auto").batch_size == "auto"
    net, lm, x, maps, y = metric_setup()
    t = torch.as_tensor(y)
    # a seed at the top edge runs, and a batch size of 1 gives what one large chunk gives
    assert se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=2, seed=2**32 - 1).isfinite().all()
    one = se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=2, batch_size=1)
    torch.testing.assert_close(one, se.max_sensitivity(lm, x, "saliency", targets=t, n_samples=2,
                                                       batch_size=10**6))
    one = fa.pixel_flipping(lm, x, maps, targets=t, features_in_step=16, batch_size=1, progress=False)
    big = fa.pixel_flipping(lm, x, maps, targets=t, features_in_step=16, batch_size=10**6, progress=False)
    torch.testing.assert_close(one.scores, big.scores)


@pytest.mark.parametrize(("option", "bad"), [("seed", -1), ("seed", 2.5), ("seed", 2**32), ("batch_size", 0),
                                             ("batch_size", float("nan")), ("batch_size", "32")])
def test_metrics_that_rerun_the_explainer_check_seed_and_batch_size_too(option, bad):
    """The metrics outside the groups that re-run the explainer (through ``explained_batch``) check
    the same ranges before any work."""
    from convscope.methods.evaluation import axiomatic as ax
    from convscope.methods.evaluation import randomisation_revisited as rr
    from convscope.methods.evaluation import sanity as sa

    net, lm, x, maps, y = metric_setup()
    for f in (sa.model_randomization, ax.input_invariance, rr.efficient_mprt):
        with pytest.raises(InputError, match=f"^{option} must be an integer "):
            f(lm, x, "saliency", **{option: bad})
