"""Jobs run once from the CLI or periodically in `iotpipe run`; on PostgreSQL two runners
never run the same job at once (advisory locks)."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from sqlalchemy import select

from iotpipe.analytics.jobs import Job, advisory_key, find_job, run_job
from iotpipe.app.scheduler import JobScheduler
from iotpipe.app.wiring import ALL_JOBS
from iotpipe.config import AnalyticsSettings, Settings
from iotpipe.errors import IotpipeError
from iotpipe.model import MICROS_PER_SECOND, now_micros
from iotpipe.store import Store, open_store
from iotpipe.store.schema import job_state
from tests.analytics.support import write_readings
from tests.analytics.test_rollups import SERIES, START, assert_rollups_match_readings, random_readings
from tests.servers import PostgresServer


def test_every_job_of_the_issue_is_listed_in_dependency_order() -> None:
    assert [job.name for job in ALL_JOBS] == [
        "rollups",
        "anomalies",
        "quality",
        "health",
        "alerts",
        "webhooks",
        "compact",
        "retention",
        "lake",
    ]


def test_run_job_records_its_result_and_unknown_names_are_refused(store: Store) -> None:
    result = run_job(find_job("health"), store, Settings())
    assert result["job"] == "health"
    with store.engine.connect() as conn:
        row = conn.execute(select(job_state).where(job_state.c.name == "health")).one()
    assert (row.last_status, row.last_result["devices"]) == ("ok", 0)
    with pytest.raises(
        IotpipeError,
        match="unknown job 'nope'; choose one of: rollups, anomalies, quality, health, alerts, all",
    ):
        find_job("nope")


def test_a_job_another_runner_holds_is_skipped(postgres: PostgresServer) -> None:
    url = postgres.create_database("jobs_skip")
    store = open_store(url)
    try:
        with psycopg.connect(url) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (advisory_key("rollups"),))
            assert run_job(find_job("rollups"), store, Settings()) == {
                "job": "rollups",
                "skipped": "running in another process",
            }
        assert "skipped" not in run_job(find_job("rollups"), store, Settings())  # released with its session
    finally:
        store.close()


def test_two_runners_on_postgresql_share_the_rollup_work_without_doing_it_twice(
    postgres: PostgresServer,
) -> None:
    import random

    url = postgres.create_database("jobs_two_runners")
    runners = [open_store(url), open_store(url)]
    try:
        write_readings(runners[0], random_readings(random.Random(3), START, days=3))
        results: list[dict[str, object]] = []
        barrier = threading.Barrier(2)

        def runner(store: Store) -> None:
            barrier.wait()
            results.append(run_job(find_job("rollups"), store, Settings()))

        threads = [threading.Thread(target=runner, args=(s,)) for s in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        hours = sum(int(r.get("hours", 0)) for r in results)  # type: ignore[call-overload]
        with runners[0].engine.connect() as conn:
            distinct_hours = conn.exec_driver_sql("SELECT count(*) FROM rollups WHERE bucket = '1h'").scalar()
        assert hours == distinct_hours  # each hour computed by exactly one runner
        assert_rollups_match_readings(runners[0])
    finally:
        for s in runners:
            s.close()


def test_the_scheduler_runs_every_job_and_stops(store: Store) -> None:
    t = now_micros()
    write_readings(
        store, [(d, m, t - i * 60 * MICROS_PER_SECOND, float(i)) for d, m in SERIES for i in range(5)]
    )
    settings = Settings(analytics=AnalyticsSettings(rollups_every=0.1))  # type: ignore[call-arg]
    scheduler = JobScheduler(settings, store, ALL_JOBS)
    scheduler.start()
    try:
        done = threading.Event()
        for _ in range(600):
            if set(scheduler.runs) >= {job.name for job in ALL_JOBS} and scheduler.runs["rollups"] >= 2:
                done.set()
                break
            done.wait(0.1)
    finally:
        scheduler.stop()
    assert done.is_set(), scheduler.runs
    assert "rollups every 0.1 s" in scheduler.describe()


def _first_failure(scheduler: JobScheduler, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="iotpipe.app.scheduler"):
        scheduler.start()
        try:
            for _ in range(300):
                if caplog.records:
                    break
                time.sleep(0.1)
        finally:
            scheduler.stop()
    assert caplog.records, "no job failed"
    return caplog.records[0]


def test_a_job_meeting_a_database_outage_logs_one_line_and_a_bug_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def buggy(store: Store, settings: Settings) -> dict[str, object]:
        raise ZeroDivisionError("division by zero")

    with PostgresServer() as server:
        store = open_store(server.create_database("outage_jobs"))
        try:
            server.stop(cleanup=False)
            outage = _first_failure(JobScheduler(Settings(), store, (find_job("health"),)), caplog)
            server.launch()
            bug = _first_failure(
                JobScheduler(Settings(), store, (Job("buggy", buggy, lambda s: 3600.0),)), caplog
            )
        finally:
            store.close()
    assert outage.getMessage().startswith(
        "job health failed, the database is unreachable (connection failed:"
    )
    assert outage.getMessage().endswith("; it runs again in 30 s")
    assert outage.exc_info is None and "\n" not in outage.getMessage()
    assert bug.getMessage() == "job buggy failed; it runs again in 3600 s"
    assert bug.exc_info is not None and bug.exc_info[0] is ZeroDivisionError
