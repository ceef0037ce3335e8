"""Data quality per device and day: the score matches the formula on a hand-checked day."""

from __future__ import annotations

import datetime as dt

import pytest

from iotpipe.analytics.jobs import find_job, run_job
from iotpipe.analytics.quality import compute_quality, quality_rows, quality_score
from iotpipe.analytics.rollups import refresh
from iotpipe.config import Settings
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    WriteBatch,
    datetime_to_micros,
)
from iotpipe.store import Store
from tests.analytics.support import insert_anomaly, write_readings

DAY = datetime_to_micros(dt.datetime(2026, 4, 7))
MINUTE = 60 * MICROS_PER_SECOND


def test_score_formula_weights_each_share_by_30_40_30_points() -> None:
    assert quality_score(0, 0, 0) == 100
    assert quality_score(100, 0, 0) == 70
    assert quality_score(0, 100, 0) == 60
    assert quality_score(12.5, 5, 10) == 91.25
    assert quality_score(100, 100, 100) == 0  # clipped at both ends


def test_quality_of_a_hand_checked_day(store: Store) -> None:
    """pump-1 reports pressure and humidity every minute on 2026-04-07.

    expected   2 series × 1440 minutes                          = 2880
    received   pressure loses 06:00–12:00 (360), humidity full   = 1080 + 1440 = 2520
    missing    2880 − 2520 = 360                                 → 12.5 % of expected
    out of range: 126 humidity readings at 150 % (bounds 0–100)  → 5 % of received
    anomalous  252 pressure readings (36 flagged by both detectors, counted once) → 10 %
    invalid    7 values the pipeline could not use (kept, not scored)
    score      100 − 30·0.125 − 40·0.05 − 30·0.10 = 100 − 3.75 − 2 − 3 = 91.25
    """
    gap = range(6 * 60, 12 * 60)
    pressure = [("pump-1", "pressure", DAY + i * MINUTE, 3.0) for i in range(1440) if i not in gap]
    humidity = [("pump-1", "humidity", DAY + i * MINUTE, 150.0 if i < 126 else 40.0) for i in range(1440)]
    write_readings(store, pressure + humidity)
    store.write(
        WriteBatch(invalid={("pump-1", "pressure", DAY + i * MINUTE): "not a number" for i in range(7)})
    )
    series_id = store.cached_series_id("pump-1", "pressure")
    assert series_id is not None
    for i in range(252):
        insert_anomaly(store, series_id, DAY + (720 + i) * MINUTE, 3.0, method="zscore")
    for i in range(36):
        insert_anomaly(store, series_id, DAY + (720 + i) * MINUTE, 3.0, method="streaming")
    refresh(store)

    compute_quality(store, Settings(), now=DAY + 2 * MICROS_PER_DAY + 5 * MICROS_PER_HOUR)

    (day,) = quality_rows(store, "2026-04-07", "2026-04-07")
    assert {k: day[k] for k in ("device_id", "expected", "received", "missing", "invalid")} == {
        "device_id": "pump-1",
        "expected": 2880,
        "received": 2520,
        "missing": 360,
        "invalid": 7,
    }
    assert (day["out_of_range"], day["anomalous"]) == (126, 252)
    assert (day["missing_pct"], day["out_of_range_pct"], day["anomalous_pct"]) == pytest.approx(
        (12.5, 5.0, 10.0)
    )
    assert day["score"] == 91.25


def test_a_silent_day_is_all_missing_and_a_partial_day_counts_only_until_now(store: Store) -> None:
    write_readings(store, [("tank-2", "level", DAY + i * MINUTE, 1.0) for i in range(1440)])
    refresh(store)
    now = DAY + 2 * MICROS_PER_DAY + 6 * MICROS_PER_HOUR  # nothing since the first day
    compute_quality(store, Settings(), now=now)
    days = {r["day"]: r for r in quality_rows(store, device_id="tank-2")}
    assert days["2026-04-07"]["score"] == 100
    assert (days["2026-04-08"]["expected"], days["2026-04-08"]["received"]) == (1440, 0)
    assert days["2026-04-08"]["score"] == 70
    assert days["2026-04-09"]["expected"] == 360  # 6 hours of today so far


def test_late_data_for_an_old_day_updates_its_quality_on_the_next_run(store: Store) -> None:
    settings = Settings()
    write_readings(store, [("tank-2", "level", DAY + i * MINUTE, 1.0) for i in range(720)])
    refresh(store)
    # The first run covers the whole history; later runs revisit an old day (outside the
    # recent window) only when its rollup changed since the previous run.
    run_job(find_job("quality"), store, settings)
    (day,) = quality_rows(store, "2026-04-07", "2026-04-07")
    assert day["received"] == 720
    write_readings(store, [("tank-2", "level", DAY + i * MINUTE, 500.0) for i in range(720, 1440)])
    refresh(store)
    run_job(find_job("quality"), store, settings)
    (day,) = quality_rows(store, "2026-04-07", "2026-04-07")
    assert day["received"] == 1440
