"""Which snow-band concept is the one the edit changes: cut out and resized, or kept in place?

For the snow band of ``snow_scenes`` (30 snowy training scenes with their band masks) made into a
concept both ways (``regions(..., keep_place=False)``: the band's bounding box resized to the
whole input; ``keep_place=True``: the whole image, grey outside the band):

1. **Which concept is the edit.** The cosine between the concept's mean-difference vector
   (concept mean minus the snow-free pool's mean activation) and the edit's mean change of
   activation (the same 50 test wolves rendered with the band minus without it), at ``conv4`` of
   ``digits-snow`` and ``features.8`` of ``digits-cnn`` (grey scenes). The edit is the oracle: it
   is what "adding snow" does to the layer.
2. **The issue's acceptance checks, run by ``concept_test`` itself** (alpha 0.01, default test):
   ``digits-snow``, class wolf, ``conv4``, 20 random sets of snow-free scenes, seeds 0-19: the
   score >= 0.9 and p < 0.01; ``digits-cnn`` at ``features.8``, the wolves' digits 0-4 on the same
   scenes made grey, 10 random sets, seeds 0-19: how often "driven" (significant, above) and
   "works against" (significant, below), beside the edit's effect on each digit's logit.

Writes ``benchmarks/results/concepts_keep_place.md``.

    python benchmarks/concepts_keep_place.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import convscope as cs
from convscope.core.hooks import capture
from convscope.data.toydata import snow_scenes
from convscope.methods.tcav import regions
from convscope.methods.tcav._sets import concept_source

OUT = Path(__file__).parent / "results" / "concepts_keep_place.md"


def _grey(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t.mean(1, keepdim=True), size=32, mode="bilinear", align_corners=False)


def _mean_act(lm, data, layer: str) -> torch.Tensor:
    x = torch.stack([concept_source(data, lm.preprocessing, space="pixels")[i][0] for i in range(len(data))])
    with capture(lm.model, [layer]) as cap, torch.no_grad():
        cap.run(x, stop_after=[layer])
        return cap.activation(layer).flatten(1).double().mean(0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    tr = snow_scenes("train", cue="label")
    snowy = tr.select(tr.snow)
    imgs, masks = list(snowy.images[:30]), list(snowy.masks[:30])
    concepts = {
        "cut out": regions(imgs, masks, keep_place=False),
        "in place": regions(imgs, masks, keep_place=True),
    }
    band, plain = snow_scenes("test", cue="label"), snow_scenes("test", cue="none")
    pool = snow_scenes("train", cue="none").images[:240]
    wolves = np.flatnonzero(band.labels == 0)[:50]
    snow_lm, cnn = cs.load_model("digits-snow"), cs.load_model("digits-cnn")
    lines = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"`python benchmarks/concepts_keep_place.py --seeds {args.seeds}`",
        "",
        "Cosine of the concept's mean-difference vector (concept minus the snow-free pool) with the "
        "edit's mean change of activation (50 test wolves with the band minus the same without):",
        "",
        "| model, layer | cut out | in place |",
        "|---|---|---|",
    ]
    for lm, layer, conv in ((snow_lm, "conv4", lambda t: t), (cnn, "features.8", _grey)):
        edit = _mean_act(lm, conv(band.images[wolves]), layer) - _mean_act(
            lm, conv(plain.images[wolves]), layer
        )
        base = _mean_act(lm, conv(pool), layer)
        cos = {k: _cos(_mean_act(lm, v, layer) - base, edit) for k, v in concepts.items()}
        lines.append(f"| {lm.name}, {layer} | {cos['cut out']:.2f} | {cos['in place']:.2f} |")
    lines += [
        "",
        f"`concept_test` (default test, alpha 0.01), seeds 0-{args.seeds - 1}:",
        "",
        "| case | concept | score >= 0.9 | significant, above | significant, below | p (min - max) "
        "| edit's effect |",
        "|---|---|---|---|---|---|---|",
    ]
    with cs.shared_work(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, concept in concepts.items():
            ts = [
                cs.concept_test(
                    snow_lm,
                    concept,
                    "wolf",
                    class_images=band.images[wolves],
                    layers="conv4",
                    random_sets=pool,
                    space="pixels",
                    n_random=20,
                    seed=s,
                    alpha=0.01,
                ).layer("conv4")
                for s in range(args.seeds)
            ]
            with torch.no_grad():
                n = snow_lm.preprocessing.normalize
                eff = float(
                    (snow_lm.model(n(band.images[wolves])) - snow_lm.model(n(plain.images[wolves])))[
                        :, 0
                    ].mean()
                )
            lines.append(
                f"| digits-snow, wolf, conv4, 20 random sets | {k} | {sum(t.score >= 0.9 for t in ts)} "
                f"| {sum(t.significant and t.direction == 'above' for t in ts)} "
                f"| {sum(t.significant and t.direction == 'below' for t in ts)} "
                f"| {min(t.p_adjusted for t in ts):.2g} - {max(t.p_adjusted for t in ts):.2g} | {eff:+.1f} |"
            )
        gpool = _grey(pool)
        for k, concept in concepts.items():
            for d in range(5):
                idx = np.flatnonzero((band.digits == d) & np.asarray(band.snow))[:50]
                cls, without = _grey(band.images[idx]), _grey(plain.images[idx])
                with torch.no_grad():
                    n = cnn.preprocessing.normalize
                    eff = float((cnn.model(n(cls)) - cnn.model(n(without)))[:, d].mean())
                ts = [
                    cs.concept_test(
                        cnn,
                        concept,
                        str(d),
                        class_images=cls,
                        layers="features.8",
                        random_sets=gpool,
                        space="pixels",
                        seed=s,
                        alpha=0.01,
                    ).layer("features.8")
                    for s in range(args.seeds)
                ]
                lines.append(
                    f"| digits-cnn, digit {d}, features.8, 10 random sets | {k} "
                    f"| {sum(t.score >= 0.9 for t in ts)} "
                    f"| {sum(t.significant and t.direction == 'above' for t in ts)} "
                    f"| {sum(t.significant and t.direction == 'below' for t in ts)} "
                    f"| {min(t.p_adjusted for t in ts):.2g} - {max(t.p_adjusted for t in ts):.2g} "
                    f"| {eff:+.1f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    head = "\n" if OUT.exists() else "# The snow band as a concept: cut out or in place\n\n"
    with open(OUT, "a") as f:
        f.write(head + text)
    print(text)


if __name__ == "__main__":
    main()
