"""Feature inversion: which images does a layer map to the same features?

Reference:
    Mahendran, Vedaldi, "Understanding deep image representations by inverting them", CVPR 2015.

Given the features ``phi0 = phi_l(x0)`` of an image at layer ``l``, find

    x* = argmin_x  ||phi_l(x) - phi0||^2 / ||phi0||^2  +  lambda_TV R_TV^beta(x)  +  lambda_a R_a(x)

over pixels x in [0, 1], where ``R_TV^beta`` is the total variation (mean over pixels of
``((x_{i,j+1} - x_ij)^2 + (x_{i+1,j} - x_ij)^2)^(beta/2)``) and ``R_a = mean |x - 0.5|^alpha``
(the bounded-range prior). The relative feature error is normalised by ``||phi0||^2`` so the
prior weights mean the same at every layer. The optimisation runs on convscope's one input
loop (:func:`convscope.optimize.optimize`), from seeded noise around mid-grey, with Adam.

Shallow layers keep nearly everything (their inversion is close to the original); deeper layers
keep what the network needs for its decision and lose position, colour and detail, which is the
point of the strip of reconstructions from shallow to deep layers.

``history["loss"]`` is the total minimised at each step (under the chosen transforms),
``history["features"]`` the relative feature error; ``diagnostics["final_features"]`` is the
relative feature error of the result and ``diagnostics["ssim"]`` its SSIM to the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..hooks import resolve_layers
from ..image import ImageLike
from ..models import LoadedModel, Preprocessing
from ._common import as_loaded, pixels_from
from ._features import FeatureLoss, Term, reference_features, relu_stages, run
from .results import SynthesisResult

__all__ = ["invert", "inversion_strip", "ssim"]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity of two (C, H, W) images in [0, 1] (``skimage.metrics``)."""
    from skimage.metrics import structural_similarity

    x = a.detach().cpu().double().numpy()
    y = b.detach().cpu().double().numpy()
    win = min(7, x.shape[1], x.shape[2])
    win -= 1 - win % 2
    return float(structural_similarity(x, y, channel_axis=0, data_range=1.0, win_size=max(win, 3)))


def _inverse(
    lm: LoadedModel, x0: torch.Tensor, layers: list[str], opts: dict[str, Any], progress: bool | None
) -> tuple[list[torch.Tensor], list[dict[str, list[float]]], list[dict[str, float]]]:
    """Invert ``x0``'s features at each of ``layers`` from one seeded start; ``opts``: the
    settings of :func:`invert` (recorded as the result's options)."""
    steps, lr, param, seed, init_sd = (opts[k] for k in ("steps", "lr", "param", "seed", "init_sd"))
    feats = reference_features(lm, x0, layers)
    gen = torch.Generator().manual_seed(int(seed))
    init = (0.5 + init_sd * torch.randn(x0.shape, generator=gen)).clamp(0, 1)
    images, hists, finals = [], [], []
    for layer in layers:
        obj = FeatureLoss([Term(layer, "features", feats[layer], 1.0, "features")],
                          **{k: opts[k] for k in ("tv_weight", "tv_beta", "norm_weight", "alpha")})
        img, hist, final = run(lm, obj, init=init, steps=steps, lr=lr, param=param, seed=seed,
                               progress=progress, desc=f"invert {layer}")
        images.append(img)
        hists.append(hist)
        finals.append(final)
    return images, hists, finals


def invert(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layer: str | None = None,
    *,
    steps: int = 200,
    lr: float = 0.05,
    tv_weight: float = 0.5,
    tv_beta: float = 2.0,
    norm_weight: float = 0.0,
    alpha: float = 6.0,
    init_sd: float = 0.1,
    param: str = "pixel",
    space: str = "model",
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SynthesisResult:
    """Reconstruct ``image`` from its features at ``layer``.

    Args:
        model: spec, ``nn.Module`` or :class:`LoadedModel` (left untouched; no hook remains).
        image: an image (read and resized by the model's preprocessing) or (B, C, H, W) pixels
            in [0, 1]; a batch is inverted sample by sample (in one optimisation).
        layer: dotted layer name (default: the model's default layer).
        steps, lr: Adam steps and learning rate (cosine-decayed to a tenth).
        tv_weight, tv_beta: total-variation prior (see the module docstring).
        norm_weight, alpha: alpha-norm prior.
        init_sd: standard deviation of the seeded start noise around mid-grey.
        param: ``"pixel"`` or ``"fft"`` parameterisation.
        seed: seeds the start noise and the loop.

    Returns:
        A :class:`SynthesisResult` of kind ``"inversion"`` (images (B, C, H, W)); the original is
        its reference.
    """
    lm = as_loaded(model, preprocessing)
    opts = _opts(steps=steps, lr=lr, tv_weight=tv_weight, tv_beta=tv_beta, norm_weight=norm_weight,
                 alpha=alpha, init_sd=init_sd, param=param, seed=seed)
    layer = layer or lm.default_layer
    if layer is None:
        raise InputError("pass layer=: the model has no default layer")
    (name,) = resolve_layers(lm.model, [layer])[:1]
    x0 = pixels_from(image, lm.preprocessing, space=space, what="image")
    imgs, hists, finals = _inverse(lm, x0, [name], opts, progress)
    img = imgs[0]
    scores = [ssim(img[i], x0[i]) for i in range(len(x0))]
    return SynthesisResult(
        kind="inversion",
        images=img,
        titles=tuple(f"from {name}" + (f" #{i}" if len(x0) > 1 else "") for i in range(len(x0))),
        references=(("original", x0[0]),),
        history=hists[0],
        layers=(name,),
        options=opts,
        diagnostics={**{f"final_{k}": v for k, v in finals[0].items()},
                     "initial_loss": hists[0]["loss"][0], "ssim": scores},
        extras={"originals": x0},
        model_name=lm.name, model_info=lm.info(),
    )


def inversion_strip(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    n_layers: int = 5,
    steps: int = 200,
    lr: float = 0.05,
    tv_weight: float = 0.5,
    tv_beta: float = 2.0,
    norm_weight: float = 0.0,
    alpha: float = 6.0,
    init_sd: float = 0.1,
    param: str = "pixel",
    space: str = "model",
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SynthesisResult:
    """Reconstructions of one image from several layers, shallow to deep.

    Args:
        layers: the layers, in order (default: ``n_layers`` activation layers spread evenly from
            the first to the last, see :func:`~convscope.synthesis._features.relu_stages`).
        Other arguments: as :func:`invert`, with the same settings at every layer.

    Returns:
        A :class:`SynthesisResult` with one image per layer (L, C, H, W) and, per layer,
        ``diagnostics["ssim"]`` and ``diagnostics["final_features"]``.
    """
    lm = as_loaded(model, preprocessing)
    opts = _opts(steps=steps, lr=lr, tv_weight=tv_weight, tv_beta=tv_beta, norm_weight=norm_weight,
                 alpha=alpha, init_sd=init_sd, param=param, seed=seed)
    x0 = pixels_from(image, lm.preprocessing, space=space, what="image")
    if x0.shape[0] != 1:
        raise InputError(f"inversion_strip takes one image, got {x0.shape[0]}")
    if layers is None:
        flat = [n for s in relu_stages(lm, (int(x0.shape[-2]), int(x0.shape[-1]))) for n in s]
        if not flat:
            raise InputError("the model has no convolutional feature layers; pass layers=")
        k = min(n_layers, len(flat))
        pick = np.unique(np.round(np.linspace(0, len(flat) - 1, k)).astype(int))
        names = [flat[i] for i in pick]
    else:
        names = resolve_layers(lm.model, list(layers))
    imgs, hists, finals = _inverse(lm, x0, names, opts, progress)
    scores = [ssim(im[0], x0[0]) for im in imgs]
    return SynthesisResult(
        kind="inversion",
        images=torch.cat(imgs),
        titles=tuple(f"{n} (SSIM {s:.2f})" for n, s in zip(names, scores, strict=True)),
        references=(("original", x0[0]),),
        history={f"{n}:{k}": v for n, h in zip(names, hists, strict=True) for k, v in h.items()},
        layers=tuple(names),
        options=opts,
        diagnostics={"ssim": scores,
                     "final_features": [f.get("features") for f in finals],
                     "initial_loss": [h["loss"][0] for h in hists],
                     "final_loss": [f.get("loss") for f in finals]},
        extras={"originals": x0},
        model_name=lm.name, model_info=lm.info(),
    )


def _opts(**kw: Any) -> dict[str, Any]:
    return dict(kw)
