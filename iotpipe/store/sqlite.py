"""SQLite, the embedded default: WAL, one writer, executemany of INSERT OR IGNORE."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from iotpipe.model import Micros
from iotpipe.store.base import ReadingColumns, Store

# Pragmas every connection gets. NORMAL synchronous in WAL mode survives process
# crashes without loss (only an OS crash may lose the last commits), at a fraction of
# FULL's fsync cost.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA cache_size=-65536",
    "PRAGMA temp_store=MEMORY",
)


def sqlite_engine(url: str) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Take transactions out of the sqlite3 module's hands so DDL is transactional
        # and BEGIN IMMEDIATE can be asked for (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        for pragma in _PRAGMAS:
            dbapi_connection.execute(pragma)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine


class SqliteStore(Store):
    dialect = "sqlite"
    dialect_insert = staticmethod(sqlite_insert)

    def __init__(self, url: str) -> None:
        super().__init__(sqlite_engine(url), url)

    def describe(self) -> str:
        return f"SQLite database {self.engine.url.database}"

    @contextmanager
    def write_transaction(self) -> Iterator[Connection]:
        # IMMEDIATE takes the write lock up front: two writers queue on busy_timeout
        # instead of one failing with 'database is locked' when it upgrades.
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _insert_readings(self, conn: Connection, columns: ReadingColumns) -> int:
        raw = _driver(conn)
        before = raw.total_changes
        raw.executemany(
            "INSERT OR IGNORE INTO readings (series_id, time, value) VALUES (?, ?, ?)", columns.rows()
        )
        return raw.total_changes - before

    def _insert_dirty_hours(self, conn: Connection, hours: list[tuple[int, Micros]]) -> None:
        _driver(conn).executemany(
            "INSERT OR IGNORE INTO dirty_hours (series_id, hour_start) VALUES (?, ?)", hours
        )

    def _tier_bytes(self, conn: Connection) -> tuple[int | None, int | None]:
        try:
            sizes: dict[str, int] = dict(
                conn.exec_driver_sql(
                    "SELECT name, sum(pgsize) FROM dbstat WHERE name IN "
                    "('readings', 'packed_readings', 'sqlite_autoindex_packed_readings_1') GROUP BY name"
                ).all()
            )
        except sa_exc.OperationalError:  # SQLite built without the dbstat table
            return None, None
        packed = sizes.get("packed_readings", 0) + sizes.get("sqlite_autoindex_packed_readings_1", 0)
        return int(sizes.get("readings", 0)), int(packed)

    def _touch_devices(self, conn: Connection, spans: dict[int, tuple[Micros, Micros]]) -> None:
        _driver(conn).executemany(
            "UPDATE devices SET first_seen = min(coalesce(first_seen, ?1), ?1), "
            "last_seen = max(coalesce(last_seen, ?2), ?2) WHERE id = ?3",
            [(first, last, pk) for pk, (first, last) in spans.items()],
        )


def _driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under SQLAlchemy's, for the per-batch bulk statements."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw
