"""``load_model(spec)``: bundled models, torchvision, timm and local weight files, loaded safely.

Specs:

* ``"digits-cnn"``, ``"digits-cnn-cue"``: bundled (see their model cards, ``convscope models``).
* ``"torchvision:<arch>"``: a torchvision classification architecture; ``weights="default"``
  (pretrained, from the local torch hub cache or a download), ``weights=None`` (random init) or a
  local weights file.
* ``"timm:<name>"``: a timm model (extra ``timm``), same ``weights`` choices.
* a path to a ``.safetensors`` / ``.pt`` / ``.pth`` file together with ``arch=`` (one of the specs
  above, a bundled name, or your own class as ``"file.py:ClassName"`` / ``"package.module:Class"``).
* a model card ``.json`` / ``.yaml`` (:mod:`convscope.models.card`): your architecture, weights,
  preprocessing, class names and default layer in one file.
* ``"hf:<folder or hub name>"``: a Hugging Face ``transformers`` image classifier (extra ``hf``):
  a ``save_pretrained`` folder, its preprocessing from the image processor config, its class names
  from ``id2label`` (:mod:`convscope.models.hf`).
* an ``nn.Module``: state ``preprocessing=`` (a preset name such as ``"imagenet"`` or ``"none"``,
  a dict, or a :class:`Preprocessing`); without it convscope assumes ImageNet's and warns
  (:class:`~convscope.errors.AssumptionWarning`), naming what it assumed.

A model whose forward returns a dict, a tuple or an object with ``.logits`` rather than a tensor
is read by one rule (:mod:`convscope.models.outputs`); ``output=`` names the output when the rule
cannot tell.

What was stated and what was assumed is kept in :attr:`LoadedModel.assumed` and recorded by every
result (``LoadedModel.info()``). Random initialisation (``weights=None``) is seeded (``seed=``,
default 0), so two loads give the same network.

Weights never unpickle arbitrary objects unless ``unsafe=True``: safetensors files are plain
tensors, and ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AssumptionWarning, InputError, ModelLoadError, UnsafeLoadError
from .card import card_path, import_architecture, is_card_path, read_card, read_labels
from .forward import find_default_layer, probe
from .outputs import ScoresModel, class_scores, scores_model
from .preprocessing import Preprocessing, preprocessing_from

__all__ = ["LoadedModel", "bundled_models", "find_default_layer", "load_model", "model_specs"]

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


@dataclass
class LoadedModel:
    """A model together with what is needed to feed and explain it.

    Attributes:
        model: the ``nn.Module`` (in eval mode) whose forward returns the class scores: the user's
            model, or a :class:`~convscope.models.outputs.ScoresModel` around it when its output
            is not a tensor (the layer names stay the user's model's).
        preprocessing: how images become inputs.
        class_names: one name per output.
        default_layer: a sensible layer for CAM methods, or ``None``.
        name: the spec it was loaded from.
        card: the model card (bundled models), else ``{}``.
        generic: the model came as a plain module: class names and default layer are found
            from the first input it sees.
        weights: what weights the network holds (a file, pretrained, "random init (seed 0)").
        assumed: what convscope assumed rather than was told (empty when everything was stated).
    """

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    default_layer: str | None
    name: str
    card: dict[str, Any] = field(default_factory=dict)
    generic: bool = False
    weights: str = ""
    assumed: list[str] = field(default_factory=list)

    @property
    def any_channels(self) -> bool:
        """A plain module whose preprocessing was assumed: a tensor of any channel count is taken."""
        return self.generic and any(a.startswith("preprocessing") for a in self.assumed)

    def fill_from_input(self, x: torch.Tensor) -> None:
        """For a generic model: derive class names and the default layer from a real input."""
        if not self.generic:
            return
        c = int(x.shape[1])
        pre = Preprocessing(size=(int(x.shape[-2]), int(x.shape[-1])), channels=c,
                            mean=(0.0,) * c, std=(1.0,) * c, resize=None)  # the tensor as it is
        if self.any_channels and c != self.preprocessing.channels:
            # the assumed RGB preprocessing cannot be what this tensor went through: say what is used
            self.preprocessing = pre
            self.assumed = [a for a in self.assumed if not a.startswith("preprocessing")]
            self.assumed.insert(0, f"preprocessing: none known; the {c}-channel tensor is used as given "
                                "(baselines and display read it as pixels); pass preprocessing= to state it")
        first = not self.class_names or self.default_layer is None  # the first input: probe it once
        out = None
        if first and not isinstance(self.model, ScoresModel):
            out = _probe(self.model, pre)
            if not isinstance(out, torch.Tensor):  # load could not probe: the assumed input did not fit
                raise ModelLoadError(
                    f"{self.name} returns a {type(out).__name__}, not a tensor, and its input was not known "
                    "when it was loaded; pass preprocessing= (CLI --input-size, --input-channels) so "
                    "convscope reads its class scores by the output rule at load"
                )
        if not self.class_names:  # the probe's output, when there was one, gives the count
            n = int(out.shape[-1]) if out is not None else _num_outputs(self.model, pre)
            self.class_names = _imagenet_names(n)
            self.assumed.append(_names_note(n))
        if self.default_layer is None:
            self.default_layer = find_default_layer(self.model, pre)
            if self.default_layer is not None:
                self.assumed.append(f"layer: {self.default_layer} (the last layer with a spatial map; "
                                    "pass layer= to explain() or default_layer= to load_model())")

    def info(self) -> dict[str, Any]:
        """What results and reports record about the model: plain data."""
        out = {} if not isinstance(self.model, ScoresModel) else {
            "output": self.model.output or "by convscope's rule (a tensor, .logits, dict key 'logits', ...)"}
        return out | {
            "model": self.name,
            "weights": self.weights,
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_text": self.preprocessing.describe(),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names[:20]) + (["..."] if len(self.class_names) > 20 else []),
            "default_layer": self.default_layer,
            "assumed": list(self.assumed),
        }

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
    out.append(("hf:<folder or name>", "a Hugging Face transformers image classifier saved with "
                "save_pretrained (pip install 'convscope[hf]')"))
    out.append(("<file> --arch A", "a local .safetensors/.pt state dict for architecture A "
                "(a spec or your own file.py:ClassName)"))
    out.append(("card.json / card.yaml", "a model card: your architecture, weights, preprocessing, "
                "class names, layer (docs/your-model.md)"))
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


def _bundled(name: str, weights: Any = "default", seed: int = 0) -> LoadedModel:
    """A bundled model: its card in the user card format, next to its weights (``weights=None``:
    the card's architecture, seeded random init, no weights read)."""
    lm = _from_card(Path(str(_weights_dir().joinpath(f"{name}.json"))), model_card(name),
                    weights=weights, seed=seed if _is_none(weights) else None)
    lm.name = name
    if not _is_none(weights):
        lm.weights = f"bundled {name}.safetensors"
    return lm


def _family_layer(arch: str) -> str | None:
    for prefix, layer in _DEFAULT_LAYERS.items():
        if arch.startswith(prefix):
            return layer
    return None


def _seeded(build: Any, seed: int) -> Any:
    """``build()`` under a private RNG seeded with ``seed``: random init that is the same every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
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


def _names_note(n: int) -> str:
    if n == 1000:
        return "class names: ImageNet's 1000 categories (the model has 1000 outputs); pass class_names="
    return f"class names: 'class 0' .. 'class {n - 1}' (none given); pass class_names= or a labels file"


def _imagenet_names(n: int) -> list[str]:
    if n == 1000:
        try:
            from torchvision.models import ResNet18_Weights

            return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # pragma: no cover - torchvision always ships the names
            pass
    return [f"class {i}" for i in range(n)]


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


def _num_outputs(model: nn.Module, pre: Preprocessing) -> int:
    """The number of class scores ``model`` gives (read by the output rule) for a zero input."""
    return int(class_scores(_probe(model, pre)).shape[-1])


def _probe(model: nn.Module, pre: Preprocessing) -> Any:
    """What ``model`` returns for one zero input of the preprocessing's shape (eval mode, no grad)."""
    return probe(model, pre)[0]


def _read_scores(lm: LoadedModel, output: str | None, *, copy: bool, probed: Any = None) -> LoadedModel:
    """``lm`` with a model whose forward returns the class scores: wrapped by the output rule when
    ``output`` is named or the model's output is not a tensor (probed once: ``probed`` is what
    the loader's own probe returned, if it made one); a copy if ``copy``."""
    if output is None:
        from ..perturb import BlackBoxModel

        if isinstance(lm.model, (ScoresModel, BlackBoxModel)):  # a black box's scores are a tensor
            return lm
        try:
            out = _probe(lm.model, lm.preprocessing) if probed is None else probed
        except ModelLoadError:
            if lm.any_channels:  # the assumed input does not fit: fill_from_input probes the first one
                return lm
            raise
        if isinstance(out, torch.Tensor):
            return lm
    model = scores_model(lm.model, output)
    _num_outputs(model, lm.preprocessing)  # an output named wrongly: one line now
    if copy:
        return replace(lm, model=model, class_names=list(lm.class_names), assumed=list(lm.assumed))
    lm.model = model
    return lm


def _build(arch: str, kwargs: dict[str, Any], base: Path | None, seed: int) -> nn.Module:
    """Build ``arch`` ("file.py:Class" or "package.module:Class") with ``kwargs``, seeded."""
    cls = import_architecture(arch, base)
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


def _from_card(path: Path, card: dict[str, Any] | None = None, *, unsafe: bool = False,
               weights: Any = "default", seed: int | None = None, output: str | None = None) -> LoadedModel:
    """Load a model card (see :mod:`convscope.models.card`)."""
    card = read_card(path) if card is None else card
    output = output if output is not None else card.get("output")
    arch = str(card["architecture"])
    raw_seed = card.get("seed", 0) if seed is None else seed
    if isinstance(raw_seed, bool) or not isinstance(raw_seed, int) or raw_seed < 0:
        raise ModelLoadError(f"model card {path}: key 'seed' must be a whole number >= 0, got {raw_seed!r}")
    seed = raw_seed
    if _is_none(weights):
        wfile = None
    elif str(weights).lower() == "default":
        wfile = card.get("weights")
    else:
        wfile = weights
    base = path.parent
    where = f"model card {path}"
    if arch.startswith("hf:"):
        return _hf_card(path, card, weights=weights, seed=seed, output=output)
    try:
        pre = _card_preprocessing(card)
    except InputError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    if arch.startswith(("torchvision:", "timm:")) or arch in _BUNDLED:
        w = wfile
        if isinstance(wfile, str):
            w = card_path(path, wfile, "weights")
        lm = load_model(arch, weights=w, unsafe=unsafe, seed=seed)
        model = lm.model
        used = lm.weights
    else:
        model = _build(arch, dict(card.get("kwargs") or {}), base, seed)
        used = f"random init (seed {seed})"
        if wfile is not None:
            wpath = card_path(path, str(wfile), "weights") if isinstance(wfile, str) else Path(wfile)
            state = _load_state_dict(wpath, unsafe=unsafe)
            if isinstance(state, nn.Module):
                raise ModelLoadError(f"{where}: weights {wpath} hold a whole pickled model; save its "
                                     "state_dict() (safetensors or .pt) instead")
            _apply_state(model, state, str(wpath), hint="check the card's architecture and kwargs")
            used = str(wpath)
        model.eval()
    if output is not None:
        model = scores_model(model, output)
    n_out = _num_outputs(model, pre)
    assumed: list[str] = []
    if card.get("preprocessing") is None and "mean" not in card and "std" not in card:
        assumed.append("preprocessing: pixels in [0, 1] as they are (the card gives input_size but no "
                       "preprocessing, mean or std)")
    if "class_names" in card:
        names = [str(c) for c in card["class_names"]]
    elif "labels" in card:
        names = read_labels(card_path(path, str(card["labels"]), "labels"))
    else:
        names = _imagenet_names(n_out)
        assumed.append(_names_note(n_out))
    if len(names) != n_out:
        raise ModelLoadError(
            f"{where}: {len(names)} class names for a model with {n_out} outputs; give one name per output"
        )
    layer = card.get("layer") or card.get("default_layer")
    if layer is not None:
        from ..hooks import resolve_layers

        try:
            resolve_layers(model, str(layer))
        except InputError as exc:
            raise ModelLoadError(f"{where}: layer: {exc}") from None
    else:
        layer = find_default_layer(model, pre)
        if layer is not None:
            assumed.append(f"layer: {layer} (the last layer with a spatial map; the card gives none)")
    name = str(card.get("name") or path.stem)
    return LoadedModel(model, pre, names, layer, name, dict(card), weights=used, assumed=assumed)


_CARD_PRE_KEYS = ("input_size", "size", "mean", "std", "resize", "channels", "resample")


def _hf_card(path: Path, card: dict[str, Any], *, weights: Any, seed: int,
             output: str | None) -> LoadedModel:
    """A card whose architecture is ``hf:<folder or name>`` (a folder relative to the card's): the
    Hugging Face model with its own preprocessing, class names and layer unless the card states them."""
    where = f"model card {path}"
    if card.get("weights") is not None:
        raise ModelLoadError(f"{where}: a Hugging Face model's weights are in its folder; drop 'weights'")
    ref = str(card["architecture"])[3:]
    local = path.parent / Path(ref).expanduser()
    lm = load_model("hf:" + (str(local) if local.exists() else ref), weights=weights, seed=seed,
                    output=output)
    pre = None
    if card.get("preprocessing") is not None or any(k in card for k in _CARD_PRE_KEYS):
        try:
            pre = preprocessing_from(card.get("preprocessing") or lm.preprocessing,
                                     **{("size" if k == "input_size" else k): card[k]
                                        for k in _CARD_PRE_KEYS if k in card})
        except InputError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
    names = None
    if "class_names" in card:
        names = [str(c) for c in card["class_names"]]
    elif "labels" in card:
        names = read_labels(card_path(path, str(card["labels"]), "labels"))
    layer = card.get("layer") or card.get("default_layer")
    out = load_model(lm, preprocessing=pre, class_names=names, default_layer=layer)
    n_out = _num_outputs(out.model, out.preprocessing)
    if len(out.class_names) != n_out:
        raise ModelLoadError(
            f"{where}: {len(out.class_names)} class names for a model with {n_out} outputs; give one "
            "name per output"
        )
    if layer is not None:
        from ..hooks import resolve_layers

        try:
            resolve_layers(out.model, str(layer))
        except InputError as exc:
            raise ModelLoadError(f"{where}: layer: {exc}") from None
    out.name = str(card.get("name") or path.stem)
    out.card = dict(card)
    return out


def _card_preprocessing(card: dict[str, Any]) -> Preprocessing:
    flat = {k: card[k] for k in _CARD_PRE_KEYS if k in card}
    spec = card.get("preprocessing")
    if spec is None and not flat.get("input_size", flat.get("size")):
        raise InputError(
            "missing key 'preprocessing' (a preset such as \"imagenet\" or \"none\", or "
            "{size, mean, std, resize}) or at least 'input_size': a card states what its model expects"
        )
    if "input_size" in flat:
        flat["size"] = flat.pop("input_size")
    if spec is None:
        spec = "none"
    return preprocessing_from(spec, **flat)


def load_model(
    spec: str | os.PathLike | nn.Module | LoadedModel,
    *,
    weights: Any = "default",
    arch: str | None = None,
    unsafe: bool = False,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | str | dict[str, Any] | None = None,
    default_layer: str | None = None,
    seed: int = 0,
    output: str | None = None,
) -> LoadedModel:
    """Load a model by spec; see the module docstring for the specs.

    Args:
        spec: a bundled name, ``"torchvision:<arch>"``, ``"timm:<name>"``, a model card, a
            weights file (with ``arch=``), an ``nn.Module`` or a :class:`LoadedModel`.
        weights: ``"default"`` (pretrained where available, the card's file for a card), ``None``
            (random init, seeded by ``seed``) or a weights file.
        arch: the architecture a weights file belongs to: a spec, or ``"file.py:ClassName"`` /
            ``"package.module:ClassName"`` for your own class (built with no arguments).
        unsafe: allow unpickling arbitrary objects from ``.pt`` files. Only for trusted files.
        class_names, default_layer: override what the loader found.
        preprocessing: a preset name (``"imagenet"``, ``"none"``, ...), a dict, or a
            :class:`Preprocessing` (see :func:`~convscope.models.preprocessing.preprocessing_from`).
            For an ``nn.Module`` without it, ImageNet's is assumed with an
            :class:`~convscope.errors.AssumptionWarning`.
        seed: seed of the random initialisation when ``weights`` is ``None``.
        output: which output of the model holds the class scores (a dict key, an attribute or a
            tuple index), for a model whose output the rule of :mod:`convscope.models.outputs`
            cannot read; ``None`` applies the rule.

    Raises:
        ModelLoadError: unknown spec, missing or unfit weights, bad card, missing optional dependency.
        UnsafeLoadError: the file needs unpickling and ``unsafe`` is false.
    """
    pre_given = None
    if preprocessing is not None:
        pre_given = (preprocessing if isinstance(preprocessing, Preprocessing)
                     else preprocessing_from(preprocessing))
    if isinstance(spec, LoadedModel):
        overridden = class_names is not None or pre_given is not None or default_layer is not None
        # overrides go on a copy: the caller's loaded model is never changed
        lm = spec
        if overridden:
            lm = replace(spec, class_names=list(spec.class_names), assumed=list(spec.assumed))
    elif isinstance(spec, nn.Module):
        probed = None
        if pre_given is None:
            pre = Preprocessing()
            note = (f"preprocessing: ImageNet's ({pre.describe()}), as none was stated; pass "
                    "preprocessing='none' for a model on [0, 1] pixels, or size/mean/std "
                    "(CLI: --preprocessing, --input-size, --mean, --std)")
            warnings.warn(f"convscope assumed for {type(spec).__name__}: {note}", AssumptionWarning,
                          stacklevel=3)
            assumed = [note]
        else:
            pre, assumed = pre_given, []
            # a stated preprocessing the model cannot take, or an output named wrongly: one line now
            probed = _probe(spec if output is None else scores_model(spec, output), pre)
            class_scores(probed)
        lm = LoadedModel(spec, pre, list(class_names or []), default_layer, type(spec).__name__,
                         generic=True, weights="as given (an nn.Module)", assumed=assumed)
    else:
        s = str(spec)
        path = Path(s)
        if s in _BUNDLED:
            lm = _bundled(s, None if _is_none(weights) else "default", seed)
            if not _is_none(weights) and str(weights).lower() != "default":
                state = _load_state_dict(Path(weights), unsafe=unsafe)
                if isinstance(state, nn.Module):
                    lm.model = state.eval()
                else:
                    _apply_state(lm.model, state, str(weights))
                lm.weights = str(weights)
        elif s.startswith("torchvision:"):
            lm = _torchvision(s.split(":", 1)[1], weights, unsafe, seed)
        elif s.startswith("timm:"):
            lm = _timm(s.split(":", 1)[1], weights, unsafe, seed)
        elif s.startswith("hf:"):
            from .hf import load_hf

            lm = load_hf(s[3:], weights=weights, seed=seed, output=output)
        elif is_card_path(s):
            lm = _from_card(path, unsafe=unsafe, weights=weights, seed=seed if _is_none(weights) else None,
                            output=output)
        elif path.is_dir():
            hf = " or hf:<folder> for a Hugging Face model" if (path / "config.json").is_file() else ""
            raise ModelLoadError(
                f"{path} is a folder; pass a model card (.json/.yaml), a weights file with --arch, "
                f"a bundled name, torchvision:<arch> or timm:<name>{hf} (see `convscope models`)"
            )
        elif path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
            if _is_none(weights):
                raise ModelLoadError(
                    f"--weights none asks for random weights but --model names the weights file {path}; "
                    "give the architecture as --model (or a card) for a random init"
                )
            if arch is not None and arch.endswith(".py"):
                raise ModelLoadError(f"--arch {arch!r} names a file; add the class: {arch}:ClassName")
            if arch is None:
                state = _load_state_dict(path, unsafe=unsafe)
                if isinstance(state, nn.Module):
                    return load_model(state, class_names=class_names, preprocessing=preprocessing,
                                      default_layer=default_layer, output=output)
                raise ModelLoadError(
                    f"{path} holds weights only; name the architecture with arch= (--arch), e.g. "
                    "torchvision:resnet18, digits-cnn or your own net.py:ClassName, or write a model card"
                )
            if ":" in arch and not arch.startswith(("torchvision:", "timm:")):
                model = _build(arch, {}, None, seed)
                state = _load_state_dict(path, unsafe=unsafe)
                if isinstance(state, nn.Module):
                    model = state
                else:
                    _apply_state(model, state, str(path), hint="check --arch")
                lm = load_model(model.eval(), class_names=class_names,
                                preprocessing=pre_given, default_layer=default_layer, output=output)
                lm.name, lm.weights = f"{arch} ({path.name})", str(path)
                return lm
            return load_model(arch, weights=path, unsafe=unsafe, class_names=class_names,
                              preprocessing=preprocessing, default_layer=default_layer, seed=seed,
                              output=output)
        else:
            import difflib

            close = difflib.get_close_matches(s, list(_BUNDLED), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelLoadError(
                f"unknown model {s!r}{hint} (use a bundled name, torchvision:<arch>, timm:<name>, "
                "hf:<folder>, a model card .json/.yaml or a weights file; run `convscope models`)"
            )
    if not isinstance(spec, LoadedModel) or output is not None:
        lm = _read_scores(lm, output, copy=isinstance(spec, LoadedModel) and lm is spec,
                          probed=probed if isinstance(spec, nn.Module) and output is None else None)
    if pre_given is not None and not isinstance(spec, nn.Module):
        lm.preprocessing = pre_given
        lm.assumed = [a for a in lm.assumed if not a.startswith("preprocessing")]
    if class_names is not None:
        names = [str(c) for c in class_names]
        if not isinstance(spec, LoadedModel) and (not lm.generic or pre_given is not None):
            n_out = _num_outputs(lm.model, lm.preprocessing)
            if len(names) != n_out:
                raise ModelLoadError(
                    f"{len(names)} class names for a model with {n_out} outputs; give one name per output"
                )
        lm.class_names = names
        lm.assumed = [a for a in lm.assumed if not a.startswith("class names")]
    if default_layer is not None:
        lm.default_layer = default_layer
        lm.assumed = [a for a in lm.assumed if not a.startswith("layer")]
    return lm
