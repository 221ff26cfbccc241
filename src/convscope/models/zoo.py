"""``load_model(spec)``: bundled models, torchvision, timm and local weight files, loaded safely.

Specs:

* ``"digits-cnn"``, ``"digits-cnn-cue"``: bundled (see their model cards, ``convscope models``).
* ``"torchvision:<arch>"``: a torchvision classification architecture; ``weights="default"``
  (pretrained, from the local torch hub cache or a download), ``weights=None`` (random init) or a
  local weights file.
* ``"timm:<name>"``: a timm model (extra ``timm``), same ``weights`` choices.
* a path to a ``.safetensors`` / ``.pt`` / ``.pth`` file together with ``arch=`` (one of the specs
  above, or ``"digits-cnn"``).

Weights never unpickle arbitrary objects unless ``unsafe=True``: safetensors files are plain
tensors, and ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafeLoadError
from .digits import DigitsCNN
from .preprocessing import Preprocessing

__all__ = ["LoadedModel", "bundled_models", "find_default_layer", "load_model", "model_specs"]

_BUNDLED = ("digits-cnn", "digits-cnn-cue")

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


@dataclass
class LoadedModel:
    """A model together with what is needed to feed and explain it.

    Attributes:
        model: the ``nn.Module`` (in eval mode).
        preprocessing: how images become inputs.
        class_names: one name per output.
        default_layer: a sensible layer for CAM methods, or ``None``.
        name: the spec it was loaded from.
        card: the model card (bundled models), else ``{}``.
        generic: the model came as a plain module: preprocessing is ImageNet's by default and
            class names and default layer are found from the first input it sees.
    """

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    default_layer: str | None
    name: str
    card: dict[str, Any] = field(default_factory=dict)
    generic: bool = False

    def fill_from_input(self, x: torch.Tensor) -> None:
        """For a generic model: derive class names and the default layer from a real input."""
        if not self.generic:
            return
        c = int(x.shape[1])
        pre = Preprocessing(size=(int(x.shape[-2]), int(x.shape[-1])), channels=c,
                            mean=(0.0,) * c, std=(1.0,) * c)
        if not self.class_names:
            self.class_names = _imagenet_names(_num_outputs(self.model, pre))
        if self.default_layer is None:
            self.default_layer = find_default_layer(self.model, pre)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def bundled_models() -> list[str]:
    """Names of the models shipped with convscope."""
    return list(_BUNDLED)


def model_specs() -> list[tuple[str, str]]:
    """(spec, description) pairs for ``convscope models``."""
    out = []
    for name in _BUNDLED:
        card = model_card(name)
        out.append((name, card.get("summary", "")))
    out.append(("torchvision:<arch>", "any torchvision classifier, e.g. torchvision:resnet18"))
    out.append(("timm:<name>", "any timm model (pip install 'convscope[timm]')"))
    out.append(("<file> --arch A", "a local .safetensors/.pt state dict for architecture A"))
    return out


def _weights_dir() -> Any:
    return resources.files("convscope.models").joinpath("weights")


def model_card(name: str) -> dict[str, Any]:
    """The model card of a bundled model."""
    path = _weights_dir().joinpath(f"{name}.json")
    return json.loads(path.read_text())


def _load_state_dict(path: Path, *, unsafe: bool) -> dict[str, torch.Tensor] | nn.Module:
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
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


def _apply_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(
            f"weights in {source} do not fit this architecture ({first}); check --arch"
        ) from None


def _bundled(name: str) -> LoadedModel:
    card = model_card(name)
    model = DigitsCNN(num_classes=len(card["class_names"]))
    from safetensors.torch import load

    data = _weights_dir().joinpath(f"{name}.safetensors").read_bytes()
    _apply_state(model, load(data), name)
    pp = card["preprocessing"]
    pre = Preprocessing(
        size=tuple(pp["size"]),
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
        channels=pp["channels"],
        resize=pp.get("resize"),
    )
    return LoadedModel(model.eval(), pre, list(card["class_names"]), card["default_layer"], name, card)


def _family_layer(arch: str) -> str | None:
    for prefix, layer in _DEFAULT_LAYERS.items():
        if arch.startswith(prefix):
            return layer
    return None


def _torchvision(arch: str, weights: Any, unsafe: bool) -> LoadedModel:
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
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        model = builder(weights=None)
    elif isinstance(weights, (str, os.PathLike)) and str(weights).lower() not in ("default", "pretrained"):
        model = builder(weights=None)
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
        crop = enum.transforms().crop_size[0] if hasattr(enum.transforms(), "crop_size") else 224
        resize = enum.transforms().resize_size[0] if hasattr(enum.transforms(), "resize_size") else 256
        pre = Preprocessing(size=(crop, crop), resize=resize)
    del torchvision
    model.eval()
    n_out = _num_outputs(model, pre)
    if class_names is None or len(class_names) != n_out:
        class_names = _imagenet_names(n_out)
    layer = _family_layer(arch) or find_default_layer(model, pre)
    return LoadedModel(model, pre, class_names, layer, f"torchvision:{arch}")


def _imagenet_names(n: int) -> list[str]:
    if n == 1000:
        try:
            from torchvision.models import ResNet18_Weights

            return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # pragma: no cover - torchvision always ships the names
            pass
    return [f"class {i}" for i in range(n)]


def _timm(name: str, weights: Any, unsafe: bool) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(
            "timm is not installed; pip install 'convscope[timm]' to load timm models"
        ) from None
    pretrained = weights not in (None, "none") and str(weights).lower() in ("default", "pretrained")
    try:
        model = timm.create_model(name, pretrained=pretrained)
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
    return LoadedModel(model, pre, _imagenet_names(n_out), layer, f"timm:{name}")


def _num_outputs(model: nn.Module, pre: Preprocessing) -> int:
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, pre.channels, *pre.size))
    except Exception as exc:
        raise ModelLoadError(
            f"the model fails on a 1x{pre.channels}x{pre.size[0]}x{pre.size[1]} input "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass "
            "preprocessing= with the input size and channels it expects"
        ) from None
    return int(out.shape[-1])


def find_default_layer(model: nn.Module, pre: Preprocessing) -> str | None:
    """The last module, in execution order, whose output is a spatial (B, C, H, W) map.

    Outer modules finish after their children, so a block (``layer4``) wins over its last
    convolution. Returns ``None`` for models with no spatial map (e.g. a ViT).
    """
    order: list[str] = []
    handles = []

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) > 1:
                order.append(name)

        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make(name)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, pre.channels, *pre.size))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return order[-1] if order else None


def load_model(
    spec: str | os.PathLike | nn.Module | LoadedModel,
    *,
    weights: Any = "default",
    arch: str | None = None,
    unsafe: bool = False,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    default_layer: str | None = None,
) -> LoadedModel:
    """Load a model by spec; see the module docstring for the specs.

    Args:
        spec: a bundled name, ``"torchvision:<arch>"``, ``"timm:<name>"``, a weights file (with
            ``arch=``), an ``nn.Module`` or a :class:`LoadedModel` (returned as is).
        weights: ``"default"`` (pretrained where available), ``None`` or a weights file.
        arch: the architecture spec a weights file belongs to.
        unsafe: allow unpickling arbitrary objects from ``.pt`` files. Only for trusted files.
        class_names, preprocessing, default_layer: override what the loader found.

    Raises:
        ModelLoadError: unknown spec, missing or unfit weights, missing optional dependency.
        UnsafeLoadError: the file needs unpickling and ``unsafe`` is false.
    """
    if isinstance(spec, LoadedModel):
        lm = spec
    elif isinstance(spec, nn.Module):
        pre = preprocessing or Preprocessing()
        lm = LoadedModel(spec, pre, list(class_names or []), default_layer, type(spec).__name__,
                         generic=True)
    else:
        s = str(spec)
        path = Path(s)
        if s in _BUNDLED:
            if weights not in ("default", None) and str(weights).lower() not in ("default", "none"):
                lm = _bundled(s)
                state = _load_state_dict(Path(weights), unsafe=unsafe)
                if isinstance(state, nn.Module):
                    lm.model = state.eval()
                else:
                    _apply_state(lm.model, state, str(weights))
            else:
                lm = _bundled(s)
                if weights is None:
                    lm.model = DigitsCNN(num_classes=len(lm.class_names)).eval()
        elif s.startswith("torchvision:"):
            lm = _torchvision(s.split(":", 1)[1], weights, unsafe)
        elif s.startswith("timm:"):
            lm = _timm(s.split(":", 1)[1], weights, unsafe)
        elif path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
            if arch is None:
                state = _load_state_dict(path, unsafe=unsafe)
                if isinstance(state, nn.Module):
                    return load_model(state, class_names=class_names, preprocessing=preprocessing,
                                      default_layer=default_layer)
                raise ModelLoadError(
                    f"{path} holds weights only; name the architecture with arch= (--arch), e.g. "
                    "torchvision:resnet18 or digits-cnn"
                )
            return load_model(arch, weights=path, unsafe=unsafe, class_names=class_names,
                              preprocessing=preprocessing, default_layer=default_layer)
        else:
            import difflib

            close = difflib.get_close_matches(s, list(_BUNDLED), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelLoadError(
                f"unknown model {s!r}{hint} (use a bundled name, torchvision:<arch>, timm:<name> "
                "or a weights file; run `convscope models`)"
            )
    if class_names is not None:
        lm.class_names = list(class_names)
    if preprocessing is not None:
        lm.preprocessing = preprocessing
    if default_layer is not None:
        lm.default_layer = default_layer
    return lm
