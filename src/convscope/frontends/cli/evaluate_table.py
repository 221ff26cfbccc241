"""``convscope evaluate --catalogue``: the method x metric table of the whole metric catalogue.

The classic ``convscope evaluate`` writes one row per (image, method) for a few metrics; with
``--catalogue`` it runs :func:`convscope.evaluate` instead: every metric of the catalogue (or
``--metrics`` / ``--families``), with bootstrap confidence intervals over the images and a rank
per family, written as a table (.csv / .json: one row per method and metric), a picture (.png) or
an HTML block (.html). Outputs are computed first and written atomically at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import ListAction, positive_int

__all__ = ["add_table_args", "cmd_evaluate_table"]


def add_table_args(s: argparse.ArgumentParser) -> None:
    """The flags of the catalogue mode."""
    s.add_argument("--catalogue", action="store_true",
                   help="run the metric catalogue (convscope.evaluate): a method x metric table with "
                   "confidence intervals and a rank per family; --metrics then takes catalogue names")
    s.add_argument("--families", nargs="+", action=ListAction, default=None, metavar="FAMILY",
                   help="with --catalogue: faithfulness, robustness, localisation, complexity, "
                   "randomisation, axiomatic (default: all; localisation needs --masks or --boxes)")
    s.add_argument("--n-boot", type=positive_int, default=1000, help="with --catalogue: bootstrap resamples")


def cmd_evaluate_table(args: argparse.Namespace, regions_of: Any) -> int:
    """Run the catalogue for ``args`` and write its table; ``regions_of(lm, n)`` reads the regions."""
    from convscope.core.errors import InputError
    from convscope.core.io import atomic_write
    from convscope.frontends.cli._common import parse_options
    from convscope.methods.evaluation.catalogue import select_metrics
    from convscope.methods.evaluation.explainers import as_explainer
    from convscope.methods.evaluation.grid import evaluate
    from convscope.methods.evaluation.tables import table_bytes
    from convscope.methods.explain import prepare_inputs
    from convscope.methods.registry import check_method_options, get_method, method_names

    out = Path(args.output)
    ext = out.suffix.lower()
    if ext not in (".csv", ".json", ".png", ".html"):
        raise InputError(f"{out}: give a .csv, .json, .png or .html file name")
    methods = args.methods if args.methods != ["all"] else method_names()
    specs = select_metrics(args.metrics, args.families)  # unknown names fail before the model loads
    needs = [s.name for s in specs if s.needs == "masks"]
    if needs and not (args.masks or args.boxes) and (args.metrics or args.families):
        raise InputError(f"{', '.join(needs)} need --masks or --boxes")
    options = dict(parse_options(args.option))
    for m in methods:
        check_method_options(get_method(m), {**(get_method(m).fast_options if args.fast else {}), **options})
    from convscope.frontends.cli._common import load_from_args

    lm = load_from_args(args)
    x, _disp, _ = prepare_inputs(list(args.images), lm.preprocessing, generic=lm.any_channels)
    regions = regions_of(lm, x.shape[0])
    explainers = {}
    for m in methods:
        opts = {**(get_method(m).fast_options if args.fast else {}), **options}
        explainers[m] = as_explainer(m, layer=args.layer, seed=args.seed, batch_size=args.batch_size, **opts)
    table = evaluate(lm, x, explainers, metrics=args.metrics, families=args.families, masks=regions,
                     n_boot=args.n_boot, batch_size=args.batch_size, seed=args.seed)
    if ext in (".csv", ".json"):
        data = table_bytes(table.rows(), ext[1:])
        atomic_write(out, lambda fh: fh.write(data))
    else:
        table.save(out)
    fams = table.family_ranks()
    for f, best in table.best().items():
        print(f"{f}: best {best} (mean rank {fams[f][best]:.1f} of {len(fams[f])})")
    print(f"{out}  ({len(table.methods)} methods x {len(table.metrics)} metrics, {table.n_images} images)")
    return 0
