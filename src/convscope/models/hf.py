"""``load_model("hf:<folder or hub name>")``: Hugging Face ``transformers`` image classifiers.

A folder written by ``save_pretrained`` (or a hub name, through the same
``AutoModelForImageClassification.from_pretrained`` call; it needs the network or the hub cache)
becomes a :class:`~convscope.models.LoadedModel`:

* the model, its ``ImageClassifierOutput`` read by the output rule
  (:mod:`convscope.models.outputs`: ``.logits``), layer names as ``transformers`` gives them;
* the preprocessing from the image processor config (``preprocessor_config.json``): ``size``
  (``height``/``width``: resized straight to it; ``shortest_edge``: the shorter side, then the
  centre crop ``crop_size``; ConvNeXt's ``crop_pct``), ``resample``, ``image_mean``/``image_std``.
  What a :class:`~convscope.models.preprocessing.Preprocessing` cannot express is said in
  ``assumed``. convscope resizes with PIL, as the processors' PIL backend (``backend="pil"``) does;
  the torchvision backend resizes tensors and differs by rounding;
* the class names from ``config.id2label``;
* the default CAM layer: for a transformer, the first norm of the last block whose norm gives
  tokens (``vit.layers.11.layernorm_before``; reshaped to a grid as torchvision's ViT and Swin are,
  by :mod:`convscope.models.tokens`), else the last layer with a spatial map (a convolutional
  model's last stage, ``resnet.encoder.stages.3``).

``weights=None`` builds the architecture from its ``config.json`` with seeded random weights.

A folder (or hub model) that ships its own Python code (``auto_map`` in its config) is refused
unless ``trust_remote_code=True`` (CLI ``--trust-remote-code``): convscope always passes
``trust_remote_code`` to ``transformers`` explicitly, so ``transformers`` never asks on the
terminal ("Do you wish to run the custom code?").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.core.errors import MethodError, ModelLoadError
from convscope.models.outputs import scores_model
from convscope.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = ["hf_default_layer", "load_hf", "preprocessing_from_processor"]

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, dict):
        if v.get("height") and v.get("width"):
            return int(v["height"]), int(v["width"])
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    return None


def _three(v: Any, default: tuple[float, ...]) -> tuple[float, ...]:
    if v is None:
        return default
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    return tuple(float(a) for a in v)


def preprocessing_from_processor(proc: Any, channels: int = 3,
                                 image_size: Any = None) -> tuple[Preprocessing, list[str]]:
    """A :class:`Preprocessing` from a ``transformers`` image processor, and what could not be
    represented (one line each, for ``assumed``).

    Args:
        proc: an image processor (``AutoImageProcessor.from_pretrained(...)``) or its ``to_dict()``.
        channels: the model's input channels (``config.num_channels``).
        image_size: the model config's ``image_size``, used when the processor does not resize.
    """
    d = dict(proc if isinstance(proc, dict) else proc.to_dict())
    kind = str(d.get("image_processor_type") or type(proc).__name__)
    notes: list[str] = []
    resample = _RESAMPLE.get(int(d.get("resample", 2) if d.get("resample") is not None else 2), "bilinear")
    size = d.get("size")
    crop = _pair(d.get("crop_size")) if d.get("do_center_crop") else None
    resize: int | None
    if not d.get("do_resize", True):
        hw = crop or _pair(image_size) or (224, 224)
        resize = None
        notes.append(f"preprocessing: {kind} does not resize (do_resize false); convscope resizes to "
                     f"{hw[0]}x{hw[1]}, the model's input size")
    elif _pair(size) is not None:
        hw = _pair(size)  # type: ignore[assignment]
        resize = None
        if crop is not None and crop != hw:
            notes.append(f"preprocessing: {kind} resizes to {hw[0]}x{hw[1]} then centre-crops "
                         f"{crop[0]}x{crop[1]}; convscope resizes straight to {crop[0]}x{crop[1]}")
            hw = crop
    elif isinstance(size, dict) and size.get("shortest_edge"):
        s = int(size["shortest_edge"])
        pct = d.get("crop_pct")
        if size.get("longest_edge"):
            notes.append(f"preprocessing: {kind} caps the longer side at {size['longest_edge']} and keeps "
                         f"the aspect ratio; convscope centre-crops {s}x{s}")
        if pct is not None and kind.startswith("ConvNext"):
            hw = (s, s)
            resize = int(s / float(pct)) if s < 384 else None
        else:
            if pct is not None:
                notes.append(f"preprocessing: {kind}'s crop_pct {pct} is not read (ConvNeXt's rule is "
                             "known); state the preprocessing if it matters")
            resize = s
            hw = crop or (s, s)
            if crop is None:
                notes.append(f"preprocessing: {kind} keeps the aspect ratio without a crop; convscope "
                             f"centre-crops {s}x{s}")
            elif s < min(crop):
                notes.append(f"preprocessing: {kind} crops {crop[0]}x{crop[1]} from a shorter side of "
                             f"{s} (padding); convscope resizes the shorter side to {min(crop)}")
                resize = min(crop)
    else:
        hw = _pair(image_size) or (224, 224)
        resize = None
        notes.append(f"preprocessing: {kind}'s size {size!r} is not understood; convscope resizes to "
                     f"{hw[0]}x{hw[1]}")
    rescale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
    if abs(rescale * 255 - 1) > 1e-6:
        notes.append(f"preprocessing: {kind} scales pixels by {rescale:g}, not 1/255; convscope feeds "
                     "pixels in [0, 1]")
    if d.get("do_normalize", True):
        mean = _three(d.get("image_mean"), IMAGENET_MEAN)
        std = _three(d.get("image_std"), IMAGENET_STD)
    else:
        mean, std = (0.0,) * 3, (1.0,) * 3
    if channels != 3:
        mean, std = mean[:1] * channels, std[:1] * channels
    pre = Preprocessing(size=hw, mean=mean, std=std, channels=channels, resize=resize, resample=resample)
    return pre, notes


def hf_default_layer(model: nn.Module, pre: Preprocessing) -> tuple[str | None, str | None]:
    """The CAM layer for a ``transformers`` model: the first norm of the last numbered block whose
    norms give tokens that read as a grid (a transformer), else the last layer with a spatial map
    (:func:`~convscope.models.zoo.find_default_layer`: a convolutional model's last stage).

    Returns:
        (layer, note): ``note`` says what was assumed when the blocks give tokens that do not read
        as a grid (e.g. DeiT's class and distillation tokens), else ``None``.
    """
    from convscope.models.forward import last_spatial, probe
    from convscope.models.tokens import grid_layout

    norms = {name for name, mod in model.named_modules()
             if name and "norm" in type(mod).__name__.lower()
             and name.rpartition(".")[0].rpartition(".")[2].isdigit()}
    _, calls = probe(model, pre, "*")  # one pass: the block norms' tokens and the spatial maps
    seen = [(name, tuple(out.shape)) for name, out in calls
            if name in norms and isinstance(out, torch.Tensor)]
    tokens, unread = [], []
    for name, shape in seen:
        if len(shape) != 3:
            continue
        try:
            grid_layout(shape, pre.size)
        except MethodError:
            unread.append((name, shape))
            continue
        tokens.append(name)
    if tokens:
        block = tokens[-1].rpartition(".")[0]
        return next(n for n in tokens if n.rpartition(".")[0] == block), None
    layer = last_spatial(calls)
    if not unread:
        return layer, None
    name, shape = unread[-1]
    return layer, (f"layer: {layer} (the last spatial map: the blocks' tokens, e.g. {name} {shape}, do not "
                   "read as a grid); pass layer= (--layer) for another")


@contextmanager
def _no_progress_bars(transformers: Any) -> Iterator[None]:
    """transformers' "Loading weights" bars off while convscope loads (restored after)."""
    logging = transformers.utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _remote_code_refused(ref: str) -> ModelLoadError:
    return ModelLoadError(
        f"hf:{ref} ships its own Python code (auto_map in its config), which would run on loading; "
        "pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust its source"
    )


def _ships_code(folder: Path) -> bool:
    """Whether a ``save_pretrained`` folder's configs name custom code (``auto_map``)."""
    import json

    for name in ("config.json", "preprocessor_config.json"):
        try:
            d = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("auto_map"):
            return True
    return False


def load_hf(ref: str, *, weights: Any = "default", seed: int = 0, output: str | None = None,
            trust_remote_code: bool = False) -> Any:
    """Load ``hf:<ref>``; see the module docstring.

    Args:
        trust_remote_code: let the folder's (or hub model's) own Python code run; passed to every
            ``transformers`` call explicitly, so nothing is ever asked on the terminal.

    Raises:
        ModelLoadError: ``transformers`` missing, a folder without a model, a hub name that cannot
            be fetched, weights named as a file, custom code without ``trust_remote_code``; one
            line each.
    """
    from convscope.models._sources import _is_none, _seeded
    from convscope.models.loaded import LoadedModel, _num_outputs

    try:
        import transformers
    except ImportError:
        raise ModelLoadError("hf: models need transformers: pip install 'convscope[hf]'") from None
    ref = ref.strip()
    if not ref:
        raise ModelLoadError("hf: needs a folder written by save_pretrained or a hub name, e.g. hf:./my-vit")
    local = Path(ref).expanduser()
    where = str(local) if local.exists() else ref
    if not local.exists() and (ref.startswith((".", "/", "~", "\\")) or ref.count("/") > 1 or ":" in ref):
        raise ModelLoadError(f"hf:{ref}: folder not found; give a folder written by save_pretrained")
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(f"hf:{ref}: no config.json in {local}; give a folder written by save_pretrained")
    random = _is_none(weights)
    if not random and str(weights).lower() not in ("default", "pretrained"):
        raise ModelLoadError(f"hf:{ref}: the weights are in the model's folder; drop --weights (or use "
                             "--weights none for a random init)")
    trust = bool(trust_remote_code)
    if local.exists() and not trust and _ships_code(local):  # refused before transformers reads it
        raise _remote_code_refused(ref)
    auto = transformers.AutoModelForImageClassification
    try:
        with _no_progress_bars(transformers):
            if random:
                config = transformers.AutoConfig.from_pretrained(where, trust_remote_code=trust)
                model = _seeded(lambda: auto.from_config(config, trust_remote_code=trust), seed)
            else:
                model = auto.from_pretrained(where, trust_remote_code=trust)
    except Exception as exc:
        if not trust and "trust_remote_code" in str(exc):
            raise _remote_code_refused(ref) from None
        hub = "" if local.exists() else " (a hub name needs the network or the Hugging Face cache)"
        raise ModelLoadError(f"cannot load the Hugging Face image classifier {ref!r}{hub}: "
                             f"{_first_line(exc)}") from None
    model.eval()
    config = model.config
    assumed: list[str] = []
    channels = int(getattr(config, "num_channels", 3) or 3)
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(where, trust_remote_code=trust)
    except Exception as exc:
        size = _pair(getattr(config, "image_size", None)) or (224, 224)
        pre = Preprocessing(size=size, resize=None, channels=channels,
                            mean=IMAGENET_MEAN[:channels] if channels == 3 else (0.5,) * channels,
                            std=IMAGENET_STD[:channels] if channels == 3 else (0.5,) * channels)
        assumed.append(f"preprocessing: {pre.describe()} (no image processor config: {_first_line(exc)}); "
                       "pass preprocessing= to state it")
    else:
        pre, notes = preprocessing_from_processor(proc, channels, getattr(config, "image_size", None))
        assumed += notes
    wrapped = scores_model(model, output)
    n_out = _num_outputs(wrapped, pre)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"class {i}") for i in range(n_out)]
    if len(id2label) != n_out or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = [f"class {i}" for i in range(n_out)]
        assumed.append(f"class names: 'class 0' .. 'class {n_out - 1}' (config.id2label names none); "
                       "pass class_names= or a labels file")
    layer, note = hf_default_layer(wrapped, pre)
    if note is not None:
        assumed.append(note)
    used = f"random init (seed {seed})" if random else f"pretrained ({where})"
    return LoadedModel(wrapped, pre, names, layer, f"hf:{ref}", weights=used, assumed=assumed)
