"""CLI: ``convscope concept-test``: does the model use a concept for a class? TCAV with a p-value."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    ListAction,
    RangeType,
    add_command,
    add_model_args,
    check_out,
    load_from_args,
)

__all__ = ["add_commands"]


def cmd_concept_test(args: argparse.Namespace) -> int:
    """test whether a model uses a concept (a folder of examples) for a class: TCAV with a p-value

    Concept activation vectors at each layer (mean difference by default, --cav svm or logistic)
    against --n-random random sets drawn from the --random folders; the TCAV score is the share of
    the class's images whose logit rises along the vector. The test (default): the sensitivity (the
    mean derivative along the vector made orthogonal to the random images' mean activation) against
    every random set's own, Bonferroni-corrected over the layers; --statistic score --null
    counterpart is the paper's test. A saturated score (random directions near 0 or 1) is warned.
    --cache DIR keeps the passes' results for later runs; --engine ray runs the set images' passes on
    Ray actors (the same numbers). Writes -o as .json, .png or .html;
    prints one line per layer.
    """
    from convscope.methods.tcav import concept_test

    out = check_out(args.output, (".json", ".png", ".html"))
    lm = load_from_args(args)
    res = concept_test(
        lm, args.concept, args.target_class, class_images=args.images, layers=args.layers,
        random_sets=args.random, n_random=args.n_random, random_size=args.random_size, cav=args.cav,
        null=args.null, statistic=args.statistic,
        alpha=args.alpha, seed=args.seed, concept_name=Path(args.concept).name, batch_size=args.batch_size,
        cache_dir=args.cache, engine=args.engine,
    )
    res.save(out)
    print(f"{out}  concept {res.concept!r} for class {res.target_name!r}: "
          f"{'significant' if res.significant else 'not significant'} (alpha {res.alpha:g})")
    for line in res.verdicts:
        print(f"  {line}")
    return 0  # the notes and assumptions are warnings: the CLI prints each once, as one line


def _ranged(name: str) -> RangeType:
    from convscope.methods.tcav import CONCEPT_RANGES

    return RangeType(CONCEPT_RANGES[name], name)


def add_commands(sub: Any) -> None:
    from convscope.methods.tcav import CAV_KINDS, NULLS, STATISTICS

    s = add_command(sub, "concept-test", cmd_concept_test)
    add_model_args(s)
    s.add_argument("--concept", required=True, metavar="DIR", help="folder of the concept's example images")
    s.add_argument("--random", nargs="+", default=None, metavar="DIR",
                   help="folder(s) of unrelated images, pooled, from which the random sets are drawn "
                   "(default: random crops of the class images, said as assumed)")
    s.add_argument("--class", dest="target_class", required=True, metavar="NAME",
                   help="the class tested, by name or index")
    s.add_argument("--images", required=True, metavar="DIR",
                   help="images of the class: a folder (with class sub-folders, the one named like the "
                   "class), or digits:test")
    s.add_argument("--layers", nargs="+", action=ListAction, default=None, metavar="LAYER",
                   help="layers to test, names or globs, separated by spaces or commas (default: the "
                   "model's default layer)")
    s.add_argument("--cav", choices=CAV_KINDS, default="mean_difference",
                   help="how concept vectors are made (default mean_difference)")
    s.add_argument("--statistic", choices=STATISTICS, default=STATISTICS[0],
                   help="what is tested: sensitivity (default: mean derivative along the vector made "
                   "orthogonal to the random images' mean activation) or score (the paper's TCAV score)")
    s.add_argument("--null", choices=NULLS, default=NULLS[0],
                   help="null of the t-test: exchangeable (default: every random set as the concept) or "
                   "counterpart (the paper's: one more random set as the concept); all p-values are saved")
    s.add_argument("--n-random", type=_ranged("n_random"), default=10,
                   help="random sets the concept is tested against (10)")
    s.add_argument("--random-size", type=_ranged("random_size"), default=None,
                   help="images per random set (default: as many as the concept has)")
    s.add_argument("--alpha", type=_ranged("alpha"), default=0.05,
                   help="significance level of the corrected p-value (0.05)")
    s.add_argument("--seed", type=_ranged("seed"), default=0, help="seed of the random sets (0)")
    s.add_argument("--batch-size", type=_ranged("batch_size"), default=32, help="images per pass (32)")
    s.add_argument("--cache", default=None, metavar="DIR",
                   help="keep the model passes' results in DIR per model weights, layers and image set, "
                        "and reuse them in later runs (a repeated test does no model pass)")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where the concept and random images' passes run: here (local) or on Ray actors "
                        "(the running or a local Ray; the same numbers)")
    s.add_argument("-o", "--output", required=True, help="result file: .json, .png or .html")
