"""Anomaly detection on the Numenta Anomaly Benchmark (issue 12): NAB scores per category and overall.

Every detector is scored with NAB's three profiles (benchmarks/nab.py): the streaming
detector with its defaults (what `iotpipe run` and `iotpipe import` use), and the
z-score rule (the documented baseline). A detection is where an alarm starts: a
streaming episode's first reading, a z-score anomaly (every flagged reading). The
published detectors' figures (standard profile, from the data set's README) and
windowedGaussian's, computed here from NAB's own per-row results, are printed beside.

    .venv/bin/python benchmarks/anomaly_nab_bench.py                     # ../shared/datasets/nab-tune
    .venv/bin/python benchmarks/anomaly_nab_bench.py --nab-dir ~/NAB     # a full NAB checkout
    .venv/bin/python benchmarks/anomaly_nab_bench.py --oracle            # + a hindsight bound

`--oracle` adds the default detector with the best of ORACLE_THRESHOLDS for each file,
chosen with hindsight (the labels): a bound on what any threshold rule on its scores
could reach, not a detector.

A full checkout (github.com/numenta/NAB) has the same layout: data/, labels/,
config/profiles.json; `results/windowedGaussian/` there replaces reference-windowedGaussian/.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/anomaly_nab_bench.py`: put the repo root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import csv
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from benchmarks.nab import (
    PROFILE_NAMES,
    DataFile,
    Total,
    load_corpus,
    load_profiles,
    read_thresholds,
    score_file,
)
from iotpipe.analytics.anomalies import ZscoreRule, zscore_anomalies
from iotpipe.analytics.detector import StreamingDetector, StreamingParams

ROOT = Path(__file__).resolve().parent.parent
# ../shared/datasets/nab-tune beside the checkout (one more level up from a git worktree).
DEFAULT_DIR = next(
    (
        d
        for d in (
            ROOT.parent / "shared" / "datasets" / "nab-tune",
            ROOT.parent.parent / "shared" / "datasets" / "nab-tune",
        )
        if d.is_dir()
    ),
    ROOT.parent / "shared" / "datasets" / "nab-tune",
)
# Standard profile on the 45 files of nab-tune (its README); None where not published.
PUBLISHED = {"ARTime": 77.4, "CAD OSE": 75.6, "Numenta HTM": 73.1, "windowedGaussian": 47.6}
GOAL = 78.0
ORACLE_THRESHOLDS = (5.5, 6, 6.5, 7, 8, 9, 10, 12, 15, 20, 30, 50, 100, 1e9)
Detections = Callable[[list[DataFile]], list[np.ndarray]]


def streaming(params: StreamingParams, batch: int = 50_000) -> Detections:
    """Every file a series of one detector, fed in time order in pipeline-sized batches."""

    def detect(corpus: list[DataFile]) -> list[np.ndarray]:
        sids = np.concatenate([np.full(len(f.values), i, dtype=np.int64) for i, f in enumerate(corpus)])
        times = np.concatenate([f.times for f in corpus])
        values = np.concatenate([f.values for f in corpus])
        order = np.argsort(times, kind="stable")
        sids, times, values = sids[order], times[order], values[order]
        detector = StreamingDetector(params)
        starts: list[list[int]] = [[] for _ in corpus]
        for first in range(0, len(values), batch):
            part = slice(first, first + batch)
            for episode in detector.process(sids[part], times[part], values[part]):
                if episode.opened:
                    starts[episode.series_id].append(episode.time)
        found = []
        for f, opened in zip(corpus, starts, strict=True):
            detected = np.zeros(len(f.values), dtype=bool)
            detected[np.searchsorted(f.times, opened)] = True
            found.append(detected)
        return found

    return detect


def at_threshold(threshold: float) -> StreamingParams:
    """The default detector opening episodes at `threshold` on the same scores: the record
    part's margin and the hysteresis are scaled so that the spike, change and record
    parts score every reading as by default, and the level that keeps an episode open
    stays (a stuck run's score is scaled with the threshold: it still opens at its limit)."""
    default = StreamingParams()
    ratio = threshold / default.threshold
    return replace(
        default,
        threshold=threshold,
        record_margin=default.record_margin * ratio,
        hysteresis=default.hysteresis / ratio,
    )


def per_file_oracle(nab_dir: Path) -> Detections:
    """For every file, the detections at the threshold (of ORACLE_THRESHOLDS) that score
    it best under the standard profile: chosen with the labels, so only a bound."""
    profile = load_profiles(nab_dir)["standard"]

    def detect(corpus: list[DataFile]) -> list[np.ndarray]:
        runs = [streaming(at_threshold(t))(corpus) for t in ORACLE_THRESHOLDS]
        return [
            max((run[i] for run in runs), key=lambda found: score_file(f, found, profile).raw)
            for i, f in enumerate(corpus)
        ]

    return detect


def zscore(rule: ZscoreRule) -> Detections:
    def detect(corpus: list[DataFile]) -> list[np.ndarray]:
        found = []
        for f in corpus:
            detected = np.zeros(len(f.values), dtype=bool)
            detected[zscore_anomalies(f.times, f.values, rule)[0]] = True
            found.append(detected)
        return found

    return detect


def reference(nab_dir: Path, name: str = "windowedGaussian") -> Detections | None:
    """NAB's own results for a published detector, at its corpus-tuned threshold."""
    folder = next(
        (d for d in (nab_dir / f"reference-{name}", nab_dir / "results" / name) if d.is_dir()), None
    )
    if folder is None:
        return None
    threshold = read_thresholds(nab_dir, name)["standard"]

    def detect(corpus: list[DataFile]) -> list[np.ndarray]:
        found = []
        for f in corpus:
            category, file_name = f.name.split("/", 1)
            with open(folder / category / f"{name}_{file_name}", newline="") as handle:
                scores = np.array([float(row["anomaly_score"]) for row in csv.DictReader(handle)])
            found.append(scores >= threshold)
        return found

    return detect


def score(corpus: list[DataFile], found: list[np.ndarray], nab_dir: Path) -> dict[str, dict[str, Total]]:
    """category (and 'overall') -> profile -> totals."""
    profiles = load_profiles(nab_dir)
    totals: dict[str, dict[str, Total]] = {}
    for f, detected in zip(corpus, found, strict=True):
        for group in (f.category, "overall"):
            per = totals.setdefault(group, {p: Total(profiles[p]) for p in PROFILE_NAMES})
            for name in PROFILE_NAMES:
                per[name].add(score_file(f, detected, profiles[name]), len(f.values))
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nab-dir", type=Path, default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    parser.add_argument(
        "--oracle", action="store_true", help="also the best threshold per file, chosen with the labels"
    )
    args = parser.parse_args(argv)
    nab_dir: Path = args.nab_dir
    if not (nab_dir / "labels" / "combined_windows.json").exists():
        print(f"no NAB data in {nab_dir} (labels/combined_windows.json); pass --nab-dir", file=sys.stderr)
        return 2
    corpus = load_corpus(nab_dir)
    readings = sum(len(f.values) for f in corpus)
    print(
        f"NAB: {len(corpus)} files, {readings:,} readings, {sum(len(f.windows) for f in corpus)} windows ({nab_dir})"
    )
    detectors: dict[str, Detections] = {
        "streaming (default)": streaming(StreamingParams()),
        "zscore k=3, 1 h (default)": zscore(ZscoreRule()),
        # The default hour holds fewer than min_count readings at NAB's 5-minute sampling.
        "zscore k=3, 1 day": zscore(ZscoreRule(window=86_400 * 1_000_000)),
    }
    if args.oracle:
        detectors["streaming, oracle threshold/file"] = per_file_oracle(nab_dir)
    published = reference(nab_dir)
    if published is not None:
        detectors["windowedGaussian (NAB's results)"] = published
    results = {}
    for name, detect in detectors.items():
        started = time.perf_counter()
        found = detect(corpus)
        results[name] = (score(corpus, found, nab_dir), time.perf_counter() - started)

    categories = sorted({f.category for f in corpus})
    print(
        f"\n{'detector':<34}{'category':<22}{'standard':>9}{'low FP':>9}{'low FN':>9}{'windows':>10}{'FP':>7}{'FP/1000':>9}"
    )
    for name, (totals, seconds) in results.items():
        for group in [*categories, "overall"]:
            per = totals[group]
            standard = per["standard"]
            row = "  ".join(
                f"{per[p].normalised:>7.1f}" if per[p].windows else f"{'—':>7}" for p in PROFILE_NAMES
            )
            print(
                f"{name if group == categories[0] else '':<34}{group:<22}{row}"
                f"{standard.detected:>5}/{standard.windows:<4}{standard.false_positives:>7}"
                f"{1000 * standard.false_positives / standard.readings:>9.2f}"
            )
        print(f"{'':<34}({seconds:.1f} s)")
    print(
        "\npublished, standard profile, these 45 files: "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
    )
    ours = results["streaming (default)"][0]["overall"]
    met = ours["standard"].normalised >= GOAL
    print(f"goal: standard >= {GOAL}: {'met' if met else 'NOT met'} ({ours['standard'].normalised:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
