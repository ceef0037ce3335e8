"""`iotpipe simulate`: simulated devices publishing over MQTT, and what they sent."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from iotpipe.app.runner import shutdown_signals
from iotpipe.brokers import parse_broker_url
from iotpipe.errors import ConfigError
from iotpipe.sinks.mqtt import Publisher
from iotpipe.sources.mqtt import TopicTemplate
from iotpipe.sources.simulator import ANOMALY_KINDS, Report, Simulator


@dataclass(frozen=True)
class SimulationPlan:
    mqtt_url: str
    devices: int = 10
    interval: float = 5.0
    duration: float | None = None
    count: int | None = None
    seed: int | None = None
    anomaly_rate: float = 0.0
    dropout_rate: float = 0.0
    malformed_rate: float = 0.0
    v2_ratio: float = 0.5
    topic_template: str = "telemetry/{device_id}"
    prefix: str = "sim"
    qos: int = 1


def simulate(plan: SimulationPlan) -> dict[str, Any]:
    """Publish until `duration`, `count` messages, or a signal; return what was sent."""
    template = TopicTemplate.parse(plan.topic_template)
    unknown = [level for level in template.levels if level.startswith("{") and level not in _FILLED]
    if unknown:
        raise ConfigError(f"simulate fills {{device_id}} and {{metric}} only, not {', '.join(unknown)}")
    layout = _LAYOUTS.get(template.format)
    if layout is None:
        raise ConfigError(
            f"simulate publishes JSON, tasmota, zigbee2mqtt and bare values; {template.format!r} is not one of them"
        )
    simulator = Simulator(
        devices=plan.devices,
        interval=plan.interval,
        seed=plan.seed,
        v2_ratio=plan.v2_ratio,
        prefix=plan.prefix,
        anomaly_rate=plan.anomaly_rate,
        dropout_rate=plan.dropout_rate,
        malformed_rate=plan.malformed_rate,
        layout=layout,
    )
    publisher = Publisher(parse_broker_url(plan.mqtt_url), plan.qos)
    sent = SentSummary()
    started = time.monotonic()
    deadline = None if plan.duration is None else started + plan.duration
    with shutdown_signals() as stop:
        try:
            for report in simulator.reports(pace=True):
                if stop.is_set() or (plan.count is not None and sent.messages >= plan.count):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                publisher.publish(topic_for(template, report), report.payload)
                sent.add(report)
        finally:
            publisher.close()
    summary = sent.as_dict(simulator)
    summary["topic_template"] = template.text
    summary["qos"] = plan.qos
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


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
