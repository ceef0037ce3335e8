"""The analytics jobs, listed in the order they run, and how one is run.

A job reads the store and writes only its own tables; it returns a small summary of
what it did (for `iotpipe jobs --json` and the job_state table). `run_job` is how the
CLI and the scheduler run one: on PostgreSQL under an advisory lock, so that several
`iotpipe run` instances never run the same job at the same time.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update

from iotpipe.analytics import alerts, anomalies, health, quality, rollups
from iotpipe.config import Settings
from iotpipe.errors import IotpipeError
from iotpipe.model import MICROS_PER_SECOND, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import job_state

log = logging.getLogger(__name__)

JobFunction = Callable[[Store, Settings], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    name: str
    run: JobFunction
    # Seconds between two runs inside `iotpipe run`, from the settings.
    every: Callable[[Settings], float]


# In the order `all` runs them: quality needs current rollups and anomalies; alerts read
# health and quality.
JOBS: tuple[Job, ...] = (
    Job("rollups", rollups.rollups_job, lambda s: s.analytics.rollups_every),
    Job("anomalies", anomalies.anomalies_job, lambda s: s.analytics.anomalies_every),
    Job("quality", quality.quality_job, lambda s: s.analytics.quality_every),
    Job("health", health.health_job, lambda s: s.analytics.health_every),
    Job("alerts", alerts.alerts_job, lambda s: s.analytics.alerts_every),
)


def find_job(name: str, jobs: tuple[Job, ...] = JOBS) -> Job:
    for job in jobs:
        if job.name == name:
            return job
    raise IotpipeError(f"unknown job {name!r}; choose one of: {', '.join(j.name for j in jobs)}, all")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit PostgreSQL advisory lock key for a job name."""
    digest = hashlib.blake2b(f"iotpipe.job.{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def job_lock(store: Store, name: str) -> Iterator[bool]:
    """Yield whether this process may run the job now.

    PostgreSQL: a session advisory lock held on its own connection for the whole job,
    tried without waiting; whoever holds it runs, the others skip. The lock dies with
    the connection, so a crashed runner never blocks the job for good. SQLite: always
    True — its jobs stay correct when two processes overlap, because every step that
    must not interleave is one IMMEDIATE transaction.
    """
    if store.dialect != "postgresql":
        yield True
        return
    key = advisory_key(name)
    with store.engine.connect() as conn:
        got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def run_job(job: Job, store: Store, settings: Settings, every: float | None = None) -> dict[str, Any]:
    """Run one job once (unless another process is running it); record how it went.

    With `every` (the scheduler's interval), the job is also skipped when any process
    started it less than `every` seconds ago: several `iotpipe run` instances then run
    each job once per interval between them, not once each.
    """
    name = job.name
    with job_lock(store, name) as mine:
        if not mine:
            return {"job": name, "skipped": "running in another process"}
        started = now_micros()
        if every is not None:
            last = _last_started(store, name)
            if last is not None and 0 <= started - last < every * MICROS_PER_SECOND:
                ago = (started - last) / MICROS_PER_SECOND
                return {
                    "job": name,
                    "skipped": f"started {ago:.1f} s ago (every {every:g} s), by another process",
                }
        log.debug("job %s started at %d", name, started)
        clock = time.perf_counter()
        _record(store, name, last_started_at=started)
        try:
            result = job.run(store, settings)
        except Exception as exc:
            _record(
                store,
                name,
                last_finished_at=now_micros(),
                last_status="failed",
                last_error="".join(traceback.format_exception_only(exc)).strip(),
            )
            raise
        result = {"job": name, **result, "seconds": round(time.perf_counter() - clock, 3)}
        _record(
            store, name, last_finished_at=now_micros(), last_status="ok", last_result=result, last_error=None
        )
        return result


def _last_started(store: Store, name: str) -> int | None:
    with store.read_connection() as conn:
        return conn.scalar(select(job_state.c.last_started_at).where(job_state.c.name == name))


def _record(store: Store, name: str, **values: Any) -> None:
    with store.engine.begin() as conn:
        if not conn.execute(update(job_state).where(job_state.c.name == name).values(**values)).rowcount:
            conn.execute(store.dialect_insert(job_state).values(name=name, **values).on_conflict_do_nothing())
