"""Prometheus metrics: what the pipeline commits (an after-commit observer), what the
HTTP API serves, and gauges read from the store when Prometheus scrapes.

Names follow Prometheus conventions: base units, `_total` for counters, `_seconds` for
durations. No label carries a device id (a fleet would make thousands of series): the
labels are the source, the outcome, the status, the severity, the route and the code.
Each Telemetry has its own registry, so two apps in one process (tests) do not mix.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from iotpipe.model import MICROS_PER_SECOND, Counters, WriteBatch, WriteResult, now_micros

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RATE_WINDOW = 60.0  # seconds the ingest rate of /api/v1/stats is measured over
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86_400, float("inf"))
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))

disable_created_metrics()  # no *_created series: they double the exposition and nobody graphs them

# A scrape-time reading: (name, help, labels, [(label values, value)]).
Gauge = tuple[str, str, tuple[str, ...], list[tuple[tuple[str, ...], float]]]


class Telemetry:
    """One process's metrics and the ingest rate of the last minute."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "iotpipe_ingest_messages_total",
            "Messages the pipeline committed, by source and outcome (accepted, dead_lettered).",
            ("source", "outcome"),
            registry=self.registry,
        )
        self.readings = Counter(
            "iotpipe_ingest_readings_total",
            "Readings the pipeline committed, by source and outcome (stored, duplicate); "
            "source is 'mixed' for a batch that held several sources.",
            ("source", "outcome"),
            registry=self.registry,
        )
        self.invalid = Counter(
            "iotpipe_ingest_invalid_values_total", "Values that arrived unusable.", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "iotpipe_batch_write_seconds",
            "Time the store took to commit one batch.",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.lag = Histogram(
            "iotpipe_ingest_lag_seconds",
            "From the newest reading's event time to its batch's commit.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "iotpipe_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "code"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "iotpipe_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ("route", "method"),
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, readings stored)
        self._lock = threading.Lock()
        self._gauges: list[Callable[[], list[Gauge]]] = []
        self.registry.register(_ScrapeTimeGauges(self._gauges))

    # -- the pipeline's after-commit observer ------------------------------------------------
    def observe_commit(self, batch: WriteBatch, result: WriteResult) -> None:
        self.record(CommitFigures.of(batch, result))

    def record(self, figures: CommitFigures) -> None:
        """Count one commit (of this process, or of another API process: app/workers.py)."""
        for source, messages in figures.accepted.items():
            self.messages.labels(source, "accepted").inc(messages)
        for source, count in figures.dead_lettered.items():
            self.messages.labels(source, "dead_lettered").inc(count)
        if figures.stored or figures.duplicates:
            self.readings.labels(figures.source, "stored").inc(figures.stored)
            self.readings.labels(figures.source, "duplicate").inc(figures.duplicates)
        if figures.invalid:
            self.invalid.inc(figures.invalid)
        self.batch_seconds.observe(figures.seconds)
        if figures.newest is not None:
            self.lag.observe(max(0.0, (now_micros() - figures.newest) / MICROS_PER_SECOND))
        if figures.stored:
            now = time.monotonic()
            with self._lock:
                self._recent.append((now, figures.stored))
                self._forget(now)

    __call__ = observe_commit  # a CommitObserver

    def committed(self) -> Counters:
        """Every commit counted so far, by this process and its API workers, as the ingest
        summaries print it: the sources' pipeline and HTTP ingest alike. Replays are left
        out: they are not arrivals."""
        totals: dict[tuple[str, str], float] = {}
        for family in (*self.messages.collect(), *self.readings.collect()):
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["source"] != "replay":
                    key = (family.name, sample.labels["outcome"])
                    totals[key] = totals.get(key, 0.0) + sample.value

        def total(family: str, outcome: str) -> int:
            return int(totals.get((f"iotpipe_ingest_{family}", outcome), 0.0))

        accepted, dead = total("messages", "accepted"), total("messages", "dead_lettered")
        stored, duplicates = total("readings", "stored"), total("readings", "duplicate")
        return Counters(
            messages_received=accepted + dead,
            messages_accepted=accepted,
            messages_dead_lettered=dead,
            readings_received=stored + duplicates,
            readings_stored=stored,
            readings_duplicate=duplicates,
        )

    def ingest_rate(self) -> float:
        """Readings stored per second over the last RATE_WINDOW seconds, by this process."""
        now = time.monotonic()
        with self._lock:
            self._forget(now)
            return sum(n for _, n in self._recent) / RATE_WINDOW

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()

    # -- HTTP ------------------------------------------------------------------------------
    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    # -- exposition ------------------------------------------------------------------------
    def add_gauges(self, read: Callable[[], list[Gauge]]) -> None:
        """Gauges read at each scrape (from the store, the running pipeline and sources)."""
        self._gauges.append(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class CommitFigures:
    """What the metrics count of one commit, as plain data another process can be sent."""

    accepted: dict[str, int]  # messages by source
    dead_lettered: dict[str, int]  # messages by source
    source: str  # of the readings: the batch's one source, or "mixed"
    stored: int
    duplicates: int
    invalid: int
    seconds: float
    newest: int | None  # the newest reading's time, µs

    @classmethod
    def of(cls, batch: WriteBatch, result: WriteResult) -> CommitFigures:
        sources = batch.source_counts
        dead: dict[str, int] = {}
        for letter in batch.dead_letters:
            dead[letter.raw.counted_as] = dead.get(letter.raw.counted_as, 0) + 1
        newest = None
        if result.times is not None and len(result.times):
            newest = int(result.times.max())
        return cls(
            accepted={source: messages for source, (messages, _readings) in sources.items()},
            dead_lettered=dead,
            source=next(iter(sources)) if len(sources) == 1 else "mixed",
            stored=result.stored,
            duplicates=result.duplicates,
            invalid=len(batch.invalid),
            seconds=result.seconds,
            newest=newest,
        )


class _ScrapeTimeGauges:
    """A collector that asks its readers for current values at each scrape."""

    def __init__(self, readers: list[Callable[[], list[Gauge]]]) -> None:
        self.readers = readers

    def describe(self) -> list[Metric]:
        return []  # values come from readers added later; nothing to declare up front

    def collect(self) -> Iterator[Metric]:
        for read in list(self.readers):
            for name, help_text, labels, samples in read():
                family = GaugeMetricFamily(name, help_text, labels=list(labels))
                for values, value in samples:
                    family.add_metric(list(values), value)
                yield family


def gauge(name: str, help_text: str, value: float) -> Gauge:
    return (name, help_text, (), [((), value)])


def labelled(name: str, help_text: str, label: str, values: dict[str, Any]) -> Gauge:
    return (name, help_text, (label,), [((key,), float(v)) for key, v in values.items()])
