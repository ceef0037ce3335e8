"""The API's hottest reads, through the driver's own cursor.

A few fixed statements run on every API request: a device's latest readings, a chart from
the rollups, a day of raw readings. SQLAlchemy's execution (its context, result metadata
and type processors) costs ~0.2 ms of CPU a statement and ~1 µs a row on top of the
driver's: on PostgreSQL, half of `latest`'s time in the store and two thirds of a year of
daily rollups' (docs/performance.md, "Driver reads"). These statements run on a
connection SQLAlchemy's pool gave out, through the driver:
- PostgreSQL: results in binary (floats and ints unpacked, not parsed from text: a third
  of a year of rollups' cost), each statement prepared at its first use on a connection,
  and timestamptz loaded as µs since 1970 (our Micros), whatever the query;
- SQLite: the sqlite3 cursor, outside SQLAlchemy's transaction (no BEGIN and ROLLBACK
  around one SELECT); times are stored as integer µs already.

Statements are written once with `:name` parameters (SQLite's style); `statement()` gives
each driver's. Time parameters are Micros; `rows()` passes those named in `times` to
PostgreSQL as timestamptz.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import struct
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from sqlalchemy import Connection

from iotpipe.model import micros_to_datetime

# timestamptz's binary wire form is int8 microseconds since 2000-01-01 UTC.
PG_EPOCH_OFFSET_MICROS = 946_684_800_000_000

_INT8 = struct.Struct("!q")
_NAMED = re.compile(r"(?<![:\w]):(\w+)")  # :name, not a ::cast


class _Micros(Loader):
    """timestamptz in binary (int8 µs since 2000-01-01) -> int µs since 1970."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Buffer) -> int:
        return int(_INT8.unpack(data)[0]) + PG_EPOCH_OFFSET_MICROS


@functools.lru_cache(maxsize=256)
def statement(dialect: str, sql: str) -> str:
    """`sql` with `:name` parameters in the dialect's driver style."""
    if dialect != "postgresql":
        return sql
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def rows(
    conn: Connection,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any],
    times: Collection[str] = (),
) -> list[tuple[Any, ...]]:
    """The rows of `sql` (driver style: see statement()) on SQLAlchemy's connection."""
    raw = conn.connection.driver_connection
    if isinstance(raw, sqlite3.Connection):
        found: list[tuple[Any, ...]] = raw.execute(sql, params).fetchall()
        return found
    assert isinstance(raw, psycopg.Connection)
    if times and isinstance(params, Mapping):
        params = {k: micros_to_datetime(v) if k in times and v is not None else v for k, v in params.items()}
    with raw.cursor(binary=True) as cursor:
        cursor.adapters.register_loader("timestamptz", _Micros)
        found = cursor.execute(sql, params, prepare=True).fetchall()
    return found
