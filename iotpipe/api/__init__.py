"""The HTTP API: FastAPI routes over the App, like the CLI's commands.

`create_app(app)` builds the ASGI application: the query API under /api/v1, HTTP ingest
(also InfluxDB's /api/v2/write and /write), ThingSpeak's endpoints, health and metrics,
OpenAPI docs at /docs, the live feed's WebSocket (live.py) and the web dashboard at /
(dashboard.py, which also sets the Content-Security-Policy of every page). Every error is an RFC 9457 problem (problems.py); a request
body is read within its size limit (body.py); every key has its rate (ratelimit.py).
CORS is closed unless `[api] cors_origins` lists origins.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotpipe import __version__
from iotpipe.api import dashboard, health, ingest, live, openapi, query, thingspeak, threads
from iotpipe.api.problems import RETRY_AFTER_OUTAGE, ApiProblem, outage_detail, problem
from iotpipe.api.ratelimit import RateLimiter
from iotpipe.app import App, database_outages, explain_error
from iotpipe.app.access import AccessDenied
from iotpipe.app.http_ingest import UnsupportedContent
from iotpipe.errors import Conflict, IotpipeError, NotFound, StoreError
from iotpipe.redact import redact

_CONVERTER = re.compile(r"\{(\w+):\w+\}")

log = logging.getLogger(__name__)


def create_app(app: App) -> FastAPI:
    api = FastAPI(
        title="iotpipe",
        version=__version__,
        description="IoT telemetry: devices, history, analytics, alerts; HTTP, InfluxDB and ThingSpeak ingest.",
        docs_url="/docs",
        redoc_url=None,
        lifespan=threads.lifespan(app.settings.api.threads),
    )
    api.state.iotpipe = app
    config = app.settings.api
    api.state.rate_limiter = RateLimiter(config.rate_limit, config.rate_burst)
    for router in (query.router, ingest.router, thingspeak.router, health.router, live.router):
        api.include_router(router)
    dashboard.mount(api)
    api.openapi = lambda: openapi.document(api)  # type: ignore[method-assign]
    app.live  # noqa: B018  made now, so the pipelines made from here on feed the live feed
    _add_error_handlers(api)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Content-Encoding"],
        )
    api.add_middleware(RequestMetrics, app=app)
    api.add_middleware(dashboard.SecurityHeaders, exempt=("/docs",))
    return api


def _add_error_handlers(api: FastAPI) -> None:
    def path(request: Request) -> str:
        return request.url.path

    @api.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return problem(exc.status, exc.detail, path(request), exc.headers, **exc.extra)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "the request is invalid"
        return problem(422, f"invalid request ({detail})", path(request), errors=errors)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = {
            404: f"nothing at {request.url.path}; see /docs for the API",
            405: f"{request.method} is not allowed on {request.url.path}; see /docs",
        }.get(exc.status_code, str(exc.detail))
        return problem(exc.status_code, detail, path(request), dict(exc.headers or {}))

    @api.exception_handler(IotpipeError)
    async def _iotpipe(request: Request, exc: IotpipeError) -> Response:
        status = 400
        headers = None
        if isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, Conflict):
            status = 409
        elif isinstance(exc, AccessDenied):
            status = exc.status
        elif isinstance(exc, UnsupportedContent):
            status = 415
        elif isinstance(exc, StoreError):
            status, headers = 503, {"Retry-After": "5"}
        return problem(status, redact(str(exc)), path(request), headers)

    async def _outage(request: Request, exc: Exception) -> Response:
        """The database is down or the disk full: not the client's doing, nor a bug."""
        return problem(503, outage_detail(request, exc), path(request), RETRY_AFTER_OUTAGE)

    # Registered for these types, not under Exception: Starlette's last-resort handler
    # answers, then re-raises for the server to log the traceback.
    for kind in (*database_outages(), OSError):
        api.add_exception_handler(kind, _outage)

    @api.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        message, expected = explain_error(exc)
        if expected:  # an environment failure no handler above names
            return problem(503, redact(message), path(request), RETRY_AFTER_OUTAGE)
        log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal error; it is logged on the server", path(request))


class RequestMetrics:
    """Counts and times every request by route template (never the raw path: no device ids)."""

    def __init__(self, asgi: ASGIApp, app: App) -> None:
        self.asgi = asgi
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.asgi(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            # The route's template, without converters ("{device_id:path}" -> "{device_id}"):
            # a bounded label set that reads like the API's documentation.
            template = _CONVERTER.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
            self.app.observe_request(template, scope["method"], status, time.perf_counter() - started)
