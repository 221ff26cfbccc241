"""The request guard of the web app: Host and Origin checks, the request-body limit and the
security headers, as an ASGI wrapper around the FastAPI app (see :mod:`convscope.frontends.serve.app`)."""

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from convscope.core.errors import ConvscopeError

if TYPE_CHECKING:  # annotations only: the app sets these after building the guard
    from convscope.frontends.serve.audit import AuditView
    from convscope.frontends.serve.engine import Engine

__all__ = ["LOOPBACK_HOSTS", "Guard"]

_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


#: Pages a link from another site may open (they skip the Origin/Referer check, not the Host check).
_PAGES = ("/", "/audit", "/concepts", "/crp", "/trust")

#: Host names of this machine's loopback interface; the app answers to them on its own port.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_WILDCARD = ("", "0.0.0.0", "::")


def _host_port(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """``"name:port"``, ``"[v6]:port"`` or ``"name"`` -> (lower-case name, port); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:  # a bare IPv6 address
        name, port_text = value, ""
    else:
        name, port_text = value, ""
    name = name.rstrip(".")
    if not name:
        return None
    if not port_text:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _valid_host_name(name: str) -> bool:
    """Whether ``name`` (lower case, no port) is an IP address or a DNS name of letters, digits
    and inner hyphens in dot-separated labels (RFC 1123)."""
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def _json_error(status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> list[Any]:
    body = json.dumps({"error": message}).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *headers]},
            {"type": "http.response.body", "body": body}]


class Guard:
    """ASGI middleware in front of the FastAPI app.

    * Refuses a request whose ``Host`` is not this app (403): a loopback name or the bound address
      (``scope["server"]``), on the app's port, or an entry of ``allowed_hosts`` (``name`` on any
      port, or ``name:port``). This stops DNS rebinding, where another site's name resolves to
      127.0.0.1.
    * Refuses a request whose ``Origin``, or without one its ``Referer``, is not the app's own
      origin (403); ``Origin: null`` included. Requests with neither header pass (a browser always
      sends ``Origin`` on a cross-origin POST). ``GET``/``HEAD`` of the pages and their static files
      skip this check, so a link from another site opens the app.
    * Refuses request bodies over ``limit`` bytes (413), from ``Content-Length`` before reading,
      and while reading a chunked body (whatever the app below was answering).
    * Adds the security headers to every response.
    """

    def __init__(self, app: Any, limit: int, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.allowed: list[tuple[str, int | None]] = []
        for h in allowed_hosts:
            parsed = _host_port(str(h), None)
            if parsed is None or not _valid_host_name(parsed[0]):
                raise ConvscopeError(f"allowed host {h!r} is not a host name or name:port (letters, digits, "
                                     "'-' and '.', or an IP address; e.g. myhost.lan or myhost.lan:8000)")
            self.allowed.append(parsed)
        self.engine: "Engine | None" = None
        self.fastapi: Any = None
        self.audit: "AuditView | None" = None

    def _host_ok(self, host: tuple[str, int | None], scope: Any) -> bool:
        server = scope.get("server") or (None, None)
        bound, port = server[0], server[1]
        names = set(LOOPBACK_HOSTS)
        if bound and str(bound).strip("[]").lower() not in _WILDCARD:
            names.add(str(bound).strip("[]").lower())
        if host[0] in names and (port is None or host[1] == port):
            return True
        return any(host[0] == name and (p is None or p == host[1]) for name, p in self.allowed)

    def refusal(self, scope: Any, headers: dict[bytes, bytes]) -> str | None:
        """Why the request is refused (403), or None."""
        scheme = scope.get("scheme", "http")
        default_port = 443 if scheme == "https" else 80
        raw_host = headers.get(b"host", b"").decode("latin-1")
        host = _host_port(raw_host, default_port)
        if host is None or not self._host_ok(host, scope):
            return (f"Host {raw_host or '(none)'!r} is not an address of this app; open it at "
                    "http://127.0.0.1:<port>/, or start it with --allow-host NAME")
        path = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD") and (path in _PAGES or path.startswith("/static/")):
            return None
        for key in (b"origin", b"referer"):
            value = headers.get(key)
            if value is None:
                continue
            text = value.decode("latin-1")
            try:
                u = urlsplit(text)
                other = (u.scheme, *(_host_port(u.netloc, 443 if u.scheme == "https" else 80) or ("",)))
            except ValueError:
                other = ("",)
            if other != (scheme, *host):
                return (f"requests from other web pages are refused ({key.decode()} {text!r} is not "
                        "this app); use the app's own page")
            return None  # Origin decides when present
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        started = False
        over = False

        async def send_wrapper(message: Any) -> None:
            nonlocal started
            if over:  # the body went over the limit: the answer is 413, whatever the app said
                return
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        async def answer(status: int, message: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
            for m in _json_error(status, message, extra):
                await send_wrapper(m)

        why = self.refusal(scope, headers)
        if why is not None:
            await answer(403, why)
            return
        too_big = f"the request is over the upload limit of {self.limit} bytes"
        length = headers.get(b"content-length")
        if length is not None:
            try:
                big = int(length) > self.limit
            except ValueError:
                big = True
            if big:
                await answer(413, too_big, [(b"connection", b"close")])
                return
        seen = 0

        class _Over(Exception):
            pass

        async def receive_wrapper() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _Over
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _Over:
            pass
        if over and not started:
            over = False
            await answer(413, too_big, [(b"connection", b"close")])
