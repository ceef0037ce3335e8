"""The z-score rule: exact against a direct computation, idempotent in the store, corrected
by late readings; the `anomalies` job and command; detection-quality scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from benchmarks.evaluation import evaluate
from iotpipe.analytics.anomalies import ZscoreRule, anomaly_rows, detect_zscore, zscore_anomalies
from iotpipe.analytics.jobs import find_job, run_job
from iotpipe.config import AnomalySettings, Settings
from iotpipe.model import MICROS_PER_SECOND, format_micros, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import anomalies
from tests.analytics.support import write_readings
from tests.test_cli import iotpipe

MINUTE = 60 * MICROS_PER_SECOND
RULE = ZscoreRule(k=3.0, window=60 * MINUTE, min_count=20)


def irregular_series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Readings 1 s to 20 min apart, with a slow swing, noise and a few outliers."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([1, 5, 30, 60, 60, 1200], size=n) * MICROS_PER_SECOND
    times = 1_767_225_600 * MICROS_PER_SECOND + np.cumsum(gaps)
    values = 1013 + 3 * np.sin(np.arange(n) / 200) + rng.normal(0, 0.5, n)
    values[rng.choice(n, size=n // 100, replace=False)] += rng.choice([-6.0, 6.0], size=n // 100)
    return times.astype(np.int64), values


def direct(times: np.ndarray, values: np.ndarray, rule: ZscoreRule) -> list[tuple[int, float]]:
    """The rule read literally, one reading at a time."""
    found = []
    for i in range(len(values)):
        window = values[(times >= times[i] - rule.window) & (times < times[i])]
        if len(window) < rule.min_count:
            continue
        mean, stddev = window.mean(), window.std(ddof=1)
        if stddev > 0 and abs(values[i] - mean) > rule.k * stddev:
            found.append((i, abs(values[i] - mean) / stddev))
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rule_equals_a_direct_computation_on_irregular_data(seed: int) -> None:
    times, values = irregular_series(3000, seed)
    flagged, scores = zscore_anomalies(times, values, RULE)
    expected = direct(times, values, RULE)
    assert flagged.tolist() == [i for i, _ in expected]
    assert np.allclose(scores, [s for _, s in expected], rtol=1e-9)
    assert len(expected) > 10


def test_a_flat_window_or_a_thin_one_judges_nothing() -> None:
    times = np.arange(100, dtype=np.int64) * MINUTE
    flat = np.full(100, 7.0)
    flat[50] = 100.0
    flagged, _ = zscore_anomalies(times, flat, ZscoreRule(k=3, window=30 * MINUTE, min_count=20))
    assert flagged.tolist() == []  # the window before the jump has no spread at all
    sparse = np.random.default_rng(1).normal(size=100)
    sparse[90] = 50
    flagged, _ = zscore_anomalies(times * 60, sparse, ZscoreRule(k=3, window=30 * MINUTE, min_count=20))
    assert flagged.tolist() == []  # an hour between readings: never 20 in a window


def test_readings_before_since_only_serve_as_window() -> None:
    times, values = irregular_series(2000, 4)
    all_flags, _ = zscore_anomalies(times, values, RULE)
    later, _ = zscore_anomalies(times, values, RULE, since=int(times[1000]))
    assert later.tolist() == [i for i in all_flags.tolist() if i >= 1000]


def load(store: Store, times: np.ndarray, values: np.ndarray, device: str = "pump-1") -> None:
    write_readings(
        store, [(device, "pressure", int(t), float(v)) for t, v in zip(times, values, strict=True)]
    )


def zscore_rows(store: Store) -> list[tuple[int, float]]:
    with store.engine.connect() as conn:
        return sorted(
            (t, v)
            for t, v in conn.execute(
                select(anomalies.c.time, anomalies.c.value).where(anomalies.c.method == "zscore")
            )
        )


def test_detection_in_the_store_is_idempotent_and_late_readings_correct_it(store: Store) -> None:
    times, values = irregular_series(1500, 5)
    load(store, times, values)
    start = int(times[0])
    first = detect_zscore(store, RULE, start)
    expected = [(int(times[i]), float(values[i])) for i, _ in direct(times, values, RULE)]
    assert zscore_rows(store) == expected
    assert first["added"] == len(expected) and first["removed"] == 0
    assert detect_zscore(store, RULE, start) == {**first, "added": 0}

    # Late readings arrive in the hour before the first flagged reading: it may no longer
    # stand out, and new ones may; the stored rows follow the rule on what is stored now.
    flagged_at = expected[0][0]
    late_t = np.arange(flagged_at - 50 * MINUTE, flagged_at, MINUTE // 7)
    late_t = late_t[~np.isin(late_t, times)]
    late_v = np.full(len(late_t), expected[0][1])  # as extreme as the flagged reading
    load(store, late_t, late_v)
    again = detect_zscore(store, RULE, start)
    all_t = np.concatenate([times, late_t])
    order = np.argsort(all_t)
    all_t, all_v = all_t[order], np.concatenate([values, late_v])[order]
    now_expected = [(int(all_t[i]), float(all_v[i])) for i, _ in direct(all_t, all_v, RULE)]
    assert zscore_rows(store) == now_expected
    assert again["removed"] >= 1
    assert expected[0] not in now_expected


def test_detection_over_a_range_or_a_device_leaves_the_rest_alone(store: Store) -> None:
    times, values = irregular_series(1500, 6)
    load(store, times, values, "pump-1")
    load(store, times, values, "pump-2")
    middle = int(times[750])
    detect_zscore(store, RULE, middle, device_id="pump-2")
    rows = anomaly_rows(store)
    assert rows and {r["device_id"] for r in rows} == {"pump-2"}
    assert min(r["time"] for r in rows) >= middle
    assert all(r["end_time"] == r["time"] and r["method"] == "zscore" for r in rows)


def test_the_anomalies_job_judges_the_recent_past(store: Store) -> None:
    now = now_micros()
    rng = np.random.default_rng(8)
    times = now - np.arange(200, 0, -1, dtype=np.int64) * MINUTE // 2
    values = 20 + rng.normal(0, 0.2, 200)
    values[-3] = 30
    load(store, times, values)
    settings = Settings(anomalies=AnomalySettings(lookback_seconds=600))  # type: ignore[call-arg]
    result = run_job(find_job("anomalies"), store, settings)
    assert result["job"] == "anomalies" and result["series"] == 1 and result["added"] >= 1
    assert int(times[-3]) in {r["time"] for r in anomaly_rows(store)}
    assert run_job(find_job("anomalies"), store, settings)["added"] == 0


def test_anomalies_command_lists_both_methods_as_json_and_detects_on_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    base = 1_767_225_600_000
    lines, values = [], []
    for i in range(600):
        values.append(round(20 + rng.normal(0, 0.3) + (9 if i == 400 else 0), 2))
        lines.append(
            json.dumps({"device_id": "pump-1", "timestamp": base + i * 5000, "temperature": values[i]})
        )
    (tmp_path / "h.jsonl").write_text("\n".join(lines) + "\n")
    assert iotpipe("import", "h.jsonl", cwd=tmp_path).returncode == 0

    streaming = json.loads(iotpipe("anomalies", "--json", cwd=tmp_path).stdout)
    spike = format_micros((base + 400 * 5000) * 1000)
    [episode] = streaming
    assert list(episode) == ["device_id", "metric", "time", "end_time", "value", "score", "method", "reason"]
    assert (episode["device_id"], episode["metric"], episode["time"]) == ("pump-1", "temperature", spike)
    assert (episode["value"], episode["method"], episode["reason"]) == (values[400], "streaming", "spike")
    assert episode["end_time"] is None or episode["end_time"] >= spike  # its last abnormal reading
    assert episode["score"] >= 5.5  # the threshold: once in 10**5.5 readings of this series

    detected = iotpipe("anomalies", "--detect", "--start", "2026-01-01T00:00:00Z", "--json", cwd=tmp_path)
    assert detected.returncode == 0, detected.stderr
    assert "z-score rule from 2026-01-01T00:00:00Z" in detected.stderr
    both = json.loads(detected.stdout)
    assert {r["method"] for r in both} == {"zscore", "streaming"}
    assert spike in {r["time"] for r in both if r["method"] == "zscore"}
    only = json.loads(
        iotpipe("anomalies", "--method", "zscore", "--device", "pump-1", "--json", cwd=tmp_path).stdout
    )
    assert only and all(r["method"] == "zscore" for r in only)
    assert list(only[0]) == ["device_id", "metric", "time", "end_time", "value", "score", "method", "reason"]
    assert {r["reason"] for r in only} <= {"spike", "dip"}
    nobody = iotpipe("anomalies", "--device", "nobody", "--json", cwd=tmp_path)  # not "none found"
    assert nobody.returncode == 2 and "no device 'nobody' in the store" in nobody.stderr

    table = iotpipe("anomalies", "--method", "streaming", cwd=tmp_path, env=None)
    assert "pump-1" in table.stdout and "streaming" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ewma"], "unknown method 'ewma'; choose one of: zscore, streaming"),
        (["--start", "yesterday"], "--start 'yesterday'"),
    ],
)
def test_anomalies_command_explains_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    assert iotpipe("init", cwd=tmp_path).returncode == 0
    result = iotpipe("anomalies", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_quality_counts_recall_false_alarms_and_delay() -> None:
    truth = {"a": [(100, 110), (500, 500)], "b": [(300, 320)]}
    alarms = {
        "a": [(95, 130), (503, 503), (900, 900)],  # open before the first; 3 after a spike; false
        "b": [(400, 410)],  # too late even with grace
        "c": [(1, 2)],  # a series with no labels: false
    }
    quality = evaluate(truth, alarms, readings=2000, grace=5)
    assert (quality.episodes, quality.detected, quality.alarms, quality.false_alarms) == (3, 2, 5, 3)
    assert quality.recall == pytest.approx(2 / 3)
    assert quality.false_alarms_per_1000 == pytest.approx(1.5)
    assert sorted(quality.delays) == [0, 3]
