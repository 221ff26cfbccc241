"""The demo's "Which method to trust" section: the metric catalogue (convscope.evaluate) on the
bundled cue model, whose right answer is known (the planted cue)."""

from __future__ import annotations

from typing import Any

from convscope.core.document import Report

#: the demo's metrics: one or more per family, the quick ones (the full catalogue: docs/metrics.md)
DEMO_METRICS = ("pixel_flipping", "region_perturbation_morf", "faithfulness_correlation", "road_morf",
                "max_sensitivity", "pointing_game", "relevance_rank_accuracy", "localisation_auc",
                "sparseness", "random_logit", "completeness")
DEMO_METHODS = ("gradcam", "saliency", "gradient_x_input")


def trust_section(rep: Report, models: dict, cue: Any, n: int = 12) -> None:
    """Add the method x metric table of :data:`DEMO_METHODS` (and the Sobel control) on ``n`` cue
    digits to ``rep``."""
    from convscope.methods.evaluation.explainers import sobel_explainer
    from convscope.methods.evaluation.grid import evaluate

    lm = models["digits-cnn-cue"]
    x = lm.preprocessing.normalize(cue.images[:n])
    methods: dict[str, Any] = {m: m for m in DEMO_METHODS}
    methods["sobel (control)"] = sobel_explainer
    table = evaluate(lm, x, methods, metrics=list(DEMO_METRICS), masks=cue.masks[:n], n_boot=500,
                     options={m: {"baseline": "blur"} for m in ("pixel_flipping", "region_perturbation_morf",
                                                                 "faithfulness_correlation")})
    table.add_to_report(rep, note=(
        f"The metric catalogue (convscope.evaluate, docs/metrics.md) on {n} test digits of "
        "digits-cnn-cue, a model that reads a planted corner texture: the maps should find the cue "
        "(localisation), removing what they mark should hurt the model (faithfulness), they should "
        "survive small input noise (robustness) and change with the explained class "
        "(randomisation). The Sobel edge map ignores the model and should lose; it may still win "
        "the pointing game, since the cue's stripes are the sharpest edges in a digit: one metric "
        "alone can mislead, which is why a method is judged by families. Removed pixels "
        "become a blurred copy of the image (black speckles read as another texture to this "
        "model, docs/evaluation.md). `convscope evaluate --catalogue` writes this table."))
