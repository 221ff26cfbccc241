"""``concepts(model, image, target=..., layer=..., k=...)``: the concepts behind one decision.

For one image, a target and a layer: LRP (:mod:`convscope.methods.attribution.lrp`) down to the layer
gives each channel's relevance for the decision; the ``k`` concepts (channels, or groups of
channels the caller names) with the most relevance are kept, each with its share of the layer's
relevance and its conditional heatmap (CRP, :mod:`convscope.methods.crp._conditional`), computed in
batched backward passes. With ``references=`` (a data set), each concept also gets its reference
images: the patches of the data set where the concept carries the most relevance for the same
class (relevance maximisation, Achtibat et al. 2023), and beside them the patches where it is most
active (activation maximisation), each cropped to the receptive field of the layer unit where the
concept peaks (:func:`convscope.methods.dataset.receptive.receptive_field`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from convscope.core.errors import InputError, MethodError, UnreliableResultWarning
from convscope.core.hooks import resolve_layers, state_guard
from convscope.core.image import ImageLike
from convscope.core.targets import TargetSpec, resolve_target
from convscope.core.validate import check_values, ints
from convscope.data.sources import as_source
from convscope.data.stream import model_device
from convscope.methods.attribution._engine import scorer
from convscope.methods.attribution.lrp import COMPOSITES
from convscope.methods.crp._conditional import conditional_relevance, layer_relevance, relevance_passes
from convscope.methods.crp.result import Concept, ConceptRelevance
from convscope.methods.dataset.receptive import receptive_field, rf_box
from convscope.models import LoadedModel, Preprocessing, load_model
from convscope.models.inputs import as_inputs
from convscope.models.outputs import unwrap

__all__ = ["concepts"]

Groups = Mapping[str, Sequence[int]] | Sequence[Sequence[int]]


def _concept_sets(n_channels: int, channels: Sequence[int] | None,
                  groups: Groups | None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, channels) of every candidate concept, checked against the layer's channel count."""
    if channels is not None and groups is not None:
        raise InputError("pass channels= (candidate single channels) or groups= (named channel sets), "
                         "not both")
    if groups is not None:
        items = list(groups.items()) if isinstance(groups, Mapping) else [
            (f"group {i}", g) for i, g in enumerate(groups)]
        sets = [(str(name), tuple(int(c) for c in g)) for name, g in items]
        if not sets or any(not g for _, g in sets):
            raise InputError("groups= needs at least one group, and every group at least one channel")
    else:
        chans = range(n_channels) if channels is None else [int(c) for c in channels]
        sets = [(f"ch {c}", (c,)) for c in chans]
        if not sets:
            raise InputError("channels= is empty; name at least one channel of the layer")
    for name, g in sets:
        bad = [c for c in g if not 0 <= c < n_channels]
        if bad:
            raise InputError(f"{name}: channel(s) {bad} out of range; the layer has {n_channels} channels "
                             f"(0..{n_channels - 1})")
        if len(set(g)) != len(g):
            raise InputError(f"{name}: a channel is named twice")
    return sets


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray:
    t, le, b, r = box
    patch = Image.fromarray((np.clip(pixels[t:b, le:r], 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(patch.resize((side, side), Image.Resampling.NEAREST), dtype=np.float32) / 255.0


def _references(lm: LoadedModel, data: Any, layer: str, score: Any, sets: list[tuple[str, tuple[int, ...]]],
                n: int, limit: int, batch_size: int, device: torch.device, rules: dict[str, Any],
                notes: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(relevance-max patches, activation-max patches) per concept over ``data``."""
    src = as_source(data, lm.preprocessing, limit=limit)
    if len(src) == 0:
        raise InputError("references= holds no images")
    masks = torch.zeros(len(sets), 0)
    rel_best, act_best = [], []
    with relevance_passes(lm.model, layer, score, preprocessing=lm.preprocessing,
                          channels=lm.preprocessing.channels, **rules) as run:
        for i in range(0, len(src), batch_size):
            xb = torch.stack([src[j][0] for j in range(i, min(i + batch_size, len(src)))]).to(device)
            r = run(xb)
            rl, act = r["layer"], r["activation"]
            if masks.shape[1] != rl.shape[1]:
                masks = torch.zeros(len(sets), rl.shape[1])
                for k, (_, g) in enumerate(sets):
                    masks[k, list(g)] = 1.0
            m = masks.to(rl)
            rel_best.append(torch.einsum("kc,bc...->bk...", m, rl).flatten(2).cpu())  # (b, k, h*w)
            act_best.append(torch.einsum("kc,bc...->bk...", m, act).flatten(2).cpu())
    shape = tuple(act.shape[2:])
    try:
        rf = (receptive_field(unwrap(lm.model), layer, tuple(lm.preprocessing.size))
              if len(shape) == 2 else None)
    except MethodError as exc:
        rf = None
        notes.append(f"reference patches are whole images: the receptive field of {layer} is unknown ({exc})")
    out = []
    side = 48
    for which, what in ((rel_best, "relevance"), (act_best, "activation")):
        maps = torch.cat(which)  # (N, k, h*w)
        peak, pos = maps.max(2)
        per_concept = []
        for k in range(len(sets)):
            if float(peak[:, k].max()) <= 0:
                notes.append(f"{sets[k][0]} has no positive {what} anywhere in the {len(src)} reference "
                             "images: its reference patches show nothing it responds to")
            order = torch.argsort(peak[:, k], descending=True)[:n].tolist()
            crops = []
            for j in order:
                pix = src.pixels(j)
                if rf is not None:
                    ii, jj = divmod(int(pos[j, k]), shape[1])
                    crops.append(_crop(pix, rf_box(rf, ii, jj, pix.shape[0], pix.shape[1]), side))
                else:
                    crops.append(_crop(pix, (0, 0, pix.shape[0], pix.shape[1]), side))
            per_concept.append(np.stack(crops))
        out.append(per_concept)
    return list(zip(out[0], out[1], strict=True))


def _atlas_references(atlas: Any, lm: LoadedModel, layer: str, composite: str,
                      sets: list[tuple[str, tuple[int, ...]]], n: int,
                      notes: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(relevance patches, activation patches) per single-channel concept, from a concept atlas (a
    :class:`~convscope.methods.crp.ConceptAtlas`) of the same model, layer and composite."""
    from convscope.methods.jobs.provenance import model_fingerprint

    if atlas.layer != layer:
        raise InputError(f"the atlas is of layer {atlas.layer!r}, not {layer!r}; pass layer={atlas.layer!r} "
                         "or an atlas of this layer")
    if atlas.composite != composite:
        raise InputError(f"the atlas was made with composite {atlas.composite!r}, not {composite!r}; pass "
                         f"composite={atlas.composite!r} or an atlas made with {composite!r}")
    if atlas.model_sha256 and atlas.model_sha256 != model_fingerprint(lm.model):
        raise InputError("the atlas was made with other model weights; make an atlas of this model")
    if atlas.n < n:
        notes.append(f"the atlas holds {atlas.n} patches per channel, fewer than n_references={n}")
    for name, g in sets:
        if float(atlas.relevance.values[g[0], 0]) <= 0:
            notes.append(f"{name} has no positive relevance anywhere in the atlas's {atlas.n_images} images: "
                         "its reference patches show nothing it responds to")
    return [(atlas.references(g[0], "relevance", n), atlas.references(g[0], "activation", n))
            for _, g in sets]


def concepts(
    model: str | nn.Module | LoadedModel,
    image: ImageLike | torch.Tensor,
    target: TargetSpec = None,
    layer: str | None = None,
    *,
    k: int = 6,
    channels: Sequence[int] | None = None,
    groups: Groups | None = None,
    composite: str = "epsilon_plus_flat",
    references: Any = None,
    atlas: Any = None,
    n_references: int = 4,
    reference_limit: int = 512,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | str | dict[str, Any] | None = None,
    space: str = "model",
) -> ConceptRelevance:
    """The ``k`` concepts of ``layer`` with the most relevance for the model's decision on ``image``.

    Args:
        model: a spec for :func:`~convscope.load_model`, an ``nn.Module`` or a loaded model.
        image: one image (a path, PIL image, array or a (1, C, H, W) / (C, H, W) tensor).
        target: the class explained (default: the predicted class); see :mod:`convscope.core.targets`.
        layer: the layer whose channels are the concepts (default: the model's default layer).
        k: how many concepts to keep (at most the number of candidates).
        channels: candidate channels (default: all channels of the layer).
        groups: named groups of channels as concepts instead (``{"snow": [3, 17], ...}`` or a
            list of channel lists); a group's relevance is the sum of its channels'.
        composite: the LRP composite (see :data:`convscope.methods.attribution.lrp.COMPOSITES`).
        references: a data set (``"digits:test"``, an image folder, a torch ``Dataset``, a tensor)
            to find each concept's reference patches in; ``None``: none.
        atlas: a :class:`~convscope.methods.crp.ConceptAtlas` or the path of its store
            (:func:`~convscope.methods.crp.concept_atlas`) of the same model, layer and composite:
            the reference patches are taken from it instead of computed (single channels only).
        n_references: reference patches per concept (each of relevance and activation).
        reference_limit: use at most this many images of ``references``.
        batch_size: concepts (copies of the image) per backward pass, and reference images per pass.
        device, class_names, preprocessing, space: as for :func:`convscope.explain`.

    Returns:
        A :class:`~convscope.methods.crp.result.ConceptRelevance`.

    Raises:
        InputError: bad ``k``, channels, groups or batch size; more than one image.
        MethodError: an unknown composite, a model LRP cannot cover, a layer without channels.
        LayerNotFoundError: no such layer.
    """
    check_values(k=(k, ints(1)), batch_size=(batch_size, ints(1)), n_references=(n_references, ints(1, 64)),
                 reference_limit=(reference_limit, ints(1)))
    if atlas is not None and (references is not None or groups is not None):
        raise InputError("atlas= gives single channels' reference patches: pass it without references= "
                         "and groups= (for groups, pass references= a data set)")
    if composite not in COMPOSITES:
        raise MethodError(f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    lm = load_model(model, class_names=class_names, preprocessing=preprocessing)  # type: ignore[arg-type]
    net = lm.model
    device = model_device(net, device)
    inp = as_inputs(image, lm.preprocessing, space=space, any_channels=lm.any_channels)
    if inp.x.shape[0] != 1:
        raise InputError(f"concepts explains one image at a time; got {inp.x.shape[0]}")
    x = inp.x.to(device)
    lm.fill_from_input(x)
    chosen = layer if layer is not None else lm.default_layer
    if chosen is None:
        raise MethodError(f"{lm.name} has no default layer; pass layer=")
    names = resolve_layers(net, chosen)
    if len(names) != 1:
        raise InputError(f"layer= must name one layer, got {len(names)}: {', '.join(names[:5])}")
    name = names[0]
    notes: list[str] = []
    with state_guard(net, inp.tensors):
        with torch.no_grad():
            logits = net(x)
        t = resolve_target(target, logits, lm.class_names)
        score = scorer(t, 0, "raw")
        base = layer_relevance(net, x, name, score, composite=composite, preprocessing=lm.preprocessing)
        rl = base["layer"]
        if rl.ndim < 3:
            raise MethodError(f"layer {name!r} has no channels (its output is {tuple(rl.shape)}, not "
                              "batch x channels x space); pick a convolutional layer")
        sets = _concept_sets(rl.shape[1], channels, groups)
        if k > len(sets):
            raise InputError(f"k={k} but there are only {len(sets)} candidate concepts in {name!r}; "
                             f"pass k <= {len(sets)}")
        per_channel = rl[0].flatten(1).sum(1)
        total = float(per_channel.sum())
        rel = torch.stack([per_channel[list(g)].sum() for _, g in sets])
        top = torch.argsort(rel, descending=True)[:k].tolist()
        masks = torch.zeros(k, rl.shape[1])
        for row, i in enumerate(top):
            masks[row, list(sets[i][1])] = 1.0
        cond = conditional_relevance(net, x, name, score, masks, batch_size=batch_size, composite=composite,
                                     preprocessing=lm.preprocessing)
        if atlas is not None:
            if not hasattr(atlas, "references"):
                from convscope.methods.crp.atlas import load_atlas

                with warnings.catch_warnings():  # its notes on other channels do not concern this result
                    warnings.simplefilter("ignore", UnreliableResultWarning)
                    atlas = load_atlas(atlas, lm, n=n_references)
            refs = _atlas_references(atlas, lm, name, composite, [sets[i] for i in top], n_references, notes)
        elif references is not None:
            refs = _references(lm, references, name, score, [sets[i] for i in top], n_references,
                               reference_limit, batch_size, x.device, {"composite": composite}, notes)
        else:
            refs = [(None, None)] * k
    if total <= 0:
        notes.append(f"the layer's total relevance for this decision is {total:.3g} (not positive): no "
                     "concept carries evidence for it, and the shares are not meaningful")
    for n in notes:
        warnings.warn(n, UnreliableResultWarning, stacklevel=2)
    idx = t.labels()[0] if t.labels() else -1
    tname = (lm.class_names[idx] if 0 <= idx < len(lm.class_names) else str(idx)) if idx >= 0 else "score"
    if t.negative is not None:
        neg = int(t.negative[0])
        tname += f" vs {lm.class_names[neg] if neg < len(lm.class_names) else neg}"
    items = tuple(
        Concept(name=sets[i][0], channels=sets[i][1], relevance=float(rel[i]),
                share=float(rel[i]) / total if total else float("nan"), heatmap=cond[row].sum(0).cpu(),
                heatmap_sum=float(cond[row].sum()), references=refs[row][0],
                activation_references=refs[row][1])
        for row, i in enumerate(top))
    return ConceptRelevance(
        layer=name, target=idx, target_name=tname, concepts=items, image=inp.display[0],
        heatmap=base["input"][0].sum(0).cpu(), layer_relevance=total, score=float(base["score"][0]),
        composite=composite, lrp=base["lrp"], model_name=lm.name,
        model_info=lm.info(default_layer_used=layer is None),
        options={"k": k, "batch_size": batch_size, "channels": None if channels is None else list(channels),
                 "groups": None if groups is None else (dict(groups) if isinstance(groups, Mapping)
                                                        else [list(g) for g in groups]),
                 "references": None if references is None else str(references)[:80],
                 "atlas": None if atlas is None else {"path": atlas.path, "target": atlas.target,
                                                       "images": atlas.n_images},
                 "n_references": n_references, "reference_limit": reference_limit},
        notes=tuple(notes))
