"""The streaming anomaly detector's core: per-series online state, scoring, episodes.

Each series is followed by a few recursive statistics, updated reading by reading in
time order — O(1) time and memory per reading, whatever the series' history:

- **baseline**: a level (exponentially weighted, time constant `level_seconds`) plus a
  daily profile of `season_bins` time-of-day offsets (each learned over
  `season_seconds`), used only once the series has two days of history *and* the profile
  explains it better than the level alone (else the fallback: the level alone — sparse,
  irregular or non-seasonal series); a shift too large for the level to follow (readings
  beyond the clip, on one side, for three `level_seconds`, on a settled baseline)
  restarts it, the change detectors and the recent range at the new level;
- **robust scale**: the mean absolute residual (over `scale_seconds`), per time-of-day bin
  when the profile is in use; every update is clipped at 3 scales (Huber), so one wild
  reading moves nothing much;
- **rarity**: how far in the tail a residual is, against this series' own history — two
  upper quantiles (99 % and 99.9 %) of |z| tracked by constant-factor steps, a residual
  beyond them extrapolated along a power-law (Pareto) tail: the *surprise*, in decades
  (4 = once in 10⁴ readings). A quantile moves by a fixed factor per reading, so one
  huge event cannot dominate it, while a series whose bursts are routine learns that
  they are;
- **change detection**: a two-sided CUSUM of the clipped residuals (allowance
  `shift_allowance` scales) for level shifts and drifts, and a CUSUM of squared
  residuals for variance changes, each judged by its own tracked quantiles, once the
  baseline has settled (two days and `season_seconds`);
- **records**: the series' recent range, the extremes of the last `range_seconds` in
  `RANGE_BUCKETS` buckets (O(1)): the current bucket's hold, the older ones' relax towards
  the middle and the oldest is forgotten whole; a reading beyond the range by
  `record_margin` of its width is a new extreme (on a series' first day, before it has
  shown its daily cycle, by a margin √(1 day / its age) times wider);
- **stuck**: a run of identical values longer than chance allows given how often the
  series repeats a value (as judged when the run began).

A reading's score is the largest of these, in decades (a record by `record_margin`, or a
stuck run at its limit, counts as `threshold`). Alarm discipline: a score at `threshold`
opens an episode (not during the first `warmup` readings, nor within
`refractory_seconds` of the previous episode's end); readings at `hysteresis` ×
threshold keep it going; `calm` readings below that close it. Each episode keeps the
reason of its first reading.

The per-reading update is compiled (`detector_kernel`, numba): a batch is one call,
whatever its number of series. This module keeps the state as numpy arrays (a row per
statistic, a column per series), the batches' bookkeeping and the episodes.

Determinism: every reading goes through the same floating-point operations in the same
order whatever the batches (each series' readings in time order, one at a time), so an
import finds exactly what a live stream finds; a series' whole state is
checkpointed every `rebuild_readings`/2 readings (`checkpoints`), so that a restart
restores it and replays the few readings since, and continues exactly.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar

import numpy as np

from iotpipe.arrays import in_series_time_order
from iotpipe.model import Micros

DAY = 86_400.0
# The recent range is the extremes of this many buckets of `range_seconds` / this each,
# the current one included: it remembers `range_seconds`, less a bucket at most.
RANGE_BUCKETS = 4
PARALLEL_READINGS = 50_000  # a batch this large is scored on two threads (`_kernel`)
_NO_TIME = np.iinfo(np.int64).min

REASONS = ("", "spike", "dip", "level_shift", "variance_change", "stuck", "drift", "seasonal_deviation")
SPIKE, DIP, LEVEL_SHIFT, VARIANCE_CHANGE, STUCK, DRIFT, SEASONAL = range(1, 8)


@dataclass(frozen=True, slots=True)
class StreamingParams:
    threshold: float = 5.5
    hysteresis: float = 0.6
    calm: int = 24
    refractory_seconds: float = 0.0
    warmup: int = 150
    level_seconds: float = 3600.0
    scale_seconds: float = DAY
    season_seconds: float = 3 * DAY
    season_bins: int = 24
    range_seconds: float = 14 * DAY
    shift_allowance: float = 1.0
    record_margin: float = 0.07
    stuck_min: int = 5
    stuck_chance: float = 1e-5
    max_series: int = 100_000
    rebuild_readings: int = 4096


@dataclass(slots=True)
class Episode:
    """An abnormal episode of one series, as one row of the anomalies table."""

    series_id: int
    time: Micros  # its first abnormal reading
    value: float  # that reading's value
    score: float  # the first reading's score while open; the peak once closed
    end_time: Micros | None  # its last abnormal reading, once closed
    opened: bool  # opened in this batch (a new row) rather than closing an earlier one
    reason: str = ""


@dataclass(slots=True)
class History:
    """What the store knows of series the detector has no state for."""

    series_ids: np.ndarray  # int64, one entry per reading
    times: np.ndarray  # int64
    values: np.ndarray  # float64
    open_episodes: dict[int, tuple[Micros, float]]  # series_id -> (time, score) of its open episode
    # series_id -> its saved state (`StreamingDetector.checkpoints`); the readings above
    # are then those after the checkpoint's last reading
    checkpoints: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A series' whole detector state after its reading at `last_time`."""

    series_id: int
    last_time: Micros
    state: bytes


# (series ids, time of each one's first new reading) -> its readings before that time.
HistoryLoader = Callable[[np.ndarray, np.ndarray], History]

# The float state of a series, one row each in `StreamingDetector.state`.
STATE_FIELDS = (
    "interval",  # the series' usual time between readings, seconds (a running median)
    "level",
    "plain",  # the level of the no-season fallback
    "scale",  # mean absolute residual (global)
    "err_season",
    "err_plain",
    "spike_q1",  # quantiles (99 %, 99.9 %) of |z|, of the shift CUSUM and of the variance CUSUM
    "spike_q2",
    "shift_q1",
    "shift_q2",
    "spread_q1",
    "spread_q2",
    "up",
    "down",
    "spread_sum",
    "high",
    "low",
    "middle",
    "width",
    "previous",
    "run",
    "repeats",
    "run_limit",
    "longest",  # the longest recent run of identical values (relaxing over range_seconds)
    "shift_since",  # when the level CUSUM was last in its usual range (seconds): a drift builds slowly
    "side",  # +1 / -1 while readings in a row are beyond the clip above / below the baseline, else 0
    "side_since",  # when that run began (seconds)
    "bucket_start",  # when the recent range's current bucket began (seconds); high, low: its extremes
    "bucket",  # which of the older buckets' rows the current one goes to when it ends
    *(f"older_high_{k}" for k in range(RANGE_BUCKETS - 1)),
    *(f"older_low_{k}" for k in range(RANGE_BUCKETS - 1)),
)
_S = {name: i for i, name in enumerate(STATE_FIELDS)}
# The integer columns a checkpoint keeps (the floats: the episode's value and peak, the
# state, the daily profile).
_SAVED_INTS = (
    "count",
    "last_time",
    "episode_open",
    "episode_time",
    "episode_reason",
    "last_abnormal",
    "last_close",
    "calm",
)
_INITIAL = {
    "spike_q1": 2.58,  # |z| quantiles of normal noise
    "spike_q2": 3.29,
    "shift_q1": 4.0,
    "shift_q2": 6.0,
    "spread_q1": 20.0,  # variance CUSUM: only a sustained change stands out
    "spread_q2": 30.0,
    "repeats": 0.5,
    "run_limit": math.inf,
}


class StreamingDetector:
    """Scores readings per series in time order; emits episode openings and closings.

    Pure computation on arrays: `StreamingAnomalies` (streaming.py) connects it to a store.
    """

    sid_of: np.ndarray
    count: np.ndarray
    last_time: np.ndarray
    episode_open: np.ndarray
    episode_time: np.ndarray
    episode_value: np.ndarray
    episode_peak: np.ndarray
    episode_reason: np.ndarray
    last_abnormal: np.ndarray
    last_close: np.ndarray
    calm: np.ndarray
    used: np.ndarray
    saved_count: np.ndarray
    state: np.ndarray
    offsets: np.ndarray
    spreads: np.ndarray
    filled: np.ndarray

    _COLUMNS: ClassVar[dict[str, tuple[object, type]]] = {
        "sid_of": (-1, np.int64),
        "count": (0, np.int64),  # readings seen
        "last_time": (_NO_TIME, np.int64),
        "episode_open": (False, np.bool_),
        "episode_time": (0, np.int64),
        "episode_value": (np.nan, np.float64),
        "episode_peak": (np.nan, np.float64),
        "episode_reason": (0, np.int8),
        "last_abnormal": (_NO_TIME, np.int64),
        "last_close": (_NO_TIME, np.int64),
        "calm": (0, np.int64),  # readings since the last abnormal one
        "used": (0, np.int64),  # batch clock when last seen
        "saved_count": (0, np.int64),  # `count` at the last checkpoint
    }

    def __init__(self, params: StreamingParams | None = None, loader: HistoryLoader | None = None) -> None:
        self.params = params or StreamingParams()
        self.loader = loader
        self.evicted_any = False  # once true, a series first seen may be one evicted earlier
        self._slot_of = np.full(1024, -1, dtype=np.int64)  # series id -> state row, -1: none
        self._series_count = 0
        self._free: list[int] = []
        self._clock = 0
        self._capacity = 0
        self._constants: Any = None  # the parameters as the compiled update takes them
        self._allocate(min(1024, self.params.max_series))

    # -- state rows -----------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        old = self._capacity
        for name, (fill, dtype) in self._COLUMNS.items():
            column: np.ndarray = np.full(capacity, fill, dtype=dtype)
            if old:
                column[:old] = getattr(self, name)
            setattr(self, name, column)
        bins = self.params.season_bins
        state = np.zeros((len(STATE_FIELDS), capacity))
        offsets, spreads = np.zeros((capacity, bins)), np.zeros((capacity, bins))
        filled = np.zeros((capacity, bins), dtype=bool)
        if old:
            state[:, :old] = self.state
            offsets[:old], spreads[:old], filled[:old] = self.offsets, self.spreads, self.filled
        self.state, self.offsets, self.spreads, self.filled = state, offsets, spreads, filled
        self._free.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity

    def _reset(self, slots: np.ndarray) -> None:
        for name, (fill, _) in self._COLUMNS.items():
            if name not in ("sid_of", "used"):
                getattr(self, name)[slots] = fill
        self.state[:, slots] = 0.0
        for name, value in _INITIAL.items():
            self.state[_S[name], slots] = value
        self.offsets[slots] = 0.0
        self.spreads[slots] = 0.0
        self.filled[slots] = False

    @property
    def series_count(self) -> int:
        return self._series_count

    def forget_all(self) -> None:
        """Drop every series' state: each is rebuilt from the store when next seen (another
        process may have written its readings meanwhile)."""
        self._slot_of[:] = -1
        self.sid_of[:] = -1
        self._free = list(range(self._capacity - 1, -1, -1))
        self._series_count = 0
        self.evicted_any = True  # every series first seen from now on may have a stored past

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
        """Restore new state rows from the series' checkpoints and replay their stored
        readings since (or warm them up on their last stored readings); take open
        episodes from the store."""
        assert self.loader is not None
        history = self.loader(series_ids, first_times)
        for sid, slot in zip(series_ids.tolist(), slots.tolist(), strict=True):
            saved = history.checkpoints.get(sid)
            if saved is not None:
                self._restore(slot, saved)
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
        fresh &= np.isfinite(values)
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

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def layout(self) -> int:
        """What a checkpoint's bytes mean: the state's fields and the parameters that shape
        them. A checkpoint of another layout is not restored (its series is replayed)."""
        p = self.params
        shaping = astuple(p)[:-2]  # all but max_series and rebuild_readings
        text = f"{STATE_FIELDS}|{tuple(self._COLUMNS)}|{shaping}"
        return zlib.crc32(text.encode())

    def checkpoints(self) -> list[Checkpoint]:
        """The state of every series that has seen half of `rebuild_readings` readings
        since its last checkpoint: saved with its readings, a restart restores it and
        replays fewer than `rebuild_readings` readings, so it continues exactly."""
        every = max(1, self.params.rebuild_readings // 2)
        due = np.flatnonzero((self.sid_of >= 0) & (self.count - self.saved_count >= every))
        self.saved_count[due] = self.count[due]
        return [
            Checkpoint(int(self.sid_of[slot]), int(self.last_time[slot]), self._pack(slot))
            for slot in due.tolist()
        ]

    def _pack(self, slot: int) -> bytes:
        ints = np.array([getattr(self, name)[slot] for name in _SAVED_INTS], dtype=np.int64)
        floats = np.concatenate(
            (
                [self.episode_value[slot], self.episode_peak[slot]],
                self.state[:, slot],
                self.offsets[slot],
                self.spreads[slot],
                self.filled[slot].astype(np.float64),
            )
        )
        return ints.tobytes() + floats.tobytes()

    def _restore(self, slot: int, saved: bytes) -> None:
        ints = np.frombuffer(saved, dtype=np.int64, count=len(_SAVED_INTS))
        floats = np.frombuffer(saved, dtype=np.float64, offset=8 * len(_SAVED_INTS))
        for name, value in zip(_SAVED_INTS, ints.tolist(), strict=True):
            getattr(self, name)[slot] = value
        self.saved_count[slot] = self.count[slot]
        self.episode_value[slot], self.episode_peak[slot] = floats[0], floats[1]
        bins, fields = self.params.season_bins, len(STATE_FIELDS)
        self.state[:, slot] = floats[2 : 2 + fields]
        rest = floats[2 + fields :]
        self.offsets[slot], self.spreads[slot] = rest[:bins], rest[bins : 2 * bins]
        self.filled[slot] = rest[2 * bins :] > 0

    def warm(self) -> None:
        """Load the compiled update now (numba: ~0.5 s from its disk cache, seconds on a
        fresh install), not in the first batch's commit (`StreamingAnomalies.warm_in_background`)."""
        nothing = np.zeros(0, dtype=np.int64)
        self._kernel(nothing, nothing, nothing, np.zeros(0))

    def _score(
        self, slots: np.ndarray, counts: np.ndarray, times: np.ndarray, values: np.ndarray, emit: bool
    ) -> list[Episode]:
        """`counts[i]` readings of the series in state row `slots[i]`, grouped by series and
        in time order, all newer than what the rows have seen."""
        seen = self.count[slots].copy()
        score, reason = self._kernel(slots, counts, times, values)
        return self._episodes(slots, counts, seen, times, values, score, reason, emit)

    def _kernel(
        self, slots: np.ndarray, counts: np.ndarray, times: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run every reading through its series' state; return each reading's score and reason.

        One call into compiled code (`detector_kernel`) for the whole batch: its cost is
        per reading, whatever the number of series or readings of each."""
        # numba takes about a second to import: only a process that scores readings pays it.
        from iotpipe.analytics import detector_kernel

        if self._constants is None:
            self._constants = detector_kernel.constants(self.params)
        starts = np.zeros(len(slots), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        # Fixed types and layouts: each other combination would be compiled anew.
        slots, counts = np.ascontiguousarray(slots, np.int64), np.ascontiguousarray(counts, np.int64)
        times, values = np.ascontiguousarray(times, np.int64), np.ascontiguousarray(values, np.float64)
        score = np.zeros(len(values))
        reason = np.zeros(len(values), dtype=np.int8)
        rows = (self.state, self.offsets, self.spreads, self.filled, self.count, self.last_time)

        def run(part: slice) -> None:
            detector_kernel.score_batch(
                *rows, slots[part], starts[part], counts[part], times, values, self._constants, score, reason
            )

        # Series are independent and the compiled update releases the GIL: a large batch
        # (an import's) is scored on two threads, each taking whole series, with disjoint
        # state columns and disjoint readings: the same figures, in about half the time.
        if len(values) >= PARALLEL_READINGS and len(slots) > 1 and (os.cpu_count() or 1) > 1:
            half = max(1, min(len(slots) - 1, int(np.searchsorted(starts, len(values) // 2))))
            with ThreadPoolExecutor(1, thread_name_prefix="iotpipe-detector") as pool:
                second = pool.submit(run, slice(half, None))
                run(slice(0, half))
                second.result()
        else:
            run(slice(None))
        return score, reason

    # -- episodes -------------------------------------------------------------------------
    def _episodes(
        self,
        slots: np.ndarray,
        counts: np.ndarray,
        seen: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        score: np.ndarray,
        reason: np.ndarray,
        emit: bool,
    ) -> list[Episode]:
        """Open and close episodes. Only series with readings at the hysteresis level, or
        an open episode that may end, are visited one by one."""
        p = self.params
        low = p.hysteresis * p.threshold
        episodes: list[Episode] = []
        starts = np.zeros(len(slots), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        series_of = np.repeat(np.arange(len(slots)), counts)
        flagged = np.flatnonzero(score >= low)
        hit = np.zeros(len(slots), dtype=bool)
        hit[series_of[flagged]] = True

        quiet = ~hit
        self.calm[slots[quiet]] += counts[quiet]
        ending = quiet & self.episode_open[slots] & (self.calm[slots] >= p.calm)
        for slot in slots[ending].tolist():
            self._close(slot)
            if emit:
                episodes.append(self._closed(slot, opened=False))

        if len(flagged):
            owners = series_of[flagged]
            bounds = np.flatnonzero(np.diff(owners)) + 1
            for group in np.split(flagged, bounds):
                i = int(series_of[group[0]])
                episodes.extend(
                    self._walk(
                        int(slots[i]),
                        int(starts[i]),
                        int(counts[i]),
                        int(seen[i]),
                        group,
                        times,
                        values,
                        score,
                        reason,
                        emit,
                    )
                )
        return episodes

    def _walk(
        self,
        slot: int,
        start: int,
        count: int,
        seen: int,
        flagged: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        score: np.ndarray,
        reason: np.ndarray,
        emit: bool,
    ) -> list[Episode]:
        """One series' readings at the hysteresis level, in order: extend, close, open."""
        p = self.params
        refractory = int(p.refractory_seconds * 1e6)
        changes: list[Episode] = []
        is_open = bool(self.episode_open[slot])
        calm = int(self.calm[slot])
        fresh = False  # the open episode was opened in this batch
        opening_score = float("nan")
        before = start - 1
        for index in flagged.tolist():
            calm += index - before - 1
            before = index
            if is_open and calm >= p.calm:
                self._close(slot)
                if emit:
                    changes.append(self._closed(slot, opened=fresh))
                is_open = False
            if is_open:
                self.episode_peak[slot] = max(float(self.episode_peak[slot]), float(score[index]))
                self.last_abnormal[slot] = times[index]
                calm = 0
                continue
            calm += 1
            if (
                score[index] < p.threshold
                or seen + index - start < p.warmup
                or int(times[index]) - int(self.last_close[slot]) < refractory
            ):
                continue
            is_open, fresh = True, True
            self.episode_open[slot] = True
            self.episode_time[slot] = times[index]
            self.episode_value[slot] = values[index]
            self.episode_reason[slot] = reason[index]
            self.episode_peak[slot] = opening_score = float(score[index])
            self.last_abnormal[slot] = times[index]
            calm = 0
        calm += start + count - 1 - before
        self.calm[slot] = calm
        if is_open and calm >= p.calm:
            self._close(slot)
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
                    reason=REASONS[int(self.episode_reason[slot])],
                )
            )
        return changes

    def _close(self, slot: int) -> None:
        self.episode_open[slot] = False
        self.last_close[slot] = self.last_abnormal[slot]

    def _closed(self, slot: int, opened: bool) -> Episode:
        return Episode(
            int(self.sid_of[slot]),
            int(self.episode_time[slot]),
            float(self.episode_value[slot]),
            float(self.episode_peak[slot]),
            int(self.last_abnormal[slot]),
            opened=opened,
            reason=REASONS[int(self.episode_reason[slot])],
        )


def _by_series_and_time(
    sids: np.ndarray, times: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings grouped by series, in time order; equal readings keep their batch order
    (the first one is what the store kept)."""
    if in_series_time_order(sids, times):  # a store's committed columns are (Store.write)
        return sids, times, values
    order = np.argsort(sids, kind="stable")
    sids, times, values = sids[order], times[order], values[order]
    if not in_series_time_order(sids, times):
        order = np.lexsort((times, sids))
        sids, times, values = sids[order], times[order], values[order]
    return sids, times, values
