"""The application object: settings plus the store, and the operations the CLI exposes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from iotpipe.analytics.streaming import anomaly_observers
from iotpipe.config import Settings
from iotpipe.model import RawMessage
from iotpipe.pipeline import Counters, Pipeline, PipelineWriter
from iotpipe.services import build_services
from iotpipe.sources.files import FileSource
from iotpipe.store import Store, open_store

log = logging.getLogger(__name__)

# A whole JSON document in a file is one message; files are the user's own, so the
# network-facing payload limit would only reject legitimate exports.
FILE_MAX_PAYLOAD_BYTES = 1 << 30


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings.database_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def pipeline(self, **overrides: object) -> Pipeline:
        config = replace(self.settings.pipeline.to_config(), **overrides)  # type: ignore[arg-type]
        return Pipeline(self.store, config, observers=anomaly_observers(self.store, self.settings))

    # -- operations -----------------------------------------------------------------------
    def init(self) -> list[str]:
        store = open_store(self.settings.database_url, migrate=False)
        try:
            return store.migrate()
        finally:
            store.close()

    def import_files(self, source: FileSource, progress: Callable[[int], None] | None = None) -> Counters:
        pipeline = self.pipeline(max_payload_bytes=FILE_MAX_PAYLOAD_BYTES)
        last_report = 0.0
        for raw in source:
            pipeline.feed(raw)
            if progress is not None and time.monotonic() - last_report > 0.1:
                progress(source.bytes_read)
                last_report = time.monotonic()
        pipeline.flush()
        if progress is not None:
            progress(source.bytes_total)
        return pipeline.counters

    def replay_dead_letters(self, limit: int | None = None) -> Counters:
        """Re-run dead letters through the current decoders; stored ones leave the DLQ."""
        pipeline = self.pipeline(max_payload_bytes=FILE_MAX_PAYLOAD_BYTES)
        pipeline.feed_all(self._dead_letter_messages(limit))
        return pipeline.counters

    def _dead_letter_messages(self, limit: int | None) -> Iterable[RawMessage]:
        after, page, served = 0, 1000, 0
        while limit is None or served < limit:
            rows = self.store.dead_letter_rows(limit=page, after_id=after)
            if not rows:
                return
            for row in rows:
                if limit is not None and served >= limit:
                    return
                after = row["id"]
                served += 1
                header = tuple(row["header"]) if row["header"] is not None else None
                yield RawMessage(
                    bytes(row["payload"]),
                    row["source"],
                    row["origin"],
                    row["received_at"],
                    row["format"],
                    row["device_hint"],
                    header,
                    dead_letter_id=row["id"],
                )

    def run(
        self,
        duration: float | None = None,
        report: Callable[[Counters], None] | None = None,
        report_every: float = 10.0,
        announce: Callable[[str], None] | None = None,
    ) -> Counters:
        """The main job: every configured service until stopped or `duration` ends.

        Sources are stopped first, then the pipeline flushes what they handed over.
        """
        pipeline = self.pipeline()
        services = build_services(self.settings, self.store)
        writer = PipelineWriter(pipeline)  # survives database outages, acking nothing meanwhile
        writer.start()
        for service in services:
            service.start(pipeline)
            if announce is not None:
                announce(service.describe())
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                left = report_every if deadline is None else max(0.0, deadline - time.monotonic())
                time.sleep(min(report_every, left))
                if report is not None:
                    report(pipeline.counters)
        finally:
            for service in services:
                service.stop()
            writer.stop()
        return pipeline.counters


def database_location(settings: Settings) -> str:
    """Where the data lives, in words a user can act on (an absolute path for SQLite)."""
    url = settings.database_url
    if url.startswith("sqlite:///"):
        return f"SQLite database {Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
    from sqlalchemy.engine import make_url

    return f"PostgreSQL database {make_url(url).render_as_string(hide_password=True)}"
