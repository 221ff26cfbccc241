"""The attribution facade: ``explain(model, image, method=..., target=..., layer=...)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.hooks import resolve_layers, state_guard
from convscope.core.image import ImageLike
from convscope.core.progress import Progress
from convscope.core.result import deferred_value
from convscope.core.results import Explanation
from convscope.core.seeding import seeded
from convscope.core.targets import TargetSpec, is_contrast, resolve_target
from convscope.engines.perturb import BlackBoxModel, is_black_box
from convscope.methods.attribution._base import MethodContext
from convscope.methods.attribution._shared import clean_outputs
from convscope.methods.attribution._verdict import verdict, warn_unreliable
from convscope.methods.registry import check_method_options, get_method, inapplicable, list_methods
from convscope.models import LoadedModel, Preprocessing, load_model
from convscope.models.inputs import as_inputs

__all__ = ["explain", "prepare_inputs"]

BAR_DELAY = 1.0
"""Seconds an :func:`explain` call runs before its terminal bar shows (a quick call leaves none)."""


def prepare_inputs(
    images: ImageLike | Sequence[ImageLike] | torch.Tensor, pre: Preprocessing, *, generic: bool = False,
    space: str = "model",
) -> tuple[torch.Tensor, np.ndarray, list[torch.Tensor]]:
    """Turn images into a model-space batch and display images (:func:`convscope.models.inputs.as_inputs`).

    Returns:
        (x (B, C, H, W) private copy, display (B, H, W, 3) in [0, 1], the caller's tensors).
    """
    inp = as_inputs(images, pre, space=space, any_channels=generic)
    return inp.x, inp.display, inp.tensors


def explain(
    model: str | nn.Module | LoadedModel | Callable[..., Any],
    image: ImageLike | Sequence[ImageLike] | torch.Tensor,
    method: str = "saliency",
    target: TargetSpec = None,
    layer: str | Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | str | dict[str, Any] | None = None,
    space: str = "model",
    **options: Any,
) -> Explanation:
    """Explain the model's decision on ``image`` with ``method``.

    Args:
        model: a spec for :func:`~convscope.load_model`, an ``nn.Module`` or a loaded model.
        image: a path, PIL image, array, a list of those, or a tensor: what ``model(x)`` takes
            (``space="pixels"``: pixels in [0, 1]); see :mod:`convscope.models.inputs`.
        method: a registered method name (``convscope methods`` lists them).
        target: predicted class (``None``), index, class name, ``"top2"``, one per sample, or a
            callable on the logits returning (B,) scores.
        layer: layer name(s) or glob for methods that work at a layer (default: the model's).
        batch_size: largest number of samples through the model at once; never changes a result.
        seed: seed for random methods.
        device: run on this device (default: where the model's parameters are).
        class_names, preprocessing: override the model's (for a black box: its class names and
            how images become its inputs; a tensor input is taken as it is). ``preprocessing``
            may be a preset name (``"imagenet"``, ``"none"``), a dict or a Preprocessing.
        space: how to read a tensor ``image``: ``"model"`` (default) or ``"pixels"``.
        **options: method options (see the method's docstring).

    Returns:
        An :class:`~convscope.core.results.Explanation` for the whole batch.

    Shape:
        Explanation.map is (B, H, W) at the input's resolution.
    """
    info = get_method(method)
    check_method_options(info, options)
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    black_box = None
    if is_black_box(model):  # a predict(batch) -> scores function or an ONNX session
        if not info.black_box:
            need = "gradients" if info.needs_gradients else "the network's layers"
            raise MethodError(
                f"method {method!r} needs {need} and cannot run on a black-box predict function; "
                "pass the torch model, or use a black-box method: "
                f"{', '.join(m.name for m in list_methods() if m.black_box)}"
            )
        black_box = BlackBoxModel(model)
        model = black_box
    lm = load_model(model, class_names=class_names, preprocessing=preprocessing)  # type: ignore[arg-type]
    net = lm.model
    why = inapplicable(info, net)  # e.g. an attention method on a CNN: one line, before any work
    if why is not None:
        raise MethodError(why)
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    inp = as_inputs(image, lm.preprocessing, space=space, any_channels=lm.any_channels)
    x, display, caller_tensors = inp.x, deferred_value(inp, "display"), inp.tensors  # display: made if shown
    x = x.to(device)
    lm.fill_from_input(x)
    layers: list[str] = []
    if info.needs_layer:
        chosen = layer if layer is not None else lm.default_layer
        if chosen is None:
            raise MethodError(
                f"method {method!r} needs a layer and {lm.name} has no default; pass layer="
            )
        layers = resolve_layers(net, chosen)
    elif layer is not None:
        raise MethodError(f"method {method!r} does not use a layer; drop layer=")
    ctx = MethodContext(
        model=net,
        x=x,
        target=target,
        layer=layers,
        class_names=lm.class_names,
        batch_size=int(batch_size),
        seed=int(seed),
        predict=None if black_box is None else black_box.predictor,
        preprocessing=lm.preprocessing,
    )
    with state_guard(net, caller_tensors):
        job = Progress(f"explain {method}", 1, tty_only=True, delay=BAR_DELAY)  # its rounds of calls: one job
        with seeded(seed, x.device), job:
            out = info.func(ctx, **options)
            job.update(1)
        logits = out.logits
        if logits is None:
            logits = clean_outputs(net, x, ctx.batch_size)
    negatives = None
    if is_contrast(target, lm.class_names):  # the subtracted class of each image, as resolved
        neg = resolve_target(target, logits.detach(), lm.class_names).negative
        negatives = None if neg is None else tuple(int(v) for v in neg.tolist())
    amap = out.map.detach().float()
    if amap.ndim == 4:
        amap = amap[:, 0]
    if amap.shape[-2:] != x.shape[-2:]:
        amap = F.interpolate(amap[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    diagnostics = dict(out.diagnostics)
    reliable, because = verdict(diagnostics, amap)
    diagnostics.update(reliable=reliable, unreliable_because=because)
    warn_unreliable(method, because)
    return Explanation(
        method=method,
        map=amap.cpu(),
        images=display,
        targets=tuple(out.targets),
        signed=info.signed,
        raw=None if out.raw is None else out.raw.detach().cpu(),
        probabilities=torch.softmax(logits.detach().float(), dim=1).cpu(),
        class_names=tuple(lm.class_names),
        layer=", ".join(layers) if layers else None,
        options=dict(options),
        diagnostics=diagnostics,
        model_name=lm.name,
        model_info=lm.info(default_layer_used=info.needs_layer and layer is None),
        normalization=out.normalize,
        contrast=negatives,
    )
