"""HTTP ingest: POST /api/v1/ingest, and InfluxDB's /api/v2/write and /write (with /ping)
so that Telegraf and InfluxDB client libraries can write to iotpipe unchanged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from iotpipe.api import models
from iotpipe.api.auth import authenticate, header_token
from iotpipe.api.body import read_body
from iotpipe.api.problems import ApiProblem, Json
from iotpipe.api.threads import run_write
from iotpipe.app import App

router = APIRouter()
INFLUX_VERSION = "1.8.10"  # what /ping reports: the InfluxDB 1.x API iotpipe answers

_BODY = {
    "content": {
        media: {"schema": {"type": "string"}}
        for media in (
            "application/json",
            "application/senml+json",
            "text/plain",
            "text/csv",
            "application/x-ndjson",
        )
    },
    "required": True,
}


async def _ingest(
    request: Request,
    origin: str,
    token: str | None,
    device_id: str | None,
    precision: str | None,
    fmt: str | None,
) -> dict[str, Any]:
    principal = await run_write(authenticate, request, "ingest", token)
    app: App = request.app.state.iotpipe
    config = app.settings.api
    body = await read_body(request, config.max_body_bytes, config.max_decompressed_bytes)
    content_type = fmt or request.headers.get("content-type")
    return await run_write(app.ingest_http, body, content_type, principal, origin, device_id, precision)


@router.post(
    "/api/v1/ingest",
    response_model=models.IngestResult,
    tags=["ingest"],
    openapi_extra={"requestBody": _BODY},
)
async def ingest(
    request: Request,
    device_id: Annotated[str | None, Query(description="device of readings that name none")] = None,
    precision: Annotated[
        str | None, Query(description="line protocol timestamps: ns (default), us, ms, s")
    ] = None,
) -> Any:
    """Readings in any core format, by Content-Type: application/json (a V1/V2 object or
    an array of them), application/senml+json, text/plain (line protocol), text/csv,
    application/x-ndjson; gzip with Content-Encoding. Answered after the commit."""
    result = await _ingest(request, "POST /api/v1/ingest", None, device_id, precision, None)
    status = 200 if result["accepted"] or not result["messages"] else 422
    if status == 422:
        raise ApiProblem(
            422,
            f"no message of the request could be stored ({result['rejected']} rejected; the first: "
            f"{_first_reason(result)}); they are in the dead-letter queue with their reasons",
            **result,
        )
    return Json(result, status_code=status)


@router.post("/api/v2/write", status_code=204, tags=["ingest"], openapi_extra={"requestBody": _BODY})
async def influx_v2_write(
    request: Request,
    org: str | None = None,
    bucket: str | None = None,
    precision: Annotated[str | None, Query(description="ns (default), us, ms or s")] = None,
) -> Response:
    """InfluxDB 2 line protocol writes (Telegraf's influxdb_v2 output); org and bucket are
    accepted and ignored: everything goes to this iotpipe's store."""
    return await _influx(request, "POST /api/v2/write", None, precision)


@router.post("/write", status_code=204, tags=["ingest"], openapi_extra={"requestBody": _BODY})
async def influx_v1_write(
    request: Request,
    db: str | None = None,
    precision: Annotated[str | None, Query(description="n/ns (default), u/us, ms or s")] = None,
    u: str | None = None,
    p: Annotated[str | None, Query(description="the API key (InfluxDB 1 clients' password)")] = None,
) -> Response:
    """InfluxDB 1 line protocol writes (Telegraf's influxdb output); `db` is accepted
    and ignored. The key may come as the password (`p`, or Basic auth)."""
    return await _influx(request, "POST /write", p or header_token(request), precision)


async def _influx(request: Request, origin: str, token: str | None, precision: str | None) -> Response:
    result = await _ingest(request, origin, token, None, precision, "text/plain")
    if result["rejected"]:
        detail = (
            f"partial write: {result['rejected']} of {result['messages']} lines rejected "
            f"({_first_reason(result)})"
        )
        raise ApiProblem(400, detail, **result)
    return Response(status_code=204)


def _first_reason(result: dict[str, Any]) -> str:
    """The first rejection's origin and reason, for a problem's one-line detail."""
    if not result["rejections"]:
        return "see the dead-letter queue"
    first = result["rejections"][0]
    return f"{first['origin']}: {first['reason']}"


@router.get("/ping", status_code=204, tags=["ingest"])
def ping() -> Response:
    """InfluxDB clients' liveness probe."""
    return Response(status_code=204, headers={"X-Influxdb-Version": INFLUX_VERSION})


@router.head("/ping", status_code=204, tags=["ingest"], include_in_schema=False)
def ping_head() -> Response:
    return ping()
