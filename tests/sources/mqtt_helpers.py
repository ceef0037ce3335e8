"""Helpers for the MQTT tests: an in-process worker, a publisher of simulated reports, store reads."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import select

from iotpipe.app import App
from iotpipe.app.simulate import topic_for
from iotpipe.app.wiring import mqtt_options
from iotpipe.brokers import parse_broker_url
from iotpipe.config import MqttSettings, PipelineSettings, Settings
from iotpipe.pipeline import PipelineWriter
from iotpipe.sinks.mqtt import Publisher
from iotpipe.sources.mqtt import MqttSource, TopicTemplate
from iotpipe.sources.simulator import Report
from iotpipe.store import Store
from iotpipe.store.schema import devices, readings, series

Reading = tuple[str, str, int, float]  # (device_id, metric, time, value)
_numbers = itertools.count(1)


def unique(name: str) -> str:
    """A name no other test uses, so tests sharing the session broker never see each other."""
    return f"{name}{next(_numbers)}"


class Worker:
    """`iotpipe ingest mqtt` in this process: the same source, pipeline and writer."""

    def __init__(
        self, database_url: str, mqtt_url: str, pipeline: dict[str, Any] | None = None, **mqtt: Any
    ) -> None:
        mqtt.setdefault("client_id", unique("worker-"))
        settings = Settings(  # type: ignore[call-arg]
            database_url=database_url,
            mqtt_url=mqtt_url,
            pipeline=PipelineSettings(**{"batch_delay": 0.2, **(pipeline or {})}),  # type: ignore[arg-type]
            mqtt=MqttSettings(**mqtt),
        )
        self.app = App(settings)
        self.app.init()
        self.options = mqtt_options(settings)
        self.source = MqttSource(self.options, stop_timeout=10)
        self.pipeline = self.app.pipeline(max_unacked=self.options.max_unacked if self.options.qos else None)
        self.writer = PipelineWriter(self.pipeline)

    def __enter__(self) -> Worker:
        self.writer.start()
        self.source.start(self.pipeline)
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.stop()
        self.writer.stop()
        self.app.close()


def publish(
    url: str, reports: Iterable[Report], template: str, qos: int = 1, pace: float = 0.0
) -> list[Report]:
    """Publish reports on the topics of `template`; return them once the broker has them all."""
    parsed = TopicTemplate.parse(template)
    publisher = Publisher(parse_broker_url(url), qos)
    sent = []
    try:
        for report in reports:
            publisher.publish(topic_for(parsed, report), report.payload)
            sent.append(report)
            if pace:
                time.sleep(pace)
    finally:
        publisher.close()
    return sent


def expected_readings(reports: Iterable[Report]) -> set[Reading]:
    """What the store must hold after `reports` of the JSON layout, by the documented V1/V2
    rules applied here (not by iotpipe's decoders, which these tests check): V1 — every
    numeric top-level field but the reserved ones; V2 — each reading, or its "value";
    times in epoch milliseconds. Malformed reports contribute nothing."""
    expected = set()
    for report in reports:
        if report.kind == "malformed":
            continue
        assert report.kind in ("v1", "v2"), f"no oracle for the {report.kind} layout"
        doc = orjson.loads(report.payload)
        if report.kind == "v1":
            at = doc["timestamp"] * 1000
            values = {k: v for k, v in doc.items() if k not in ("device_id", "timestamp")}
            device_id = doc["device_id"]
        else:
            at = doc["ts"] * 1000
            values = {k: v["value"] if isinstance(v, dict) else v for k, v in doc["readings"].items()}
            device_id = doc["device"]["id"]
        expected.update((device_id, metric, at, float(value)) for metric, value in values.items())
    return expected


def run_inside_writes(store: Store, step: Callable[[], None]) -> None:
    """Make `step` run inside every write transaction of `store`, after the readings'
    insert (to slow the store down, or make it fail, as a real database might)."""
    original = store._insert_dirty_hours

    def with_step(conn: Any, hours: Any) -> None:
        step()
        original(conn, hours)

    store._insert_dirty_hours = with_step  # type: ignore[method-assign]


def stored_readings(store: Store) -> list[Reading]:
    query = (
        select(devices.c.device_id, series.c.metric, readings.c.time, readings.c.value)
        .join(series, series.c.id == readings.c.series_id)
        .join(devices, devices.c.id == series.c.device_pk)
    )
    with store.engine.connect() as conn:
        return [(d, m, t, v) for d, m, t, v in conn.execute(query)]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
