"""The Numenta Anomaly Benchmark's scoring, our own: detections against NAB's labelled windows.

NAB (Lavin & Ahmad, ICMLA 2015) labels each anomaly with a *window* of rows around it
and scores a detector's detections (rows where its anomaly score reaches a threshold)
per file, under a *profile* of weights (A_TP, A_FP, A_FN):

- the first min(⌊0.15·N⌋, 750) rows of a file are probationary: detections there count
  for nothing;
- a window's earliest detection, at row i, is worth A_TP·σ(y)/σ(−1), with
  σ(y) = 2/(1 + e^{5y}) − 1 and y = −(last − i + 1)/length for a window of `length`
  rows ending at row `last`: the earlier, the more (≈ 1 at its first row, ≈ 0 at its
  last). Later detections in the same window add nothing; a window without one costs
  A_FN;
- every detection outside all windows costs: A_FP·σ(y'), y' = (i − last)/(length − 1)
  of the closest window before it (σ taken as −1 beyond y' = 3: little right after a
  window, A_FP far from one), or A_FP when no window precedes it.

NAB writes these per row (column `S(t)_<profile>`): a window's score at its first row, a
false positive's at its row. A set of files is normalised as
100·(raw − null)/(perfect − null), where null detects nothing (−A_FN per window) and
perfect detects every window at its first row (A_TP per window).

This module reads a NAB checkout's layout (`data/<category>/<file>.csv`,
`labels/combined_windows.json`, `config/profiles.json`) and scores boolean detections;
`tests/test_nab_scorer.py` checks it against NAB's own per-row results.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_MAX = 750  # NAB: 0.15 * 5000 rows
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True, slots=True)
class Profile:
    """A NAB scoring profile: the weight of a true positive, a false positive, a miss."""

    name: str
    tp: float
    fp: float
    fn: float


@dataclass(slots=True)
class DataFile:
    """One NAB series and its labelled windows, as row ranges."""

    name: str  # "realTweets/Twitter_volume_AAPL.csv"
    times: np.ndarray  # int64, µs since the epoch (the timestamps are naive: read as UTC)
    values: np.ndarray  # float64
    windows: list[tuple[int, int]]  # (first row, last row), inclusive, in time order

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def probation(self) -> int:
        """Rows at the start whose detections NAB ignores."""
        return min(math.floor(PROBATION_FRACTION * len(self.values)), PROBATION_MAX)


@dataclass(slots=True)
class FileScore:
    """A file's score under one profile, and what it is made of."""

    raw: float  # the sum of `points`
    windows: int
    detected: int  # windows with a detection
    false_positives: int  # detections outside every window, after the probation
    points: np.ndarray = field(repr=False)  # NAB's S(t) column


@dataclass(slots=True)
class Total:
    """Files scored together under one profile."""

    profile: Profile
    raw: float = 0.0
    windows: int = 0
    detected: int = 0
    false_positives: int = 0
    readings: int = 0

    def add(self, score: FileScore, readings: int) -> None:
        self.raw += score.raw
        self.windows += score.windows
        self.detected += score.detected
        self.false_positives += score.false_positives
        self.readings += readings

    @property
    def normalised(self) -> float:
        """100 for a detection at the first row of every window, 0 for no detection at all."""
        null = -self.profile.fn * self.windows
        perfect = self.profile.tp * self.windows
        if perfect == null:  # no window (artificialNoAnomaly): only the false positives say anything
            return math.nan
        return 100.0 * (self.raw - null) / (perfect - null)


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at a relative position: ≈ 1 at −1, 0 at 0, −1 beyond 3."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def score_file(data: DataFile, detected: np.ndarray, profile: Profile) -> FileScore:
    """NAB's per-row scores of boolean `detected` (one per row of `data`) under `profile`."""
    rows = len(data.values)
    if len(detected) != rows:
        raise ValueError(f"{data.name}: {len(detected)} detections for {rows} rows")
    points = np.zeros(rows)
    hits = np.flatnonzero(np.asarray(detected, dtype=bool))
    hits = hits[hits >= data.probation]
    in_window = np.zeros(rows, dtype=bool)
    best_tp = scaled_sigmoid(-1.0)
    found = 0
    for first, last in data.windows:
        in_window[first : last + 1] = True
        length = last - first + 1
        inside = hits[(hits >= first) & (hits <= last)]
        if len(inside):
            position = -(last - int(inside[0]) + 1) / length
            points[first] = scaled_sigmoid(position) * profile.tp / best_tp
            found += 1
        else:
            points[first] = -profile.fn
    false_positives = hits[~in_window[hits]]
    ends = np.array([last for _, last in data.windows], dtype=np.int64)
    lengths = np.array([last - first + 1 for first, last in data.windows], dtype=np.int64)
    for i in false_positives.tolist():
        before = np.flatnonzero(ends < i)
        if not len(before):
            points[i] = -profile.fp
            continue
        closest = before[np.argmax(ends[before])]
        position = (i - int(ends[closest])) / max(int(lengths[closest]) - 1, 1)
        points[i] = scaled_sigmoid(position) * profile.fp
    return FileScore(float(points.sum()), len(data.windows), found, len(false_positives), points)


# -- reading a NAB checkout ------------------------------------------------------------
def load_profiles(nab_dir: Path) -> dict[str, Profile]:
    with open(nab_dir / "config" / "profiles.json") as handle:
        raw = json.load(handle)
    return {
        name: Profile(
            name,
            raw[name]["CostMatrix"]["tpWeight"],
            raw[name]["CostMatrix"]["fpWeight"],
            raw[name]["CostMatrix"]["fnWeight"],
        )
        for name in PROFILE_NAMES
    }


def load_corpus(nab_dir: Path) -> list[DataFile]:
    """Every labelled file under `nab_dir`/data, sorted by name."""
    with open(nab_dir / "labels" / "combined_windows.json") as handle:
        windows = json.load(handle)
    corpus = []
    for name in sorted(windows):
        path = nab_dir / "data" / name
        if not path.exists():  # a subset of NAB (some categories held out)
            continue
        times, values = read_series(path)
        corpus.append(DataFile(name, times, values, window_rows(times, windows[name])))
    return corpus


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NAB CSV (`timestamp,value`, naive timestamps) as µs since the epoch and values."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    times = np.array([_micros(row[0]) for row in rows], dtype=np.int64)
    values = np.array([float(row[1]) for row in rows])
    return times, values


def window_rows(times: np.ndarray, limits: list[list[str]]) -> list[tuple[int, int]]:
    """Row ranges of windows given as [start, end] timestamps (inclusive)."""
    rows = []
    for start, end in limits:
        first = int(np.searchsorted(times, _micros(start), side="left"))
        last = int(np.searchsorted(times, _micros(end), side="right")) - 1
        if last >= first:
            rows.append((first, last))
    return sorted(rows)


def _micros(text: str) -> int:
    moment = datetime.fromisoformat(text)
    epoch = datetime(1970, 1, 1)
    delta = moment - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def read_thresholds(nab_dir: Path, detector: str) -> dict[str, float]:
    """A published detector's corpus-tuned threshold per profile (`config/thresholds.json`)."""
    with open(nab_dir / "config" / "thresholds.json") as handle:
        raw = json.load(handle)[detector]
    return {name: float(raw[name]["threshold"]) for name in PROFILE_NAMES}
