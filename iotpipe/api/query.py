"""/api/v1: the fleet, devices, their latest readings and history, trends, anomalies,
quality, alerts and their rules, stats and dead letters. Each route: check the key,
make one App call, answer its JSON."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from iotpipe.api import models
from iotpipe.api.auth import authenticate
from iotpipe.api.problems import ApiProblem, Json
from iotpipe.app import App, parse_range
from iotpipe.errors import IotpipeError

router = APIRouter(prefix="/api/v1")

Limit = Annotated[
    int | None, Query(ge=1, le=1000, description="entries per page ([api] page_size by default)")
]
Cursor = Annotated[str | None, Query(description="the `next` of the previous page")]
Start = Annotated[str | None, Query(description="from this time, inclusive: ISO 8601 or epoch ms")]
End = Annotated[str | None, Query(description="to this time, exclusive: ISO 8601 or epoch ms")]


def _app(request: Request, action: str = "read") -> App:
    authenticate(request, action)
    app: App = request.app.state.iotpipe
    return app


def _times(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    return parse_range(start, end, ("start", "end"))


@router.get("/devices", response_model=models.DevicePage, tags=["devices"])
def list_devices(
    request: Request,
    status: Annotated[str | None, Query(description="online, stale or offline")] = None,
    type: Annotated[str | None, Query(description="device type")] = None,
    q: Annotated[str | None, Query(description="text in the device id or name")] = None,
    sort: Annotated[
        str, Query(description="device_id, last_seen, quality, battery or status; -name for descending")
    ] = "device_id",
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Devices with status, last seen, battery, quality score and metrics."""
    app = _app(request)
    return Json(app.devices(status=status, type=type, q=q, sort=sort, limit=limit, cursor=cursor))


@router.get("/devices/{device_id:path}/series/{metric:path}", response_model=models.Series, tags=["history"])
def series(
    request: Request,
    device_id: str,
    metric: str,
    start: Start = None,
    end: End = None,
    bucket: Annotated[str, Query(description="raw, 1m, 5m, 1h, 1d, 1w or auto")] = "auto",
    agg: Annotated[str, Query(description="avg, min, max, sum or count: what `values` holds")] = "avg",
    width: Annotated[
        int | None, Query(ge=10, le=100_000, description="chart width in pixels: at most this many points")
    ] = None,
    cursor: Cursor = None,
) -> Any:
    """History as chart columns (times in epoch ms). Defaults: the last 24 h, `auto`.

    `auto` answers from the coarsest rollup tier giving about `width` points (1000 by
    default); raw readings more numerous than `width` are reduced by the database to
    min/max/mean per pixel column. Without `width`, a response holds at most
    `[api] max_points` points and then says `truncated` with a `next` cursor."""
    app = _app(request)
    first, last = _times(start, end)
    return Json(
        app.series(
            device_id, metric, start=first, end=last, bucket=bucket, agg=agg, width=width, cursor=cursor
        )
    )


@router.get("/devices/{device_id:path}/trends", response_model=models.Page, tags=["history"])
def trends(
    request: Request,
    device_id: str,
    metric: Annotated[str, Query(description="the metric")],
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Daily mean, day-over-day change and 7-day moving average, per UTC day."""
    app = _app(request)
    first, last = _times(start, end)
    return Json(app.trend_page(device_id, metric, first, last, limit, cursor))


@router.get("/devices/{device_id:path}/latest", response_model=models.Latest, tags=["devices"])
def latest(request: Request, device_id: str) -> Any:
    """The newest reading of each metric of the device."""
    return Json(_app(request).latest(device_id))


# Device ids and metric names may hold "/" (devices name themselves): the routes take
# paths, most specific first (series, trends, latest), and this one, which would match
# every other's path too, last.
@router.get("/devices/{device_id:path}", response_model=models.Device, tags=["devices"])
def get_device(request: Request, device_id: str) -> Any:
    return Json(_app(request).device(device_id))


@router.get("/anomalies", response_model=models.Page, tags=["analytics"])
def anomalies(
    request: Request,
    device_id: str | None = None,
    metric: str | None = None,
    method: Annotated[str | None, Query(description="zscore or streaming")] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Anomalies, newest first."""
    app = _app(request)
    first, last = _times(start, end)
    return Json(app.anomaly_page(device_id, metric, method, first, last, limit, cursor))


@router.get("/quality", response_model=models.Page, tags=["analytics"])
def quality(
    request: Request,
    days: Annotated[int, Query(ge=1, le=36_500, description="the last N UTC days")] = 7,
    device_id: str | None = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Data quality per device (and per day): readings, expected, missing, invalid,
    out of range, anomalous, score."""
    return Json(_app(request).quality_page(days, device_id, limit, cursor))


@router.get("/alerts", response_model=models.Page, tags=["alerts"])
def alerts(
    request: Request,
    status: Annotated[str | None, Query(description="open, acknowledged or resolved")] = None,
    severity: Annotated[str | None, Query(description="critical, major, minor or warning")] = None,
    device_id: str | None = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Alerts, newest first."""
    return Json(_app(request).alert_page(status, severity, device_id, limit, cursor))


@router.post("/alerts/{alert_id}/ack", tags=["alerts"])
def acknowledge(request: Request, alert_id: int) -> Any:
    """Acknowledge an open alert (operator); it still resolves when its condition clears."""
    return Json(_app(request, "operate").acknowledge_alert(alert_id))


@router.get("/alert-rules", response_model=models.Page, tags=["alerts"])
def alert_rules(request: Request, limit: Limit = None, cursor: Cursor = None) -> Any:
    """Every rule: from the config file, from the API, and the built-in conditions."""
    return Json(_app(request).alert_rules(limit, cursor))


@router.get("/alert-rules/{rule_id}", tags=["alerts"])
def alert_rule(request: Request, rule_id: int) -> Any:
    return Json(_app(request).alert_rule(rule_id))


@router.post("/alert-rules", status_code=201, tags=["alerts"])
def create_alert_rule(request: Request, rule: Annotated[models.AlertRuleIn, Body()]) -> Any:
    """A threshold rule, validated as the config file's rules are (operator)."""
    app = _app(request, "operate")
    return Json(_rule(app.create_alert_rule, rule.model_dump(exclude_unset=True)), status_code=201)


@router.put("/alert-rules/{rule_id}", tags=["alerts"])
def update_alert_rule(
    request: Request, rule_id: int, rule: Annotated[models.AlertRuleIn, Body()], enabled: bool | None = None
) -> Any:
    """Replace a rule made through the API; `?enabled=false` switches it off (operator)."""
    app = _app(request, "operate")
    definition = rule.model_dump(exclude_unset=True)
    if enabled is not None:
        definition["enabled"] = enabled
    return Json(_rule(lambda d: app.update_alert_rule(rule_id, d), definition))


@router.delete("/alert-rules/{rule_id}", tags=["alerts"])
def delete_alert_rule(request: Request, rule_id: int) -> Any:
    """Remove a rule made through the API (one that raised alerts is disabled instead)."""
    return Json(_app(request, "operate").delete_alert_rule(rule_id))


def _rule(call: Any, definition: dict[str, Any]) -> Any:
    try:
        return call(definition)
    except IotpipeError as exc:
        if str(exc).startswith(("invalid alert rule", "unknown field")):
            raise ApiProblem(422, str(exc)) from None
        raise


@router.get("/stats", response_model=models.Stats, tags=["stats"])
def stats(request: Request) -> Any:
    """Devices by status, readings stored (as of the last rollup run), ingest rate over
    the last minute (of this process), open alerts by severity, average quality, dead letters."""
    return Json(_app(request).overview())


@router.get("/dead-letters", response_model=models.Page, tags=["ingest"])
def dead_letters(request: Request, limit: Limit = None, cursor: Cursor = None) -> Any:
    """Messages that could not be stored, oldest first, with the reason and the payload."""
    return Json(_app(request).dead_letter_page(limit, cursor))


@router.post("/dead-letters/replay", tags=["ingest"])
def replay_dead_letters(
    request: Request,
    limit: Annotated[int | None, Query(ge=1, description="the oldest N dead letters; all by default")] = None,
) -> Any:
    """Re-run dead letters through the current decoders (admin); stored ones leave the queue."""
    return Json(_app(request, "admin").replay_dead_letters(limit))


@router.get("/keys", tags=["keys"])
def list_keys(request: Request) -> Any:
    """API keys (admin): name, prefix, role, devices, status; never the token."""
    return Json({"items": _app(request, "admin").list_keys(), "next": None})
