"""How often each concept test calls a concept significant: power and false positives, many seeds.

The statistics of :func:`convscope.concept_test` recomputed in numpy from each image's activations
and the class's gradients, taken once (``set_statistics`` with the rows kept, and
``directional_derivatives`` along the identity, i.e. the gradients themselves); the random sets
are drawn from the pool as ``draw_random_sets`` draws them. Cases (all at 1%):

* ``snow``: the snow band (30 regions) for the test wolves of ``digits-snow`` (power);
* ``random``: a concept of 20 snow-free test scenes, drawn with seed ``100 + seed`` (false
  positives: it is one more set like the random ones);
* ``cnn d``: the band for digit ``d`` of ``digits-cnn`` on the same scenes made grey.

For each, four tests: the TCAV score or the sensitivity (the mean derivative along the CAV made
orthogonal to the random images' mean activation), under the counterpart or the exchangeable null.
Writes ``benchmarks/results/concepts_nulls.md``.

    python benchmarks/concepts_nulls.py [--seeds 0 20] [--n-random 10 20]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

import convscope as cs
from convscope.data.toydata import snow_scenes
from convscope.frontends.demo._concepts import snow_concept_sets
from convscope.methods.tcav._passes import directional_derivatives, set_statistics
from convscope.methods.tcav._sets import ImageSet, concept_source

OUT = Path(__file__).parent / "results" / "concepts_nulls.md"


def _grey(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t.mean(1, keepdim=True), size=32, mode="bilinear", align_corners=False)


def _rows(lm, data, layer: str, name: str) -> np.ndarray:
    src = concept_source(data, lm.preprocessing, space="pixels")
    (st,) = set_statistics(lm.model, [ImageSet(name, src, name, "")], [layer], keep_rows=True, batch_size=64)
    return st[layer].rows.double().numpy()


def _grads(lm, data, target: int, layer: str, dim: int, name: str) -> np.ndarray:
    src = concept_source(data, lm.preprocessing, space="pixels")
    eye = {layer: torch.eye(dim)}
    return directional_derivatives(lm.model, ImageSet(name, src, name, ""), target, eye,
                                   batch_size=64)[layer].double().numpy()


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def _prediction(s: float, null: np.ndarray) -> tuple[float, float]:
    sd, gap = null.std(ddof=1), s - null.mean()
    if sd == 0:
        return (1.0 if gap == 0 else 0.0), gap
    return float(2 * stats.t.sf(abs(gap / (sd * math.sqrt(1 + 1 / len(null)))), len(null) - 1)), gap


def _ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return (1.0 if a[0] == b[0] else 0.0), a.mean() - b.mean()
    p = stats.ttest_ind(a, b).pvalue
    return (float(p) if np.isfinite(p) else 1.0), a.mean() - b.mean()


def tests(pool: np.ndarray, concept: np.ndarray, grads: np.ndarray, n: int, size: int, seed: int) -> dict:
    """``{"statistic/null": (p, gap)}`` for one draw of ``n + 1`` random sets of ``size``."""
    g = np.random.default_rng(seed)
    means = np.stack([pool[np.sort(g.choice(len(pool), size, replace=False))].mean(0) for _ in range(n + 1)])
    o = _unit(means.mean(0))
    own = _unit(concept.mean(0) - means[1:])
    counter = _unit(means[0] - means[1:])
    sets = np.stack([_unit(means[j] - means[k]) for j in range(1, n + 1) for k in range(1, n + 1) if k != j])
    out = {}
    for stat in ("score", "sensitivity"):
        def value(v: np.ndarray, stat: str = stat) -> np.ndarray:
            if stat == "score":
                return ((grads @ v.T) > 0).mean(0)
            w = _unit(v - (v @ o)[:, None] * o[None])
            return (grads @ w.T).mean(0)
        a, b, c = value(own), value(counter), value(sets).reshape(n, n - 1).mean(1)
        out[f"{stat}/counterpart"] = _ttest(a, b)
        out[f"{stat}/exchangeable"] = _prediction(float(a.mean()), c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs=2, default=(0, 20))
    ap.add_argument("--n-random", type=int, nargs="+", default=(10, 20))
    args = ap.parse_args()
    sets = snow_concept_sets()
    none = snow_scenes("test", cue="none").images
    scenes = sets["scenes"]
    snow = cs.load_model("digits-snow")
    pool = _rows(snow, sets["pool"], "conv4", "pool")
    # the cut-out band (regions' default, keep_place=False), the concept docs/concepts.md's
    # table reports
    cases = {"snow": (pool, _rows(snow, sets["concept"], "conv4", "concept"),
                      _grads(snow, sets["wolves"], 0, "conv4", pool.shape[1], "wolves"), 30)}
    nt = _rows(snow, none, "conv4", "none")
    cnn = cs.load_model("digits-cnn")
    gpool = _rows(cnn, _grey(sets["pool"]), "features.8", "grey pool")
    band = _rows(cnn, sets["concept"], "features.8", "band")
    for d in range(5):
        cases[f"cnn {d}"] = (gpool, band, _grads(cnn, _grey(scenes.images[scenes.digits == d][:50]), d,
                                                 "features.8", gpool.shape[1], f"digit {d}"), 30)
    keys = ["score/counterpart", "score/exchangeable", "sensitivity/counterpart", "sensitivity/exchangeable"]
    seeds = range(*args.seeds)
    lines = [f"# Concept tests: significant at 1% (above / below random), seeds {args.seeds[0]}-"
             f"{args.seeds[1] - 1}, `conv4` of digits-snow, `features.8` of digits-cnn", "",
             "| case | random sets | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for n in args.n_random:
        for name in [*cases, "random"]:
            res = []
            for s in seeds:
                if name == "random":
                    g = np.random.default_rng(100 + s)
                    concept = nt[g.choice(len(nt), 20, replace=False)]
                    res.append(tests(pool, concept, cases["snow"][2], n, 20, s))
                else:
                    p, c, gr, size = cases[name]
                    res.append(tests(p, c, gr, n, size, s))
            cells = []
            for k in keys:
                up = sum(r[k][0] < 0.01 and r[k][1] > 0 for r in res)
                down = sum(r[k][0] < 0.01 and r[k][1] < 0 for r in res)
                cells.append(f"{up} / {down} (max p {max(r[k][0] for r in res):.2g})")
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
