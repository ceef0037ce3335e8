"""What the API reads: the fleet, one device, its latest readings, a series' history for
a chart, and the figures of the stats view. JSON-ready values, the same on both engines.

History is columnar (`times` in epoch milliseconds, `values`, `min`, `max`, `count`), as
chart libraries such as uPlot take it. How a range is answered:
- `1h`, `1d`, `1w` from the rollups; `1m`, `5m` aggregated from the readings by the
  database; `raw` the readings themselves.
- `auto` (the default) picks the coarsest stored tier giving at least `width / 3`
  buckets over the range (1w, 1d, then 1h), so a year is answered from a few hundred
  daily rollups; below that it reads the readings.
- Raw readings more numerous than `width` are reduced by the database to one point per
  pixel column with its count, mean, min and max (MinMax); rollup buckets more numerous
  than `width` are merged the same way. A response never holds more than `width`
  points then, and says `reduced`.
- Otherwise a response holds at most `max_points`; past that it says `truncated` and
  gives `next`, the cursor of the rest. Nothing is ever cut silently.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from iotpipe.app.paging import check_limit, decode_cursor, encode_cursor, page_sorted
from iotpipe.config import SEVERITIES
from iotpipe.errors import IotpipeError, NotFound
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    Micros,
    format_micros,
    now_micros,
)
from iotpipe.text import printable

if TYPE_CHECKING:
    from iotpipe.app import App

MICROS_PER_MINUTE = 60 * MICROS_PER_SECOND
BUCKET_WIDTHS: dict[str, Micros] = {
    "1m": MICROS_PER_MINUTE,
    "5m": 5 * MICROS_PER_MINUTE,
    "1h": MICROS_PER_HOUR,
    "1d": MICROS_PER_DAY,
    "1w": 7 * MICROS_PER_DAY,
}
BUCKETS = ("raw", "auto", *BUCKET_WIDTHS)
ROLLUP_TIERS = ("1w", "1d", "1h")  # coarsest first
AGGREGATES = ("avg", "min", "max", "sum", "count")
DEVICE_SORTS = ("device_id", "last_seen", "quality", "battery", "status")
DEFAULT_RANGE = MICROS_PER_DAY
STATS_TTL = 2.0  # seconds the stats view is reused: many dashboards, one computation
# Seconds the stats view's count of readings is reused: it sums every weekly rollup (a
# scan of 265,000 rows, 73 ms of PostgreSQL at 10M readings), where the rest of the view
# costs ~15 ms; and it moves only when the rollup job runs.
STATS_TOTAL_TTL = 30.0


def ms(t: Micros) -> int:
    return t // 1000


# -- devices -------------------------------------------------------------------------------
def device_view(row: dict[str, Any], status: str) -> dict[str, Any]:
    location = None
    if row["latitude"] is not None and row["longitude"] is not None:
        location = {"lat": row["latitude"], "lon": row["longitude"], "elevation": row["elevation"]}
    return {
        "device_id": row["device_id"],
        "name": row["name"],
        "type": row["type"],
        "firmware": row["firmware"],
        "location": location,
        "attributes": row["attributes"] or {},
        "status": status,
        "first_seen": _iso(row["first_seen"]),
        "last_seen": _iso(row["last_seen"]),
        "battery": row["battery"],
        "battery_low": bool(row["battery_low"]) if row["battery_low"] is not None else None,
        "quality_score": row["quality_score"],
        "health_score": row["health_score"],
        "interval_seconds": row["interval_seconds"],
        "metrics": row["metrics"],
    }


def fleet(app: App) -> list[dict[str, Any]]:
    from iotpipe.analytics.fleet import device_rows, status_of

    now = now_micros()
    config = app.settings.analytics
    return [device_view(row, status_of(row, config, now)) for row in device_rows(app.store)]


def list_devices(
    app: App,
    status: str | None = None,
    type: str | None = None,
    q: str | None = None,
    sort: str = "device_id",
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    from iotpipe.analytics.fleet import STATUSES

    limit = check_limit(limit, app.settings.api.page_size, app.settings.api.max_page_size)
    if status is not None and status not in STATUSES:
        raise IotpipeError(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")
    field = sort.removeprefix("-")
    if field not in DEVICE_SORTS:
        choices = ", ".join(f"{s}, -{s}" for s in DEVICE_SORTS)
        raise IotpipeError(f"unknown sort {sort!r}; choose one of: {choices}")
    descending = sort.startswith("-")
    items = fleet(app)
    if status is not None:
        items = [d for d in items if d["status"] == status]
    if type is not None:
        items = [d for d in items if d["type"] == type]
    if q:
        needle = q.casefold()
        items = [
            d for d in items if needle in d["device_id"].casefold() or needle in (d["name"] or "").casefold()
        ]

    def key(device: dict[str, Any]) -> list[Any]:
        value = {
            "device_id": device["device_id"],
            "last_seen": device["last_seen"],
            "quality": device["quality_score"],
            "battery": device["battery"],
            "status": STATUSES.index(device["status"]),
        }[field]
        if descending and value is not None:
            value = -value if isinstance(value, int | float) else _descending_text(value)
        tie = (
            _descending_text(device["device_id"])
            if descending and field == "device_id"
            else device["device_id"]
        )
        return [value, tie]

    items.sort(key=lambda d: [(v is None, v) for v in key(d)])
    page, following = page_sorted(items, key, limit, cursor, f"devices:{sort}")
    return {"items": page, "next": following}


def _descending_text(text: str) -> list[int]:
    """A key that sorts strings in reverse, as a list of ints (JSON round-trips it)."""
    return [-ord(c) for c in text] + [1]


def get_device(app: App, device_id: str) -> dict[str, Any]:
    from iotpipe.analytics.fleet import device_rows, status_of

    rows = device_rows(app.store, device_id)
    if not rows:
        raise NotFound(f"no device {printable(device_id)!r} in the store; check the id (case matters)")
    return device_view(rows[0], status_of(rows[0], app.settings.analytics, now_micros()))


def latest(app: App, device_id: str) -> dict[str, Any]:
    readings = app.store.latest_readings(device_id)
    if not readings:
        get_device(app, device_id)  # 404 when unknown; a known device may have no readings yet
    return {
        "device_id": device_id,
        "readings": [
            {"metric": metric, "unit": unit, "time": format_micros(at), "value": value}
            for metric, unit, at, value in readings
        ],
    }


# -- history -------------------------------------------------------------------------------
def series(
    app: App,
    device_id: str,
    metric: str,
    start: Micros | None = None,
    end: Micros | None = None,
    bucket: str = "auto",
    agg: str = "avg",
    width: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A series' history over [start, end) as columns (see the module's docstring)."""
    from iotpipe.analytics.common import find_series

    if bucket not in BUCKETS:
        raise IotpipeError(f"unknown bucket {bucket!r}; choose one of: {', '.join(BUCKETS)}")
    if agg not in AGGREGATES:
        raise IotpipeError(f"unknown agg {agg!r}; choose one of: {', '.join(AGGREGATES)}")
    if width is not None and not 10 <= width <= 100_000:
        raise IotpipeError(f"width must be between 10 and 100000 (pixels), got {width}")
    position = decode_cursor(cursor, "series")
    if position is not None:
        start, end, bucket = int(position["start"]), int(position["end"]), str(position["bucket"])
        width = position.get("width")
    end = end if end is not None else now_micros()
    start = start if start is not None else end - DEFAULT_RANGE
    if start >= end:
        raise IotpipeError(f"start ({format_micros(start)}) must be before end ({format_micros(end)})")
    series_id = app.store.series_id(device_id, metric)
    if series_id is None:
        with app.store.read_connection() as conn:
            find_series(conn, device_id, metric)  # raises NotFound, naming what is missing
        raise NotFound(f"no series {device_id!r} {metric!r}")
    limit = app.settings.api.max_points
    answer: dict[str, Any] = {
        "device_id": device_id,
        "metric": metric,
        "requested_bucket": bucket,
        "agg": agg,
        "start": format_micros(start),
        "end": format_micros(end),
        "time_unit": "ms",
    }
    chosen = bucket
    if bucket == "auto":
        width = width or 1000
        chosen = _auto_tier(start, end, width)
    if chosen in ROLLUP_TIERS:
        columns, next_start, reduced = _from_rollups(app, series_id, chosen, start, end, width, limit)
        answer["source"] = "rollups"
    elif chosen in BUCKET_WIDTHS:
        columns, next_start = _from_buckets(app, device_id, metric, chosen, start, end, limit)
        reduced = False
        answer["source"] = "readings"
    else:
        columns, next_start, reduced = _from_readings(app, device_id, metric, start, end, width, limit)
        answer["source"] = "readings"
    answer["bucket"] = chosen
    answer["reduced"] = reduced
    answer["width"] = width
    answer["points"] = len(columns["times"])
    answer.update(_with_values(columns, agg, raw=chosen == "raw" and not reduced))
    answer["truncated"] = next_start is not None
    answer["next"] = (
        encode_cursor({"k": "series", "start": next_start, "end": end, "bucket": chosen, "width": width})
        if next_start is not None
        else None
    )
    return answer


def _auto_tier(start: Micros, end: Micros, width: int) -> str:
    span = end - start
    for tier in ROLLUP_TIERS:
        if span / BUCKET_WIDTHS[tier] >= width / 3:
            return tier
    return "raw"


def _empty() -> dict[str, list[Any]]:
    return {"times": [], "avg": [], "min": [], "max": [], "count": []}


def _from_rollups(
    app: App, series_id: int, tier: str, start: Micros, end: Micros, width: int | None, limit: int
) -> tuple[dict[str, list[Any]], Micros | None, bool]:
    from iotpipe.analytics.rollups import chart_columns

    times, counts, means, lows, highs = chart_columns(app.store, series_id, tier, start, end)
    if width is not None and len(times) > width:
        return _merged(times, counts, means, lows, highs, start, end, width), None, True
    next_start = None
    if len(times) > limit:
        next_start = times[limit] * 1000
        times, counts, means = times[:limit], counts[:limit], means[:limit]
        lows, highs = lows[:limit], highs[:limit]
    return {"times": times, "avg": means, "min": lows, "max": highs, "count": counts}, next_start, False


def _merged(
    times: list[int],
    counts: list[int],
    means: list[float],
    lows: list[float],
    highs: list[float],
    start: Micros,
    end: Micros,
    width: int,
) -> dict[str, list[Any]]:
    """Buckets merged into `width` columns over [start, end): counts add, means weigh by
    count, min of mins, max of maxes. A bucket that begins before `start` goes to the first."""
    step = math.ceil((end - start) / width)
    merged: dict[int, list[float]] = {}
    for at, count, mean, low, high in zip(times, counts, means, lows, highs, strict=True):
        column = max(0, (at * 1000 - start) // step)
        acc = merged.get(column)
        if acc is None:
            merged[column] = [float(count), mean * count, low, high]
        else:
            acc[0] += count
            acc[1] += mean * count
            acc[2] = min(acc[2], low)
            acc[3] = max(acc[3], high)
    columns = _empty()
    for column, (n, total, low, high) in merged.items():
        _append(columns, start + column * step, int(n), total / n, low, high)
    return columns


def _from_buckets(
    app: App, device_id: str, metric: str, bucket: str, start: Micros, end: Micros, limit: int
) -> tuple[dict[str, list[Any]], Micros | None]:
    step = BUCKET_WIDTHS[bucket]
    origin = start - start % step  # aligned to whole minutes / 5 minutes since the epoch
    next_start = None
    if (end - origin) / step > limit:
        next_start = origin + limit * step
        end = next_start
    columns = _empty()
    for at, count, avg, low, high in app.store.reading_buckets(device_id, metric, start, end, step, origin):
        _append(columns, at, count, avg, low, high)
    if columns["times"] and columns["times"][0] < ms(start):
        columns["times"][0] = ms(start)  # the first bucket holds only readings from `start`
    return columns, next_start


def _from_readings(
    app: App, device_id: str, metric: str, start: Micros, end: Micros, width: int | None, limit: int
) -> tuple[dict[str, list[Any]], Micros | None, bool]:
    store = app.store
    # One read of the range's first readings, up to one past what may be sent raw, says
    # whether they must be reduced: no count of the whole range first.
    rows = store.raw_readings(device_id, metric, start, end, max(width or 0, limit) + 1)
    if width is not None and len(rows) > width:
        step = math.ceil((end - start) / width)
        columns = _empty()
        for at, count, avg, low, high in store.reading_buckets(device_id, metric, start, end, step):
            _append(columns, at, count, avg, low, high)
        return columns, None, True
    next_start = None
    if len(rows) > limit:
        next_start = rows[limit][0]
        rows = rows[:limit]
    columns = _empty()
    columns["times"] = [ms(t) for t, _ in rows]
    columns["avg"] = [v for _, v in rows]
    return columns, next_start, False


def _append(
    columns: dict[str, list[Any]], at: Micros, count: int, avg: float, low: float, high: float
) -> None:
    columns["times"].append(ms(at))
    columns["count"].append(count)
    columns["avg"].append(avg)
    columns["min"].append(low)
    columns["max"].append(high)


def _with_values(columns: dict[str, list[Any]], agg: str, raw: bool) -> dict[str, Any]:
    if raw:
        return {"times": columns["times"], "values": columns["avg"], "min": None, "max": None, "count": None}
    if agg == "sum":
        values: list[Any] = [a * n for a, n in zip(columns["avg"], columns["count"], strict=True)]
    else:
        values = columns[agg]
    return {
        "times": columns["times"],
        "values": values,
        "min": columns["min"],
        "max": columns["max"],
        "count": columns["count"],
    }


# -- stats ---------------------------------------------------------------------------------
class StatsCache:
    """The stats view, computed at most once per STATS_TTL seconds per process: while one
    request recomputes it, the others get the previous one instead of queueing."""

    def __init__(self) -> None:
        self.value: dict[str, Any] | None = None
        self.at = 0.0
        self._lock = threading.Lock()
        self._readings: tuple[float, int] | None = None  # (when, readings rolled up)

    def get(self, app: App) -> dict[str, Any]:
        fresh = self.value is not None and time.monotonic() - self.at <= STATS_TTL
        if fresh or not self._lock.acquire(blocking=self.value is None):
            assert self.value is not None
            return self.value
        try:
            self.value = overview(app, self._rolled_up(app))
            self.at = time.monotonic()
        finally:
            self._lock.release()
        return self.value

    def _rolled_up(self, app: App) -> int:
        from iotpipe.analytics.fleet import rolled_up_readings

        now = time.monotonic()
        if self._readings is None or now - self._readings[0] > STATS_TOTAL_TTL:
            self._readings = (now, rolled_up_readings(app.store))
        return self._readings[1]


def overview(app: App, readings: int) -> dict[str, Any]:
    """The stats view, with `readings` counted by the rollups (StatsCache keeps it)."""
    from iotpipe.analytics.fleet import open_alerts_by_severity, rollup_backlog, status_counts

    by_status, scores = status_counts(app.store, app.settings.analytics, now_micros())
    severities = dict.fromkeys(SEVERITIES, 0)
    severities.update(open_alerts_by_severity(app.store))
    backlog, _ = rollup_backlog(app.store)
    return {
        "devices": {"total": sum(by_status.values()), **by_status},
        "readings": {"stored": readings, "hours_not_rolled_up": backlog},
        "ingest": {
            "readings_per_second": round(app.telemetry.ingest_rate(), 3),
            "window_seconds": 60,
        },
        "alerts": {"open": sum(severities.values()), "by_severity": severities},
        "quality": {"average_score": round(sum(scores) / len(scores), 2) if scores else None},
        "dead_letters": app.store.dead_letter_count(),
        "computed_at": format_micros(now_micros()),
    }


def _iso(value: Micros | None) -> str | None:
    return format_micros(value) if value is not None else None
