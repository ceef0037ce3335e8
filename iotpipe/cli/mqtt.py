"""`iotpipe ingest mqtt` (subscribe to a broker and store what arrives) and `iotpipe simulate`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import paho.mqtt.client as paho
import typer
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from iotpipe.app import database_location
from iotpipe.cli import JsonFlag, app, err, get_app, ingest_app, out, print_json
from iotpipe.errors import ConfigError
from iotpipe.pipeline import Counters, Pipeline, PipelineWriter
from iotpipe.sources.mqtt import (
    Broker,
    BrokerError,
    MqttSource,
    TopicTemplate,
    options_from_settings,
    parse_broker_url,
)
from iotpipe.sources.simulator import ANOMALY_KINDS, Report, Simulator

log = logging.getLogger(__name__)

_REPORT_EVERY = 10.0


@ingest_app.command("mqtt")
def ingest_mqtt(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="Broker: mqtt://host:1883 or mqtts://host:8883, optionally with user:password@ before the "
            "host (env IOTPIPE_MQTT_URL). Prefer IOTPIPE_MQTT__USERNAME / IOTPIPE_MQTT__PASSWORD to a "
            "password in the URL.",
            show_default=False,
        ),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            help="Topic filter to subscribe to, e.g. 'telemetry/#'; repeat for several "
            "(default: one per template).",
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help="Topic layout, first match wins: telemetry/{device_id}, tele/{device_id}/SENSOR, "
            "zigbee2mqtt/{device_id}, {device_id}/{metric}, or your own as TEMPLATE=FORMAT "
            "(default: the first three). A message matching none is dead-lettered.",
            show_default=False,
        ),
    ] = None,
    shared_group: Annotated[
        str | None,
        typer.Option(help="Share the subscription with other workers ($share/NAME/...).", show_default=False),
    ] = None,
    qos: Annotated[
        int | None, typer.Option(help="0, 1 (default: at least once) or 2.", show_default=False)
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="Id of the persistent session; keep it across restarts, one per worker (default iotpipe-<host>).",
            show_default=False,
        ),
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="MQTT version: 5 (default) or 3.1.1.", show_default=False)
    ] = None,
    inflight: Annotated[
        int | None,
        typer.Option(
            help="Unacknowledged messages the broker may send us (default 10000): on MQTT 5 our Receive "
            "Maximum; on 3.1.1 the broker's max_inflight_messages decides, raise it to match.",
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate(s) to verify an mqtts:// broker.")
    ] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate (mqtts://).")] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="Client certificate's private key (mqtts://).")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: at Ctrl-C or SIGTERM)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Subscribe to an MQTT broker and store every reading that arrives.

    At least once: QoS 1 in a persistent session, each message acknowledged only after the batch holding it is committed; what is published while this is stopped is delivered when it returns. Stops cleanly on Ctrl-C or SIGTERM. Broker settings for full speed: docs/mqtt.md.
    """
    application = get_app(ctx)
    settings = application.settings
    if url is not None:
        settings.mqtt_url = url
    flags = {
        "topics": topic,
        "templates": template,
        "shared_group": shared_group,
        "qos": qos,
        "client_id": client_id,
        "protocol": protocol,
        "inflight": inflight,
        "ca_file": ca_file,
        "cert_file": cert_file,
        "key_file": key_file,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        settings.mqtt = type(settings.mqtt).model_validate({**settings.mqtt.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid option ({problems})") from None
    options = options_from_settings(settings)
    application.init()
    source = MqttSource(options)
    pipeline = application.pipeline(max_unacked=options.max_unacked if options.qos else None)
    say = err if json_output else out
    say.print(f"Storing readings in {database_location(settings)}", highlight=False)
    counters = run_source(pipeline, source, duration, say.print)
    summary = {**_counters(counters), "mqtt": vars(source.stats)}
    if json_output:
        print_json(summary)
    else:
        out.print(_progress(counters, source), highlight=False)


def run_source(pipeline: Pipeline, source: MqttSource, duration: float | None, say: Any) -> Counters:
    """Run one source into the pipeline until `duration`, Ctrl-C or SIGTERM; flush, ack, disconnect."""
    stop = threading.Event()
    writer = PipelineWriter(pipeline)
    previous = _on_sigterm(stop)
    writer.start()
    try:
        source.start(pipeline)
        say(source.describe(), highlight=False)
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            left = _REPORT_EVERY if deadline is None else min(_REPORT_EVERY, deadline - time.monotonic())
            if left <= 0 or stop.wait(left):
                break
            say(_progress(pipeline.counters, source), highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        source.stop()
        writer.stop()
        signal.signal(signal.SIGTERM, previous)
    return pipeline.counters


def _on_sigterm(stop: threading.Event) -> Any:
    """Let SIGTERM (systemd, docker stop) end the loop like Ctrl-C: flush, ack, disconnect."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    return signal.signal(signal.SIGTERM, handler)


def _progress(c: Counters, source: MqttSource) -> str:
    line = (
        f"stored {c.readings_stored:,} readings from {c.messages_accepted:,} messages "
        f"({c.readings_duplicate:,} duplicates, {c.messages_dead_lettered:,} dead letters)"
    )
    stats = source.stats
    if stats.queue_full:
        line += (
            f"; the store was slower than the broker {stats.queue_full:,} times: "
            f"stopped reading for {stats.blocked_seconds:,.1f} s in all"
        )
    if stats.connects > 1:
        line += f"; reconnected {stats.connects - 1:,} times"
    return line


def _counters(c: Counters) -> dict[str, int]:
    return {
        "messages": c.messages_received,
        "stored": c.readings_stored,
        "duplicates": c.readings_duplicate,
        "invalid": c.values_invalid,
        "dead_lettered": c.messages_dead_lettered,
    }


# -- simulate --------------------------------------------------------------------------------
@app.command()
def simulate(
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            help="Publish to this broker: mqtt://host:1883, optionally with user:password@ before the host.",
            show_default=False,
        ),
    ] = None,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 10,
    interval: Annotated[float, typer.Option(min=0.001, help="Seconds between one device's reports.")] = 5.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", show_default=False)
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many messages.", show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed sends the same stream.")] = None,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            min=0, max=1, help="Chance per report that an anomaly starts (spike, stuck, drift, ...)."
        ),
    ] = 0.0,
    dropout_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Chance per report that a device goes silent for a while.")
    ] = 0.0,
    malformed_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Chance per message that its payload is malformed.")
    ] = 0.0,
    v2_ratio: Annotated[
        float, typer.Option(min=0, max=1, help="Share of JSON reports in the V2 schema.")
    ] = 0.5,
    topic_template: Annotated[
        str,
        typer.Option(
            help="Where and how devices publish: telemetry/{device_id} (V1/V2 JSON), tele/{device_id}/SENSOR "
            "(Tasmota), zigbee2mqtt/{device_id}, or {device_id}/{metric} (bare numbers).",
        ),
    ] = "telemetry/{device_id}",
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-001, PREFIX-002, ...")] = "sim",
    qos: Annotated[int, typer.Option(min=0, max=2, help="QoS of the published messages.")] = 1,
) -> None:
    """Simulate devices publishing telemetry over MQTT; print a JSON summary of what was sent.

    Signals are realistic (daily temperature cycle, humidity against it, pressure, a draining battery, noisy RSSI); anomalies, dropouts and malformed payloads are injected at the given rates, reproducibly with --seed.

    The summary reconciles with `iotpipe stats --json`: its `readings` are stored, its `malformed` messages dead-lettered.
    """
    if mqtt is None:
        raise ConfigError("nothing to publish to: pass --mqtt mqtt://host:1883")
    if duration is None and count is None:
        err.print("No --duration or --count: publishing until Ctrl-C.")
    template = TopicTemplate.parse(topic_template)
    unknown = [level for level in template.levels if level.startswith("{") and level not in _FILLED]
    if unknown:
        raise ConfigError(f"simulate fills {{device_id}} and {{metric}} only, not {', '.join(unknown)}")
    layout = _LAYOUTS.get(template.format)
    if layout is None:
        raise ConfigError(
            f"simulate publishes JSON, tasmota, zigbee2mqtt and bare values; {template.format!r} is not one of them"
        )
    simulator = Simulator(
        devices=devices,
        interval=interval,
        seed=seed,
        v2_ratio=v2_ratio,
        prefix=prefix,
        anomaly_rate=anomaly_rate,
        dropout_rate=dropout_rate,
        malformed_rate=malformed_rate,
        layout=layout,
    )
    publisher = Publisher(parse_broker_url(mqtt), qos)
    sent = SentSummary()
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    try:
        for report in simulator.reports(pace=True):
            if (count is not None and sent.messages >= count) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                break
            publisher.publish(topic_for(template, report), report.payload)
            sent.add(report)
    except KeyboardInterrupt:
        pass
    finally:
        publisher.close()
    summary = sent.as_dict(simulator)
    summary["topic_template"] = template.text
    summary["qos"] = qos
    summary["seconds"] = round(time.monotonic() - started, 3)
    print_json(summary)


_FILLED = ("{device_id}", "{metric}")
_LAYOUTS: dict[str | None, str] = {
    None: "json",
    "json": "json",
    "tasmota": "tasmota",
    "zigbee2mqtt": "zigbee2mqtt",
    "value": "value",
}


def topic_for(template: TopicTemplate, report: Report) -> str:
    """The topic a simulated report is published on: the template with its placeholders filled."""
    values = {"device_id": report.device_id, "metric": report.metric or ""}
    return "/".join(
        values.get(level[1:-1], level) if level.startswith("{") else level for level in template.levels
    )


class SentSummary:
    """What the simulator sent, per kind, for reconciliation with `iotpipe stats --json`."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.kinds: Counter[str] = Counter()

    def add(self, report: Report) -> None:
        self.messages += 1
        self.readings += report.readings
        self.kinds[report.kind] += 1

    def as_dict(self, simulator: Simulator) -> dict[str, Any]:
        episodes = Counter(e.kind for e in simulator.episodes)
        return {
            "messages": self.messages,
            "readings": self.readings,
            "malformed": self.kinds["malformed"],
            "formats": {k: n for k, n in sorted(self.kinds.items()) if k != "malformed"},
            "devices": simulator.devices,
            "dropouts": episodes["dropout"],
            "anomalies": {kind: episodes[kind] for kind in ANOMALY_KINDS},
        }


class Publisher:
    """A paho client that publishes, rides out broker restarts, and on close waits until the
    broker has taken every message (at QoS 1: acknowledged it)."""

    _AHEAD = 10_000  # messages published but not yet taken, before publish() waits
    _PATIENCE = 60.0  # seconds without progress before giving up

    def __init__(self, broker: Broker, qos: int) -> None:
        self.qos = qos
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv311)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)  # paho keeps what waits for a reconnect
        self._client.on_publish = self._on_publish
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set()
        self._taken = threading.Condition()
        self._published = 0
        self._acknowledged = 0
        try:
            self._client.connect(broker.host, broker.port)
        except OSError as exc:
            raise BrokerError(f"cannot connect to MQTT broker {broker}: {exc}") from None
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        # Published while disconnected, a message waits in paho and goes out on reconnect.
        self._client.publish(topic, payload, qos=self.qos)
        self._published += 1
        if self._published - self._acknowledged > self._AHEAD:
            self._wait_until(self._published - self._AHEAD // 2)

    def _on_publish(self, *_args: Any) -> None:
        with self._taken:
            self._acknowledged += 1
            self._taken.notify_all()

    def _wait_until(self, count: int) -> None:
        with self._taken:
            while self._acknowledged < count:
                before = self._acknowledged
                self._taken.wait(self._PATIENCE)
                if self._acknowledged == before:
                    raise BrokerError(
                        f"the broker took no message for {self._PATIENCE:g} s; "
                        f"{self._published - self._acknowledged} were not delivered"
                    )

    def close(self) -> None:
        try:
            self._wait_until(self._published)
        finally:
            self._client.disconnect()
            self._client.loop_stop()
