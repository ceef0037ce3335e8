"""Moving readings into the packed tier: compaction steps, historical writes, late readings.

A (series, day) is packed by merging what the packed tier holds for it, its hot rows and
any new readings (the first stored of two equal (series, time) wins), writing the day's
one packed row and deleting its hot rows, in one transaction. Compaction packs the days
older than the hot window in small steps; a historical import packs its old readings
directly; a late reading for a packed day goes hot (if the packed day does not hold it
already) and the next compaction re-packs the day with it.

Exactly once across tiers. Whatever packs takes PACK_LOCK exclusively (PostgreSQL:
a transaction-level advisory lock; SQLite: every writer is serialised by IMMEDIATE
transactions anyway), and an ingest batch holding a reading older than LATE_AGE takes it
shared before it checks the packed days. Packing only days that ended more than a day
ago (the hot window is at least one day), no reading younger than LATE_AGE can fall in
a day being packed, so live ingest never waits for compaction; a late batch waits for
at most one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection

from iotpipe.arrays import distinct, in_series_time_order
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, Micros, now_micros
from iotpipe.store.packed import decode_times, encode_days
from iotpipe.store.schema import packed_readings
from iotpipe.store.tiers import (
    SeriesReadings,
    _typed,
    integers_value,
    one_of,
    pg_array,
    read_parts,
    series_time_order,
    timestamptz_from_unix_micros,
    unix_micros,
)

PACK_LOCK = 7_405_002  # PostgreSQL advisory lock key of packing (migrations use 7_405_001)
LATE_AGE = 12 * MICROS_PER_HOUR
MIN_HOT_DAYS = 1  # the hot window is at least this: LATE_AGE must stay inside it


def lock_packing(conn: Connection, exclusive: bool) -> None:
    """Serialise packing with late ingest, until the transaction ends (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.exec_driver_sql(f"SELECT {function}({PACK_LOCK})")


@dataclass
class PackResult:
    days: int = 0  # packed rows written
    readings: int = 0  # readings the written rows hold
    moved: int = 0  # hot readings moved into them
    new: int = 0  # readings given that were not stored before
    series: set[int] = field(default_factory=set)


def pack(
    conn: Connection,
    series_ids: list[int],
    start: Micros,
    end: Micros,
    extra: SeriesReadings | None = None,
) -> PackResult:
    """Pack every day of these series in [start, end) (whole UTC days) that has hot rows or
    `extra` readings: merged with its packed row, written back, its hot rows deleted.
    Call with PACK_LOCK held exclusively."""
    result = PackResult()
    parts = read_parts(conn, series_ids, start, end)
    hot_count = parts.hot_count
    stored = parts.merge(start, end)
    touched_hot: set[tuple[int, Micros]] = set()
    if hot_count:
        hot_sids, hot_times, _ = parts.hot()
        touched_hot = _days(hot_sids, hot_times)
    merged, new = stored, 0
    touched = set(touched_hot)
    if extra is not None and len(extra):
        merged, new = _merge_first_wins(stored, extra)
        touched |= _days(extra.series_ids, extra.times)
    result.new = new
    if not touched:
        return result
    rows = _packed_rows(merged, touched)
    if rows:
        _write_packed(conn, rows)
    if hot_count:
        conn.execute(
            _typed(
                f"DELETE FROM readings WHERE {one_of(conn.dialect.name, 'series_id')} "
                "AND time >= :start AND time < :end",
                times=("start", "end"),
            ),
            {
                "ids": integers_value(conn.dialect.name, sorted({int(s) for s, _ in touched_hot})),
                "start": start,
                "end": end,
            },
        )
    result.days = len(rows)
    result.readings = sum(r["count"] for r in rows)
    result.moved = hot_count
    result.series = {int(r["series_id"]) for r in rows}
    return result


def _days(series_ids: np.ndarray, times: np.ndarray) -> set[tuple[int, Micros]]:
    """The distinct (series, day start) pairs of these readings."""
    # One int64 key per reading (series in the high half, day number in the low): a
    # one-dimensional unique, far cheaper than a unique of rows.
    day_numbers = times // MICROS_PER_DAY
    keys = distinct((series_ids.astype(np.int64) << 32) + (day_numbers + (1 << 31)))
    return {(int(k >> 32), int((k & 0xFFFFFFFF) - (1 << 31)) * MICROS_PER_DAY) for k in keys.tolist()}


def _merge_first_wins(stored: SeriesReadings, extra: SeriesReadings) -> tuple[SeriesReadings, int]:
    """stored ∪ extra by (series, time), a stored reading winning over a new one (and the
    first of two new ones over the second); and how many of extra were new."""
    sids = np.concatenate((stored.series_ids, extra.series_ids))
    times = np.concatenate((stored.times, extra.times))
    values = np.concatenate((stored.values, extra.values))
    if not in_series_time_order(sids, times):  # in order: history into empty days
        order = series_time_order(sids, times)
        sids, times, values = sids[order], times[order], values[order]
    first = np.ones(len(times), dtype=bool)
    first[1:] = (times[1:] != times[:-1]) | (sids[1:] != sids[:-1])
    merged = SeriesReadings(sids[first], times[first], values[first])
    return merged, len(merged) - len(stored)


def _packed_rows(readings: SeriesReadings, touched: set[tuple[int, Micros]]) -> list[dict[str, Any]]:
    sids, times, values = readings.series_ids, readings.times, readings.values
    if not len(times):
        return []
    days = times - times % MICROS_PER_DAY
    change = np.ones(len(times), dtype=bool)
    change[1:] = (days[1:] != days[:-1]) | (sids[1:] != sids[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(times))
    wanted = np.array([(int(sids[a]), int(days[a])) in touched for a in starts.tolist()], dtype=bool)
    starts, ends = starts[wanted], ends[wanted]
    if not len(starts):
        return []
    # Only the touched runs, laid end to end, encoded together.
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])
    offsets = np.concatenate(([0], np.cumsum(ends - starts)[:-1]))
    blobs = encode_days(times[take], values[take], offsets)
    now = now_micros()
    return [
        {
            "series_id": int(sids[a]),
            "day_start": int(days[a]),
            "count": int(b - a),
            "first_time": int(times[a]),
            "last_time": int(times[b - 1]),
            "time_data": time_data,
            "value_data": value_data,
            "packed_at": now,
        }
        for a, b, (time_data, value_data) in zip(starts.tolist(), ends.tolist(), blobs, strict=True)
    ]


_PG_UPSERT = (
    "INSERT INTO packed_readings "
    "(series_id, day_start, count, first_time, last_time, time_data, value_data, packed_at) "
    f"SELECT s, {timestamptz_from_unix_micros('d')}, c, {timestamptz_from_unix_micros('f')}, "
    f"{timestamptz_from_unix_micros('l')}, t, v, {timestamptz_from_unix_micros('%s::int8')} "
    "FROM unnest(%s::int4[], %s::int8[], %s::int4[], %s::int8[], %s::int8[], %b::bytea[], %b::bytea[]) "
    "AS u(s, d, c, f, l, t, v) "
    "ON CONFLICT (series_id, day_start) DO UPDATE SET count = excluded.count, "
    "first_time = excluded.first_time, last_time = excluded.last_time, "
    "time_data = excluded.time_data, value_data = excluded.value_data, packed_at = excluded.packed_at"
)


def _write_packed(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or replace these packed rows."""
    if conn.dialect.name != "postgresql":
        conn.execute(_upsert(conn.dialect.name), rows)
        return
    # One statement over arrays: a historical import's thousands of series-days cost one
    # round trip, not an executemany row each with SQLAlchemy's per-row binding (it was
    # a fifth of a PostgreSQL historical import). The blobs go in binary (%b): as text,
    # escaping them took five times as long as the whole statement does now.
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute(
        _PG_UPSERT,
        (
            rows[0]["packed_at"],
            *(pg_array([row[key] for row in rows]) for key in ("series_id", "day_start", "count")),
            *(pg_array([row[key] for row in rows]) for key in ("first_time", "last_time")),
            [row["time_data"] for row in rows],
            [row["value_data"] for row in rows],
        ),
    )


def _upsert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = insert(packed_readings)
    columns = ("count", "first_time", "last_time", "time_data", "value_data", "packed_at")
    return statement.on_conflict_do_update(
        index_elements=["series_id", "day_start"], set_={c: statement.excluded[c] for c in columns}
    )


def already_packed(conn: Connection, series_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Which of these readings (Unix µs) their packed day already holds; call with
    PACK_LOCK held shared, so that no day is packed meanwhile."""
    held = np.zeros(len(times), dtype=bool)
    days = times - times % MICROS_PER_DAY
    dialect = conn.dialect.name
    statement = _typed(
        f"SELECT series_id, {unix_micros(dialect, 'day_start')}, count, time_data "
        f"FROM packed_readings WHERE {one_of(dialect, 'series_id')} AND day_start >= :lo AND day_start <= :hi",
        times=("lo", "hi"),
    )
    ids = integers_value(dialect, distinct(series_ids).tolist())
    for sid, day, count, time_data in conn.execute(
        statement, {"ids": ids, "lo": int(days.min()), "hi": int(days.max())}
    ):
        mine = (series_ids == sid) & (days == int(day))
        if mine.any():
            held[mine] = np.isin(times[mine], decode_times(bytes(time_data), int(count)))
    return held


# -- compaction --------------------------------------------------------------------------------
def series_to_pack(conn: Connection, before: Micros) -> list[tuple[int, Micros]]:
    """Series with hot readings older than `before`, with their oldest hot reading's time."""
    dialect = conn.dialect.name
    oldest = unix_micros(dialect, "(SELECT min(r.time) FROM readings r WHERE r.series_id = s.id)")
    rows = conn.execute(
        _typed(
            f"SELECT id, first FROM (SELECT s.id, {oldest} AS first FROM series s) f "
            "WHERE first IS NOT NULL ORDER BY id"
        )
    ).all()
    return [(int(sid), int(first)) for sid, first in rows if first < before]


def pack_step(conn: Connection, queue: list[tuple[int, Micros]], before: Micros, budget: int) -> PackResult:
    """One compaction transaction: whole days older than `before` of the series at the head
    of `queue` (popped as they are finished), about `budget` readings, at least one day."""
    lock_packing(conn, exclusive=True)
    done = PackResult()
    while queue and done.moved < budget:
        series_id, first = queue[0]
        start = first - first % MICROS_PER_DAY
        end = _step_end(conn, series_id, start, before, budget - done.moved)
        step = pack(conn, [series_id], start, end)
        done.days += step.days
        done.readings += step.readings
        done.moved += step.moved
        done.series |= step.series
        if end >= before:
            queue.pop(0)
        else:
            queue[0] = (series_id, end)
    return done


def _step_end(conn: Connection, series_id: int, start: Micros, before: Micros, budget: int) -> Micros:
    """The end of the whole days from `start` that hold about `budget` hot readings."""
    statement = _typed(
        f"SELECT {unix_micros(conn.dialect.name, 'time')} FROM readings WHERE series_id = :sid "
        "AND time >= :start AND time < :before ORDER BY time LIMIT 1 OFFSET :skip",
        times=("start", "before"),
    )
    row = conn.execute(
        statement, {"sid": series_id, "start": start, "before": before, "skip": max(budget, 1)}
    ).first()
    if row is None:
        return before
    last = int(row[0])
    end = last - last % MICROS_PER_DAY  # the day holding the budget's end is left for later...
    return end if end > start else start + MICROS_PER_DAY  # ...unless it is the first day
