"""Our NAB scorer against NAB's own per-row results for its windowedGaussian detector."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.nab import PROFILE_NAMES, Total, load_corpus, load_profiles, read_thresholds, score_file

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [d / "shared" / "datasets" / "nab-tune" for d in (ROOT.parent, ROOT.parent.parent)]
NAB = next((d for d in CANDIDATES if d.is_dir()), CANDIDATES[0])


@pytest.fixture(scope="module")
def corpus() -> list:
    # Missing data is a failure, not a skip: a skipped test is a test nobody runs.
    assert NAB.is_dir(), f"the NAB subset is missing: looked in {', '.join(map(str, CANDIDATES))}"
    return load_corpus(NAB)


def test_thresholded_reference_scores_reproduce_every_row_and_file_total(corpus: list) -> None:
    profiles = load_profiles(NAB)
    thresholds = read_thresholds(NAB, "windowedGaussian")
    totals = {name: Total(profiles[name]) for name in PROFILE_NAMES}
    for data in corpus:
        category, file_name = data.name.split("/", 1)
        with open(NAB / "reference-windowedGaussian" / category / f"windowedGaussian_{file_name}") as handle:
            rows = list(csv.DictReader(handle))
        scores = np.array([float(r["anomaly_score"]) for r in rows])
        labels = np.array([int(r["label"]) for r in rows])
        in_window = np.zeros(len(rows), dtype=int)
        for first, last in data.windows:
            in_window[first : last + 1] = 1
        assert (in_window == labels).all(), data.name
        for name in PROFILE_NAMES:
            result = score_file(data, scores >= thresholds[name], profiles[name])
            expected = np.array([float(r[f"S(t)_{name}"]) for r in rows])
            np.testing.assert_allclose(result.points, expected, atol=1e-9, err_msg=f"{data.name} {name}")
            assert result.raw == pytest.approx(expected.sum(), abs=1e-9)
            totals[name].add(result, len(rows))
    # The data set's README: windowedGaussian scores 47.6 (standard) on these 45 files.
    assert round(totals["standard"].normalised, 1) == 47.6
    assert totals["standard"].windows == 91


def test_a_detection_at_a_windows_first_row_scores_one_and_a_miss_minus_one() -> None:
    from benchmarks.nab import DataFile

    times = np.arange(2000, dtype=np.int64)
    data = DataFile("x/y.csv", times, np.zeros(2000), [(1000, 1099)])
    profile = load_profiles(NAB)["standard"] if NAB.is_dir() else None
    if profile is None:
        from benchmarks.nab import Profile

        profile = Profile("standard", 1.0, 0.11, 1.0)
    early = np.zeros(2000, dtype=bool)
    early[1000] = True
    assert score_file(data, early, profile).raw == pytest.approx(1.0)
    assert score_file(data, np.zeros(2000, dtype=bool), profile).raw == -1.0
    far = early.copy()
    far[1900] = True  # more than 3 window lengths later: a full false positive
    assert score_file(data, far, profile).raw == pytest.approx(1.0 - 0.11)
