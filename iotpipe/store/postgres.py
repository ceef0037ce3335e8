"""PostgreSQL, the production store: binary COPY for readings, deduplicated without losing its speed."""

from __future__ import annotations

import json
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DisconnectionError

from iotpipe.arrays import in_series_time_order
from iotpipe.model import Micros
from iotpipe.store.base import ReadingColumns, Store
from iotpipe.store.driver import PG_EPOCH_OFFSET_MICROS
from iotpipe.store.tiers import pg_array

# Binary COPY carries no per-field type, so our µs-since-1970 ints shifted by
# PG_EPOCH_OFFSET_MICROS (timestamptz's binary form counts from 2000) go out as plain
# int8s and are stored as real timestamptz values, with no datetime objects.

# A pooled connection idle for longer than this is pinged before use (see check_on_checkout).
PING_AFTER_IDLE_SECONDS = 30.0

PLAIN_INSERT_FROM = 1_000  # rows of an INSERT worth a try without ON CONFLICT (_insert_new)

# SQL turning an offset column (µs since 2000-01-01) back into a timestamptz.
_FROM_OFFSET = "('2000-01-01 00:00:00+00'::timestamptz + {} * interval '1 microsecond')"

COPY_READINGS = "COPY readings (series_id, time, value) FROM STDIN (FORMAT BINARY)"
COPY_STAGING = "COPY readings_staging (series_id, time, value) FROM STDIN (FORMAT BINARY)"


def postgres_url(url: str) -> str:
    """SQLAlchemy URL that selects psycopg 3 for a plain postgresql:// URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_INSERT_MARKS = (
    "INSERT INTO dirty_hours (series_id, hour_start) "
    f"SELECT s, {_FROM_OFFSET.format('h')} FROM unnest(%s::int[], %s::bigint[]) AS u(s, h)"
)

_INSERT_SERIES = (
    "INSERT INTO series (device_pk, metric, unit, created_at) "
    f"SELECT d, m, u, {_FROM_OFFSET.format('%s::bigint')} "
    "FROM unnest(%s::int[], %s::text[], %s::text[]) AS w(d, m, u)"
)

_INSERT_DEVICES = (
    "INSERT INTO devices "
    "(device_id, type, name, firmware, latitude, longitude, elevation, attributes, created_at) "
    f"SELECT d, t, n, f, la, lo, el, a::jsonb, {_FROM_OFFSET.format('%s::bigint')} "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::float8[], %s::float8[], %s::float8[], %s::text[]) AS w(d, t, n, f, la, lo, el, a)"
)


def check_on_checkout(engine: Engine) -> None:
    """Hand out no dead pooled connection, without a round trip per checkout.

    SQLAlchemy's pool_pre_ping sends a SELECT 1 at every checkout: on the API's reads that
    is one round trip more per request (14 % of a `latest` request's samples). A server
    that restarts or dies closes its sockets, and the closed socket is readable (the
    server's FATAL message, or EOF) while a live idle connection has nothing to say, so
    a poll of the socket finds those for the price of a system call. A connection idle
    for longer than PING_AFTER_IDLE_SECONDS, which a silent network drop or a proxy's
    idle timeout may have cut, is still pinged. Either way the pool replaces it."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:  # a new connection
            return
        try:
            readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
        except (OSError, ValueError, psycopg.OperationalError) as exc:
            raise DisconnectionError(str(exc)) from exc
        if readable:
            raise DisconnectionError("the server closed the connection")
        if time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except psycopg.Error as exc:
                raise DisconnectionError(str(exc)) from exc


class PostgresStore(Store):
    dialect = "postgresql"
    dialect_insert = staticmethod(pg_insert)
    time_offset = -PG_EPOCH_OFFSET_MICROS
    writes_behind = True  # COPY is the server's work: decode the next batch meanwhile

    def __init__(self, url: str) -> None:
        engine = create_engine(postgres_url(url))
        check_on_checkout(engine)
        # Reads in autocommit: a read-only connection taken from the pool and given back
        # otherwise opens a transaction and rolls it back, and psycopg forgets its
        # prepared statements at every ROLLBACK (a rollback may have undone a PREPARE), so
        # each API read was planned again: two round trips and a plan more per request.
        super().__init__(engine, url, reads=engine.execution_options(isolation_level="AUTOCOMMIT"))
        # Set once a batch hit stored readings (a replay, a re-import): the next batches
        # go straight to staging instead of paying for a COPY that fails, until one
        # batch comes through with nothing already stored.
        self._expect_duplicates = False
        self._meets_existing: set[str] = set()  # the same for other inserts (_insert_new)

    @contextmanager
    def snapshot_transaction(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        with self.snapshot_transaction() as conn:
            yield conn

    def _tier_bytes(self, conn: Connection) -> tuple[int | None, int | None]:
        row = conn.exec_driver_sql(
            "SELECT pg_total_relation_size('readings'), pg_total_relation_size('packed_readings')"
        ).one()
        return int(row[0]), int(row[1])

    def _insert_readings(self, conn: Connection, columns: ReadingColumns) -> int:
        """COPY straight into readings; when that hits an existing reading, COPY into a
        staging table and INSERT ... ON CONFLICT DO NOTHING from there.

        New data (the common case) pays for one COPY; replays and re-imports pay for two
        passes but still store each (series, time) once.
        """
        raw = _driver(conn)
        payload = binary_copy_payload(columns)
        if not self._expect_duplicates:
            # A SAVEPOINT through SQLAlchemy, which opens the batch's transaction first if
            # nothing ran yet (psycopg's own transaction() would then start and commit a
            # separate one, taking the readings out of the batch's atomicity).
            savepoint = conn.begin_nested()
            try:
                with raw.cursor() as cur, cur.copy(COPY_READINGS) as copy:
                    copy.write(payload)
            except psycopg.errors.UniqueViolation:
                savepoint.rollback()
                self._expect_duplicates = True
            else:
                savepoint.commit()
                return len(columns)
        with raw.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS readings_staging "
                "(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            cur.execute("TRUNCATE readings_staging")
            with cur.copy(COPY_STAGING) as copy:
                copy.write(payload)
            cur.execute(
                "INSERT INTO readings (series_id, time, value) "
                "SELECT series_id, time, value FROM readings_staging ON CONFLICT DO NOTHING"
            )
            stored = cur.rowcount
        self._expect_duplicates = stored < len(columns)
        return stored

    def _rollup_epoch(self, conn: Connection) -> int:
        # ROW EXCLUSIVE is what the marks' INSERT takes anyway; taken first, it makes the
        # rollup job's take (SHARE ROW EXCLUSIVE) wait for this transaction, and the epoch
        # read after it is the one this transaction commits under, whether it writes
        # marks or finds them all in place.
        _driver(conn).execute("LOCK TABLE dirty_hours IN ROW EXCLUSIVE MODE")
        return super()._rollup_epoch(conn)

    def _insert_dirty_hours(self, conn: Connection, hours: list[tuple[int, Micros]]) -> None:
        params = (pg_array([sid for sid, _ in hours]), pg_array([hour for _, hour in hours]))
        self._insert_new(conn, _INSERT_MARKS, params, len(hours))

    def _insert_new(self, conn: Connection, statement: str, params: tuple[Any, ...], rows: int) -> None:
        """Run an INSERT of `rows` distinct rows that are most likely all new, skipping
        any that exist. Many rows (an import's marks or new fleet): plainly, in a
        savepoint, first, which takes half the server's time of ON CONFLICT's speculative
        insertion; if one is there already (another process wrote it), with ON CONFLICT
        after all, and so for the next batches of this statement while they keep meeting
        existing rows (as the readings' COPY does)."""
        raw = _driver(conn)
        if rows >= PLAIN_INSERT_FROM and statement not in self._meets_existing:
            savepoint = conn.begin_nested()
            try:
                raw.execute(statement, params)
            except psycopg.errors.UniqueViolation:
                savepoint.rollback()
                self._meets_existing.add(statement)
            else:
                savepoint.commit()
                return
        inserted = raw.execute(statement + " ON CONFLICT DO NOTHING", params).rowcount
        if inserted == rows:
            self._meets_existing.discard(statement)

    def _insert_series(self, conn: Connection, wanted: list[dict[str, Any]]) -> None:
        # One statement over arrays: a new fleet's thousands of series cost one round
        # trip, not one executemany row each (0.5 s of a 1M-reading import of 5,000 series).
        params = (
            wanted[0]["created_at"] + self.time_offset,
            pg_array([row["device_pk"] for row in wanted]),
            [row["metric"] for row in wanted],
            [row["unit"] for row in wanted],
        )
        self._insert_new(conn, _INSERT_SERIES, params, len(wanted))

    def _insert_devices(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # Like the series: a new fleet's devices in one statement over arrays.
        params = (
            rows[0]["created_at"] + self.time_offset,
            *([row[key] for row in rows] for key in ("device_id", "type", "name", "firmware")),
            *(pg_array([row[key] for row in rows]) for key in ("latitude", "longitude", "elevation")),
            [None if row["attributes"] is None else json.dumps(row["attributes"]) for row in rows],
        )
        self._insert_new(conn, _INSERT_DEVICES, params, len(rows))

    def _touch_devices(self, conn: Connection, spans: dict[int, tuple[Micros, Micros]]) -> None:
        raw = _driver(conn)
        pks = list(spans)
        firsts = [spans[pk][0] for pk in pks]
        lasts = [spans[pk][1] for pk in pks]
        raw.execute(
            "UPDATE devices d SET "
            "first_seen = LEAST(d.first_seen, v.first), last_seen = GREATEST(d.last_seen, v.last) "
            f"FROM (SELECT id, {_FROM_OFFSET.format('f')} AS first, {_FROM_OFFSET.format('l')} AS last "
            "FROM unnest(%s::int[], %s::bigint[], %s::bigint[]) AS u(id, f, l)) v "
            "WHERE d.id = v.id",
            (pg_array(pks), pg_array(firsts), pg_array(lasts)),
        )


# COPY ... (FORMAT BINARY): a signature, flags and header-extension length, then per row
# a field count and (length, big-endian value) per field, then -1. The rows are built as
# one packed numpy record array: no Python call per reading.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("series_id_length", ">i4"),
        ("series_id", ">i4"),
        ("time_length", ">i4"),
        ("time", ">i8"),
        ("value_length", ">i4"),
        ("value", ">f8"),
    ]
)


def binary_copy_payload(columns: ReadingColumns) -> bytes:
    """The whole COPY BINARY stream of (series_id int4, time timestamptz, value float8)."""
    rows = np.empty(len(columns), dtype=_COPY_ROW)
    rows["fields"] = 3
    rows["series_id_length"] = 4
    rows["series_id"] = columns.series_ids
    rows["time_length"] = 8
    rows["time"] = columns.times
    rows["value_length"] = 8
    rows["value"] = columns.values
    # In primary-key order, the server appends to each series' end of the btree instead
    # of jumping between a thousand leaf pages per batch.
    if not in_series_time_order(columns.series_ids, columns.times):
        rows = rows[np.lexsort((columns.times, columns.series_ids))]
    return _COPY_SIGNATURE + rows.tobytes() + _COPY_TRAILER


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's, for COPY and the per-batch statements."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw
