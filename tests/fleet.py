"""A small fleet with a history that gives every analytics table rows: three devices
over the last days at 5-minute steps, a temperature spike, pressure above a rule's
limit right now, a device gone silent with a low battery, and a dead letter.

The deploy tests run Grafana's queries over it; the dashboard tests show it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import orjson

from iotpipe.app import App
from iotpipe.config import AlertRuleSettings, AnalyticsSettings, Settings
from iotpipe.model import MICROS_PER_SECOND, RawMessage, now_micros

STEP = 300 * MICROS_PER_SECOND
HOUR = 3600 * MICROS_PER_SECOND
DEVICES = ("pump-1", "pump-2", "meter-3")
SILENT = "meter-3"  # stops reporting two hours ago, battery running down
HIGH_PRESSURE = AlertRuleSettings(name="pressure high", device="pump-*", metric="pressure", max=5.0)


@dataclass(frozen=True)
class Fleet:
    devices: tuple[str, ...]
    metrics: tuple[str, ...]
    spike_device: str
    spike_time: int  # µs
    start: int
    end: int


def fleet_settings(database_url: str, **overrides: object) -> Settings:
    analytics = AnalyticsSettings(alert_rules=[HIGH_PRESSURE])  # type: ignore[call-arg]
    return Settings(database_url=database_url, analytics=analytics, **overrides)  # type: ignore[call-arg]


def fill(app: App, days: int = 3, seed: int = 11, extra_devices: tuple[str, ...] = ()) -> Fleet:
    """Feed the history through the pipeline, then run every analytics job once."""
    rng = random.Random(seed)
    end = now_micros() // STEP * STEP
    start = end - days * 24 * HOUR
    spike = end - 6 * HOUR
    devices = DEVICES + extra_devices
    pipeline = app.pipeline(batch_size=5000)
    steps = (end - start) // STEP
    for step in range(steps + 1):
        at = start + step * STEP
        for index, device_id in enumerate(devices):
            if device_id == SILENT and at > end - 2 * HOUR:
                continue
            day = 2 * math.pi * (at % (24 * HOUR)) / (24 * HOUR)
            temperature = 20 + 3 * math.sin(day) + index + rng.gauss(0, 0.2)
            if device_id == DEVICES[0] and at == spike:
                temperature = 60.0
            pressure = 3.0 + rng.gauss(0, 0.05)
            if device_id == DEVICES[1] and at > end - HOUR:
                pressure = 6.5
            battery = 90 - 80 * step / steps if device_id == SILENT else 95.0
            body = {
                "device_id": device_id,
                "timestamp": at // 1000,
                "temperature": round(temperature, 3),
                "pressure": round(pressure, 3),
                "battery": round(battery, 2),
            }
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{device_id}", at))
    pipeline.feed(RawMessage(b"{not json", "mqtt", "telemetry/pump-1", end))
    pipeline.close()
    app.run_jobs("all")
    return Fleet(devices, ("battery", "pressure", "temperature"), DEVICES[0], spike, start, end)


def fill_year(app: App, device_id: str = "year-1", days: int = 365, step_seconds: int = 3600) -> int:
    """A year of hourly temperature and humidity for one device, rolled up; its readings."""
    end = now_micros() // HOUR * HOUR
    step = step_seconds * MICROS_PER_SECOND
    pipeline = app.pipeline(batch_size=20_000)
    count = 0
    for at in range(end - days * 24 * HOUR, end + 1, step):
        season = math.sin(2 * math.pi * (at % (365 * 24 * HOUR)) / (365 * 24 * HOUR))
        day = math.sin(2 * math.pi * (at % (24 * HOUR)) / (24 * HOUR))
        body = {
            "device_id": device_id,
            "timestamp": at // 1000,
            "temperature": round(12 + 10 * season + 4 * day, 2),
            "humidity": round(60 - 15 * season, 2),
        }
        pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{device_id}", at))
        count += 2
    pipeline.close()
    app.run_jobs("rollups")
    return count
