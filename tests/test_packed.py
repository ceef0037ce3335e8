"""The packed tier: exact read-back, exactly-once across tiers, compaction, historical writes."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.analytics.common import find_series
from iotpipe.analytics.rollups import bucket_rows, refresh
from iotpipe.app.maintenance import pack_before
from iotpipe.config import StorageSettings
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    WriteBatch,
    day_start,
    now_micros,
)
from iotpipe.store import Store
from iotpipe.store.packed import decode_times, decode_values, encode_days, encode_times, encode_values
from iotpipe.store.tiers import pg_array
from tests.analytics.support import write_readings
from tests.servers import PostgresServer

TODAY = day_start(now_micros())
OLD_DAY = TODAY - 10 * MICROS_PER_DAY  # well past the default hot window
EVERYTHING = TODAY  # compact(before=TODAY) packs every day before today
_devices = itertools.count()


def _bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def _series_id(store: Store, device_id: str, metric: str) -> int:
    with store.engine.connect() as conn:
        return find_series(conn, device_id, metric).series_id


# -- the codec ------------------------------------------------------------------------------
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=100, unique=True),
    st.lists(finite | st.decimals(-1e6, 1e6, places=3).map(float), min_size=100, max_size=100),
)
def test_codec_gives_back_every_time_and_value_bit_for_bit(times: list[int], values: list[float]) -> None:
    t = np.array(sorted(times), dtype=np.int64)
    v = np.array(values[: len(t)], dtype=np.float64)
    assert decode_times(encode_times(t), len(t)).tolist() == t.tolist()
    assert _bits(decode_values(encode_values(v), len(v))) == _bits(v)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(-(2**50), 2**50), min_size=1, max_size=30, unique=True),
            st.sampled_from([1, 1_000, 60_000_000]),  # µs, ms and minute-aligned times
            st.lists(
                finite
                | st.decimals(-1e6, 1e6, places=2).map(float)
                | st.sampled_from([0.0, -0.0, 5e-324, 1e300, 0.1]),
                min_size=30,
                max_size=30,
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_many_series_days_encoded_at_once_are_the_bytes_of_each_encoded_alone(
    days: list[tuple[list[int], int, list[float]]],
) -> None:
    """encode_days (a historical import's thousands of series-days in one pass) writes the
    very blobs encode_times and encode_values write for each day."""
    times = [np.array(sorted(t), dtype=np.int64) * unit for t, unit, _ in days]
    values = [
        np.array(v[: len(t)], dtype=np.float64) for t, v in zip(times, (v for _, _, v in days), strict=True)
    ]
    starts = np.cumsum([0] + [len(t) for t in times[:-1]])
    together = encode_days(np.concatenate(times), np.concatenate(values), starts)
    assert together == [(encode_times(t), encode_values(v)) for t, v in zip(times, values, strict=True)]


def test_codec_keeps_negative_zero_and_the_extremes() -> None:
    values = np.array([-0.0, 0.0, 5e-324, -1.7976931348623157e308, 0.1, 1e300])
    assert _bits(decode_values(encode_values(values), len(values))) == _bits(values)


def test_a_regular_series_at_a_tenth_packs_below_a_byte_per_reading() -> None:
    rng = np.random.default_rng(3)
    times = OLD_DAY + np.arange(1440, dtype=np.int64) * 60 * MICROS_PER_SECOND
    values = np.round(20 + np.cumsum(rng.normal(0, 0.1, 1440)), 1)
    size = len(encode_times(times)) + len(encode_values(values))
    assert size / 1440 < 1.0


# -- read-back through both tiers -----------------------------------------------------------
reading = st.tuples(
    st.sampled_from(["t", "h"]),
    st.integers(0, 12 * MICROS_PER_DAY - 1),  # twelve days ending before yesterday
    # x + 0.0 turns -0.0 into 0.0: SQLite's REAL column (the hot table) stores -0.0 as 0
    # (the packed tier keeps it: see test_codec_keeps_negative_zero_and_the_extremes).
    finite.map(lambda x: x + 0.0) | st.integers(-1000, 1000).map(lambda n: n / 10),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=st.lists(reading, min_size=1, max_size=60), late=st.lists(reading, max_size=20))
def test_a_value_read_back_is_the_value_stored(store: Store, first: list, late: list) -> None:
    device = f"dev-{next(_devices)}"
    base = TODAY - 14 * MICROS_PER_DAY
    expected: dict[tuple[str, int], float] = {}
    for readings in (first, late):
        for metric, offset, value in readings:
            expected.setdefault((metric, base + offset), value)  # the first stored wins
        write_readings(store, [(device, m, base + o, v) for m, o, v in readings])
        store.compact(EVERYTHING, step_readings=7)
    for metric in {m for m, _ in expected}:
        times, values = store.read_series(_series_id(store, device, metric))
        want = sorted((t, v) for (m, t), v in expected.items() if m == metric)
        assert times.tolist() == [t for t, _ in want]
        assert _bits(values) == _bits(np.array([v for _, v in want]))


def test_reads_see_hot_and_packed_readings_as_one_series(store: Store) -> None:
    old = [("d", "t", OLD_DAY + i * MICROS_PER_HOUR, float(i)) for i in range(48)]
    recent = [("d", "t", TODAY + i * MICROS_PER_SECOND, 100.0 + i) for i in range(3)]
    write_readings(store, old + recent)
    result = store.compact(EVERYTHING, step_readings=10)
    assert result["days"] == 2 and result["readings"] == 48
    sid = _series_id(store, "d", "t")
    times, _values = store.read_series(sid)
    assert times.tolist() == [t for _, _, t, _ in old + recent]
    assert store.read_series(sid, OLD_DAY + 23 * MICROS_PER_HOUR, OLD_DAY + 25 * MICROS_PER_HOUR)[
        1
    ].tolist() == [
        23.0,
        24.0,
    ]
    newest, _ = store.last_readings(sid, 5)
    assert newest.tolist() == [
        TODAY + 2 * MICROS_PER_SECOND,
        TODAY + MICROS_PER_SECOND,
        TODAY,
        old[-1][2],
        old[-2][2],
    ]
    before, _ = store.last_readings(sid, 2, before=OLD_DAY + MICROS_PER_DAY)
    assert before.tolist() == [OLD_DAY + 23 * MICROS_PER_HOUR, OLD_DAY + 22 * MICROS_PER_HOUR]
    assert store.series_span(sid) == (OLD_DAY, TODAY + 2 * MICROS_PER_SECOND)
    stats = store.stats()
    assert stats["readings"] == 51
    assert stats["tiers"]["hot"]["readings"] == 3 and stats["tiers"]["packed"]["readings"] == 48


def test_api_store_reads_answer_the_same_before_and_after_compaction(store: Store) -> None:
    # Two metrics of one device over three old days: "t" every 10 minutes, "h" every 15
    # (entries share a time every 30 minutes); values in quarters, so every sum is exact.
    minutes = 10 * 60 * MICROS_PER_SECOND
    old = [("e", "t", OLD_DAY + i * minutes, (i % 50) / 4) for i in range(3 * 144)]
    old += [("e", "h", OLD_DAY + i * minutes * 3 // 2, -(i % 30) / 4) for i in range(3 * 96)]
    recent = [("e", "t", TODAY + i * MICROS_PER_SECOND, 100.0 + i) for i in range(3)]
    write_readings(store, old + recent)
    sids = [_series_id(store, "e", "t"), _series_id(store, "e", "h")]
    day1, day2 = OLD_DAY + MICROS_PER_DAY, OLD_DAY + 2 * MICROS_PER_DAY
    cut = day1 + 7 * MICROS_PER_HOUR + 5 * MICROS_PER_SECOND  # inside a packed day

    def reads() -> dict[str, object]:
        both = ["t", "h"]
        return {
            "raw first 7": store.raw_readings("e", "t", cut, None, 7),
            "raw first 500 to today": store.raw_readings("e", "t", OLD_DAY, TODAY + 1, 500),
            "raw all": store.raw_readings("e", "t"),
            "count across days": store.reading_count("e", "t", cut, day2 + MICROS_PER_HOUR),
            "count all": store.reading_count("e", "t", OLD_DAY, TODAY + MICROS_PER_DAY),
            "buckets": store.reading_buckets("e", "h", cut, TODAY + MICROS_PER_DAY, 5 * MICROS_PER_HOUR),
            "latest": store.latest_readings("e"),
            "entries newest 5": store.device_entries("e", both, None, day2, 5, newest=True),
            "entries oldest 5": store.device_entries("e", both, cut, None, 5),
            "entries in range": store.device_entries("e", both, cut, day2),
            "entries all": store.device_entries("e", both),
            "count entries": store.count_entries("e", both),
            "count entries before": store.count_entries("e", both, before=cut),
            "count one metric": store.count_entries("e", ["h"], before=cut),
            "backfill": store.readings_since(sids, cut, 9),
            "backfill all": store.readings_since(sids, OLD_DAY, 10_000),
        }

    before = reads()
    assert before["count all"] == 3 * 144 + 3
    assert before["count entries"] == 3 * 144 + 3 * 48 + 3  # t's times, h's between them, recent
    assert [t for t, _ in before["entries oldest 5"]] == [
        day1 + 7 * MICROS_PER_HOUR + m * minutes // 2 for m in (2, 3, 4, 6, 8)
    ]
    assert store.compact(EVERYTHING, step_readings=100)["readings"] == len(old)
    assert store.stats()["tiers"]["hot"]["readings"] == 3
    assert reads() == before


def test_compaction_leaves_the_hot_window_alone_and_runs_in_steps(store: Store) -> None:
    now = now_micros()
    before = pack_before(StorageSettings(hot_days=2), now)
    assert before == day_start(now) - 2 * MICROS_PER_DAY
    readings = [
        ("d", m, before - 3 * MICROS_PER_DAY + i * 60 * MICROS_PER_SECOND, i / 10)
        for m in "ab"
        for i in range(4320)
    ]
    readings += [("d", "a", before + i * MICROS_PER_HOUR, 1.0) for i in range(30)]  # still hot
    for chunk in range(0, len(readings), 2000):
        write_readings(store, readings[chunk : chunk + 2000])
    result = store.compact(before, step_readings=1000)
    assert result == {"series": 2, "days": 6, "readings": 8640, "steps": 6, "finished": True}
    assert store.stats()["tiers"]["hot"]["readings"] == 30
    assert store.compact(before, step_readings=1000)["days"] == 0  # nothing left to pack


# -- exactly once across tiers --------------------------------------------------------------
def test_late_reading_into_a_packed_day_is_stored_once_and_corrects_its_rollups(store: Store) -> None:
    hour = OLD_DAY + 5 * MICROS_PER_HOUR
    write_readings(store, [("pump", "p", hour + i * 600 * MICROS_PER_SECOND, 10.0) for i in range(6)])
    refresh(store)
    store.compact(EVERYTHING, step_readings=100)
    assert store.stats()["tiers"]["packed"]["readings"] == 6

    late = WriteBatch()
    late.groups.append(("pump", [("p", hour + 30 * MICROS_PER_SECOND, 40.0), ("p", hour, 99.0)]))
    late.reading_count = 2
    result = store.write(late)  # one new reading, and one the packed day already holds
    assert (result.stored, result.duplicates) == (1, 1)
    refresh(store)
    with store.engine.connect() as conn:
        ref = find_series(conn, "pump", "p")
    [bucket] = bucket_rows(store, ref, "1h", hour, hour + MICROS_PER_HOUR)
    assert bucket.count == 7
    assert bucket.avg == pytest.approx(100.0 / 7)
    assert (bucket.min, bucket.max, bucket.first_value) == (10.0, 40.0, 10.0)
    [day] = bucket_rows(store, ref, "1d", OLD_DAY, OLD_DAY + MICROS_PER_DAY)
    assert day.count == 7

    assert store.write(late).stored == 0  # replayed again: both held (one hot, one packed)
    store.compact(EVERYTHING, step_readings=100)  # the day is re-packed with its late reading
    stats = store.stats()
    assert stats["tiers"]["packed"]["readings"] == 7 and stats["tiers"]["hot"]["readings"] == 0
    _times, values = store.read_series(ref.series_id)
    assert values.tolist() == [10.0, 40.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert store.write(late).stored == 0


def test_a_fleet_of_packed_series_is_checked_and_rolled_up_whole(store: Store) -> None:
    # More series than one IN list used to hold: their ids go to the database as one value.
    fleet = 1200
    rows = [(f"s{n}", "v", OLD_DAY + h * MICROS_PER_HOUR, float(n)) for n in range(fleet) for h in range(2)]
    write_readings(store, rows)
    store.compact(EVERYTHING, step_readings=1_000_000)
    assert store.stats()["tiers"]["packed"]["readings"] == 2 * fleet

    replay = WriteBatch()  # every packed reading again, and one new reading per series
    replay.groups = [(device, [(metric, t, v)]) for device, metric, t, v in rows]
    replay.groups += [(f"s{n}", [("v", OLD_DAY + 30 * MICROS_PER_SECOND, n + 0.5)]) for n in range(fleet)]
    replay.reading_count = 3 * fleet
    result = store.write(replay)
    assert (result.stored, result.duplicates) == (fleet, 2 * fleet)

    refresh(store)
    for n in (0, 499, 500, fleet - 1):
        with store.engine.connect() as conn:
            ref = find_series(conn, f"s{n}", "v")
        [first, second] = bucket_rows(store, ref, "1h", OLD_DAY, OLD_DAY + 2 * MICROS_PER_HOUR)
        assert (first.count, first.avg, first.max) == (2, n + 0.25, n + 0.5)
        assert (second.count, second.avg) == (1, float(n))


def test_historical_readings_go_straight_into_the_packed_tier_once(store: Store) -> None:
    readings = [("m", "e", OLD_DAY + i * 90 * MICROS_PER_SECOND, math.sin(i)) for i in range(2000)]
    recent = ("m", "e", TODAY + MICROS_PER_SECOND, 1.5)

    def historical(rows: list) -> WriteBatch:
        batch = WriteBatch(pack_before=TODAY - MICROS_PER_DAY)
        for device, metric, t, v in rows:
            batch.groups.append((device, [(metric, t, v)]))
            batch.reading_count += 1
        return batch

    write_readings(store, readings[1000:1100])  # some of the history was imported hot before
    first = store.write(historical([*readings[:1500], recent]))
    assert (first.stored, first.duplicates) == (1401, 100)
    second = store.write(historical([*readings, recent]))  # a re-import, with 500 more
    assert (second.stored, second.duplicates) == (500, 1501)
    stats = store.stats()["tiers"]
    assert stats["packed"]["readings"] == 2000 and stats["hot"]["readings"] == 1
    times, values = store.read_series(_series_id(store, "m", "e"))
    assert _bits(values) == _bits(np.array([v for *_, v in readings] + [1.5]))
    assert times.tolist() == [t for _, _, t, _ in readings] + [TODAY + MICROS_PER_SECOND]


def test_packed_blob_header_names_its_codec() -> None:
    blob = encode_values(np.array([1.5, 2.5]))
    codec, _width, places = struct.unpack_from("<BBq", blob)
    assert (codec, places) == (2, 1)


@settings(max_examples=60, deadline=None)
@given(
    floats=st.lists(st.one_of(st.none(), finite), max_size=40),
    ints=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
)
def test_numbers_sent_as_one_array_literal_come_back_bit_for_bit(
    postgres: PostgresServer, floats: list[float | None], ints: list[int]
) -> None:
    # The rollup job and the write path pass their columns to PostgreSQL this way.
    with psycopg.connect(postgres.url()) as conn:
        got_floats, got_ints = conn.execute(
            "SELECT %s::float8[], %s::int8[]", (pg_array(floats), pg_array(ints))
        ).fetchone()
    assert [None if v is None else struct.pack("<d", v) for v in got_floats] == [
        None if v is None else struct.pack("<d", v) for v in floats
    ]
    assert got_ints == ints
