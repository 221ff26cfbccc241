"""``convscope``: the command line.

Every user error prints one line, ``convscope: error: ...``, and exits with status 2, without a
traceback and without leaving a partial output file (outputs are computed first, then written
atomically).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    EXIT_USAGE,
    Parser,
    add_command,
    add_model_args,
    add_preprocessing_args,
    add_trust_args,
    emit_warnings,
    load_from_args,
    parse_options,
    parse_target,
    positive_int,
    recorded_warnings,
    seed_int,
)

__all__ = ["build_parser", "main"]

def cmd_models(args: argparse.Namespace) -> int:
    """list model specs and bundled models"""
    from convscope.models import model_specs

    for spec, desc in model_specs():
        print(f"{spec:24s} {desc}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """list attribution methods"""
    from convscope.methods.registry import list_methods

    for m in list_methods():
        flags = []
        if m.needs_layer:
            flags.append("layer")
        if m.black_box:
            flags.append("black-box")
        if m.signed:
            flags.append("signed")
        print(f"{m.name:18s} {m.family:13s} {','.join(flags):18s} {m.summary}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """list a model's layers with output shapes"""
    import torch

    from convscope.core.hooks import layer_names
    from convscope.models.forward import probe

    is_file = Path(args.model).suffix in (".safetensors", ".pt", ".pth", ".bin")
    if str(args.weights).lower() == "none" and is_file:
        args.weights = "default"  # the model is a weights file: load it (shapes do not depend on it)
    lm = load_from_args(args)
    shapes: dict[str, str] = {}
    for name, out in probe(lm.model, lm.preprocessing, "*")[1]:
        if isinstance(out, torch.Tensor):
            shapes.setdefault(name, "x".join(str(s) for s in out.shape[1:]))
    modules = dict(lm.model.named_modules())
    for name in layer_names(lm.model):
        mod = modules[name]
        mark = "  (default layer)" if name == lm.default_layer else ""
        print(f"{name:40s} {type(mod).__name__:22s} {shapes.get(name, '-')}{mark}")
    return 0


def _methods_arg(text: str) -> list[str]:
    """``--method a,b,c``: registered method names, checked one by one."""
    from convscope.methods.registry import method_names

    names = [m.strip() for m in text.split(",") if m.strip()]
    known = method_names()
    bad = [m for m in names if m not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(bad) or repr(text)}; choose from {', '.join(known)}")
    return names


def cmd_explain(args: argparse.Namespace) -> int:
    """explain predictions on images; writes labelled figures (PNG), .npy maps or .json"""
    from convscope.core.errors import InputError
    from convscope.core.results import Explanation
    from convscope.methods.explain import explain
    from convscope.methods.grids import explain_classes, explain_methods
    from convscope.methods.registry import check_method_options, get_method

    out = Path(args.output)
    many = len(args.images) > 1
    methods = args.method
    if many and out.suffix:
        raise InputError(f"{len(args.images)} images need an output folder, not the file {out}")
    if not many and out.suffix.lower() not in (".png", ".npy", ".json"):
        raise InputError(f"-o {out}: give a .png, .npy or .json file name")
    if args.compare is not None and len(methods) > 1:
        raise InputError("--compare explains several classes with one method; give one --method")
    if args.bare and (args.compare is not None or len(methods) > 1):
        raise InputError("--bare writes one method's overlay; drop it for a grid")
    options = dict(parse_options(args.option))
    for m in methods:
        check_method_options(get_method(m), options)  # before the model loads
    lm = load_from_args(args)
    target = parse_target(args.target)
    kw = dict(batch_size=args.batch_size, seed=args.seed)
    results = []
    for img in args.images:  # read and explain everything before writing anything
        if args.compare is not None:
            spec = args.compare.strip().lower()
            if spec.startswith("top") and spec[3:].isdigit():
                r: Any = explain_classes(lm, img, topk=int(spec[3:]), method=methods[0], layer=args.layer,
                                         **kw, **options)
            else:
                classes = [parse_target(c.strip()) for c in args.compare.split(",") if c.strip()]
                r = explain_classes(lm, img, classes=classes, method=methods[0], layer=args.layer,
                                    **kw, **options)
            title = f"{methods[0]} for {', '.join(r._label(i) for i in range(len(r.panels)))}"
        elif len(methods) > 1:
            r = explain_methods(lm, img, methods, target=target, layer=args.layer,
                                options={m: options for m in methods} if options else None, **kw)
            title = f"{', '.join(methods)}: {r.panels[0].title(0).split(': ', 1)[-1]}"
        else:
            r = explain(lm, img, method=methods[0], target=target, layer=args.layer, **kw, **options)
            title = r.title(0)
        results.append((img, r, title))
    for img, r, title in results:
        name = "-".join(methods) if args.compare is None else f"{methods[0]}-classes"
        path = out if not many else out / f"{Path(img).stem}_{name}.png"
        if isinstance(r, Explanation) and path.suffix.lower() == ".png" and not args.bare:
            from convscope.core.figure import figure_png
            from convscope.core.io import atomic_write

            data = figure_png(r.figure(0))
            atomic_write(path, lambda fh, data=data: fh.write(data))
        else:
            r.save(path)
        print(f"{path}  {title}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """the offline demo report on the bundled models"""
    from convscope.frontends.demo import run_demo

    path = run_demo(Path(args.output), n_images=args.images)
    print(f"report written to {path.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from convscope.methods.registry import method_names

    p = Parser(prog="convscope",
                description="See what a trained image classifier has learned and why it decides.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    add_command(sub, "models", cmd_models)
    add_command(sub, "methods", cmd_methods)
    s = add_command(sub, "layers", cmd_layers)
    s.add_argument("model", help="model spec")
    s.add_argument("--weights", default="none",
                   help="weights to load (default: none, shapes do not depend on them)")
    s.add_argument("--arch", default=None)
    s.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling arbitrary objects from .pt files (trusted files only)")
    add_trust_args(s)
    s.add_argument("--model-output", default=None, metavar="NAME",
                   help="which output holds the class scores (see `convscope explain --help`)")
    add_preprocessing_args(s)

    s = add_command(sub, "explain", cmd_explain)
    s.add_argument("images", nargs="+", help="image files")
    add_model_args(s)
    s.add_argument("--method", default=["saliency"], type=_methods_arg, metavar="METHOD[,METHOD...]",
                   help="one method, or several separated by commas for a side-by-side figure; one of: "
                   + ", ".join(method_names()))
    s.add_argument("--target", "-t", default=None,
                   help="class index or name, top2/top3..., or a contrast a-vs-b (3-vs-8, pred-vs-top2: "
                   "why a rather than b); default: predicted class")
    s.add_argument("--compare", default=None, metavar="topK|A,B,...",
                   help="explain several classes side by side on one colour scale: the K most probable "
                   "(top4) or a list of classes or contrasts (3,8,3-vs-8)")
    s.add_argument("--bare", action="store_true",
                   help="write the bare map overlay instead of the labelled figure (input, map, colour "
                   "bar, method, layer, class and probability)")
    s.add_argument("--layer", "-l", default=None, help="layer for layer methods (default: model's)")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option, repeatable (e.g. --option steps=64)")
    s.add_argument("-o", "--output", required=True,
                   help="output .png/.npy/.json for one image, a folder for several")

    s = add_command(sub, "demo", cmd_demo)
    s.add_argument("-o", "--output", default="convscope-demo", help="output folder")
    s.add_argument("--images", type=positive_int, default=6, help="digits per panel")

    # Command modules of other tasks: every public module of convscope.frontends.cli with add_commands().
    for mod in pkgutil.iter_modules(_cli_path()):
        if mod.name.startswith("_") or mod.name == "main":
            continue
        module = importlib.import_module(f"convscope.frontends.cli.{mod.name}")
        add = getattr(module, "add_commands", None)
        if add is not None:
            add(sub)
    return p


def _cli_path() -> list[str]:
    from convscope.frontends import cli

    return list(cli.__path__)


def _version() -> str:
    from convscope.core.version import __version__

    return f"convscope {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (also for usage errors, ``--help`` and ``--version``)."""
    from convscope.core.errors import ConvscopeError

    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits; return its status like every other path
            return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_USAGE
        func: Callable[[argparse.Namespace], int] = args.func
        caught: list = []
        try:
            try:
                with recorded_warnings() as caught:
                    status = func(args)
            finally:  # after the recording block: re-emitting inside it would append to `caught`
                emit_warnings(caught)
        except ConvscopeError as exc:
            print(f"convscope: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("convscope: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            raise
        except OSError as exc:  # a file that cannot be read or written: one line, no traceback
            print(f"convscope: error: {_os_message(exc)}", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:  # `convscope methods | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python would flush stdout again at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return what
    if exc.filename2 is not None:
        return f"{what}: {exc.filename} -> {exc.filename2}"
    return f"{what}: {exc.filename}"


if __name__ == "__main__":
    sys.exit(main())
