"""Views of a model that need no optimisation: the first convolution's filters and a layer's
activation maps for one image (:func:`filters`, :func:`activation_maps`; also importable from
:mod:`convscope.methods.featvis.render`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.hooks import capture, resolve_layers
from convscope.core.image import ImageLike
from convscope.methods.featvis import objectives as obj
from convscope.methods.featvis.result import Visualization
from convscope.models import LoadedModel, Preprocessing, as_loaded

__all__ = ["activation_maps", "display_name", "filters"]


def display_name(lm: LoadedModel) -> str:
    """A short model name for titles: ``torchvision:vgg16`` -> ``vgg16``."""
    name = lm.name
    return name.split(":", 1)[1] if name.startswith(("torchvision:", "timm:")) else name


def _first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise MethodError(f"{type(model).__name__} has no Conv2d layer; pass layer= with a convolution")


def filters(
    model: str | nn.Module | LoadedModel,
    layer: str | None = None,
    *,
    max_filters: int = 64,
    preprocessing: Preprocessing | None = None,
) -> Visualization:
    """The filters of the first convolution (or of ``layer``) as images.

    Each filter is shown on its own scale: ``0.5 + 0.5 * w / max|w|`` (mid-grey is zero). Filters
    with 3 input channels are drawn in colour, others per input-channel mean in gray.
    """
    lm = as_loaded(model, preprocessing)
    if layer is None:
        name, conv = _first_conv(lm.model)
    else:
        (name,) = resolve_layers(lm.model, layer)
        conv = dict(lm.model.named_modules())[name]
    wt = getattr(conv, "weight", None)
    if not isinstance(wt, torch.Tensor) or wt.ndim != 4:
        raise MethodError(f"layer {name!r} has no 4-D convolution weight")
    w = wt.detach().float().cpu()[:max_filters]
    if w.shape[1] not in (1, 3):
        w = w.mean(1, keepdim=True)
    scale = w.abs().flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
    imgs = 0.5 + 0.5 * w / scale
    mname = display_name(lm)
    return Visualization(
        images=imgs.contiguous(),
        titles=tuple(f"{mname} {name} filter {i}" for i in range(len(imgs))),
        kind="filters",
        objective="weights",
        model_name=lm.name, model_info=lm.info(),
        layer=name,
        options=dict(shape=list(wt.shape)),
    )


def activation_maps(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layer: str | None = None,
    *,
    channels: Iterable[int] | None = None,
    max_channels: int = 32,
    normalize: str = "layer",
    cmap: str = "viridis",
    preprocessing: Preprocessing | None = None,
) -> Visualization:
    """The activation maps of ``layer`` for one image, one map per channel.

    Args:
        image: a path, PIL image, array, or a model-space tensor (as for ``explain``).
        layer: the layer (default: the model's default layer).
        channels: which channels (default: the ``max_channels`` with the largest mean activation,
            most active first).
        normalize: ``"layer"`` (one scale for all maps: brightness compares across channels) or
            ``"channel"`` (each map min-max scaled).
    """
    from convscope.methods.explain import prepare_inputs

    lm = as_loaded(model, preprocessing)
    layer = layer or lm.default_layer
    if layer is None:
        raise MethodError(f"{lm.name} has no default layer; pass layer=")
    (name,) = resolve_layers(lm.model, layer)
    x, _disp, tensors = prepare_inputs(image, lm.preprocessing, generic=lm.any_channels)
    if x.shape[0] != 1:
        raise InputError("activation_maps takes one image")
    p = next(lm.model.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    with capture(lm.model, name, tensors=tensors) as cap, torch.no_grad():
        lm.model(x)
        a = cap.activation(name).detach().float()
    fm = _maps(a, (int(x.shape[-2]), int(x.shape[-1])))[0]  # (C, h, w)
    if channels is None:
        order = fm.flatten(1).mean(1).argsort(descending=True)[:max_channels].tolist()
    else:
        order = [int(c) for c in channels]
        bad = [c for c in order if not 0 <= c < fm.shape[0]]
        if bad:
            raise InputError(f"channels {bad} out of range for {fm.shape[0]} channels of {name}")
    maps = fm[order]
    if normalize == "layer":
        lo, hi = maps.min(), maps.max()
        maps = (maps - lo) / (hi - lo).clamp(min=1e-12)
    elif normalize == "channel":
        lo = maps.flatten(1).amin(1).view(-1, 1, 1)
        hi = maps.flatten(1).amax(1).view(-1, 1, 1)
        maps = (maps - lo) / (hi - lo).clamp(min=1e-12)
    else:
        raise InputError(f"normalize must be 'layer' or 'channel', got {normalize!r}")
    mname = display_name(lm)
    means = fm[order].flatten(1).mean(1).tolist()
    return Visualization(
        images=maps.unsqueeze(1).cpu().contiguous(),
        titles=tuple(f"{mname} layer {name}, channel {c} (mean {m:.2g})"
                     for c, m in zip(order, means, strict=True)),
        kind="activations",
        objective="activations",
        model_name=lm.name, model_info=lm.info(),
        layer=name,
        cmap=cmap,
        options=dict(channels=order, normalize=normalize),
    )


def _maps(a: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """A layer output as (B, C, h, w) maps (NHWC and token layouts converted)."""
    lay = obj._layout_of(a, None, in_hw)
    if lay == "nchw":
        return a
    if lay == "nhwc":
        return a.permute(0, 3, 1, 2)
    if lay == "nlc":
        n = a.shape[1]
        for drop in (0, 1):
            side = math.isqrt(n - drop)
            if side * side == n - drop:
                return a[:, drop:].transpose(1, 2).reshape(a.shape[0], -1, side, side)
        return a.transpose(1, 2).unsqueeze(-1)
    return a.reshape(a.shape[0], -1, 1, 1)

