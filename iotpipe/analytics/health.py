"""Device health: online or offline, battery, last seen, and a health score per device.

A device is offline once it has been silent for longer than `offline_multiple` times
its usual interval (its most frequent series'), and never sooner than
`offline_min_seconds`. Its battery is the latest value of a battery metric. The health
score is 0 when offline; otherwise its latest day's quality score (100 without one),
less 25 points for a low battery.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, func, select

from iotpipe.analytics.intervals import series_activity
from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_SECOND, Micros, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import data_quality, device_health, devices, series

LOW_BATTERY_PENALTY = 25.0


def health_job(store: Store, settings: Settings) -> dict[str, Any]:
    return check_health(store, settings, now_micros())


def check_health(store: Store, settings: Settings, now: Micros) -> dict[str, Any]:
    config = settings.analytics
    with store.read_connection() as conn:
        fleet = conn.execute(select(devices.c.id, devices.c.last_seen)).all()
        series_rows = conn.execute(select(series.c.id, series.c.device_pk, series.c.metric)).all()
        activity = series_activity(store, conn, [r.id for r in series_rows], config.interval_sample)
        scores = _latest_quality(conn)
    intervals: dict[int, list[float]] = defaultdict(list)
    battery: dict[int, float] = {}
    for row in series_rows:
        known = activity.get(row.id)
        if known is None:
            continue
        if known.interval_seconds is not None:
            intervals[row.device_pk].append(known.interval_seconds)
        if row.metric in config.battery_metrics:
            battery[row.device_pk] = known.last_value
    rows = []
    for device_pk, last_seen in fleet:
        interval = min(intervals[device_pk]) if intervals[device_pk] else None
        offline_after = max(config.offline_min_seconds, config.offline_multiple * (interval or 0.0))
        silent = (now - last_seen) / MICROS_PER_SECOND if last_seen is not None else None
        status = "offline" if silent is None or silent > offline_after else "online"
        level = battery.get(device_pk)
        low = level is not None and level < config.battery_threshold
        quality = scores.get(device_pk)
        score = (
            0.0
            if status == "offline"
            else max(0.0, (quality if quality is not None else 100.0) - LOW_BATTERY_PENALTY * low)
        )
        rows.append(
            {
                "device_pk": device_pk,
                "status": status,
                "last_seen": last_seen,
                "interval_seconds": interval,
                "offline_after_seconds": offline_after,
                "battery": level,
                "battery_low": low,
                "quality_score": quality,
                "health_score": score,
                "checked_at": now,
            }
        )
    with store.write_transaction() as conn:
        for values in rows:
            statement = store.dialect_insert(device_health).values(**values)
            conn.execute(statement.on_conflict_do_update(index_elements=["device_pk"], set_=values))
    return {
        "devices": len(rows),
        "offline": sum(r["status"] == "offline" for r in rows),
        "low_battery": sum(bool(r["battery_low"]) for r in rows),
    }


def _latest_quality(conn: Connection) -> dict[int, float]:
    latest = (
        select(data_quality.c.device_pk, func.max(data_quality.c.day).label("day"))
        .group_by(data_quality.c.device_pk)
        .subquery()
    )
    query = select(data_quality.c.device_pk, data_quality.c.score).join(
        latest, (latest.c.device_pk == data_quality.c.device_pk) & (latest.c.day == data_quality.c.day)
    )
    return {pk: score for pk, score in conn.execute(query)}


def health_rows(store: Store) -> list[dict[str, Any]]:
    """Every device's last health check, by device id."""
    query = (
        select(devices.c.device_id, devices.c.type, device_health)
        .join(devices, devices.c.id == device_health.c.device_pk)
        .order_by(devices.c.device_id)
    )
    with store.read_connection() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
