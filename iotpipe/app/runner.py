"""The one run loop and the one shutdown path of every long-running command.

`run`, `ingest mqtt`, `ingest thingspeak` and `serve` all run here: sources feeding one
pipeline through its writer thread, plus background services (the job scheduler, the
API server). SIGINT and SIGTERM (what systemd and Docker send) both end the loop the
same way: sources stop taking messages and hand over what they took, the pipeline
commits it and acknowledges it, then services stop. A second signal during that
shutdown exits at once (what was not committed was not acknowledged either).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from iotpipe.model import Counters
from iotpipe.pipeline import Pipeline, PipelineWriter
from iotpipe.sources.base import Source

log = logging.getLogger(__name__)

REPORT_EVERY = 10.0  # seconds between two progress reports


class Service(Protocol):
    """Something that runs beside the sources (the job scheduler, the API server)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> str: ...


@dataclass
class RunOutcome:
    counters: Counters
    stopped_by: str | None  # "SIGTERM", "SIGINT", or None (duration over, sources done)
    gave_up: bool  # the store stayed down through the shutdown grace period


class ShutdownRequest:
    """Set by SIGINT/SIGTERM (or by a caller); remembers which signal asked."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str | None = None) -> None:
        if self.signal_name is None:
            self.signal_name = signal_name
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self.event.wait(timeout)


@contextmanager
def shutdown_signals(request: ShutdownRequest | None = None) -> Iterator[ShutdownRequest]:
    """Turn SIGINT and SIGTERM into a ShutdownRequest for the duration of the block.

    The first signal asks for a clean stop; a second one restores the default handlers
    and raises KeyboardInterrupt, for a user who will not wait. Outside the main thread
    (tests, embedded use) signals cannot be caught: the request is only set by callers.
    """
    request = request or ShutdownRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if request.is_set():
            restore()
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.info("%s received: stopping cleanly (again to stop at once)", name)
        request.set(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    try:
        yield request
    finally:
        restore()


class Runner:
    """Sources into one pipeline, beside background services, until told to stop."""

    def __init__(
        self, pipeline: Pipeline, sources: Sequence[Source], services: Sequence[Service] = ()
    ) -> None:
        self.pipeline = pipeline
        self.sources = list(sources)
        self.services = list(services)
        self._request = ShutdownRequest()

    def stop(self) -> None:
        """Ask a running `run()` to stop as a signal would (from another thread)."""
        self._request.set()

    def run(
        self,
        duration: float | None = None,
        report: Callable[[Counters], None] | None = None,
        announce: Callable[[str], None] | None = None,
        report_every: float = REPORT_EVERY,
    ) -> RunOutcome:
        """Run until `duration` ends, a signal comes, or every source has finished."""
        say = announce or (lambda _text: None)
        writer = PipelineWriter(self.pipeline)
        started: list[Any] = []
        with shutdown_signals(self._request) as stop:
            writer.start()
            try:
                for source in self.sources:
                    source.start(self.pipeline)
                    started.append(source)
                    say(source.describe())
                for service in self.services:
                    service.start()
                    started.append(service)
                    say(service.describe())
                self._wait(stop, duration, report, report_every)
                if stop.signal_name is not None:
                    say(f"Stopping. ({stop.signal_name}: storing what was received, then exiting)")
            finally:
                self._stop_all(started)
                writer.stop()
        return RunOutcome(self.pipeline.counters, stop.signal_name, writer.gave_up)

    def _wait(
        self,
        stop: ShutdownRequest,
        duration: float | None,
        report: Callable[[Counters], None] | None,
        report_every: float,
    ) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        next_report = time.monotonic() + report_every
        finite = bool(self.sources)
        while True:
            if finite and all(source.finished() for source in self.sources):
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wake = min(next_report, deadline if deadline is not None else next_report, now + 0.5)
            if stop.wait(max(0.0, wake - now)):
                return
            if report is not None and time.monotonic() >= next_report:
                report(self.pipeline.counters)
                next_report = time.monotonic() + report_every

    def _stop_all(self, started: list[Any]) -> None:
        """Services first (no new jobs, no new requests), then sources, which hand over
        what they took; the caller then stops the writer, which commits it."""
        for item in sorted(started, key=lambda s: s in self.sources):
            try:
                item.stop()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("stopping %s failed", getattr(item, "name", item))
