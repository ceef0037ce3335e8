"""Built-in device simulator: realistic signals from N devices as V1/V2 JSON payloads.

Signals follow the physics users expect to see on a dashboard: temperature follows a
daily cycle, relative humidity moves against it, pressure wanders slowly, the battery
drains, RSSI is noisy. Everything is drawn from one seeded RNG, so a seed reproduces
the exact stream.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from iotpipe.model import MICROS_PER_SECOND, Micros, RawMessage, now_micros

DEVICE_TYPES = ("pump", "tank", "weather", "meter")
_DAY_SECONDS = 86_400


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


@dataclass
class Simulator:
    devices: int = 5
    interval: float = 5.0  # seconds between one device's reports
    seed: int | None = None
    v2_ratio: float = 0.5  # share of messages sent in the V2 schema
    prefix: str = "sim"
    rng: random.Random = field(init=False)
    fleet: list[SimulatedDevice] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.fleet = [self._new_device(i) for i in range(self.devices)]

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
        values = self.reading_values(device, at)
        if self.rng.random() < self.v2_ratio:
            return orjson.dumps(
                {
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
            )
        return orjson.dumps({"device_id": device.device_id, "timestamp": at // 1000, **values})

    def history(self, start: Micros, reports: int) -> Iterator[RawMessage]:
        """`reports` rounds of every device, `interval` apart from `start`, as fast as asked."""
        step = int(self.interval * MICROS_PER_SECOND)
        for round_index in range(reports):
            at = start + round_index * step
            for device in self.fleet:
                yield RawMessage(self.payload(device, at), "simulator", device.device_id, at)

    def live(self, rounds: int | None = None) -> Iterator[RawMessage]:
        """Report in real time: every device once per `interval`, until `rounds` (or forever)."""
        done = 0
        next_round = time.monotonic()
        while rounds is None or done < rounds:
            delay = next_round - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            at = now_micros()
            for device in self.fleet:
                yield RawMessage(self.payload(device, at), "simulator", device.device_id, at)
            done += 1
            next_round += self.interval
