"""The streaming detector on its own: one episode per abnormal stretch, whatever the batches."""

from __future__ import annotations

import numpy as np
import pytest

from iotpipe.analytics.detector import Episode, History, StreamingDetector, StreamingParams
from iotpipe.model import MICROS_PER_SECOND

STEP = 300 * MICROS_PER_SECOND  # one reading every five minutes
T0 = 1_767_225_600 * MICROS_PER_SECOND  # 2026-01-01 00:00 UTC
DAY = 288  # readings


def daily(n: int, seed: int = 1, noise: float = 0.3) -> np.ndarray:
    """A temperature's daily swing plus noise, at the resolution it reports."""
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * np.arange(n) / DAY
    return np.round(20 + 4 * np.sin(phase) + rng.normal(0, noise, n), 2)


def times(n: int) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * STEP


def run(
    values: np.ndarray,
    cuts: list[int] | None = None,
    series_id: int = 1,
    params: StreamingParams | None = None,
) -> list[Episode]:
    """Feed one series in time order, cut into batches at `cuts`."""
    detector = StreamingDetector(params)
    t = times(len(values))
    episodes: list[Episode] = []
    for part in np.split(np.arange(len(values)), cuts or []):
        episodes += detector.process(np.full(len(part), series_id), t[part], values[part])
    return episodes


def final(episodes: list[Episode]) -> list[tuple[int, int | None, float, float, str]]:
    """What the anomalies table ends up holding: (first reading, last one, value, score, reason)."""
    rows: dict[int, tuple[int, int | None, float, float, str]] = {}
    for e in episodes:
        if e.opened or e.time not in rows:
            rows[e.time] = (e.time, e.end_time, e.value, e.score, e.reason)
        else:
            rows[e.time] = (e.time, e.end_time, rows[e.time][2], e.score, rows[e.time][4])
    return sorted(rows.values())


def index(t: int | None) -> int | None:
    return None if t is None else (t - T0) // STEP


def found(episodes: list[Episode]) -> list[tuple[int | None, str]]:
    return [(index(first), reason) for first, _, _, _, reason in final(episodes)]


def test_a_daily_cycle_without_anomaly_raises_nothing() -> None:
    assert run(daily(6 * DAY)) == []


def test_a_new_series_climbing_its_first_daily_cycle_raises_nothing_but_a_real_jump() -> None:
    # Every 10 s (the simulator's pace) the warmup ends in minutes, while the series
    # still climbs its first day's swing: each new high of the day is beyond the range
    # seen so far. A range younger than a day is not a record's yardstick as a grown
    # one is (the old rule raised three episodes here).
    step, n = 10 * MICROS_PER_SECOND, 8640  # one day
    rng = np.random.default_rng(0)
    values = np.round(20 + 4 * np.sin(2 * np.pi * np.arange(n) / n) + rng.normal(0, 0.3, n), 2)
    t = T0 + np.arange(n, dtype=np.int64) * step
    assert StreamingDetector().process(np.full(n, 1), t, values) == []
    values[4000] += 15  # 50 sigma, far beyond the day's swing: found on the first day
    opened = [e for e in StreamingDetector().process(np.full(n, 1), t, values) if e.opened]
    assert [((e.time - T0) // step, e.reason) for e in opened] == [(4000, "spike")]


def test_a_spike_is_one_episode_with_reason_spike() -> None:
    values = daily(4 * DAY)
    values[3 * DAY] += 6  # 20 sigma
    assert found(run(values)) == [(3 * DAY, "spike")]
    (row,) = final(run(values))
    assert row[2] == values[3 * DAY]
    assert row[3] >= StreamingParams().threshold


def test_a_dip_is_reported_as_a_dip() -> None:
    values = daily(4 * DAY)
    values[3 * DAY] -= 10
    assert found(run(values)) == [(3 * DAY, "dip")]


def test_a_level_shift_is_one_episode_with_reason_level_shift() -> None:
    # Change detection starts once the daily profile is learned (two days + three).
    values = daily(7 * DAY)
    values[6 * DAY :] += 3  # 10 sigma, for good
    (row,) = final(run(values))
    start, end, _, _, reason = row
    assert reason == "level_shift"
    # Within six hours: the CUSUM is judged against its own learned tail, which the
    # baseline's error on a smooth daily swing widens (a known weakness, docs/anomalies.md).
    assert 6 * DAY <= index(start) <= 6 * DAY + 72
    assert end is not None  # closed: the shifted level is normal again


def test_after_a_shift_too_large_to_follow_the_baseline_restarts_at_the_new_level() -> None:
    # +40 (130 sigma): the level, whose steps are clipped, would take hours to climb
    # there, and its scale, range and tails would keep the gap for days; a spike of 27
    # sigma two days later would then go unseen.
    values = daily(10 * DAY)
    values[6 * DAY :] += 40
    values[8 * DAY] += 8
    (shift, spike) = final(run(values))
    assert index(shift[0]) == 6 * DAY
    # closed once the readings are normal again: the restart, 3 hours (36 readings) in
    assert shift[1] is not None and index(shift[1]) < 6 * DAY + 36
    assert (index(spike[0]), spike[4]) == (8 * DAY, "spike")


def test_a_variance_change_is_one_episode_with_reason_variance_change() -> None:
    rng = np.random.default_rng(5)
    values = daily(7 * DAY)
    values[6 * DAY : 6 * DAY + 120] += rng.normal(0, 2.0, 120)  # noise 7 times as wide, for 10 hours
    ((start, reason),) = found(run(values))
    assert 6 * DAY <= start <= 6 * DAY + 60
    assert reason == "variance_change"


def test_a_stuck_sensor_is_one_episode_for_as_long_as_it_is_stuck() -> None:
    values = daily(4 * DAY)
    values[3 * DAY : 3 * DAY + 90] = values[3 * DAY]
    row = final(run(values))[0]
    start, end, _, _, reason = row
    assert reason == "stuck"
    assert 3 * DAY < index(start) <= 3 * DAY + 6  # five identical readings of a noisy sensor are rare
    assert end is not None and index(end) >= 3 * DAY + 89


def test_a_series_that_never_varies_is_not_stuck() -> None:
    assert run(np.full(3 * DAY, 45.0)) == []


def test_nothing_is_raised_during_the_warmup() -> None:
    values = daily(DAY)
    values[100] += 10
    assert run(values) == []


def test_an_episode_still_going_at_the_end_of_a_batch_is_open() -> None:
    values = daily(3 * DAY)
    values[-3:] += 10
    episodes = run(values)
    assert [(index(e.time), e.end_time, e.opened) for e in episodes] == [(3 * DAY - 3, None, True)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_cut_anywhere_give_the_same_episodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = daily(8 * DAY, seed)
    values[2 * DAY] += 10
    values[6 * DAY : 6 * DAY + 300] += 4
    values[7 * DAY : 7 * DAY + 60] = values[7 * DAY]
    values[int(7.5 * DAY) : int(7.5 * DAY) + 40] += rng.normal(0, 2, 40)
    whole = final(run(values))
    assert len(whole) >= 3
    cuts = sorted(rng.choice(np.arange(1, len(values)), size=300, replace=False).tolist())
    assert final(run(values, cuts)) == whole
    assert final(run(values, list(range(1, len(values), 7)))) == whole  # a trickle of small batches


def test_series_in_one_batch_do_not_disturb_each_other() -> None:
    n = 3 * DAY
    a, b = daily(n, 1), daily(n, 2) + 100
    a[2 * DAY] += 9
    t = times(n)
    together = StreamingDetector().process(
        np.concatenate([np.full(n, 1), np.full(n // 2, 2)]),
        np.concatenate([t, t[: n // 2]]),
        np.concatenate([a, b[: n // 2]]),
    )
    assert [(e.series_id, index(e.time)) for e in together if e.opened] == [(1, 2 * DAY)]


def test_late_and_repeated_readings_are_not_scored_again() -> None:
    n = 3 * DAY
    values = daily(n)
    values[2 * DAY] += 9
    detector = StreamingDetector()
    t = times(n)
    first = detector.process(np.ones(n, dtype=np.int64), t, values)
    assert [index(e.time) for e in first if e.opened] == [2 * DAY]
    assert detector.process(np.ones(n, dtype=np.int64), t, values) == []
    assert detector.process(np.array([1]), np.array([t[500] + 1]), np.array([1e6])) == []


def test_within_a_batch_the_first_of_two_readings_at_one_time_counts() -> None:
    values = daily(400)
    t = times(400)
    sids = np.ones(401, dtype=np.int64)
    doubled_t = np.concatenate([t, [t[300]]])
    doubled_v = np.concatenate([values, [1e6]])  # a duplicate the store ignores
    assert StreamingDetector().process(sids, doubled_t, doubled_v) == []


def test_state_rebuilt_from_history_continues_as_if_never_stopped() -> None:
    n = 4 * DAY
    values = daily(n)
    values[3 * DAY - 4 : 3 * DAY + 4] += 8  # an episode spanning the restart
    t = times(n)
    uninterrupted = final(run(values))
    split = 3 * DAY

    before = StreamingDetector()
    episodes = before.process(np.ones(split, dtype=np.int64), t[:split], values[:split])
    open_ones = {e.series_id: (e.time, e.score) for e in episodes if e.opened and e.end_time is None}

    def loader(series_ids: np.ndarray, first_times: np.ndarray) -> History:
        return History(np.ones(split, dtype=np.int64), t[:split], values[:split], open_ones)

    after = StreamingDetector(loader=loader)
    episodes += after.process(np.ones(n - split, dtype=np.int64), t[split:], values[split:])
    assert open_ones  # the restart came in the middle of the episode
    assert final(episodes) == uninterrupted
    ((start, end, *_),) = final(episodes)
    assert index(start) == 3 * DAY - 4
    assert end is not None and index(end) >= 3 * DAY + 3


def test_beyond_max_series_the_least_recent_are_forgotten_and_rebuilt() -> None:
    loads: list[list[int]] = []

    def loader(series_ids: np.ndarray, first_times: np.ndarray) -> History:
        loads.append(sorted(series_ids.tolist()))
        empty = np.empty(0, dtype=np.int64)
        return History(empty, empty, np.empty(0), {})

    detector = StreamingDetector(StreamingParams(max_series=4), loader=loader)
    for sid in range(1, 7):
        detector.process(np.array([sid]), np.array([T0]), np.array([1.0]))
    assert detector.series_count == 4
    detector.process(np.array([1]), np.array([T0 + STEP]), np.array([1.0]))
    assert loads[-1] == [1]  # series 1 was forgotten, and is rebuilt from the store
    detector.process(np.array([4, 8, 9, 10]), np.full(4, T0 + 2 * STEP), np.ones(4))  # 4: the oldest
    assert sorted(int(s) for s in detector.sid_of if s >= 0) == [4, 8, 9, 10]
    with pytest.raises(ValueError, match="more than 4 series"):
        detector.process(np.arange(10, 15), np.full(5, T0), np.ones(5))


def test_a_batch_scored_on_two_threads_gives_what_one_thread_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch's series are split between two threads (`_kernel`): the episodes and
    every series' state come out as they do from one thread."""
    from iotpipe.analytics import detector as detector_module

    series, n = 40, 2 * DAY
    rng = np.random.default_rng(5)
    sids = np.repeat(np.arange(1, series + 1), n)
    values = np.concatenate([daily(n, seed) for seed in range(series)])
    for k in range(0, series, 3):  # spikes and shifts in some series, on both threads' sides
        values[k * n + DAY + int(rng.integers(0, DAY))] += 12
    t = np.tile(times(n), series)

    def scored(parallel_from: int) -> tuple[list[tuple[int, int, bool, str]], list[bytes]]:
        monkeypatch.setattr(detector_module, "PARALLEL_READINGS", parallel_from)
        detector = StreamingDetector()
        episodes = detector.process(sids, t, values)
        return [(e.series_id, e.time, e.opened, e.reason) for e in episodes], [
            detector._pack(int(slot)) for slot in np.flatnonzero(detector.sid_of >= 0)
        ]

    threads: list[str] = []
    submit = detector_module.ThreadPoolExecutor.submit

    def counting_submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(self._thread_name_prefix)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(detector_module.ThreadPoolExecutor, "submit", counting_submit)
    two = scored(parallel_from=1)
    assert threads == ["iotpipe-detector"]  # the split happened
    one = scored(parallel_from=10**12)
    assert threads == ["iotpipe-detector"]
    assert len([e for e in one[0] if e[2]]) >= series // 3
    assert two == one
