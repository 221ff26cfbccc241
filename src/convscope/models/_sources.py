"""Where models come from: bundled weights, torchvision, timm, model cards and weight files, loaded
safely (the loaders behind :func:`convscope.models.load_model`; split from :mod:`.zoo`)."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.core.errors import ModelLoadError, UnsafeLoadError
from convscope.core.seeding import seeded
from convscope.models.card import import_architecture
from convscope.models.forward import find_default_layer
from convscope.models.loaded import LoadedModel, _imagenet_names, _names_note, _num_outputs
from convscope.models.preprocessing import Preprocessing

__all__: list[str] = []


def _bundled_names() -> tuple[str, ...]:
    root = resources.files("convscope.models").joinpath("weights")
    return tuple(sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")))


_BUNDLED = _bundled_names()


# Layers that suit CAM methods, for architectures where a generic search would pick worse.
_DEFAULT_LAYERS = {
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "vgg": "features",
    "alexnet": "features",
    "densenet": "features",
    "mobilenet": "features",
    "efficientnet": "features",
    "convnext": "features",
    "regnet": "trunk_output",
    "squeezenet": "features",
    "shufflenet": "conv5",
    "mnasnet": "layers",
    "googlenet": "inception5b",
    "inception": "Mixed_7c",
    "vit": "encoder.layers.encoder_layer_11.ln_1",
    "swin": "norm",  # last-stage LayerNorm, (B, h, w, C), right before GAP + head (CAM applies)
    "maxvit": "blocks",
}


def _weights_dir() -> Any:
    return resources.files("convscope.models").joinpath("weights")


def model_card(name: str) -> dict[str, Any]:
    """The model card of a bundled model."""
    path = _weights_dir().joinpath(f"{name}.json")
    return json.loads(path.read_text())


def _load_state_dict(path: Path, *, unsafe: bool) -> dict[str, torch.Tensor] | nn.Module:
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar"):
        raise ModelLoadError(
            f"{path} is not a weights file (.safetensors, or a state-dict .pt/.pth/.bin)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{path} is not a valid safetensors file: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if not unsafe:
            raise UnsafeLoadError(
                f"{path} holds pickled Python objects that could run code when loaded; convert it "
                "to safetensors, or pass unsafe=True (--unsafe-load) if you trust its source"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelLoadError(f"cannot read {path}: {exc2}") from exc
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _apply_state(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                 hint: str = "check --arch") -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0] if lines else ""
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise ModelLoadError(
            f"weights in {source} do not fit this architecture ({detail}); {hint}"
        ) from None


def _family_layer(arch: str) -> str | None:
    for prefix, layer in _DEFAULT_LAYERS.items():
        if arch.startswith(prefix):
            return layer
    return None


def _seeded(build: Any, seed: int) -> Any:
    """``build()`` under a private RNG seeded with ``seed``: random init that is the same every call."""
    with seeded(int(seed)):
        return build()


def _is_none(weights: Any) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


def _torchvision(arch: str, weights: Any, unsafe: bool, seed: int = 0) -> LoadedModel:
    import torchvision
    from torchvision import models as tvm

    try:
        builder = tvm.get_model_builder(arch)
    except ValueError:
        import difflib

        names = tvm.list_models(module=tvm)
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"torchvision has no classification model {arch!r}{hint}") from None
    class_names: list[str] | None = None
    pre = Preprocessing()
    used = f"random init (seed {seed})"
    if _is_none(weights):
        model = _seeded(lambda: builder(weights=None), seed)
    elif isinstance(weights, (str, os.PathLike)) and str(weights).lower() not in ("default", "pretrained"):
        model = builder(weights=None)
        used = str(weights)
        state = _load_state_dict(Path(weights), unsafe=unsafe)
        if isinstance(state, nn.Module):
            model = state
        else:
            _apply_state(model, state, str(weights))
    else:
        enum = tvm.get_model_weights(arch).DEFAULT
        try:
            model = builder(weights=enum)
        except Exception as exc:  # offline, no cache
            raise ModelLoadError(
                f"pretrained weights for {arch} are not in the torch hub cache and could not be "
                f"downloaded ({type(exc).__name__}); pass weights=None (--weights none) or a local "
                "weights file"
            ) from None
        class_names = list(enum.meta.get("categories", [])) or None
        used = f"pretrained {enum}"
        crop = enum.transforms().crop_size[0] if hasattr(enum.transforms(), "crop_size") else 224
        resize = enum.transforms().resize_size[0] if hasattr(enum.transforms(), "resize_size") else 256
        pre = Preprocessing(size=(crop, crop), resize=resize)
    del torchvision
    model.eval()
    n_out = _num_outputs(model, pre)
    assumed = []
    if not used.startswith("pretrained"):
        assumed.append("preprocessing: torchvision's ImageNet default for this family ("
                       f"{pre.describe()}); state yours if you trained differently")
    if class_names is None or len(class_names) != n_out:
        class_names = _imagenet_names(n_out)
        assumed.append(_names_note(n_out))
    layer = _family_layer(arch) or find_default_layer(model, pre)
    return LoadedModel(model, pre, class_names, layer, f"torchvision:{arch}", weights=used, assumed=assumed)


def _timm(name: str, weights: Any, unsafe: bool, seed: int = 0) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            "timm is not installed; pip install 'convscope[timm]' to load timm models"
        ) from None
    pretrained = weights not in (None, "none") and str(weights).lower() in ("default", "pretrained")
    try:
        model = _seeded(lambda: timm.create_model(name, pretrained=pretrained), seed)
    except Exception as exc:
        raise ModelLoadError(
            f"timm could not create {name!r} ({type(exc).__name__}: {exc}); pass weights=None or a"
            " local weights file"
        ) from None
    if weights is not None and not pretrained and str(weights).lower() != "none":
        state = _load_state_dict(Path(weights), unsafe=unsafe)
        if isinstance(state, nn.Module):
            model = state
        else:
            _apply_state(model, state, str(weights))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
    pre = Preprocessing(
        size=(int(size[0]), int(size[1])),
        mean=tuple(cfg.get("mean", Preprocessing().mean)),
        std=tuple(cfg.get("std", Preprocessing().std)),
        resize=int(round(size[0] / cfg.get("crop_pct", 0.875))),
    )
    model.eval()
    n_out = _num_outputs(model, pre)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1"):
        layer: str | None = f"blocks.{len(blocks) - 1}.norm1"  # ViT-like: tokens of the last block
    else:
        layer = find_default_layer(model, pre)
    used = ("pretrained" if pretrained else f"random init (seed {seed})" if _is_none(weights)
            else str(weights))
    return LoadedModel(model, pre, _imagenet_names(n_out), layer, f"timm:{name}", weights=used,
                       assumed=[_names_note(n_out)])


def _build(arch: str, kwargs: dict[str, Any], base: Path | None, seed: int, *, trust: bool = False,
           card: Path | None = None) -> nn.Module:
    """Build ``arch`` ("file.py:Class" or "package.module:Class") with ``kwargs``, seeded; ``card``
    (the card naming it) and ``trust`` as :func:`~convscope.models.card.import_architecture`."""
    cls = import_architecture(arch, base, trust=trust, card=card)
    try:
        model = _seeded(lambda: cls(**kwargs), seed)
    except Exception as exc:
        raise ModelLoadError(
            f"building {arch}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check the card's kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{arch} built a {type(model).__name__}, not a torch nn.Module")
    return model
