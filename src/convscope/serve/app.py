"""The FastAPI application: routes that translate HTTP to :class:`~convscope.serve.engine.Engine`.

Routes:

* ``GET /``, ``GET /static/<name>``: the page, its script and style, read from the package at
  start-up into memory (a request names a file in that table, never a path).
* ``GET /api/info``: models (classes, layers), methods (from the registry), samples, limits.
* ``POST /api/explain`` (multipart form): ``model``, ``method``, ``target``, ``layer``, ``fast``,
  ``topk`` and either ``file`` (an image upload) or ``sample`` (an index).
* ``POST /api/activations``: ``model``, ``layer``, ``n`` and ``file`` or ``sample``: the most
  active channels of a layer (with channel visualisations when :mod:`convscope.featvis` exists).

Errors come back as JSON ``{"error": "..."}``: 400 for a bad request, 413 for an upload over
the size or pixel limit, 415 for something that is not an accepted image.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at run time,
# and ``UploadFile`` is imported lazily inside create_app().
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from ..errors import ConvscopeError
from .engine import Engine, Limits, TooLarge, UnsupportedImage

__all__ = ["create_app", "running"]

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("convscope.serve").joinpath("static")
    out = {}
    for item in root.iterdir():
        name = item.name
        ext = name[name.rfind("."):] if "." in name else ""
        if item.is_file() and ext in _STATIC_TYPES:
            out[name] = (item.read_bytes(), _STATIC_TYPES[ext])
    return out


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413), before or while reading.

    Also adds the security headers to every response.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.engine: Engine | None = None
        self.fastapi: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        started = False

        async def send_wrapper(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        async def reject() -> None:
            import json

            body = json.dumps({"error": f"the request is over the upload limit of {self.limit} "
                               "bytes"}).encode()
            await send_wrapper({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                await reject()
                return
        seen = 0

        class _Over(Exception):
            pass

        async def receive_wrapper() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _Over
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _Over:
            if not started:
                await reject()


def create_app(engine: Engine | None = None, **engine_kw: Any) -> Any:
    """Build the ASGI app around ``engine`` (default: ``Engine(**engine_kw)``).

    The FastAPI app is wrapped in a request-body limit; the wrapper keeps ``.engine`` and
    ``.fastapi``. Serve it with uvicorn (``convscope serve``).

    Raises:
        ConvscopeError: FastAPI or python-multipart is not installed (extra ``serve``).
    """
    try:
        from fastapi import FastAPI, File, Form, UploadFile
        from fastapi.responses import JSONResponse, Response
    except ImportError:
        raise ConvscopeError(
            "the web app needs FastAPI and uvicorn: pip install 'convscope[serve]'"
        ) from None
    import importlib.util

    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec(
        "multipart"
    ) is None:
        raise ConvscopeError(
            "the web app needs python-multipart: pip install 'convscope[serve]'"
        ) from None

    eng = engine or Engine(**engine_kw)
    limits: Limits = eng.limits
    static = _static_files()
    app = FastAPI(title="convscope", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = eng

    @app.exception_handler(ConvscopeError)
    async def _convscope_error(_request: Any, exc: ConvscopeError) -> Any:
        status = 413 if isinstance(exc, TooLarge) else 415 if isinstance(exc, UnsupportedImage) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    def _page(name: str) -> Any:
        try:
            body, media = static[name]
        except KeyError:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(body, media_type=media, headers={"cache-control": "no-cache"})

    @app.get("/")
    def index() -> Any:
        return _page("index.html")

    @app.get("/static/{name}")
    def static_file(name: str) -> Any:
        return _page(name)

    @app.get("/api/info")
    def info() -> Any:
        return eng.info()

    def _image(file: UploadFile | None, sample: str | None) -> Any:
        if file is not None and (file.filename or file.size):
            ctype = (file.content_type or "").lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise UnsupportedImage(f"only images are accepted, not {ctype}")
            data = file.file.read(limits.max_upload_bytes + 1)
            return eng.decode(data)
        if sample not in (None, ""):
            try:
                index = int(str(sample))
            except ValueError:
                raise UnsupportedImage(f"sample must be a number, got {sample!r}") from None
            return eng.sample(index)
        raise UnsupportedImage("send an image file or pick a sample")

    @app.post("/api/explain")
    def explain_route(
        model: str = Form(...),
        method: str = Form(...),
        target: str = Form(""),
        layer: str = Form(""),
        fast: bool = Form(False),
        topk: int = Form(5),
        sample: str = Form(""),
        file: UploadFile | None = File(None),
    ) -> Any:
        img = _image(file, sample)
        return eng.explain(model, method, img, target=target, layer=layer or None, fast=fast,
                           topk=topk)

    @app.post("/api/activations")
    def activations_route(
        model: str = Form(...),
        layer: str = Form(...),
        n: int = Form(16),
        vis: bool = Form(False),
        sample: str = Form(""),
        file: UploadFile | None = File(None),
    ) -> Any:
        img = _image(file, sample)
        return eng.activations(model, layer, img, n=n, vis=vis)

    @app.get("/api/health")
    def health() -> Any:
        return {"ok": True}

    wrapped = _BodyLimit(app, limits.max_upload_bytes + 64 * 1024)  # + room for the form fields
    wrapped.engine = eng
    wrapped.fastapi = app
    return wrapped


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread for the ``with`` block; yields its URL.

    ``port=0`` picks a free port. Used by the tests and handy in notebooks.

    Raises:
        ConvscopeError: the server did not start within ``timeout`` seconds.
    """
    import threading
    import time

    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="convscope-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConvscopeError(f"the web app did not start on {host}:{port}")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{sock[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
