"""CLI commands of the synthesis tasks: ``adversarial``, ``invert``, ``texture``, ``style``.

Each command computes everything first and then writes its outputs atomically: the figure
(``-o out.png``), the raw pixels (``.npy``) or the metadata (``.json``), chosen by extension;
``--image-out`` writes the made image alone at its own resolution.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    add_command,
    add_model_args,
    check_out,
    load_from_args,
    nonneg_float,
    number_or,
    parse_target,
    positive_float,
    positive_int,
    seed_int,
)

__all__ = ["add_commands"]


def _check_image_out(path: str | None) -> Path | None:
    from convscope.core.errors import InputError

    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"--image-out {p}: give a .png file name")
    return p


def _skimage(name: str) -> Any:
    """``skimage:NAME`` reads one of scikit-image's bundled sample images (e.g. skimage:chelsea)."""
    from convscope.core.errors import ImageLoadError

    if not name.startswith("skimage:"):
        return name
    import skimage.data

    key = name.split(":", 1)[1]
    func = getattr(skimage.data, key, None)
    if func is None or not callable(func):
        raise ImageLoadError(f"scikit-image has no sample image {key!r} (try chelsea, coffee, "
                             "astronaut, brick, grass, gravel)")
    try:
        return func()
    except Exception as exc:  # not bundled offline
        raise ImageLoadError(f"scikit-image could not provide {key!r}: {exc}") from None


def _style_model(args: argparse.Namespace) -> Any:
    if args.model == "vgg":
        import sys
        import warnings

        from convscope.methods.synthesis import style_model
        from convscope.models import load_model

        w = str(args.weights).lower()
        arch = args.arch or "vgg19"
        if w not in ("default", "none"):  # a local weights file for the VGG architecture
            return load_model(f"torchvision:{arch}", weights=args.weights, unsafe=args.unsafe_load)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lm = style_model(arch, pretrained=None if w == "default" else False)
        for c in caught:  # one line, not a Python warning with a source excerpt
            print(f"convscope: note: {c.message}", file=sys.stderr)
        return lm
    return load_from_args(args)


def cmd_adversarial(args: argparse.Namespace) -> int:
    """adversarial examples (FGSM, PGD) and fooling images"""
    from convscope.core.errors import InputError
    from convscope.methods.synthesis import attack, fooling_image

    out = check_out(args.output)
    lm = load_from_args(args)
    target = parse_target(args.target)
    eps_v = args.eps if args.eps is not None else ("inf" if args.method == "fooling" else 0.03)
    eps = float("inf") if eps_v in ("inf", "none") else float(eps_v)
    common = dict(eps=eps,
                  norm=args.norm, steps=args.steps, step_size=args.step_size, loss=args.loss,
                  seed=args.seed, batch_size=args.batch_size, progress=None)
    if args.method == "fooling":
        if target is None:
            raise InputError("a fooling image needs --target CLASS")
        img = _skimage(args.images[0]) if args.images else None
        if args.images and len(args.images) > 1:
            raise InputError("a fooling image starts from noise or from one image")
        res = fooling_image(lm, target, image=img, n=args.n, **common)
    else:
        if not args.images:
            raise InputError("give at least one image to attack")
        imgs = [_skimage(i) for i in args.images]
        if args.method == "fgsm":
            common.update(steps=1, step_size=common["eps"])
        res = attack(lm, imgs, target=target, method=args.method,
                     random_start=args.method == "pgd" and not args.no_random_start, **common)
    res.save(out)
    print(f"{out}  {res.summary()}")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    """reconstruct an image from a layer's features (Mahendran-Vedaldi); several layers give a
    strip
    """
    from convscope.methods.synthesis import inversion_strip, invert

    out = check_out(args.output)
    lm = load_from_args(args)
    img = _skimage(args.image)
    kw = dict(steps=args.steps, lr=args.lr, tv_weight=args.tv_weight, norm_weight=args.norm_weight,
              param=args.param, seed=args.seed)
    if args.layer and len(args.layer) == 1:
        res = invert(lm, img, args.layer[0], **kw)
    else:
        res = inversion_strip(lm, img, args.layer or None, n_layers=args.n_layers, **kw)
    res.save(out)
    ssims = res.diagnostics.get("ssim") or []
    print(f"{out}  inversion at {', '.join(res.layers)}; SSIM "
          f"{', '.join(f'{s:.3f}' for s in ssims)}")
    return 0


def cmd_texture(args: argparse.Namespace) -> int:
    """texture synthesis: Gram matrices (Gatys) or Efros-Leung"""
    from convscope.methods.synthesis import efros_leung, texture

    out = check_out(args.output)
    image_out = _check_image_out(args.image_out)
    src = _skimage(args.source)
    if args.method == "efros-leung":
        res = efros_leung(src, args.size, window=args.window, source_size=args.source_size,
                          seed=args.seed)
        msg = f"Efros-Leung {args.size}px, mean match error {res.diagnostics['mean_match_error']:.4g}"
    else:
        lm = _style_model(args)
        res = texture(lm, src, layers=args.layer or None, size=args.size,
                      source_size=args.source_size, steps=args.steps, lr=args.lr, param=args.param,
                      seed=args.seed)
        msg = (f"Gram texture at {', '.join(res.layers)}; loss {res.diagnostics['initial_loss']:.4g}"
               f" -> {res.diagnostics['final_loss']:.4g}")
    res.save(out)
    if image_out is not None:
        res.save_image(image_out)
    print(f"{out}  {msg}")
    return 0


def cmd_style(args: argparse.Namespace) -> int:
    """style transfer (Gatys et al.)"""
    from convscope.methods.synthesis import style_transfer

    out = check_out(args.output)
    image_out = _check_image_out(args.image_out)
    lm = _style_model(args)
    res = style_transfer(lm, _skimage(args.content), _skimage(args.style),
                         content_layers=args.content_layer or None, style_layers=args.style_layer or None,
                         content_weight=args.content_weight, style_weight=args.style_weight,
                         tv_weight=args.tv_weight, size=args.size, style_size=args.style_size,
                         init=args.init, steps=args.steps, lr=args.lr, seed=args.seed)
    res.save(out)
    if image_out is not None:
        res.save_image(image_out)
    d = res.diagnostics
    print(f"{out}  style transfer; loss {d['initial_loss']:.4g} -> {d['final_loss']:.4g} "
          f"(content {d['final_content']:.4g}, style {d['final_style']:.4g})")
    return 0


def _vgg_default(p: argparse.ArgumentParser) -> None:
    for a in p._actions:
        if a.dest == "model":
            a.default = "vgg"
            a.help = ("'vgg' (default: VGG, --arch vgg19 or vgg16; pretrained if its weights are in "
                      "the torch cache, else random weights), or any model spec (e.g. digits-cnn)")


def add_commands(sub: Any) -> None:
    """Register ``adversarial``, ``invert``, ``texture`` and ``style``."""
    img_help = "image file, or skimage:NAME for a scikit-image sample (chelsea, coffee, brick...)"

    s = add_command(sub, "adversarial", cmd_adversarial)
    s.add_argument("images", nargs="*", help=img_help + "; none with --method fooling: from noise")
    add_model_args(s)
    s.add_argument("--method", choices=("fgsm", "pgd", "bim", "fooling"), default="pgd",
                   help="fgsm: one step; pgd: random start + steps; bim: iterative FGSM; "
                   "fooling: reach --target from noise (or the image)")
    s.add_argument("--target", "-t", default=None,
                   help="class index or name to reach (targeted); default: untargeted")
    s.add_argument("--eps", default=None, type=number_or(nonneg_float, "inf", "none"),
                   help="budget in pixel units (pixels in [0, 1]); 'inf' for none (default 0.03; "
                   "fooling: inf)")
    s.add_argument("--norm", choices=("linf", "l2"), default="linf")
    s.add_argument("--steps", type=positive_int, default=20)
    s.add_argument("--step-size", type=positive_float, default=None)
    s.add_argument("--loss", choices=("ce", "margin"), default="ce")
    s.add_argument("--no-random-start", action="store_true")
    s.add_argument("--n", type=positive_int, default=1, help="fooling images from noise")
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="figure .png, pixels .npy or .json")

    s = add_command(sub, "invert", cmd_invert)
    s.add_argument("image", help=img_help)
    add_model_args(s)
    s.add_argument("--layer", "-l", action="append", default=[],
                   help="layer (repeatable); default: a strip from shallow to deep")
    s.add_argument("--n-layers", type=positive_int, default=5)
    s.add_argument("--steps", type=positive_int, default=200)
    s.add_argument("--lr", type=positive_float, default=0.05)
    s.add_argument("--tv-weight", type=nonneg_float, default=0.5)
    s.add_argument("--norm-weight", type=nonneg_float, default=0.0)
    s.add_argument("--param", choices=("pixel", "fft"), default="pixel")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="figure .png, pixels .npy or .json")

    s = add_command(sub, "texture", cmd_texture)
    s.add_argument("source", help=img_help)
    add_model_args(s)
    _vgg_default(s)
    s.add_argument("--method", choices=("gram", "efros-leung"), default="gram")
    s.add_argument("--layer", "-l", action="append", default=[], help="Gram layer (repeatable)")
    s.add_argument("--size", type=positive_int, default=64, help="output side in pixels")
    s.add_argument("--source-size", type=positive_int, default=64,
                   help="shorter side the source is resized to (default 64)")
    s.add_argument("--window", type=positive_int, default=11, help="Efros-Leung window (odd)")
    s.add_argument("--steps", type=positive_int, default=300)
    s.add_argument("--lr", type=positive_float, default=0.05)
    s.add_argument("--param", choices=("pixel", "fft"), default="pixel")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="figure .png, pixels .npy or .json")
    s.add_argument("--image-out", default=None, help="also write the texture alone (.png)")

    s = add_command(sub, "style", cmd_style)
    s.add_argument("content", help=img_help)
    s.add_argument("style", help=img_help)
    add_model_args(s)
    _vgg_default(s)
    s.add_argument("--content-layer", action="append", default=[])
    s.add_argument("--style-layer", action="append", default=[])
    s.add_argument("--content-weight", type=nonneg_float, default=1.0)
    s.add_argument("--style-weight", type=nonneg_float, default=10.0)
    s.add_argument("--tv-weight", type=nonneg_float, default=0.0)
    s.add_argument("--size", type=positive_int, default=128, help="content shorter side")
    s.add_argument("--style-size", type=positive_int, default=128, help="style shorter side")
    s.add_argument("--init", choices=("content", "noise"), default="content")
    s.add_argument("--steps", type=positive_int, default=200)
    s.add_argument("--lr", type=positive_float, default=0.03)
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="figure .png, pixels .npy or .json")
    s.add_argument("--image-out", default=None, help="also write the stylised image alone (.png)")
