"""Feature inversion: which images does a layer map to the same features?

Reference:
    Mahendran, Vedaldi, "Understanding deep image representations by inverting them", CVPR 2015.

Given the features ``phi0 = phi_l(x0)`` of an image at layer ``l``, find

    x* = argmin_x  ||phi_l(x) - phi0||^2 / ||phi0||^2  +  lambda_TV R_TV^beta(x)  +  lambda_a R_a(x)

over pixels x in [0, 1], where ``R_TV^beta`` is the total variation (mean over pixels of
``((x_{i,j+1} - x_ij)^2 + (x_{i+1,j} - x_ij)^2)^(beta/2)``) and ``R_a = mean |x - 0.5|^alpha``
(the bounded-range prior). The relative feature error is normalised by ``||phi0||^2`` so the
prior weights mean the same at every layer. The optimisation runs on convscope's one input
loop (:func:`convscope.engines.optimize.optimize`), from seeded noise around mid-grey, with Adam.

Shallow layers keep nearly everything (their inversion is close to the original); deeper layers
keep what the network needs for its decision and lose position, colour and detail, which is the
point of the strip of reconstructions from shallow to deep layers.

``history["loss"]`` is the total minimised at each step (under the chosen transforms),
``history["features"]`` the relative feature error; ``diagnostics["final_features"]`` is the
relative feature error of the result and ``diagnostics["ssim"]`` its SSIM to the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import resolve_layers
from convscope.core.image import ImageLike
from convscope.core.validate import shows_options
from convscope.methods.synthesis._common import as_loaded, pixels_from
from convscope.methods.synthesis._features import (
    FeatureLoss,
    Settings,
    Term,
    reference_features,
    relu_stages,
    run,
)
from convscope.methods.synthesis.results import SynthesisResult
from convscope.models import LoadedModel

__all__ = ["invert", "inversion_strip", "ssim"]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity of two (C, H, W) images in [0, 1] (``skimage.metrics``)."""
    from skimage.metrics import structural_similarity

    x = a.detach().cpu().double().numpy()
    y = b.detach().cpu().double().numpy()
    win = min(7, x.shape[1], x.shape[2])
    win -= 1 - win % 2
    return float(structural_similarity(x, y, channel_axis=0, data_range=1.0, win_size=max(win, 3)))


#: The defaults inversion sets over the shared :class:`~._features.Settings`.
_DEFAULTS: dict[str, Any] = {"steps": 200, "tv_weight": 0.5}


def _inverse(lm: LoadedModel, x0: torch.Tensor, layer: str, s: Settings) -> SynthesisResult:
    """Invert the features of every image of ``x0`` at ``layer`` (one optimisation from seeded noise)."""
    feats = reference_features(lm, x0, [layer])
    obj = FeatureLoss([Term(layer, "features", feats[layer], 1.0, "features")], **s.priors())
    img, hist, final = run(lm, obj, init=s.noise(x0.shape), settings=s, desc=f"invert {layer}")
    scores = [ssim(img[i], x0[i]) for i in range(len(x0))]
    return SynthesisResult(
        kind="inversion",
        images=img,
        titles=tuple(f"from {layer}" + (f" #{i}" if len(x0) > 1 else "") for i in range(len(x0))),
        references=(("original", x0[0]),),
        history=hist,
        layers=(layer,),
        options=s.options(),
        diagnostics={**{f"final_{k}": v for k, v in final.items()},
                     "initial_loss": hist["loss"][0], "ssim": scores},
        extras={"originals": x0},
        model_name=lm.name, model_info=lm.info(),
    )


@shows_options(Settings, **_DEFAULTS)
def invert(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layer: str | None = None,
    **settings: Any,
) -> SynthesisResult:
    """Reconstruct ``image`` from its features at ``layer``.

    Args:
        model: spec, ``nn.Module`` or :class:`LoadedModel` (left untouched; no hook remains).
        image: an image (read and resized by the model's preprocessing) or (B, C, H, W) pixels
            in [0, 1]; a batch is inverted sample by sample (in one optimisation).
        layer: dotted layer name (default: the model's default layer).
        **settings: the :class:`~convscope.methods.synthesis._features.Settings` (``steps``, ``lr``,
            ``tv_weight``, ``tv_beta``, ``norm_weight``, ``alpha``, ``init_sd``, ``param``,
            ``seed``, ``space``, ``preprocessing``, ``progress``; see the module docstring for the
            priors), here with ``steps=200`` and ``tv_weight=0.5`` by default.

    Returns:
        A :class:`SynthesisResult` of kind ``"inversion"`` (images (B, C, H, W)); the original is
        its reference.
    """
    s = Settings.of("invert", settings, **_DEFAULTS)
    lm = as_loaded(model, s.preprocessing)
    layer = layer or lm.default_layer
    if layer is None:
        raise InputError("pass layer=: the model has no default layer")
    (name,) = resolve_layers(lm.model, [layer])[:1]
    x0 = pixels_from(image, lm.preprocessing, space=s.space, what="image")
    return _inverse(lm, x0, name, s)


@shows_options(Settings, **_DEFAULTS)
def inversion_strip(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    n_layers: int = 5,
    **settings: Any,
) -> SynthesisResult:
    """Reconstructions of one image from several layers, shallow to deep.

    Each layer is one :func:`invert` run with the same settings and the same seeded start.

    Args:
        layers: the layers, in order (default: ``n_layers`` activation layers spread evenly from
            the first to the last, see :func:`~convscope.methods.synthesis._features.relu_stages`).
        Other arguments: as :func:`invert`.

    Returns:
        A :class:`SynthesisResult` with one image per layer (L, C, H, W) and, per layer,
        ``diagnostics["ssim"]`` and ``diagnostics["final_features"]``.
    """
    s = Settings.of("inversion_strip", settings, **_DEFAULTS)
    lm = as_loaded(model, s.preprocessing)
    x0 = pixels_from(image, lm.preprocessing, space=s.space, what="image")
    if x0.shape[0] != 1:
        raise InputError(f"inversion_strip takes one image, got {x0.shape[0]}")
    if layers is None:
        flat = [n for st in relu_stages(lm, (int(x0.shape[-2]), int(x0.shape[-1]))) for n in st]
        if not flat:
            raise InputError("the model has no convolutional feature layers; pass layers=")
        k = min(n_layers, len(flat))
        pick = np.unique(np.round(np.linspace(0, len(flat) - 1, k)).astype(int))
        names = [flat[i] for i in pick]
    else:
        names = resolve_layers(lm.model, list(layers))
    parts = [_inverse(lm, x0, n, s) for n in names]
    diags = [p.diagnostics for p in parts]
    scores = [d["ssim"][0] for d in diags]
    return replace(  # the first layer's result, with every layer's images, history and numbers
        parts[0],
        images=torch.cat([p.images for p in parts]),
        titles=tuple(f"{n} (SSIM {sc:.2f})" for n, sc in zip(names, scores, strict=True)),
        history={f"{n}:{k}": v for n, p in zip(names, parts, strict=True) for k, v in p.history.items()},
        layers=tuple(names),
        diagnostics={"ssim": scores,
                     "final_features": [d.get("final_features") for d in diags],
                     "initial_loss": [d["initial_loss"] for d in diags],
                     "final_loss": [d.get("final_loss") for d in diags]},
    )
