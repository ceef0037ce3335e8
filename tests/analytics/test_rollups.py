"""Rollups equal a direct computation from the raw readings, under late data and reruns."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, select

from iotpipe.analytics.common import MICROS_PER_WEEK, WEEK_ORIGIN, find_series
from iotpipe.analytics.rollups import bucket_rows, refresh
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_SECOND, WriteBatch, datetime_to_micros
from iotpipe.store import Store, open_store
from iotpipe.store.schema import dirty_hours, rollup_queue, rollups
from tests.analytics.support import write_readings

WIDTHS = {"1h": (MICROS_PER_HOUR, 0), "1d": (MICROS_PER_DAY, 0), "1w": (MICROS_PER_WEEK, WEEK_ORIGIN)}
SERIES = [("pump-1", "pressure"), ("pump-1", "temperature"), ("tank-2", "level")]
START = datetime_to_micros(__import__("datetime").datetime(2026, 3, 2, 5, 17))  # a Monday


def random_readings(rng: random.Random, start: int, days: int) -> list[tuple[str, str, int, float]]:
    """Readings every ~3 minutes with jitter, whole hours and one whole day left out."""
    out = []
    skipped_day = rng.randrange(days)
    for device_id, metric in SERIES:
        level = rng.uniform(-50, 1000)
        t = start
        while t < start + days * MICROS_PER_DAY:
            t += rng.randrange(30, 360) * MICROS_PER_SECOND + rng.randrange(MICROS_PER_SECOND)
            hour_index = (t - start) // MICROS_PER_HOUR
            if (t - start) // MICROS_PER_DAY == skipped_day or hour_index % 11 == 3:
                continue
            out.append((device_id, metric, t, level + rng.gauss(0, 5)))
    rng.shuffle(out)  # out of order inside and across batches
    return out


def write_in_batches(store: Store, readings: list[tuple[str, str, int, float]], size: int = 700) -> None:
    for i in range(0, len(readings), size):
        write_readings(store, readings[i : i + size])


def expected(times: np.ndarray, values: np.ndarray, width: int, origin: int) -> list[dict[str, float]]:
    keys = times - (times - origin) % width
    buckets = []
    for key in np.unique(keys):
        t, v = times[keys == key], values[keys == key]
        buckets.append(
            {
                "bucket_start": int(key),
                "count": len(v),
                "avg": float(v.mean()),
                "min": float(v.min()),
                "max": float(v.max()),
                "stddev": float(v.std(ddof=1)) if len(v) > 1 else None,
                "first_value": float(v[t.argmin()]),
                "last_value": float(v[t.argmax()]),
                "first_time": int(t.min()),
                "last_time": int(t.max()),
            }
        )
    return buckets


def assert_rollups_match_readings(store: Store) -> int:
    """Every bucket of every width equals numpy over the stored readings; returns buckets checked."""
    checked = 0
    with store.engine.connect() as conn:
        refs = [find_series(conn, d, m) for d, m in SERIES]
    for ref in refs:
        stored = store.raw_readings(ref.device_id, ref.metric)
        times = np.array([t for t, _ in stored], dtype=np.int64)
        values = np.array([v for _, v in stored])
        for bucket, (width, origin) in WIDTHS.items():
            want = expected(times, values, width, origin)
            got = bucket_rows(store, ref, bucket)
            assert [b.bucket_start for b in got] == [w["bucket_start"] for w in want], (ref, bucket)
            for g, w in zip(got, want, strict=True):
                assert g.count == w["count"]
                assert (g.min, g.max, g.first_value, g.last_value) == (
                    w["min"],
                    w["max"],
                    w["first_value"],
                    w["last_value"],
                )
                assert (g.first_time, g.last_time) == (w["first_time"], w["last_time"])
                assert g.avg == pytest.approx(w["avg"], rel=1e-12, abs=1e-9)
                if w["stddev"] is None:
                    assert g.stddev is None
                else:
                    assert g.stddev == pytest.approx(w["stddev"], rel=1e-9, abs=1e-9)
                checked += 1
    return checked


def rollup_table(conn: Connection) -> list[tuple[object, ...]]:
    return [tuple(r) for r in conn.execute(select(rollups).order_by(*rollups.primary_key.columns))]


def test_rollups_equal_numpy_with_gaps_duplicates_late_data_and_reruns(store: Store) -> None:
    rng = random.Random(5)
    on_time = random_readings(rng, START, days=9)
    write_in_batches(store, on_time)
    # Duplicates: the same (series, time) again with other values; the store keeps the first.
    write_readings(store, [(d, m, t, v + 1000) for d, m, t, v in on_time[:300]])
    refresh(store, chunk_hours=37)
    assert assert_rollups_match_readings(store) > 300

    # Late and out-of-order readings land in hours, days and weeks already rolled up.
    late = [
        (d, m, START + rng.randrange(9 * MICROS_PER_DAY) + 17, rng.uniform(-2000, 2000)) for d, m in SERIES
    ] * 20
    write_in_batches(store, late, size=13)
    result = refresh(store, chunk_hours=37)
    assert 0 < result["hours"] <= len(late)
    assert_rollups_match_readings(store)

    with store.engine.connect() as conn:
        before = rollup_table(conn)
    assert {k: v for k, v in refresh(store).items() if "seconds" not in k} == {
        "marks_taken": 0,
        "hours": 0,
        "chunks": 0,
    }
    with store.engine.connect() as conn:
        assert rollup_table(conn) == before  # not a single row rewritten

    # A replay re-marks hours it stores nothing new in: recomputed, the values stay the same.
    write_readings(store, on_time[:500])
    assert refresh(store)["hours"] > 0
    with store.engine.connect() as conn:
        again = rollup_table(conn)
    drop_updated = [row[:-1] for row in before]
    assert [row[:-1] for row in again] == drop_updated


def test_a_late_reading_corrects_its_hourly_daily_and_weekly_bucket(store: Store) -> None:
    write_readings(
        store, [("pump-1", "pressure", START + i * 60 * MICROS_PER_SECOND, 1.0) for i in range(30)]
    )
    refresh(store)
    write_readings(store, [("pump-1", "pressure", START + 90 * MICROS_PER_SECOND, 32.0)])
    refresh(store)
    with store.engine.connect() as conn:
        ref = find_series(conn, "pump-1", "pressure")
    for bucket in ("1h", "1d", "1w"):
        (only,) = bucket_rows(store, ref, bucket)
        assert (only.count, only.avg, only.max) == (31, 2.0, 32.0), bucket


def test_weeks_start_on_monday_utc(store: Store) -> None:
    sunday_night = START - 5 * 3600 * MICROS_PER_SECOND - 18 * 60 * MICROS_PER_SECOND  # Sun 23:59
    write_readings(store, [("pump-1", "pressure", sunday_night, 1.0), ("pump-1", "pressure", START, 2.0)])
    refresh(store)
    with store.engine.connect() as conn:
        ref = find_series(conn, "pump-1", "pressure")
    weeks = bucket_rows(store, ref, "1w")
    monday = START - START % MICROS_PER_DAY
    assert [w.bucket_start for w in weeks] == [monday - MICROS_PER_WEEK, monday]
    assert [w.count for w in weeks] == [1, 1]


def test_a_batch_committing_during_the_hand_over_is_rolled_up(store: Store) -> None:
    """A batch whose hour is already marked (its mark is a no-op) and that commits while
    the job takes the marks must still be in the rollup: the hand-over waits for it."""
    t0 = START
    write_readings(store, [("pump-1", "pressure", t0, 1.0)])  # hour marked, not yet rolled up
    entered, release = threading.Event(), threading.Event()

    touch_devices = store._touch_devices

    def hold_open(conn: Any, spans: Any) -> None:  # after the batch's readings and mark, before commit
        entered.set()
        release.wait(30)
        touch_devices(conn, spans)

    store._touch_devices = hold_open  # type: ignore[method-assign]
    # A first reading of a new metric rides along, as in a real batch that creates a series.
    readings = [("pressure", t0 + MICROS_PER_SECOND, 3.0), ("flow", t0, 7.0)]
    batch = WriteBatch(groups=[("pump-1", readings)], reading_count=2)
    writer = threading.Thread(target=store.write, args=(batch,))
    writer.start()
    assert entered.wait(30)
    store._touch_devices = touch_devices  # type: ignore[method-assign]
    job = threading.Thread(target=refresh, args=(store,))
    job.start()
    time.sleep(0.3)  # let the job reach the hand-over; correctness does not depend on it
    release.set()
    writer.join(30)
    job.join(60)
    refresh(store)  # whatever the first run could not see, a surviving mark brings in now
    with store.engine.connect() as conn:
        ref = find_series(conn, "pump-1", "pressure")
        assert conn.scalar(select(rollup_queue.c.series_id).limit(1)) is None
        assert conn.scalar(select(dirty_hours.c.series_id).limit(1)) is None
    (hour,) = bucket_rows(store, ref, "1h")
    assert (hour.count, hour.avg) == (2, 2.0)


def test_a_batch_writes_only_the_marks_not_already_in_place(store: Store) -> None:
    written: list[list[tuple[int, int]]] = []
    insert_marks = store._insert_dirty_hours

    def spy(conn: Any, hours: list[tuple[int, int]]) -> None:
        written.append(hours)
        insert_marks(conn, hours)

    store._insert_dirty_hours = spy  # type: ignore[method-assign]
    minute = 60 * MICROS_PER_SECOND
    write_readings(store, [("pump-1", "pressure", START + i * minute, 1.0) for i in range(3)])
    write_readings(store, [("pump-1", "pressure", START + (3 + i) * minute, 2.0) for i in range(3)])
    # The same hour again, and the next one: only the next one's mark is new.
    write_readings(store, [("pump-1", "pressure", START + i * 20 * minute, 3.0) for i in range(1, 5)])
    assert [len(hours) for hours in written] == [1, 1]
    assert refresh(store)["marks_taken"] == 2
    # Taken by the rollup job: the next batch of the same hour marks it again.
    write_readings(store, [("pump-1", "pressure", START + 7 * minute, 4.0)])
    assert [len(hours) for hours in written] == [1, 1, 1]
    refresh(store)
    with store.engine.connect() as conn:
        ref = find_series(conn, "pump-1", "pressure")
    first, second = bucket_rows(store, ref, "1h")
    assert (first.count, second.count) == (9, 2)


def test_marks_known_to_one_store_are_not_trusted_after_another_process_takes_them(
    store: Store,
) -> None:
    """Two processes on one database: the job that takes the marks may run in the other."""
    other = open_store(store.url)
    try:
        minute = 60 * MICROS_PER_SECOND
        write_readings(store, [("pump-1", "pressure", START, 1.0)])
        refresh(other)
        write_readings(store, [("pump-1", "pressure", START + minute, 3.0)])
        refresh(other)
        with store.engine.connect() as conn:
            ref = find_series(conn, "pump-1", "pressure")
        (hour,) = bucket_rows(other, ref, "1h")
        assert (hour.count, hour.avg) == (2, 2.0)
    finally:
        other.close()


def test_refresh_takes_the_queue_in_consecutive_chunks_each_hour_once(store: Store) -> None:
    # 3 series x 100 hours in chunks of 7: each chunk starts after the last one's end, so
    # every queued hour is rolled up exactly once and the chunks tile the queue.
    write_readings(
        store, [(d, m, START + h * MICROS_PER_HOUR + 5, float(h)) for d, m in SERIES for h in range(100)]
    )
    result = refresh(store, chunk_hours=7)
    assert (result["marks_taken"], result["hours"], result["chunks"]) == (300, 300, 43)  # ceil(300 / 7)
    with store.engine.connect() as conn:
        assert conn.scalar(select(rollup_queue.c.series_id).limit(1)) is None
    assert assert_rollups_match_readings(store) == 300 + 3 * 5 + 3 * 1  # hours, days, weeks


def test_rollups_stay_exact_while_the_job_takes_marks_during_ingest(store: Store) -> None:
    """Batches into the same few hours, the job taking their marks as they commit."""
    rng = random.Random(11)
    readings = [
        (d, m, START + rng.randrange(3 * MICROS_PER_HOUR) + i, rng.uniform(0, 100))
        for i in range(4000)
        for d, m in [SERIES[i % len(SERIES)]]
    ]
    done = threading.Event()
    runs = [0]
    ran = threading.Condition()

    def job() -> None:
        while not done.is_set():
            refresh(store, chunk_hours=2)
            with ran:
                runs[0] += 1
                ran.notify_all()

    worker = threading.Thread(target=job)
    worker.start()
    try:
        for first in range(0, len(readings), 97):
            write_readings(store, readings[first : first + 97])
            if first // 97 % 8 == 7:  # now and then, let the job finish a run between batches
                with ran:
                    seen = runs[0]
                    assert ran.wait_for(lambda seen=seen: runs[0] > seen, timeout=60)
    finally:
        done.set()
        worker.join(60)
    refresh(store)
    assert runs[0] >= 5
    assert assert_rollups_match_readings(store) > 3


def test_known_marks_are_forgotten_at_a_new_epoch_and_past_their_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iotpipe.store import marks

    known = marks.KnownMarks()
    keys = np.arange(5, dtype=np.int64)
    assert known.unknown(1, keys).tolist() == [0, 1, 2, 3, 4]
    known.remember(1, keys[:3])
    assert known.unknown(1, keys).tolist() == [3, 4]
    known.remember(0, keys)  # committed under an epoch a later batch has seen pass
    assert known.unknown(1, keys).tolist() == [3, 4]
    assert known.unknown(2, keys).tolist() == [0, 1, 2, 3, 4]
    monkeypatch.setattr(marks, "MAX_KNOWN", 4)
    known.remember(2, keys[:3])
    known.remember(2, keys[3:])  # 5 > 4: everything forgotten, then these two kept
    assert known.unknown(2, keys).tolist() == [0, 1, 2]
