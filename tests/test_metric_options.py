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
