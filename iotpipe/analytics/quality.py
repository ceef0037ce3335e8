"""Data quality per device and UTC day: received vs expected readings, invalid,
out-of-range and anomalous ones, and a score with the numbers behind it.

    score = 100 − 30·missing% − 40·out-of-range% − 30·anomalous%   (clipped to 0–100)

with each percentage a fraction of 1 (so each term weighs at most its 30/40/30
points): missing% = missing / expected, out-of-range% and anomalous% = their count /
readings received. A device's expected readings on a day are, per series, the part of
the day it was expected to report (from its first reading to now) divided by its
usual interval (intervals.py). Received, minimum and maximum come from the daily
rollups, so the rollup job should run first (`iotpipe jobs all` does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, bindparam, func, select, text

from iotpipe.analytics.common import day_micros
from iotpipe.analytics.intervals import SeriesActivity, series_activity
from iotpipe.config import MetricBounds, Settings
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_SECOND, Micros, day_name, day_start, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import (
    UtcMicros,
    anomalies,
    data_quality,
    devices,
    invalid_readings,
    job_state,
    rollups,
    series,
)

MISSING_WEIGHT, OUT_OF_RANGE_WEIGHT, ANOMALOUS_WEIGHT = 30.0, 40.0, 30.0


@dataclass(slots=True)
class DayQuality:
    expected: int = 0
    received: int = 0
    missing: int = 0
    invalid: int = 0
    out_of_range: int = 0
    anomalous: int = 0
    missing_pct: float = 0.0
    out_of_range_pct: float = 0.0
    anomalous_pct: float = 0.0
    score: float = 100.0

    def finish(self) -> DayQuality:
        """Derive missing, the percentages and the score from the counts."""
        self.missing = max(0, self.expected - self.received)
        self.missing_pct = 100.0 * self.missing / self.expected if self.expected else 0.0
        self.out_of_range_pct = 100.0 * self.out_of_range / self.received if self.received else 0.0
        self.anomalous_pct = 100.0 * self.anomalous / self.received if self.received else 0.0
        self.score = quality_score(self.missing_pct, self.out_of_range_pct, self.anomalous_pct)
        return self


def quality_score(missing_pct: float, out_of_range_pct: float, anomalous_pct: float) -> float:
    """The score from percentages (0–100 each)."""
    score = (
        100.0
        - (
            MISSING_WEIGHT * missing_pct
            + OUT_OF_RANGE_WEIGHT * out_of_range_pct
            + ANOMALOUS_WEIGHT * anomalous_pct
        )
        / 100.0
    )
    return round(min(100.0, max(0.0, score)), 2)


def quality_job(store: Store, settings: Settings) -> dict[str, Any]:
    return compute_quality(store, settings, now_micros())


def compute_quality(store: Store, settings: Settings, now: Micros) -> dict[str, Any]:
    """Recompute the recent days of every device, and older days whose rollups changed."""
    config = settings.analytics
    today = day_start(now)
    window_start = today - (config.quality_days - 1) * MICROS_PER_DAY
    with store.read_connection() as conn:
        seen_until = _previous_cursor(conn)
        series_rows = conn.execute(select(series.c.id, series.c.device_pk, series.c.metric)).all()
        activity = series_activity(store, conn, [r.id for r in series_rows], config.interval_sample)
        days: set[tuple[int, Micros]] = set()  # (series_id, day start)
        for row in series_rows:
            known = activity.get(row.id)
            if known is not None:
                first_day = max(window_start, day_start(known.first_time))
                days.update((row.id, d) for d in range(first_day, today + 1, MICROS_PER_DAY))
        # The first run looks at every day ever rolled up (e.g. an imported history).
        days.update(_days_with_changed_rollups(conn, seen_until if seen_until is not None else 0))
        results = _measure(store, conn, settings, series_rows, activity, days, now)
    with store.write_transaction() as conn:
        for (device_pk, day), quality in results.items():
            _save(store, conn, device_pk, day, quality, now)
    return {"device_days": len(results), "rollups_seen_until": now}


def _previous_cursor(conn: Connection) -> Micros | None:
    """The start of the last successful run: daily rollups updated since changed."""
    result = conn.scalar(select(job_state.c.last_result).where(job_state.c.name == "quality"))
    if isinstance(result, dict) and isinstance(result.get("rollups_seen_until"), int):
        return int(result["rollups_seen_until"])
    return None


def _days_with_changed_rollups(conn: Connection, since: Micros) -> set[tuple[int, Micros]]:
    # The literal bucket lets SQLite use the partial index rollups_daily_updated.
    query = (
        text("SELECT series_id, bucket_start FROM rollups WHERE bucket = '1d' AND updated_at >= :since")
        .bindparams(bindparam("since", type_=UtcMicros()))
        .columns(bucket_start=UtcMicros())
    )
    return {(sid, start) for sid, start in conn.execute(query, {"since": since})}


def _measure(
    store: Store,
    conn: Connection,
    settings: Settings,
    series_rows: Sequence[Any],
    activity: dict[int, SeriesActivity],
    days: set[tuple[int, Micros]],
    now: Micros,
) -> dict[tuple[int, str], DayQuality]:
    config = settings.analytics
    by_id = {r.id: r for r in series_rows}
    results: dict[tuple[int, str], DayQuality] = defaultdict(DayQuality)
    daily = _daily_rollups(conn, days)
    for series_id, day in sorted(days):
        row, known = by_id[series_id], activity.get(series_id)
        if known is None:
            continue
        quality = results[(row.device_pk, day_name(day))]
        quality.expected += _expected(known, day, now)
        count, low, high = daily.get((series_id, day), (0, None, None))
        quality.received += count
        bounds = config.bounds.get(row.metric)
        if count and bounds is not None and _outside(bounds, low, high):
            quality.out_of_range += _count_out_of_range(store, conn, series_id, day, bounds)
    device_days = {key for key in results}
    for key, invalid in _invalid_counts(conn, device_days).items():
        results[key].invalid = invalid
    for key, anomalous in _anomalous_counts(conn, by_id, device_days).items():
        results[key].anomalous = anomalous
    return {
        key: quality.finish()
        for key, quality in results.items()
        if quality.expected or quality.received or quality.invalid
    }


def _expected(known: SeriesActivity, day: Micros, now: Micros) -> int:
    """Readings the series should have sent on the day: the time it was expected to
    report (from its first reading, up to now) over its usual interval."""
    if known.interval_seconds is None:
        return 0
    start = max(day, known.first_time)
    end = min(day + MICROS_PER_DAY, now)
    if end <= start:
        return 0
    return round((end - start) / MICROS_PER_SECOND / known.interval_seconds)


def _daily_rollups(
    conn: Connection, days: set[tuple[int, Micros]]
) -> dict[tuple[int, Micros], tuple[int, float, float]]:
    if not days:
        return {}
    found: dict[tuple[int, Micros], tuple[int, float, float]] = {}
    starts = sorted({d for _, d in days})
    query = select(
        rollups.c.series_id, rollups.c.bucket_start, rollups.c.count, rollups.c.min, rollups.c.max
    ).where(
        rollups.c.bucket == "1d", rollups.c.bucket_start >= starts[0], rollups.c.bucket_start <= starts[-1]
    )
    for sid, start, count, low, high in conn.execute(query):
        if (sid, start) in days:
            found[(sid, start)] = (count, low, high)
    return found


def _outside(bounds: MetricBounds, low: float | None, high: float | None) -> bool:
    return (bounds.min is not None and low is not None and low < bounds.min) or (
        bounds.max is not None and high is not None and high > bounds.max
    )


def _count_out_of_range(
    store: Store, conn: Connection, series_id: int, day: Micros, bounds: MetricBounds
) -> int:
    """Only for days whose rollup min or max is already outside the bounds."""
    _, values = store.read_series(series_id, day, day + MICROS_PER_DAY, conn)
    outside = np.zeros(len(values), dtype=bool)
    if bounds.min is not None:
        outside |= values < bounds.min
    if bounds.max is not None:
        outside |= values > bounds.max
    return int(np.count_nonzero(outside))


def _invalid_counts(conn: Connection, device_days: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    counts: dict[tuple[int, str], int] = {}
    for name in sorted({day for _, day in device_days}):
        start = day_micros(name)
        query = (
            select(invalid_readings.c.device_pk, func.count())
            .where(invalid_readings.c.time >= start, invalid_readings.c.time < start + MICROS_PER_DAY)
            .group_by(invalid_readings.c.device_pk)
        )
        for device_pk, n in conn.execute(query):
            if (device_pk, name) in device_days:
                counts[(device_pk, name)] = int(n)
    return counts


def _anomalous_counts(
    conn: Connection, by_id: dict[int, Any], device_days: set[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """Readings flagged by any detector (a reading flagged by both counts once)."""
    if not device_days:
        return {}
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for name in sorted({day for _, day in device_days}):
        start = day_micros(name)
        query = (
            select(anomalies.c.series_id, anomalies.c.time)
            .distinct()
            .where(and_(anomalies.c.time >= start, anomalies.c.time < start + MICROS_PER_DAY))
        )
        for series_id, _ in conn.execute(query):
            row = by_id.get(series_id)
            if row is not None and (row.device_pk, name) in device_days:
                counts[(row.device_pk, name)] += 1
    return counts


def _save(store: Store, conn: Connection, device_pk: int, day: str, quality: DayQuality, now: Micros) -> None:
    values = {**asdict(quality), "computed_at": now}
    statement = store.dialect_insert(data_quality).values(device_pk=device_pk, day=day, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["device_pk", "day"], set_=values))


# -- reads ---------------------------------------------------------------------------------
def quality_rows(
    store: Store, first_day: str | None = None, last_day: str | None = None, device_id: str | None = None
) -> list[dict[str, Any]]:
    """Stored quality per device and day in [first_day, last_day], by device then day."""
    query = (
        select(devices.c.device_id, data_quality)
        .join(devices, devices.c.id == data_quality.c.device_pk)
        .order_by(devices.c.device_id, data_quality.c.day)
    )
    if first_day is not None:
        query = query.where(data_quality.c.day >= first_day)
    if last_day is not None:
        query = query.where(data_quality.c.day <= last_day)
    if device_id is not None:
        query = query.where(devices.c.device_id == device_id)
    with store.read_connection() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
