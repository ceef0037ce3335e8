"""Services: the long-running parts `iotpipe run` starts (sources, scheduled jobs).

A service is built from the settings by a factory, started with the pipeline it feeds,
and stopped on shutdown. Each source or job module adds one factory to FACTORIES; the
simulator runs only when no other source is configured, so `iotpipe run` always ingests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from iotpipe.config import Settings
from iotpipe.model import RawMessage
from iotpipe.pipeline import Pipeline
from iotpipe.sources.simulator import Simulator
from iotpipe.store import Store


class Service(Protocol):
    name: str
    is_source: bool  # feeds readings (vs. a job that reads the store)

    def start(self, pipeline: Pipeline) -> None: ...

    def stop(self) -> None:
        """Stop taking new work and return once what was taken is handed to the pipeline."""
        ...

    def describe(self) -> str: ...


ServiceFactory = Callable[[Settings, Store], Service | None]


class FeederThread:
    """A service that pushes an iterator of messages into the pipeline from a thread."""

    is_source = True

    def __init__(
        self, name: str, messages: Iterable[RawMessage], description: str, join_timeout: float = 10
    ) -> None:
        self.name = name
        self._messages = messages
        self._description = description
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pipeline: Pipeline) -> None:
        self._thread = threading.Thread(
            target=self._feed, args=(pipeline,), name=f"iotpipe-{self.name}", daemon=True
        )
        self._thread.start()

    def _feed(self, pipeline: Pipeline) -> None:
        for raw in self._messages:
            if self._stop.is_set():
                return
            pipeline.submit(raw)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout)

    def describe(self) -> str:
        return self._description


def simulator_service(settings: Settings) -> Service:
    sim = settings.simulator
    simulator = Simulator(devices=sim.devices, interval=sim.interval, seed=sim.seed)
    return FeederThread(
        "simulator",
        simulator.live(),
        f"No source configured: simulating {sim.devices} devices reporting every {sim.interval:g}s.",
        join_timeout=sim.interval + 5,
    )


# Each source/job module appends its factory here (see build_services).
FACTORIES: list[ServiceFactory] = []


def build_services(settings: Settings, store: Store) -> list[Service]:
    services = [s for s in (factory(settings, store) for factory in FACTORIES) if s is not None]
    if not any(s.is_source for s in services):
        services.insert(0, simulator_service(settings))
    return services


def thingspeak_service(settings: Settings, store: Store) -> Service | None:
    """Poll the channels `[thingspeak] channels` lists, each from its stored cursor."""
    from iotpipe.sources import thingspeak

    config = settings.thingspeak
    if not config.channels:
        return None
    readers = thingspeak.resume_readers(thingspeak.configured_channels(config), config, store.watermark)
    return thingspeak.ThingSpeakService(readers, thingspeak.client_options(config), config.interval)


FACTORIES.append(thingspeak_service)


def analytics_service(settings: Settings, store: Store) -> Service | None:
    """The analytics job scheduler (rollups, anomalies, quality, health, alerts)."""
    from iotpipe.analytics.scheduler import analytics_service as scheduler

    return scheduler(settings, store)


FACTORIES.append(analytics_service)


def mqtt_service(settings: Settings, store: Store) -> Service | None:
    """Subscribe to the broker `mqtt_url` names, as `[mqtt]` says (topics, templates, QoS...)."""
    if not settings.mqtt_url:
        return None
    from iotpipe.sources import mqtt

    return mqtt.MqttSource(mqtt.options_from_settings(settings))


FACTORIES.append(mqtt_service)
