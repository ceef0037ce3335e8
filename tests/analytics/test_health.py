"""Device health: offline after a multiple of the usual interval (5 minutes at least),
low battery, last seen, and the health score."""

from __future__ import annotations

import datetime as dt

from iotpipe.analytics.health import check_health, health_rows
from iotpipe.analytics.quality import compute_quality
from iotpipe.analytics.rollups import refresh
from iotpipe.config import AnalyticsSettings, Settings
from iotpipe.model import MICROS_PER_SECOND, datetime_to_micros
from iotpipe.store import Store
from tests.analytics.support import write_readings

T0 = datetime_to_micros(dt.datetime(2026, 5, 4, 8))
SECOND = MICROS_PER_SECOND


def health_at(store: Store, settings: Settings, now: int) -> dict[str, dict[str, object]]:
    check_health(store, settings, now)
    return {row["device_id"]: row for row in health_rows(store)}


def test_offline_after_three_usual_intervals_but_never_before_five_minutes(store: Store) -> None:
    write_readings(
        store,
        [("slow-1", "level", T0 + i * 600 * SECOND, 1.0) for i in range(10)]  # every 10 minutes
        + [("fast-1", "level", T0 + i * 10 * SECOND, 1.0) for i in range(541)],  # every 10 s
    )
    last_slow, last_fast = T0 + 5400 * SECOND, T0 + 5400 * SECOND
    settings = Settings()
    rows = health_at(store, settings, last_fast + 299 * SECOND)
    assert (rows["fast-1"]["status"], rows["fast-1"]["offline_after_seconds"]) == ("online", 300.0)
    assert rows["fast-1"]["interval_seconds"] == 10.0
    assert health_at(store, settings, last_fast + 301 * SECOND)["fast-1"]["status"] == "offline"
    rows = health_at(store, settings, last_slow + 1799 * SECOND)
    assert (rows["slow-1"]["status"], rows["slow-1"]["offline_after_seconds"]) == ("online", 1800.0)
    assert rows["slow-1"]["last_seen"] == last_slow
    assert health_at(store, settings, last_slow + 1801 * SECOND)["slow-1"]["status"] == "offline"
    strict = Settings(analytics=AnalyticsSettings(offline_multiple=2, offline_min_seconds=60))  # type: ignore[call-arg]
    assert health_at(store, strict, last_slow + 1201 * SECOND)["slow-1"]["status"] == "offline"


def test_health_score_is_quality_less_a_low_battery_penalty_and_zero_offline(store: Store) -> None:
    readings = [("pump-1", "battery", T0 + i * 60 * SECOND, 15.0) for i in range(60)]
    readings += [("pump-1", "humidity", T0 + i * 60 * SECOND, 150.0 if i < 30 else 50.0) for i in range(60)]
    readings += [("tank-2", "battery", T0 + i * 60 * SECOND, 80.0) for i in range(60)]
    write_readings(store, readings)
    refresh(store)
    now = T0 + 60 * 60 * SECOND
    settings = Settings()
    compute_quality(store, settings, now)
    rows = health_at(store, settings, now)
    pump = rows["pump-1"]
    # 120 readings, 30 out of range (25 % → −10 points), the hour since the first reading complete.
    assert (pump["quality_score"], pump["battery"], pump["battery_low"]) == (90.0, 15.0, True)
    assert pump["health_score"] == 65.0
    assert (rows["tank-2"]["battery_low"], rows["tank-2"]["health_score"]) == (False, 100.0)
    assert health_at(store, settings, now + 3600 * SECOND)["tank-2"]["health_score"] == 0.0
