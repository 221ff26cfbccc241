"""``convscope serve``: the local web app (extra ``serve``)."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from convscope.frontends.cli._common import (
    add_command,
    add_trust_args,
    emit_warnings,
    finite_float,
    integer,
    positive_float,
    recorded_warnings,
)

__all__ = ["add_commands", "bind", "cmd_serve", "serve_specs"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; uvicorn serves on it (so the port is surely free).

    Raises:
        InputError: the address does not resolve, or the port is taken or not allowed.
    """
    from convscope.core.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host}: cannot resolve it ({exc}); use an address of this machine, "
                         "e.g. 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise InputError(f"cannot listen on {_url_host(host)}:{port} ({reason}); is another server "
                         "using that port? Pick another with --port") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    """local web app: upload an image, pick model/method/target/layer, see the explanation

    Run the convscope web app. It binds 127.0.0.1 unless --host says otherwise. The page opens on the
    first --model given (repeatable); the bundled digits models are served after them unless
    --no-bundled. A model card is code, like a pickle: its Python file runs only if it lies in the
    current folder, or with --trust-card.
    """
    from convscope.core.errors import ConvscopeError

    try:
        import uvicorn
    except ImportError:
        raise ConvscopeError("the web app needs uvicorn: pip install 'convscope[serve]'") from None
    from convscope.frontends.serve.app import create_app
    from convscope.frontends.serve.audit import AuditView
    from convscope.frontends.serve.concepts import ConceptView
    from convscope.frontends.serve.engine import Engine
    from convscope.frontends.serve.limits import Limits

    limits = Limits(max_upload_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)),
                    max_pixels=max(1, int(args.max_megapixels * 1_000_000)),
                    max_queue=args.max_queue, timeout_s=args.timeout)
    specs = serve_specs(args.model, bundled=not args.no_bundled)
    view = None if args.audit is None else AuditView(args.audit, limits)  # a bad audit fails at once
    tests = None if not args.concepts else ConceptView(args.concepts)  # so does a bad concept test
    sock = bind(args.host, args.port)  # before loading models: a taken port fails at once
    try:
        caught: list = []
        try:  # what loading said comes now, before serving, not when the server stops
            with recorded_warnings() as caught:
                engine = Engine(specs, weights=args.weights, limits=limits, trust_card=args.trust_card,
                                trust_remote_code=args.trust_remote_code)
        finally:
            emit_warnings(caught)
        app = create_app(engine, allowed_hosts=args.allow_host or (), audit=view,
                         concepts=tests, atlases=args.atlas or ())
        if args.host not in _LOOPBACK:
            print(f"convscope: warning: listening on {args.host}: anyone who can reach this machine "
                  "can use the app and its CPU/GPU time; the page answers only to the host names "
                  "given with --allow-host", file=sys.stderr)
        print(f"convscope: serving {', '.join(engine.models)} at http://{_url_host(args.host)}:{args.port}/ "
              "(Ctrl+C stops)", file=sys.stderr)
        if view is not None:
            for note in (view.images_note, view.maps_note):
                if note:
                    print(f"convscope: warning: audit: {note}", file=sys.stderr)
            print(f"convscope: the audit {view.path} at http://{_url_host(args.host)}:{args.port}/audit",
                  file=sys.stderr)
        if tests is not None:
            print(f"convscope: {tests.count} concept test(s) at http://{_url_host(args.host)}:{args.port}/concepts",
                  file=sys.stderr)
        config = uvicorn.Config(app, log_level=args.log_level, workers=1)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl+C is how it stops (uvicorn re-raises it after shutdown)
            pass
    finally:
        sock.close()
    return 0


def serve_specs(models: list[str] | None, *, bundled: bool = True) -> list[str]:
    """The models ``convscope serve`` loads, in order: the user's ``--model`` specs first (the page
    opens on the first), then the bundled digits models unless ``bundled`` is false."""
    specs: list[str] = []
    for s in [*(models or []), *(("digits-cnn", "digits-cnn-cue") if bundled else ())]:
        if s not in specs:
            specs.append(s)
    return specs


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def add_commands(sub: Any) -> None:
    """Add ``convscope serve`` to the CLI."""
    s = add_command(sub, "serve", cmd_serve)
    s.add_argument("--model", "-m", action="append", default=None, metavar="SPEC",
                   help="model to serve, e.g. torchvision:resnet18 or a model card (repeatable); the page "
                   "opens on the first")
    s.add_argument("--weights", default="default",
                   help="weights for the extra models: 'default' (pretrained, needs the torch hub "
                   "cache or a download) or 'none' (random init)")
    add_trust_args(s)
    s.add_argument("--no-bundled", action="store_true",
                   help="do not serve the bundled digits models")
    s.add_argument("--audit", default=None, metavar="OUT",
                   help="also show a saved dataset audit at /audit: the folder `convscope audit -o OUT` "
                   "wrote, or its audit.json")
    s.add_argument("--concepts", nargs="+", default=None, metavar="T.json",
                   help="also show saved concept tests at /concepts (`convscope concept-test -o T.json`)")
    s.add_argument("--atlas", nargs="+", default=None, metavar="STORE",
                   help="concept atlases (`convscope atlas -o STORE`) whose reference patches the concept "
                   "relevance view /crp shows")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=integer(1, 65535), default=8000, help="port (default 8000)")
    s.add_argument("--allow-host", action="append", default=None, metavar="NAME[:PORT]",
                   help="also answer requests whose Host header is NAME (any port) or NAME:PORT, "
                   "besides 127.0.0.1, localhost, [::1] and the bound address (repeatable)")
    s.add_argument("--max-upload-mb", type=positive_float, default=10.0,
                   help="largest upload (default 10 MB)")
    s.add_argument("--max-megapixels", type=positive_float, default=24.0,
                   help="largest image in megapixels (default 24)")
    s.add_argument("--max-queue", type=integer(1, 10_000), default=8,
                   help="most requests waiting for the model at once; more get 429 (default 8)")
    s.add_argument("--timeout", type=finite_float(0, 86_400, lo_open=True), default=60.0,
                   help="seconds a request may wait plus run before it gets 503 (default 60)")
    s.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
