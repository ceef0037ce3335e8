"""The fleet at a glance: each device's status, battery, quality and metrics, and the
counts the stats view and the metrics gauges show (alerts, backlog, rolled-up readings).

A device's status is judged when asked, from its last reading and the usual interval the
health job measured (analytics/health.py), so it is never older than the question:
- offline: silent for longer than its offline threshold (or never seen);
- stale: silent for more than STALE_INTERVALS usual intervals, not yet offline;
- online: otherwise.
Without a health check yet, the threshold is `offline_min_seconds` and there is no stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, text

from iotpipe.config import AnalyticsSettings
from iotpipe.model import MICROS_PER_SECOND, Micros
from iotpipe.store import Store
from iotpipe.store.schema import (
    alerts,
    device_health,
    devices,
    dirty_hours,
    job_state,
    rollup_queue,
    series,
)

STATUSES = ("online", "stale", "offline")
STALE_INTERVALS = 2.0


def device_rows(store: Store, device_id: str | None = None) -> list[dict[str, Any]]:
    """Devices with their last health check and their series, by device id."""
    query = (
        select(
            devices.c.id,
            devices.c.device_id,
            devices.c.type,
            devices.c.name,
            devices.c.firmware,
            devices.c.latitude,
            devices.c.longitude,
            devices.c.elevation,
            devices.c.attributes,
            devices.c.first_seen,
            devices.c.last_seen,
            device_health.c.interval_seconds,
            device_health.c.offline_after_seconds,
            device_health.c.battery,
            device_health.c.battery_low,
            device_health.c.quality_score,
            device_health.c.health_score,
            device_health.c.checked_at,
        )
        .outerjoin(device_health, device_health.c.device_pk == devices.c.id)
        .order_by(devices.c.device_id)
    )
    metric_query = select(series.c.device_pk, series.c.metric, series.c.unit).order_by(series.c.metric)
    if device_id is not None:
        query = query.where(devices.c.device_id == device_id)
        metric_query = metric_query.join(devices, devices.c.id == series.c.device_pk).where(
            devices.c.device_id == device_id
        )
    with store.read_connection() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
        metrics: dict[int, list[dict[str, Any]]] = {}
        for device_pk, metric, unit in conn.execute(metric_query):
            metrics.setdefault(device_pk, []).append({"name": metric, "unit": unit})
    for row in rows:
        row["metrics"] = metrics.get(row.pop("id"), [])
    return rows


def status_of(row: Mapping[Any, Any], settings: AnalyticsSettings, now: Micros) -> str:
    last_seen = row["last_seen"]
    if last_seen is None:
        return "offline"
    silent = (now - last_seen) / MICROS_PER_SECOND
    offline_after = row["offline_after_seconds"]
    if offline_after is None:
        offline_after = settings.offline_min_seconds
    if silent > offline_after:
        return "offline"
    interval = row["interval_seconds"]
    if interval is not None and silent > STALE_INTERVALS * interval:
        return "stale"
    return "online"


def status_counts(
    store: Store, settings: AnalyticsSettings, now: Micros
) -> tuple[dict[str, int], list[float]]:
    """(devices by status, the quality scores the health job gave): what the stats view
    needs of the fleet, read as the four columns status_of judges by, without the rest of
    each device's row and its metrics (the stats view is asked for every few seconds)."""
    query = select(
        devices.c.last_seen,
        device_health.c.offline_after_seconds,
        device_health.c.interval_seconds,
        device_health.c.quality_score,
    ).outerjoin(device_health, device_health.c.device_pk == devices.c.id)
    by_status = dict.fromkeys(STATUSES, 0)
    scores: list[float] = []
    with store.read_connection() as conn:
        for row in conn.execute(query):
            by_status[status_of(row._mapping, settings, now)] += 1
            if row.quality_score is not None:
                scores.append(row.quality_score)
    return by_status, scores


def open_alerts_by_severity(store: Store) -> dict[str, int]:
    with store.read_connection() as conn:
        rows = conn.execute(
            select(alerts.c.severity, func.count())
            .where(alerts.c.status != "resolved")
            .group_by(alerts.c.severity)
        )
        return {severity: int(count) for severity, count in rows}


# Per series, an index range over its weekly buckets (the key starts with series_id; a
# filter on bucket alone would read every rollup of every width).
_ROLLED_UP = text(
    "SELECT coalesce(sum((SELECT sum(r.count) FROM rollups r WHERE r.series_id = s.id AND r.bucket = '1w')), 0) "
    "FROM series s"
)


def rolled_up_readings(store: Store) -> int:
    """Readings counted by the weekly rollups: every reading as of the last rollup run."""
    with store.read_connection() as conn:
        return int(conn.execute(_ROLLED_UP).scalar() or 0)


def rollup_backlog(store: Store) -> tuple[int, Micros | None]:
    """(series-hours waiting for the rollup job, when the job last finished)."""
    with store.read_connection() as conn:
        dirty = conn.scalar(select(func.count()).select_from(dirty_hours)) or 0
        queued = conn.scalar(select(func.count()).select_from(rollup_queue)) or 0
        finished = conn.scalar(select(job_state.c.last_finished_at).where(job_state.c.name == "rollups"))
    return int(dirty) + int(queued), finished
