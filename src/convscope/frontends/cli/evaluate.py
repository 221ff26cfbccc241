"""``convscope evaluate`` and ``convscope benchmark planted-cue``: measure the explanations.

``evaluate`` scores attribution methods on the user's images with the metrics of
:mod:`convscope.methods.evaluation` and writes one table row per (image, method) to a .csv or .json file
(and, with ``--plot``, the mean deletion / insertion curves as a PNG). ``benchmark planted-cue``
runs the planted-cue benchmark on the bundled models and writes its leaderboard and report.
Outputs are computed first and written atomically at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.core.validate import split_names
from convscope.frontends.cli._common import (
    ListAction,
    Parser,
    add_command,
    add_model_args,
    finite_float,
    load_from_args,
    nonneg_int,
    number_or,
    parse_options,
    parse_target,
    positive_int,
    seed_int,
)

__all__ = ["METRICS", "add_commands"]

#: metric -> what it needs ("" nothing, "regions": masks or boxes).
METRICS: dict[str, str] = {
    "deletion": "",
    "insertion": "",
    "deletion_least": "",
    "insertion_least": "",
    "faithfulness": "",
    "gini": "",
    "max_sensitivity": "",
    "sanity": "",
    "pointing": "regions",
    "energy_pointing": "regions",
}
DEFAULT_METRICS = "deletion,insertion,faithfulness,gini"


def _parse_boxes(items: list[str], n: int) -> list[list[list[float]]]:
    from convscope.core.errors import InputError
    from convscope.methods.evaluation.pointing import check_box

    if len(items) != n:
        raise InputError(f"got {len(items)} --boxes for {n} images; give one per image, in order")
    out = []
    for it in items:
        boxes = []
        for part in it.split(";"):
            vals = part.split(",")
            if len(vals) != 4:
                raise InputError(f"--boxes {it!r}: write x0,y0,x1,y1 (several boxes: separate by ';')")
            try:
                boxes.append(list(check_box(vals)))
            except InputError as exc:
                raise InputError(f"--boxes {it!r}: {exc}") from None
        out.append(boxes)
    return out


def _load_masks(paths: list[str], lm: Any, n: int) -> Any:
    import numpy as np
    import torch

    from convscope.core.errors import InputError

    if len(paths) != n:
        raise InputError(f"got {len(paths)} --masks for {n} images; give one per image, in order")
    masks = []
    for p in paths:
        img = np.asarray(lm.preprocessing.to_display(p).convert("L"), dtype=np.float32)
        if img.max() <= 0:
            raise InputError(f"mask {p} is empty (all black); white marks the region")
        masks.append(torch.from_numpy(img > img.max() / 2))
    return torch.stack(masks)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """score attribution methods on images with evaluation metrics; writes a .csv or .json table"""

    from convscope.core.errors import InputError
    from convscope.core.io import atomic_write
    from convscope.methods.evaluation import (
        deletion,
        energy_pointing_game,
        faithfulness_correlation,
        gini,
        insertion,
        max_sensitivity,
        model_randomization,
        pointing_game,
    )
    from convscope.methods.evaluation.explainers import as_explainer
    from convscope.methods.evaluation.tables import plot_curves, table_bytes, table_format, write_png
    from convscope.methods.explain import prepare_inputs
    from convscope.methods.registry import check_method_options, get_method, method_names

    if args.catalogue:
        from convscope.frontends.cli.evaluate_table import cmd_evaluate_table

        return cmd_evaluate_table(args, lambda lm, n: _regions(args, lm, n))
    if args.families:
        from convscope.core.errors import InputError as _Err

        raise _Err("--families needs --catalogue")
    out = Path(args.output)
    fmt = table_format(out)
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise InputError(f"--plot {args.plot}: give a .png file name")
    methods = args.methods if args.methods != ["all"] else method_names()
    metrics = args.metrics or split_names(DEFAULT_METRICS)
    for m in methods:
        get_method(m)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    if not methods or not metrics:
        raise InputError("give at least one method and one metric")
    needs_regions = [m for m in metrics if METRICS[m] == "regions"]
    if needs_regions and not (args.masks or args.boxes):
        raise InputError(f"{', '.join(needs_regions)} need --masks or --boxes")
    boxes = _parse_boxes(args.boxes, len(args.images)) if args.boxes else None  # before the model loads
    options = dict(parse_options(args.option))
    for m in methods:  # bad option values fail before the model loads
        check_method_options(get_method(m), {**(get_method(m).fast_options if args.fast else {}), **options})

    lm = load_from_args(args)
    x, _disp, _ = prepare_inputs(list(args.images), lm.preprocessing, generic=lm.any_channels)
    n = x.shape[0]
    regions: Any = None
    if args.masks:
        regions = _load_masks(args.masks, lm, n)
    elif boxes is not None:
        regions = boxes
    target = parse_target(args.target)
    from convscope.methods.evaluation._common import predict_targets

    t, logits = predict_targets(lm.model, x, None, args.batch_size)
    if target is not None:
        from convscope.core.targets import resolve_target

        idx = resolve_target(target, logits, lm.class_names).indices
        if idx is None:
            raise InputError("--target must name a class")
        t = idx.to(x.device)
    curve_kw = dict(targets=t, steps=args.steps, baseline=_baseline(args.baseline),
                    batch_size=args.batch_size, seed=args.seed)
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, Any]] = {}
    for method in methods:
        info = get_method(method)
        opts = {**(info.fast_options if args.fast else {}), **options}
        ex = as_explainer(method, layer=args.layer, seed=args.seed, batch_size=args.batch_size, **opts)
        maps = ex(lm, x, t)
        cols: dict[str, Any] = {}
        for metric in metrics:
            if metric in ("deletion", "insertion", "deletion_least", "insertion_least"):
                kind, _, least = metric.partition("_")
                c = (deletion if kind == "deletion" else insertion)(
                    lm, x, maps, order="least" if least else "most", **curve_kw)
                cols[metric] = c.auc
                if not least:
                    panels.setdefault(kind, {})[method] = (c.fractions.numpy(), c.mean_curve().numpy())
            elif metric == "faithfulness":
                cols[metric] = faithfulness_correlation(
                    lm, x, maps, targets=t, baseline=_baseline(args.baseline, default="black"),
                    batch_size=args.batch_size, seed=args.seed)
            elif metric == "gini":
                cols[metric] = gini(maps)
            elif metric == "max_sensitivity":
                cols[metric] = max_sensitivity(lm, x, ex, targets=t, maps=maps, seed=args.seed)
            elif metric == "sanity":
                s = model_randomization(lm, x, ex, targets=t, maps=maps, seed=args.seed)
                cols["sanity_similarity"] = s.spearman.mean(0)
                cols["sanity"] = ["pass" if v < s.threshold else "FAIL" for v in s.spearman.mean(0)]
            elif metric == "pointing":
                cols[metric] = pointing_game(maps, regions, tolerance=args.tolerance).float()
            elif metric == "energy_pointing":
                cols[metric] = energy_pointing_game(maps, regions)
        for i, img in enumerate(args.images):
            row: dict[str, Any] = {"image": img, "method": method, "target": int(t[i])}
            for k, v in cols.items():
                row[k] = v[i] if isinstance(v, list) else float(v[i])
            rows.append(row)
    data = table_bytes(rows, fmt)
    png = plot_curves({k: panels[k] for k in ("deletion", "insertion") if k in panels}) \
        if args.plot and panels else None
    if args.plot and png is None:
        raise InputError("--plot needs the deletion or insertion metric")
    atomic_write(out, lambda fh: fh.write(data))
    print(f"{out}  ({len(rows)} rows: {len(args.images)} images x {len(methods)} methods)")
    if png is not None:
        write_png(png, args.plot)
        print(args.plot)
    return 0


def _regions(args: argparse.Namespace, lm: Any, n: int) -> Any:
    """The regions of ``--masks`` or ``--boxes`` (``None`` without either)."""
    if args.masks:
        return _load_masks(args.masks, lm, n)
    return _parse_boxes(args.boxes, n) if args.boxes else None


def _baseline(value: str, default: Any = None) -> Any:
    if value == "auto":
        return default
    try:
        return float(value)
    except ValueError:
        return value


def cmd_benchmark_planted_cue(args: argparse.Namespace) -> int:
    """score every attribution method on the bundled planted-cue models; prints a leaderboard,
    writes tables, plots and a report
    """
    from convscope.methods.evaluation.benchmark import LEADERBOARD_COLUMNS, MODELS, planted_cue_benchmark
    from convscope.methods.evaluation.benchmark_files import write_benchmark
    from convscope.methods.evaluation.tables import format_table

    methods = args.methods
    models = args.models or MODELS
    res = planted_cue_benchmark(args.n_images, methods=methods, models=models, steps=args.steps,
                                n_sanity=args.n_sanity, seed=args.seed, device=args.device,
                                options=args.options,
                                progress=not args.no_progress)
    files = write_benchmark(res, Path(args.output))
    cols = [c for c in LEADERBOARD_COLUMNS if c != "model"]
    for model in dict.fromkeys(r["model"] for r in res.rows):
        print(f"\n{model} ({args.n_images} {res.settings['cases'][model]})")
        print(format_table(res.leaderboard(model), cols))
        for r in res.leaderboard(model):
            if r.get("error"):
                print(f"  {r['method']} refused this model: {r['error']}")
    fails = sorted({m for (_, m), s in res.sanity.items() if not s.passed})
    print(f"\nfail the model-randomisation check: {', '.join(fails) if fails else 'none'}")
    print(f"report written to {files['report.html'].resolve()}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``evaluate`` and ``benchmark`` to the CLI."""

    s = add_command(sub, "evaluate", cmd_evaluate)
    s.add_argument("images", nargs="+", help="image files")
    add_model_args(s)
    s.add_argument("--methods", nargs="+", action=ListAction, default=["saliency"], metavar="METHOD",
                   help="method names (separated by spaces or commas), or 'all' (default: saliency)")
    s.add_argument("--metrics", nargs="+", action=ListAction, default=None,
                   metavar="METRIC",
                   help=f"separated by spaces or commas, from: {', '.join(METRICS)} (default: "
                   f"{DEFAULT_METRICS}); "
                   "pointing and energy_pointing need --masks or --boxes; with --catalogue: names "
                   "from convscope.methods.evaluation.METRICS (default: all)")
    s.add_argument("--masks", nargs="+", default=None, metavar="MASK",
                   help="one mask image per image (white: the region), for the pointing games")
    s.add_argument("--boxes", action="append", default=None, metavar="X0,Y0,X1,Y1[;...]",
                   help="region boxes in model-input pixels, one --boxes per image")
    s.add_argument("--tolerance", type=nonneg_int, default=0, help="pointing-game tolerance in pixels")
    s.add_argument("--target", "-t", default=None, help="class index or name (default: predicted)")
    s.add_argument("--layer", "-l", default=None, help="layer for layer methods")
    s.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option, repeatable")
    s.add_argument("--fast", action="store_true", help="use each method's fast options")
    s.add_argument("--steps", type=positive_int, default=32, help="deletion/insertion steps (default 32)")
    s.add_argument("--baseline", default="auto",
                   type=number_or(finite_float(0.0, 1.0), "auto", "black", "zero", "white", "grey", "mean",
                                  "blur"),
                   help="what removed pixels become: auto (black for deletion, blur for insertion), "
                   "black, white, grey, mean, blur or a grey level in [0, 1] (pixel space)")
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--plot", default=None, metavar="PNG", help="also write mean curves as a PNG")
    s.add_argument("-o", "--output", required=True,
                   help="output table (.csv or .json; with --catalogue also .png or .html)")
    from convscope.frontends.cli.evaluate_table import add_table_args

    add_table_args(s)

    b = sub.add_parser("benchmark", help="benchmarks of the explanations")
    bsub = b.add_subparsers(dest="benchmark", required=True, parser_class=Parser)
    from convscope.methods.evaluation.benchmark import ALL_MODELS, MODELS

    p = add_command(bsub, "planted-cue", cmd_benchmark_planted_cue)
    p.add_argument("-o", "--output", default="convscope-benchmark", help="output folder")
    p.add_argument("--n-images", type=positive_int, default=48,
                   help="test digits (digits-snow: test wolves) per model (default 48)")
    p.add_argument("--methods", nargs="+", action=ListAction, default=None, metavar="METHOD",
                   help="a subset, separated by spaces or commas (default: all)")
    p.add_argument("--models", nargs="+", action=ListAction, default=None, metavar="MODEL",
                   help=f"some of {', '.join(ALL_MODELS)}, separated by spaces or commas (default: "
                   f"{', '.join(MODELS)})")
    p.add_argument("--steps", type=positive_int, default=16, help="deletion/insertion steps (default 16)")
    p.add_argument("--n-sanity", type=nonneg_int, default=12,
                   help="digits for the randomisation check (default 12; 0 skips it)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--options", default="auto", choices=("auto", "fast", "default"),
                   help="method options: auto (fast options for the sampling black-box methods, "
                   "defaults for the rest), fast (fast options for all), default (none)")
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
