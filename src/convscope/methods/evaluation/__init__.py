"""Evaluation of explanations: are the maps faithful, robust, sparse, and do they depend on the model?

* :mod:`.pointing`: pointing game and energy-based pointing game against masks or boxes.
* :mod:`.curves`: deletion / insertion curves and areas, faithfulness correlation.
* :mod:`.sanity`: model-randomisation sanity check (cascading and independent).
* :mod:`.sensitivity`: max-sensitivity; :mod:`.sparsity`: Gini index.
* :mod:`.benchmark`: the planted-cue benchmark (``convscope benchmark planted-cue``).
* The metric catalogue (#33), one module per family: :mod:`.faithfulness` and
  :mod:`.faithfulness_sets`,
  :mod:`.faithfulness_stats`, :mod:`.robustness`, :mod:`.localisation`, :mod:`.complexity`,
  :mod:`.randomisation`,
  :mod:`.randomisation_revisited`, :mod:`.axiomatic`; :mod:`.catalogue` is the one table of them and
  :mod:`.grid` (:func:`convscope.evaluate`) scores methods with them.
"""

from convscope.methods.evaluation import (
    axiomatic,
    complexity,
    faithfulness,
    faithfulness_sets,
    faithfulness_stats,
    localisation,
    randomisation,
    randomisation_revisited,
    robustness,
)
from convscope.methods.evaluation.catalogue import FAMILIES, METRICS
from convscope.methods.evaluation.curves import (
    Curve,
    deletion,
    faithfulness_correlation,
    insertion,
    pixel_ranks,
    relevance_curve,
)
from convscope.methods.evaluation.explainers import MethodExplainer, as_explainer, sobel_explainer
from convscope.methods.evaluation.grid import MetricTable, evaluate
from convscope.methods.evaluation.pointing import (
    boxes_to_masks,
    cue_mass,
    energy_pointing_game,
    pointing_game,
    pointing_hits,
)
from convscope.methods.evaluation.sanity import (
    SanityResult,
    map_similarity,
    model_randomization,
    randomizable_layers,
)
from convscope.methods.evaluation.sensitivity import max_sensitivity
from convscope.methods.evaluation.sparsity import gini

__all__ = [
    "FAMILIES",
    "METRICS",
    "Curve",
    "MetricTable",
    "axiomatic",
    "complexity",
    "evaluate",
    "faithfulness",
    "faithfulness_sets",
    "faithfulness_stats",
    "localisation",
    "randomisation",
    "randomisation_revisited",
    "robustness",
    "MethodExplainer",
    "SanityResult",
    "as_explainer",
    "boxes_to_masks",
    "cue_mass",
    "deletion",
    "energy_pointing_game",
    "faithfulness_correlation",
    "gini",
    "insertion",
    "map_similarity",
    "max_sensitivity",
    "model_randomization",
    "pixel_ranks",
    "pointing_game",
    "pointing_hits",
    "randomizable_layers",
    "relevance_curve",
    "sobel_explainer",
]
