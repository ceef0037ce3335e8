"""Built-in device simulator: realistic signals from N devices, with labelled anomalies and faults.

Signals follow the physics users expect to see on a dashboard: temperature follows a
daily cycle, relative humidity moves against it, pressure wanders slowly, the battery
drains, RSSI is noisy. On request it injects what real fleets do wrong — anomalies
(spikes, stuck values, drift, level shifts, noise bursts), dropouts (devices that go
silent) and malformed payloads — and keeps the ground truth in `episodes`.

Two seeded RNGs: one draws the signals, the other the faults, so a seed reproduces the
exact stream, and the clean signal under the injected faults is the same whatever the
fault rates are.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from iotpipe.model import MICROS_PER_SECOND, Micros, RawMessage, micros_to_datetime, now_micros
from iotpipe.sources.base import MessageSink

DEVICE_TYPES = ("pump", "tank", "weather", "meter")
METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
ANOMALY_KINDS = ("spike", "stuck", "drift", "level_shift", "noise_burst")
EPISODE_KINDS = (*ANOMALY_KINDS, "dropout")
# Payload layouts: V1/V2 JSON mixed by v2_ratio, Tasmota SENSOR, Zigbee2MQTT, one bare
# number per metric (the MQTT `{device_id}/{metric}` layout).
LAYOUTS = ("json", "tasmota", "zigbee2mqtt", "value")
ALL_METRICS = "*"  # an episode's metric when it concerns the whole device (dropouts)
_DAY_SECONDS = 86_400
# One unit of anomaly per metric, about a few times its normal report-to-report noise.
_SCALE = {"temperature": 1.0, "humidity": 3.0, "pressure": 1.0, "battery": 2.0, "rssi": 4.0}
# Reports an episode lasts, (shortest, longest), by kind.
_LENGTH = {
    "spike": (1, 1),
    "stuck": (6, 30),
    "drift": (10, 40),
    "level_shift": (10, 40),
    "noise_burst": (5, 20),
    "dropout": (3, 20),
}
_FUTURE = 10 * _DAY_SECONDS * MICROS_PER_SECOND  # far enough ahead to be rejected


@dataclass
class SimulatedDevice:
    device_id: str
    type: str
    latitude: float
    longitude: float
    temperature_base: float
    pressure: float
    battery: float
    firmware: str = "1.4.0"


@dataclass(frozen=True, slots=True)
class Episode:
    """Ground truth for one injected anomaly or dropout.

    `start` and `end` are the times of the first and last report it affects (inclusive:
    a spike has start == end). A dropout silences the whole device; its metric is "*".
    """

    device_id: str
    metric: str
    kind: str  # one of EPISODE_KINDS
    start: Micros
    end: Micros


@dataclass(frozen=True, slots=True)
class Report:
    """One message the simulator sends, and what it carries (for reconciliation)."""

    device_id: str
    time: Micros
    payload: bytes
    kind: str  # "v1", "v2", "tasmota", "zigbee2mqtt", "value" or "malformed"
    readings: int  # valid readings in it; 0 when malformed
    format: str | None  # the decoder a receiver should use; None: sniff (V1/V2 JSON)
    metric: str | None = None  # the one metric of a `value` layout message

    def raw(self) -> RawMessage:
        header = (self.metric,) if self.metric is not None else None
        device = None if self.format is None else self.device_id
        return RawMessage(self.payload, "simulator", self.device_id, self.time, self.format, device, header)


@dataclass(slots=True)
class _Anomaly:
    """An episode in progress on one device's metric."""

    episode: Episode
    left: int  # reports still to affect
    step: int = 0  # reports affected so far
    amount: float = 0.0  # spike/shift offset, drift per report, noise sigma
    stuck_at: float | None = None


@dataclass
class Simulator:
    devices: int = 5
    interval: float = 5.0  # seconds between one device's reports
    seed: int | None = None
    v2_ratio: float = 0.5  # share of messages sent in the V2 schema
    prefix: str = "sim"
    anomaly_rate: float = 0.0  # probability per device-report that an anomaly episode starts
    dropout_rate: float = 0.0  # probability per device-report that the device goes silent
    malformed_rate: float = 0.0  # probability per message that its payload is malformed
    layout: str = "json"
    rng: random.Random = field(init=False)
    fleet: list[SimulatedDevice] = field(init=False)
    episodes: list[Episode] = field(init=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.rng = random.Random(self.seed)
        self._faults = random.Random(None if self.seed is None else f"faults-{self.seed}")
        self.fleet = [self._new_device(i) for i in range(self.devices)]
        self.episodes = []
        self._anomalies: dict[str, _Anomaly] = {}
        self._silent: dict[str, int] = {}  # device -> reports it still skips

    def _new_device(self, index: int) -> SimulatedDevice:
        rng = self.rng
        return SimulatedDevice(
            device_id=f"{self.prefix}-{index + 1:03d}",
            type=DEVICE_TYPES[index % len(DEVICE_TYPES)],
            latitude=round(42.7 + rng.uniform(-0.2, 0.2), 5),
            longitude=round(-86.1 + rng.uniform(-0.2, 0.2), 5),
            temperature_base=rng.uniform(15.0, 24.0),
            pressure=rng.uniform(1005.0, 1020.0),
            battery=rng.uniform(60.0, 100.0),
        )

    @property
    def step(self) -> Micros:
        return int(self.interval * MICROS_PER_SECOND)

    # -- signals --------------------------------------------------------------------------
    def reading_values(self, device: SimulatedDevice, at: Micros) -> dict[str, float]:
        """One report's metrics at a time; advances the device's slow state."""
        rng = self.rng
        hour_angle = 2 * math.pi * ((at / MICROS_PER_SECOND) % _DAY_SECONDS) / _DAY_SECONDS
        daily = math.sin(hour_angle - math.pi / 2)  # coldest ~06:00 UTC, warmest ~18:00
        temperature = device.temperature_base + 5.0 * daily + rng.gauss(0, 0.3)
        humidity = min(100.0, max(5.0, 55.0 - 12.0 * daily + rng.gauss(0, 1.5)))
        device.pressure += rng.gauss(0, 0.05)
        device.battery = max(0.0, device.battery - rng.uniform(0.0, 0.002))
        return {
            "temperature": round(temperature, 2),
            "humidity": round(humidity, 1),
            "pressure": round(device.pressure, 2),
            "battery": round(device.battery, 2),
            "rssi": float(round(-65 + rng.gauss(0, 4))),
        }

    def payload(self, device: SimulatedDevice, at: Micros) -> bytes:
        """A clean V1 or V2 payload of one report (no faults injected)."""
        return self._json_payload(device, at, self.reading_values(device, at))[0]

    # -- faults ---------------------------------------------------------------------------
    def _goes_silent(self, device: SimulatedDevice, at: Micros) -> bool:
        """Whether this report is lost to a dropout (starting one when the dice say so)."""
        left = self._silent.get(device.device_id, 0)
        if left:
            self._silent[device.device_id] = left - 1
            return True
        if not (self.dropout_rate and self._faults.random() < self.dropout_rate):
            return False
        length = self._faults.randint(*_LENGTH["dropout"])
        self._silent[device.device_id] = length - 1
        self.episodes.append(
            Episode(device.device_id, ALL_METRICS, "dropout", at, at + (length - 1) * self.step)
        )
        # A device that goes silent mid-anomaly is not seen to end it: the episode is cut.
        self._anomalies.pop(device.device_id, None)
        return True

    def _inject(self, device: SimulatedDevice, at: Micros, values: dict[str, float]) -> None:
        """Apply the device's anomaly in progress to its values, or start one."""
        faults = self._faults
        anomaly = self._anomalies.get(device.device_id)
        if anomaly is None:
            if not (self.anomaly_rate and faults.random() < self.anomaly_rate):
                return
            kind = faults.choice(ANOMALY_KINDS)
            metric = faults.choice(METRICS)
            length = faults.randint(*_LENGTH[kind])
            scale = _SCALE[metric]
            sign = faults.choice((-1.0, 1.0))
            amount = {
                "spike": sign * faults.uniform(8.0, 12.0) * scale,
                "stuck": 0.0,
                "drift": sign * faults.uniform(0.4, 0.8) * scale,
                "level_shift": sign * faults.uniform(4.0, 8.0) * scale,
                "noise_burst": faults.uniform(4.0, 6.0) * scale,
            }[kind]
            episode = Episode(device.device_id, metric, kind, at, at + (length - 1) * self.step)
            self.episodes.append(episode)
            anomaly = self._anomalies[device.device_id] = _Anomaly(episode, length, amount=amount)
        metric = anomaly.episode.metric
        kind = anomaly.episode.kind
        anomaly.step += 1
        if kind == "stuck":
            if anomaly.stuck_at is None:
                anomaly.stuck_at = values[metric]
            values[metric] = anomaly.stuck_at
        elif kind == "drift":
            values[metric] = round(values[metric] + anomaly.amount * anomaly.step, 2)
        elif kind == "noise_burst":
            values[metric] = round(values[metric] + faults.gauss(0.0, anomaly.amount), 2)
        else:  # spike, level_shift
            values[metric] = round(values[metric] + anomaly.amount, 2)
        anomaly.left -= 1
        if not anomaly.left:
            del self._anomalies[device.device_id]

    def _malformed(self) -> bool:
        return bool(self.malformed_rate) and self._faults.random() < self.malformed_rate

    # -- messages -------------------------------------------------------------------------
    def round_reports(self, at: Micros) -> list[Report]:
        """Every device's messages for one report time (silent devices send none)."""
        reports: list[Report] = []
        for device in self.fleet:
            values = self.reading_values(device, at)  # the physics go on while silent
            if self._goes_silent(device, at):
                continue
            self._inject(device, at, values)
            reports.extend(self._render(device, at, values))
        return reports

    def _render(self, device: SimulatedDevice, at: Micros, values: dict[str, float]) -> list[Report]:
        layout = self.layout
        if layout == "value":
            return [self._value_report(device, at, metric, value) for metric, value in values.items()]
        if layout == "json":
            payload, kind = self._json_payload(device, at, values)
            fmt = None
        elif layout == "tasmota":
            payload, kind, fmt = self._tasmota_payload(at, values), "tasmota", "tasmota"
        else:
            payload, kind, fmt = self._zigbee2mqtt_payload(at, values), "zigbee2mqtt", "zigbee2mqtt"
        readings = 3 if layout == "tasmota" else len(values)
        if self._malformed():
            payload = self._malform_json(payload, device, at)
            kind, readings = "malformed", 0
        return [Report(device.device_id, at, payload, kind, readings, fmt)]

    def _json_payload(
        self, device: SimulatedDevice, at: Micros, values: dict[str, float]
    ) -> tuple[bytes, str]:
        if self.rng.random() < self.v2_ratio:
            document = {
                "schema_version": 2,
                "device": {
                    "id": device.device_id,
                    "type": device.type,
                    "firmware": device.firmware,
                    "location": {"lat": device.latitude, "lon": device.longitude},
                },
                "ts": at // 1000,
                "readings": {**values, "pressure": {"value": values["pressure"], "unit": "hPa"}},
            }
            return orjson.dumps(document), "v2"
        return orjson.dumps({"device_id": device.device_id, "timestamp": at // 1000, **values}), "v1"

    @staticmethod
    def _tasmota_payload(at: Micros, values: dict[str, float]) -> bytes:
        # Tasmota's own shape: a nested sensor object and a zone-less local time (ours is UTC).
        return orjson.dumps(
            {
                "Time": _zoneless(at),
                "BME280": {
                    "Temperature": values["temperature"],
                    "Humidity": values["humidity"],
                    "Pressure": values["pressure"],
                },
                "PressureUnit": "hPa",
                "TempUnit": "C",
            }
        )

    def _zigbee2mqtt_payload(self, at: Micros, values: dict[str, float]) -> bytes:
        # Older Zigbee2MQTT versions send some numbers as strings; so does this one, sometimes.
        battery: float | str = values["battery"]
        if self.rng.random() < 0.3:
            battery = f"{battery:.2f}"
        return orjson.dumps(
            {
                "temperature": values["temperature"],
                "humidity": values["humidity"],
                "pressure": values["pressure"],
                "battery": battery,
                "linkquality": int(values["rssi"]) + 160,
                "last_seen": _iso_millis(at) + "Z",
            }
        )

    def _value_report(self, device: SimulatedDevice, at: Micros, metric: str, value: float) -> Report:
        if self._malformed():
            # Unique per message: the DLQ keeps one row per (topic, payload).
            payload = f"ERR {at // 1000}".encode()
            return Report(device.device_id, at, payload, "malformed", 0, "value", metric)
        return Report(device.device_id, at, repr(value).encode(), "value", 1, "value", metric)

    def _malform_json(self, payload: bytes, device: SimulatedDevice, at: Micros) -> bytes:
        """A payload every decoder rejects, unique to this report (the DLQ dedupes repeats)."""
        flaw = self._faults.randrange(3)
        if flaw == 0:
            return payload[:-3]  # truncated in transit (the time, early in it, keeps it unique)
        if flaw == 1:  # firmware bug: every value a string that is no number
            return orjson.dumps(
                {"device_id": device.device_id, "timestamp": at // 1000, **dict.fromkeys(METRICS, "ERR")}
            )
        # A clock gone wrong: far in the future.
        return orjson.dumps(
            {"device_id": device.device_id, "timestamp": (at + _FUTURE) // 1000, "temperature": 20.0}
        )

    def reports(
        self, start: Micros | None = None, rounds: int | None = None, pace: bool = False
    ) -> Iterator[Report]:
        """Rounds of every device, `interval` apart from `start` (default now), until `rounds`
        (or forever); with `pace`, each round waits for its time to come on the wall clock."""
        first = now_micros() if start is None else start
        started = time.monotonic()
        done = 0
        while rounds is None or done < rounds:
            if pace:
                delay = started + done * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield from self.round_reports(first + done * self.step)
            done += 1

    def history(self, start: Micros, reports: int) -> Iterator[RawMessage]:
        """`reports` rounds of every device, `interval` apart from `start`, as fast as asked."""
        for report in self.reports(start, reports):
            yield report.raw()

    def live(self, rounds: int | None = None) -> Iterator[RawMessage]:
        """Report in real time: every device once per `interval`, until `rounds` (or forever)."""
        done = 0
        next_round = time.monotonic()
        while rounds is None or done < rounds:
            delay = next_round - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for report in self.round_reports(now_micros()):
                yield report.raw()
            done += 1
            next_round += self.interval


def _iso_millis(at: Micros) -> str:
    return micros_to_datetime(at).replace(tzinfo=None).isoformat(timespec="milliseconds")


def _zoneless(at: Micros) -> str:
    """ISO time without zone, as Tasmota sends it; milliseconds only when there are some."""
    return _iso_millis(at) if at % MICROS_PER_SECOND else _iso_millis(at)[:-4]


class SimulatorSource:
    """The simulator as a source: `iotpipe run`'s default when nothing else is configured,
    so that a first run with zero setup ingests something to look at."""

    name = "simulator"
    ack_window: int | None = None  # nothing to acknowledge

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sink: MessageSink) -> None:
        self._thread = threading.Thread(
            target=self._feed, args=(sink,), name="iotpipe-simulator", daemon=True
        )
        self._thread.start()

    def _feed(self, sink: MessageSink) -> None:
        for raw in self.simulator.live():
            if self._stop.is_set():
                return
            sink.submit(raw)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.simulator.interval + 5)

    def finished(self) -> bool:
        return False

    def describe(self) -> str:
        return (
            f"No source configured: simulating {self.simulator.devices} devices "
            f"reporting every {self.simulator.interval:g}s."
        )
