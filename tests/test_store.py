"""The store's schema and migrations on both engines."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from iotpipe.store import open_store
from iotpipe.store.migrations import MIGRATIONS
from iotpipe.store.schema import metadata
from tests.servers import PostgresServer


def test_migrations_create_every_table_the_code_queries(database_url: str) -> None:
    store = open_store(database_url)
    inspector = inspect(store.engine)
    for table in metadata.tables.values():
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    store.close()


def test_init_upgrades_an_older_schema_and_is_idempotent(database_url: str, tmp_path: Path) -> None:
    old = open_store(database_url, migrate=False)
    assert old.migrate(upto=MIGRATIONS[0].name) == [MIGRATIONS[0].name]
    assert old.pending_migrations() == [m.name for m in MIGRATIONS[1:]]
    old.close()

    def init() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "iotpipe", "--database-url", database_url, "init"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert MIGRATIONS[-1].name in init()
    assert "is up to date" in init()
    store = open_store(database_url, migrate=False)
    assert store.pending_migrations() == []
    store.close()


def test_sqlite_readings_are_compact(tmp_path: Path) -> None:
    """WITHOUT ROWID keeps a reading near its 3 columns' size; the benchmark measures it at scale."""
    from iotpipe.pipeline import Pipeline
    from tests.helpers import raw

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    messages = [
        raw({"device_id": f"d{i % 10}", "timestamp": 1_763_805_600 + i, "t": i * 0.5}) for i in range(20_000)
    ]
    Pipeline(store).feed_all(messages)
    with store.engine.connect() as conn:
        size = conn.exec_driver_sql("SELECT sum(pgsize) FROM dbstat WHERE name = 'readings'").scalar()
    assert size / 20_000 < 30
    store.close()


def test_postgresql_updates_device_times_in_place(postgres: PostgresServer) -> None:
    """Every batch rewrites its devices' first and last seen: room left on each page
    (fillfactor, migration 0013) keeps those updates HOT, with no new index entries."""
    import psycopg

    from iotpipe.model import WriteBatch, now_micros

    store = open_store(postgres.create_database("test_devices_hot"))
    start = now_micros() - 3_600_000_000
    for minute in range(20):
        batch = WriteBatch(reading_count=200)
        for device in range(200):
            batch.groups.append((f"d{device}", [("t", start + minute * 60_000_000, 1.0)]))
        store.write(batch)
    store.close()
    with psycopg.connect(postgres.url("test_devices_hot"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        updated, hot = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'devices'"
        ).fetchone()
    assert updated >= 19 * 200
    assert hot >= 0.9 * updated, (hot, updated)


def test_postgresql_reads_keep_their_prepared_statements(postgres: PostgresServer) -> None:
    """An API read is a statement the server plans once per connection: reads run in
    autocommit, as a transaction rolled back at the end of each read would make psycopg
    drop its prepared statements (and the server plan the query again every request)."""
    from iotpipe.model import WriteBatch, now_micros

    store = open_store(postgres.create_database("test_prepared_reads"))
    store.write(WriteBatch(groups=[("pump-1", [("flow", now_micros(), 2.5)])], reading_count=1))
    for _ in range(8):  # psycopg prepares a statement at its fifth execution
        assert [r[0] for r in store.latest_readings("pump-1")] == ["flow"]
    with store.read_connection() as conn:  # one thread: the pool's one connection again
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
        in_transaction = conn.exec_driver_sql("SELECT now() <> statement_timestamp()").scalar()
    store.close()
    assert any("LEFT JOIN LATERAL" in statement for statement in prepared), prepared
    assert in_transaction is False  # each statement its own transaction


def _pings_counted(store: Any) -> list[int]:
    """Count the pings the store's engine sends (the dialect's do_ping, wrapped)."""
    dialect = store.engine.dialect
    calls: list[int] = []
    ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        calls.append(1)
        return bool(ping(dbapi_connection))

    dialect.do_ping = counted
    return calls


def test_postgresql_reads_in_a_row_send_no_ping_and_a_dead_connection_is_replaced(
    postgres: PostgresServer,
) -> None:
    """A pooled connection is checked at checkout without a round trip: a connection the
    server closed (a restart, a terminated backend) is replaced before the read uses it,
    and a connection used a moment ago is handed out without a ping."""
    import psycopg

    from iotpipe.model import WriteBatch, now_micros

    url = postgres.create_database("test_checkout_check")
    store = open_store(url)
    store.write(WriteBatch(groups=[("pump-1", [("flow", now_micros(), 2.5)])], reading_count=1))
    pings = _pings_counted(store)
    for _ in range(5):
        assert [r[0] for r in store.latest_readings("pump-1")] == ["flow"]
    assert pings == []
    with store.read_connection() as conn:
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert [r[0] for r in store.latest_readings("pump-1")] == ["flow"]  # no error: replaced
    with store.read_connection() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != backend
    store.close()


def test_postgresql_pings_a_connection_idle_past_the_limit(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotpipe.store import postgres as pg_store

    store = open_store(postgres.create_database("test_idle_ping"))
    pings = _pings_counted(store)
    assert store.dead_letter_count() == 0
    monkeypatch.setattr(pg_store, "PING_AFTER_IDLE_SECONDS", 0.0)
    assert store.dead_letter_count() == 0
    store.close()
    assert pings == [1]


def test_a_chart_of_rollups_on_postgresql_reads_the_primary_key_only(postgres: PostgresServer) -> None:
    """A series' daily buckets are written across the fleet's, one heap page apart: the
    columns a chart reads are carried in the primary key, so no heap page is visited."""
    from iotpipe.analytics.jobs import find_job, run_job
    from iotpipe.analytics.rollups import _CHART_COLUMNS
    from iotpipe.config import Settings
    from iotpipe.model import MICROS_PER_HOUR, WriteBatch

    store = open_store(postgres.create_database("test_covering_rollups"))
    start = 1_760_000_000_000_000 - 1_760_000_000_000_000 % (24 * MICROS_PER_HOUR)
    readings = [("flow", start + hour * MICROS_PER_HOUR, float(hour)) for hour in range(24 * 30)]
    store.write(WriteBatch(groups=[("pump-1", readings)], reading_count=len(readings)))
    run_job(find_job("rollups"), store, Settings())
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM (ANALYZE) rollups")
        conn.exec_driver_sql("SET enable_seqscan = off")  # a 30-row table: make the planner use an index
        conn.exec_driver_sql("SET enable_bitmapscan = off")
        series_id = store.series_id("pump-1", "flow")
        params = (series_id, "1d", start, start + 30 * 24 * MICROS_PER_HOUR)
        days = conn.exec_driver_sql(_CHART_COLUMNS["postgresql"], params).fetchall()
        plan = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + _CHART_COLUMNS["postgresql"], params
        ).scalar_one()[0]["Plan"]
    store.close()
    assert [row[1] for row in days] == [24] * 30
    scan = plan if plan["Node Type"].startswith("Index") else plan["Plans"][0]
    assert (scan["Node Type"], scan["Index Name"], scan["Heap Fetches"]) == (
        "Index Only Scan",
        "rollups_pkey",
        0,
    )


def test_a_series_id_found_once_is_answered_without_a_query_and_an_unknown_one_is_not_kept(
    database_url: str,
) -> None:
    """A history request looks its series up first; series are never deleted nor
    renumbered, so the store answers an id it found before from memory."""
    from sqlalchemy import event

    from iotpipe.model import WriteBatch

    writer = open_store(database_url)
    writer.write(WriteBatch(groups=[("pump-1", [("flow", 1_000_000, 2.5)])], reading_count=1))
    reader = open_store(database_url)  # another process's store: it never wrote the series
    statements: list[str] = []
    event.listen(
        reader.engine,
        "before_cursor_execute",
        lambda *args: statements.append(args[2]) if args[2].startswith("SELECT") else None,
    )
    try:
        first = reader.series_id("pump-1", "flow")
        assert first == writer.cached_series_id("pump-1", "flow") and first is not None
        assert len(statements) == 1
        assert reader.series_id("pump-1", "flow") == first
        assert len(statements) == 1  # answered from memory
        assert reader.series_id("pump-1", "level") is None
        assert reader.series_id("pump-1", "level") is None
        assert len(statements) == 3  # a series not found is asked again: it may be created
    finally:
        writer.close()
        reader.close()


def test_series_created_before_a_time_are_told_apart_in_one_query(database_url: str) -> None:
    """The streaming detector asks which series of a batch existed before it started
    (only those have a past to rebuild): one query, whatever the number of series."""
    from sqlalchemy import event

    from iotpipe.model import WriteBatch, now_micros

    store = open_store(database_url)
    try:
        store.write(
            WriteBatch(groups=[("old", [(f"m{i}", 1_000_000, 1.0) for i in range(700)])], reading_count=700)
        )
        cut = now_micros() + 1
        while now_micros() <= cut:
            pass
        store.write(WriteBatch(groups=[("new", [("m0", 1_000_000, 1.0)])], reading_count=1))
        old = sorted(store.cached_series_id("old", f"m{i}") or 0 for i in range(700))
        new = store.cached_series_id("new", "m0")
        assert new is not None and 0 not in old
        statements: list[str] = []
        event.listen(
            store.engine,
            "before_cursor_execute",
            lambda *args: statements.append(args[2]) if args[2].startswith("SELECT") else None,
        )
        assert sorted(store.series_created_before([*old, new, 10**6], cut)) == old
        assert len(statements) == 1
        assert store.series_created_before([], cut) == []
    finally:
        store.close()


def test_postgresql_inserts_a_new_fleet_plainly_and_what_another_process_wrote_once(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices, series and rollup marks of a large batch are inserted without ON CONFLICT
    (half the server's work); when another process wrote some already, the insert falls
    back to ON CONFLICT in its savepoint, the batch commits whole, and nothing is doubled."""
    import psycopg

    from iotpipe.model import DeviceInfo, WriteBatch, now_micros
    from iotpipe.store import postgres as pg

    monkeypatch.setattr(pg, "PLAIN_INSERT_FROM", 100)  # this fleet's 300 devices count as many
    url = postgres.create_database("test_plain_inserts")
    hour = 3_600_000_000
    start = now_micros() - now_micros() % hour - 30 * hour

    def fleet(devices: range, hours: int) -> WriteBatch:
        batch = WriteBatch(reading_count=len(devices) * 2 * hours)
        for device in devices:
            group = [(m, start + h * hour, float(h)) for h in range(hours) for m in ("t", "h")]
            batch.groups.append((f"d{device}", group))
        batch.infos = {f"d{devices[0]}": DeviceInfo(name="first", latitude=51.5, attributes={"site": "a"})}
        return batch

    def counts() -> tuple[int, ...]:
        with psycopg.connect(postgres.url("test_plain_inserts")) as conn:
            return tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for table in ("devices", "series", "dirty_hours", "readings")
            )

    first, second = open_store(url), open_store(url)
    try:
        assert isinstance(first, pg.PostgresStore) and isinstance(second, pg.PostgresStore)
        assert first.write(fleet(range(300), 5)).stored == 3_000  # 300 devices, 600 series, 3,000 marks
        assert first._meets_existing == set()  # all new: plain inserts went through
        assert counts() == (300, 600, 3_000, 3_000)
        # Another process, its caches cold, writes the same fleet and 50 new devices.
        result = second.write(fleet(range(350), 5))
        assert (result.stored, result.duplicates) == (500, 3_000)
        assert counts() == (350, 700, 3_500, 3_500)
        assert {pg._INSERT_DEVICES, pg._INSERT_SERIES, pg._INSERT_MARKS} <= second._meets_existing
        # Once a batch meets nothing existing, the plain inserts are tried again.
        assert second.write(fleet(range(400, 1_000), 1)).stored == 1_200
        assert second._meets_existing == set()
        assert counts() == (950, 1_900, 4_700, 4_700)
        with psycopg.connect(postgres.url("test_plain_inserts")) as conn:
            name, latitude, attributes = conn.execute(
                "SELECT name, latitude, attributes FROM devices WHERE device_id = 'd400'"
            ).fetchone()  # type: ignore[misc]
        assert (name, latitude, attributes) == ("first", 51.5, {"site": "a"})
    finally:
        first.close()
        second.close()
