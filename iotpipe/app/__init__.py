"""The application object: every operation a user can ask for, behind one facade.

The CLI and the HTTP API are thin callers of `App`: they parse what the user said, make
one call here, and present what it returns. Results are plain JSON-ready values (str,
int, float, bool, None, lists and dicts of them), identical on both engines, so that
every `--json` view and every API response prints the same types.

Below `App` sit the parts it wires together (app/wiring.py reads the settings for
them): sources → formats → pipeline → sinks (the store first) → analytics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotpipe.errors import ConfigError, IotpipeError, SourceError, StoreError, first_line
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_SECOND,
    Counters,
    Micros,
    RawMessage,
    day_name,
    day_start,
    format_micros,
    now_micros,
)
from iotpipe.text import printable

if TYPE_CHECKING:  # the heavy parts load on first use, so `iotpipe --help` stays instant
    from iotpipe.app.access import KeyRing, Principal
    from iotpipe.app.http_ingest import HttpIngest
    from iotpipe.app.runner import RunOutcome
    from iotpipe.app.workers import PrimaryLink, Relay
    from iotpipe.config import Settings
    from iotpipe.pipeline import Pipeline
    from iotpipe.sinks.live import LiveClient, LiveHub
    from iotpipe.sinks.metrics import Telemetry
    from iotpipe.store import Store

log = logging.getLogger(__name__)

# Builds the HTTP API's ASGI application for an App. The API sits above the App (it calls
# it), so the App never imports it: the process's entry point (the CLI) hands it over.
WebFactory = Callable[["App"], Any]

REPORT_EVERY = 10.0  # seconds between two progress reports of a long-running command


@dataclass
class ImportOutcome:
    """What an import did; `interrupted` when a signal stopped it (what it fed is stored)."""

    counters: Counters
    interrupted: bool
    files_done: int
    files: int

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {
            "messages": c.messages_received,
            "stored": c.readings_stored,
            "duplicates": c.readings_duplicate,
            "invalid": c.values_invalid,
            "dead_lettered": c.messages_dead_lettered,
        }


@dataclass
class IngestOutcome:
    """What a long-running ingest did: the pipeline's counters and its sources' own."""

    counters: Counters
    stopped_by: str | None
    gave_up: bool
    sources: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {
            "messages": c.messages_received,
            "stored": c.readings_stored,
            "duplicates": c.readings_duplicate,
            "invalid": c.values_invalid,
            "dead_lettered": c.messages_dead_lettered,
            **self.sources,
        }


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._telemetry: Telemetry | None = None
        self._keys: KeyRing | None = None
        self._http_ingest: HttpIngest | None = None
        self._stats: Any = None
        self._live: LiveHub | None = None
        # What the run loop is running, for health checks and metrics.
        self.running_pipeline: Pipeline | None = None
        self.running_sources: list[Any] = []
        # With [api] workers > 1, the link between the API processes (app/workers.py): the
        # primary's Relay, or a worker's PrimaryLink.
        self.relay: Relay | PrimaryLink | None = None
        self._serves_for_primary = False

    @classmethod
    def from_options(cls, config_file: str | Path | None = None, **flags: Any) -> App:
        """Settings from flags > IOTPIPE_* > iotpipe.toml > defaults, and logging set up."""
        from iotpipe.config import load_settings
        from iotpipe.logs import setup_logging

        settings = load_settings(config_file, **flags)
        register_secrets(settings)
        setup_logging(settings.log_level, settings.log_format)
        return cls(settings)

    @property
    def store(self) -> Store:
        if self._store is None:
            from iotpipe.store import open_store

            self._store = open_store(self.settings.database_url)
        return self._store

    @property
    def telemetry(self) -> Telemetry:
        """This process's Prometheus metrics (every pipeline the App makes reports to it)."""
        if self._telemetry is None:
            from iotpipe.app import observability
            from iotpipe.sinks.metrics import Telemetry

            self._telemetry = Telemetry()
            self._telemetry.add_gauges(lambda: observability.gauges(self))
        return self._telemetry

    @property
    def live(self) -> LiveHub:
        """The live feed's hub, made when the API is (pipelines made after it feed it)."""
        if self._live is None:
            from iotpipe.app.live import make_hub
            from iotpipe.sinks.live import LiveMetrics

            self._live = make_hub(self.settings, self.store)
            others = self.relay.hubs if self.relay is not None else list
            self.telemetry.registry.register(LiveMetrics(self._live, others))
            if self.relay is not None:
                self.relay.attach_hub(self._live)
        return self._live

    def join_primary(self, link: PrimaryLink, telemetry: Telemetry) -> None:
        """Make this App an API worker's (app/workers.py): its metrics, readiness and live
        readings go through `link` to the primary process."""
        self.relay = link
        self._telemetry = telemetry
        self._serves_for_primary = True

    @property
    def keys(self) -> KeyRing:
        if self._keys is None:
            from iotpipe.app.access import KeyRing

            self._keys = KeyRing(self.store)
        return self._keys

    @property
    def http_ingest(self) -> HttpIngest:
        """The pipeline behind HTTP ingest: one per App, pull mode, flushed per request."""
        if self._http_ingest is None:
            from iotpipe.app.http_ingest import HttpIngest

            self._http_ingest = HttpIngest(self.pipeline())
        return self._http_ingest

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
        if self._http_ingest is not None:
            self._http_ingest.pipeline.close()
            self._http_ingest = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def database_location(self) -> str:
        """Where the data lives, in words a user can act on (an absolute path for SQLite)."""
        url = self.settings.database_url
        if url.startswith("sqlite:///"):
            return f"SQLite database {Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
        from sqlalchemy.engine import make_url

        return f"PostgreSQL database {make_url(url).render_as_string(hide_password=True)}"

    def expect_database(self) -> None:
        """For what works on what is stored (reads, purges, replays, the jobs): a SQLite file
        that is not there is a mistyped path, not a database to create (a new, empty one
        would answer "nothing stored")."""
        from iotpipe.store import sqlite_file

        path = sqlite_file(self.settings.database_url)
        if path is not None and not path.exists():
            raise ConfigError(
                f"no database at {path}; check --database-url (or IOTPIPE_DATABASE_URL), or store "
                "readings there first (iotpipe run, iotpipe import)"
            )

    def pipeline(self, **overrides: Any) -> Pipeline:
        """A pipeline into this app's store, with the observers the settings ask for."""
        from iotpipe.app import wiring
        from iotpipe.pipeline import Pipeline

        config = wiring.pipeline_config(self.settings, **overrides)
        scored_here = not self._serves_for_primary
        observers = [*wiring.observers(self.settings, self.store, self._live, scored_here), self.telemetry]
        if self.relay is not None:
            observers.append(self.relay.observe)
        return Pipeline(self.store, config, observers=observers)

    # -- setup ------------------------------------------------------------------------------
    def init(self) -> list[str]:
        """Create or upgrade the schema; the names of the migrations applied."""
        from iotpipe.store import open_store

        store = open_store(self.settings.database_url, migrate=False)
        try:
            return store.migrate()
        finally:
            store.close()

    # -- ingest -------------------------------------------------------------------------------
    def import_files(
        self,
        paths: list[Path],
        format: str | None = None,
        device_id: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ImportOutcome:
        """Import historical files; `progress(bytes_read, bytes_total)` as it goes.

        Ctrl-C or SIGTERM stops it between two messages: what was fed is committed, and a
        re-run stores only what is missing (readings are stored once).
        """
        from iotpipe import formats, limits
        from iotpipe.app.runner import shutdown_signals
        from iotpipe.sources.files import FileSource

        if format is not None and format not in formats.file_format_names():
            raise IotpipeError(
                f"--format {printable(format)!r} is not a format iotpipe import reads; choose one of: "
                f"{', '.join(formats.file_format_names())}"
            )
        # Refuses, before reading any, paths that are no file or files it cannot read.
        source = FileSource(
            paths, format=format, device_id=device_id, limits=self.settings.limits.to_limits()
        )
        storage = self.settings.storage
        pack_before = None
        if storage.import_packed:
            from iotpipe.app.maintenance import pack_before as hot_window_start

            pack_before = hot_window_start(storage, now_micros())
        pipeline = self.pipeline(max_payload_bytes=limits.FILE_MAX_PAYLOAD_BYTES, pack_before=pack_before)
        with shutdown_signals() as stop:
            try:
                if storage.columnar_import:
                    from iotpipe.app.bulk_import import BulkImport

                    BulkImport(pipeline, source.bytes_total, storage.import_workers).run(
                        source, stop.is_set, progress
                    )
                else:
                    last_report = 0.0
                    for raw in source:
                        if stop.is_set():
                            break
                        pipeline.feed(raw)
                        if progress is not None and time.monotonic() - last_report > 0.1:
                            progress(source.bytes_read, source.bytes_total)
                            last_report = time.monotonic()
                pipeline.close()
            except SourceError as exc:
                # The source refused to go on (a truncated file): what was read before the
                # damage is stored, then the user hears why, and what became of it.
                pipeline.close()
                c = pipeline.counters
                raise type(exc)(
                    f"{exc} (this import read {c.messages_received:,} messages before it: "
                    f"{c.readings_stored:,} readings stored, {c.messages_dead_lettered:,} dead letters)"
                ) from None
            except IotpipeError:
                pipeline.close()
                raise
            except Exception as exc:
                message, expected = explain_error(exc)
                if not expected:
                    raise
                c = pipeline.counters
                raise StoreError(
                    f"{message}. The import stopped after {c.messages_received:,} messages "
                    f"({c.readings_stored:,} readings stored); what was stored is kept: run the same "
                    "import again, nothing is stored twice"
                ) from exc
        if progress is not None and not stop.is_set():
            progress(source.bytes_total, source.bytes_total)
        return ImportOutcome(pipeline.counters, stop.is_set(), source.files_done, len(paths))

    def replay_dead_letters(self, limit: int | None = None) -> dict[str, int]:
        """Re-run dead letters through the current decoders; stored ones leave the DLQ."""
        from iotpipe import limits

        if limit is not None and limit < 1:
            raise IotpipeError(f"--limit must be at least 1, got {limit}")
        pipeline = self.pipeline(max_payload_bytes=limits.FILE_MAX_PAYLOAD_BYTES)
        counters = pipeline.feed_all(self._dead_letter_messages(limit))
        return {
            "replayed": counters.messages_received,
            "stored_messages": counters.messages_accepted,
            "still_dead": counters.messages_dead_lettered,
            "stored": counters.readings_stored,
            "duplicates": counters.readings_duplicate,
        }

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
        announce: Callable[[str], None] | None = None,
        web: WebFactory | None = None,
    ) -> IngestOutcome:
        """The main job: every configured source and service until stopped or `duration`
        ends; with `web` (the HTTP API's factory) it serves that too, unless `[api]` says not."""
        from iotpipe.app import wiring

        self.init()
        api = self.api_server(web) if web is not None and self.settings.api.enabled else None
        sources = wiring.run_sources(self.settings, self.store)
        services: list[Any] = [*wiring.run_services(self.settings, self.store), *([api] if api else [])]
        return self._run(sources, services, duration, report, announce)

    def serve(
        self,
        duration: float | None = None,
        report: Callable[[Counters], None] | None = None,
        announce: Callable[[str], None] | None = None,
        *,
        web: WebFactory,
    ) -> IngestOutcome:
        """The API and the jobs (and MQTT / ThingSpeak if configured; never the simulator)."""
        from iotpipe.app import wiring

        self.init()
        api = self.api_server(web)
        sources = wiring.configured_sources(self.settings, self.store)
        services = [*wiring.run_services(self.settings, self.store), api]
        return self._run(sources, services, duration, report, announce)

    def ingest_totals(self) -> Counters:
        """What this process (and its API workers) committed so far, from every source and
        HTTP ingest alike: the figures of `run`'s and `serve`'s summary lines."""
        return self.telemetry.committed()

    def api_server(self, web: WebFactory) -> Any:
        """The HTTP API `web(app)` builds, as a run-loop service, after the exposure check."""
        from iotpipe.app.server import ApiServer, check_exposure

        config = self.settings.api
        check_exposure(config.host, config.insecure, self.keys.any())
        if config.workers == 1:
            return ApiServer(web(self), config.host, config.port)
        from iotpipe.app.workers import Relay, WorkerPool

        self.relay = Relay(self)  # first: the API made next hooks the live feed to it
        server = ApiServer(web(self), config.host, config.port)
        server.workers = WorkerPool(self.relay, self.settings, web, server.socket, config.workers - 1)
        return server

    def ingest_mqtt(
        self,
        overrides: dict[str, Any],
        url: str | None = None,
        duration: float | None = None,
        report: Callable[[Counters], None] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> IngestOutcome:
        """Subscribe to the broker and store what arrives until stopped or `duration` ends.

        `overrides` are `[mqtt]` settings given on the command line (None: not given)."""
        from iotpipe.app import wiring
        from iotpipe.sources.mqtt import MqttSource

        settings = self.settings
        if url is not None:
            settings.mqtt_url = url
        settings.mqtt = _with_overrides(settings.mqtt, overrides)
        source = MqttSource(wiring.mqtt_options(settings))
        self.init()
        outcome = self._run([source], [], duration, report, announce)
        outcome.sources = {"mqtt": vars(source.stats)}
        return outcome

    def ingest_nats(
        self,
        overrides: dict[str, Any],
        url: str | None = None,
        duration: float | None = None,
        report: Callable[[Counters], None] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> IngestOutcome:
        """Consume the JetStream stream and store what arrives until stopped or `duration` ends.

        `overrides` are `[nats]` settings given on the command line (None: not given)."""
        from iotpipe.app import wiring

        settings = self.settings
        if url is not None:
            settings.nats_url = url
        settings.nats = _with_overrides(settings.nats, overrides)
        self.init()
        source = wiring.nats_source(settings, self.store)
        outcome = self._run([source], [], duration, report, announce)
        outcome.sources = {"nats": {**vars(source.stats), "partitions": source.owned()}}
        return outcome

    def relay_mqtt_to_nats(
        self,
        mqtt_overrides: dict[str, Any],
        mqtt_url: str | None = None,
        nats_url: str | None = None,
        duration: float | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Bridge an MQTT broker into JetStream until stopped or `duration` ends; what it relayed.

        Each MQTT message (QoS 1, persistent session) is acknowledged to the broker only
        once JetStream has acknowledged storing it: nothing is lost between the two."""
        from iotpipe.app import wiring
        from iotpipe.app.runner import shutdown_signals
        from iotpipe.sinks.nats import JetStreamRelay
        from iotpipe.sources.mqtt import MqttSource

        settings = self.settings
        if mqtt_url is not None:
            settings.mqtt_url = mqtt_url
        if nats_url is not None:
            settings.nats_url = nats_url
        settings.mqtt = _with_overrides(settings.mqtt, mqtt_overrides)
        mqtt = wiring.mqtt_options(settings)
        if mqtt.qos != 1:
            raise ConfigError(
                "the relay acknowledges each MQTT message after JetStream stored it: use --qos 1"
            )
        relay = JetStreamRelay(wiring.nats_options(settings), mqtt.inflight)
        source = MqttSource(mqtt)
        say = announce or (lambda _text: None)
        relay.start()
        try:
            with shutdown_signals() as stop:
                source.start(relay)
                say(source.describe())
                say(relay.describe())
                stop.wait(duration)
                source.stop()
        finally:
            relay.stop()
        return {"mqtt": vars(source.stats), "nats": vars(relay.stats), "stopped_by": stop.signal_name}

    def ingest_thingspeak(
        self,
        channels: list[str] | None = None,
        interval: float | None = None,
        since: str | None = None,
        all_history: bool = False,
        once: bool = False,
        base_url: str | None = None,
        on_page: Callable[[dict[str, Any]], None] | None = None,
        caught_up: Callable[[dict[str, Any]], None] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> IngestOutcome:
        """Pull ThingSpeak channels: everything new once (`once`), or every `interval` s.

        `on_page` and `caught_up` get a channel's progress (see `_channel_progress`)."""
        from iotpipe.app import wiring
        from iotpipe.sources import thingspeak

        config = self.settings.thingspeak
        if since is not None and all_history:
            raise IotpipeError("--since and --all exclude each other: give one (or neither, to resume)")
        specs = self._channel_specs(channels)
        if all_history:
            readers = [
                thingspeak.ChannelReader(s, start=thingspeak.HISTORY_START, results=config.results)
                for s in specs
            ]
        elif since is not None:
            start = thingspeak.parse_start(since)
            readers = [thingspeak.ChannelReader(s, start=start, results=config.results) for s in specs]
        else:
            self.init()
            readers = wiring.thingspeak_readers(specs, config, self.store.watermark)
        source = thingspeak.ThingSpeakSource(
            readers,
            wiring.thingspeak_options(config, base_url),
            interval or config.interval,
            once=once,
            on_page=None if on_page is None else lambda r: on_page(_channel_progress(r)),
            caught_up=None if caught_up is None else lambda r: caught_up(_channel_progress(r)),
        )
        self.init()
        outcome = self._run([source], [], None, None, announce)
        outcome.sources = {"channels": [_channel_progress(r) for r in readers]}
        return outcome

    def _channel_specs(self, flags: list[str] | None) -> list[Any]:
        """Channels from --channel (a key not given there comes from the settings), else the config's."""
        from iotpipe.app import wiring
        from iotpipe.sources.thingspeak import ChannelSpec

        config = self.settings.thingspeak
        if flags:
            specs = [wiring.with_keys(ChannelSpec.parse(text), config) for text in flags]
        else:
            specs = wiring.configured_channels(config)
        if not specs:
            raise IotpipeError(
                "no ThingSpeak channel to pull: give --channel ID (or ID:READ_KEY), or list them in "
                "thingspeak.channels in iotpipe.toml"
            )
        from iotpipe.redact import register_secret

        for spec in specs:  # a key given on the command line is as secret as one in the settings
            register_secret(spec.read_key)
            register_secret(spec.user_key)
        ids = [spec.id for spec in specs]
        if len(set(ids)) != len(ids):
            raise IotpipeError(
                f"channel(s) {sorted({i for i in ids if ids.count(i) > 1})} given twice: give each once"
            )
        return specs

    def _run(
        self,
        sources: list[Any],
        services: list[Any],
        duration: float | None,
        report: Callable[[Counters], None] | None,
        announce: Callable[[str], None] | None,
    ) -> IngestOutcome:
        from iotpipe.app import wiring
        from iotpipe.app.runner import Runner

        pipeline = self.pipeline(max_unacked=wiring.ack_window(sources))
        wiring.warm_detectors(self.settings, self.store)
        self.running_pipeline, self.running_sources = pipeline, list(sources)
        try:
            outcome: RunOutcome = Runner(pipeline, sources, services).run(
                duration, report, announce, REPORT_EVERY
            )
        finally:
            self.running_pipeline, self.running_sources = None, []
        return IngestOutcome(outcome.counters, outcome.stopped_by, outcome.gave_up, {})

    @staticmethod
    def simulate_to(**plan: Any) -> dict[str, Any]:
        """Publish simulated devices to an MQTT broker (needs no store or settings); what
        was sent, to reconcile with `stats`."""
        from iotpipe.app.simulate import SimulationPlan, simulate

        if not plan.get("mqtt_url"):
            raise ConfigError("nothing to publish to: pass --mqtt mqtt://host:1883")
        return simulate(SimulationPlan(**plan))

    # -- what is stored ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts, and per tier (hot, packed) its readings, bytes and bytes per reading."""
        return self.store.stats()

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """Dead letters, oldest first, with the reason each was rejected."""
        if limit < 1:
            raise IotpipeError(f"--limit must be at least 1, got {limit}")
        return [_dead_letter_view(r) for r in self.store.dead_letter_rows(limit=limit)]

    def series_history(
        self,
        device_id: str,
        metric: str,
        bucket: str = "1h",
        start: Micros | None = None,
        end: Micros | None = None,
    ) -> list[dict[str, Any]]:
        """One series' readings (raw) or rollups (1h, 1d, 1w), oldest first."""
        from iotpipe.analytics.common import find_series
        from iotpipe.analytics.rollups import BUCKETS, bucket_rows

        if bucket != "raw" and bucket not in BUCKETS:
            raise IotpipeError(f"unknown bucket {bucket!r}; choose one of: raw, {', '.join(BUCKETS)}")
        with self.store.read_connection() as conn:
            ref = find_series(conn, device_id, metric)
        if bucket == "raw":
            return [
                {"time": format_micros(t), "value": v}
                for t, v in self.store.raw_readings(device_id, metric, start, end)
            ]
        return [
            {
                "bucket_start": format_micros(b.bucket_start),
                "count": b.count,
                "avg": b.avg,
                "min": b.min,
                "max": b.max,
                "stddev": b.stddev,
            }
            for b in bucket_rows(self.store, ref, bucket, start, end)
        ]

    def trends(
        self, device_id: str, metric: str, start: Micros | None = None, end: Micros | None = None
    ) -> list[dict[str, Any]]:
        """Daily mean, day-over-day change (absolute and %) and 7-day moving average."""
        from iotpipe.analytics.common import find_series
        from iotpipe.analytics.trends import daily_trends

        with self.store.read_connection() as conn:
            ref = find_series(conn, device_id, metric)
        return daily_trends(self.store, ref, start, end)

    def anomalies(
        self,
        device_id: str | None = None,
        metric: str | None = None,
        method: str | None = None,
        start: Micros | None = None,
        end: Micros | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        from iotpipe.analytics.anomalies import METHODS, anomaly_rows

        if method is not None and method not in METHODS:
            raise IotpipeError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        self._known(device_id, metric)
        rows = anomaly_rows(self.store, device_id, metric, method, start, end, limit)
        return [{k: v for k, v in _anomaly_view(row).items() if k != "id"} for row in rows]

    def detect_anomalies(
        self,
        start: Micros | None = None,
        end: Micros | None = None,
        device_id: str | None = None,
        metric: str | None = None,
    ) -> dict[str, Any]:
        """Apply the z-score rule to [start, end) (default: the last lookback_seconds)."""
        from iotpipe.analytics.anomalies import ZscoreRule, detect_zscore

        config = self.settings.anomalies
        begin = (
            start if start is not None else now_micros() - int(config.lookback_seconds * MICROS_PER_SECOND)
        )
        done = detect_zscore(self.store, ZscoreRule.from_settings(config), begin, end, device_id, metric)
        return {"start": format_micros(begin), **done}

    def quality_report(self, days: int = 7, device_id: str | None = None) -> dict[str, Any]:
        """Per device: readings received vs expected, invalid, out-of-range and anomalous
        ones over the last `days` UTC days, and the score (as the quality job computed it)."""
        from iotpipe.analytics.quality import DayQuality, quality_rows

        if not 1 <= days <= 36_500:
            raise IotpipeError(f"--days must be between 1 and 36500, got {days}")
        self._known(device_id)
        today = now_micros()
        first, last = day_name(today - (days - 1) * MICROS_PER_DAY), day_name(today)
        devices: dict[str, list[dict[str, Any]]] = {}
        for row in quality_rows(self.store, first, last, device_id):
            devices.setdefault(row["device_id"], []).append(row)
        report = []
        for device, day_rows in devices.items():
            total = DayQuality(
                **{
                    k: sum(r[k] for r in day_rows)
                    for k in ("expected", "received", "invalid", "out_of_range", "anomalous")
                }
            ).finish()
            report.append(
                {
                    "device_id": device,
                    **_quality_entry(asdict(total)),
                    "days": [_quality_entry(r, r["day"]) for r in day_rows],
                }
            )
        return {"first_day": first, "last_day": last, "devices": report}

    def alerts(
        self, status: str | None = None, severity: str | None = None, device_id: str | None = None
    ) -> list[dict[str, Any]]:
        from iotpipe.analytics.alerts import alert_rows

        self._known(device_id)
        return alert_rows(self.store, status, severity=severity, device_id=device_id)

    def acknowledge_alert(self, alert_id: int) -> dict[str, Any]:
        from iotpipe.analytics.alerts import acknowledge

        return acknowledge(self.store, self.settings, alert_id)

    def export(
        self,
        out: Path,
        format: str = "parquet",
        start: Micros | None = None,
        end: Micros | None = None,
        devices: list[str] | None = None,
        metrics: list[str] | None = None,
        tier: str = "raw",
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write readings (or 1h/1d rollups) as Hive-partitioned files, one per UTC day:
        `out/date=YYYY-MM-DD/part-0.parquet|csv`. Each partition is replaced atomically;
        the same data gives the same bytes. `progress(days_done, days_total)`."""
        from iotpipe.analytics.rollups import export_rows, rollup_span
        from iotpipe.sinks import files

        if format not in files.FORMATS:
            raise IotpipeError(f"unknown format {format!r}; choose one of: {', '.join(files.FORMATS)}")
        if tier not in files.TIERS:
            raise IotpipeError(f"unknown tier {tier!r}; choose one of: {', '.join(files.TIERS)}")
        if start is not None and end is not None and end <= start:
            raise IotpipeError("--end must be after --start")
        names = self._series_names(devices, metrics)
        spans = [span for n in names if (span := self.store.series_span(n.series_id)) is not None]
        if tier != "raw" and (kept := rollup_span(self.store, [n.series_id for n in names], tier)):
            spans.append(kept)  # rollups outlive the readings they summarise
        if not spans:
            return {
                "out": str(out),
                "format": format,
                "tier": tier,
                "series": len(names),
                "partitions": 0,
                "rows": 0,
                "days": 0,
            }
        # Whole days by default, so that the first day's buckets are all in.
        first = start if start is not None else day_start(min(s[0] for s in spans))
        last = end if end is not None else day_start(max(s[1] for s in spans)) + MICROS_PER_DAY
        by_id = {n.series_id: (n.device_id, n.metric) for n in names}
        written = files.export(
            self.store,
            out,
            format,
            tier,
            names,
            first,
            last,
            lambda a, b: export_rows(self.store, by_id, tier, a, b),
            progress,
        )
        return {"out": str(out), "format": format, "tier": tier, "series": len(names), **written}

    def _series_names(self, devices: list[str] | None, metrics: list[str] | None) -> list[Any]:
        """The series the --device and --metric filters select; an error names a device or
        metric that matches nothing."""
        from sqlalchemy import select

        from iotpipe.sinks.files import SeriesName
        from iotpipe.store.schema import devices as devices_table
        from iotpipe.store.schema import series

        query = select(series.c.id, devices_table.c.device_id, series.c.metric).join(
            devices_table, devices_table.c.id == series.c.device_pk
        )
        with self.store.read_connection() as conn:
            rows = conn.execute(query).all()
        known_devices, known_metrics = {r[1] for r in rows}, {r[2] for r in rows}
        for given, known, what in ((devices, known_devices, "device"), (metrics, known_metrics, "metric")):
            unknown = sorted(set(given or ()) - known)
            if unknown:
                raise IotpipeError(
                    f"no {what} {', '.join(map(repr, unknown))} in the store; check the name (case matters)"
                )
        return [
            SeriesName(sid, device_id, metric)
            for sid, device_id, metric in rows
            if (not devices or device_id in devices) and (not metrics or metric in metrics)
        ]

    def purge(self, dry_run: bool = False, now: Micros | None = None) -> dict[str, Any]:
        """Delete what each tier's retention (`[retention]`) lets go; `dry_run` only counts it.

        `now` (default: the clock) is the moment retention counts back from, so a dry run and
        the purge that follows it can agree on the same cutoffs even across a midnight."""
        from iotpipe.app.maintenance import purge

        return purge(self.store, self.settings.retention, dry_run, now)

    # -- the HTTP API's views (paginated, JSON-ready) ------------------------------------------
    def devices(self, **filters: Any) -> dict[str, Any]:
        """Devices with status, last seen, battery, quality and metrics: {"items", "next"}."""
        from iotpipe.app import queries

        return queries.list_devices(self, **filters)

    def device(self, device_id: str) -> dict[str, Any]:
        from iotpipe.app import queries

        return queries.get_device(self, device_id)

    def latest(self, device_id: str) -> dict[str, Any]:
        """The newest reading of each of a device's metrics."""
        from iotpipe.app import queries

        return queries.latest(self, device_id)

    def series(self, device_id: str, metric: str, **options: Any) -> dict[str, Any]:
        """A series' history as chart columns, from the rollups or the readings."""
        from iotpipe.app import queries

        return queries.series(self, device_id, metric, **options)

    def overview(self) -> dict[str, Any]:
        """The stats view: devices by status, readings, ingest rate, alerts, quality, DLQ."""
        from iotpipe.app import queries

        if self._stats is None:
            self._stats = queries.StatsCache()
        return dict(self._stats.get(self))

    def trend_page(
        self,
        device_id: str,
        metric: str,
        start: Micros | None = None,
        end: Micros | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        from iotpipe.app.paging import check_limit, page_sorted

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        days = self.trends(device_id, metric, start, end)
        items, following = page_sorted(days, lambda d: [d["day"]], limit, cursor, "trends")
        return {"device_id": device_id, "metric": metric, "items": items, "next": following}

    def anomaly_page(
        self,
        device_id: str | None = None,
        metric: str | None = None,
        method: str | None = None,
        start: Micros | None = None,
        end: Micros | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Anomalies, newest first, a page at a time."""
        from iotpipe.analytics.anomalies import METHODS, anomaly_rows
        from iotpipe.app.paging import check_limit, decode_cursor, encode_cursor

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        if method is not None and method not in METHODS:
            raise IotpipeError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        self._known(device_id, metric)
        position = decode_cursor(cursor, "anomalies")
        before = (int(position["time"]), int(position["id"])) if position else None
        rows = anomaly_rows(self.store, device_id, metric, method, start, end, limit + 1, before)
        rows.reverse()  # newest first
        more = len(rows) > limit
        rows = rows[:limit]
        following = (
            encode_cursor({"k": "anomalies", "time": rows[-1]["time"], "id": rows[-1]["id"]})
            if more
            else None
        )
        return {"items": [_anomaly_view(r) for r in rows], "next": following}

    def quality_page(
        self, days: int = 7, device_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        from iotpipe.app.paging import check_limit, page_sorted

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        report = self.quality_report(days, device_id)
        items, following = page_sorted(
            report["devices"], lambda d: [d["device_id"]], limit, cursor, "quality"
        )
        return {
            "first_day": report["first_day"],
            "last_day": report["last_day"],
            "items": items,
            "next": following,
        }

    def alert_page(
        self,
        status: str | None = None,
        severity: str | None = None,
        device_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Alerts, newest first, a page at a time."""
        from iotpipe.analytics.alerts import alert_rows
        from iotpipe.app.paging import check_limit, decode_cursor, encode_cursor

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        self._known(device_id)
        position = decode_cursor(cursor, "alerts")
        before = int(position["id"]) if position else None
        rows = alert_rows(self.store, status, limit + 1, before, severity, device_id)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": rows, "next": encode_cursor({"k": "alerts", "id": rows[-1]["id"]}) if more else None}

    def _known(self, device_id: str | None, metric: str | None = None) -> None:
        """A filter on a device (and metric) must name a known one, else NotFound: a typo
        answered with an empty list reads as "nothing happened there"."""
        from iotpipe.analytics.common import find_device, find_series

        if device_id is None:
            return
        with self.store.read_connection() as conn:
            if metric is None:
                find_device(conn, device_id)
            else:
                find_series(conn, device_id, metric)

    def alert_rules(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        from iotpipe.analytics.alerts import rule_views
        from iotpipe.app.paging import check_limit, page_sorted

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        items, following = page_sorted(rule_views(self.store), lambda r: [r["id"]], limit, cursor, "rules")
        return {"items": items, "next": following}

    def alert_rule(self, rule_id: int) -> dict[str, Any]:
        from iotpipe.analytics.alerts import rule_view

        return rule_view(self.store, rule_id)

    def create_alert_rule(self, definition: dict[str, Any]) -> dict[str, Any]:
        """A threshold rule, validated exactly like `[[analytics.alert_rules]]` in the config."""
        from iotpipe.analytics.alerts import create_rule

        return create_rule(self.store, _valid_rule(definition), now_micros())

    def update_alert_rule(self, rule_id: int, definition: dict[str, Any]) -> dict[str, Any]:
        """Replace a rule made through the API (fields as for create, plus `enabled`)."""
        from iotpipe.analytics.alerts import update_rule

        enabled = definition.pop("enabled", None)
        if enabled is not None and not isinstance(enabled, bool):
            raise IotpipeError(f"enabled must be true or false, got {enabled!r}")
        return update_rule(self.store, rule_id, _valid_rule(definition), enabled, now_micros())

    def delete_alert_rule(self, rule_id: int) -> dict[str, Any]:
        from iotpipe.analytics.alerts import delete_rule

        return delete_rule(self.store, rule_id, now_micros())

    def dead_letter_page(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """Dead letters, oldest first, a page at a time, with each one's reason."""
        from iotpipe.app.paging import check_limit, decode_cursor, encode_cursor

        limit = check_limit(limit, self.settings.api.page_size, self.settings.api.max_page_size)
        position = decode_cursor(cursor, "dead-letters")
        rows = self.store.dead_letter_rows(limit=limit + 1, after_id=int(position["id"]) if position else 0)
        more = len(rows) > limit
        items = [_dead_letter_view(r) for r in rows[:limit]]
        return {
            "items": items,
            "next": encode_cursor({"k": "dead-letters", "id": items[-1]["id"]}) if more else None,
        }

    # -- ingest over HTTP ------------------------------------------------------------------
    def ingest_http(
        self,
        body: bytes,
        content_type: str | None,
        principal: Principal,
        origin: str = "POST /api/v1/ingest",
        device_id: str | None = None,
        precision: str | None = None,
    ) -> dict[str, Any]:
        """Store a request body (JSON, SenML, line protocol, CSV) through the pipeline;
        answered after the commit with what was accepted, stored, duplicate and rejected."""
        from iotpipe.app.http_ingest import body_messages

        principal.require("ingest")
        if device_id is None and principal.devices is not None and len(principal.devices) == 1:
            device_id = principal.devices[0]
        messages = body_messages(
            body, content_type, origin, device_id, precision, self.settings.limits.to_limits()
        )
        return self.http_ingest.ingest(messages, principal)

    def thingspeak_update(self, principal: Principal, params: dict[str, str]) -> dict[str, Any]:
        from iotpipe.app import thingspeak_api

        return thingspeak_api.update(self, principal, params)

    def thingspeak_bulk_update(self, principal: Principal, channel_id: int, body: bytes) -> dict[str, Any]:
        from iotpipe.app import thingspeak_api

        return thingspeak_api.bulk_update(self, principal, channel_id, body)

    def thingspeak_feeds(
        self, channel_id: int, params: dict[str, str], field: int | None = None
    ) -> dict[str, Any]:
        from iotpipe.app import thingspeak_api

        return thingspeak_api.feeds(self, channel_id, params, field)

    def thingspeak_feeds_csv(self, channel_id: int, params: dict[str, str]) -> str:
        from iotpipe.app import thingspeak_api

        return thingspeak_api.feeds_csv(thingspeak_api.feeds(self, channel_id, params))

    def thingspeak_last(self, channel_id: int, params: dict[str, str]) -> dict[str, Any]:
        from iotpipe.app import thingspeak_api

        return thingspeak_api.last_entry(self, channel_id, params)

    # -- access ----------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal:
        """Who a request's key stands for (AccessDenied when none, or an unusable one)."""
        return self.keys.authenticate(token)

    def create_key(
        self, name: str, role: str, devices: list[str] | None = None, expires: str | None = None
    ) -> dict[str, Any]:
        """A new API key; its token is in the answer, and shown nowhere ever again."""
        self.init()
        return self.keys.create(name, role, devices, expires)

    def list_keys(self) -> list[dict[str, Any]]:
        self.init()
        return self.keys.list()

    def revoke_key(self, name: str) -> dict[str, Any]:
        self.init()
        return self.keys.revoke(name)

    # -- health and metrics ----------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        from iotpipe.app.observability import readiness

        if self._serves_for_primary:  # the sources run in the primary: it knows their state
            answer: dict[str, Any] = self.relay.call("readiness")  # type: ignore[union-attr]
            return answer
        return readiness(self)

    # -- the live feed -----------------------------------------------------------------------
    def live_subscribe(self, message: Any, wake: Callable[[], None]) -> LiveClient:
        """A live-feed client for a `subscribe` message (SubscriptionError if it is not
        one); `wake` is called from the hub's thread when the client has news."""
        from iotpipe.app.live import Subscription

        subscription = Subscription.parse(message)
        hub = self.live
        hub.start()
        return hub.subscribe(subscription, wake)

    def live_backfill(self, client: LiveClient) -> dict[str, Any]:
        """The client's backfill frame; its held live updates are released after it, minus
        the readings the backfill already holds (send the frame before taking updates)."""
        from iotpipe import limits
        from iotpipe.app.live import backfill

        frame, newest = backfill(self.store, client.subscription, limits.LIVE_MAX_BACKFILL_READINGS)
        client.release(newest)
        return frame

    def live_unsubscribe(self, client: LiveClient) -> None:
        if self._live is not None:
            self._live.unsubscribe(client)

    def metrics_exposition(self) -> bytes:
        """The Prometheus text exposition of this process's metrics."""
        return self.telemetry.exposition()

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.telemetry.observe_request(route, method, code, seconds)

    def run_jobs(self, name: str = "all") -> list[dict[str, Any]]:
        """Run analytics jobs once, now, in order (`all`), or one by name."""
        from iotpipe.analytics.jobs import find_job, run_job
        from iotpipe.app.wiring import ALL_JOBS

        jobs = ALL_JOBS if name == "all" else (find_job(name, ALL_JOBS),)
        return [run_job(job, self.store, self.settings) for job in jobs]


def _with_overrides(section: Any, overrides: dict[str, Any]) -> Any:
    """A settings section with the options given on the command line (None: not given)."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{_flag(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid option ({problems})") from None


def _flag(loc: tuple[Any, ...]) -> str:
    """A setting's command-line flag as it is spelt: --ack-wait, not the field's ack_wait."""
    return "--" + "-".join(str(part).replace("_", "-") for part in loc)


def _anomaly_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "device_id": row["device_id"],
        "metric": row["metric"],
        "time": format_micros(row["time"]),
        "end_time": None if row["end_time"] is None else format_micros(row["end_time"]),
        "value": row["value"],
        "score": row["score"],
        "method": row["method"],
        "reason": row["reason"],
    }


def _dead_letter_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "received_at": format_micros(row["received_at"]),
        "source": row["source"],
        "origin": row["origin"],
        "reason": row["reason"],
        "attempts": row["attempts"],
        "payload": bytes(row["payload"]).decode("utf-8", "replace"),
    }


def _valid_rule(definition: dict[str, Any]) -> dict[str, Any]:
    """A rule definition checked by the config file's own model: same rules, same errors."""
    from pydantic import ValidationError

    from iotpipe.analytics.alerts import RULE_FIELDS
    from iotpipe.config import AlertRuleSettings

    unknown = sorted(set(definition) - set(RULE_FIELDS))
    if unknown:
        raise IotpipeError(f"unknown field(s) {', '.join(unknown)}; a rule has: {', '.join(RULE_FIELDS)}")
    try:
        rule = AlertRuleSettings.model_validate(definition)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise IotpipeError(f"invalid alert rule ({problems})") from None
    return rule.model_dump()


def register_secrets(settings: Settings) -> None:
    """Tell redact() the secret values the settings hold, wherever they came from."""
    from iotpipe.redact import register_secret

    secrets = [
        settings.mqtt.password,
        settings.thingspeak.user_api_key,
        settings.nats.password,
        settings.nats.token,
    ]
    secrets += [c.read_key for c in settings.thingspeak.channels]
    secrets += list(settings.thingspeak.read_keys.values())
    for secret in secrets:
        if secret is not None:
            register_secret(secret.get_secret_value())
    for url in settings.analytics.webhooks:
        register_secret(url)  # a webhook URL is a credential: its path often is the token


def job_names() -> list[str]:
    from iotpipe.app.wiring import ALL_JOBS

    return [job.name for job in ALL_JOBS]


def format_names() -> list[str]:
    from iotpipe import formats

    return formats.format_names()


def import_format_names() -> list[str]:
    """What `iotpipe import --format` takes."""
    from iotpipe import formats

    return formats.file_format_names()


def parse_time(value: str | None, flag: str) -> Micros | None:
    """A --start/--end style value (ISO 8601 or epoch) as µs, or an error showing the form."""
    if value is None:
        return None
    from iotpipe.errors import DecodeError
    from iotpipe.formats.timestamps import parse_timestamp

    try:
        return parse_timestamp(value, flag)
    except DecodeError as exc:
        raise IotpipeError(f"{exc}; write e.g. 2026-11-22T10:00:00Z") from None


def parse_range(
    start: str | None, end: str | None, flags: tuple[str, str] = ("--start", "--end")
) -> tuple[Micros | None, Micros | None]:
    """A --start/--end pair as µs: each parsed by `parse_time`, and an error when both are
    given and start is not before end (else an empty answer would read as "nothing there")."""
    first, last = parse_time(start, flags[0]), parse_time(end, flags[1])
    if first is not None and last is not None and first >= last:
        raise IotpipeError(
            f"{flags[0]} ({format_micros(first)}) must be before {flags[1]} ({format_micros(last)})"
        )
    return first, last


_QUALITY_COUNTS = ("expected", "missing", "invalid", "out_of_range", "anomalous")


def _quality_entry(values: dict[str, Any], day: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {} if day is None else {"day": day}
    entry["readings"] = values["received"]
    for key in (*_QUALITY_COUNTS, "missing_pct", "out_of_range_pct", "anomalous_pct", "score"):
        entry[key] = values[key]
    return entry


def _channel_progress(reader: Any) -> dict[str, Any]:
    """A ThingSpeak channel's progress, as the CLI's bar and summary show it."""
    return {
        "channel": reader.channel_id,
        "entries": reader.totals.entries,
        "skipped_empty": reader.totals.skipped,
        "requests": reader.totals.requests,
        "cursor": reader.cursor.entry_id,
        "first_cursor": reader.first_entry_id,
        "last_entry_id": reader.last_entry_id,
        "error": reader.totals.error,
    }


def database_outages() -> tuple[type[Exception], ...]:
    """The exceptions that say the database could not be reached or could not work (it
    is down, restarting, locked, read-only): the environment's failure, not a bug."""
    import sqlite3

    import psycopg
    from sqlalchemy import exc as sa_exc

    return (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sqlite3.OperationalError,
        psycopg.OperationalError,
    )


def explain_error(exc: BaseException) -> tuple[str, bool]:
    """What to tell a user about an exception no layer turned into an IotpipeError:
    (one line saying what to do, whether it was an expected failure of the environment).
    Unexpected ones are bugs: the line says how to see the traceback."""
    from sqlalchemy import exc as sa_exc

    first = first_line(exc)
    if isinstance(exc, sa_exc.ArgumentError):
        return f"invalid database URL: {first}; use sqlite:///path.db or postgresql://user@host:port/db", True
    if isinstance(exc, database_outages()):
        if "readonly" in first or "read-only" in first:
            return (
                f"the database is read-only ({first}); make the file and its folder writable, or point --database-url elsewhere",
                True,
            )
        return (
            f"the database failed: {first}. Check that it is running and reachable, then run the command again",
            True,
        )
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or first}; check the file's owner and mode", True
    if isinstance(exc, OSError):
        return f"{first}; check the path, the disk space and the permissions", True
    return (
        f"internal error ({type(exc).__name__}: {first}); this is a bug: run again with "
        "--log-level DEBUG to see where, and report it",
        False,
    )
