"""Models from cards: a bundled model (its card next to its weights), a user's model card (an
architecture, weights, preprocessing, class names, layer) and a card that names a Hugging Face model.
Reading and trusting a card is :mod:`convscope.models.card`; the other loaders are in
:mod:`convscope.models._sources`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from convscope.core.errors import InputError, ModelLoadError
from convscope.models._sources import (
    _BUNDLED,
    _apply_state,
    _build,
    _is_none,
    _load_state_dict,
    _weights_dir,
    model_card,
)
from convscope.models.card import card_path, read_card, read_labels
from convscope.models.forward import find_default_layer
from convscope.models.loaded import LoadedModel, _imagenet_names, _names_note, _num_outputs
from convscope.models.outputs import scores_model
from convscope.models.preprocessing import Preprocessing, preprocessing_from


def _bundled(name: str, weights: Any = "default", seed: int = 0, *,
             load: Callable[..., LoadedModel]) -> LoadedModel:
    """A bundled model: its card in the user card format, next to its weights (``weights=None``:
    the card's architecture, seeded random init, no weights read); ``load``: as for :func:`_from_card`."""
    lm = _from_card(Path(str(_weights_dir().joinpath(f"{name}.json"))), model_card(name),
                    weights=weights, seed=seed if _is_none(weights) else None, load=load)
    lm.name = name
    if not _is_none(weights):
        lm.weights = f"bundled {name}.safetensors"
    return lm


def _from_card(path: Path, card: dict[str, Any] | None = None, *, unsafe: bool = False,
               weights: Any = "default", seed: int | None = None, output: str | None = None,
               trust: bool = False, trust_remote_code: bool = False,
               load: Callable[..., LoadedModel]) -> LoadedModel:
    """Load a model card (see :mod:`convscope.models.card`); ``trust``: run a Python file it names
    that lies outside the current folder; ``trust_remote_code``: an ``hf:`` folder's own code;
    ``load``: :func:`convscope.models.zoo.load_model`, the one entry point, for a card that names
    another spec (passed in: the zoo calls this module, not the other way round)."""

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
        return _hf_card(path, card, weights=weights, seed=seed, output=output,
                        trust_remote_code=trust_remote_code, load=load)
    try:
        pre = _card_preprocessing(card)
    except InputError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    if arch.startswith(("torchvision:", "timm:")) or arch in _BUNDLED:
        w = wfile
        if isinstance(wfile, str):
            w = card_path(path, wfile, "weights")
        lm = load(arch, weights=w, unsafe=unsafe, seed=seed)
        model = lm.model
        used = lm.weights
    else:
        model = _build(arch, dict(card.get("kwargs") or {}), base, seed, trust=trust, card=path)
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
        from convscope.core.hooks import resolve_layers

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
             output: str | None, trust_remote_code: bool = False,
             load: Callable[..., LoadedModel]) -> LoadedModel:
    """A card whose architecture is ``hf:<folder or name>`` (a folder relative to the card's): the
    Hugging Face model with its own preprocessing, class names and layer unless the card states them
    (``load``: as for :func:`_from_card`)."""

    where = f"model card {path}"
    if card.get("weights") is not None:
        raise ModelLoadError(f"{where}: a Hugging Face model's weights are in its folder; drop 'weights'")
    ref = str(card["architecture"])[3:]
    local = path.parent / Path(ref).expanduser()
    lm = load("hf:" + (str(local) if local.exists() else ref), weights=weights, seed=seed,
                    output=output, trust_remote_code=trust_remote_code)
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
    out = load(lm, preprocessing=pre, class_names=names, default_layer=layer)
    n_out = _num_outputs(out.model, out.preprocessing)
    if len(out.class_names) != n_out:
        raise ModelLoadError(
            f"{where}: {len(out.class_names)} class names for a model with {n_out} outputs; give one "
            "name per output"
        )
    if layer is not None:
        from convscope.core.hooks import resolve_layers

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
