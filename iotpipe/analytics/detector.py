"""The streaming anomaly detector's core: per-series online state, scoring, episodes (numpy only).

Each series is followed by a few recursive statistics, updated reading by reading in
time order — O(1) time and memory per reading, whatever the series' history:

- **baseline**: a level (exponentially weighted, time constant `level_seconds`) plus a
  daily profile of `season_bins` time-of-day offsets (each learned over
  `season_seconds`), used only once the series has two days of history *and* the profile
  explains it better than the level alone (else the fallback: the level alone — sparse,
  irregular or non-seasonal series);
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
- **records**: the series' recent range (a high and a low that relax towards its middle
  over `range_seconds`): a reading beyond it by `record_margin` of its width is a new
  extreme;
- **stuck**: a run of identical values longer than chance allows given how often the
  series repeats a value (as judged when the run began).

A reading's score is the largest of these, in decades (a record by `record_margin`, or a
stuck run at its limit, counts as `threshold`). Alarm discipline: a score at `threshold`
opens an episode (not during the first `warmup` readings, nor within
`refractory_seconds` of the previous episode's end); readings at `hysteresis` ×
threshold keep it going; `calm` readings below that close it. Each episode keeps the
reason of its first reading.

Determinism: every reading goes through the same floating-point operations in the same
order whatever the batches (series are processed as lanes, one step per reading of
each), so an import finds exactly what a live stream finds; a series' whole state is
checkpointed every `rebuild_readings`/2 readings (`checkpoints`), so that a restart
restores it and replays the few readings since, and continues exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from typing import ClassVar

import numpy as np

from iotpipe.model import Micros

DAY = 86_400.0
_NO_TIME = np.iinfo(np.int64).min
_MAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation, for normal noise
_CLIP = 3.0  # updates see residuals clipped at this many scales
_QUANTILES = (0.99, 0.999)  # tracked for the surprise: 2 and 3 decades
_QUANTILE_STEP = 0.05  # log-space step of the quantile trackers (a factor of e^±0.05·…)
_SEASON_GAIN = 0.9  # the daily profile is used when it leaves < 90 % of the level's error
_SHIFT_CLIP = 4.5
# A change whose level CUSUM took longer than this many level time constants to climb
# from its usual range to the alarm is a drift; quicker, a level shift.
_DRIFT_LEVELS = 3.0

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
    record_margin: float = 0.1
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
_STATE = (
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
)
_S = {name: i for i, name in enumerate(_STATE)}
_QUANTILE_ROWS = slice(_S["spike_q1"], _S["spread_q2"] + 1)  # six consecutive rows
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
        state = np.zeros((len(_STATE), capacity))
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
        text = f"{_STATE}|{tuple(self._COLUMNS)}|{shaping}"
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
        bins, fields = self.params.season_bins, len(_STATE)
        self.state[:, slot] = floats[2 : 2 + fields]
        rest = floats[2 + fields :]
        self.offsets[slot], self.spreads[slot] = rest[:bins], rest[bins : 2 * bins]
        self.filled[slot] = rest[2 * bins :] > 0

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

        Series are lanes, ordered by how many readings they have in the batch (most
        first), so that the lanes still going at step j are a prefix of the arrays.
        """
        p = self.params
        total = len(values)
        starts = np.zeros(len(slots), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        lanes = np.argsort(-counts, kind="stable")
        lane_slots, lane_starts, lane_counts = slots[lanes], starts[lanes], counts[lanes]
        # How many lanes are still going at each step.
        going = np.searchsorted(-lane_counts, -np.arange(1, int(lane_counts[0]) + 1), side="right")

        st = self.state[:, lane_slots]
        offsets = self.offsets[lane_slots]
        spreads = self.spreads[lane_slots]
        filled = self.filled[lane_slots]
        count = self.count[lane_slots].astype(np.float64)
        last_time = self.last_time[lane_slots].copy()
        seconds = times / 1e6
        score = np.zeros(total)
        reason = np.zeros(total, dtype=np.int8)
        rows = np.arange(len(lane_slots)) * p.season_bins
        w, b0, b1 = _bins(seconds, p.season_bins)
        rates = _Rates(p)
        for j, m in enumerate(going.tolist()):
            at = lane_starts[:m] + j
            sc, rs = _step(
                p,
                rates,
                st[:, :m],
                offsets[:m],
                spreads[:m],
                filled[:m],
                rows[:m],
                count[:m],
                last_time[:m],
                seconds[at],
                values[at],
                w[at],
                b0[at],
                b1[at],
            )
            score[at], reason[at] = sc, rs
            count[:m] += 1
            last_time[:m] = times[at]
        self.state[:, lane_slots] = st
        self.offsets[lane_slots] = offsets
        self.spreads[lane_slots] = spreads
        self.filled[lane_slots] = filled
        self.count[lane_slots] = count.astype(np.int64)
        self.last_time[lane_slots] = last_time
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


class _Rates:
    """Per-reading weights of the time constants, as functions of the usual interval."""

    def __init__(self, p: StreamingParams) -> None:
        self.level = 1.0 / p.level_seconds
        self.scale = 1.0 / p.scale_seconds
        self.season = p.season_bins / p.season_seconds
        self.range = 1.0 / p.range_seconds
        # level, scale, season, range: one ufunc call for all four weights
        self.all = np.array([[self.level], [self.scale], [self.season], [self.range]])
        self.log_chance = math.log(p.stuck_chance)


def _surprise(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Decades of rarity of `x` (statistic, lane) given its tracked 99 % and 99.9 %
    quantiles `q` (statistic, quantile, lane): linear up to the first, then the power-law
    (Pareto) tail through both, d = 2 + log(x/q99)/log(q99.9/q99).

    A power law is the tail extreme-value theory gives heavy-tailed data (counts,
    traffic, request volumes: the Hill/Weissman extrapolation from upper quantiles), and
    the cautious one for light-tailed noise, which it calls less rare than a Gaussian
    would. Only the few readings beyond q99 pay for the logarithms.
    """
    a1 = q[:, 0]
    decades = 2.0 * x / a1
    tail = np.nonzero(x > a1)
    if len(tail[0]):
        a1, a2 = a1[tail], q[:, 1][tail]
        decades[tail] = 2.0 + np.log(x[tail] / a1) / np.log(a2 / a1)
    return decades


# A tracked quantile moves by a fixed factor: up when exceeded, down when not, so that it
# settles where it is exceeded as often as its level says (a log-space stochastic
# approximation of the quantile).
_UP = np.exp(_QUANTILE_STEP * np.array(_QUANTILES))[None, :, None]
_DOWN = np.exp(-_QUANTILE_STEP * (1.0 - np.array(_QUANTILES)))[None, :, None]
_APART = math.exp(1e-3)


def _bins(seconds: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each reading falls in the daily profile, which is piecewise linear between the
    bins' centres: its two bins and its weight towards the second (computed for a whole
    batch at once: they depend on the time alone)."""
    position = (seconds % DAY) * (bins / DAY) - 0.5
    lower = np.floor(position)
    b0 = lower.astype(np.int64) % bins
    return position - lower, b0, (b0 + 1) % bins


def _where(holds: bool, mask: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """`np.where(mask, a, b)`, or `a` itself when the caller knows which side every lane
    takes: `holds` means the full-size array `a` is the answer everywhere."""
    return a if holds else np.where(mask, a, b)  # type: ignore[return-value]


def _clip(x: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """`x` clipped to ±`limit` (np.clip's result, without its Python-level overhead)."""
    return np.minimum(np.maximum(x, -limit), limit)


def _track(q: np.ndarray, x: np.ndarray, use: np.ndarray) -> None:
    """One step of the quantile trackers `q` (statistic, quantile, lane) of the statistics
    `x` (statistic, lane), where `use` (and x > 0)."""
    factor = np.where(x[:, None, :] > q, _UP, _DOWN)
    np.multiply(q, factor, out=q, where=(use & (x > 0))[:, None, :])
    np.maximum(q[:, 1], q[:, 0] * _APART, out=q[:, 1])


def _step(
    p: StreamingParams,
    rates: _Rates,
    st: np.ndarray,
    offsets: np.ndarray,
    spreads: np.ndarray,
    filled: np.ndarray,
    rows: np.ndarray,
    count: np.ndarray,
    last_time: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    b0: np.ndarray,
    b1: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One reading of each lane: score it against the state, then learn from it.

    `rows` is each lane's first index in the flattened profiles; `b0`, `b1` and `w` are the
    reading's two daily-profile bins and its weight between their centres (`_bins`)."""
    s = {name: st[i] for i, name in enumerate(_STATE)}
    first = count == 0
    # Most steps have no lane's first reading and every lane judged: their masks are then
    # skipped (the same values, fewer numpy calls).
    fresh = bool(first.any())
    # The usual interval: a running median of the gaps (a gap moves it by 5 %).
    dt = np.where(first, 0.0, t - last_time / 1e6) if fresh else t - last_time / 1e6
    interval = s["interval"]
    changing = dt != interval
    if changing.any():  # a regular series (most steps) leaves it as it is
        unknown = (interval == 0) & ~first
        grow = ~unknown & ~first & changing
        interval[:] = np.where(
            unknown,
            dt,
            np.where(
                grow, interval * np.where(dt > interval, 1.0512710963760241, 0.951229424500714), interval
            ),
        )
    step = np.where(interval > 0, interval, 60.0)
    # Until a series has lived one time constant, a running mean of what it has seen.
    early = 1.0 / (count + 1.0)
    weights = -np.expm1(-step * rates.all)
    a_level, a_scale = np.maximum(weights[:2], early)
    a_season, a_range = weights[2], weights[3]

    level, plain, scale = s["level"], s["plain"], s["scale"]
    if fresh:
        for name in ("level", "plain", "high", "low", "middle", "previous"):
            s[name][:] = np.where(first, x, s[name])

    # The daily profile is piecewise linear between the bins' centres, so that a smooth
    # daily swing leaves no error within a bin (the offset of a bin's edge is the mean of
    # its two neighbours'); each reading teaches its two bins in proportion.
    # Flat indices into the lanes' (contiguous) profile rows: cheaper than 2-D indexing.
    i0 = rows + b0
    i1 = rows + b1
    flat_offsets, flat_spreads, flat_filled = offsets.reshape(-1), spreads.reshape(-1), filled.reshape(-1)
    o0 = flat_offsets[i0]
    offset = o0 + w * (flat_offsets[i1] - o0)
    s0 = flat_spreads[i0]
    spread = np.where(flat_filled[i0] & flat_filled[i1], s0 + w * (flat_spreads[i1] - s0), scale)
    # A sensor that was stuck and moves again restarts from its first live reading: its
    # baseline was frozen (or would have followed the stuck value) meanwhile.
    recovered = (x != s["previous"]) & (s["run"] >= s["run_limit"])
    if fresh:
        recovered &= ~first
    if recovered.any():
        level[:] = np.where(recovered, x - offset, level)
        plain[:] = np.where(recovered, x, plain)
        for name in ("up", "down", "spread_sum"):
            s[name][:] = np.where(recovered, 0.0, s[name])
    seasonal = (count * step > 2 * DAY) & (s["err_season"] < _SEASON_GAIN * s["err_plain"])
    residual = x - level - np.where(seasonal, offset, 0.0)
    sigma = np.where(seasonal, spread, scale) * _MAD_TO_SIGMA
    sigma = np.maximum(sigma, 1e-9 * (np.abs(level) + 1e-9))
    valid = ~first & (scale > 0) if fresh else scale > 0
    judged = bool(valid.all())
    z = _where(judged, valid, residual / sigma, 0.0)
    size = np.abs(z)

    # Level shifts and drifts: two-sided CUSUM of clipped residuals.
    clipped = np.minimum(np.maximum(z, -_SHIFT_CLIP), _SHIFT_CLIP)
    up = _where(judged, valid, np.maximum(0.0, s["up"] + clipped - p.shift_allowance), 0.0)
    down = _where(judged, valid, np.maximum(0.0, s["down"] - clipped - p.shift_allowance), 0.0)
    shifted = np.maximum(up, down)
    # Variance changes: CUSUM of squared residuals beyond twice their normal mean.
    spread_sum = _where(judged, valid, np.maximum(0.0, s["spread_sum"] + np.minimum(z * z, 9.0) - 2.0), 0.0)
    # Each one's rarity for this series: spikes and dips (|z|), shifts, variance changes.
    tails = st[_QUANTILE_ROWS].reshape(3, 2, -1)  # a view: (statistic, quantile, lane)
    watched = np.array((size, shifted, spread_sum))
    spike, shift, variance = _surprise(watched, tails)
    # When the level CUSUM was last within its usual range (its 99 % quantile).
    shift_since = np.where(shifted > tails[1, 0], s["shift_since"], t)
    # New extremes: beyond the recent range by a fraction of its width.
    width = s["width"]
    floor = 6.0 * np.maximum(width, 1e-9 * (np.abs(s["middle"]) + 1e-9))
    beyond_high = (x - s["high"]) / np.maximum(s["high"] - s["middle"], floor)
    beyond_low = (s["low"] - x) / np.maximum(s["middle"] - s["low"], floor)
    record = np.where(width > 0, np.maximum(beyond_high, beyond_low), 0.0) * (p.threshold / p.record_margin)
    # Stuck: a run of identical values longer than chance allows.
    same = x == s["previous"]
    if fresh:
        same &= ~first
    run = np.where(same, s["run"] + 1.0, 1.0)
    # As judged when the run began: longer than chance makes once in 1/stuck_chance
    # readings, and twice the longest run of the recent past (night-time zeros of a counter).
    limit = np.where(
        same,
        s["run_limit"],
        np.maximum(
            np.maximum(p.stuck_min, 1.0 + rates.log_chance / np.log(s["repeats"])), 2.0 * s["longest"]
        ),
    )
    stuck = _where(judged, valid, p.threshold * run / limit, 0.0)
    # A stuck sensor's values are not the series': the baseline, the scale and the change
    # detectors learn nothing from them (else its release would look like a level shift).
    live = run < limit

    # A sustained deviation means something once the baseline is settled: the daily
    # profile is chosen after two days, then learned over `season_seconds` (before that,
    # the daily swing itself, or the profile still being learned, looks like a drift or a
    # variance change: the spurious alarms of noise-free daily series).
    settled = count * step > 2 * DAY + p.season_seconds
    shift = np.where(settled, shift, 0.0)
    variance = np.where(settled, variance, 0.0)
    parts = np.array((spike, shift, variance, record, stuck))
    score = _where(judged, valid, parts.max(axis=0), 0.0)
    # A reason matters only where an episode may open or go on: worked out there alone.
    reason = np.zeros(len(x), dtype=np.int8)
    f = np.flatnonzero(score >= p.hysteresis * p.threshold)
    if len(f):
        which = parts[:, f].argmax(axis=0)
        plain_size = np.abs(x[f] - plain[f]) / np.maximum(scale[f] * _MAD_TO_SIGMA, 1e-300)
        slow = t[f] - shift_since[f] > _DRIFT_LEVELS * p.level_seconds
        reason[f] = np.select(
            [
                which == 4,
                which == 2,
                (which == 1) & slow,
                which == 1,
                seasonal[f] & (plain_size < 3.0) & ((which == 0) | (which == 3)),
                z[f] < 0,
            ],
            [STUCK, VARIANCE_CHANGE, DRIFT, LEVEL_SHIFT, SEASONAL, DIP],
            SPIKE,
        )

    # -- learn ----------------------------------------------------------------------------
    _track(tails, watched, valid)
    s["up"][:], s["down"][:], s["spread_sum"][:] = up * live, down * live, spread_sum * live
    a_level, a_scale, a_season = a_level * live, a_scale * live, a_season * live
    s["shift_since"][:] = shift_since

    known = scale > 0  # everywhere when every lane was judged (valid implies known)
    to_plain = x - plain
    limit_plain = _where(judged, known, _CLIP * scale * _MAD_TO_SIGMA, np.abs(to_plain))
    plain += a_level * _clip(to_plain, limit_plain)
    to_season = x - level - offset
    limit_season = _where(judged, known, _CLIP * np.maximum(spread, scale) * _MAD_TO_SIGMA, np.abs(to_season))
    s["err_season"][:] += a_scale * (np.minimum(np.abs(to_season), limit_season) - s["err_season"])
    s["err_plain"][:] += a_scale * (np.minimum(np.abs(to_plain), limit_plain) - s["err_plain"])
    level += a_level * _clip(to_season, limit_season)
    learned = a_season * _clip(x - level - offset, limit_season)
    flat_offsets[i0] += (1.0 - w) * learned
    flat_offsets[i1] += w * learned
    deviation = np.where(first, 0.0, np.abs(residual)) if fresh else np.abs(residual)
    scale[:] = _where(
        judged,
        known,
        scale + a_scale * (np.minimum(deviation, _CLIP * scale * _MAD_TO_SIGMA) - scale),
        deviation,
    )
    error = np.minimum(np.abs(to_season), limit_season)
    for i, share in ((i0, 1.0 - w), (i1, w)):
        current = flat_spreads[i]
        flat_spreads[i] = np.where(flat_filled[i], current + share * a_season * (error - current), scale)
        flat_filled[i] = True

    high, low, middle = s["high"], s["low"], s["middle"]
    np.maximum(high, x, out=high)
    np.minimum(low, x, out=low)
    high -= a_range * (high - middle)
    low += a_range * (middle - low)
    gap = x - middle
    has_width = width > 0
    wide = bool(has_width.all())
    middle += _where(
        wide, has_width, a_scale * 0.5 * np.maximum(width, 1e-9 * (np.abs(middle) + 1e-9)) * np.sign(gap), gap
    )
    width[:] = _where(
        wide, has_width, width + a_scale * (np.minimum(np.abs(gap), 3.0 * width) - width), np.abs(gap)
    )

    repeats = s["repeats"]
    weight = np.maximum(a_scale, 1.0 / (count + 2.0))
    repeats += np.where(first, 0.0, weight * (same - repeats)) if fresh else weight * (same - repeats)
    np.clip(repeats, 1e-6, 1.0 - 1e-6, out=repeats)
    s["run"][:], s["run_limit"][:], s["previous"][:] = run, limit, x
    s["longest"][:] = np.maximum(s["longest"] * (1.0 - a_range), _where(judged, valid, run, 0.0))
    return score, reason


def _by_series_and_time(
    sids: np.ndarray, times: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings grouped by series, in time order; equal readings keep their batch order
    (the first one is what the store kept)."""
    order = np.argsort(sids, kind="stable")
    sids, times, values = sids[order], times[order], values[order]
    if len(times) > 1 and not np.all((times[1:] >= times[:-1]) | (sids[1:] != sids[:-1])):
        order = np.lexsort((times, sids))
        sids, times, values = sids[order], times[order], values[order]
    return sids, times, values
