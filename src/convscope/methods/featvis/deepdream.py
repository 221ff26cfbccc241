"""DeepDream: amplify what a layer already sees in an image (Mordvintsev et al. 2015), through the
same optimisation and rendering as :func:`convscope.methods.featvis.render.visualize`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.hooks import resolve_layers
from convscope.core.image import ImageLike
from convscope.methods.featvis import objectives as obj
from convscope.methods.featvis.maps import display_name
from convscope.methods.featvis.render import (
    ObjectiveLike,
    _Render,
    _run,
    image_param_from,
)
from convscope.methods.featvis.result import Visualization
from convscope.methods.featvis.transforms import jitter
from convscope.models import LoadedModel, Preprocessing, as_loaded
from convscope.models.inputs import load_pixels

__all__ = ["deepdream"]


def deepdream(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layer: str | None = None,
    *,
    objective: ObjectiveLike | None = None,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    lr: float = 0.02,
    jitter_px: int = 8,
    max_side: int | None = 512,
    seed: int = 0,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | None = None,
    space: str = "model",
) -> Visualization:
    """DeepDream on a photo (Mordvintsev et al. 2015) with octaves.

    The photo is shrunk ``octaves - 1`` times by ``octave_scale``; starting at the smallest,
    each octave runs ``steps`` steps of gradient ascent on ``objective`` (default: the whole-layer
    L2 of ``layer``) under random jitter, then the detail it added is enlarged and added to the
    next, larger photo. The image stays a photo: pixels are clipped to [0, 1], not squashed.

    Args:
        image: a path, PIL image, array, or a (C, H, W) / (1, C, H, W) tensor read by the one
            input rule (:mod:`convscope.models.inputs`): model inputs, or pixels with ``space="pixels"``.
        layer: layer for the DeepDream objective (default: the model's default layer).
        objective: another objective instead (e.g. ``channel(layer, c)``).
        max_side: shrink larger photos to this side first (``None``: keep).

    Returns:
        A :class:`~.result.Visualization` holding the dreamed image.
    """
    lm = as_loaded(model, preprocessing)
    pre = lm.preprocessing
    if objective is None:
        layer = layer or lm.default_layer
        if layer is None:
            raise MethodError(f"{lm.name} has no default layer; pass layer=")
        (layer,) = resolve_layers(lm.model, layer)
        o = obj.deepdream(layer)
    else:
        o = obj.as_objective(objective)
    base = load_pixels(image, channels=pre.channels, pre=pre, space=space)
    if max_side and max(base.shape[-2:]) > max_side:
        k = max_side / max(base.shape[-2:])
        hw = (max(1, round(base.shape[-2] * k)), max(1, round(base.shape[-1] * k)))
        base = F.interpolate(base, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if octaves < 1 or octave_scale <= 1.0:
        raise InputError("octaves must be >= 1 and octave_scale > 1")
    h, w = base.shape[-2:]
    sizes = [(max(8, round(h / octave_scale ** k)), max(8, round(w / octave_scale ** k)))
             for k in range(octaves - 1, -1, -1)]
    detail = torch.zeros(1, pre.channels, *sizes[0])
    history = []
    img = base
    for k, hw in enumerate(sizes):
        shrunk = F.interpolate(base, size=hw, mode="bilinear", align_corners=False, antialias=True)
        detail = F.interpolate(detail, size=hw, mode="bilinear", align_corners=False)
        p = image_param_from(shrunk + detail)
        j = min(jitter_px, max(0, min(hw) // 8))
        r = _Render(param=p, steps=steps, lr=lr, transforms=jitter(j) if j else None, seed=seed + k,
                    progress=progress, device=device)
        res, _ = _run(lm, o, r, size=hw, batch=1, desc=f"deepdream octave {k + 1}/{len(sizes)}")
        img = res.images
        detail = img - shrunk
        history.append(res.history)
    return Visualization(
        images=img,
        titles=(f"{display_name(lm)} DeepDream: {o.name}",),
        kind="deepdream",
        objective=o.name,
        model_name=lm.name, model_info=lm.info(),
        layer=", ".join(o.layers) or None,
        history=torch.cat(history) if history else None,
        class_names=tuple(lm.class_names),
        options=dict(octaves=octaves, octave_scale=octave_scale, steps=steps, lr=lr, seed=seed,
                     size=[int(h), int(w)]),
    )
