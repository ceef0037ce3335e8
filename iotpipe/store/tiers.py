"""Reading through both tiers: the hot `readings` table and the packed series-days.

Every read of raw readings outside store/ comes here (through Store methods), so callers
never know in which tier a reading sits. Each read is one SQL statement — the hot rows
and the packed rows of the range in a UNION ALL — so it sees one snapshot even under
PostgreSQL's READ COMMITTED: a compaction step that moves a day from one tier to the
other commits either wholly before or wholly after it, and a reading is never seen twice
or missed.

The tiers are disjoint by construction (a reading is inserted hot only if its packed day
does not hold it; compaction moves, it never copies), and readers still keep the first of
two equal (series, time) pairs, the packed one, so that even a broken invariant would
never show a reading twice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, text
from sqlalchemy.sql.elements import TextClause

from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, Micros
from iotpipe.store import driver
from iotpipe.store.packed import decode_times, decode_values
from iotpipe.store.schema import UtcMicros

IN_CHUNK = 500  # ids per IN list: under SQLite's bound-parameter limit, small plans


@dataclass(slots=True)
class SeriesReadings:
    """Readings of one or more series as columns, sorted by series then time."""

    series_ids: np.ndarray  # int64
    times: np.ndarray  # int64 Unix µs
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def empty(cls) -> SeriesReadings:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def unix_micros(dialect: str, column: str) -> str:
    """SQL giving a time column as Unix µs (PostgreSQL ≥ 14: extract returns exact numeric)."""
    if dialect == "postgresql":
        return f"(extract(epoch from {column}) * 1000000)::int8"
    return column


def timestamptz_from_unix_micros(expression: str) -> str:
    """PostgreSQL SQL giving Unix µs as timestamptz, exactly (integer arithmetic on an
    interval, no float seconds): the inverse of `unix_micros`."""
    return f"('1970-01-01 00:00:00+00'::timestamptz + {expression} * interval '1 microsecond')"


def one_of(dialect: str, column: str, name: str = "ids") -> str:
    """SQL for "`column` is one of the integers in the one parameter :name" (its value made
    by `integers_value`): one statement for any number of ids, parsed once, where an expanding
    IN list is rendered, and parsed again by the driver, on every call."""
    if dialect == "postgresql":
        return f"{column} = ANY(CAST(:{name} AS integer[]))"
    return f"{column} IN (SELECT value FROM json_each(:{name}))"


def integers_value(dialect: str, values: Iterable[int]) -> str:
    """Integers as one parameter (for `one_of`): an array literal (PostgreSQL) or a JSON
    array (SQLite), text either way, which costs a fraction of binding a value per integer."""
    if dialect == "postgresql":
        return pg_array(values)
    return "[" + ",".join(map(str, values)) + "]"


def pg_array(values: Iterable[float | None]) -> str:
    """Numbers as one PostgreSQL array literal (None as NULL), for a `CAST(:x AS int8[])` or
    `%s::float8[]` parameter: psycopg dumps a Python list element by element (~4 µs
    each), which made the rollup job spend 40 % of its time passing its own columns.
    str() of a float is its shortest exact form, which PostgreSQL reads back exactly."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


@functools.lru_cache(maxsize=512)
def _typed(statement: str, times: Sequence[str] = ()) -> TextClause:
    """The statement as a typed clause, made once: parsing a text() costs more than
    running a small indexed query (the statements are a few shapes per dialect); lists of
    ids are one parameter (`one_of`), so a statement's text never depends on their length."""
    clause = text(statement)
    params = [bindparam(name, type_=UtcMicros()) for name in times if f":{name}" in statement]
    return clause.bindparams(*params) if params else clause


def _range_sql(dialect: str, start: Micros | None, end: Micros | None) -> TextClause:
    hot_where = [one_of(dialect, "r.series_id")]
    packed_where = [one_of(dialect, "p.series_id")]
    if start is not None:
        hot_where.append("r.time >= :start")
        # day_start <= first_time: the index bounds the days, the times bound the rows.
        packed_where += ["p.day_start > :start_day", "p.last_time >= :start"]
    if end is not None:
        hot_where.append("r.time < :end")
        packed_where += ["p.day_start < :end", "p.first_time < :end"]
    statement = (
        f"SELECT r.series_id, {unix_micros(dialect, 'r.time')} AS t, r.value AS v, "
        "NULL AS n, NULL AS td, NULL AS vd "
        f"FROM readings r WHERE {' AND '.join(hot_where)} "
        "UNION ALL "
        f"SELECT p.series_id, {unix_micros(dialect, 'p.first_time')}, NULL, p.count, p.time_data, p.value_data "
        f"FROM packed_readings p WHERE {' AND '.join(packed_where)}"
    )
    return _typed(statement, times=("start", "start_day", "end"))


def read_range(
    conn: Connection, series_ids: Sequence[int], start: Micros | None, end: Micros | None
) -> SeriesReadings:
    """Every reading of the series in [start, end) from both tiers, by series then time."""
    return read_parts(conn, series_ids, start, end).merge(start, end)


def read_parts(
    conn: Connection, series_ids: Sequence[int], start: Micros | None, end: Micros | None
) -> TierRows:
    """The hot rows and the decoded packed days of the series overlapping [start, end)."""
    parts = TierRows()
    if not len(series_ids):
        return parts
    statement = _range_sql(conn.dialect.name, start, end)
    params: dict[str, Any] = {}
    if start is not None:
        params["start"], params["start_day"] = start, start - MICROS_PER_DAY
    if end is not None:
        params["end"] = end
    params["ids"] = integers_value(conn.dialect.name, sorted({int(s) for s in series_ids}))
    parts.add_rows(fetch_raw(conn, statement, params))
    return parts


def last_readings(
    conn: Connection, series_id: int, limit: int, before: Micros | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A series' `limit` newest readings (older than `before`, if given), newest first."""
    return edge_readings(conn, series_id, limit, None, before, newest=True)


def edge_readings(
    conn: Connection,
    series_id: int,
    limit: int,
    start: Micros | None = None,
    end: Micros | None = None,
    newest: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A series' `limit` newest (or oldest) readings in [start, end), in that order: newest
    first, or oldest first. One statement: the hot rows' index probe, and the packed days
    from that edge inwards while the whole days nearer the edge hold fewer than `limit`."""
    dialect = conn.dialect.name
    hot_where = "".join(
        clause
        for clause, bound in ((" AND time >= :start", start), (" AND time < :end", end))
        if bound is not None
    )
    packed_where = ""
    if start is not None:
        packed_where += " AND p.day_start > :start_day AND p.last_time >= :start"
    if end is not None:
        packed_where += " AND p.day_start < :end AND p.first_time < :end"
    # The days nearer the edge than p, counted only when wholly inside the range (the
    # other side of p is bounded by p itself).
    if newest:
        nearer = "q.day_start > p.day_start" + (" AND q.last_time < :end" if end is not None else "")
    else:
        nearer = "q.day_start < p.day_start" + (" AND q.first_time >= :start" if start is not None else "")
    statement = (
        "SELECT :sid AS series_id, t, v, NULL AS n, NULL AS td, NULL AS vd FROM ("
        f"SELECT {unix_micros(dialect, 'time')} AS t, value AS v FROM readings "
        f"WHERE series_id = :sid{hot_where} ORDER BY time {'DESC' if newest else 'ASC'} LIMIT :limit) h "
        "UNION ALL "
        f"SELECT p.series_id, {unix_micros(dialect, 'p.first_time')}, NULL, p.count, p.time_data, p.value_data "
        f"FROM packed_readings p WHERE p.series_id = :sid{packed_where} "
        f"AND coalesce((SELECT sum(q.count) FROM packed_readings q WHERE q.series_id = :sid AND {nearer}), 0) < :limit"
    )
    params: dict[str, Any] = {"sid": series_id, "limit": limit}
    if start is not None:
        params["start"], params["start_day"] = start, start - MICROS_PER_DAY
    if end is not None:
        params["end"] = end
    parts = TierRows()
    times = ("start", "start_day", "end")
    parts.add_rows(driver.rows(conn, driver.statement(dialect, statement), params, times))
    merged = parts.merge(start, end)
    if newest:
        return merged.times[::-1][:limit].copy(), merged.values[::-1][:limit].copy()
    return merged.times[:limit].copy(), merged.values[:limit].copy()


def count_range(conn: Connection, series_id: int, start: Micros | None, end: Micros | None) -> int:
    """How many readings a series holds in [start, end), over both tiers, in one statement:
    the hot rows counted by the index, the packed days wholly inside by their `count`, and
    only the (at most two) packed days across a bound decoded."""
    bounds = {"start": start, "end": end}
    hot = ["series_id = :sid"] + [
        c for c, b in (("time >= :start", start), ("time < :end", end)) if b is not None
    ]
    overlap = ["series_id = :sid"]
    inside: list[str] = []
    across: list[str] = []
    if start is not None:
        overlap += ["day_start > :start_day", "last_time >= :start"]
        inside.append("first_time >= :start")
        across.append("first_time < :start")
    if end is not None:
        overlap += ["day_start < :end", "first_time < :end"]
        inside.append("last_time < :end")
        across.append("last_time >= :end")
    where = " AND ".join(overlap)
    # PostgreSQL types a UNION's columns pair by pair from the left: the typed branch first.
    boundary_days = (
        f"SELECT NULL AS n, count AS c, time_data AS td FROM packed_readings WHERE {where} "
        f"AND ({' OR '.join(across)}) UNION ALL "
        if across
        else ""
    )
    statement = (
        f"{boundary_days}SELECT count(*), NULL, NULL FROM readings WHERE {' AND '.join(hot)} "
        f"UNION ALL SELECT sum(count), NULL, NULL FROM packed_readings WHERE {where}"
        + (f" AND {' AND '.join(inside)}" if inside else "")
    )
    params: dict[str, Any] = {"sid": series_id, **{k: v for k, v in bounds.items() if v is not None}}
    if start is not None:
        params["start_day"] = start - MICROS_PER_DAY
    total = 0
    for n, count, time_data in fetch_raw(
        conn, _typed(statement, times=("start", "start_day", "end")), params
    ):
        if n is not None:
            total += int(n)
        elif count is not None:
            times = decode_times(bytes(time_data), int(count))
            keep = np.ones(len(times), dtype=bool)
            if start is not None:
                keep &= times >= start
            if end is not None:
                keep &= times < end
            total += int(keep.sum())
    return total


def packed_end(
    conn: Connection, series_ids: Sequence[int], start: Micros | None = None, end: Micros | None = None
) -> Micros | None:
    """The end of the newest packed day of these series overlapping [start, end), or None:
    from there on, the range's readings are all hot."""
    dialect = conn.dialect.name
    where = one_of(dialect, "series_id") + (" AND day_start > :start_day" if start is not None else "")
    where += " AND day_start < :end" if end is not None else ""
    statement = _typed(
        f"SELECT {unix_micros(dialect, 'max(day_start)')} FROM packed_readings WHERE {where}",
        times=("start_day", "end"),
    )
    params: dict[str, Any] = {}
    if start is not None:
        params["start_day"] = start - MICROS_PER_DAY
    if end is not None:
        params["end"] = end
    params["ids"] = integers_value(dialect, sorted({int(s) for s in series_ids}))
    newest = conn.execute(statement, params).scalar()
    return int(newest) + MICROS_PER_DAY if newest is not None else None


WINDOW = 7 * MICROS_PER_DAY  # readings decoded at a time by the windowed reads


def read_windows(
    conn: Connection, series_ids: Sequence[int], start: Micros, end: Micros, span: Micros = WINDOW
) -> Iterator[SeriesReadings]:
    """read_range over [start, end) a window of `span` at a time, oldest first: memory stays
    bounded by a window's readings. Call inside one snapshot (Store.read_snapshot)."""
    at = start
    while at < end:
        upto = min(end, at + span)
        yield read_range(conn, series_ids, at, upto)
        at = upto


def buckets(
    conn: Connection, series_id: int, origin: Micros, start: Micros, end: Micros, width: Micros
) -> list[tuple[Micros, int, float, float, float]]:
    """(bucket_start, count, mean, min, max) of each bucket of `width` from `origin` with
    readings in [start, end), oldest first, computed from both tiers a window at a time
    (windows end on bucket edges, so no bucket spans two)."""
    found: list[tuple[Micros, int, float, float, float]] = []
    span = max(1, WINDOW // width) * width
    at = start
    while at < end:
        upto = min(end, origin + ((at - origin) // span + 1) * span)
        window = read_range(conn, [series_id], at, upto)
        at = upto
        times, values = window.times, window.values
        if not len(times):
            continue
        columns = (times - origin) // width
        change = np.ones(len(times), dtype=bool)
        change[1:] = columns[1:] != columns[:-1]
        firsts = np.flatnonzero(change)
        counts = np.diff(np.append(firsts, len(times)))
        sums = np.add.reduceat(values, firsts)
        lows, highs = np.minimum.reduceat(values, firsts), np.maximum.reduceat(values, firsts)
        for i, first in enumerate(firsts.tolist()):
            n = int(counts[i])
            found.append(
                (origin + int(columns[first]) * width, n, float(sums[i]) / n, float(lows[i]), float(highs[i]))
            )
    return found


def series_span(conn: Connection, series_id: int) -> tuple[Micros, Micros] | None:
    """A series' first and last reading time over both tiers, or None if it has none."""
    dialect = conn.dialect.name
    statement = text(
        f"SELECT {unix_micros(dialect, 'min(time)')}, {unix_micros(dialect, 'max(time)')} "
        "FROM readings WHERE series_id = :sid UNION ALL "
        f"SELECT {unix_micros(dialect, 'min(first_time)')}, {unix_micros(dialect, 'max(last_time)')} "
        "FROM packed_readings WHERE series_id = :sid"
    )
    rows = [r for r in conn.execute(statement, {"sid": series_id}).all() if r[0] is not None]
    if not rows:
        return None
    return min(int(r[0]) for r in rows), max(int(r[1]) for r in rows)


def fetch_raw(conn: Connection, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """All rows as the driver's plain tuples (no SQLAlchemy Row per reading)."""
    result = conn.execute(statement, params)
    try:
        return list(result.cursor.fetchall()) if result.cursor is not None else []
    finally:
        result.close()


class TierRows:
    """Rows of a UNION ALL read (hot rows, packed rows), merged into sorted columns."""

    def __init__(self) -> None:
        self.hot_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.packed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def hot_count(self) -> int:
        return sum(len(p[0]) for p in self.hot_parts)

    def hot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.hot_parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
        return (
            np.concatenate([p[0] for p in self.hot_parts]),
            np.concatenate([p[1] for p in self.hot_parts]),
            np.concatenate([p[2] for p in self.hot_parts]),
        )

    def add_rows(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        table = np.array(rows, dtype=object)
        is_packed = np.not_equal(table[:, 3], np.array(None, dtype=object))  # the count is NULL on hot rows
        hot = table[~is_packed] if is_packed.any() else table
        if len(hot):
            self.hot_parts.append(
                (hot[:, 0].astype(np.int64), hot[:, 1].astype(np.int64), hot[:, 2].astype(np.float64))
            )
        for sid, _, _, count, time_data, value_data in table[is_packed].tolist():
            self.add_packed(int(sid), int(count), bytes(time_data), bytes(value_data))

    def add_packed(self, series_id: int, count: int, time_data: bytes, value_data: bytes) -> None:
        times = decode_times(time_data, count)
        self.packed.append((np.full(count, series_id, np.int64), times, decode_values(value_data, count)))

    def merge(self, start: Micros | None, end: Micros | None) -> SeriesReadings:
        parts = self.packed + self.hot_parts
        if not parts:
            return SeriesReadings.empty()
        sids = np.concatenate([p[0] for p in parts])
        times = np.concatenate([p[1] for p in parts])
        values = np.concatenate([p[2] for p in parts])
        if self.packed and (start is not None or end is not None):
            keep = np.ones(len(times), dtype=bool)
            if start is not None:
                keep &= times >= start
            if end is not None:
                keep &= times < end
            sids, times, values = sids[keep], times[keep], values[keep]
        order = series_time_order(sids, times)  # stable: the packed copy of a pair comes first
        sids, times, values = sids[order], times[order], values[order]
        if self.packed and self.hot_parts and len(times) > 1:
            first = np.ones(len(times), dtype=bool)
            first[1:] = (times[1:] != times[:-1]) | (sids[1:] != sids[:-1])
            sids, times, values = sids[first], times[first], values[first]
        return SeriesReadings(sids, times, values)


def series_time_order(series_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A stable order by (series, time): one argsort of a combined key when it fits in 64
    bits (a batch's span below ~100 days, series ids below 2^20), else a lexsort."""
    if not len(times):
        return np.empty(0, dtype=np.int64)
    low, high = int(times.min()), int(times.max())
    if high - low < 1 << 43 and int(series_ids.max()) < 1 << 20 and int(series_ids.min()) >= 0:
        keys = (series_ids.astype(np.int64) << 43) | (times - low)
        return np.argsort(keys, kind="stable")
    return np.lexsort((times, series_ids))


# -- hourly partial state for the rollups ----------------------------------------------------
@dataclass(slots=True)
class HourPartials:
    """Per (series, hour) with readings: count, mean, M2, min, max, first and last reading."""

    rows: list[tuple[int, Micros, int, float, float, float, float, Micros, float, Micros, float]]


# Per dialect: aggregates of the hot readings of queued hours whose day is not packed, one
# index range scan per hour. M2 is var_pop·n on PostgreSQL (the stable Youngs–Cramer
# update of its float8 aggregates); SQLite has no variance, so a second pass over the
# same range subtracts the mean. The pairs come in as `hour_keys` (see _hour_keys).
_HOT_HOURS = {
    "postgresql": """
SELECT q.series_id, q.h, a.n, a.mean, a.m2, a.lo, a.hi,
       {ft}, (SELECT value FROM readings WHERE series_id = q.series_id AND time = a.ft),
       {lt}, (SELECT value FROM readings WHERE series_id = q.series_id AND time = a.lt)
FROM (SELECT s AS series_id, h, '1970-01-01 00:00:00+00'::timestamptz + h * interval '1 microsecond' AS hour_start
      FROM unnest(CAST(:sids AS int[]), CAST(:hours AS int8[])) AS u(s, h)) q
CROSS JOIN LATERAL (
    SELECT count(*) AS n, avg(r.value) AS mean, var_pop(r.value) * count(*) AS m2,
           min(r.value) AS lo, max(r.value) AS hi, min(r.time) AS ft, max(r.time) AS lt
    FROM readings r
    WHERE r.series_id = q.series_id AND r.time >= q.hour_start AND r.time < q.hour_start + interval '1 hour'
) a
WHERE a.n > 0""",
    "sqlite": f"""
SELECT a.series_id, a.hour_start, a.n, a.mean,
       (SELECT sum((r.value - a.mean) * (r.value - a.mean)) FROM readings r
        WHERE r.series_id = a.series_id AND r.time >= a.hour_start AND r.time < a.hour_start + {MICROS_PER_HOUR}),
       a.lo, a.hi,
       a.ft, (SELECT value FROM readings WHERE series_id = a.series_id AND time = a.ft),
       a.lt, (SELECT value FROM readings WHERE series_id = a.series_id AND time = a.lt)
FROM (
    SELECT q.series_id, q.hour_start, count(*) AS n, avg(r.value) AS mean,
           min(r.value) AS lo, max(r.value) AS hi, min(r.time) AS ft, max(r.time) AS lt
    FROM temp.hour_keys q
    JOIN readings r ON r.series_id = q.series_id AND r.time >= q.hour_start AND r.time < q.hour_start + {MICROS_PER_HOUR}
    GROUP BY q.series_id, q.hour_start
) a""",
}


def hour_partials(conn: Connection, pairs: Sequence[tuple[int, Micros]]) -> HourPartials:
    """The partial state of each (series, hour) in `pairs` that holds readings.

    Call inside one snapshot (Store.snapshot_transaction): which days are packed and
    what each tier holds must be read at the same moment.
    """
    dialect = conn.dialect.name
    packed_days = _packed_days(conn, {(sid, hour - hour % MICROS_PER_DAY) for sid, hour in pairs})
    hot_pairs = [(s, h) for s, h in pairs if (s, h - h % MICROS_PER_DAY) not in packed_days]
    cold_pairs = [(s, h) for s, h in pairs if (s, h - h % MICROS_PER_DAY) in packed_days]
    rows: list[Any] = []
    if hot_pairs:
        rows += _hot_hour_rows(conn, dialect, hot_pairs)
    if cold_pairs:
        rows += _cold_hour_rows(conn, cold_pairs)
    return HourPartials(rows)


def _packed_days(conn: Connection, days: set[tuple[int, Micros]]) -> set[tuple[int, Micros]]:
    """Which of these (series, day start) pairs have a packed row."""
    if not days:
        return set()
    found: set[tuple[int, Micros]] = set()
    starts = [d for _, d in days]
    dialect = conn.dialect.name
    statement = _typed(
        "SELECT series_id, day_start FROM packed_readings "
        f"WHERE {one_of(dialect, 'series_id')} AND day_start >= :lo AND day_start <= :hi",
        times=("lo", "hi"),
    ).columns(day_start=UtcMicros())
    ids = integers_value(dialect, sorted({s for s, _ in days}))
    for sid, day in conn.execute(statement, {"ids": ids, "lo": min(starts), "hi": max(starts)}):
        if (sid, day) in days:
            found.add((sid, day))
    return found


def _hot_hour_rows(conn: Connection, dialect: str, pairs: list[tuple[int, Micros]]) -> list[Any]:
    if dialect == "postgresql":
        statement = text(
            _HOT_HOURS["postgresql"].format(ft=unix_micros(dialect, "a.ft"), lt=unix_micros(dialect, "a.lt"))
        )
        params = {"sids": pg_array([s for s, _ in pairs]), "hours": pg_array([h for _, h in pairs])}
        return list(conn.execute(statement, params).all())
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS hour_keys "
        "(series_id INTEGER NOT NULL, hour_start INTEGER NOT NULL, PRIMARY KEY (series_id, hour_start)) WITHOUT ROWID"
    )
    conn.exec_driver_sql("DELETE FROM temp.hour_keys")
    conn.exec_driver_sql("INSERT OR IGNORE INTO temp.hour_keys VALUES (?, ?)", pairs)
    rows = list(conn.exec_driver_sql(_HOT_HOURS["sqlite"]).all())
    conn.exec_driver_sql("DELETE FROM temp.hour_keys")
    return rows


def _cold_hour_rows(conn: Connection, pairs: list[tuple[int, Micros]]) -> list[Any]:
    """Hours of packed days, from both tiers (a packed day may have late hot readings):
    one read per span of queued hours, for all the series queued over that same span
    (after a bulk import, every series of a chunk), never wider than a series' own span."""
    by_series: dict[int, list[Micros]] = {}
    for sid, hour in pairs:
        by_series.setdefault(sid, []).append(hour)
    by_span: dict[tuple[Micros, Micros], list[int]] = {}
    for sid, hours in sorted(by_series.items()):
        by_span.setdefault((min(hours), max(hours) + MICROS_PER_HOUR), []).append(sid)
    rows: list[Any] = []
    for (start, end), sids in by_span.items():
        found = read_range(conn, sids, start, end)
        rows += hourly_state(found, {(sid, h) for sid in sids for h in by_series[sid]})
    return rows


def hourly_state(found: SeriesReadings, wanted: set[tuple[int, Micros]]) -> list[Any]:
    """count, mean, M2 (two-pass), min, max, first and last of each wanted (series, hour)."""
    if not len(found):
        return []
    sids, times, values = found.series_ids, found.times, found.values
    hour = times - times % MICROS_PER_HOUR
    change = np.ones(len(times), dtype=bool)
    change[1:] = (hour[1:] != hour[:-1]) | (sids[1:] != sids[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(times))
    counts = ends - starts
    means = np.add.reduceat(values, starts) / counts
    deviations = values - np.repeat(means, counts)
    m2 = np.add.reduceat(deviations * deviations, starts)
    lows, highs = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
    rows: list[Any] = []
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        key = (int(sids[a]), int(hour[a]))
        if key in wanted:
            rows.append(
                (
                    *key,
                    int(counts[i]),
                    float(means[i]),
                    float(m2[i]),
                    float(lows[i]),
                    float(highs[i]),
                    int(times[a]),
                    float(values[a]),
                    int(times[b - 1]),
                    float(values[b - 1]),
                )
            )
    return rows
