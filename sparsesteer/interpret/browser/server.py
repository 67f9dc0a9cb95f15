"""Serving a browser site on 127.0.0.1 (standard library `http.server`), with pluggable JSON API.

    server = make_server("runs/site", port=8000, api={"info": info_fn, "steer": steer_fn})
    server.serve_forever()

Static files come only from inside the site directory (paths are resolved and must stay under it;
directories are not listed). `/latent/J` redirects to `latent.html#J` when J is a latent of the
site, and is a 404 page otherwise. `/api/NAME` calls `api[NAME](request)`; a handler returns a
JSON-able dict or a `Binary`, and raises `ApiError` (or `SparsesteerError`, a 400) for bad
requests. Malformed requests get 4xx answers, never a traceback; the server binds loopback only.
"""

from __future__ import annotations

import errno
import html
import json
import mimetypes
import os
import re
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ...utils.errors import SparsesteerError
from .site import read_data

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 20 * 1024 * 1024
"""Largest request body accepted (an uploaded image as a data URL)."""


@dataclass(frozen=True)
class ApiRequest:
    method: str
    """GET or POST."""
    query: dict[str, str]
    """Query parameters (the last value of each)."""
    body: dict[str, Any] = field(default_factory=dict)
    """The JSON object posted (empty for GET)."""


@dataclass(frozen=True)
class Binary:
    """A non-JSON answer (an image)."""

    data: bytes
    content_type: str


class ApiError(Exception):
    """A request the API refuses: `status` (4xx) and a one-line message sent as {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


ApiHandler = Callable[[ApiRequest], "dict[str, Any] | Binary"]


def error_page(status: int, title: str, message: str) -> bytes:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        '<link rel=icon href="/assets/favicon.svg" type="image/svg+xml"><link rel=stylesheet href="/assets/browser.css">'
        f"</head><body><main class=card><h1>{status} {html.escape(title)}</h1><p>{html.escape(message)}</p>"
        '<p><a href="/index.html">All latents</a></p></main></body></html>'
    ).encode()


class SiteHandler(BaseHTTPRequestHandler):
    """Serves one site directory (`site`, `n_latents`, `api` set on the subclass `make_server` builds)."""

    site: Path
    n_latents: int
    api: Mapping[str, ApiHandler] = {}
    quiet: bool = True
    default_request_version = "HTTP/1.0"  # errors on unparsable request lines get a status line too
    server_version = "sparsesteer-browse"
    sys_version = ""

    # any method other than GET, HEAD and POST: 405 (not the base class's 501)
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET, HEAD and POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # ---- answers ------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, *, head: bool = False, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        try:
            body = json.dumps(obj, allow_nan=False).encode()
        except (TypeError, ValueError) as e:  # NaN/inf or a non-JSON object: a bug of the handler, still answered
            status, body = 500, json.dumps({"error": f"internal error: the answer is not valid JSON ({e})"}).encode()
        self._send(status, body, "application/json")

    def _page(self, status: int, title: str, message: str, head: bool = False) -> None:
        self._send(status, error_page(status, title, message), "text/html; charset=utf-8", head=head)

    # ---- routing ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_POST(self) -> None:
        path = self._path()
        if path is None:
            return
        if not path.startswith("/api/"):
            self._page(405, "Method not allowed", "POST goes to /api/ only")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._json(411, {"error": "a POST needs a Content-Length"})
            return
        if int(length) > MAX_BODY:
            self._json(413, {"error": f"request body over {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._json(400, {"error": f"the body is not JSON: {e}"})
            return
        if not isinstance(body, dict):
            self._json(400, {"error": "the body must be a JSON object"})
            return
        self._api(path, "POST", body)

    def _path(self) -> str | None:
        """The request's decoded path; None (after a 400) when it is malformed."""
        try:
            parts = urlsplit(self.path)
            path = unquote(parts.path, errors="strict")
        except (ValueError, UnicodeDecodeError):
            self._page(400, "Bad request", "malformed URL")
            return None
        if not path.startswith("/") or "\x00" in path:
            self._page(400, "Bad request", "malformed path")
            return None
        self._query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return path

    def _get(self, head: bool) -> None:
        path = self._path()
        if path is None:
            return
        if path.startswith("/api/"):
            if head:
                self._send(405, b"", "text/plain", head=True)
                return
            self._api(path, "GET", {})
            return
        m = re.fullmatch(r"/latent/([^/]*)/?", path)
        if m:
            text = m.group(1)
            if text.isdigit() and int(text) < self.n_latents:
                self._send(302, b"", "text/plain", head=head, extra=[("Location", f"/latent.html#{int(text)}")])
            else:
                self._page(
                    404, "No such latent",
                    f"there is no latent {text!r}: this SAE has {self.n_latents} latents (0..{self.n_latents - 1})",
                    head,
                )  # fmt: skip
            return
        self._static(path, head)

    def _static(self, path: str, head: bool) -> None:
        root = self.site
        rel = path.lstrip("/") or "index.html"
        try:
            target = (root / rel).resolve()
        except (OSError, RuntimeError):
            self._page(400, "Bad request", "malformed path")
            return
        if target != root and root not in target.parents:
            self._page(404, "Not found", "outside the site")  # path traversal: nothing outside the site
            return
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            self._page(404, "Not found", f"{path} is not part of this site", head)
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
            ctype += "; charset=utf-8"
        self._send(200, target.read_bytes(), ctype, head=head)

    def _api(self, path: str, method: str, body: dict) -> None:
        name = path[len("/api/") :].strip("/")
        fn = self.api.get(name)
        if fn is None:
            known = ", ".join(sorted(self.api)) or "none (serve with --model for the live API)"
            self._json(404, {"error": f"no API {name!r}; available: {known}"})
            return
        try:
            out = fn(ApiRequest(method, dict(self._query), body))
        except ApiError as e:
            self._json(e.status, {"error": str(e)})
            return
        except SparsesteerError as e:
            self._json(400, {"error": str(e)})
            return
        except Exception as e:  # a bug: say so in one line, keep the traceback on the server's stderr
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
            return
        if isinstance(out, Binary):
            self._send(200, out.data, out.content_type)
        else:
            self._json(200, out)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = False  # a second server on the same port must fail, not share it


def make_server(
    site: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api: Mapping[str, ApiHandler] | None = None,
    quiet: bool = True,
) -> ThreadingHTTPServer:
    """A server for `site` bound to host:port (loopback only; port 0 = any free port)."""
    site = Path(site).resolve()
    if host not in LOOPBACK:
        raise SparsesteerError(f"--host {host}: the browser server binds loopback only ({', '.join(LOOPBACK)})")
    if not (site / "data" / "meta.js").is_file():
        raise SparsesteerError(f"{site} is not a browser site (no data/meta.js); write one with `sparsesteer browse`")
    if not 0 <= port <= 65535:
        raise SparsesteerError(f"--port must be in 0..65535, got {port}")
    meta = read_data(site, "meta")
    handler = type(
        "Handler",
        (SiteHandler,),
        {"site": site, "n_latents": int(meta["n_latents"]), "api": dict(api or {}), "quiet": quiet},
    )
    server_cls = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        return server_cls((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SparsesteerError(
                f"port {port} on {host} is already in use (another server?): choose another --port, or --port 0 "
                "for a free one"
            ) from None
        raise SparsesteerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
