"""The detector's compiled update: where numba caches its machine code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from iotpipe.analytics.detector_kernel import private_cache_dir

ROOT = Path(__file__).resolve().parent.parent.parent

# A stuck sensor after a day of noise: one episode, reason "stuck".
SCRIPT = """
import numpy as np
from iotpipe.analytics.detector import StreamingDetector
values = np.round(20 + np.random.default_rng(3).normal(0, 0.3, 600), 2)
values[400:] = values[399]
times = 1_767_225_600_000_000 + np.arange(600, dtype=np.int64) * 300_000_000
episodes = StreamingDetector().process(np.ones(600, dtype=np.int64), times, values)
print("reasons:", *(e.reason for e in episodes if e.opened))
"""


def test_compiled_code_is_cached_privately_when_the_install_and_home_are_read_only(tmp_path: Path) -> None:
    install = tmp_path / "install"
    shutil.copytree(
        ROOT / "iotpipe", install / "iotpipe", ignore=shutil.ignore_patterns("__pycache__", "static")
    )
    # A file where numba would make its folders: not writable, even for root.
    (install / "iotpipe" / "analytics" / "__pycache__").write_text("")
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(install),
        "HOME": str(blocked / "home"),
        "XDG_CACHE_HOME": str(blocked / "cache"),
        "TMPDIR": str(temporary),
    }
    env.pop("NUMBA_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reasons:", "stuck"]
    private = temporary / f"iotpipe-numba-{os.getuid()}"
    assert list(private.rglob("*.nbi")), "no compiled code was cached in the private folder"


def test_a_cache_folder_others_can_write_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"iotpipe-numba-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    chosen = private_cache_dir()
    assert chosen != shared
    assert chosen.parent == tmp_path and chosen.stat().st_mode & 0o077 == 0


def test_the_private_cache_folder_is_kept_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = private_cache_dir()
    assert first == tmp_path / f"iotpipe-numba-{os.getuid()}"
    assert private_cache_dir() == first


WARM = """
import numpy as np
from iotpipe.analytics import detector_kernel
from iotpipe.analytics.detector import StreamingDetector
detector = StreamingDetector()
assert not detector_kernel.score_batch.signatures, "compiled before anything asked for it"
detector.warm()
print("signatures:", len(detector_kernel.score_batch.signatures))
print("series:", int((detector.count > 0).sum()))
"""


def test_warming_a_detector_loads_its_compiled_code_and_scores_nothing() -> None:
    # In a process of its own: in this one, earlier tests have loaded the code already.
    result = subprocess.run(
        [sys.executable, "-c", WARM], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["signatures:", "1", "series:", "0"]


SERVE = """
import sys, threading
from iotpipe.cli import main
sys.argv = ["iotpipe", "-d", sys.argv[1], "serve", "--port", "0", "--duration", "1"]
try:
    main()
except SystemExit as stop:
    assert not stop.code, stop.code
for thread in threading.enumerate():
    if thread.name == "iotpipe-detector-warm":
        thread.join(120)
from iotpipe.analytics import detector_kernel
print("signatures:", len(detector_kernel.score_batch.signatures))
"""


def test_a_server_loads_the_detector_before_its_first_batch(tmp_path: Path) -> None:
    # No source and no request: only the warm-up at start can have compiled the update.
    env = {**os.environ, "IOTPIPE_ANALYTICS__JOBS": "false"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE, f"sqlite:///{tmp_path}/serve.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["signatures:", "1"], result.stdout
