"""The job scheduler inside `iotpipe run`: every job, each at its own interval.

One thread runs the jobs one after another in dependency order (rollups before
quality, health before alerts, alerts before their webhooks), so a slow job delays the
others but never ingest: the pipeline's writer thread is not involved, and every job
commits in short transactions. On PostgreSQL each run takes the job's advisory lock
first (analytics.jobs.run_job) and skips the job if any instance started it less than
an interval ago, so several `iotpipe run` instances run each job once per interval
between them instead of once each.
"""

from __future__ import annotations

import logging
import threading
import time

from iotpipe.analytics.jobs import Job, run_job
from iotpipe.config import Settings
from iotpipe.errors import first_line
from iotpipe.redact import redact
from iotpipe.store import Store

log = logging.getLogger(__name__)


class JobScheduler:
    name = "jobs"

    def __init__(
        self, settings: Settings, store: Store, jobs: tuple[Job, ...], join_timeout: float = 60.0
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs: dict[str, int] = {}  # completed runs per job, for tests and logs

    def every(self, job: Job) -> float:
        return job.every(self.settings)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iotpipe-jobs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = {job.name: 0.0 for job in self.jobs}  # every job runs once at start
        while not self._stop.is_set():
            for job in self.jobs:
                if self._stop.is_set():
                    return
                if time.monotonic() < due[job.name]:
                    continue
                try:
                    result = run_job(job, self.store, self.settings, every=self.every(job))
                    log.debug("job %s: %s", job.name, result)
                    if "skipped" not in result:
                        self.runs[job.name] = self.runs.get(job.name, 0) + 1
                except Exception as exc:
                    _log_failure(job, exc, self.every(job))
                due[job.name] = time.monotonic() + self.every(job)
            wait = min(due.values(), default=time.monotonic() + 1.0) - time.monotonic()
            self._stop.wait(min(5.0, max(0.1, wait)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout)

    def describe(self) -> str:
        plan = ", ".join(f"{job.name} every {self.every(job):g} s" for job in self.jobs)
        return f"Analytics jobs: {plan}."


def _log_failure(job: Job, exc: Exception, every: float) -> None:
    """A database outage is one line a run (the job is retried at its next run, as
    ingest is); anything else is a bug, logged with its traceback."""
    from iotpipe.app import database_outages

    if isinstance(exc, database_outages()):
        reason = redact(first_line(exc))
        log.error(
            "job %s failed, the database is unreachable (%s); it runs again in %.0f s",
            job.name,
            reason,
            every,
        )
    else:
        log.error("job %s failed; it runs again in %.0f s", job.name, every, exc_info=exc)
