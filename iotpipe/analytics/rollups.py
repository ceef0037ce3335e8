"""Rollups: per series, 1 hour / 1 day / 1 week buckets kept current from the dirty hours.

Every ingest batch marks the (series, hour) pairs it touched in `dirty_hours`, in the
readings' own transaction, late and replayed readings included. The job:

1. takes the marks over into `rollup_queue` in one short transaction. On PostgreSQL it
   first locks `dirty_hours` (SHARE ROW EXCLUSIVE, which waits for every ingest
   transaction that is writing marks and holds new ones back for these few
   milliseconds). That is what makes the hand-over exact: a batch whose mark found an
   existing one (ON CONFLICT DO NOTHING leaves no trace) has committed its readings
   before the marks are taken, and any batch after the hand-over adds a fresh mark that
   the next run sees. SQLite gets the same from its single writer lock (IMMEDIATE).
   The take also bumps `rollup_epoch`: a batch takes its side of that lock before it
   reads the epoch, so a writer that committed marks under the epoch it reads knows
   they are still in place and does not write them again (store/marks.py).
2. recomputes queued hours in chunks, each one transaction: hourly state from the raw
   readings (aggregated in the database, one primary-key range scan per hour), then the
   touched days merged from their hours
   and the touched weeks from their days (Chan et al.'s parallel merge of count, mean
   and M2 — exact, numerically stable, no second pass over readings), then drops the
   chunk from the queue. A crash loses nothing (the queue is durable); recomputing a
   bucket from the same readings gives the same row, so running twice changes nothing.

Weeks are ISO weeks: Monday 00:00 UTC to the next Monday; days are UTC days.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, func, select, text

from iotpipe.analytics.common import MICROS_PER_WEEK, WEEK_ORIGIN, SeriesRef
from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_SECOND, Micros, day_start, now_micros
from iotpipe.store import Store, driver
from iotpipe.store.schema import UtcMicros, rollups
from iotpipe.store.tiers import pg_array

BUCKETS = ("1h", "1d", "1w")

# Per dialect: a time plus one bucket width, and a time floored to its day / ISO week.
_SQL_TIME = {
    "sqlite": {
        "plus_hour": f"{{}} + {MICROS_PER_HOUR}",
        "plus_day": f"{{}} + {MICROS_PER_DAY}",
        "plus_week": f"{{}} + {MICROS_PER_WEEK}",
        # SQLite's % truncates toward zero; adding the width back floors times before 1970 too.
        "day": f"({{0}} - (({{0}} % {MICROS_PER_DAY}) + {MICROS_PER_DAY}) % {MICROS_PER_DAY})",
        "week": f"({{0}} - ((({{0}} - {WEEK_ORIGIN}) % {MICROS_PER_WEEK}) + {MICROS_PER_WEEK}) % {MICROS_PER_WEEK})",
    },
    "postgresql": {
        "plus_hour": "{} + interval '1 hour'",
        "plus_day": "{} + interval '1 day'",
        "plus_week": "{} + interval '7 days'",
        "day": "date_bin('1 day', {0}, timestamptz '1970-01-01 00:00:00+00')",
        "week": "date_bin('7 days', {0}, timestamptz '1970-01-05 00:00:00+00')",
    },
}

_COLUMNS = (
    "series_id, bucket, bucket_start, count, mean, m2, min, max, "
    "first_time, first_value, last_time, last_value, updated_at"
)
# A chunk is the queued (series, hour) pairs after the previous chunk's last, up to its
# own last. The lower bound matters: the pairs already done are deleted but their index
# entries stay until VACUUM, and a range open at the bottom would walk them all again in
# every chunk (on PostgreSQL a year's backfill of 10M hours slowed fourfold as it went).
# The series range repeats what the row bounds imply, for PostgreSQL's planner: it
# estimates a row comparison at ~10 % of the queue and would delete a chunk by scanning
# the whole table; on the series column it sees a handful of series and takes the index.
_CHUNK = (
    "q.series_id BETWEEN :ls AND :s"
    " AND (q.series_id, q.hour_start) > (:ls, :lh) AND (q.series_id, q.hour_start) <= (:s, :h)"
)
# Before the first chunk: every series id is above -1, whatever the hour.
_START = (-1, 0)


def _sql(dialect: str, template: str) -> TextClause:
    t = _SQL_TIME[dialect]
    statement = template.format(
        chunk=_CHUNK,
        columns=_COLUMNS,
        hour_end=t["plus_hour"].format("q.hour_start"),
        day_of_hour=t["day"].format("q.hour_start"),
        week_of_hour=t["week"].format("q.hour_start"),
        day_end=t["plus_day"].format("d.bucket_start"),
        week_end=t["plus_week"].format("d.bucket_start"),
    )
    clause = text(statement)
    typed = [bindparam(name, type_=UtcMicros()) for name in ("h", "lh", "now") if f":{name}" in statement]
    return clause.bindparams(*typed)


# Hourly partial state comes from the store (Store.hour_partials: aggregated in the
# database for hot hours, from the decoded days for packed ones) and is written here.
_HOURLY = {
    "postgresql": """
INSERT INTO rollups ({columns})
SELECT s, '1h', {h}, n, mean, m2, lo, hi, {ft}, fv, {lt}, lv, :now
FROM unnest(CAST(:s AS int[]), CAST(:h AS int8[]), CAST(:n AS int8[]), CAST(:mean AS float8[]),
            CAST(:m2 AS float8[]), CAST(:lo AS float8[]), CAST(:hi AS float8[]), CAST(:ft AS int8[]),
            CAST(:fv AS float8[]), CAST(:lt AS int8[]), CAST(:lv AS float8[]))
     AS u(s, h, n, mean, m2, lo, hi, ft, fv, lt, lv)""",
    "sqlite": """
INSERT INTO rollups ({columns})
VALUES (:s, '1h', :h, :n, :mean, :m2, :lo, :hi, :ft, :fv, :lt, :lv, :now)""",
}
_PARTIAL_FIELDS = ("s", "h", "n", "mean", "m2", "lo", "hi", "ft", "fv", "lt", "lv")
_FROM_UNIX = "('1970-01-01 00:00:00+00'::timestamptz + {} * interval '1 microsecond')"

# A day (week) merged from its hours (days): n = Σn, mean = Σn·mean / n,
# M2 = Σ(M2 + n·(mean_i − mean)²); first/last from the first and last parts (parts do not
# overlap in time). PostgreSQL reads each day's parts once (the total mean as a window
# over them) and sums in a stated order: a recomputed bucket equals the old one bit for bit.
_MERGE = {
    "postgresql": """
INSERT INTO rollups ({columns})
SELECT d.series_id, '{bucket}', d.bucket_start, t.n, t.mean, t.m2, t.lo, t.hi, t.ft, t.fv, t.lt, t.lv, :now
FROM (SELECT DISTINCT q.series_id, {target_of_hour} AS bucket_start FROM rollup_queue q WHERE {chunk}) d
CROSS JOIN LATERAL (
    SELECT sum(x.count) AS n, max(x.total_mean) AS mean,
           sum(x.m2 + x.count * (x.mean - x.total_mean) * (x.mean - x.total_mean) ORDER BY x.bucket_start) AS m2,
           min(x.min) AS lo, max(x.max) AS hi, min(x.first_time) AS ft, max(x.last_time) AS lt,
           max(x.fv) AS fv, max(x.lv) AS lv
    FROM (
        SELECT p.bucket_start, p.count, p.mean, p.m2, p.min, p.max, p.first_time, p.last_time,
               sum(p.count * p.mean) OVER whole / sum(p.count) OVER whole AS total_mean,
               first_value(p.first_value) OVER whole AS fv, last_value(p.last_value) OVER whole AS lv
        FROM rollups p
        WHERE p.series_id = d.series_id AND p.bucket = '{part}'
          AND p.bucket_start >= d.bucket_start AND p.bucket_start < {target_end}
        WINDOW whole AS (ORDER BY p.bucket_start ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ) x
) t
WHERE t.n IS NOT NULL""",
    "sqlite": """
INSERT INTO rollups ({columns})
WITH targets AS (
    SELECT DISTINCT q.series_id, {target_of_hour} AS bucket_start
    FROM rollup_queue q WHERE {chunk}
), parts AS (
    SELECT d.series_id, d.bucket_start, p.count, p.mean, p.m2, p.min, p.max,
           p.first_time, p.first_value, p.last_time, p.last_value
    FROM targets d
    JOIN rollups p ON p.series_id = d.series_id AND p.bucket = '{part}'
        AND p.bucket_start >= d.bucket_start AND p.bucket_start < {target_end}
), totals AS (
    SELECT series_id, bucket_start, sum(count) AS n, sum(count * mean) / sum(count) AS mean,
           min(min) AS lo, max(max) AS hi, min(first_time) AS ft, max(last_time) AS lt
    FROM parts GROUP BY series_id, bucket_start
)
SELECT t.series_id, '{bucket}', t.bucket_start, t.n, t.mean,
       sum(p.m2 + p.count * (p.mean - t.mean) * (p.mean - t.mean)),
       t.lo, t.hi,
       t.ft, max(CASE WHEN p.first_time = t.ft THEN p.first_value END),
       t.lt, max(CASE WHEN p.last_time = t.lt THEN p.last_value END),
       :now
FROM totals t JOIN parts p ON p.series_id = t.series_id AND p.bucket_start = t.bucket_start
GROUP BY t.series_id, t.bucket_start, t.n, t.mean, t.lo, t.hi, t.ft, t.lt""",
}

_DELETE = """
DELETE FROM rollups WHERE bucket = '{bucket}' AND (series_id, bucket_start) IN (
    SELECT DISTINCT q.series_id, {target_of_hour} FROM rollup_queue q WHERE {chunk})"""


# PostgreSQL upserts: the conflict check is an index probe, where a DELETE ... IN
# (queued buckets) may be planned as a scan of the whole rollups table per chunk.
_UPSERT = (
    " ON CONFLICT (series_id, bucket, bucket_start) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in ("count", "mean", "m2", "min", "max", "first_time", "first_value", "last_time", "last_value")
    )
    + ", updated_at = excluded.updated_at"
)


@dataclass(frozen=True)
class _Statements:
    clear_hours: tuple[TextClause, ...]  # before the hours are written
    write_hours: TextClause
    steps: tuple[TextClause, ...]  # after: days, then weeks
    dequeue: TextClause


def _statements(dialect: str) -> _Statements:
    def delete(bucket: str, target_of_hour: str) -> TextClause:
        return _sql(dialect, _DELETE.replace("{bucket}", bucket).replace("{target_of_hour}", target_of_hour))

    dequeue = _sql(dialect, "DELETE FROM rollup_queue AS q WHERE {chunk}")
    daily = _merge_template(dialect, "1d", "1h", "{day_of_hour}", "{day_end}")
    weekly = _merge_template(dialect, "1w", "1d", "{week_of_hour}", "{week_end}")
    if dialect == "postgresql":
        hourly = _HOURLY[dialect].format(
            columns=_COLUMNS,
            h=_FROM_UNIX.format("h"),
            ft=_FROM_UNIX.format("ft"),
            lt=_FROM_UNIX.format("lt"),
        )
        write_hours = text(hourly + _UPSERT).bindparams(bindparam("now", type_=UtcMicros()))
        steps = tuple(_sql(dialect, template + _UPSERT) for template in (daily, weekly))
        return _Statements((), write_hours, steps, dequeue)
    # SQLite: delete and insert (its IN (...) is index lookups); a bucket whose readings
    # are gone disappears too.
    return _Statements(
        (delete("1h", "q.hour_start"),),
        text(_HOURLY[dialect].format(columns=_COLUMNS)),
        (
            delete("1d", "{day_of_hour}"),
            _sql(dialect, daily),
            delete("1w", "{week_of_hour}"),
            _sql(dialect, weekly),
        ),
        dequeue,
    )


def _merge_template(dialect: str, bucket: str, part: str, target_of_hour: str, target_end: str) -> str:
    template = _MERGE[dialect].replace("{bucket}", bucket).replace("{part}", part)
    return template.replace("{target_of_hour}", target_of_hour).replace("{target_end}", target_end)


_TAKE_DIRTY = {
    "postgresql": (
        "LOCK TABLE dirty_hours IN SHARE ROW EXCLUSIVE MODE",
        "UPDATE rollup_epoch SET epoch = epoch + 1",
        "WITH taken AS (DELETE FROM dirty_hours RETURNING series_id, hour_start) "
        "INSERT INTO rollup_queue (series_id, hour_start) SELECT series_id, hour_start FROM taken "
        "ON CONFLICT DO NOTHING",
    ),
    "sqlite": (
        "UPDATE rollup_epoch SET epoch = epoch + 1",
        "INSERT OR IGNORE INTO rollup_queue (series_id, hour_start) SELECT series_id, hour_start FROM dirty_hours",
        "DELETE FROM dirty_hours",
    ),
}


def take_dirty_hours(store: Store) -> int:
    """Move the marks of committed batches into the rollup queue; return how many."""
    with store.write_transaction() as conn:
        moved = 0
        for statement in _TAKE_DIRTY[store.dialect]:
            moved = conn.execute(text(statement)).rowcount
    return max(moved, 0)


def refresh(store: Store, chunk_hours: int = 5000) -> dict[str, Any]:
    """Bring every rollup up to date with the readings committed so far."""
    started = time.perf_counter()
    taken = take_dirty_hours(store)
    statements = _statements(store.dialect)
    done: dict[str, Any] = {"marks_taken": taken, "hours": 0, "chunks": 0}
    done["take_seconds"] = round(time.perf_counter() - started, 4)
    after = _START
    while True:
        # One snapshot per chunk: which days are packed, and what each tier holds, are
        # read at the same moment however compaction moves readings meanwhile.
        with store.snapshot_transaction() as conn:
            bound = _chunk_bound(conn, chunk_hours, after)
            if bound is None:
                done["recompute_seconds"] = round(time.perf_counter() - started - done["take_seconds"], 4)
                return done
            params = {"ls": after[0], "lh": after[1], "s": bound[0], "h": bound[1], "now": now_micros()}
            if store.dialect == "postgresql":
                # The plans are index probes per bucket; their cost estimates would make
                # PostgreSQL JIT-compile them, which costs more than running them.
                conn.execute(text("SET LOCAL jit = off"))
                # A bucket's few readings are fetched faster by a plain index scan than
                # through a bitmap.
                conn.execute(text("SET LOCAL enable_bitmapscan = off"))
            for statement in statements.clear_hours:
                conn.execute(statement, params)
            _write_hours(store, conn, statements.write_hours, _queued(conn, params), params["now"])
            for statement in statements.steps:
                conn.execute(statement, params)
            done["hours"] += conn.execute(statements.dequeue, params).rowcount
            done["chunks"] += 1
        after = bound


def _queued(conn: Connection, params: dict[str, Any]) -> list[tuple[int, Micros]]:
    """The queued (series, hour) pairs of the chunk that `params` bounds."""
    query = _sql(
        conn.dialect.name, "SELECT q.series_id, q.hour_start FROM rollup_queue q WHERE {chunk}"
    ).columns(hour_start=UtcMicros())
    return [(sid, hour) for sid, hour in conn.execute(query, params)]


def _write_hours(
    store: Store, conn: Connection, statement: TextClause, pairs: list[tuple[int, Micros]], now: Micros
) -> None:
    rows = store.hour_partials(conn, pairs).rows
    if not rows:
        return
    if store.dialect == "postgresql":
        columns = list(zip(*rows, strict=True))
        conn.execute(
            statement, {**dict(zip(_PARTIAL_FIELDS, map(pg_array, columns), strict=True)), "now": now}
        )
        return
    conn.execute(statement, [{**dict(zip(_PARTIAL_FIELDS, row, strict=True)), "now": now} for row in rows])


def _chunk_bound(conn: Connection, chunk_hours: int, after: tuple[int, Micros]) -> tuple[int, Micros] | None:
    """The last (series, hour) of the chunk after `after`: queued pairs are taken in key
    order, so a series' hours mostly fall in one chunk and its days and weeks are merged
    once. Pairs queued meanwhile below `after` (by another refresh) wait for the next one."""
    dialect = conn.dialect.name
    after_params = {"ls": after[0], "lh": after[1]}
    queue = _sql(
        dialect,
        "SELECT series_id, hour_start FROM rollup_queue WHERE (series_id, hour_start) > (:ls, :lh) "
        "ORDER BY series_id, hour_start LIMIT 1 OFFSET :skip",
    ).columns(hour_start=UtcMicros())
    row = conn.execute(queue, {**after_params, "skip": chunk_hours - 1}).first()
    if row is None:
        last = _sql(
            dialect,
            "SELECT series_id, hour_start FROM rollup_queue WHERE (series_id, hour_start) > (:ls, :lh) "
            "ORDER BY series_id DESC, hour_start DESC LIMIT 1",
        ).columns(hour_start=UtcMicros())
        row = conn.execute(last, after_params).first()
    return None if row is None else (row[0], row[1])


def rollups_job(store: Store, settings: Settings) -> dict[str, Any]:
    return refresh(store, settings.analytics.rollup_chunk_hours)


# -- reads ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RollupBucket:
    bucket_start: Micros
    count: int
    avg: float
    min: float
    max: float
    stddev: float | None  # sample standard deviation; None for a single reading
    first_time: Micros
    first_value: float
    last_time: Micros
    last_value: float


def bucket_rows(
    store: Store, ref: SeriesRef, bucket: str, start: Micros | None = None, end: Micros | None = None
) -> list[RollupBucket]:
    """A series' rollups of one width whose bucket starts in [start, end), oldest first."""
    return series_buckets(store, ref.series_id, bucket, start, end)


# Plain SQL compiled once: charts ask for rollups at every refresh.
_BUCKETS = (
    text(
        "SELECT bucket_start, count, mean, m2, min, max, first_time, first_value, last_time, last_value "
        "FROM rollups WHERE series_id = :s AND bucket = :b AND bucket_start >= :start AND bucket_start < :end "
        "ORDER BY bucket_start"
    )
    .bindparams(bindparam("start", type_=UtcMicros()), bindparam("end", type_=UtcMicros()))
    .columns(bucket_start=UtcMicros(), first_time=UtcMicros(), last_time=UtcMicros())
)
_EVER = (-30_610_224_000 * MICROS_PER_SECOND, 221_845_392_000 * MICROS_PER_SECOND)  # years 1000 to 9000


def series_buckets(
    store: Store, series_id: int, bucket: str, start: Micros | None = None, end: Micros | None = None
) -> list[RollupBucket]:
    low = start if start is not None else _EVER[0]
    high = end if end is not None else _EVER[1]
    with store.read_connection() as conn:
        rows = conn.execute(_BUCKETS, {"s": series_id, "b": bucket, "start": low, "end": high})
        return [_bucket(row._mapping) for row in rows]


# The columns a chart needs, straight from the driver: a year of daily buckets is read at
# every refresh of every chart, so no row objects are made for it.
_CHART_COLUMNS = {
    "sqlite": (
        "SELECT bucket_start / 1000, count, mean, min, max FROM rollups "
        "WHERE series_id = ? AND bucket = ? AND bucket_start >= ? AND bucket_start < ? ORDER BY bucket_start"
    ),
    "postgresql": (
        "SELECT (extract(epoch FROM bucket_start) * 1000)::bigint, count, mean, min, max FROM rollups "
        "WHERE series_id = %s AND bucket = %s AND bucket_start >= to_timestamp(%s / 1e6) "
        "AND bucket_start < to_timestamp(%s / 1e6) ORDER BY bucket_start"
    ),
}


def bucket_floor(bucket: str, at: Micros) -> Micros:
    """The start of the `bucket` rollup that holds time `at` (weeks begin on Mondays)."""
    if bucket == "1w":
        return at - (at - WEEK_ORIGIN) % MICROS_PER_WEEK
    return day_start(at) if bucket == "1d" else at - at % MICROS_PER_HOUR


def chart_columns(
    store: Store, series_id: int, bucket: str, start: Micros, end: Micros
) -> tuple[list[int], list[int], list[float], list[float], list[float]]:
    """(bucket starts in epoch ms, counts, means, mins, maxes) of the buckets that overlap
    [start, end), oldest first. Rollups are whole buckets: the first may begin before
    `start` (else the readings from `start` to its end would be missing from the answer)."""
    statement = _CHART_COLUMNS["postgresql" if store.dialect == "postgresql" else "sqlite"]
    with store.read_connection() as conn:
        rows = driver.rows(conn, statement, (series_id, bucket, bucket_floor(bucket, start), end))
    if not rows:
        return [], [], [], [], []
    times, counts, means, lows, highs = (list(column) for column in zip(*rows, strict=True))
    return times, counts, means, lows, highs


def _bucket(row: Any) -> RollupBucket:
    count = row["count"]
    return RollupBucket(
        bucket_start=row["bucket_start"],
        count=count,
        avg=row["mean"],
        min=row["min"],
        max=row["max"],
        stddev=math.sqrt(max(row["m2"], 0.0) / (count - 1)) if count > 1 else None,
        first_time=row["first_time"],
        first_value=row["first_value"],
        last_time=row["last_time"],
        last_value=row["last_value"],
    )


def rollup_span(store: Store, series_ids: list[int], bucket: str) -> tuple[Micros, Micros] | None:
    """The first and last bucket start of these series' `bucket` rollups, or None if none:
    rollups outlive the raw readings they summarise (retention), so an export of a rollup
    tier spans them, not the readings."""
    first, last = None, None
    with store.read_connection() as conn:
        for at in range(0, len(series_ids), 500):
            row = conn.execute(
                select(func.min(rollups.c.bucket_start), func.max(rollups.c.bucket_start)).where(
                    rollups.c.series_id.in_(series_ids[at : at + 500]), rollups.c.bucket == bucket
                )
            ).one()
            if row[0] is not None:
                first = row[0] if first is None else min(first, row[0])
                last = row[1] if last is None else max(last, row[1])
    return None if first is None or last is None else (first, last)


def export_rows(
    store: Store, names: dict[int, tuple[str, str]], bucket: str, start: Micros, end: Micros
) -> list[dict[str, Any]]:
    """Rollups of one width of several series (id -> (device, metric)) whose bucket starts in
    [start, end), as export rows sorted by device, metric, bucket start."""
    rows: list[dict[str, Any]] = []
    ids = sorted(names)
    with store.read_connection() as conn:
        for first in range(0, len(ids), 500):
            query = select(rollups).where(
                rollups.c.series_id.in_(ids[first : first + 500]),
                rollups.c.bucket == bucket,
                rollups.c.bucket_start >= start,
                rollups.c.bucket_start < end,
            )
            for row in conn.execute(query):
                b = _bucket(row._mapping)
                device_id, metric = names[row.series_id]
                rows.append(
                    {
                        "device_id": device_id,
                        "metric": metric,
                        "bucket_start": b.bucket_start,
                        "count": b.count,
                        "avg": b.avg,
                        "min": b.min,
                        "max": b.max,
                        "stddev": b.stddev,
                        "first_time": b.first_time,
                        "first_value": b.first_value,
                        "last_time": b.last_time,
                        "last_value": b.last_value,
                    }
                )
    rows.sort(key=lambda r: (r["device_id"], r["metric"], r["bucket_start"]))
    return rows
