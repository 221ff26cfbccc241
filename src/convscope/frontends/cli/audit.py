"""CLI: ``convscope audit``: a model's strategies per class across a data set, suspects flagged."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    ListAction,
    RangeType,
    add_command,
    add_model_args,
    integer,
    load_from_args,
    parse_options,
)
from convscope.frontends.cli.batch import add_job_args, job_options

__all__ = ["add_commands"]


def cmd_audit(args: argparse.Namespace) -> int:
    """find a model's strategies per class across a data set and flag shortcut-like ones (SpRAy)

    Explain every image for its own label, cluster each class's maps spectrally (the eigengap picks
    the number of clusters) and flag clusters whose attribution sits on a small region that the
    class's other clusters do not use, or a class whose attribution sits on a small region that
    no other class uses; then prove each suspect by intervention (remove its region from the
    suspect images, paste it into images of other classes, count the flipped predictions).
    Writes OUT/audit.json, OUT/report.html and the maps' resumable store OUT/maps.zarr (run again
    to resume). --method lrp explains with LRP; --concepts-layer LAYER also shows, for each suspect
    cluster, the channels of LAYER that carry its relevance (OUT/concepts.html).
    """
    from convscope.core.errors import InputError
    from convscope.methods.dataset import audit

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; -o takes a folder (for audit.json, report.html, maps.zarr)")
    if args.atlas is not None and args.concepts_layer is None:
        raise InputError("--atlas is the concept atlas of --concepts-layer LAYER; pass --concepts-layer too")
    if args.atlas is not None and not Path(args.atlas).exists():
        raise InputError(f"no concept atlas at {args.atlas}; make one with `convscope atlas` first")
    lm = load_from_args(args)
    if args.concepts_layer is not None:  # a typo fails here, before the audit runs and writes anything
        from convscope.core.hooks import resolve_layers

        names = resolve_layers(lm.model, args.concepts_layer)
        if len(names) != 1:
            raise InputError(f"--concepts-layer must name one layer, got {len(names)}: "
                             f"{', '.join(names[:5])}")
    only = args.only_classes
    classes = only
    a = audit(
        lm,
        args.data,
        classes=classes,
        method=args.method,
        layer=args.layer,
        options=dict(parse_options(args.option)),
        k=args.k,
        max_k=args.max_k,
        size=args.size,
        n_neighbors=args.neighbors,
        mass=args.mass,
        threshold=args.threshold,
        min_cluster=args.min_cluster,
        embedding=args.embedding,
        prototypes=args.prototypes,
        intervention=args.intervention,
        confirm=args.confirm,
        store=out / "maps.zarr",
        progress=False if args.quiet else None,
        **job_options(args),
    )
    html = a.to_html()  # both documents are made before either is written
    concepts = None
    if args.concepts_layer is not None:  # the concepts behind each suspect cluster (CRP on LRP)
        from convscope.methods.crp import cluster_concepts

        concepts = cluster_concepts(a, lm, args.data, args.concepts_layer, k=args.concepts_k,
                                    atlas=args.atlas, device=args.device)
    a.save(out / "audit.json")
    if concepts is not None:
        for ext in (".json", ".html", ".png"):
            concepts.save(out / f"concepts{ext}")
        for sc in concepts.suspects:
            print(f"  concepts: {sc.caption()}")
    from convscope.core.io import atomic_write

    atomic_write(out / "report.html", lambda fh: fh.write(html.encode()))
    n_img = sum(c.n for c in a.classes)
    print(f"{out / 'audit.json'}  {n_img} images, {len(a.classes)} classes, "
          f"{sum(len(c.clusters) for c in a.classes)} clusters, {len(a.suspects)} suspect")
    print(f"  {a.headline}")
    for c, k in a.suspects:
        state = "confirmed" if k.confirmed else "unconfirmed"
        score = max(k.suspicion, c.comparison.suspicion if "class" in k.flagged_by and c.comparison else 0.0)
        print(f"  suspect ({state}): {k.reading} (suspicion {score:.2f})")
        if k.evidence:
            print(f"    intervention: {k.evidence}")
    for note in a.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(f"{out / 'report.html'}")
    return 0


def _ranged(name: str) -> RangeType:
    from convscope.methods.dataset._settings import AUDIT_RANGES

    return RangeType(AUDIT_RANGES[name], name)


def add_commands(sub: Any) -> None:
    from convscope.methods.dataset._intervene import FILLS
    from convscope.methods.dataset._settings import EMBEDDINGS
    from convscope.methods.registry import method_names

    s = add_command(sub, "audit", cmd_audit)
    add_model_args(s)
    s.add_argument("--data", "-d", required=True,
                   help="an image folder with one sub-folder per class, or digits | digits:test")
    s.add_argument("--method", default="gradcam", choices=method_names(), metavar="METHOD",
                   help="explain method (default gradcam); one of: " + ", ".join(method_names()))
    s.add_argument("--layer", "-l", default=None, help="layer for layer methods (default: model's)")
    s.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option, repeatable")
    s.add_argument("--only-classes", nargs="+", action=ListAction, default=None, metavar="NAME",
                   help="class names to audit, separated by spaces or commas (default: every class of the "
                   "data)")
    s.add_argument("--k", type=_ranged("k"), default=None,
                   help="clusters per class (default: chosen by the eigengap)")
    s.add_argument("--max-k", type=_ranged("max_k"), default=8, help="largest k the eigengap may pick (8)")
    s.add_argument("--size", type=_ranged("size"), default=32, help="grid side the maps are compared on (32)")
    s.add_argument("--neighbors", type=_ranged("n_neighbors"), default=10,
                   help="neighbours per image in the affinity graph (10)")
    s.add_argument("--mass", type=_ranged("mass"), default=0.8,
                   help="share of attribution a cluster's box holds (0.8)")
    s.add_argument("--threshold", type=_ranged("threshold"), default=0.5,
                   help="suspicion at which a cluster is flagged (0.5)")
    s.add_argument("--min-cluster", type=_ranged("min_cluster"), default=3,
                   help="smaller clusters are never flagged (3)")
    s.add_argument("--embedding", choices=EMBEDDINGS, default="tsne", help="2-D map of the maps (tsne)")
    s.add_argument("--prototypes", type=_ranged("prototypes"), default=4,
                   help="images shown per cluster (4)")
    s.add_argument("--intervention", choices=FILLS, default="others",
                   help="how a suspect's region is removed to test it: others (the same box of "
                        "other-class images, default), blur, surround (the image's own surroundings), none")
    s.add_argument("--confirm", type=_ranged("confirm"), default=0.5,
                   help="share of other-class images that pasting the region must flip to confirm (0.5)")
    s.add_argument("--concepts-layer", default=None, metavar="LAYER",
                   help="also find the concepts (channels of LAYER) that carry each suspect cluster's LRP "
                   "relevance, written to OUT/concepts.html, .png and .json")
    s.add_argument("--concepts-k", type=integer(1, name="concepts-k"), default=3,
                   help="concepts per suspect cluster (3)")
    s.add_argument("--atlas", default=None, metavar="STORE",
                   help="a concept atlas of LAYER (convscope atlas) for the concepts' reference patches")
    add_job_args(s)
    s.add_argument("-o", "--output", required=True, help="output folder")
