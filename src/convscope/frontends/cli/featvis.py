"""CLI commands of feature visualisation: ``visualize``, ``filters``, ``activations``, ``deepdream``.

Everything is computed first and written last, atomically (``Visualization.save``); outputs are
chosen by extension: ``.png`` (a titled grid), ``.npy`` (raw images) or ``.json`` (metadata and
score history).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    add_command,
    add_model_args,
    check_out,
    finite_float,
    load_from_args,
    nonneg_float,
    parse_channels,
    positive_float,
    positive_int,
    seed_int,
)

__all__ = ["add_commands", "parse_channels"]


def _opt_args(s: argparse.ArgumentParser, steps: int) -> None:
    s.add_argument("--steps", type=positive_int, default=steps, help=f"optimisation steps (default {steps})")
    s.add_argument("--lr", type=positive_float, default=0.05, help="learning rate (default 0.05)")
    s.add_argument("--size", type=positive_int, default=None, help="image size (default: the model's input)")
    s.add_argument("--param", choices=["fft", "pixel"], default="fft", help="parameterisation")
    s.add_argument("--transforms", choices=["standard", "none"], default="standard",
                   help="random jitter/scale/rotation (default standard)")
    s.add_argument("--l2", type=nonneg_float, default=0.0, help="weight of the L2 penalty")
    s.add_argument("--tv", type=nonneg_float, default=0.0, help="weight of the total-variation penalty")
    s.add_argument("--blur-every", type=positive_int, default=None, help="blur the image every N steps")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return dict(steps=args.steps, lr=args.lr, size=args.size, param=args.param,
                transforms=args.transforms, l2=args.l2, tv=args.tv, blur_every=args.blur_every,
                seed=args.seed, progress=False if args.no_progress else None)


def _done(v: Any, out: Path) -> int:
    v.save(out)
    print(f"{out}  {len(v)} image(s): {v.titles[0]}{' ...' if len(v) > 1 else ''}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """feature visualisation: an image that maximises a class, a channel or an objective"""
    from convscope.core.errors import InputError
    from convscope.methods.featvis import visualize, visualize_class, visualize_layer

    out = check_out(args.output)
    chosen = [x is not None for x in (args.objective, args.class_, args.layer)]
    if sum(chosen) != 1:
        raise InputError("give exactly one of --objective, --class or --layer")
    lm = load_from_args(args)
    kw = _common(args)
    if args.objective is not None:
        v = visualize(lm, args.objective, batch=args.batch, **kw)
    elif args.class_ is not None:
        classes = [c.strip() for c in args.class_.split(",") if c.strip()]
        v = visualize_class(lm, classes, objective=args.class_objective, **kw)
    else:
        chans = parse_channels(args.channels)
        v = visualize_layer(lm, args.layer, chans, objective=args.unit, **kw)
    return _done(v, out)


def cmd_filters(args: argparse.Namespace) -> int:
    """the first convolution's filters as an image grid"""
    from convscope.methods.featvis import filters

    out = check_out(args.output)
    return _done(filters(load_from_args(args), args.layer, max_filters=args.max_filters), out)


def cmd_activations(args: argparse.Namespace) -> int:
    """the activation maps of a layer for one image, as a grid"""
    from convscope.methods.featvis import activation_maps

    out = check_out(args.output)
    chans = parse_channels(args.channels)
    v = activation_maps(load_from_args(args), args.image, args.layer, channels=chans,
                        max_channels=args.max_channels, normalize=args.normalize)
    return _done(v, out)


def cmd_deepdream(args: argparse.Namespace) -> int:
    """DeepDream on a photo, with octaves"""
    from convscope.methods.featvis import deepdream

    out = check_out(args.output)
    objective = args.objective
    v = deepdream(load_from_args(args), args.image, args.layer, objective=objective,
                  octaves=args.octaves, octave_scale=args.octave_scale, steps=args.steps, lr=args.lr,
                  max_side=args.max_side, seed=args.seed,
                  progress=False if args.no_progress else None)
    return _done(v, out)


def _command(sub: Any, name: str, func: Any, *, image: bool, layer: str) -> argparse.ArgumentParser:
    """A subcommand (:func:`add_command`) with what the single-model views share: the image (if
    ``image``), the model options, ``--layer`` (help ``layer``) and ``-o``."""
    s = add_command(sub, name, func)
    if image:
        s.add_argument("image", help="image file")
    add_model_args(s)
    s.add_argument("--layer", "-l", default=None, help=layer)
    s.add_argument("-o", "--output", required=True, help="output .png, .npy or .json")
    return s


def add_commands(sub: Any) -> None:
    """Register the feature-visualisation commands on the main parser's subparsers."""
    s = add_command(sub, "visualize", cmd_visualize)
    add_model_args(s)
    g = s.add_argument_group("what to visualise (one of)")
    g.add_argument("--objective", default=None, help="'layer:channel', e.g. features.10:7")
    g.add_argument("--class", dest="class_", default=None,
                   help="class index or name, or several separated by commas")
    g.add_argument("--layer", "-l", default=None, help="a layer: one image per channel (--channels)")
    s.add_argument("--channels", default=None, help="channels of --layer, e.g. 0-15 or 3,7 (default 0-15)")
    s.add_argument("--unit", choices=["channel", "neuron"], default="channel",
                   help="with --layer: whole channel (mean) or its centre neuron")
    s.add_argument("--class-objective", choices=["logit", "prob"], default="logit",
                   help="with --class: maximise the logit (Simonyan) or the softmax probability")
    s.add_argument("--batch", type=positive_int, default=None, help="images for --objective (default 1)")
    _opt_args(s, 256)
    s.add_argument("-o", "--output", required=True, help="output .png (grid), .npy or .json")

    s = _command(sub, "filters", cmd_filters, image=False, layer="a convolution (default: the first)")
    s.add_argument("--max-filters", type=positive_int, default=64)

    s = _command(sub, "activations", cmd_activations, image=True,
                 layer="layer (default: the model's default layer)")
    s.add_argument("--channels", default=None, help="e.g. 0-15 (default: the most active)")
    s.add_argument("--max-channels", type=positive_int, default=32)
    s.add_argument("--normalize", choices=["layer", "channel"], default="layer",
                   help="one colour scale for the layer, or one per channel")

    s = _command(sub, "deepdream", cmd_deepdream, image=True, layer="layer to amplify (default: the model's)")
    s.add_argument("--objective", default=None, help="'layer:channel' instead of the whole layer")
    s.add_argument("--octaves", type=positive_int, default=4)
    s.add_argument("--octave-scale", type=finite_float(1, lo_open=True), default=1.4)
    s.add_argument("--steps", type=positive_int, default=10, help="steps per octave")
    s.add_argument("--lr", type=positive_float, default=0.02)
    s.add_argument("--max-side", type=positive_int, default=512, help="shrink larger photos first")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--no-progress", action="store_true")
