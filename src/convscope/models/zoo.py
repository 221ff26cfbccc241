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
  (:class:`~convscope.core.errors.AssumptionWarning`), naming what it assumed.

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

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.core.errors import AssumptionWarning, ModelLoadError
from convscope.models._sources import (
    _BUNDLED,
    _apply_state,
    _build,
    _family_layer,  # noqa: F401 (tests import it from here)
    _is_none,
    _load_state_dict,
    _timm,
    _torchvision,
    model_card,
)
from convscope.models.card import is_card_path
from convscope.models.card_models import _bundled, _from_card
from convscope.models.forward import find_default_layer
from convscope.models.loaded import LoadedModel, _num_outputs, _probe
from convscope.models.outputs import ScoresModel, class_scores, scores_model
from convscope.models.preprocessing import Preprocessing, preprocessing_from

__all__ = ["LoadedModel", "bundled_models", "find_default_layer", "load_model", "model_specs"]


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


def _read_scores(lm: LoadedModel, output: str | None, *, copy: bool, probed: Any = None) -> LoadedModel:
    """``lm`` with a model whose forward returns the class scores: wrapped by the output rule when
    ``output`` is named or the model's output is not a tensor (probed once: ``probed`` is what
    the loader's own probe returned, if it made one); a copy if ``copy``."""
    if output is None:
        from convscope.models.blackbox import BlackBoxModel

        if isinstance(lm.model, (ScoresModel, BlackBoxModel)):  # a black box's scores are a tensor
            return lm
        try:
            out = _probe(lm.model, lm.preprocessing) if probed is None else probed
        except ModelLoadError as exc:
            if lm.any_channels:  # the assumed input does not fit: said now, at load
                warnings.warn(f"convscope assumed for {lm.name}: {exc}; images will be refused until "
                              "you do (a tensor in the model's own shape is still taken as given)",
                              AssumptionWarning, stacklevel=4)
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
    trust_card: bool = False,
    trust_remote_code: bool = False,
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
            :class:`~convscope.core.errors.AssumptionWarning`.
        seed: seed of the random initialisation when ``weights`` is ``None``.
        output: which output of the model holds the class scores (a dict key, an attribute or a
            tuple index), for a model whose output the rule of :mod:`convscope.models.outputs`
            cannot read; ``None`` applies the rule.
        trust_card: run the Python file a model card names (``"file.py:Class"``) even when it
            lies outside the current working directory. A card is code, like a pickle: a card
            from elsewhere (a download, another user's folder) runs only with this (CLI:
            ``--trust-card``). ``arch=`` is your own word and runs wherever the file is.
        trust_remote_code: let an ``hf:`` folder run the Python code it ships (its config's
            ``auto_map``); off by default, and never asked on the terminal (CLI:
            ``--trust-remote-code``).

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
            pre = _assumed_preprocessing(spec)
            what = "ImageNet's" if pre.channels == 3 else (
                f"{pre.channels} channel(s) as its first convolution takes, pixels as they are at "
                "ImageNet's size")
            note = (f"preprocessing: {what} ({pre.describe()}), as none was stated; pass "
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
        if arch is not None and (s in _BUNDLED or s.startswith(("torchvision:", "timm:", "hf:"))
                                 or is_card_path(s)):
            raise ModelLoadError(
                f"arch= (--arch) names the architecture of a weights file given as the model, but {s} "
                "brings its own; drop --arch (or give the weights file as --model and the architecture "
                "as --arch)"
            )
        if s in _BUNDLED:
            lm = _bundled(s, None if _is_none(weights) else "default", seed, load=load_model)
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
            from convscope.models.hf import load_hf

            lm = load_hf(s[3:], weights=weights, seed=seed, output=output,
                         trust_remote_code=trust_remote_code)
        elif is_card_path(s):
            lm = _from_card(path, unsafe=unsafe, weights=weights, seed=seed if _is_none(weights) else None,
                            output=output, trust=trust_card, trust_remote_code=trust_remote_code,
                            load=load_model)
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


def _assumed_preprocessing(model: nn.Module) -> Preprocessing:
    """ImageNet's preprocessing for a module whose preprocessing nobody stated; when its first
    convolution takes another channel count than 3, that count, with pixels as they are (mean 0,
    std 1: ImageNet's per-channel statistics do not apply) at ImageNet's size."""
    pre = Preprocessing()
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    c = int(first.in_channels) if first is not None else 3
    if c == 3 or not 1 <= c <= 64:
        return pre
    return replace(pre, channels=c, mean=(0.0,) * c, std=(1.0,) * c)
