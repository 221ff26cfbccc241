"""The feature-visualisation facade: ``visualize``, the layer gallery, class models, DeepDream;
first-layer filters and activation maps (no optimisation: :mod:`.maps`) are re-exported here.

All optimisation runs through :func:`convscope.engines.optimize.optimize` (one loop); this module only
chooses the parameterisation, transforms and objective, and wraps the result in a
:class:`~.result.Visualization`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import resolve_layers
from convscope.core.image import ImageLike
from convscope.core.targets import class_index
from convscope.engines.optimize import OptimizationResult, optimize
from convscope.methods.featvis import objectives as obj
from convscope.methods.featvis.maps import activation_maps, display_name, filters
from convscope.methods.featvis.param import ImageParam
from convscope.methods.featvis.param import image as make_image
from convscope.methods.featvis.result import Visualization
from convscope.methods.featvis.transforms import Transform, blur_every, compose, standard_transforms
from convscope.models import LoadedModel, Preprocessing, as_loaded
from convscope.models.forward import probe
from convscope.models.inputs import load_pixels

__all__ = ["activation_maps", "display_name", "filters", "visualize", "visualize_class", "visualize_layer"]

ObjectiveLike = obj.Objective | str | Callable[..., torch.Tensor]


def _hw(size: int | tuple[int, int] | None, pre: Preprocessing) -> tuple[int, int]:
    if size is None:
        return int(pre.size[0]), int(pre.size[1])
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _transforms(spec: Any, hw: tuple[int, int]) -> Transform | None:
    if spec is None or spec is False or (isinstance(spec, str) and spec == "none"):
        return None
    if isinstance(spec, str):
        if spec != "standard":
            raise InputError(f"unknown transforms {spec!r}; use 'standard', 'none' or a callable")
        return standard_transforms(min(hw))
    if isinstance(spec, (list, tuple)):
        return compose(*spec)
    if callable(spec):
        return spec
    raise InputError(f"transforms must be 'standard', None, a callable or a list, not {type(spec).__name__}")


@dataclass(frozen=True)
class _Render:
    """How one image batch is optimised: :func:`visualize`'s arguments of the same names (and
    defaults), which :func:`deepdream` shares for each octave."""

    param: str | nn.Module = "fft"
    decorrelate: bool = True
    steps: int = 256
    lr: float = 0.05
    transforms: Any = "standard"
    l2: float = 0.0
    tv: float = 0.0
    blur_every: int | None = None
    blur_sigma: float = 0.5
    sd: float = 0.01
    decay: float = 1.0
    init: ImageLike | torch.Tensor | None = None
    space: str = "model"
    seed: int = 0
    truncate: bool = True
    progress: bool | None = None
    device: str | torch.device | None = None


def _param(r: _Render, hw: tuple[int, int], batch: int, channels: int) -> nn.Module:
    if isinstance(r.param, nn.Module):
        return r.param
    if r.param not in ("fft", "pixel"):
        raise InputError(f"param must be 'fft', 'pixel' or an nn.Module, got {r.param!r}")
    g = torch.Generator().manual_seed(int(r.seed))
    return make_image(hw, batch, channels, fft=r.param == "fft", decorrelate=r.decorrelate, sd=r.sd,
                      decay=r.decay, generator=g)


def _run(lm: LoadedModel, objective: obj.Objective, r: _Render, *, size: int | tuple[int, int] | None,
         batch: int, desc: str) -> tuple[OptimizationResult, nn.Module]:
    """Optimise ``batch`` images of ``size`` for ``objective`` with the settings ``r``: the one call
    of the shared loop (:func:`convscope.engines.optimize.optimize`) in this module."""
    pre = lm.preprocessing
    hw = _hw(size, pre)
    if r.steps < 0:
        raise InputError(f"steps must be >= 0, got {r.steps}")
    if hw != tuple(pre.size):  # a size the model cannot take: one line now, not a traceback mid-loop
        probe(lm.model, replace(pre, size=hw), error=InputError,
              hint=f"size {hw[0]}x{hw[1]} does not fit this model; give a size it accepts (its input "
              f"size is {pre.size[0]}x{pre.size[1]}; CLI: --size)")
    full = objective
    if r.l2:
        full = full - float(r.l2) * obj.l2(pre.mean)
    if r.tv:
        full = full - float(r.tv) * obj.total_variation()
    p = _param(r, hw, batch, pre.channels)
    init, space = r.init, r.space
    if isinstance(init, str) and init == "mean":  # the data set's mean pixel: zero model input
        init, space = torch.zeros(1, pre.channels, *hw), "model"
    if init is not None:
        load = getattr(p, "load_image", None)
        if load is None:
            raise InputError(f"{type(p).__name__} has no load_image(); cannot start from init")
        load(load_pixels(init, size=hw, channels=pre.channels, pre=pre, space=space, what="init"))
    post = [blur_every(int(r.blur_every), r.blur_sigma)] if r.blur_every else None
    res = optimize(lm.model, full, p, steps=r.steps, lr=r.lr, transforms=_transforms(r.transforms, hw),
                   preprocess=pre.normalize, post_step=post, truncate=r.truncate, seed=r.seed,
                   progress=r.progress, desc=desc, device=r.device)
    return res, p


def _probs(res: OptimizationResult) -> torch.Tensor | None:
    if res.output is None or res.output.ndim != 2:
        return None
    return torch.softmax(res.output.float(), 1)


def visualize(
    model: str | nn.Module | LoadedModel,
    objective: ObjectiveLike,
    *,
    size: int | tuple[int, int] | None = None,
    batch: int | None = None,
    param: str | nn.Module = "fft",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float = 0.05,
    transforms: Any = "standard",
    l2: float = 0.0,
    tv: float = 0.0,
    blur_every: int | None = None,
    blur_sigma: float = 0.5,
    sd: float = 0.01,
    decay: float = 1.0,
    init: ImageLike | torch.Tensor | None = None,
    space: str = "model",
    seed: int = 0,
    truncate: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    titles: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Visualization:
    """Render images that maximise ``objective`` (Lucid's ``render_vis``).

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        objective: an :class:`~.objectives.Objective`, a ``"layer:channel"`` string or a callable
            ``f(acts) -> (B,)``.
        size: image size (default: the model's input size); any size the model accepts.
        batch: number of images (default: what the objective asks for, else 1).
        param: ``"fft"`` (default), ``"pixel"`` or an ``nn.Module`` returning (B, C, H, W) in [0, 1].
        decorrelate: optimise colour in a decorrelated basis (3-channel models).
        steps, lr: optimisation steps and Adam learning rate.
        transforms: ``"standard"`` (pad, jitter, scale, rotate), ``None``, a callable or a list.
        l2, tv: weights of the L2 penalty (distance from the model's mean pixel, Simonyan's
            mean-subtracted image) and of the total-variation penalty.
        blur_every, blur_sigma: blur the image every N steps with this sigma.
        sd, decay: initial noise and FFT frequency decay.
        init: start from this image (a file, or a tensor read by the one input rule of
            :mod:`convscope.models.inputs`: model inputs, or pixels with ``space="pixels"``); ``"mean"``
            starts from the model's mean pixel (e.g. the black background of the digits).
        seed: seeds the initial noise and the transforms.
        truncate: stop the forward pass after the objective's last layer when possible.
        progress: tqdm bar (``None``: only on a terminal).
        device: where to run (default: the model's device).
        titles: one title per image (default: the objective).
        preprocessing: for a plain ``nn.Module``: its input size, channels and normalisation.

    Returns:
        A :class:`~.result.Visualization` with B images.
    """
    lm = as_loaded(model, preprocessing)
    o = obj.as_objective(objective)
    b = int(batch or o.batch or 1)
    if o.batch is not None and b != o.batch:
        raise InputError(f"the objective asks for a batch of {o.batch}, batch={b} given")
    r = _Render(param=param, decorrelate=decorrelate, steps=steps, lr=lr, transforms=transforms, l2=l2, tv=tv,
                blur_every=blur_every, blur_sigma=blur_sigma, sd=sd, decay=decay, init=init, space=space,
                seed=seed, truncate=truncate, progress=progress, device=device)
    res, _ = _run(lm, o, r, size=size, batch=b, desc="visualize")
    name = display_name(lm)
    if titles is None:
        titles = [f"{name}: {o.name}"] * b
    if len(titles) != b:
        raise InputError(f"{len(titles)} titles for {b} images")
    return Visualization(
        images=res.images,
        titles=tuple(titles),
        kind="objective",
        objective=o.name,
        model_name=lm.name, model_info=lm.info(),
        layer=", ".join(o.layers) or None,
        history=res.history,
        scores=res.final,
        probabilities=_probs(res),
        class_names=tuple(lm.class_names),
        options=dict(size=list(res.images.shape[-2:]), param=param if isinstance(param, str) else
                     type(param).__name__, steps=steps, lr=lr, seed=seed, l2=l2, tv=tv,
                     blur_every=blur_every, truncated=res.truncated),
    )


def _concat(parts: list[Visualization], **kw: Any) -> Visualization:
    def cat(name: str, dim: int = 0) -> torch.Tensor | None:
        vals = [getattr(p, name) for p in parts]
        if any(v is None for v in vals):
            return None
        if name == "history":
            n = min(v.shape[0] for v in vals)
            return torch.cat([v[:n] for v in vals], 1)
        return torch.cat(vals, dim)

    first = parts[0]
    return Visualization(
        images=torch.cat([p.images for p in parts]),
        titles=tuple(t for p in parts for t in p.titles),
        history=cat("history"),
        scores=cat("scores"),
        probabilities=cat("probabilities"),
        class_names=first.class_names,
        model_name=first.model_name, model_info=first.model_info,
        options=first.options,
        **kw,
    )


def _gallery(lm: LoadedModel, items: list[int], objective: Callable[[list[int]], Any],
             title: Callable[[int], str], *, batch_size: int = 16, seed: int = 0,
             **options: Any) -> list[Visualization]:
    """One :func:`visualize` run per ``batch_size`` items (channels or classes); batch k is seeded
    ``seed + k`` and optimises ``objective(chunk)``, one image per item titled ``title(item)``.
    The gallery options of :func:`visualize_layer` and :func:`visualize_class` (``batch_size``,
    ``seed``; the rest go to :func:`visualize`) and their defaults are these."""
    parts = []
    for k, i in enumerate(range(0, len(items), max(1, batch_size))):
        chunk = items[i:i + batch_size]
        parts.append(visualize(lm, objective(chunk), batch=len(chunk), seed=seed + k,
                               titles=[title(c) for c in chunk], **options))
    return parts


def visualize_layer(
    model: str | nn.Module | LoadedModel,
    layer: str,
    channels: Iterable[int] | None = None,
    *,
    objective: str = "channel",
    preprocessing: Preprocessing | None = None,
    **options: Any,
) -> Visualization:
    """A gallery: one image per channel of ``layer``, rendered ``batch_size`` channels per
    optimisation, titled ``"<model> layer <layer>, channel <c>"``.

    Args:
        channels: channel indices (default: the first 16).
        objective: ``"channel"`` (mean over positions) or ``"neuron"`` (the centre position).
        **options: ``batch_size`` (16): channels optimised together in one batch (memory vs
            speed; a channel's image depends on its batch only through the shared random
            transforms and initial noise); ``seed`` (0): seed of the first batch, batch k uses
            ``seed + k``; the rest go to :func:`visualize` (steps, size, param, lr, transforms, ...).
    """
    lm = as_loaded(model, preprocessing)
    (name,) = resolve_layers(lm.model, layer)
    chans = list(range(16) if channels is None else channels)
    if not chans:
        raise InputError("no channels given")
    if objective not in ("channel", "neuron"):
        raise InputError(f"objective must be 'channel' or 'neuron', got {objective!r}")
    mname = display_name(lm)
    make = obj.channel if objective == "channel" else obj.neuron
    parts = _gallery(lm, chans, lambda chunk: make(name, chunk),
                     lambda c: f"{mname} layer {name}, channel {c}", **options)
    return _concat(parts, kind="layer", objective=f"{objective}({name})", layer=name)


def visualize_class(
    model: str | nn.Module | LoadedModel,
    classes: int | str | Iterable[int | str] | None = None,
    *,
    objective: str = "logit",
    preprocessing: Preprocessing | None = None,
    **options: Any,
) -> Visualization:
    """Class model visualisation (Simonyan et al. 2014): an image that maximises a class score.

    Args:
        classes: class indices or names (default: every class, for models with at most 16).
        objective: ``"logit"`` (the unnormalised score, Simonyan's choice) or ``"prob"`` (softmax).
        **options: ``batch_size`` (16): classes optimised together in one batch; ``seed`` and the
            rest as :func:`visualize_layer` (size, param, l2, tv, transforms, ...).
    """
    lm = as_loaded(model, preprocessing)
    n = len(lm.class_names)
    if classes is None:
        if n == 0 or n > 16:
            raise InputError("pass classes= (the model has many classes)")
        cls = list(range(n))
    else:
        items = [classes] if isinstance(classes, (int, str)) else list(classes)
        # the one class rule (targets.class_index); a model whose class count is not known yet
        # (a plain module before its first input) takes indices as given
        cls = [class_index(c, lm.class_names, n) if n else int(c) for c in items]
    if objective not in ("logit", "prob"):
        raise InputError(f"objective must be 'logit' or 'prob', got {objective!r}")
    mname = display_name(lm)
    parts = _gallery(lm, cls, obj.class_logit if objective == "logit" else obj.class_prob,
                     lambda c: f"{mname} class {lm.class_names[c] if 0 <= c < n else c}", **options)
    return _concat(parts, kind="class", objective=f"class_{objective}")


def image_param_from(pixels: torch.Tensor) -> ImageParam:
    """A clipped pixel parameterisation holding ``pixels`` (for optimising a photo)."""
    from convscope.methods.featvis.param import PixelImage

    t = pixels.clamp(0, 1)
    p = PixelImage((int(t.shape[-2]), int(t.shape[-1])), t.shape[0], t.shape[1], squash="clip")
    p.load_image(t)
    return p
