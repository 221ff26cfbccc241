"""``convscope lime-text``: LIME for a text classifier, as HTML or JSON.

The classifier is a scikit-learn-style object with ``predict_proba(list[str])`` saved with joblib
or pickle (``--pipeline``; loading a pickle can run code, so it needs ``--unsafe-load``), or,
without ``--pipeline``, a demo pipeline (TF-IDF + logistic regression) trained on
:func:`convscope.data.toydata.junk_header_corpus`, whose planted header word the explanation exposes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    ListAction,
    add_command,
    check_out,
    parse_target,
    positive_int,
    seed_int,
)

__all__ = ["add_commands"]


def _demo_pipeline() -> tuple[Any, tuple[str, ...]]:
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]

    from convscope.data.toydata import junk_header_corpus

    corpus = junk_header_corpus(400, seed=0)
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=1000))
    pipe.fit(corpus.texts, corpus.labels)
    return pipe, corpus.class_names


def _load_pipeline(path: str, unsafe: bool) -> Any:
    from convscope.core.errors import InputError, UnsafeLoadError

    p = Path(path)
    if not p.exists():
        raise InputError(f"pipeline file not found: {p}")
    if not unsafe:
        raise UnsafeLoadError(
            f"{p} is a pickled Python object that could run code when loaded; pass --unsafe-load "
            "if you trust its source"
        )
    import joblib  # type: ignore[import-untyped]

    obj = joblib.load(p)  # sklearn ships joblib
    if not hasattr(obj, "predict_proba"):
        raise InputError(f"{p} holds a {type(obj).__name__} without predict_proba")
    return obj


def cmd_lime_text(args: argparse.Namespace) -> int:
    """LIME for a text classifier: word weights as HTML/JSON"""
    from convscope.core.errors import InputError
    from convscope.core.io import atomic_write
    from convscope.data.toydata import junk_header_corpus
    from convscope.methods.attribution.lime_text import explain_text

    out = check_out(args.output, (".html", ".json"))
    if args.text is not None and args.text_file is not None:
        raise InputError("give the text or --text-file, not both")
    if args.text_file is not None:
        text = Path(args.text_file).read_text(encoding="utf-8")
    elif args.text is not None:
        text = args.text
    elif args.pipeline is None:
        text = junk_header_corpus(2, seed=7).texts[1]  # a class-1 demo document
    else:
        raise InputError("give a text to explain (or --text-file)")
    if args.pipeline is not None:
        model = _load_pipeline(args.pipeline, args.unsafe_load)
        names = args.class_names
    else:
        model, demo_names = _demo_pipeline()
        names = args.class_names or demo_names  # stated names are used (and checked), never dropped
    e = explain_text(model.predict_proba, text, target=parse_target(args.target), class_names=names,
                     n_samples=args.samples, seed=args.seed)
    if out.suffix.lower() == ".json":
        e.save(out)
    else:  # a whole page, so the browser reads the text as UTF-8
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>convscope LIME text"
                "</title></head><body>" + e.to_html(k=args.top) + "</body></html>\n")
        atomic_write(out, lambda f: f.write(page.encode()))
    top = ", ".join(f"{w} {v:+.3f}" for w, v in e.top(5))
    print(f"{out}  {e.class_names[e.target]} p={e.probabilities[e.target]:.3f}  top words: {top}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``lime-text``."""
    s = add_command(sub, "lime-text", cmd_lime_text)
    s.add_argument("text", nargs="?", default=None,
                   help="the text (default with no --pipeline: a demo newsgroup post)")
    s.add_argument("--text-file", default=None, help="read the text from this file")
    s.add_argument("--pipeline", default=None,
                   help="joblib/pickle file of an object with predict_proba(list[str]) (needs "
                   "--unsafe-load); default: a demo classifier trained on the junk-header corpus")
    s.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling the --pipeline file (trusted files only)")
    s.add_argument("--class-names", nargs="+", action=ListAction, default=None, metavar="NAME",
                   help="one name per class of the model, separated by spaces or commas")
    s.add_argument("--target", "-t", default=None, help="class index or name (default: predicted)")
    s.add_argument("--samples", type=positive_int, default=1000, help="perturbed texts (default 1000)")
    s.add_argument("--top", type=positive_int, default=10, help="words listed in the HTML (default 10)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="output .html or .json")
