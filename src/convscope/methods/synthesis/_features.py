"""Feature-matching objectives for inversion, texture and style, run on the shared loop.

Everything here is maximised by :func:`convscope.engines.optimize.optimize` (the one input-optimisation
loop of convscope): an objective returns minus a loss, one value per sample. This module adds
what synthesis needs on top of that loop, without a second loop:

* :class:`FeatureLoss`: a weighted sum of feature-reconstruction terms (relative squared error of
  a layer's activations), Gram terms (relative squared error of Gram matrices) and image priors
  (total variation, alpha-norm), that records each term at every step;
* :func:`reference_features`: a layer's activations on a reference image (no gradients);
* :class:`Settings`: the keyword settings the three tasks share (loop, priors, start noise,
  input reading), declared once with their defaults;
* :func:`run`: builds the pixel / FFT parameterisation, hands the objective to ``optimize`` with
  an Adam learning rate that decays (cosine) to a tenth, and splits the recorded history into
  per-step values and the final, transform-free evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.hooks import capture
from convscope.core.validate import check_values, ints, option_group, reals
from convscope.engines.optimize import total_variation
from convscope.methods.synthesis._common import gram
from convscope.models import LoadedModel, Preprocessing

__all__ = [
    "FeatureLoss",
    "Settings",
    "Term",
    "default_content_layer",
    "reference_features",
    "relu_stages",
    "run",
    "total_variation",
]


@dataclass(frozen=True)
class Settings:
    """The settings inversion, texture and style share, taken by each as keyword arguments.

    Each task passes its keyword arguments to :meth:`of` with the defaults it changes (inversion:
    ``steps=200, tv_weight=0.5``; style: ``lr=0.03``).

    Attributes:
        steps, lr: Adam steps and learning rate (cosine-decayed to a tenth).
        tv_weight, tv_beta: total-variation prior (:class:`FeatureLoss`).
        norm_weight, alpha: alpha-norm prior.
        init_sd: standard deviation of the seeded start noise around mid-grey.
        param: ``"pixel"`` or ``"fft"`` parameterisation (see :func:`run`).
        seed: seeds the start noise and the loop.
        space: a tensor input holds ``"model"`` inputs or ``"pixels"`` in [0, 1]
            (:mod:`convscope.models.inputs`).
        preprocessing: for a plain ``nn.Module``: its input size, channels and normalisation.
        progress: tqdm bar (``None``: only on a terminal).
    """

    steps: int = 300
    lr: float = 0.05
    tv_weight: float = 0.0
    tv_beta: float = 2.0
    norm_weight: float = 0.0
    alpha: float = 6.0
    init_sd: float = 0.1
    param: str = "pixel"
    seed: int = 0
    space: str = "model"
    preprocessing: Preprocessing | None = None
    progress: bool | None = None

    @classmethod
    def of(cls, task: str, given: Mapping[str, Any], **defaults: Any) -> Settings:
        """The settings of ``task`` from its keyword arguments ``given`` over its ``defaults``;
        ``TypeError`` (as for any keyword argument a function lacks) on an unknown name."""
        return option_group(cls, task, given, **defaults)

    def options(self) -> dict[str, Any]:
        """The settings a result records: all but how inputs are read and progress is shown."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("space", "preprocessing", "progress")}

    def priors(self) -> dict[str, float]:
        """The image-prior keywords of :class:`FeatureLoss`."""
        return {k: getattr(self, k) for k in ("tv_weight", "tv_beta", "norm_weight", "alpha")}

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """Seeded start pixels: mid-grey plus ``init_sd`` Gaussian noise, clipped to [0, 1]."""
        gen = torch.Generator().manual_seed(int(self.seed))
        return (0.5 + self.init_sd * torch.randn(tuple(shape), generator=gen)).clamp(0, 1)


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """``mean |x - 0.5|^alpha`` per sample (the bounded-range prior of Mahendran and Vedaldi,
    centred on mid-grey for pixels in [0, 1]). Shape: (B, C, H, W) -> (B,)."""
    return (x - 0.5).abs().pow(alpha).flatten(1).mean(1)


@dataclass(frozen=True)
class Term:
    """One loss term: ``weight * ||phi(x) - target||^2 / ||target||^2`` at ``layer``.

    ``kind="features"`` compares activations (B or 1, C, H, W); ``kind="gram"`` compares Gram
    matrices (B or 1, C, C). A target with batch 1 is compared with every sample.
    """

    layer: str
    kind: str
    target: torch.Tensor
    weight: float = 1.0
    group: str = "loss"


class FeatureLoss:
    """Minus a weighted sum of feature terms and image priors: an objective for ``optimize``.

    Args:
        terms: the :class:`Term` list.
        tv_weight, tv_beta: total-variation prior on the pixels (before transforms).
        norm_weight, alpha: alpha-norm prior on the pixels.

    Every call records the batch-mean of each group of terms and of the priors in ``log``
    (``log["loss"]`` is the total that is minimised).
    """

    needs_output = False

    def __init__(self, terms: Sequence[Term], *, tv_weight: float = 0.0, tv_beta: float = 2.0,
                 norm_weight: float = 0.0, alpha: float = 6.0) -> None:
        if not terms:
            raise InputError("no layers to match; pass at least one layer")
        self.terms = list(terms)
        self.layers = list(dict.fromkeys(t.layer for t in self.terms))
        self.tv_weight, self.tv_beta = float(tv_weight), float(tv_beta)
        self.norm_weight, self.alpha = float(norm_weight), float(alpha)
        self.log: dict[str, list[float]] = {}
        self._norms = [t.target.flatten(1).pow(2).sum(1).clamp(min=1e-12) for t in self.terms]

    def losses(self, acts: Any) -> dict[str, torch.Tensor]:
        """Per-sample loss of each group, the priors and the total (``"loss"``)."""
        out: dict[str, torch.Tensor] = {}
        for t, nrm in zip(self.terms, self._norms, strict=True):
            f = acts[t.layer]
            if f.ndim != 4:
                raise MethodError(f"layer {t.layer!r} gives a {f.ndim}-D output; pick a convolutional "
                                  "layer with a (B, C, H, W) output")
            v = gram(f) if t.kind == "gram" else f
            tgt = t.target.to(v.device, v.dtype)
            if v.shape[1:] != tgt.shape[1:]:
                raise MethodError(f"layer {t.layer!r}: features of shape {tuple(v.shape[1:])} do not "
                                  f"match the target's {tuple(tgt.shape[1:])}")
            err = (v - tgt).flatten(1).pow(2).sum(1) / nrm.to(v.device)
            out[t.group] = out.get(t.group, 0) + t.weight * err  # type: ignore[operator]
        total = sum(out.values())
        img = acts.images
        if self.tv_weight:
            out["tv"] = total_variation(img, self.tv_beta)
            total = total + self.tv_weight * out["tv"]
        if self.norm_weight:
            out["norm"] = alpha_norm(img, self.alpha)
            total = total + self.norm_weight * out["norm"]
        out["loss"] = total  # type: ignore[assignment]
        return out

    def __call__(self, acts: Any) -> torch.Tensor:
        parts = self.losses(acts)
        for k, v in parts.items():
            self.log.setdefault(k, []).append(float(v.detach().mean()))
        return -parts["loss"]


def reference_features(
    lm: LoadedModel, pixels: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` on ``pixels`` (no gradient), on the model's device.

    Shape:
        pixels: (B, C, H, W) in [0, 1]; values (B, C_l, H_l, W_l).
    """
    dev = next((p.device for p in lm.model.parameters()), torch.device("cpu"))
    with capture(lm.model, list(layers)) as cap, torch.no_grad():
        lm.model(lm.preprocessing.normalize(pixels.to(dev)))
        return {n: cap.activation(n).detach().clone() for n in cap.layers}


def relu_stages(lm: LoadedModel, size: tuple[int, int] | None = None) -> list[list[str]]:
    """The model's feature layers grouped by resolution.

    A feature layer is a leaf module with a 4-D output that is an activation (ReLU, GELU, ...)
    and runs once per forward pass; where those miss a resolution (ResNet reuses one ReLU per
    block), the convolutions are added. Layers are taken
    in registration order (``named_modules()``, which is execution order for VGG, ResNet and most
    CNNs); consecutive layers with the same spatial size form a stage (VGG19: conv1_x ... conv5_x).
    """
    model = lm.model
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    acts = {n for n, m in model.named_modules()
            if n in set(leaves) and isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU))}
    h, w = size or lm.preprocessing.size
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, lm.preprocessing.channels, h, w, device=dev)
    shapes: dict[str, tuple[int, ...]] = {}
    once: set[str] = set()
    if leaves:
        with capture(model, leaves) as cap, torch.no_grad():
            model(x)
            once = set(cap.activations)
            for n, v in cap.activations.items():
                if isinstance(v, torch.Tensor) and v.ndim == 4 and min(v.shape[-2:]) > 1:
                    shapes[n] = tuple(v.shape[-2:])
    spatial = [n for n in leaves if n in shapes]
    keep = [n for n in spatial if n in acts]
    if not keep or acts - once:
        # activations reused within blocks (ResNet) run several times and cannot be captured:
        # use the convolutions and the activations that ran once instead
        mods = dict(model.named_modules())
        keep = [n for n in spatial if n in acts or isinstance(mods[n], nn.Conv2d)]
    stages: list[list[str]] = []
    last: tuple[int, ...] | None = None
    for n in keep:
        if shapes[n] != last:
            stages.append([])
            last = shapes[n]
        stages[-1].append(n)
    return stages


def default_content_layer(stages: list[list[str]]) -> str:
    """Gatys et al.'s conv4_2 for VGG: the second layer of the fourth stage, or of the
    second-to-last stage for shallower networks."""
    if not stages:
        raise MethodError("the model has no convolutional feature layers")
    s = stages[max(0, min(3, len(stages) - 2))]
    return s[min(1, len(s) - 1)]


def run(
    lm: LoadedModel,
    objective: FeatureLoss,
    *,
    init: torch.Tensor,
    settings: Settings,
    desc: str = "synthesis",
    transforms: Any = None,
    lr_floor: float = 0.1,
) -> tuple[torch.Tensor, dict[str, list[float]], dict[str, float]]:
    """Optimise pixels from ``init`` so that ``objective`` rises, on the shared loop.

    Args:
        init: (B, C, H, W) starting pixels in [0, 1].
        settings: the loop's ``steps``, ``lr``, ``param``, ``seed`` and ``progress``; ``param``:
            ``"pixel"`` (one parameter per pixel, clipped to [0, 1] after each step: the
            classical setting of Mahendran-Vedaldi and Gatys) or ``"fft"`` (decorrelated Fourier
            parameterisation with a sigmoid, from :mod:`convscope.methods.featvis.param`).
        lr_floor: Adam's learning rate decays on a cosine to ``settings.lr * lr_floor``.

    Returns:
        (images (B, C, H, W) in [0, 1], per-step history of every logged quantity, final values
        of every logged quantity on the final image without transforms).
    """
    from convscope.engines.optimize import optimize
    from convscope.methods.featvis.param import FFTImage, PixelImage

    steps, lr, param = settings.steps, settings.lr, settings.param
    check_values(steps=(steps, ints(1)), lr=(lr, reals(0, lo_open=True)))
    b, c, h, w = init.shape
    p: nn.Module
    if param == "pixel":
        p = PixelImage((h, w), batch=b, channels=c, squash="clip", decorrelate=False)
    elif param == "fft":
        p = FFTImage((h, w), batch=b, channels=c, decorrelate=True, squash="sigmoid")
    else:
        raise InputError(f"unknown parameterisation {param!r}; use 'pixel' or 'fft'")
    p.load_image(init)  # type: ignore[operator]
    holder: list[torch.optim.Optimizer] = []

    def make_opt(params: Any) -> torch.optim.Optimizer:
        holder.append(torch.optim.Adam(params, lr=lr))
        return holder[-1]

    def schedule(step: int, _param: nn.Module) -> None:
        f = lr_floor + (1 - lr_floor) * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
        for g in holder[0].param_groups:
            g["lr"] = lr * f

    objective.log.clear()
    res = optimize(lm.model, objective, p, steps=steps, optimizer=make_opt,
                   preprocess=lm.preprocessing.normalize, transforms=transforms,
                   post_step=schedule, seed=settings.seed, progress=settings.progress, desc=desc)
    hist = {k: v[:steps] for k, v in objective.log.items()}
    final = {k: v[-1] for k, v in objective.log.items() if len(v) > steps}
    return res.images.clamp(0, 1), hist, final
