"""``convscope serve``: the local web app (extra ``serve``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands", "cmd_serve"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import ConvscopeError, InputError

    try:
        import uvicorn
    except ImportError:
        raise ConvscopeError("the web app needs uvicorn: pip install 'convscope[serve]'") from None
    from ..serve.app import create_app
    from ..serve.engine import Engine, Limits

    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise InputError("--max-upload-mb and --max-megapixels must be positive")
    specs = ["digits-cnn", "digits-cnn-cue"] if args.no_bundled is False else []
    for s in args.model or []:
        if s not in specs:
            specs.append(s)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_pixels=int(args.max_megapixels * 1_000_000))
    engine = Engine(specs, weights=args.weights, limits=limits)
    app = create_app(engine)
    if args.host not in _LOOPBACK:
        print(f"convscope: warning: listening on {args.host}: anyone who can reach this machine "
              "can use the app and its CPU/GPU time", file=sys.stderr)
    print(f"convscope: serving {', '.join(engine.models)} at http://{_url_host(args.host)}:{args.port}/ "
          "(Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def add_commands(sub: Any) -> None:
    """Add ``convscope serve`` to the CLI."""
    s = sub.add_parser(
        "serve",
        help="local web app: upload an image, pick model/method/target/layer, see the explanation",
        description="Run the convscope web app. It binds 127.0.0.1 unless --host says otherwise. "
        "The bundled digits models are always served; add others with --model (repeatable).",
    )
    s.add_argument("--model", "-m", action="append", default=None, metavar="SPEC",
                   help="extra model to serve, e.g. torchvision:resnet18 (repeatable)")
    s.add_argument("--weights", default="default",
                   help="weights for the extra models: 'default' (pretrained, needs the torch hub "
                   "cache or a download) or 'none' (random init)")
    s.add_argument("--no-bundled", action="store_true",
                   help="do not serve the bundled digits models")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload (default 10 MB)")
    s.add_argument("--max-megapixels", type=float, default=24.0,
                   help="largest image in megapixels (default 24)")
    s.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=cmd_serve)
