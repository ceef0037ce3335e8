"""Every error answer in one shape: RFC 9457 problem details (application/problem+json).

`type` is about:blank, so `title` is the HTTP status phrase; `detail` says what was wrong
and what to do; `status` repeats the code and `instance` is the request path. Extra
members carry what a client can act on: `errors` (which parameter, why) for 422, the
rejected readings of an ingest request, InfluxDB's `code`/`message` on its routes.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from iotpipe.app import explain_error
from iotpipe.redact import redact

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_OUTAGE = {"Retry-After": "5"}

log = logging.getLogger("iotpipe.api")


def outage_detail(request: HTTPConnection, exc: Exception) -> str:
    """What to tell a client whose request met a database outage (a 503, or a live feed
    closed with 1013: try again later); logged as one line, not a traceback per request
    until the database is back."""
    message = redact(explain_error(exc)[0])
    method = request.scope.get("method")
    answer = f"answered 503 to {method}" if method else "closed with 1013 the WebSocket of"
    log.warning("%s %s: %s", answer, request.url.path, message)
    return message


class ApiProblem(Exception):
    """Raised by a route to answer with a problem: status, detail and extra members."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem(
    status: int, detail: str, instance: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    if instance.startswith(("/api/v2/", "/write")):
        # InfluxDB clients (Telegraf) read these members of an error.
        body.setdefault("code", "unauthorized" if status == 401 else "invalid")
        body.setdefault("message", detail)
        body.setdefault("error", detail)
    return Response(orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


class Json(Response):
    """A JSON answer serialised by orjson (fast, and exact for floats)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
