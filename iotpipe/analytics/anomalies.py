"""Batch anomaly detection — the z-score rule over a trailing window, the documented baseline — and reading anomalies back.

The rule, per series: a reading x is anomalous when |x - mean| > k * stddev, the mean
and (sample) stddev being those of the series' readings in the `window` before it (the
reading itself excluded). A window holding fewer than `min_count` readings, or readings
that are all equal, judges nothing. It runs over any time range: the scheduled job
re-examines the last `lookback`, `iotpipe anomalies --detect` any range.

Each anomalous reading is one row (method 'zscore', end_time = time: an instant, never
an open episode). Detection over a range makes the stored rows of that range equal to
what the rule says of the readings stored now: new ones are added, and ones that late
readings have explained away are removed; running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, delete, func, or_, select

from iotpipe.config import AnomalySettings, Settings
from iotpipe.model import MICROS_PER_SECOND, Micros, format_micros, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import anomalies, devices, series

METHOD = "zscore"
METHODS = ("zscore", "streaming")


@dataclass(frozen=True, slots=True)
class ZscoreRule:
    k: float = 3.0
    window: Micros = 3600 * MICROS_PER_SECOND
    min_count: int = 20

    @classmethod
    def from_settings(cls, settings: AnomalySettings) -> ZscoreRule:
        return cls(settings.k, int(settings.window_seconds * MICROS_PER_SECOND), settings.min_count)


def zscore_anomalies(
    times: np.ndarray, values: np.ndarray, rule: ZscoreRule, since: Micros | None = None, signed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores (|x - mean| / stddev; (x - mean) / stddev if `signed`) of one
    series' anomalous readings.

    `times` ascending; readings before `since` serve only as the window of later ones.
    """
    count = len(values)
    if count == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    index = np.arange(count)
    first = np.searchsorted(times, times - rule.window, side="left")
    # Running sums over values shifted by their median: the differences of cumulative
    # sums then lose no precision to large offsets (a pressure of 1013 hPa).
    shifted = values - np.median(values)
    sums = np.concatenate(([0.0], np.cumsum(shifted)))
    squares = np.concatenate(([0.0], np.cumsum(shifted * shifted)))
    n = index - first
    judged = n >= max(rule.min_count, 2)
    if since is not None:
        judged &= times >= since
    n_safe = np.where(judged, n, 2)
    total = sums[index] - sums[first]
    mean = total / n_safe
    variance = np.maximum((squares[index] - squares[first] - total * mean) / (n_safe - 1), 0.0)
    stddev = np.sqrt(variance)
    # Rounding leaves a flat window a stddev of ~1e-16 of its values rather than 0.
    judged &= stddev > 1e-9 * (np.abs(mean) + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = (shifted - mean) / stddev
    score = np.abs(deviation)
    flagged = np.flatnonzero(judged & (score > rule.k))
    return flagged, (deviation if signed else score)[flagged]


def detect_zscore(
    store: Store,
    rule: ZscoreRule,
    start: Micros,
    end: Micros | None = None,
    device_id: str | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Apply the rule to the readings in [start, end) of every series (or one device's,
    or one metric's), and make the stored z-score anomalies of that range match.

    A long range is walked a day at a time (each day read with the window before it),
    so that a backfill over years holds one day of a series in memory, not years.
    """
    summary = {"series": 0, "readings": 0, "anomalies": 0, "added": 0, "removed": 0}
    for series_id in _series_ids(store, device_id, metric):
        summary["series"] += 1
        span = store.series_span(series_id)
        if span is None:
            continue
        newest = span[1]
        stop = newest + 1 if end is None else min(end, newest + 1)
        for since in range(start, stop, CHUNK):
            counts = _detect_span(store, rule, series_id, since, min(since + CHUNK, stop))
            for key, count in counts.items():
                summary[key] += count
    return summary


CHUNK = 86_400 * MICROS_PER_SECOND  # what detect_zscore reads of a series at once, window aside


def _detect_span(
    store: Store, rule: ZscoreRule, series_id: int, start: Micros, end: Micros
) -> dict[str, int]:
    with store.read_connection() as conn:
        times, values = store.read_series(series_id, start - rule.window, end, conn)
        stored = _stored_times(conn, series_id, start, end)
    flagged, scores = zscore_anomalies(times, values, rule, since=start, signed=True)
    found = {int(times[i]): (float(values[i]), float(s)) for i, s in zip(flagged, scores, strict=True)}
    added = [t for t in found if t not in stored]
    removed = [row_id for t, row_id in stored.items() if t not in found]
    if added or removed:
        _apply(store, series_id, found, added, removed)
    return {
        "readings": int(np.count_nonzero(times >= start)),
        "anomalies": len(found),
        "added": len(added),
        "removed": len(removed),
    }


def _series_ids(store: Store, device_id: str | None, metric: str | None) -> list[int]:
    query = select(series.c.id).join(devices, devices.c.id == series.c.device_pk).order_by(series.c.id)
    if device_id is not None:
        query = query.where(devices.c.device_id == device_id)
    if metric is not None:
        query = query.where(series.c.metric == metric)
    with store.read_connection() as conn:
        return list(conn.scalars(query))


def _stored_times(conn: Connection, series_id: int, start: Micros, end: Micros | None) -> dict[Micros, int]:
    query = select(anomalies.c.time, anomalies.c.id).where(
        anomalies.c.series_id == series_id, anomalies.c.method == METHOD, anomalies.c.time >= start
    )
    if end is not None:
        query = query.where(anomalies.c.time < end)
    return {t: row_id for t, row_id in conn.execute(query)}


def _apply(
    store: Store,
    series_id: int,
    found: dict[Micros, tuple[float, float]],
    added: list[Micros],
    removed: list[int],
) -> None:
    now = now_micros()
    with store.write_transaction() as conn:
        if removed:
            conn.execute(delete(anomalies).where(anomalies.c.id.in_(removed)))
        if added:
            insert = store.dialect_insert(anomalies).on_conflict_do_nothing(
                index_elements=["series_id", "time", "method"]
            )
            conn.execute(
                insert,
                [
                    {
                        "series_id": series_id,
                        "time": t,
                        "end_time": t,
                        "value": found[t][0],
                        "score": abs(found[t][1]),
                        "method": METHOD,
                        "reason": "spike" if found[t][1] > 0 else "dip",
                        "detected_at": now,
                    }
                    for t in added
                ],
            )


def anomalies_job(store: Store, settings: Settings) -> dict[str, Any]:
    """The z-score rule over the last `anomalies.lookback_seconds`, for every series."""
    config = settings.anomalies
    start = now_micros() - int(config.lookback_seconds * MICROS_PER_SECOND)
    return {"since": format_micros(start), **detect_zscore(store, ZscoreRule.from_settings(config), start)}


def anomaly_rows(
    store: Store,
    device_id: str | None = None,
    metric: str | None = None,
    method: str | None = None,
    start: Micros | None = None,
    end: Micros | None = None,
    limit: int | None = None,
    before: tuple[Micros, int] | None = None,
) -> list[dict[str, Any]]:
    """Stored anomalies, oldest first (the newest `limit` of them when given, older than
    the (time, id) `before` when given: the next page back)."""
    query = _anomaly_select().order_by(anomalies.c.time.desc(), anomalies.c.id.desc())
    if device_id is not None:
        query = query.where(devices.c.device_id == device_id)
    if metric is not None:
        query = query.where(series.c.metric == metric)
    if method is not None:
        query = query.where(anomalies.c.method == method)
    if start is not None:
        query = query.where(anomalies.c.time >= start)
    if end is not None:
        query = query.where(anomalies.c.time < end)
    if before is not None:
        at, anomaly_id = before
        query = query.where(
            or_(anomalies.c.time < at, and_(anomalies.c.time == at, anomalies.c.id < anomaly_id))
        )
    if limit is not None:
        query = query.limit(limit)
    with store.read_connection() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
    rows.reverse()
    return rows


def anomalies_after(store: Store, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Anomalies recorded after the one with id `after_id`, in the order they were
    recorded (the live feed's cursor), as anomaly_rows gives them."""
    query = _anomaly_select().where(anomalies.c.id > after_id).order_by(anomalies.c.id).limit(limit)
    with store.read_connection() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def last_anomaly_id(store: Store) -> int:
    with store.read_connection() as conn:
        return int(conn.scalar(select(func.coalesce(func.max(anomalies.c.id), 0))) or 0)


def _anomaly_select() -> Any:
    return (
        select(
            anomalies.c.id,
            devices.c.device_id,
            series.c.metric,
            anomalies.c.time,
            anomalies.c.end_time,
            anomalies.c.value,
            anomalies.c.score,
            anomalies.c.method,
            anomalies.c.reason,
        )
        .join(series, series.c.id == anomalies.c.series_id)
        .join(devices, devices.c.id == series.c.device_pk)
    )
