"""The job scheduler inside `iotpipe run`: every analytics job, each at its own interval.

One thread runs the jobs one after another in dependency order (rollups before
quality, health before alerts), so a slow job delays the others but never ingest: the
pipeline's writer thread is not involved, and every job commits in short transactions.
On PostgreSQL each run takes the job's advisory lock first (jobs.run_job), so several
`iotpipe run` instances share the work instead of doubling it.
"""

from __future__ import annotations

import logging
import threading
import time

from iotpipe.analytics.jobs import job_names, run_job
from iotpipe.config import Settings
from iotpipe.pipeline import Pipeline
from iotpipe.store import Store

log = logging.getLogger(__name__)

DEFAULT_EVERY = 300.0  # seconds, for a job without its own `<name>_every` setting


class JobScheduler:
    name = "jobs"
    is_source = False

    def __init__(self, settings: Settings, store: Store, join_timeout: float = 60.0) -> None:
        self.settings = settings
        self.store = store
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs: dict[str, int] = {}  # completed runs per job, for tests and logs

    def every(self, name: str) -> float:
        return float(getattr(self.settings.analytics, f"{name}_every", DEFAULT_EVERY))

    def start(self, pipeline: Pipeline) -> None:
        self._thread = threading.Thread(target=self._run, name="iotpipe-jobs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = dict.fromkeys(job_names(), 0.0)  # every job runs once at start
        while not self._stop.is_set():
            for name in job_names():
                if self._stop.is_set():
                    return
                if time.monotonic() < due.get(name, 0.0):
                    continue
                try:
                    result = run_job(name, self.store, self.settings)
                    log.debug("job %s: %s", name, result)
                    self.runs[name] = self.runs.get(name, 0) + 1
                except Exception:
                    log.exception("job %s failed; it runs again in %.0f s", name, self.every(name))
                due[name] = time.monotonic() + self.every(name)
            wait = min(due.values(), default=time.monotonic() + 1.0) - time.monotonic()
            self._stop.wait(min(5.0, max(0.1, wait)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout)

    def describe(self) -> str:
        plan = ", ".join(f"{name} every {self.every(name):g} s" for name in job_names())
        return f"Analytics jobs: {plan}."


def analytics_service(settings: Settings, store: Store) -> JobScheduler | None:
    """The scheduler, unless `[analytics] jobs = false` (e.g. ingest-only workers)."""
    return JobScheduler(settings, store) if settings.analytics.jobs else None
