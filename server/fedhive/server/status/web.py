"""The status page as an ASGI app (Starlette): a static page, a JSON API it polls, ``/metrics``.

Read-only: nothing here changes a run. Every route answers GET only (and ``/login`` POST, which
checks a token and sets a cookie). When a bearer token is configured every route but ``/login``
and the login page itself needs it: ``Authorization: Bearer TOKEN`` (Prometheus:
``authorization.credentials_file``) or the cookie ``/login`` sets for a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fedhive.server.status.metrics import FederationMetrics
from fedhive.server.status.runs import RunDirs, read_runs

STATIC = Path(__file__).parent / "static"
COOKIE = "fedhive_status"
MAX_LOGIN_BYTES = 8192
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECURITY_HEADERS = {
    # no inline script or style, nothing from elsewhere: the page runs only what it ships
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PUBLIC_PATHS = frozenset({"/login", "/static/login.js", "/static/status.css"})


@dataclass(frozen=True)
class StatusSources:
    """What the page reads: the run directories, the live metrics, the live node registry."""

    runs: RunDirs
    metrics: FederationMetrics
    nodes: Callable[[], list[dict[str, Any]]]  # the live registry, as the page shows it
    live_run_id: Callable[[], str | None]  # the run this process is running now (None: none)
    max_rounds: int = 500
    names: Callable[[], Mapping[str, str]] = dict  # run id -> its name in a service's queue


def _cookie_value(token: str) -> str:
    """What the browser keeps: a digest of the token, never the token itself."""
    return hmac.new(token.encode(), b"fedhive-status-cookie", hashlib.sha256).hexdigest()


class _Protect(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str | None, page: bool) -> None:
        super().__init__(app)
        self.token = token
        self.page = page

    def allowed(self, request: Request) -> bool:
        if self.token is None or request.url.path in PUBLIC_PATHS:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), _cookie_value(self.token).encode())

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self.allowed(request):
            if request.url.path == "/" and self.page:  # a browser: the login page
                response: Response = FileResponse(STATIC / "login.html")
            else:
                response = JSONResponse(
                    {"error": "a bearer token is required (Authorization: Bearer TOKEN)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


def _named(runs: list[Any], names: Mapping[str, str]) -> list[Any]:
    for run in runs:
        run["name"] = names.get(run["run_id"], "")
    return runs


def build_app(sources: StatusSources, *, token: str | None, page: bool = True) -> Starlette:
    """The ASGI app: ``/metrics`` always; with ``page`` the page, its API and its files."""

    async def metrics(request: Request) -> Response:
        return Response(sources.metrics.exposition(), media_type=PROMETHEUS_TYPE)

    def live(run_id: str) -> dict[str, Any] | None:
        if run_id != sources.live_run_id():
            return None
        current = sources.metrics.live_round()
        if current is None:
            return {"running": True}
        return {
            "running": True,
            "round": current.round,
            "kind": current.kind,
            "selected": current.selected,
            "received": current.received,
            "bytes_in": current.bytes_in,
            "elapsed_s": round(time.time() - current.opened_at, 3),
        }

    def status(request: Request) -> Response:  # sync: Starlette runs it in its thread pool
        nodes = sources.nodes()
        return JSONResponse(
            {
                "time": time.time(),
                "queue_length": sources.metrics.queued,
                "connected_nodes": sum(1 for n in nodes if n["connected"]),
                "nodes": nodes,
                "runs": _named(read_runs(sources.runs, sources.max_rounds, live), sources.names()),
            }
        )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BYTES:
                return JSONResponse({"error": "token too long"}, status_code=413)
        given = body.decode("utf-8", "replace").strip()
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "wrong token"}, status_code=401)
        response = JSONResponse({"ok": True})
        response.set_cookie(
            COOKIE,
            _cookie_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    routes: list[Any] = [Route("/metrics", metrics)]
    if page:
        routes += [
            Route("/", index),
            Route("/api/status", status),
            Route("/login", login, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
    return Starlette(routes=routes, middleware=[Middleware(_Protect, token=token, page=page)])
