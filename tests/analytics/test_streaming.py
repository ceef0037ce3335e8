"""The streaming detector on its own: one episode per abnormal stretch, whatever the batches."""

from __future__ import annotations

import numpy as np
import pytest

from iotpipe.analytics.streaming import Episode, History, StreamingDetector, StreamingParams
from iotpipe.model import MICROS_PER_SECOND

STEP = 5 * MICROS_PER_SECOND
T0 = 1_767_225_600 * MICROS_PER_SECOND


def temperature(n: int, seed: int = 1) -> np.ndarray:
    """A sensor's daily swing plus noise, at the resolution it reports."""
    rng = np.random.default_rng(seed)
    return np.round(20 + 3 * np.sin(np.arange(n) / 700) + rng.normal(0, 0.3, n), 2)


def times(n: int) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * STEP


def run(values: np.ndarray, cuts: list[int] | None = None, series_id: int = 1) -> list[Episode]:
    """Feed one series in time order, cut into batches at `cuts`."""
    detector = StreamingDetector()
    t = times(len(values))
    episodes: list[Episode] = []
    for part in np.split(np.arange(len(values)), cuts or []):
        episodes += detector.process(np.full(len(part), series_id), t[part], values[part])
    return episodes


def final(episodes: list[Episode]) -> list[tuple[int, int | None, float, float]]:
    """What the anomalies table ends up holding: (first reading, last one, value, score)."""
    rows: dict[int, tuple[int, int | None, float, float]] = {}
    for e in episodes:
        if e.opened or e.time not in rows:
            rows[e.time] = (e.time, e.end_time, e.value, e.score)
        else:
            rows[e.time] = (e.time, e.end_time, rows[e.time][2], e.score)
    return sorted(rows.values())


def index(t: int | None) -> int | None:
    return None if t is None else (t - T0) // STEP


def spans(episodes: list[Episode]) -> list[tuple[int | None, int | None]]:
    return [(index(first), index(last)) for first, last, _, _ in final(episodes)]


def test_a_clean_noisy_signal_raises_nothing() -> None:
    assert run(temperature(20_000)) == []


def test_a_spike_is_one_episode_that_closes_after_it() -> None:
    values = temperature(1000)
    values[600] += 8  # ~27 sigma
    assert spans(run(values)) == [(600, 601)]  # the spike, and the step back down from it
    first = final(run(values))[0]
    assert first[2] == values[600]
    assert first[3] > 6


def test_a_level_shift_is_one_episode_until_it_becomes_the_new_normal() -> None:
    values = temperature(2000)
    values[800:] += 5
    (episode,) = spans(run(values))
    start, end = episode
    assert start == 800
    assert end is not None and 800 < end < 800 + 128  # no later than a window


def test_a_stuck_sensor_is_one_episode_for_as_long_as_it_is_stuck() -> None:
    values = temperature(1500)
    values[700:790] = values[700]
    ((start, end),) = spans(run(values))
    assert 700 < start <= 705  # five identical readings of a noisy sensor are already rare
    assert end is not None and end >= 789


def test_a_noise_burst_on_a_smooth_signal_is_caught_by_the_steps() -> None:
    rng = np.random.default_rng(3)
    smooth = np.round(50 + 10 * np.sin(np.arange(3000) / 300) + rng.normal(0, 0.05, 3000), 3)
    smooth[2000:2012] += rng.normal(0, 1.5, 12)  # values stay well inside the swing
    ((start, end),) = spans(run(smooth))
    assert 2000 <= start <= 2002
    assert end is not None and end >= 2010


def test_an_episode_still_going_at_the_end_of_a_batch_is_open() -> None:
    values = temperature(1000)
    values[997:] += 10
    episodes = run(values)
    assert [(index(e.time), e.end_time, e.opened) for e in episodes] == [(997, None, True)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_cut_anywhere_give_the_same_episodes(seed: int) -> None:
    values = temperature(6000, seed)
    values[1000] += 9
    values[2500:2600] += 4
    values[4000:4060] = values[4000]
    values[5000:5020] += np.random.default_rng(seed).normal(0, 3, 20)
    whole = final(run(values))
    assert len(whole) >= 4
    rng = np.random.default_rng(seed)
    random_cuts = sorted(rng.choice(np.arange(1, 6000), size=300, replace=False).tolist())
    assert final(run(values, random_cuts)) == whole
    assert final(run(values, list(range(1, 6000)))) == whole  # one reading at a time


def test_series_in_one_batch_do_not_disturb_each_other() -> None:
    a, b = temperature(3000, 1), temperature(3000, 2) + 100
    a[1500] += 9
    t = times(3000)
    together = StreamingDetector().process(
        np.concatenate([np.full(3000, 1), np.full(3000, 2)]), np.concatenate([t, t]), np.concatenate([a, b])
    )
    assert [(e.series_id, index(e.time)) for e in together if e.opened] == [(1, 1500)]


def test_late_and_repeated_readings_are_not_scored_again() -> None:
    values = temperature(1000)
    values[600] += 9
    detector = StreamingDetector()
    t = times(1000)
    first = detector.process(np.ones(1000, dtype=np.int64), t, values)
    assert [index(e.time) for e in first if e.opened] == [600]
    # A replay of the same readings, and a late one far off the scale: both in the past.
    assert detector.process(np.ones(1000, dtype=np.int64), t, values) == []
    assert detector.process(np.array([1]), np.array([t[500] + 1]), np.array([1e6])) == []


def test_within_a_batch_the_first_of_two_readings_at_one_time_counts() -> None:
    values = temperature(400)
    t = times(400)
    sids = np.ones(401, dtype=np.int64)
    doubled_t = np.concatenate([t, [t[300]]])
    doubled_v = np.concatenate([values, [1e6]])  # a duplicate the store ignores
    assert StreamingDetector().process(sids, doubled_t, doubled_v) == []


def test_state_rebuilt_from_history_continues_as_if_never_stopped() -> None:
    values = temperature(4000)
    values[2996:3004] += 6  # an episode spanning the restart
    t = times(4000)
    uninterrupted = final(run(values))

    before = StreamingDetector()
    episodes = before.process(np.ones(3000, dtype=np.int64), t[:3000], values[:3000])
    open_ones = {e.series_id: (e.time, e.score) for e in episodes if e.opened and e.end_time is None}

    def loader(series_ids: np.ndarray, first_times: np.ndarray) -> History:
        depth = StreamingParams().window + 8 * StreamingParams().refresh
        past = slice(3000 - depth, 3000)
        return History(np.ones(depth, dtype=np.int64), t[past], values[past], open_ones)

    after = StreamingDetector(loader=loader)
    episodes += after.process(np.ones(1000, dtype=np.int64), t[3000:], values[3000:])
    assert open_ones  # the restart came in the middle of the episode
    assert final(episodes) == uninterrupted
    ((start, end),) = spans(episodes)
    assert start == 2996
    assert end is not None and end >= 3003


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
    # A batch of known and new series: the known ones are not evicted to make room.
    detector.process(np.array([4, 8, 9, 10]), np.full(4, T0 + 2 * STEP), np.ones(4))  # 4: the oldest
    assert sorted(int(s) for s in detector.sid_of if s >= 0) == [4, 8, 9, 10]
    with pytest.raises(ValueError, match="more than 4 series"):
        detector.process(np.arange(10, 15), np.full(5, T0), np.ones(5))
