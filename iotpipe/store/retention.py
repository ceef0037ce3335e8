"""Retention: deleting what is older than each tier keeps, in chunks that never hold ingest up.

Tiers: `raw` (the hot table and the packed days), and the `1h`, `1d`, `1w` rollups. Each
purge deletes one series' oldest rows at a time, at most `chunk` rows per transaction,
each an index range (series first, then time), so a purge of years of history is many
short transactions: on PostgreSQL a DELETE locks only the rows it removes (never a row an
insert wants), on SQLite each chunk holds the single writer lock for milliseconds and a
batch waiting on it (busy_timeout) goes on right after. The packed tier keeps whole days:
a packed day goes once all of it is older than the cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text

from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, Micros
from iotpipe.store.tiers import _typed

TIERS = ("raw", "1h", "1d", "1w")
_WIDTHS = {"raw": MICROS_PER_DAY, "1h": MICROS_PER_HOUR, "1d": MICROS_PER_DAY, "1w": 7 * MICROS_PER_DAY}


def _series_ids(conn: Connection) -> list[int]:
    return [int(sid) for sid in conn.execute(text("SELECT id FROM series ORDER BY id")).scalars()]


def expired(conn: Connection, tier: str, cutoff: Micros) -> dict[str, int]:
    """What a purge of `tier` before `cutoff` would delete: rows, and readings for `raw`."""
    if tier == "raw":
        hot = conn.execute(
            _typed("SELECT count(*) FROM readings WHERE time < :c", times=("c",)), {"c": cutoff}
        )
        packed = conn.execute(
            _typed(
                "SELECT count(*), coalesce(sum(count), 0) FROM packed_readings WHERE day_start <= :c",
                times=("c",),
            ),
            {"c": cutoff - MICROS_PER_DAY},
        ).one()
        hot_rows = int(hot.scalar_one())
        return {
            "hot_readings": hot_rows,
            "packed_days": int(packed[0]),
            "readings": hot_rows + int(packed[1]),
        }
    rows = conn.execute(
        _typed("SELECT count(*) FROM rollups WHERE bucket = :b AND bucket_start < :c", times=("c",)),
        {"b": tier, "c": cutoff - _WIDTHS[tier] + 1},
    ).scalar_one()
    return {"rows": int(rows)}


def purge(
    begin: Callable[[], Any], tier: str, cutoff: Micros, chunk: int, should_stop: Callable[[], bool]
) -> dict[str, int]:
    """Delete `tier`'s rows older than `cutoff`, series by series, `chunk` rows per
    transaction (`begin()` opens one); stops between two chunks when `should_stop()`."""
    with begin() as conn:
        series_ids = _series_ids(conn)
    # The dry run's figures (expired()), counted as deleted, and the transactions it took.
    counts = {"readings": "hot_readings", "packed_readings": "packed_days", "rollups": "rows"}
    done = dict.fromkeys([counts[table] for table, *_ in _targets(tier, cutoff)], 0)
    if tier == "raw":
        done["readings"] = 0
    done["transactions"] = 0
    for series_id in series_ids:
        for table, column, where, bound in _targets(tier, cutoff):
            while not should_stop():
                with begin() as conn:
                    deleted, readings = _delete_chunk(conn, table, column, where, series_id, bound, chunk)
                done["transactions"] += 1
                done[counts[table]] += deleted
                if tier == "raw":
                    done["readings"] += readings
                if deleted < chunk:
                    break
    return done


def _targets(tier: str, cutoff: Micros) -> list[tuple[str, str, str, Micros]]:
    """(table, time column, extra condition, exclusive bound) pairs a tier's purge covers:
    a packed day or a bucket goes once all of it is older than the cutoff."""
    whole = cutoff - _WIDTHS[tier] + 1
    if tier == "raw":
        return [("readings", "time", "", cutoff), ("packed_readings", "day_start", "", whole)]
    if tier not in _WIDTHS:
        raise ValueError(f"unknown tier {tier!r}")
    return [("rollups", "bucket_start", f"bucket = '{tier}' AND ", whole)]


def _delete_chunk(
    conn: Connection, table: str, column: str, where: str, series_id: int, bound: Micros, chunk: int
) -> tuple[int, int]:
    """Delete one chunk: (rows deleted, readings they held: a packed day holds many)."""
    # The chunk's last time: one index range read, then one index range delete.
    last = conn.execute(
        _typed(
            f"SELECT {column} FROM {table} WHERE {where}series_id = :s AND {column} < :bound "
            f"ORDER BY {column} LIMIT 1 OFFSET :skip",
            times=("bound",),
        ),
        {"s": series_id, "bound": bound, "skip": chunk - 1},
    ).first()
    condition = f"WHERE {where}series_id = :s AND {column} < :bound"
    params: dict[str, Any] = {"s": series_id, "bound": bound}
    if last is not None:
        condition += f" AND {column} <= :last"
        params["last"] = last[0]
    held = None
    if table == "packed_readings":
        held = conn.execute(
            _typed(f"SELECT coalesce(sum(count), 0) FROM {table} {condition}", times=("bound",)), params
        ).scalar_one()
    deleted = int(conn.execute(_typed(f"DELETE FROM {table} {condition}", times=("bound",)), params).rowcount)
    return deleted, deleted if held is None else int(held)
