"""The streaming detector's per-reading update, compiled by numba: one call scores a batch.

`detector.py` holds the state and imports this module on its first batch (numba takes
about a second to import, which `iotpipe --help` and the sources must not pay). The
compiled code is cached on disk (`cache=True`): beside this file, else in the user's
cache folder, else in a private folder under the temporary directory; a fresh install
compiles it once (a few seconds), later processes load it.

Every reading goes through the same scalar operations in the same order, whatever the
batch it came in: results do not depend on how readings are batched.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
from numba.core import config as numba_config

from iotpipe.analytics.detector import (
    DAY,
    DIP,
    DRIFT,
    LEVEL_SHIFT,
    RANGE_BUCKETS,
    SEASONAL,
    SPIKE,
    STATE_FIELDS,
    STUCK,
    VARIANCE_CHANGE,
    StreamingParams,
)

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation, for normal noise
CLIP = 3.0  # updates see residuals clipped at this many scales
QUANTILES = (0.99, 0.999)  # tracked for the surprise: 2 and 3 decades
QUANTILE_STEP = 0.05  # log-space step of the quantile trackers (a factor of e^±0.05·…)
SEASON_GAIN = 0.9  # the daily profile is used when it leaves < 90 % of the level's error
SHIFT_CLIP = 4.5  # the level CUSUM adds residuals clipped at this many sigmas
# A change whose level CUSUM took longer than this many level time constants to climb
# from its usual range to the alarm is a drift; quicker, a level shift.
DRIFT_LEVELS = 3.0
# A series seen for less than this has not yet shown its daily cycle: its range is not
# yet a record's yardstick, and the margin a record needs widens as √(YOUNG / its age).
YOUNG = DAY

F = TypeVar("F", bound=Callable[..., Any])


def private_cache_dir() -> Path:
    """A cache folder only this user can write (a shared one would let another user plant
    compiled code): `iotpipe-numba-UID` in the temporary directory, else a new one."""
    path = Path(tempfile.gettempdir()) / f"iotpipe-numba-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022:
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="iotpipe-numba-"))


def compiled(function: F) -> F:
    """`function` compiled by numba with its machine code cached on disk; when neither this
    package's folder nor the user's cache folder can be written (a read-only install, a
    service without a home), in `private_cache_dir()`. It releases the GIL: it touches
    only the arrays it is given, and the pipeline's other thread can decode meanwhile.
    Inlined into its callers by LLVM (`forceinline`): the calls per reading cost ~10 % of
    the update's time (IR-level `inline="always"` did as well and compiled 2 s slower)."""

    def jit() -> F:
        return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy", forceinline=True)(function))

    try:
        return jit()
    except RuntimeError:  # numba found no writable place for its cache
        cache = str(private_cache_dir())
        numba_config.CACHE_DIR = cache  # type: ignore[attr-defined]  # set from the environment
        log.info("caching the detector's compiled code in %s", cache)
        return jit()


class Constants(NamedTuple):
    """The parameters as the compiled update uses them (numba takes a named tuple)."""

    bins: int  # of the daily profile
    bins_per_day: float  # bins / DAY: bins per second
    threshold: float
    keep_open: float  # hysteresis × threshold: the score that keeps an episode open
    shift_allowance: float
    record_factor: float  # threshold / record_margin: a record's score per width beyond
    stuck_min: float
    log_chance: float  # log(stuck_chance)
    settled_seconds: float  # 2 days + season_seconds: change detection starts then
    drift_seconds: float  # a change slower than this (to climb to the alarm) is a drift
    level_rate: float  # 1 / the time constants, per second
    scale_rate: float
    season_rate: float
    range_rate: float
    bucket_seconds: float  # range_seconds / RANGE_BUCKETS: how long a bucket of the recent range lasts


def constants(p: StreamingParams) -> Constants:
    return Constants(
        bins=p.season_bins,
        bins_per_day=p.season_bins / DAY,
        threshold=p.threshold,
        keep_open=p.hysteresis * p.threshold,
        shift_allowance=p.shift_allowance,
        record_factor=p.threshold / p.record_margin,
        stuck_min=float(p.stuck_min),
        log_chance=math.log(p.stuck_chance),
        settled_seconds=2 * DAY + p.season_seconds,
        drift_seconds=DRIFT_LEVELS * p.level_seconds,
        level_rate=1.0 / p.level_seconds,
        scale_rate=1.0 / p.scale_seconds,
        season_rate=p.season_bins / p.season_seconds,
        range_rate=1.0 / p.range_seconds,
        bucket_seconds=p.range_seconds / RANGE_BUCKETS,
    )


# Rows of the state (`detector.STATE_FIELDS`), as constants the compiler folds in.
(
    INTERVAL,
    LEVEL,
    PLAIN,
    SCALE,
    ERR_SEASON,
    ERR_PLAIN,
    SPIKE_Q1,
    SPIKE_Q2,
    SHIFT_Q1,
    SHIFT_Q2,
    SPREAD_Q1,
    SPREAD_Q2,
    UP,
    DOWN,
    SPREAD_SUM,
    HIGH,
    LOW,
    MIDDLE,
    WIDTH,
    PREVIOUS,
    RUN,
    REPEATS,
    RUN_LIMIT,
    LONGEST,
    SHIFT_SINCE,
    SIDE,
    SIDE_SINCE,
    BUCKET_START,
    BUCKET,
) = range(STATE_FIELDS.index("older_high_0"))
OLDER_HIGH = STATE_FIELDS.index("older_high_0")  # the older buckets' highs, then their lows
OLDER_LOW = STATE_FIELDS.index("older_low_0")
OLDER = RANGE_BUCKETS - 1

# A tracked quantile moves by a fixed factor: up when exceeded, down when not, so that it
# settles where it is exceeded as often as its level says (a log-space stochastic
# approximation of the quantile).
UP_1, UP_2 = np.exp(QUANTILE_STEP * np.array(QUANTILES)).tolist()
DOWN_1, DOWN_2 = np.exp(-QUANTILE_STEP * (1.0 - np.array(QUANTILES))).tolist()
APART = math.exp(1e-3)  # the upper quantile stays at least this factor above the lower
GROW, SHRINK = 1.0512710963760241, 0.951229424500714  # e^±0.05: the usual interval's steps


@compiled
def surprise(x: float, q1: float, q2: float) -> float:
    """Decades of rarity of `x` given its tracked 99 % and 99.9 % quantiles: linear up to
    the first, then the power-law (Pareto) tail through both, d = 2 + log(x/q1)/log(q2/q1).

    A power law is the tail extreme-value theory gives heavy-tailed data (counts,
    traffic, request volumes: the Hill/Weissman extrapolation from upper quantiles), and
    the cautious one for light-tailed noise, which it calls less rare than a Gaussian
    would.
    """
    if x > q1:
        return 2.0 + np.log(x / q1) / np.log(q2 / q1)
    return 2.0 * x / q1


@compiled
def track(state: np.ndarray, row: int, x: float) -> None:
    """One step of the quantile trackers in rows `row` and `row`+1 for the statistic `x`."""
    if x > 0:
        q1, q2 = state[row], state[row + 1]
        state[row] = q1 * (UP_1 if x > q1 else DOWN_1)
        state[row + 1] = q2 * (UP_2 if x > q2 else DOWN_2)
    state[row + 1] = np.maximum(state[row + 1], state[row] * APART)


@compiled
def clip(x: float, limit: float) -> float:
    return np.minimum(np.maximum(x, -limit), limit)


@compiled
def restart_range(st: np.ndarray, x: float, t: float) -> None:
    """The recent range's older buckets forget all but `x`, and its current one begins at `t`."""
    for k in range(OLDER):
        st[OLDER_HIGH + k] = st[OLDER_LOW + k] = x
    st[BUCKET_START] = t


@compiled
def score_batch(
    state: np.ndarray,
    offsets: np.ndarray,
    spreads: np.ndarray,
    filled: np.ndarray,
    count: np.ndarray,
    last_time: np.ndarray,
    slots: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    times: np.ndarray,
    values: np.ndarray,
    c: Constants,
    score: np.ndarray,
    reason: np.ndarray,
) -> None:
    """Run the readings `starts[i]`…`starts[i]+counts[i]` (in time order) through the state
    of the series in row `slots[i]`, for every i; write each one's score and reason.

    Division by zero gives inf or nan, as in numpy (`error_model="numpy"`), rather than
    raising."""
    # A series' state, copied out of its (strided) column for its readings: each access
    # is then to a fixed place, which costs less than the column's 2-D indexing.
    own = np.empty(state.shape[0])
    for i in range(len(slots)):
        slot = slots[i]
        own[:] = state[:, slot]
        own_offsets, own_spreads, own_filled = offsets[slot], spreads[slot], filled[slot]
        for at in range(starts[i], starts[i] + counts[i]):
            t = times[at] / 1e6
            # Where the reading falls in the daily profile, which is piecewise linear
            # between the bins' centres: its two bins and its weight towards the second.
            position = (t % DAY) * c.bins_per_day - 0.5
            lower = np.floor(position)
            b0 = int(lower) % c.bins
            score[at], reason[at] = update(
                own,
                own_offsets,
                own_spreads,
                own_filled,
                float(count[slot]),
                last_time[slot],
                t,
                values[at],
                position - lower,
                b0,
                (b0 + 1) % c.bins,
                c,
            )
            count[slot] += 1
            last_time[slot] = times[at]
        state[:, slot] = own


@compiled
def update(
    st: np.ndarray,
    offsets: np.ndarray,
    spreads: np.ndarray,
    filled: np.ndarray,
    count: float,
    last_time: int,
    t: float,
    x: float,
    w: float,
    b0: int,
    b1: int,
    c: Constants,
) -> tuple[float, int]:
    """One reading of one series: score it against the state, then learn from it. Return
    its score and reason. `st`: the series' state, one value per `STATE_FIELDS`;
    `offsets`, `spreads`, `filled`: its daily profile."""
    first = count == 0
    # The usual interval: a running median of the gaps (a gap moves it by 5 %).
    interval = st[INTERVAL]
    if not first:
        dt = t - last_time / 1e6
        if interval == 0:
            interval = dt
        elif dt != interval:
            interval = interval * (GROW if dt > interval else SHRINK)
        st[INTERVAL] = interval
    step = interval if interval > 0 else 60.0
    age = count * step  # how long the series has been seen, in its usual intervals
    # Until a series has lived one time constant, a running mean of what it has seen.
    early = 1.0 / (count + 1.0)
    a_level = np.maximum(-np.expm1(-step * c.level_rate), early)
    a_scale = np.maximum(-np.expm1(-step * c.scale_rate), early)
    a_season = -np.expm1(-step * c.season_rate)
    a_range = -np.expm1(-step * c.range_rate)

    if first:
        for row in (LEVEL, PLAIN, HIGH, LOW, MIDDLE, PREVIOUS):
            st[row] = x
        restart_range(st, x, t)
    level, plain, scale = st[LEVEL], st[PLAIN], st[SCALE]

    # The daily profile is piecewise linear between the bins' centres, so that a smooth
    # daily swing leaves no error within a bin (the offset of a bin's edge is the mean of
    # its two neighbours'); each reading teaches its two bins in proportion.
    o0 = offsets[b0]
    offset = o0 + w * (offsets[b1] - o0)
    s0 = spreads[b0]
    spread = s0 + w * (spreads[b1] - s0) if filled[b0] and filled[b1] else scale
    # A sensor that was stuck and moves again restarts from its first live reading: its
    # baseline was frozen (or would have followed the stuck value) meanwhile.
    if not first and x != st[PREVIOUS] and st[RUN] >= st[RUN_LIMIT]:
        level = x - offset
        plain = x
        st[UP] = st[DOWN] = st[SPREAD_SUM] = 0.0
    seasonal = age > 2 * DAY and st[ERR_SEASON] < SEASON_GAIN * st[ERR_PLAIN]
    residual = x - level - (offset if seasonal else 0.0)
    sigma = (spread if seasonal else scale) * MAD_TO_SIGMA
    sigma = np.maximum(sigma, 1e-9 * (np.abs(level) + 1e-9))
    valid = not first and scale > 0
    z = residual / sigma if valid else 0.0
    size = np.abs(z)

    # Level shifts and drifts: two-sided CUSUM of clipped residuals.
    clipped = np.minimum(np.maximum(z, -SHIFT_CLIP), SHIFT_CLIP)
    up = np.maximum(0.0, st[UP] + clipped - c.shift_allowance) if valid else 0.0
    down = np.maximum(0.0, st[DOWN] - clipped - c.shift_allowance) if valid else 0.0
    shifted = np.maximum(up, down)
    # Variance changes: CUSUM of squared residuals beyond twice their normal mean.
    spread_sum = np.maximum(0.0, st[SPREAD_SUM] + np.minimum(z * z, 9.0) - 2.0) if valid else 0.0
    # Each one's rarity for this series: spikes and dips (|z|), shifts, variance changes.
    spike = surprise(size, st[SPIKE_Q1], st[SPIKE_Q2])
    shift = surprise(shifted, st[SHIFT_Q1], st[SHIFT_Q2])
    variance = surprise(spread_sum, st[SPREAD_Q1], st[SPREAD_Q2])
    # When the level CUSUM was last within its usual range (its 99 % quantile).
    shift_since = st[SHIFT_SINCE] if shifted > st[SHIFT_Q1] else t
    # New extremes: beyond the recent range by a fraction of its width.
    high, low, middle, width = st[HIGH], st[LOW], st[MIDDLE], st[WIDTH]
    top, bottom = high, low  # the range: the extremes of every bucket
    for k in range(OLDER):
        top = np.maximum(top, st[OLDER_HIGH + k])
        bottom = np.minimum(bottom, st[OLDER_LOW + k])
    floor = 6.0 * np.maximum(width, 1e-9 * (np.abs(middle) + 1e-9))
    beyond_high = (x - top) / np.maximum(top - middle, floor)
    beyond_low = (bottom - x) / np.maximum(middle - bottom, floor)
    record = (np.maximum(beyond_high, beyond_low) if width > 0 else 0.0) * c.record_factor
    # On its first day a series climbs its daily cycle: each new high of the day is beyond
    # the range it has seen so far, as a record is (the simulator's temperatures and
    # humidities raised 0.1 false episode per 1,000 readings that way).
    if age < YOUNG:
        record /= np.sqrt(YOUNG / np.maximum(age, step))
    # Stuck: a run of identical values longer than chance allows.
    same = not first and x == st[PREVIOUS]
    run = st[RUN] + 1.0 if same else 1.0
    # As judged when the run began: longer than chance makes once in 1/stuck_chance
    # readings, and twice the longest run of the recent past (night-time zeros of a counter).
    if same:
        limit = st[RUN_LIMIT]
    else:
        chance = np.maximum(c.stuck_min, 1.0 + c.log_chance / np.log(st[REPEATS]))
        limit = np.maximum(chance, 2.0 * st[LONGEST])
    stuck = c.threshold * run / limit if valid else 0.0
    # A stuck sensor's values are not the series': the baseline, the scale and the change
    # detectors learn nothing from them (else its release would look like a level shift).
    live = 1.0 if run < limit else 0.0

    # A sustained deviation means something once the baseline is settled: the daily
    # profile is chosen after two days, then learned over `season_seconds` (before that,
    # the daily swing itself, or the profile still being learned, looks like a drift or a
    # variance change: the spurious alarms of noise-free daily series).
    if not age > c.settled_seconds:
        shift = variance = 0.0
    # The part that scores highest names the reason (the first of equals).
    which, best = 0, spike
    for k, part in enumerate((shift, variance, record, stuck)):
        if part > best or (np.isnan(part) and not np.isnan(best)):  # as np.argmax
            which, best = k + 1, part
    result = best if valid else 0.0
    why = 0
    # A reason matters only where an episode may open or go on: worked out there alone.
    if result >= c.keep_open:
        plain_size = np.abs(x - plain) / np.maximum(scale * MAD_TO_SIGMA, 1e-300)
        if which == 4:
            why = STUCK
        elif which == 2:
            why = VARIANCE_CHANGE
        elif which == 1:
            why = DRIFT if t - shift_since > c.drift_seconds else LEVEL_SHIFT
        elif seasonal and plain_size < 3.0 and (which == 0 or which == 3):
            why = SEASONAL
        elif z < 0:
            why = DIP
        else:
            why = SPIKE

    # -- learn ----------------------------------------------------------------------------
    # A new level the baseline cannot follow: its steps are clipped at CLIP scales, so a
    # large shift keeps the readings beyond the clip, on one side, for as long as the
    # level takes to climb there (hours), and meanwhile the scale, the range and the
    # tails learn the gap. Once the run has lasted `drift_seconds` (three level time
    # constants: an unclipped level would have followed by then) on a settled baseline,
    # the baseline, the change detectors and the range restart from this reading, as
    # when a stuck sensor moves again.
    side = np.sign(z) if valid and np.abs(z) > CLIP else 0.0
    side_since = st[SIDE_SINCE] if side != 0 and side == st[SIDE] else t
    restart = side != 0 and t - side_since + step >= c.drift_seconds and age > c.settled_seconds
    st[SIDE] = 0.0 if restart else side
    st[SIDE_SINCE] = side_since
    if valid:
        track(st, SPIKE_Q1, size)
        track(st, SHIFT_Q1, shifted)
        track(st, SPREAD_Q1, spread_sum)
    else:  # the upper quantile still keeps above the lower
        for row in (SPIKE_Q1, SHIFT_Q1, SPREAD_Q1):
            st[row + 1] = np.maximum(st[row + 1], st[row] * APART)
    st[UP], st[DOWN], st[SPREAD_SUM] = up * live, down * live, spread_sum * live
    if restart:
        st[UP] = st[DOWN] = st[SPREAD_SUM] = 0.0
        level, plain = x - offset, x
        high = low = middle = x
        restart_range(st, x, t)
    a_level, a_scale, a_season = a_level * live, a_scale * live, a_season * live
    st[SHIFT_SINCE] = shift_since

    known = scale > 0
    to_plain = x - plain
    limit_plain = CLIP * scale * MAD_TO_SIGMA if known else np.abs(to_plain)
    plain += a_level * clip(to_plain, limit_plain)
    to_season = x - level - offset
    limit_season = CLIP * np.maximum(spread, scale) * MAD_TO_SIGMA if known else np.abs(to_season)
    err_season = st[ERR_SEASON]
    st[ERR_SEASON] = err_season + a_scale * (np.minimum(np.abs(to_season), limit_season) - err_season)
    err_plain = st[ERR_PLAIN]
    st[ERR_PLAIN] = err_plain + a_scale * (np.minimum(np.abs(to_plain), limit_plain) - err_plain)
    level += a_level * clip(to_season, limit_season)
    learned = a_season * clip(x - level - offset, limit_season)
    offsets[b0] += (1.0 - w) * learned
    offsets[b1] += w * learned
    deviation = 0.0 if first else np.abs(residual)
    if known:
        scale = scale + a_scale * (np.minimum(deviation, CLIP * scale * MAD_TO_SIGMA) - scale)
    else:
        scale = deviation
    error = np.minimum(np.abs(to_season), limit_season)
    for b, share in ((b0, 1.0 - w), (b1, w)):
        current = spreads[b]
        spreads[b] = current + share * a_season * (error - current) if filled[b] else scale
        filled[b] = True
    st[LEVEL], st[PLAIN], st[SCALE] = level, plain, scale

    high = np.maximum(high, x)
    low = np.minimum(low, x)
    # The recent range: the current bucket's extremes hold for as long as it lasts
    # (`range_seconds` / RANGE_BUCKETS); the older buckets' relax towards the middle over
    # `range_seconds`, and the oldest is forgotten whole when the current one ends. An
    # extreme seen in the last few days is remembered in full: relaxing every extreme from
    # the moment it was seen (as before) made a daily cron job's spike, or a daily peak,
    # a new record the next day, a few per cent above its decayed self.
    for k in range(OLDER):
        st[OLDER_HIGH + k] -= a_range * (st[OLDER_HIGH + k] - middle)
        st[OLDER_LOW + k] += a_range * (middle - st[OLDER_LOW + k])
    if t - st[BUCKET_START] >= c.bucket_seconds:
        oldest = int(st[BUCKET])
        st[OLDER_HIGH + oldest], st[OLDER_LOW + oldest] = high, low
        st[BUCKET] = (oldest + 1) % OLDER
        st[BUCKET_START] = t
        high = low = x
    gap = x - middle
    if width > 0:
        middle += a_scale * 0.5 * np.maximum(width, 1e-9 * (np.abs(middle) + 1e-9)) * np.sign(gap)
        width = width + a_scale * (np.minimum(np.abs(gap), 3.0 * width) - width)
    else:
        middle += gap
        width = np.abs(gap)
    st[HIGH], st[LOW], st[MIDDLE], st[WIDTH] = high, low, middle, width

    repeats = st[REPEATS]
    if not first:
        weight = np.maximum(a_scale, 1.0 / (count + 2.0))
        repeats += weight * ((1.0 if same else 0.0) - repeats)
    st[REPEATS] = np.minimum(np.maximum(repeats, 1e-6), 1.0 - 1e-6)
    st[RUN], st[RUN_LIMIT], st[PREVIOUS] = run, limit, x
    st[LONGEST] = np.maximum(st[LONGEST] * (1.0 - a_range), run if valid else 0.0)
    return result, why
