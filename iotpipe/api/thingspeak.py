"""ThingSpeak's write and read endpoints, answered as ThingSpeak answers them.

Writes answer the new entry (its id as text, or the feed object for .json) or `0` when
nothing was stored; reads without access answer `-1` with HTTP 400; bulk updates answer
202 `{"success": true}` or ThingSpeak's JSON error object. See app/thingspeak_api.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from iotpipe.api.auth import check_rate, header_token
from iotpipe.api.body import read_body
from iotpipe.api.problems import RETRY_AFTER_OUTAGE, ApiProblem, Json, outage_detail
from iotpipe.api.threads import run_write
from iotpipe.app import App, database_outages
from iotpipe.app.access import AccessDenied, Principal
from iotpipe.app.thingspeak_api import WriteFailed
from iotpipe.errors import IotpipeError, NotFound, StoreError

_OUTAGES = database_outages()

router = APIRouter(tags=["thingspeak"])
JSON = "application/json; charset=utf-8"

_ERRORS = {
    400: ("error_bad_request", "Bad Request", "Please check the request's parameters."),
    401: ("error_auth_required", "Authorization Required", "Please make sure that your API key is correct."),
    404: ("error_resource_not_found", "Resource Not Found", "Please check the channel id."),
    413: ("error_request_too_large", "Request Too Large", "Please send fewer updates per request."),
    429: ("error_too_many_requests", "Too Many Requests", "Please wait before sending again."),
    503: ("error_service_unavailable", "Service Unavailable", "Please try again later."),
}


def _ts_error(status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> Response:
    code, message, details = _ERRORS.get(status, _ERRORS[400])
    body = {
        "status": str(status),
        "error": {"error_code": code, "message": message, "details": detail or details},
    }
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


async def _params(request: Request) -> dict[str, str]:
    """Query parameters, overlaid by a form or JSON body's (ThingSpeak accepts both)."""
    params = dict(request.query_params)
    if request.method == "POST":
        app: App = request.app.state.iotpipe
        body = await read_body(
            request, app.settings.api.max_body_bytes, app.settings.api.max_decompressed_bytes
        )
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and media == "application/json":
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                params.update(
                    {k: str(v) for k, v in doc.items() if v is not None and not isinstance(v, dict | list)}
                )
        elif body:
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def _key(request: Request, params: dict[str, str]) -> str | None:
    return params.get("api_key") or request.headers.get("thingspeakapikey") or header_token(request)


def _principal(request: Request, token: str | None) -> Principal:
    app: App = request.app.state.iotpipe
    principal = app.authenticate(token)
    check_rate(request, principal)
    return principal


async def _update(request: Request, as_json: bool) -> Response:
    zero = Response(b"0", status_code=200, media_type=JSON if as_json else "text/plain; charset=utf-8")
    try:
        params = await _params(request)
        principal = await run_write(_principal, request, _key(request, params))
        app: App = request.app.state.iotpipe
        entry = await run_write(app.thingspeak_update, principal, params)
    except AccessDenied:
        return zero
    except WriteFailed as exc:
        zero.status_code = exc.status
        return zero
    except ApiProblem as exc:
        if exc.status in (413, 429):
            return zero  # ThingSpeak answers a refused single update with 0
        raise
    except (IotpipeError, StoreError):
        return zero
    except _OUTAGES as exc:  # firmware reads the body: `0`, the update failed; try again
        outage_detail(request, exc)
        zero.status_code = 503
        zero.headers.update(RETRY_AFTER_OUTAGE)
        return zero
    if as_json:
        return Json(entry)
    return PlainTextResponse(str(entry["entry_id"]))


@router.get("/update")
async def update(request: Request) -> Response:
    """Write one entry: `api_key` (the channel's write key), field1..field8, lat, long,
    elevation, status, created_at. Answers the new entry_id, or 0."""
    return await _update(request, as_json=False)


@router.post("/update")
async def update_post(request: Request) -> Response:
    """As GET /update, the parameters in a form or JSON body."""
    return await _update(request, as_json=False)


@router.get("/update.json")
async def update_json(request: Request) -> Response:
    """As /update; answers the new feed entry as JSON, or 0."""
    return await _update(request, as_json=True)


@router.post("/update.json")
async def update_json_post(request: Request) -> Response:
    """As GET /update.json, the parameters in a form or JSON body."""
    return await _update(request, as_json=True)


@router.post("/channels/{channel_id}/bulk_update.json", status_code=202)
async def bulk_update(request: Request, channel_id: int) -> Response:
    """Many entries: {"write_api_key": KEY, "updates": [{"created_at" or "delta_t", "field1", ...}]}."""
    app: App = request.app.state.iotpipe
    try:
        body = await read_body(
            request, app.settings.api.max_body_bytes, app.settings.api.max_decompressed_bytes
        )
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = {}
        token = (doc.get("write_api_key") if isinstance(doc, dict) else None) or _key(
            request, dict(request.query_params)
        )
        principal = await run_write(_principal, request, token)
        result = await run_write(app.thingspeak_bulk_update, principal, channel_id, body)
    except AccessDenied as exc:
        return _ts_error(401, str(exc))
    except ApiProblem as exc:
        return _ts_error(exc.status, exc.detail, exc.headers)
    except StoreError as exc:
        return _ts_error(503, str(exc))
    except IotpipeError as exc:
        return _ts_error(400, str(exc))
    except _OUTAGES as exc:
        return _ts_error(503, outage_detail(request, exc), RETRY_AFTER_OUTAGE)
    return Json(result, status_code=202)


def _read(request: Request, channel_id: int, call: Any) -> Response:
    """A read: `-1` (HTTP 400) without access, 404 for an unknown channel."""
    try:
        _principal(request, _key(request, dict(request.query_params))).require("read")
        return call()
    except (AccessDenied, ApiProblem):
        return Response(b"-1", status_code=400, media_type=JSON)
    except NotFound:
        return Response(b"-1", status_code=404, media_type=JSON)
    except IotpipeError as exc:
        return _ts_error(400, str(exc))


@router.get("/channels/{channel_id}/feeds.json")
def feeds_json(request: Request, channel_id: int) -> Response:
    """The channel and its entries: results (default 100, at most 8000), days, minutes,
    start, end, timescale/average/median/sum (minutes: 10..1440 or daily), min, max, round."""
    app: App = request.app.state.iotpipe
    params = dict(request.query_params)
    return _read(request, channel_id, lambda: Json(app.thingspeak_feeds(channel_id, params)))


@router.get("/channels/{channel_id}/feeds.csv")
def feeds_csv(request: Request, channel_id: int) -> Response:
    app: App = request.app.state.iotpipe
    params = dict(request.query_params)
    return _read(
        request,
        channel_id,
        lambda: Response(app.thingspeak_feeds_csv(channel_id, params), media_type="text/csv; charset=utf-8"),
    )


@router.get("/channels/{channel_id}/fields/{field}.json")
def field_json(request: Request, channel_id: int, field: int) -> Response:
    """One field's entries, with the same parameters as feeds.json."""
    app: App = request.app.state.iotpipe
    params = dict(request.query_params)
    return _read(request, channel_id, lambda: Json(app.thingspeak_feeds(channel_id, params, field)))


@router.get("/channels/{channel_id}/feeds/last.json")
def last_json(request: Request, channel_id: int) -> Response:
    """The newest entry."""
    app: App = request.app.state.iotpipe
    params = dict(request.query_params)
    return _read(request, channel_id, lambda: Json(app.thingspeak_last(channel_id, params)))
