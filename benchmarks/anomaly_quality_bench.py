"""Anomaly detection quality (issue 5): recall of episodes, false alarms per 1,000 readings, delay.

Detectors, side by side on the same series:
- zscore: the batch rule iotpipe stores (|x - mean| > k * stddev over a trailing window);
- streaming: iotpipe's streaming detector (docs/anomalies.md: seasonal baseline, rarity, CUSUM, records, stuck; episodes);
- two simpler streaming candidates it was chosen over: an EWMA z-score, and a rolling
  median/MAD of the level alone — same episode grouping, same threshold.

Data: the simulator's series with injected spikes, stuck values, drift, level shifts
and noise bursts (labelled by the simulator), and two real, public, labelled sensor
recordings shipped in benchmarks/data (see its README): an arterial blood pressure
trace with one labelled anomaly (UCR anomaly archive no. 135) and 9 accelerometer
channels labelled normal throughout (Daphnet freezing-of-gait, S06R02E0).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/anomaly_quality_bench.py`: put the repo root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import csv
import gzip
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks.evaluation import DetectionQuality, Span, evaluate
from iotpipe import formats
from iotpipe.analytics.anomalies import ZscoreRule, zscore_anomalies
from iotpipe.analytics.detector import StreamingDetector, StreamingParams
from iotpipe.model import MICROS_PER_SECOND, Micros
from iotpipe.sources.simulator import ANOMALY_KINDS, Simulator

DATA = Path(__file__).resolve().parent / "data"
Key = Hashable
Series = dict[Key, tuple[np.ndarray, np.ndarray]]  # key -> (times µs, values), time-ordered
Alarms = dict[Key, list[Span]]
GRACE_READINGS = 5  # an alarm this many readings after an episode's end still detects it


@dataclass
class Dataset:
    name: str
    series: Series
    truth: dict[Key, list[Span]]
    kinds: dict[tuple[Key, Span], str]  # labelled episode -> its kind
    interval: Micros  # time between two readings of a series

    @property
    def readings(self) -> int:
        return sum(len(v) for _, v in self.series.values())


# -- data ------------------------------------------------------------------------------
def simulated(devices: int, rounds: int, seed: int, anomaly_rate: float) -> Dataset:
    """The simulator's reports, decoded as the pipeline decodes them."""
    sim = Simulator(devices=devices, interval=5.0, seed=seed, anomaly_rate=anomaly_rate, dropout_rate=0.0005)
    start = 1_767_225_600 * MICROS_PER_SECOND  # 2026-01-01
    columns: dict[Key, tuple[list[int], list[float]]] = {}
    for report in sim.reports(start, rounds):
        for message in formats.decode(report.raw()):
            for metric, t, value in message.readings:
                times, values = columns.setdefault((message.device_id, metric), ([], []))
                times.append(t)
                values.append(value)
    series = {k: (np.array(t, dtype=np.int64), np.array(v)) for k, (t, v) in columns.items()}
    truth: dict[Key, list[Span]] = {}
    kinds: dict[tuple[Key, Span], str] = {}
    for episode in sim.episodes:
        if episode.kind in ANOMALY_KINDS:
            key, span = (episode.device_id, episode.metric), (episode.start, episode.end)
            truth.setdefault(key, []).append(span)
            kinds[(key, span)] = episode.kind
    return Dataset("simulator", series, truth, kinds, sim.step)


def labelled_csv(name: str, path: Path, columns: list[str] | None = None) -> Dataset:
    """A TimeEval-format CSV (timestamp, channels..., is_anomaly): one series per channel,
    readings one second apart; labelled episodes are the runs of is_anomaly = 1."""
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    channels = columns or header[1:-1]
    labels = np.array([int(float(r[-1])) for r in body])
    times = np.arange(len(body), dtype=np.int64) * MICROS_PER_SECOND
    spans: list[Span] = []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], labels, [0]))))
    for first, after in zip(edges[::2], edges[1::2], strict=True):
        spans.append((int(times[first]), int(times[after - 1])))
    series: Series = {}
    truth: dict[Key, list[Span]] = {}
    kinds: dict[tuple[Key, Span], str] = {}
    for channel in channels:
        column = header.index(channel)
        series[channel] = (times, np.array([float(r[column]) for r in body]))
        truth[channel] = list(spans)
        kinds.update({(channel, span): "labelled" for span in spans})
    return Dataset(name, series, truth, kinds, MICROS_PER_SECOND)


# -- detectors -------------------------------------------------------------------------
def zscore_detector(rule: ZscoreRule) -> Callable[[Dataset], Alarms]:
    def detect(data: Dataset) -> Alarms:
        alarms: Alarms = {}
        for key, (times, values) in data.series.items():
            flagged, _ = zscore_anomalies(times, values, rule)
            alarms[key] = [(int(times[i]), int(times[i])) for i in flagged]
        return alarms

    return detect


def streaming_detector(params: StreamingParams, batch: int = 50_000) -> Callable[[Dataset], Alarms]:
    """iotpipe's detector, fed every series at once in time order, `batch` readings at a time."""

    def detect(data: Dataset) -> Alarms:
        keys = list(data.series)
        sids = np.concatenate([np.full(len(data.series[k][0]), i) for i, k in enumerate(keys)])
        times = np.concatenate([data.series[k][0] for k in keys])
        values = np.concatenate([data.series[k][1] for k in keys])
        order = np.argsort(times, kind="stable")
        sids, times, values = sids[order], times[order], values[order]
        detector = StreamingDetector(params)
        opened: dict[tuple[int, int], Micros | None] = {}
        for start in range(0, len(values), batch):
            part = slice(start, start + batch)
            for episode in detector.process(sids[part], times[part], values[part]):
                opened[(episode.series_id, episode.time)] = episode.end_time
        alarms: Alarms = {k: [] for k in keys}
        for (sid, first), end in opened.items():
            key = keys[sid]
            alarms[key].append((first, end if end is not None else int(data.series[key][0][-1])))
        return alarms

    return detect


def ewma_detector(span: int, threshold: float, calm: int) -> Callable[[Dataset], Alarms]:
    """Exponentially weighted mean and variance (alpha = 2 / (span + 1)), z-score of each
    reading against them before it updates them; `span` readings of warm-up."""
    alpha = 2.0 / (span + 1.0)

    def detect(data: Dataset) -> Alarms:
        alarms: Alarms = {}
        for key, (times, values) in data.series.items():
            abnormal = np.zeros(len(values), dtype=bool)
            mean, variance = float(values[0]), 0.0
            for i in range(1, len(values)):
                x = float(values[i])
                deviation = x - mean
                if i > span and variance > 0 and abs(deviation) >= threshold * math.sqrt(variance):
                    abnormal[i] = True
                mean += alpha * deviation
                variance = (1 - alpha) * (variance + alpha * deviation * deviation)
            alarms[key] = episodes_of(abnormal, times, calm)
        return alarms

    return detect


def median_mad_detector(window: int, threshold: float, calm: int) -> Callable[[Dataset], Alarms]:
    """Robust z of the level alone: |x - median| / (1.4826 MAD) of the `window` readings
    before x, floored at the series' resolution."""

    def detect(data: Dataset) -> Alarms:
        alarms: Alarms = {}
        for key, (times, values) in data.series.items():
            abnormal = np.zeros(len(values), dtype=bool)
            if len(values) > window:
                past = sliding_window_view(values, window)[:-1]
                median = np.median(past, axis=1)
                mad = np.median(np.abs(past - median[:, None]), axis=1) * 1.4826
                steps = np.abs(np.diff(values))
                resolution = steps[steps > 0].min() if np.any(steps > 0) else 1e-9
                score = np.abs(values[window:] - median) / np.maximum(mad, resolution)
                abnormal[window:] = score >= threshold
            alarms[key] = episodes_of(abnormal, times, calm)
        return alarms

    return detect


def episodes_of(abnormal: np.ndarray, times: np.ndarray, calm: int) -> list[Span]:
    """Abnormal readings grouped as the streaming detector groups them: an episode ends
    after `calm` normal readings in a row."""
    spans: list[Span] = []
    flagged = np.flatnonzero(abnormal)
    if not len(flagged):
        return spans
    first = last = int(flagged[0])
    for index in flagged[1:].tolist():
        if index - last - 1 >= calm:
            spans.append((int(times[first]), int(times[last])))
            first = index
        last = index
    spans.append((int(times[first]), int(times[last])))
    return spans


# -- report ----------------------------------------------------------------------------
def score(data: Dataset, alarms: Alarms) -> tuple[DetectionQuality, dict[str, DetectionQuality]]:
    grace = GRACE_READINGS * data.interval
    overall = evaluate(data.truth, alarms, data.readings, grace)
    by_kind: dict[str, DetectionQuality] = {}
    for kind in sorted(set(data.kinds.values())):
        truth = {k: [s for s in spans if data.kinds[(k, s)] == kind] for k, spans in data.truth.items()}
        quality = evaluate(truth, {k: alarms.get(k, []) for k in truth}, data.readings, grace)
        quality.false_alarms = 0  # false alarms belong to the overall figure only
        by_kind[kind] = quality
    return overall, by_kind


def report_line(name: str, quality: DetectionQuality, interval: Micros, seconds: float) -> str:
    delay = quality.median_delay() / interval if quality.delays else float("nan")
    return (
        f"  {name:<34}{quality.recall:>8.1%} ({quality.detected}/{quality.episodes})"
        f"{quality.false_alarms_per_1000:>10.3f}{quality.false_alarms:>7}{delay:>9.1f}"
        f"{quality.alarms_per_episode:>10.2f}{seconds:>8.1f}"
    )


# The two classic candidates, as they were compared with the first streaming detector.
CANDIDATE_WINDOW, CANDIDATE_K, CANDIDATE_CALM = 128, 6.0, 5


def detectors(params: StreamingParams, rule: ZscoreRule) -> dict[str, Callable[[Dataset], Alarms]]:
    w, k, calm = CANDIDATE_WINDOW, CANDIDATE_K, CANDIDATE_CALM
    return {
        f"zscore k={rule.k:g}, {rule.window // MICROS_PER_SECOND:,} s": zscore_detector(rule),
        f"streaming (iotpipe) threshold={params.threshold:g}": streaming_detector(params),
        f"EWMA span={w} k={k:g}": ewma_detector(w, k, calm),
        f"median/MAD level w={w} k={k:g}": median_mad_detector(w, k, calm),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=17_280, help="reports per device (5 s apart)")
    parser.add_argument("--anomaly-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="streaming detector over a grid of thresholds")
    args = parser.parse_args(argv)

    params, rule = StreamingParams(), ZscoreRule()
    started = time.perf_counter()
    sets = [
        simulated(args.devices, args.rounds, args.seed, args.anomaly_rate),
        labelled_csv("UCR 135 arterial blood pressure", DATA / "ucr135_internal_bleeding16.csv.gz"),
        labelled_csv("Daphnet S06R02E0 accelerometers", DATA / "daphnet_s06r02e0.csv.gz"),
    ]
    print(f"data ready in {time.perf_counter() - started:.1f} s")
    header = f"  {'detector':<34}{'recall':>16}{'FA/1000':>10}{'FA':>7}{'delay':>9}{'alarms/ep':>10}{'s':>8}"
    for data in sets:
        kinds = Counter(data.kinds.values())
        print(
            f"\n{data.name}: {data.readings:,} readings in {len(data.series)} series, "
            f"{sum(kinds.values())} labelled episodes ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
            f"delay in readings"
        )
        print(header)
        chosen = detectors(params, rule)
        if args.sweep:
            chosen = {
                f"streaming threshold={k:g} calm={c}": streaming_detector(
                    replace(params, threshold=k, calm=c)
                )
                for k in (3.0, 4.0, 5.0, 6.0, 8.0)
                for c in (6, 24)
            }
        for name, detect in chosen.items():
            clock = time.perf_counter()
            alarms = detect(data)
            seconds = time.perf_counter() - clock
            overall, by_kind = score(data, alarms)
            print(report_line(name, overall, data.interval, seconds))
            if len(by_kind) > 1:
                for kind, quality in by_kind.items():
                    delay = quality.median_delay() / data.interval if quality.delays else float("nan")
                    print(
                        f"      {kind:<30}{quality.recall:>8.1%} ({quality.detected}/{quality.episodes}){delay:>26.1f}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
