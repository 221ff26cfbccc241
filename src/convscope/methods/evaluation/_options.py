"""The keyword options the evaluation metrics share, declared once: two option groups
(:func:`convscope.core.validate.option_group`, shown in each function's signature by
:func:`~convscope.core.validate.shows_options`) and the ranges their numbers are checked against.

* :class:`Perturbations`: the robustness metrics that explain perturbed copies of the batch
  (:func:`.max_sensitivity`, :func:`.avg_sensitivity`, :func:`.local_lipschitz_estimate`,
  :func:`.relative_stability`).
* :class:`Removals`: the faithfulness metrics that score the model on inputs with pixels removed
  (:func:`.pixel_flipping`, :func:`.faithfulness_estimate`, :func:`.monotonicity`,
  :func:`.monotonicity_correlation`, :func:`.sensitivity_n`, :func:`.infidelity`); a function may
  state its own ``score`` default (``LOGIT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convscope.core.errors import InputError
from convscope.core.validate import SEEDS, Range, check_values, ints, reals
from convscope.methods.evaluation._common import BaselineSpec

__all__ = ["LOGIT", "METRIC_RANGES", "Perturbations", "Removals", "check_ranges"]

#: Allowed values of the metrics' shared numeric options.
METRIC_RANGES: dict[str, Range] = {
    "radius": reals(0, lo_open=True),
    "std": reals(0, lo_open=True),
    "n_samples": ints(1),
    "seed": SEEDS,
    "batch_size": ints(1),  # no upper bound, as the project's other batch sizes: chunks stop at the batch
}

#: The ``score`` default of the metrics that follow their paper's logits (Quantus's too).
LOGIT = {"score": "logit"}


def check_ranges(**values: Any) -> None:
    """:func:`~convscope.core.validate.check_values` of each ``name=value`` against its range in
    :data:`METRIC_RANGES` (an :class:`~convscope.core.errors.InputError`)."""
    check_values(**{name: (value, METRIC_RANGES[name]) for name, value in values.items()})


@dataclass(frozen=True)
class Perturbations:
    """How a robustness metric perturbs and explains the batch; checked when made.

    Attributes:
        targets: class per image (default: the predicted class).
        n_samples: perturbations per image.
        maps: the maps at ``x`` if already computed (else computed here).
        seed: seeds the draws (and the method, where it draws), an integer in [0, 2**32 - 1].
        batch_size: images per call of the explainer, an integer >= 1.
        noise: (n, B, C, H, W) perturbations to use instead of drawing them (e.g. Quantus's).
    """

    targets: Any = None
    n_samples: int = 8
    maps: torch.Tensor | None = None
    seed: int = 0
    batch_size: int = 32
    noise: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_ranges(n_samples=self.n_samples, seed=self.seed, batch_size=self.batch_size)


@dataclass(frozen=True)
class Removals:
    """How a faithfulness metric removes pixels and scores the model on what is left.

    Attributes:
        targets: class per image (default: the predicted class).
        baseline: what removed pixels become (default ``"black"``; ``"min"`` is Quantus's).
        score: ``"probability"`` or ``"logit"`` of the target class.
        batch_size: forward-pass chunk size (an integer >= 1) or ``"auto"``.
        seed: orders pixels of equal attribution (and draws random sets, where the metric does), an
            integer in [0, 2**32 - 1].
        progress: a bar (default: on a terminal).
    """

    targets: Any = None
    baseline: BaselineSpec = "black"
    score: str = "probability"
    batch_size: int | str = "auto"
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_ranges(seed=self.seed)
        bs, rng = self.batch_size, METRIC_RANGES["batch_size"]
        if not (isinstance(bs, str) and bs == "auto") and not rng.contains(bs):
            raise InputError(f"batch_size must be {rng.describe()} or 'auto', got {bs!r:.40}")
