"""Streaming anomaly detection: every stored reading is scored against its series' recent past.

The detector keeps, per series, its last `window` values and a baseline made of them:
the recent level (median of the window's last eighth), robust spreads (5-95 % quantile
range) of the values, of the steps between consecutive values and of the differences
half a window apart, how fast the series wanders, and how often a value repeats. A
reading's score is the largest of three robust z-scores:

- level: |x - level| / spread, the spread widened by the series' wander since the
  baseline was computed — spikes, level shifts, drift faster than the window;
- step: |(x - previous) - median step| / step spread — the same plus noise bursts on
  smooth signals, whose values stay in range but jump from one reading to the next;
- stuck: how long a run of identical values has lasted, against the length that chance
  reaches once in 1 / stuck_chance readings given how often the series repeats a value
  (and at least stuck_min): the score crosses the threshold at that length.

Quantiles shrug off the few outliers in the window, and a level shift becomes the new
normal once the window has taken it in, so the detector follows real sensors instead
of alarming forever. Abnormal readings (score >= threshold) are grouped into episodes:
the first opens one, `calm` normal readings in a row close it. One anomaly row per
episode: its first reading, the peak score, and end_time once closed.

Determinism is what makes an import yield the anomalies a live stream would: each
series is processed in time order, and a reading's verdict depends only on the
readings before it — never on how they were cut into batches. Where the baseline is
recomputed is chosen by the readings themselves (see `_baselines`). Readings older than
a series' newest one (late, out of order, replayed) are stored but not scored here; the
batch z-score job covers them.

State lives in columnar numpy arrays (one row per series, the last values in a ring),
so a batch is scored with a few vectorised operations whatever its number of series;
Python loops only over the rare abnormal readings. After a restart (or an LRU
eviction) a series' state is rebuilt from its last readings in the store and its open
episode from the anomalies table.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from iotpipe.config import Settings, StreamingDetectorSettings
from iotpipe.model import Micros, WriteBatch, WriteResult, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import anomalies, series

log = logging.getLogger(__name__)

METHOD = "streaming"
_TAIL = 0.05  # spreads are measured between the 5 % and 95 % quantiles...
_TAIL_WIDTH = 2 * 1.6449  # ...which a normal distribution puts this many stddevs apart
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads timestamps over the hash space
_NO_TIME = np.iinfo(np.int64).min
# Baseline columns: level median and spread, step median and spread, the length a run of
# identical values is stuck at, and how much variance the level gains per reading as
# the baseline ages (the series' wander).
_CENTER, _SCALE, _STEP_CENTER, _STEP_SCALE, _STUCK_RUN, _WANDER = range(6)
_BASELINE = 6


@dataclass(frozen=True, slots=True)
class StreamingParams:
    window: int = 128
    refresh: int = 64
    threshold: float = 6.0
    calm: int = 5
    stuck_min: int = 5
    stuck_chance: float = 1e-5
    max_series: int = 100_000

    @classmethod
    def from_settings(cls, settings: StreamingDetectorSettings) -> StreamingParams:
        return cls(
            window=settings.window,
            refresh=settings.refresh,
            threshold=settings.threshold,
            calm=settings.calm,
            stuck_min=settings.stuck_min,
            stuck_chance=settings.stuck_chance,
            max_series=settings.max_series,
        )


@dataclass(slots=True)
class Episode:
    """An abnormal episode of one series, as one row of the anomalies table."""

    series_id: int
    time: Micros  # its first abnormal reading
    value: float  # that reading's value
    score: float  # the first reading's score while open; the peak once closed
    end_time: Micros | None  # its last abnormal reading, once closed
    opened: bool  # opened in this batch (a new row) rather than closing an earlier one


@dataclass(slots=True)
class History:
    """What the store knows of series the detector has no state for."""

    series_ids: np.ndarray  # int64, one entry per reading
    times: np.ndarray  # int64
    values: np.ndarray  # float64
    open_episodes: dict[int, tuple[Micros, float]]  # series_id -> (time, score) of its open episode


# (series ids, time of each one's first new reading) -> its readings before that time.
HistoryLoader = Callable[[np.ndarray, np.ndarray], History]


class StreamingDetector:
    """Scores readings per series in time order; emits episode openings and closings.

    Pure computation on arrays: `StreamingAnomalies` connects it to a store.
    """

    # One row per series, see _COLUMNS; history is (rows, window) rings, baseline (6, rows).
    sid_of: np.ndarray
    count: np.ndarray
    last_time: np.ndarray
    run: np.ndarray
    run_limit: np.ndarray
    episode_open: np.ndarray
    episode_time: np.ndarray
    episode_value: np.ndarray
    episode_peak: np.ndarray
    last_abnormal: np.ndarray
    calm: np.ndarray
    used: np.ndarray
    history: np.ndarray
    baseline: np.ndarray
    baseline_age: np.ndarray
    refresh_phase: np.ndarray

    def __init__(self, params: StreamingParams | None = None, loader: HistoryLoader | None = None) -> None:
        self.params = params or StreamingParams()
        self.loader = loader
        self.evicted_any = False  # once true, a series first seen may be one evicted earlier
        self._slot_of = np.full(1024, -1, dtype=np.int64)  # series id -> state row, -1: none
        self._series_count = 0
        self._free: list[int] = []
        self._clock = 0  # batches seen, for LRU eviction
        self._capacity = 0
        self._allocate(min(1024, self.params.max_series))

    # -- state ----------------------------------------------------------------------------
    # name -> (fill of an empty row, dtype)
    _COLUMNS: ClassVar[dict[str, tuple[object, type]]] = {
        "sid_of": (-1, np.int64),
        "count": (0, np.int64),  # readings seen
        "last_time": (_NO_TIME, np.int64),
        "run": (0, np.int64),  # identical values in a row, ending with the last one
        "run_limit": (np.nan, np.float64),  # the run length that is stuck, as of the run's start
        "episode_open": (False, np.bool_),
        "episode_time": (0, np.int64),
        "episode_value": (np.nan, np.float64),
        "episode_peak": (np.nan, np.float64),
        "last_abnormal": (_NO_TIME, np.int64),
        "calm": (0, np.int64),  # normal readings since the last abnormal one
        "baseline_age": (0, np.int64),  # readings since the baseline was computed
        "refresh_phase": (0, np.int64),  # readings since the last point a refresh was due
        "used": (0, np.int64),  # batch clock when last seen
    }

    def _allocate(self, capacity: int) -> None:
        """Grow the per-series arrays to `capacity` rows; new rows are free and empty."""
        old = self._capacity
        for name, (fill, dtype) in self._COLUMNS.items():
            column: np.ndarray = np.full(capacity, fill, dtype=dtype)
            if old:
                column[:old] = getattr(self, name)
            setattr(self, name, column)
        history = np.full((capacity, self.params.window), np.nan)  # rings of the last values
        baseline = np.full((_BASELINE, capacity), np.nan)
        if old:
            history[:old] = self.history
            baseline[:, :old] = self.baseline
        self.history, self.baseline = history, baseline
        self._free.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity

    def _reset(self, slots: np.ndarray) -> None:
        self.history[slots] = np.nan
        self.count[slots] = 0
        self.last_time[slots] = _NO_TIME
        self.baseline[:, slots] = np.nan
        self.run[slots] = 0
        self.run_limit[slots] = np.nan
        self.episode_open[slots] = False
        self.last_abnormal[slots] = _NO_TIME
        self.calm[slots] = 0
        self.baseline_age[slots] = 0
        self.refresh_phase[slots] = 0

    @property
    def series_count(self) -> int:
        return self._series_count

    def _slots_for(self, series_ids: np.ndarray, first_times: np.ndarray) -> np.ndarray:
        """Each series' state row, creating (and rebuilding from the store) missing ones."""
        if len(series_ids) and series_ids.max() >= len(self._slot_of):
            grown = np.full(max(2 * len(self._slot_of), int(series_ids.max()) + 1), -1, dtype=np.int64)
            grown[: len(self._slot_of)] = self._slot_of
            self._slot_of = grown
        slots = self._slot_of[series_ids]
        missing = np.flatnonzero(slots < 0)
        self.used[slots[slots >= 0]] = self._clock  # in this batch: not to be evicted for it
        if len(missing):
            slots[missing] = self._take_slots(series_ids[missing])
            if self.loader is not None:
                self._rebuild(series_ids[missing], slots[missing], first_times[missing])
        self.used[slots] = self._clock
        return slots

    def _take_slots(self, series_ids: np.ndarray) -> np.ndarray:
        needed = len(series_ids)
        if needed > len(self._free):
            limit = self.params.max_series
            if self._capacity < limit:
                self._allocate(min(limit, max(self._capacity * 2, self._capacity + needed)))
            if needed > len(self._free):
                self._evict(needed - len(self._free))
        taken = np.array([self._free.pop() for _ in range(needed)], dtype=np.int64)
        self._reset(taken)
        self._slot_of[series_ids] = taken
        self._series_count += needed
        self.sid_of[taken] = series_ids
        return taken

    def _evict(self, wanted: int) -> None:
        """Forget the least recently seen series (not those of the current batch)."""
        candidates = np.flatnonzero((self.sid_of >= 0) & (self.used < self._clock))
        if len(candidates) < wanted:
            raise ValueError(
                f"a batch holds more than {self.params.max_series} series; raise "
                "anomalies.streaming.max_series or lower pipeline.batch_size"
            )
        oldest = candidates[np.argsort(self.used[candidates], kind="stable")[:wanted]]
        self.evicted_any = True
        self._slot_of[self.sid_of[oldest]] = -1
        self.sid_of[oldest] = -1
        self._series_count -= len(oldest)
        self._free.extend(oldest.tolist())

    def _rebuild(self, series_ids: np.ndarray, slots: np.ndarray, first_times: np.ndarray) -> None:
        """Warm new state rows up on the series' stored past; take open episodes from the store."""
        assert self.loader is not None
        history = self.loader(series_ids, first_times)
        if len(history.values):
            order = np.lexsort((history.times, history.series_ids))
            sids = history.series_ids[order]
            index = {sid: i for i, sid in enumerate(series_ids.tolist())}
            bounds = np.flatnonzero(np.diff(sids)) + 1
            heads = np.concatenate(([0], bounds))
            counts = np.diff(np.concatenate((heads, [len(sids)])))
            own = np.array([slots[index[s]] for s in sids[heads].tolist()], dtype=np.int64)
            self._score(own, counts, history.times[order], history.values[order], emit=False)
        for sid, slot in zip(series_ids.tolist(), slots.tolist(), strict=True):
            # The store is the authority on which episode is open; the replay knows its
            # peak so far (the stored score is its first reading's) when it saw it open.
            known = history.open_episodes.get(sid)
            replayed = (
                bool(self.episode_open[slot]) and known is not None and self.episode_time[slot] == known[0]
            )
            self.episode_open[slot] = known is not None
            if known is not None:
                self.episode_time[slot] = known[0]
                self.episode_peak[slot] = max(known[1], self.episode_peak[slot]) if replayed else known[1]
                self.last_abnormal[slot] = max(int(self.last_abnormal[slot]), known[0])

    # -- scoring --------------------------------------------------------------------------
    def process(self, series_ids: np.ndarray, times: np.ndarray, values: np.ndarray) -> list[Episode]:
        """Score a batch of readings of any series, in any order; return episode changes."""
        if not len(values):
            return []
        self._clock += 1
        sids = np.asarray(series_ids, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        sids, times, values = _by_series_and_time(sids, times, values)
        fresh = np.ones(len(sids), dtype=bool)
        fresh[1:] = (sids[1:] != sids[:-1]) | (times[1:] != times[:-1])
        heads = np.flatnonzero(np.concatenate(([True], sids[1:] != sids[:-1])))
        slots = self._slots_for(sids[heads], times[heads])
        counts = np.diff(np.append(heads, len(sids)))
        fresh &= times > self.last_time[np.repeat(slots, counts)]  # late readings are not scored
        if not fresh.all():
            sids, times, values = sids[fresh], times[fresh], values[fresh]
            counts = np.add.reduceat(fresh, heads)
            slots, counts = slots[counts > 0], counts[counts > 0]
        if not len(values):
            return []
        return self._score(slots, counts, times, values, emit=True)

    def _score(
        self, slots: np.ndarray, counts: np.ndarray, times: np.ndarray, values: np.ndarray, emit: bool
    ) -> list[Episode]:
        """The vectorised core: `counts[i]` readings of the series in state row `slots[i]`,
        grouped by series and in time order, all newer than what the rows have seen."""
        p = self.params
        window = p.window
        total = len(values)
        series_count = len(slots)
        reading = np.arange(total)
        starts = np.zeros(series_count, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        series_of = np.repeat(np.arange(series_count), counts)
        nth = reading - starts[series_of]  # position among the series' new readings
        first = nth == 0

        seen = self.count[slots]  # readings each series had before this batch
        seen_before = seen[series_of] + nth  # the reading's place in its series
        # A series' last `window` values live in its row of `history` as a ring: the
        # value at place q sits in column q % window.
        previous = np.empty(total)
        previous[1:] = values[:-1]
        previous[starts] = np.where(seen > 0, self.history[slots, (seen - 1) % window], np.nan)

        base, age = self._baselines(values, times, seen_before, series_of, first, slots, starts)

        step = values - previous
        with np.errstate(invalid="ignore", divide="ignore"):
            # A wandering series may have moved since its baseline was computed.
            level_z = np.abs(values - base[_CENTER]) / np.sqrt(base[_SCALE] ** 2 + base[_WANDER] * age)
            step_z = np.abs(step - base[_STEP_CENTER]) / base[_STEP_SCALE]
            score = np.fmax(level_z, step_z)

            # Runs of identical values: `run` counts the run a reading belongs to so far,
            # `limit` is the length at which it is stuck, as judged when the run began.
            same = values == previous
            breaks = ~same | first
            run_start = np.maximum.accumulate(np.where(breaks, reading, 0))
            run_base = np.ones(total)
            run_base[starts] = np.where(same[starts], self.run[slots] + 1, 1)
            limit_at = base[_STUCK_RUN].copy()
            limit_at[starts] = np.where(same[starts], self.run_limit[slots], limit_at[starts])
            run = run_base[run_start] + (reading - run_start)
            limit = limit_at[run_start]
            stuck = p.threshold * run / limit
            score = np.fmax(score, stuck)
        abnormal = score >= p.threshold  # NaN (no baseline yet) is never abnormal

        episodes = self._episodes(slots, counts, starts, series_of, times, values, score, abnormal, emit)

        last = starts + counts - 1
        kept = nth >= counts[series_of] - window  # the last `window` of each series
        ring = slots[series_of[kept]] * window + seen_before[kept] % window
        self.history.reshape(-1)[ring] = values[kept]
        self.count[slots] += counts
        self.last_time[slots] = times[last]
        self.baseline[:, slots] = base[:, last]
        self.baseline_age[slots] = age[last]
        self.run[slots] = run[last]
        self.run_limit[slots] = limit[last]
        return episodes

    def _baselines(
        self,
        values: np.ndarray,
        times: np.ndarray,
        seen_before: np.ndarray,
        series_of: np.ndarray,
        first: np.ndarray,
        slots: np.ndarray,
        starts: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The baseline each reading is judged by — recomputed from the `window` values
        before it at refresh readings, otherwise carried forward from the last one — and
        its age in readings."""
        p = self.params
        window, every = p.window, p.refresh
        total = len(values)
        reading = np.arange(total)
        full = seen_before >= window
        # Refresh points depend only on the readings, never on how batches cut them: an
        # anchor is a reading whose timestamp hashes below 1 / (2 * every) of the hash
        # range (or a series' first full window), and the baseline is also due every
        # `every` readings after the last anchor, so it is never older than that. After
        # a restart the chain of due points resynchronises at the first anchor of the
        # replayed history.
        hashed = (times.astype(np.uint64) * _MIX) >> np.uint64(40)  # 24 well-mixed bits
        anchored = full & ((hashed < np.uint64((1 << 23) // every)) | (seen_before == window))
        carried = starts - 1 - self.refresh_phase[slots]  # each series' last due point
        key = np.where(anchored, reading, np.where(first, carried[series_of], -every - 2))
        lift = series_of * (total + every + 2)  # keeps the running max inside each series
        since = reading - (np.maximum.accumulate(key + lift) - lift)
        due = full & (anchored | ((since > 0) & (since % every == 0)))
        ends = np.append(starts[1:], total) - 1
        self.refresh_phase[slots] = since[ends] % every
        refreshed = np.flatnonzero(due)

        # The baselines in play: what each series carries in, then the fresh ones; each
        # reading takes the latest of its series at or before it.
        fresh = np.empty((_BASELINE, 0))
        if len(refreshed):
            computed, informative = _window_stats(
                self._windows(values, seen_before, series_of, slots, starts, refreshed),
                p.stuck_min,
                p.stuck_chance,
            )
            refreshed, fresh = refreshed[informative], computed[:, informative]
        series_count = len(slots)
        table = np.concatenate((self.baseline[:, slots], fresh), axis=1)
        age_then = np.concatenate((self.baseline_age[slots] + 1, np.zeros(len(refreshed), dtype=np.int64)))
        row = np.zeros(total, dtype=np.int64)
        row[starts] = np.arange(series_count)
        row[refreshed] = series_count + np.arange(len(refreshed))
        marked = np.zeros(total, dtype=bool)
        marked[refreshed] = True
        marked |= first
        source = np.maximum.accumulate(np.where(marked, reading, 0))
        rows = row[source]
        return table[:, rows], age_then[rows] + (reading - source)

    def _windows(
        self,
        values: np.ndarray,
        seen_before: np.ndarray,
        series_of: np.ndarray,
        slots: np.ndarray,
        starts: np.ndarray,
        readings: np.ndarray,
    ) -> np.ndarray:
        """The `window` values before each of `readings`, oldest first.

        Each series involved is laid out once, its ring unrolled (oldest first) and then
        its readings of this batch, so that every window is a slice of one flat array.
        """
        window = self.params.window
        counts = np.diff(np.append(starts, len(values)))
        involved = np.zeros(len(slots), dtype=bool)
        involved[series_of[readings]] = True
        who = np.flatnonzero(involved)
        rows = slots[who]
        column = (self.count[rows] % window)[:, None] + np.arange(window)  # the oldest first
        column[column >= window] -= window
        unrolled = np.take(self.history.reshape(-1), rows[:, None] * window + column)
        sizes = np.column_stack((np.full(len(who), window), counts[who])).ravel()
        stored = np.repeat(np.tile([True, False], len(who)), sizes)
        flat = np.empty(len(stored))
        flat[stored] = unrolled.ravel()
        flat[~stored] = values[involved[series_of]]
        block = np.zeros(len(slots), dtype=np.int64)
        block[who] = np.cumsum(sizes)[::2] - window  # where each involved series' layout starts
        owner = series_of[readings]
        nth = readings - starts[owner]
        return sliding_window_view(flat, window)[block[owner] + nth]

    def _episodes(
        self,
        slots: np.ndarray,
        counts: np.ndarray,
        starts: np.ndarray,
        series_of: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        score: np.ndarray,
        abnormal: np.ndarray,
        emit: bool,
    ) -> list[Episode]:
        """Open and close episodes. Only series with abnormal readings, or an open
        episode that may end, are visited one by one."""
        calm_needed = self.params.calm
        episodes: list[Episode] = []
        flagged = np.flatnonzero(abnormal)
        hit = np.zeros(len(slots), dtype=bool)
        hit[series_of[flagged]] = True

        quiet = ~hit
        self.calm[slots[quiet]] += counts[quiet]
        ending = quiet & self.episode_open[slots] & (self.calm[slots] >= calm_needed)
        for slot in slots[ending].tolist():
            self.episode_open[slot] = False
            if emit:
                episodes.append(self._closed(slot, opened=False))

        if len(flagged):
            owners = series_of[flagged]
            bounds = np.flatnonzero(np.diff(owners)) + 1
            for group in np.split(flagged, bounds):
                i = int(series_of[group[0]])
                episodes.extend(
                    self._walk(
                        int(slots[i]), int(starts[i]), int(counts[i]), group, times, values, score, emit
                    )
                )
        return episodes

    def _walk(
        self,
        slot: int,
        start: int,
        count: int,
        flagged: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        score: np.ndarray,
        emit: bool,
    ) -> list[Episode]:
        """One series' abnormal readings in order: extend, close and open its episodes."""
        calm_needed = self.params.calm
        changes: list[Episode] = []
        is_open = bool(self.episode_open[slot])
        calm = int(self.calm[slot])
        fresh = False  # the open episode was opened in this batch
        opening_score = float("nan")
        before = start - 1
        for index in flagged.tolist():
            calm += index - before - 1
            if is_open and calm >= calm_needed:
                self.episode_open[slot] = False
                if emit:
                    changes.append(self._closed(slot, opened=fresh))
                is_open = False
            if is_open:
                self.episode_peak[slot] = max(float(self.episode_peak[slot]), float(score[index]))
            else:
                is_open, fresh = True, True
                self.episode_open[slot] = True
                self.episode_time[slot] = times[index]
                self.episode_value[slot] = values[index]
                self.episode_peak[slot] = opening_score = float(score[index])
            self.last_abnormal[slot] = times[index]
            calm = 0
            before = index
        calm += start + count - 1 - before
        self.calm[slot] = calm
        if is_open and calm >= calm_needed:
            self.episode_open[slot] = False
            if emit:
                changes.append(self._closed(slot, opened=fresh))
        elif is_open and fresh and emit:
            changes.append(
                Episode(
                    int(self.sid_of[slot]),
                    int(self.episode_time[slot]),
                    float(self.episode_value[slot]),
                    opening_score,  # the peak is written when it closes: batches may cut it anywhere
                    None,
                    opened=True,
                )
            )
        return changes

    def _closed(self, slot: int, opened: bool) -> Episode:
        return Episode(
            int(self.sid_of[slot]),
            int(self.episode_time[slot]),
            float(self.episode_value[slot]),
            float(self.episode_peak[slot]),
            int(self.last_abnormal[slot]),
            opened=opened,
        )


def _by_series_and_time(
    sids: np.ndarray, times: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings grouped by series, in time order; equal readings keep their batch order
    (the first one is what the store kept). Batches are mostly in time order already,
    so a stable sort by series usually suffices."""
    order = np.argsort(sids, kind="stable")
    sids, times, values = sids[order], times[order], values[order]
    if len(times) > 1 and not np.all((times[1:] >= times[:-1]) | (sids[1:] != sids[:-1])):
        order = np.lexsort((times, sids))
        sids, times, values = sids[order], times[order], values[order]
    return sids, times, values


def _window_stats(past: np.ndarray, stuck_min: int, stuck_chance: float) -> tuple[np.ndarray, np.ndarray]:
    """Baselines of windows (one per row), and which windows say anything: one whose
    values never change has no spread to judge by and keeps the previous baseline."""
    window = past.shape[1]
    steps = np.diff(past, axis=1)
    changed = steps != 0
    changes = changed.sum(axis=1)
    # Steps are judged against the steps that changed something: repeated values (a
    # stuck stretch, a slow battery) would otherwise shrink the spread to nothing and
    # make the first honest change look wild. Zeros sort last, as +inf.
    moved = np.where(changed, steps, np.inf)
    # The smallest change a series makes is its resolution: never call one step of it
    # abnormal, however flat the window (a battery moving by 0.01 %).
    resolution = np.abs(moved).min(axis=1)
    moved.sort(axis=1)
    levels = np.sort(past, axis=1)
    # The level a reading is held against is that of the window's last eighth: recent,
    # so that a series on a slope is not judged against where it was half a window ago;
    # the spread is the whole window's.
    center = _median(np.sort(past[:, -max(8, window // 8) :], axis=1))
    floor = np.maximum(resolution, 1e-9 * (np.abs(center) + 1.0))
    stats = np.empty((_BASELINE, len(past)))
    with np.errstate(invalid="ignore"):  # inf - inf in windows without a change: dropped below
        stats[_STEP_CENTER] = _median(moved, changes)
        step_scale = np.maximum(_spread(moved, changes), floor)
    stats[_STEP_SCALE] = step_scale
    stats[_CENTER] = center
    # How far a series moves in half a window: the window's median is that far behind a
    # new reading, so a series that wanders (pressure, a tank level) may deviate that
    # much from it without anything being wrong. For noise around a steady level this
    # equals the plain spread. Noise moves each step by sqrt(2) of its spread: a floor
    # for windows that repeated values fill (a sensor that was stuck for half of them).
    lag = window // 2
    wander = np.sort(past[:, lag:] - past[:, :-lag], axis=1)
    wander_scale = _spread(wander)
    stats[_SCALE] = np.maximum(
        np.maximum(_spread(levels), wander_scale / np.sqrt(2.0)), step_scale / np.sqrt(2.0)
    )
    # A random walk's lag-L differences have L times the variance of its steps; noise
    # around a level, the same. What grows with the lag is the wander per reading.
    stats[_WANDER] = np.maximum(wander_scale**2 - step_scale**2, 0.0) / (lag - 1)
    # How often a value repeats the previous one (Laplace's rule: never certain that it
    # does, nor that it never does), and so the run chance makes once in 1/stuck_chance.
    repeat = (window - 1 - changes + 1.0) / (window - 1 + 2.0)
    stats[_STUCK_RUN] = np.maximum(stuck_min, 1.0 + np.log(stuck_chance) / np.log(repeat))
    return stats, changes > 0


def _median(ordered: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Per row of sorted values (the first `counts` of each row, if given)."""
    if counts is None:
        n = ordered.shape[1]
        return np.asarray((ordered[:, (n - 1) // 2] + ordered[:, n // 2]) / 2.0)
    low = _pick(ordered, np.maximum(counts - 1, 0) // 2)
    return (low + _pick(ordered, counts // 2)) / 2.0


def _spread(ordered: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """A robust stddev per row of sorted values (of the first `counts` of each row): the
    5-95 % quantile range over its width for a normal distribution. Six outliers in 128
    do not move it, and unlike the IQR it widens with the heavy tails real sensors have
    (an accelerometer's footfalls), instead of calling each tail value abnormal."""
    if counts is None:
        n = ordered.shape[1]
        low, high = int(_TAIL * n), min(n - 1, int((1 - _TAIL) * n))
        return np.asarray(ordered[:, high] - ordered[:, low]) / _TAIL_WIDTH
    low_at = (counts * _TAIL).astype(np.int64)
    high_at = np.minimum(((1 - _TAIL) * counts).astype(np.int64), np.maximum(counts - 1, 0))
    return (_pick(ordered, high_at) - _pick(ordered, low_at)) / _TAIL_WIDTH


def _pick(ordered: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.take_along_axis(ordered, columns[:, None], axis=1)[:, 0]


class StreamingAnomalies:
    """The pipeline observer: scores each committed batch and records episodes.

    One per store (see `anomaly_observers`), shared by every pipeline writing to it, so
    that a series has one state whichever source its readings come through. It never
    raises into the pipeline: a failure is logged, and unwritten episodes are retried
    with the next batch.
    """

    MAX_UNWRITTEN = 10_000

    def __init__(self, store: Store, params: StreamingParams) -> None:
        self._store = weakref.ref(store)  # the store's registry holds us; don't hold it back
        self.detector = StreamingDetector(params, loader=self._load_history)
        self._started = now_micros()
        self._series_ids: dict[str, dict[str, int]] = {}
        self._unwritten: list[Episode] = []
        self._lock = threading.Lock()
        self.seconds = 0.0  # spent on the batches' writer thread, writes included
        self.readings = 0  # scored or seen as late

    @property
    def store(self) -> Store:
        store = self._store()
        if store is None:
            raise RuntimeError("the store of this detector was closed and collected")
        return store

    def __call__(self, batch: WriteBatch, result: WriteResult) -> None:
        if not batch.groups and not batch.blocks:
            return
        with self._lock:
            started = time.perf_counter()
            try:
                episodes = self.detector.process(*self._readings(batch, result))
            except Exception:  # anomaly detection must never stop ingest
                log.exception("streaming anomaly detection failed on a batch; its readings are stored")
                return
            self._unwritten.extend(episodes)
            if self._unwritten:
                self._write()
            self.seconds += time.perf_counter() - started
            self.readings += batch.reading_count

    def _readings(self, batch: WriteBatch, result: WriteResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's readings as columns: the store hands them over resolved to series
        with its result, which spares a second pass over the batch (~120 ns a reading)."""
        if result.series_ids is not None and len(result.series_ids) == batch.reading_count:
            return result.series_ids.astype(np.int64), result.times, result.values
        return self._flatten(batch)

    def _flatten(self, batch: WriteBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's readings when the store's rows are not at hand."""
        sids: list[int] = []
        times: list[int] = []
        values: list[float] = []
        add_sid, add_time, add_value = sids.append, times.append, values.append
        for device_id, group in batch.groups:
            ids = self._series_ids.get(device_id)
            if ids is None:
                ids = self._series_ids[device_id] = {}
            for metric, at, value in group:
                sid = ids.get(metric)
                if sid is None:
                    sid = ids[metric] = self._series_id(device_id, metric)
                add_sid(sid)
                add_time(at)
                add_value(value)
        return np.array(sids, dtype=np.int64), np.array(times, dtype=np.int64), np.array(values)

    def _series_id(self, device_id: str, metric: str) -> int:
        sid = self.store.cached_series_id(device_id, metric)
        if sid is None:  # the store caches every series it wrote; a batch we see was written
            raise RuntimeError(f"no series id for {device_id}/{metric} after its batch committed")
        return sid

    def _write(self) -> None:
        episodes, now = self._unwritten, now_micros()
        opened = [
            {
                "series_id": e.series_id,
                "time": e.time,
                "end_time": e.end_time,
                "value": e.value,
                "score": e.score,
                "method": METHOD,
                "detected_at": now,
            }
            for e in episodes
            if e.opened
        ]
        closed = [
            {"b_series": e.series_id, "b_time": e.time, "b_end": e.end_time, "b_score": e.score}
            for e in episodes
            if not e.opened
        ]
        store = self.store
        try:
            with store.write_transaction() as conn:
                if opened:
                    statement = store.dialect_insert(anomalies).on_conflict_do_nothing(
                        index_elements=["series_id", "time", "method"]
                    )
                    conn.execute(statement, opened)
                if closed:
                    conn.execute(_CLOSE_EPISODE, closed)
        except SQLAlchemyError as exc:
            kept = len(episodes) - self.MAX_UNWRITTEN
            if kept > 0:
                del episodes[:kept]
            log.warning("could not record %d anomaly episode change(s), will retry: %s", len(episodes), exc)
            return
        self._unwritten = []

    def _load_history(self, series_ids: np.ndarray, first_times: np.ndarray) -> History:
        """The last readings before each series' batch, and its open episode.

        A series created after this detector started has no past it did not see itself,
        unless it was evicted since; skipping those keeps a fresh import from asking the
        store about thousands of new series.
        """
        wanted = dict(zip(series_ids.tolist(), first_times.tolist(), strict=True))
        depth = self.detector.params.window + 8 * self.detector.params.refresh  # four anchors, on average
        sids: list[int] = []
        times: list[int] = []
        values: list[float] = []
        open_episodes: dict[int, tuple[Micros, float]] = {}
        with self.store.engine.connect() as conn:
            if not self.detector.evicted_any:
                wanted = {
                    sid: wanted[sid]
                    for chunk in _chunks(list(wanted))
                    for sid in conn.scalars(
                        select(series.c.id).where(series.c.id.in_(chunk), series.c.created_at < self._started)
                    )
                }
            for sid, before in wanted.items():
                past_times, past_values = self.store.last_readings(sid, depth, before, conn)
                sids.extend([sid] * len(past_times))
                times.extend(past_times.tolist())
                values.extend(past_values.tolist())
            for chunk in _chunks(list(wanted)):
                for sid, first, score in conn.execute(
                    select(anomalies.c.series_id, anomalies.c.time, anomalies.c.score).where(
                        anomalies.c.series_id.in_(chunk),
                        anomalies.c.method == METHOD,
                        anomalies.c.end_time.is_(None),
                    )
                ):
                    open_episodes[sid] = (first, score)
        return History(
            np.array(sids, dtype=np.int64), np.array(times, dtype=np.int64), np.array(values), open_episodes
        )


_CLOSE_EPISODE = (
    update(anomalies)
    .where(
        anomalies.c.series_id == bindparam("b_series"),
        anomalies.c.time == bindparam("b_time"),
        anomalies.c.method == METHOD,
    )
    .values(end_time=bindparam("b_end"), score=bindparam("b_score"))
)


def _chunks(items: Sequence[int], size: int = 500) -> list[Sequence[int]]:
    """Keep IN lists under SQLite's bound-parameter limit."""
    return [items[i : i + size] for i in range(0, len(items), size)]


_observers: weakref.WeakKeyDictionary[Store, StreamingAnomalies] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


def anomaly_observers(store: Store, settings: Settings) -> list[StreamingAnomalies]:
    """What a pipeline writing to `store` runs after each commit: the store's streaming
    detector (the same one for every pipeline of the process), unless disabled."""
    config = settings.anomalies.streaming
    if not config.enabled:
        return []
    with _observers_lock:
        observer = _observers.get(store)
        if observer is None:
            observer = _observers[store] = StreamingAnomalies(store, StreamingParams.from_settings(config))
    return [observer]
