"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation of a model should change when the model's learned weights are destroyed. The check
re-initialises layers of a *deep copy* of the model (the caller's model is never touched) and
compares each map with the map of the trained model on the same inputs and target classes:

* cascading: randomise the layers from the output down, one more at each stage, until the whole
  network is random;
* independent: randomise one layer at a time, the others keeping their trained weights;
* bottom-up: cascading from the input side up (Hedström et al. 2023, "Sanity Checks Revisited",
  the order of their smooth MPRT), one more layer at each stage.

Similarity per image is the Spearman rank correlation of the absolute maps and the SSIM
(``skimage.metrics.structural_similarity``) of the absolute maps scaled by their maximum to
[0, 1]. The verdict summarises the whole cascade: a method *passes* when its mean rank
correlation, averaged over the cascading stages (the normalised area under Adebayo et al.'s
similarity curve), is below ``threshold``. A map that ignores the weights (an edge detector of the
input) stays at 1 and fails. Guided backprop is known to fail (Adebayo et al., Fig. 2): it stays
nearly unchanged while the top layers are randomised. The default threshold 0.7 was set on the
bundled digits CNNs (48 test digits, cascade means): guided backprop 0.77 to 0.78, the next
highest (gradient x input, integrated gradients) 0.58 to 0.63, saliency 0.46 to 0.53, Grad-CAM
0.09 to 0.15, the Sobel control 1.00. It is a convention, not a law: read the per-stage curve.

Layers are the modules that own parameters, in ``named_modules()`` order (which is forward order
for sequential CNNs); each is re-initialised with its own ``reset_parameters()`` under a seed
derived from ``seed`` and its position, or, failing that, from a normal distribution with the
standard deviation of its trained weights.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.core.hooks import resolve_layers
from convscope.core.progress import Track
from convscope.core.result import Result
from convscope.core.results import result_repr
from convscope.core.seeding import seeded
from convscope.methods.evaluation.explainers import explained_batch, explainer_name
from convscope.models import LoadedModel

__all__ = [
    "SanityResult", "average_ranks", "map_similarity", "model_randomization", "randomizable_layers",
    "randomized_model", "spearman_rows",
]

DEFAULT_THRESHOLD = 0.7


def randomizable_layers(model: nn.Module) -> list[str]:
    """Dotted names of the modules that own parameters, input side first."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def _randomize(module: nn.Module, seed: int) -> None:
    p = next(module.parameters(recurse=False), None)
    with seeded(seed, None if p is None else p.device), torch.no_grad():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in module.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.01)


def randomized_model(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """A twin of ``lm`` whose every layer with parameters is re-initialised (the seeds of
    :func:`model_randomization`'s stages), on a deep copy: the caller's model is never touched."""
    net = copy.deepcopy(lm.model)
    mods = dict(net.named_modules())
    for i, name in enumerate(randomizable_layers(net)):
        _randomize(mods[name], seed + 7919 * i)
    return replace(lm, model=net)


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """(B, N) ranks 1..N of each row's values, ties given their mean rank (``scipy.stats.rankdata``'s
    ``"average"``), for the whole batch at once: ``(#less + #less-or-equal + 1) / 2``."""
    s = v.sort(dim=-1).values.contiguous()
    v = v.contiguous()
    left = torch.searchsorted(s, v, right=False)
    right = torch.searchsorted(s, v, right=True)
    return (left + right + 1).double() / 2


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation of each row of ``a`` with the same row of ``b`` (0 where a row
    is constant: it has no ranking)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = ((ra * ra).sum(-1) * (rb * rb).sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / den.clamp(min=1e-300), torch.zeros_like(den))


def _unit(m: np.ndarray) -> np.ndarray:
    top = m.max()
    return m / top if top > 0 else np.zeros_like(m)


def map_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor, *,
                   ssim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (Spearman rank correlation, SSIM) of ``|maps_a|`` and ``|maps_b|``.

    A constant map has no ranking: its rank correlation is 0. ``ssim=False`` skips the SSIM (NaN),
    for the callers that read only the rank correlation (the MPRT metrics).

    Shape:
        maps (B, H, W) -> two (B,) tensors.
    """
    from skimage.metrics import structural_similarity

    a = maps_a.detach().abs().double().cpu()
    b = maps_b.detach().abs().double().cpu()
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"maps must both be (B, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    rho = spearman_rows(a.flatten(1), b.flatten(1))
    if not ssim:
        return rho, torch.full_like(rho, float("nan"))
    win = min(7, *a.shape[-2:])
    win -= 1 - win % 2  # odd
    out = [float(structural_similarity(_unit(u), _unit(v), data_range=1.0, win_size=win))
           if win >= 3 else float("nan") for u, v in zip(a.numpy(), b.numpy(), strict=True)]
    return rho, torch.tensor(out, dtype=torch.float64)


@dataclass(frozen=True)
class SanityResult(Result):
    """Similarity of a method's maps to the trained model's as layers are randomised.

    Saves ``.png`` (the curve of mean rank correlation over the stages) or ``.json``
    (:meth:`to_dict`), and shows the curve inline in notebooks.

    Attributes:
        method: the explainer's name.
        mode: ``"cascading"`` or ``"independent"``.
        stages: the layer randomised at each stage (cascading: this one and all above it).
        spearman: (S, B) rank correlation per stage and image.
        ssim: (S, B) SSIM per stage and image.
        threshold: the pass threshold on the cascade's mean rank correlation.
    """

    method: str
    mode: str
    stages: list[str]
    spearman: torch.Tensor
    ssim: torch.Tensor
    threshold: float = DEFAULT_THRESHOLD

    @property
    def similarity(self) -> float:
        """Rank correlation averaged over images and stages (the verdict's statistic)."""
        return float(self.spearman.mean())

    @property
    def final_spearman(self) -> float:
        """Mean rank correlation at the last stage (cascading: the fully random network)."""
        return float(self.spearman[-1].mean())

    @property
    def final_ssim(self) -> float:
        return float(self.ssim[-1].nanmean())

    @property
    def passed(self) -> bool:
        """Cascading: the maps move away from the trained model's as its layers are randomised."""
        if self.mode != "cascading":
            raise InputError("the pass/fail verdict is defined on the cascading check")
        return self.similarity < self.threshold

    def __repr__(self) -> str:
        verdict = None
        if self.mode == "cascading":
            verdict = "pass" if self.passed else "FAIL"
        return result_repr(self, [("method", repr(self.method)), ("mode", repr(self.mode)),
                                  ("stages", str(len(self.stages))), ("similarity", f"{self.similarity:.3f}"),
                                  ("verdict", verdict)])

    def png(self) -> bytes:
        """The mean rank correlation with the trained model's maps, stage by stage, as PNG bytes."""
        from convscope.methods.evaluation.tables import plot_sanity

        return plot_sanity({self.method: [self]}, threshold=self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """Method, mode, threshold, the verdict (cascading only) and one row per stage."""
        return {"method": self.method, "mode": self.mode, "threshold": self.threshold,
                "similarity": self.similarity,
                "passed": self.passed if self.mode == "cascading" else None, "stages": self.rows()}

    def rows(self) -> list[dict[str, Any]]:
        """One table row per stage (means and standard deviations over images)."""
        out = []
        for i, s in enumerate(self.stages):
            out.append({
                "method": self.method, "mode": self.mode, "stage": i + 1, "layer": s,
                "spearman": float(self.spearman[i].mean()), "spearman_std": float(self.spearman[i].std()),
                "ssim": float(self.ssim[i].nanmean()),
            })
        return out


def model_randomization(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    *,
    mode: str = "cascading",
    layers: str | Sequence[str] | None = None,
    targets: Any = None,
    maps: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool | None = False,
    ssim: bool = True,
) -> SanityResult:
    """Run the model-randomisation check of ``explainer`` on ``x``.

    Args:
        model: a model spec, module or loaded model; only a deep copy is randomised.
        x: (B, C, H, W) inputs in model space.
        explainer: a method name or an explainer callable ``f(lm, x, targets) -> maps``.
        mode: ``"cascading"`` (output side first), ``"bottom_up"`` (input side first, cascading)
            or ``"independent"``.
        layers: names/globs of the layers to randomise (default: every layer with parameters).
        targets: classes to explain (default: the trained model's predictions), held fixed.
        maps: the trained model's maps if already computed.
        threshold: pass if the cascade's mean rank correlation is below it.
        seed: seed of the re-initialisation.
        batch_size: images per forward pass (targets, and the maps of a method name).
        progress: progress over the layers: ``False`` (default) none; ``True`` a bar on a terminal,
            periodic lines elsewhere; ``None`` a bar on a terminal only, or, inside an active
            :class:`~convscope.core.progress.Progress` (such as the benchmark's), its sub-status.
        ssim: also compute the SSIM of every stage (``False``: NaN, for the MPRT metrics, which
            read the rank correlation only).

    Shape:
        SanityResult.spearman, .ssim: (stages, B).
    """
    if mode not in ("cascading", "bottom_up", "independent"):
        raise InputError(f"unknown mode {mode!r}; use 'cascading', 'bottom_up' or 'independent'")
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size,
                                         seed=seed)
    all_layers = randomizable_layers(lm.model)
    names = all_layers if layers is None else [n for n in resolve_layers(lm.model, layers)
                                               if n in all_layers]
    if not names:
        raise InputError("no layer with parameters to randomise")
    seeds = {n: seed + 7919 * all_layers.index(n) for n in names}
    net = copy.deepcopy(lm.model)
    twin = replace(lm, model=net)
    mods = dict(net.named_modules())
    stages = names if mode == "bottom_up" else list(reversed(names))  # output side first but bottom-up
    rhos, ssims = [], []
    for name in Track(stages, f"sanity {explainer_name(ex)}", enabled=progress, tty_only=True, unit="layers"):
        saved = None
        if mode == "independent":
            saved = {k: v.clone() for k, v in mods[name].state_dict().items()}
        _randomize(mods[name], seeds[name])
        with warnings.catch_warnings():  # maps of a randomised network are expected to be noise
            warnings.simplefilter("ignore", UnreliableResultWarning)
            r, s = map_similarity(maps, ex(twin, x, t), ssim=ssim)
        rhos.append(r)
        ssims.append(s)
        if saved is not None:
            mods[name].load_state_dict(saved)
    return SanityResult(explainer_name(ex), mode, stages, torch.stack(rhos), torch.stack(ssims),
                        threshold)
