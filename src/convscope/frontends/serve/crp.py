"""The web app's concept-relevance view (CRP on LRP): ``GET /crp`` and ``POST /api/crp``.

For an image (a sample or an upload), a model, a target, a layer and ``k``: the ``k`` channels of
the layer with the most LRP relevance for the decision (:func:`convscope.methods.crp.concepts`), each
with its share, its conditional heatmap over the image and, when a concept atlas of that model and
layer was loaded at start-up (``convscope serve --atlas STORE``), its reference patches by relevance
and by activation. Requests name no path: the atlases are the ones given at start-up.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.core.results import data_uri
from convscope.core.targets import parse_target
from convscope.core.validate import check_values, ints
from convscope.methods.attribution.lrp import COMPOSITES

__all__ = ["CrpView", "MAX_K"]

#: Most concepts one request may ask for.
MAX_K = 16


def _picture(a: np.ndarray, side: int) -> str:
    """(H, W, 3) in [0, 1] as a PNG data URI, each pixel an s x s block (the largest whole s that keeps
    the longer side at most ``side``, at least 1)."""
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    s = max(1, side // max(img.width, img.height))
    return data_uri(img.resize((img.width * s, img.height * s), Image.Resampling.NEAREST))


class CrpView:
    """Concept relevance for the web app, with the concept atlases loaded at start-up.

    Args:
        engine: the app's :class:`~convscope.frontends.serve.engine.Engine` (models, layers, job queue).
        atlases: the stores of concept atlases (``convscope atlas -o STORE``) of the served models.

    Raises:
        InputError: an atlas that cannot be read, or of a model this server does not serve.
    """

    def __init__(self, engine: Any, atlases: Sequence[str | os.PathLike] = ()) -> None:
        from convscope.methods.crp import load_atlas

        self.engine = engine
        self.atlases: dict[tuple[str, str], Any] = {}
        for path in atlases:
            from convscope.methods.jobs.store import open_store

            spec = open_store(path).manifest.get("job", {})
            if spec.get("model") not in engine.models:
                raise InputError(f"the atlas {path} is of model {spec.get('model')!r}, which this server "
                                 f"does not serve ({', '.join(engine.models)})")
            lm = engine.model(spec["model"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnreliableResultWarning)
                a = load_atlas(path, lm, n=8)
            self.atlases[(lm.name, a.layer)] = a

    def info(self) -> list[dict[str, Any]]:
        """The loaded atlases: model, layer, composite, images."""
        return [{"model": m, "layer": lay, "composite": a.composite, "images": a.n_images, "n": a.n}
                for (m, lay), a in self.atlases.items()]

    def run(self, model: str, image: Image.Image, *, target: str = "", layer: str = "", k: int = 4,
            composite: str = "epsilon_plus_flat", deadline: float | None = None) -> dict[str, Any]:
        """The ``k`` concepts of ``layer`` for ``image``'s decision (see the module docstring).

        Raises:
            InputError: unknown model, layer or composite; ``k`` out of 1..:data:`MAX_K` or over the
                layer's channels; a bad target.
        """
        from convscope.methods.crp import concepts
        from convscope.methods.explain import prepare_inputs

        eng = self.engine
        lm = eng.model(model)
        lay = eng.layer(model, layer) or lm.default_layer
        if lay is None:
            raise InputError("pick a layer")
        if not any(d["name"] == lay and d["spatial"] for d in eng.layers[model]):
            raise InputError(f"layer {lay!r} of {model} has no channels with a map; pick another")
        check_values(k=(k, ints(1, MAX_K)))
        if composite not in COMPOSITES:
            raise InputError(f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)}")
        t = parse_target(target) if target not in (None, "") else None
        x, _, _ = prepare_inputs(image, lm.preprocessing, generic=lm.any_channels)
        atlas = self.atlases.get((lm.name, lay))
        if atlas is not None and atlas.composite != composite:
            atlas = None  # its patches rank another composite's relevance: not shown

        def work() -> Any:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnreliableResultWarning)
                r = concepts(lm, x, target=t, layer=lay, k=k, composite=composite, atlas=atlas,
                             n_references=4)
            return r, [str(w.message) for w in caught if issubclass(w.category, UnreliableResultWarning)]

        (res, warned), times = eng._run(lm, work, heavy=False, deadline=deadline)
        cards = []
        for c in res.concepts:
            card = {"name": c.name, "channels": list(c.channels), "share": c.share, "relevance": c.relevance,
                    "heatmap": _picture(res.overlay(c.heatmap), 128)}
            if c.references is not None:
                card["references"] = [_picture(p, 64) for p in c.references]
                card["activation_references"] = [_picture(p, 64) for p in c.activation_references]
            cards.append(card)
        return {"model": lm.name, "layer": res.layer, "target": res.target_name, "composite": composite,
                "score": res.score, "layer_relevance": res.layer_relevance,
                "input": _picture(res.image, 128), "heatmap": _picture(res.overlay(res.heatmap), 128),
                "concepts": cards, "atlas": None if atlas is None else {"images": atlas.n_images,
                                                                        "target": atlas.target},
                "warnings": list(dict.fromkeys(warned)), "assumed": list(lm.assumed), **times}
