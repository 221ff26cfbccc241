"""Neural texture synthesis (Gram matrices) and style transfer (Gatys et al.).

References:
    Gatys, Ecker, Bethge, "Texture synthesis using convolutional neural networks", NeurIPS 2015.
    Gatys, Ecker, Bethge, "Image style transfer using convolutional neural networks", CVPR 2016.
    Ustyuzhaninov, Brendel, Gatys, Bethge, "What does it take to generate natural textures?",
    ICLR 2017 (random, untrained filters already give textures of some quality).

A texture is described by the Gram matrices ``G_l = F_l F_l^T / (H_l W_l)`` of the feature maps
``F_l`` (C_l x H_l W_l) at a few layers: which channels fire together, wherever they fire. Texture
synthesis finds pixels x in [0, 1] with

    L_texture(x) = sum_l w_l ||G_l(x) - G_l(s)||_F^2 / ||G_l(s)||_F^2

for the texture image s (the per-layer relative error replaces the paper's 1 / (4 N^2 M^2), so
the weights mean the same on any network). Style transfer adds a content term at a deeper layer:

    L_style(x) = a ||F_c(x) - F_c(p)||^2 / ||F_c(p)||^2 + b L_texture(x) + lambda_TV R_TV(x)

for the content image p and the style image s, starting from p (or noise). Both run on
convscope's one input loop (:func:`convscope.engines.optimize.optimize`) with Adam on the pixels (the
paper uses L-BFGS); the forward pass stops after the deepest layer used.

Default layers (see :func:`~convscope.methods.synthesis._features.relu_stages`): the first activation of
every resolution stage (VGG: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1) for the Gram terms and
the second activation of the fourth stage (VGG: relu4_2) for the content.

Which network: pretrained VGG-19 is what the papers use (``style_model()`` loads it when its
weights are in the local torch cache). Without it, the untrained VGG architecture still makes
textures that match the source's colours and local statistics (random filters), but not its
larger objects; and any CNN works (the tests use the bundled digits CNN on grayscale textures).
``diagnostics["pretrained"]`` says which was used when the model came from ``style_model()``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import resolve_layers
from convscope.core.image import ImageLike
from convscope.core.validate import shows_options
from convscope.methods.synthesis._common import as_loaded, gram, load_pixels
from convscope.methods.synthesis._features import (
    FeatureLoss,
    Settings,
    Term,
    default_content_layer,
    reference_features,
    relu_stages,
    run,
)
from convscope.methods.synthesis.results import SynthesisResult
from convscope.models import LoadedModel, load_model

__all__ = ["style_model", "style_transfer", "texture"]


def weights_cached(arch: str) -> bool:
    """Whether torchvision's default pretrained weights for ``arch`` are in the local torch cache
    (nothing is downloaded)."""
    try:
        from torchvision import models as tvm

        url = tvm.get_model_weights(arch).DEFAULT.url
    except Exception:
        return False
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    return os.path.exists(path)


def style_model(arch: str = "vgg19", *, pretrained: bool | None = None) -> LoadedModel:
    """VGG for texture and style: pretrained weights when cached locally, else the untrained
    architecture (with a warning). ``pretrained=True`` insists (raises if not cached), ``False``
    always takes random weights. The loaded model's ``card["pretrained"]`` records which."""
    have = weights_cached(arch)
    if pretrained is None:
        pretrained = have
        if not have:
            warnings.warn(f"pretrained {arch} weights are not in the torch cache; using random weights "
                          "(textures keep colours and local statistics, not objects)", stacklevel=2)
    lm = load_model(f"torchvision:{arch}", weights="default" if pretrained else None)
    lm.card = {**lm.card, "pretrained": bool(pretrained)}
    return lm


def _layers(lm: LoadedModel, given: Sequence[str] | str | None, size: tuple[int, int]) -> list[str]:
    if given is not None:
        return resolve_layers(lm.model, [given] if isinstance(given, str) else list(given))
    stages = relu_stages(lm, size)
    if not stages:
        raise InputError("the model has no convolutional feature layers; pass layers=")
    return [s[0] for s in stages]


def _weights(layers: list[str], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / len(layers)] * len(layers)
    if len(weights) != len(layers):
        raise InputError(f"{len(weights)} layer weights for {len(layers)} layers")
    return [float(w) for w in weights]


@shows_options(Settings)
def texture(
    model: str | nn.Module | LoadedModel,
    source: ImageLike | torch.Tensor,
    *,
    layers: Sequence[str] | str | None = None,
    layer_weights: Sequence[float] | None = None,
    size: int | tuple[int, int] | None = None,
    source_size: int | tuple[int, int] | None = None,
    n: int = 1,
    **settings: Any,
) -> SynthesisResult:
    """Synthesise ``n`` textures whose Gram matrices match those of ``source``.

    Args:
        model: any CNN (spec, module or :class:`LoadedModel`); :func:`style_model` gives VGG.
        source: the texture image (converted to the model's channels); a tensor is read by the
            one input rule (:mod:`convscope.models.inputs`: model inputs, or pixels with ``space="pixels"``).
        layers: Gram layers (default: first activation of every resolution stage).
        layer_weights: one weight per layer (default: equal, summing to 1).
        size: output side or (h, w) (default: the source's size).
        source_size: resize the source first (shorter side or (h, w)).
        n: number of textures, each from its own seeded noise.
        **settings: the :class:`~convscope.methods.synthesis._features.Settings`: ``steps`` (300),
            ``lr`` (0.05), the priors ``tv_weight`` (0), ``tv_beta``, ``norm_weight``, ``alpha``,
            the start noise ``init_sd``, ``param``, ``seed``, ``space``, ``preprocessing``, ``progress``.

    Returns:
        A :class:`SynthesisResult` of kind ``"texture"``; ``history["loss"]`` and
        ``history["style"]`` per step, ``diagnostics["initial_loss"]`` / ``["final_style"]``.
    """
    s = Settings.of("texture", settings)
    lm = as_loaded(model, s.preprocessing)
    src = load_pixels(source, size=source_size, channels=lm.preprocessing.channels, what="source",
                      pre=lm.preprocessing, space=s.space)
    hw = tuple(src.shape[-2:]) if size is None else (
        (size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
    names = _layers(lm, layers, tuple(src.shape[-2:]))  # type: ignore[arg-type]
    ws = _weights(names, layer_weights)
    feats = reference_features(lm, src, names)
    terms = [Term(n_, "gram", gram(feats[n_]), w, "style") for n_, w in zip(names, ws, strict=True)]
    obj = FeatureLoss(terms, **s.priors())
    imgs, hist, final = run(lm, obj, init=s.noise((n, src.shape[1], *hw)), settings=s, desc="texture")
    return SynthesisResult(
        kind="texture",
        images=imgs,
        titles=tuple(f"texture #{i}" if n > 1 else "Gram texture" for i in range(n)),
        references=(("source", src[0]),),
        history=hist,
        layers=tuple(names),
        options=dict(layer_weights=ws, size=list(hw), **s.options(), n=n),
        diagnostics={"initial_loss": hist["loss"][0], **{f"final_{k}": v for k, v in final.items()},
                     "pretrained": lm.card.get("pretrained")},
        model_name=lm.name, model_info=lm.info(),
    )


@shows_options(Settings, lr=0.03)
def style_transfer(
    model: str | nn.Module | LoadedModel,
    content: ImageLike | torch.Tensor,
    style: ImageLike | torch.Tensor,
    *,
    content_layers: Sequence[str] | str | None = None,
    style_layers: Sequence[str] | str | None = None,
    style_layer_weights: Sequence[float] | None = None,
    content_weight: float = 1.0,
    style_weight: float = 10.0,
    size: int | tuple[int, int] | None = None,
    style_size: int | tuple[int, int] | None = None,
    init: str = "content",
    **settings: Any,
) -> SynthesisResult:
    """Paint ``content`` in the style of ``style`` (Gatys et al. 2016).

    Args:
        model: any CNN; :func:`style_model` gives VGG-19.
        content, style: images (converted to the model's channels); tensors are read by the one
            input rule (:mod:`convscope.models.inputs`: model inputs, or pixels with ``space="pixels"``).
        content_layers: layers of the content term (default: relu4_2 on VGG, see module doc).
        style_layers, style_layer_weights: Gram layers and their weights (default: first
            activation of every stage, equal weights summing to 1).
        content_weight, style_weight: a and b of the module docstring (the losses are relative
            errors, so b / a = 10 gives a clearly stylised image that keeps the content).
        size: resize the content (shorter side or (h, w)); the output has the content's size.
        style_size: resize the style image.
        init: ``"content"`` (start from the content image) or ``"noise"`` (``init_sd`` around grey).
        **settings: as :func:`texture`, here with ``lr=0.03`` by default (``tv_weight``: the
            total-variation prior).

    Returns:
        A :class:`SynthesisResult` of kind ``"style"`` with ``history["loss"]``,
        ``history["content"]`` and ``history["style"]`` per step.
    """
    s = Settings.of("style_transfer", settings, lr=0.03)
    lm = as_loaded(model, s.preprocessing)
    c = lm.preprocessing.channels
    cont = load_pixels(content, size=size, channels=c, what="content", pre=lm.preprocessing, space=s.space)
    sty = load_pixels(style, size=style_size, channels=c, what="style", pre=lm.preprocessing, space=s.space)
    stages_hw = tuple(cont.shape[-2:])
    s_names = _layers(lm, style_layers, stages_hw)  # type: ignore[arg-type]
    if content_layers is None:
        c_names = [default_content_layer(relu_stages(lm, stages_hw))]  # type: ignore[arg-type]
    else:
        c_names = resolve_layers(lm.model, [content_layers] if isinstance(content_layers, str)
                                 else list(content_layers))
    ws = _weights(s_names, style_layer_weights)
    fs = reference_features(lm, sty, s_names)
    fc = reference_features(lm, cont, c_names)
    terms = [Term(n_, "features", fc[n_], content_weight / len(c_names), "content") for n_ in c_names]
    terms += [Term(n_, "gram", gram(fs[n_]), style_weight * w, "style")
              for n_, w in zip(s_names, ws, strict=True)]
    obj = FeatureLoss(terms, **s.priors())
    if init == "content":
        start = cont.clone()
    elif init == "noise":
        start = s.noise(cont.shape)
    else:
        raise InputError(f"init must be 'content' or 'noise', got {init!r}")
    imgs, hist, final = run(lm, obj, init=start, settings=s, desc="style")
    return SynthesisResult(
        kind="style",
        images=imgs,
        titles=("stylised",),
        references=(("content", cont[0]), ("style", sty[0])),
        history=hist,
        layers=tuple(c_names + [n_ for n_ in s_names if n_ not in c_names]),
        options=dict(content_layers=c_names, style_layers=s_names, style_layer_weights=ws,
                     content_weight=content_weight, style_weight=style_weight, init=init, **s.options()),
        diagnostics={"initial_loss": hist["loss"][0],
                     "initial_content": hist["content"][0], "initial_style": hist["style"][0],
                     **{f"final_{k}": v for k, v in final.items()},
                     "pretrained": lm.card.get("pretrained")},
        model_name=lm.name, model_info=lm.info(),
    )
