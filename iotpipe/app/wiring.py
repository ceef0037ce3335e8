"""How the settings become parts: sources, the pipeline's config and observers, the jobs.

This is the one place that reads `Settings` on behalf of the lower layers: sources get
their own option objects and a sink, the pipeline a PipelineConfig, so that none of
them imports the configuration.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotpipe.analytics.jobs import JOBS, Job
from iotpipe.analytics.streaming import anomaly_observers
from iotpipe.app import maintenance
from iotpipe.app.scheduler import JobScheduler
from iotpipe.brokers import Broker, parse_broker_url
from iotpipe.config import Settings, ThingSpeakSettings
from iotpipe.errors import ConfigError
from iotpipe.model import Micros
from iotpipe.pipeline import PipelineConfig
from iotpipe.sinks.base import CommitObserver
from iotpipe.sinks.lake import lake_job, lake_observers
from iotpipe.sinks.live import LiveHub
from iotpipe.sinks.webhooks import webhooks_job
from iotpipe.sources import thingspeak
from iotpipe.sources.base import Source
from iotpipe.sources.mqtt import DEFAULT_INFLIGHT, MqttOptions
from iotpipe.sources.mqtt import subscription_filters as mqtt_filters
from iotpipe.sources.simulator import Simulator, SimulatorSource
from iotpipe.sources.topics import DEFAULT_TEMPLATES, TopicTemplate
from iotpipe.store import Store

if TYPE_CHECKING:
    from iotpipe.sources.nats import NatsOptions, NatsSource

# Every job `iotpipe run` schedules and `iotpipe jobs all` runs, in order: the
# analytics, then the delivery of the notifications the alerts job queued, then the
# storage jobs (packing old days, retention) and the lake, which writes closed days.
ALL_JOBS: tuple[Job, ...] = (
    *JOBS,
    Job("webhooks", webhooks_job, lambda s: s.analytics.alerts_every),
    Job("compact", maintenance.compact_job, lambda s: s.storage.compact_every),
    Job("retention", maintenance.retention_job, lambda s: s.retention.every),
    Job("lake", lake_job, lambda s: s.storage.lake_every),
)


def pipeline_config(settings: Settings, **overrides: Any) -> PipelineConfig:
    config = settings.pipeline
    base = PipelineConfig(
        batch_size=config.batch_size,
        batch_delay=config.batch_delay,
        queue_size=config.queue_size,
        limits=settings.limits.to_limits(),
    )
    return replace(base, **overrides)


def observers(
    settings: Settings, store: Store, live: LiveHub | None = None, score: bool = True
) -> list[CommitObserver]:
    """What runs after each commit: the streaming anomaly detector (unless disabled, or
    `score` is False: an API worker's readings are scored by the first process, see
    app/workers.py), the lake's note of the days each batch touched (if a lake is
    configured), and the live feed's hub when the API serves one (App.live)."""
    detectors = anomaly_observers(store, settings) if score else []
    found: list[CommitObserver] = [*detectors, *lake_observers(store, settings)]
    if live is not None:
        found.append(live)
    return found


def warm_detectors(settings: Settings, store: Store) -> None:
    """Have the store's streaming detector load its compiled code now, in the background."""
    for detector in anomaly_observers(store, settings):
        detector.warm_in_background()


def ack_window(sources: list[Source]) -> int | None:
    """The smallest in-flight window among the sources: the pipeline commits by then."""
    windows = [s.ack_window for s in sources if s.ack_window is not None]
    return min(windows) if windows else None


# -- sources -------------------------------------------------------------------------------
def run_sources(settings: Settings, store: Store) -> list[Source]:
    """What `iotpipe run` ingests from: MQTT, NATS and ThingSpeak as configured, else the simulator."""
    return configured_sources(settings, store) or [simulator_source(settings)]


def configured_sources(settings: Settings, store: Store) -> list[Source]:
    """MQTT, NATS and ThingSpeak, as far as they are configured (what `iotpipe serve` ingests from)."""
    found: list[Source] = []
    if settings.mqtt_url:
        from iotpipe.sources.mqtt import MqttSource

        found.append(MqttSource(mqtt_options(settings)))
    if settings.nats_url:
        found.append(nats_source(settings, store))
    if settings.thingspeak.channels:
        config = settings.thingspeak
        readers = thingspeak_readers(configured_channels(config), config, store.watermark)
        found.append(thingspeak.ThingSpeakSource(readers, thingspeak_options(config), config.interval))
    return found


def simulator_source(settings: Settings) -> SimulatorSource:
    sim = settings.simulator
    return SimulatorSource(Simulator(devices=sim.devices, interval=sim.interval, seed=sim.seed))


def run_services(settings: Settings, store: Store) -> list[JobScheduler]:
    """What runs beside the sources: the job scheduler, unless `[analytics] jobs = false`."""
    return [JobScheduler(settings, store, ALL_JOBS)] if settings.analytics.jobs else []


# -- MQTT ----------------------------------------------------------------------------------
def mqtt_options(settings: Settings) -> MqttOptions:
    """Resolve `mqtt_url` and `[mqtt]` into options; ConfigError says what to fix."""
    if not settings.mqtt_url:
        raise ConfigError("no MQTT broker configured: pass --url mqtt://host:1883 or set IOTPIPE_MQTT_URL")
    config = settings.mqtt
    broker = parse_broker_url(settings.mqtt_url)
    if broker.username is None and config.username:
        password = config.password.get_secret_value() if config.password else None
        broker = Broker(broker.host, broker.port, broker.tls, config.username, password)
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, name)
        if path is not None and not broker.tls:
            raise ConfigError(f"{name.replace('_', '-')} needs an mqtts:// URL (TLS); got {broker}")
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name.replace('_', '-')} {path} does not exist")
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError("a client certificate needs both --cert-file and --key-file")
    templates = [TopicTemplate.parse(spec) for spec in (config.templates or DEFAULT_TEMPLATES)]
    return MqttOptions(
        broker=broker,
        templates=templates,
        filters=mqtt_filters(config.topics, templates, config.shared_group),
        client_id=config.client_id or f"iotpipe-{socket.gethostname()}",
        qos=config.qos,
        protocol=config.protocol,
        inflight=config.inflight or DEFAULT_INFLIGHT,
        session_expiry=config.session_expiry,
        keepalive=config.keepalive,
        ca_file=config.ca_file,
        cert_file=config.cert_file,
        key_file=config.key_file,
    )


# -- NATS ----------------------------------------------------------------------------------
def nats_options(settings: Settings) -> NatsOptions:
    """Resolve `nats_url` and `[nats]` into options; ConfigError says what to fix."""
    from iotpipe.sources.nats import NatsOptions

    if not settings.nats_url:
        raise ConfigError("no NATS server configured: pass --url nats://host:4222 or set IOTPIPE_NATS_URL")
    config = settings.nats
    url = settings.nats_url
    if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(
            f"NATS URL must start with nats:// or tls://, got {url.split('://')[0] if '://' in url else url!r}"
        )
    if config.ack_wait <= 2 * settings.pipeline.batch_delay:
        raise ConfigError(
            f"nats.ack_wait ({config.ack_wait:g} s) must be well above the batch commit time: more than twice "
            f"pipeline.batch_delay ({settings.pipeline.batch_delay:g} s); otherwise JetStream hands messages "
            "to another worker while their batch is still being written"
        )
    templates = [TopicTemplate.parse(spec) for spec in (config.templates or DEFAULT_TEMPLATES)]
    subjects = tuple(dict.fromkeys(_check_subject(s) for s in config.subjects)) or tuple(
        dict.fromkeys(t.subject for t in templates)
    )
    return NatsOptions(
        url=url,
        templates=templates,
        subjects=subjects,
        stream=config.stream,
        durable=config.durable,
        partitions=config.partitions,
        partition_prefix=config.partition_prefix,
        ack_wait=config.ack_wait,
        max_deliver=config.max_deliver,
        max_ack_pending=config.max_ack_pending,
        fetch_batch=config.fetch_batch,
        max_bytes=config.max_bytes,
        max_age=config.max_age,
        rebalance_every=config.rebalance_every,
        user=config.user,
        password=config.password.get_secret_value() if config.password else None,
        token=config.token.get_secret_value() if config.token else None,
    )


def _check_subject(subject: str) -> str:
    tokens = subject.split(".")
    if not subject or any(
        not t or (">" in t and (t != ">" or i != len(tokens) - 1)) or ("*" in t and t != "*")
        for i, t in enumerate(tokens)
    ):
        raise ConfigError(
            f"NATS subject {subject!r}: tokens are separated by '.', '*' must be a whole token and '>' the last one"
        )
    return subject


def nats_source(settings: Settings, store: Store) -> NatsSource:
    """The JetStream source; with partitions, their leases live in the store's database and
    a partition taken from another worker makes the streaming detector reload its series."""
    from iotpipe.sources.nats import NatsSource
    from iotpipe.store.leases import DatabaseLeases

    options = nats_options(settings)
    if not options.partitions:
        return NatsSource(options)
    detectors = anomaly_observers(store, settings)

    def forget_series() -> None:
        for detector in detectors:
            detector.forget()

    leases = DatabaseLeases(store, f"nats:{options.stream}:{options.durable}")
    return NatsSource(options, leases=leases, on_claim=forget_series)


# -- ThingSpeak ----------------------------------------------------------------------------
def thingspeak_options(settings: ThingSpeakSettings, base_url: str | None = None) -> thingspeak.ClientOptions:
    return thingspeak.ClientOptions(
        base_url=base_url or settings.base_url,
        requests_per_second=settings.requests_per_second,
        burst=settings.burst,
        timeout=settings.timeout,
        max_attempts=settings.max_attempts,
    )


def configured_channels(settings: ThingSpeakSettings) -> list[thingspeak.ChannelSpec]:
    return [with_keys(thingspeak.ChannelSpec(channel.id), settings) for channel in settings.channels]


def with_keys(spec: thingspeak.ChannelSpec, settings: ThingSpeakSettings) -> thingspeak.ChannelSpec:
    """The spec with the keys the settings hold for it (a key already given wins)."""
    user_key = settings.user_api_key.get_secret_value() if settings.user_api_key is not None else None
    return thingspeak.ChannelSpec(
        spec.id, spec.read_key or settings.read_key(spec.id), spec.user_key or user_key
    )


def thingspeak_readers(
    specs: list[thingspeak.ChannelSpec],
    settings: ThingSpeakSettings,
    stored: Callable[[str, str], str | None],
) -> list[thingspeak.ChannelReader]:
    """A reader per channel, resuming from its stored cursor (`stored(source, key)`, i.e.
    Store.watermark), else starting at its configured `since`, else at the whole history."""
    readers = []
    for spec in specs:
        value = stored(thingspeak.SOURCE, str(spec.id))
        cursor = thingspeak.Cursor.decode(spec.id, value) if value is not None else None
        start = _configured_start(settings, spec.id)
        readers.append(thingspeak.ChannelReader(spec, cursor, start, settings.results))
    return readers


def _configured_start(settings: ThingSpeakSettings, channel_id: int) -> Micros:
    for channel in settings.channels:
        if channel.id == channel_id and channel.since:
            return thingspeak.parse_start(channel.since, f"since of ThingSpeak channel {channel_id}")
    return thingspeak.HISTORY_START
