"""The FastAPI application: routes that translate HTTP to :class:`~convscope.frontends.serve.engine.Engine`.

Routes:

* ``GET /``, ``GET /static/<name>``: the page, its script and style, read from the package at
  start-up into memory (a request names a file in that table, never a path); the pages are
  rendered then from one Jinja2 shell (:mod:`.pages`).
* ``GET /api/info``: models (classes, layers), methods (from the registry), samples, limits.
* ``GET /api/methods``: every registered method with its option specs (type, default, range,
  choices, doc), which the page builds its options form from.
* ``POST /api/explain`` (multipart form): ``model``, ``method``, ``target`` (a class, or a contrast
  ``"a-vs-b"`` / ``"pred-vs-top2"``), ``layer``, ``fast``, ``topk``, ``options`` (a JSON object of
  method options, checked by the registry) and either ``file`` (an image upload) or ``sample``
  (an index). The answer carries ``state`` (the view as a URL query) and ``downloads``.
* ``POST /api/grid``: the same fields plus ``kind`` (``methods``: ``methods``, a comma-separated
  list, side by side; ``classes``: the ``topk`` most probable classes on one colour scale).
* ``GET /api/result/{id}.png|npy|json``: a kept result's labelled figure, raw maps or record.
* ``POST /api/activations``: ``model``, ``layer``, ``n`` and ``file`` or ``sample``: the most
  active channels of a layer (with channel visualisations when :mod:`convscope.methods.featvis` exists).
* ``GET /trust``, ``POST /api/trust`` (``model``, ``methods``, ``metrics`` or ``families``,
  ``samples`` or ``files``), ``GET /api/trust/{id}``: "Which method to trust": the metric catalogue
  on the current model and the app's sample images (or uploaded images) as a background job, polled
  for its progress and then its table (:mod:`convscope.frontends.serve.trust`).
* ``GET /crp``, ``POST /api/crp`` (``model``, ``target``, ``layer``, ``k``, ``composite`` and ``file``
  or ``sample``), ``GET /api/crp/atlases``: the concepts (channels) behind one decision, with
  conditional heatmaps and atlas reference patches (:mod:`convscope.frontends.serve.crp`).
* ``GET /audit``, ``GET /api/audit``, ``GET /api/audit/item/{index}.png``,
  ``GET /api/audit/cluster/{class}/{cluster}.png``, ``GET /api/audit/intervention/{class}/{cluster}.png``
  (a suspect's before/after images): a saved dataset audit to click through
  (``create_app(..., audit=OUT)``; see :mod:`convscope.frontends.serve.audit`). Without one, the API
  answers 404.

Every error comes back as JSON ``{"error": "..."}``: 400 for a bad request (a missing or
malformed field included), 403 for a request from another web page or for another host name, 404
for an unknown path or a result no longer kept, 413 for an upload over the size or pixel limit,
415 for something that is not an accepted image, 429 (with ``Retry-After``) when the job queue
is full and 503 (with ``Retry-After``) when a request ran past its time limit.

Requests from other web pages are refused (:class:`._guard.Guard`): the ``Host`` header must name this
app (a loopback name or the bound address, on the app's port, or an allowed host), and an
``Origin`` header (or, without one, a ``Referer``) must be the app's own origin. A browser always
sends ``Origin`` on a cross-origin POST; clients that send neither (curl, scripts) are let through.
The pages and their files (``GET /``, ``GET /audit``, ``GET /static/...``) skip the
``Origin``/``Referer`` check, so a link from another site still opens the app.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at run time,
# and ``UploadFile`` is imported lazily inside create_app().
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from convscope.core.errors import ConvscopeError, InputError
from convscope.core.validate import split_names
from convscope.frontends.serve._guard import Guard
from convscope.frontends.serve._present import method_catalogue, parse_options
from convscope.frontends.serve.audit import AuditView, NotInAudit
from convscope.frontends.serve.concepts import ConceptView, NotInConcepts
from convscope.frontends.serve.crp import CrpView
from convscope.frontends.serve.engine import Busy, Engine, NotFound
from convscope.frontends.serve.limits import Limits, TooLarge, UnsupportedImage
from convscope.frontends.serve.pages import render_pages
from convscope.frontends.serve.trust import TrustJobs

__all__ = ["create_app", "running"]

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("convscope.frontends.serve").joinpath("static")
    out = {}
    for item in root.iterdir():
        name = item.name
        ext = name[name.rfind("."):] if "." in name else ""
        if item.is_file() and ext in _STATIC_TYPES:
            out[name] = (item.read_bytes(), _STATIC_TYPES[ext])
    out.update((name, (page, _STATIC_TYPES[".html"])) for name, page in render_pages().items())
    return out


def create_app(engine: Engine | None = None, *, allowed_hosts: Iterable[str] = (),
               audit: AuditView | str | os.PathLike | None = None,
               concepts: ConceptView | None = None, atlases: Iterable[str | os.PathLike] = (),
               **engine_kw: Any) -> Any:
    """Build the ASGI app around ``engine`` (default: ``Engine(**engine_kw)``).

    The FastAPI app is wrapped in :class:`._guard.Guard` (host and origin checks, request-body limit,
    security headers); the wrapper keeps ``.engine`` and ``.fastapi``. Serve it with uvicorn
    (``convscope serve``).

    Args:
        engine: the engine; default ``Engine(**engine_kw)``.
        allowed_hosts: host names (``name`` on any port, or ``name:port``) accepted in the
            ``Host`` header besides the loopback names and the bound address, on the app's port.
        audit: a saved audit to serve at ``/audit``: an :class:`~convscope.frontends.serve.audit.AuditView`,
            or the folder ``convscope audit -o OUT`` wrote (or its ``audit.json``).
        concepts: saved concept tests to serve at ``/concepts`` (:mod:`convscope.frontends.serve.concepts`).
        atlases: concept atlas stores whose reference patches the concept-relevance view ``/crp``
            shows (:mod:`convscope.frontends.serve.crp`).

    Raises:
        ConvscopeError: FastAPI or python-multipart is not installed (extra ``serve``), an
            allowed host is malformed, or ``audit`` is not a readable audit.
    """
    try:
        from fastapi import FastAPI, File, Form, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from starlette.exceptions import HTTPException
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
    view = audit if audit is None or isinstance(audit, AuditView) else AuditView(audit, limits)
    static = _static_files()
    crp = CrpView(eng, list(atlases))
    app = FastAPI(title="convscope", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = eng

    @app.exception_handler(ConvscopeError)
    async def _convscope_error(_request: Any, exc: ConvscopeError) -> Any:
        if isinstance(exc, Busy):
            return JSONResponse({"error": str(exc)}, status_code=exc.status,
                                headers={"retry-after": str(exc.retry_after)})
        status = (413 if isinstance(exc, TooLarge) else 415 if isinstance(exc, UnsupportedImage)
                  else 404 if isinstance(exc, (NotInAudit, NotFound, NotInConcepts)) else 400)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Any, exc: RequestValidationError) -> Any:
        return JSONResponse({"error": _validation_message(exc.errors())}, status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Any, exc: HTTPException) -> Any:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

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
        return {**eng.info(), "audit": view is not None, "concepts": concepts is not None}

    @app.get("/concepts")
    def concepts_page() -> Any:
        return _page("concepts.html")

    @app.get("/api/concepts")
    def concepts_data() -> Any:
        if concepts is None:
            raise NotInConcepts("no concept test is loaded; start the app with "
                                "convscope serve --concepts T.json")
        return Response(concepts.json, media_type="application/json")

    def _audit() -> AuditView:
        if view is None:
            raise NotInAudit("no audit is loaded; start the app with convscope serve --audit OUT")
        return view

    @app.get("/audit")
    def audit_page() -> Any:
        return _page("audit.html")

    @app.get("/api/audit")
    def audit_data() -> Any:
        return Response(_audit().json, media_type="application/json")

    @app.get("/api/audit/item/{index}.png")
    def audit_item(index: str) -> Any:
        return Response(_audit().item_png(index), media_type="image/png",
                        headers={"cache-control": "no-cache"})

    @app.get("/api/audit/cluster/{class_index}/{cluster_id}.png")
    def audit_cluster(class_index: str, cluster_id: str) -> Any:
        return Response(_audit().cluster_png(class_index, cluster_id), media_type="image/png",
                        headers={"cache-control": "no-cache"})

    @app.get("/api/audit/intervention/{class_index}/{cluster_id}.png")
    def audit_intervention(class_index: str, cluster_id: str) -> Any:
        from convscope.frontends.serve._audit_intervention import intervention_png

        return Response(intervention_png(_audit(), class_index, cluster_id), media_type="image/png",
                        headers={"cache-control": "no-cache"})

    def _image(file: UploadFile | None, sample: str | None, model: str) -> tuple[Any, int | None]:
        """The request's image, and its sample index (None for an upload)."""
        if file is not None and (file.filename or file.size):
            ctype = (file.content_type or "").lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise UnsupportedImage(f"only images are accepted, not {ctype}")
            data = file.file.read(limits.max_upload_bytes + 1)
            return eng.decode(data), None
        if sample not in (None, ""):
            try:
                index = int(str(sample))
            except ValueError:
                raise InputError(f"sample must be a number, got {sample!r}") from None  # a form field: 400
            return eng.sample(index, model), index
        raise InputError("send an image file or pick a sample")  # a missing field, not a media type: 400

    @app.get("/api/methods")
    def methods_route() -> Any:
        return {"methods": method_catalogue()}

    def _view_route(grid: bool) -> Any:
        """The handler of ``/api/explain`` (one result) or ``/api/grid`` (``kind``: a grid)."""

        def route(
            model: str = Form(...),
            method: str = Form(...),
            kind: str = Form("methods" if grid else "single"),
            methods: str = Form(""),
            target: str = Form(""),
            layer: str = Form(""),
            fast: bool = Form(False),
            topk: int | None = Form(None),
            options: str = Form(""),
            sample: str = Form(""),
            file: UploadFile | None = File(None),
        ) -> Any:
            deadline = time.monotonic() + limits.timeout_s
            img, index = _image(file, sample, model)
            common = {"target": target, "layer": layer or None, "fast": fast, "topk": topk,
                      "options": parse_options(options), "sample": index, "deadline": deadline}
            if not grid:
                return eng.explain(model, method, img, **common)
            return eng.grid(model, img, kind=kind, method=method, methods=split_names(methods), **common)

        return route

    app.post("/api/explain")(_view_route(grid=False))
    app.post("/api/grid")(_view_route(grid=True))

    @app.get("/api/result/{name}")
    def result_route(name: str) -> Any:
        rid, _, fmt = name.rpartition(".")
        data, media = eng.download(rid, fmt)
        return Response(data, media_type=media, headers={
            "cache-control": "no-store",
            "content-disposition": f'attachment; filename="convscope-{rid[:8]}.{fmt}"'})

    @app.post("/api/activations")
    def activations_route(
        model: str = Form(...),
        layer: str = Form(...),
        n: int = Form(16),
        vis: bool = Form(False),
        sample: str = Form(""),
        file: UploadFile | None = File(None),
    ) -> Any:
        deadline = time.monotonic() + limits.timeout_s
        img, _ = _image(file, sample, model)
        return eng.activations(model, layer, img, n=n, vis=vis, deadline=deadline)

    trust = TrustJobs(eng)

    @app.get("/trust")
    def trust_page() -> Any:
        return _page("trust.html")

    @app.post("/api/trust")
    def trust_start(
        model: str = Form(...),
        methods: str = Form(""),
        metrics: str = Form(""),
        families: str = Form(""),
        samples: str = Form(""),
        files: list[UploadFile] | None = File(None),
    ) -> Any:
        uploads = [f for f in (files or []) if (f.filename or f.size)]
        trust.check_count(len(uploads))  # before decoding any of them
        pics = [img for f in uploads for img, _ in [_image(f, None, model)]]
        return trust.start(model, methods=methods, metrics=metrics, families=families, samples=samples,
                           images=pics)

    @app.get("/api/trust/{jid}")
    def trust_status(jid: str) -> Any:
        return trust.status(jid)
    @app.get("/crp")
    def crp_page() -> Any:
        return _page("crp.html")

    @app.get("/api/crp/atlases")
    def crp_atlases() -> Any:
        return {"atlases": crp.info()}

    @app.post("/api/crp")
    def crp_route(
        model: str = Form(...),
        target: str = Form(""),
        layer: str = Form(""),
        k: int = Form(4),
        composite: str = Form("epsilon_plus_flat"),
        sample: str = Form(""),
        file: UploadFile | None = File(None),
    ) -> Any:
        deadline = time.monotonic() + limits.timeout_s
        img, _ = _image(file, sample, model)
        return crp.run(model, img, target=target, layer=layer, k=k, composite=composite, deadline=deadline)

    @app.get("/api/health")
    def health() -> Any:
        return {"ok": True}

    # + room for the form fields
    wrapped = Guard(app, limits.max_upload_bytes + 64 * 1024, allowed_hosts=allowed_hosts)
    wrapped.engine = eng
    wrapped.fastapi = app
    wrapped.audit = view
    wrapped.trust = trust
    return wrapped


def _validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line: ``"model: field required; topk: ..."``."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'request'}: {str(err.get('msg', 'invalid')).lower()}")
    return "; ".join(parts) or "the request is malformed"


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
