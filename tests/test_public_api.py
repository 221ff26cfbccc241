"""The public API: every task's entry point at the top level, internals not exported, and one
argument order, ``(model, inputs, ...)``, everywhere."""

from __future__ import annotations

import inspect

import convscope as cs

FACADES = ["explain", "explain_classes", "explain_methods", "explain_report", "explain_text",
           "visualize", "visualize_class", "visualize_layer", "deepdream", "filters", "activation_maps",
           "attack", "fgsm", "pgd", "fooling_image", "invert", "inversion_strip", "texture",
           "style_transfer", "efros_leung", "top_activations", "nearest_neighbors", "embed", "audit",
           "concepts"]


def test_every_task_facade_is_exported_at_the_top_level():
    for name in FACADES:
        assert name in cs.__all__ and callable(getattr(cs, name)), name
    for name in cs.__all__:
        assert hasattr(cs, name), name
    assert cs.evaluation.deletion and cs.evaluation.model_randomization  # the evaluation subpackage


def test_internals_are_not_exported_but_stay_importable_from_their_modules():
    from convscope.core.hooks import count_hooks
    from convscope.methods.dataset.receptive import rf_box
    from convscope.methods.dataset.top import RunningTopK
    from convscope.methods.registry import register
    from convscope.methods.synthesis.adversarial import enforce_budget
    from convscope.methods.synthesis.texture import weights_cached

    assert all(callable(f) for f in (rf_box, RunningTopK, count_hooks, register, enforce_budget,
                                     weights_cached))
    for name in ("register", "count_hooks"):
        assert name not in cs.__all__
    for pkg, names in ((cs.dataset, ("RunningTopK", "rf_box")),
                       (cs.synthesis, ("enforce_budget", "weights_cached"))):
        assert not set(names) & set(pkg.__all__), pkg.__name__


def test_model_comes_first_everywhere():
    """Every facade that takes a model takes it first (``explain_text`` takes a predict function)."""
    for name in FACADES:
        params = list(inspect.signature(getattr(cs, name)).parameters)
        if "model" in params:
            assert params[0] == "model", (name, params)
    assert list(inspect.signature(cs.explain_text).parameters)[:2] == ["predict", "text"]
