"""Randomisation metrics: does the explanation depend on what it should depend on?

* :func:`mprt`: the model parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency
  Maps", NeurIPS 2018), cascading or independent, per image: the Spearman rank correlation of
  ``|Phi|`` before and after randomising the layers, averaged over the stages. **Lower is
  better** (the map changes when the weights are destroyed). The check itself, its stages, its
  SSIM and its verdict are :func:`convscope.methods.evaluation.sanity.model_randomization`.
* :func:`random_logit` (Sixt, Granz and Landgraf, "When Explanations Lie", ICML 2020): the SSIM of
  the map of the target class and the map of a random other class; **lower is better** (a map
  that looks the same whatever class it explains explains no class).

SSIM is convscope's one map similarity (:func:`convscope.methods.evaluation.sanity.map_similarity`: 2-D
SSIM of the absolute maps scaled to [0, 1], 7 x 7 window). Quantus 0.6.0's ``RandomLogit``
computes SSIM of the *flattened* signed maps (a 1-D window over rows), a convention Sixt et al.
do not use; the other class is drawn exactly as Quantus draws it (NumPy's ``RandomState(seed)``,
``randint(0, K - 1)`` into the other classes), so both explain the same pair of classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.validate import check_values, ints
from convscope.methods.evaluation.explainers import explained_batch
from convscope.methods.evaluation.sanity import map_similarity, model_randomization
from convscope.models import LoadedModel

__all__ = ["mprt", "off_classes", "random_logit"]

Model = str | nn.Module | LoadedModel
Explainer = str | Callable[..., torch.Tensor]


def off_classes(targets: torch.Tensor, n_classes: int, seed: int = 42) -> torch.Tensor:
    """(B,) a random class other than each target (Quantus 0.6.0's draw for the same ``seed``)."""
    check_values(n_classes=(n_classes, ints(2)))
    t = targets.cpu().long().numpy()
    pick = np.random.RandomState(seed).randint(0, n_classes - 1, len(t))
    others = np.stack([np.delete(np.arange(n_classes), c) for c in t])
    return torch.as_tensor(others[np.arange(len(t)), pick])


def random_logit(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    targets: Any = None,
    maps: torch.Tensor | None = None,
    seed: int = 42,
    batch_size: int = 32,
) -> torch.Tensor:
    """(B,) SSIM of the map for the target and the map for a random other class (drawn with
    ``seed``, default 42 as Quantus); lower is better.

    Raises:
        InputError: a model with fewer than two classes.
    """
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size,
                                         seed=0)
    with torch.no_grad():
        k = int(lm.model(x[:1]).shape[-1])
    if k < 2:
        raise InputError("random_logit needs a model with two or more classes")
    other = off_classes(t, k, seed).to(t.device)
    return map_similarity(maps, ex(lm, x, other))[1].float()


def mprt(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    mode: str = "cascading",
    targets: Any = None,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> torch.Tensor:
    """(B,) per image, the rank correlation of ``|Phi|`` with the trained model's map, averaged
    over the randomisation stages (``mode``: ``"cascading"``, top layer first, or
    ``"independent"``); lower is better. See
    :func:`~convscope.methods.evaluation.sanity.model_randomization`."""
    r = model_randomization(model, x, explainer, mode=mode, targets=targets, maps=maps, seed=seed,
                            batch_size=batch_size, progress=False, ssim=False)
    return r.spearman.mean(0).float()
