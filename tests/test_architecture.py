"""The house rules hold: the import contracts in pyproject.toml, and what loads when."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("sqlalchemy", "numpy", "pydantic", "paho", "httpx", "psycopg", "rich", "numba")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(root / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_every_import_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_source_that_imports_the_store_breaks_a_contract(tmp_path: Path) -> None:
    copy = tmp_path / "house"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(
        ROOT / "iotpipe", copy / "iotpipe", ignore=shutil.ignore_patterns("__pycache__", "static")
    )
    (copy / "iotpipe" / "sources" / "shortcut.py").write_text(
        '"""A source that writes straight to the database."""\n\nfrom iotpipe.store import open_store\n'
    )
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "iotpipe.sources.shortcut -> iotpipe.store" in result.stdout
    assert "BROKEN" in result.stdout


def loaded_after(code: str) -> list[str]:
    """The heavy packages present in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.rsplit("loaded:", 1)[1].split()


def test_the_mqtt_source_loads_neither_the_database_layer_nor_numpy() -> None:
    loaded = loaded_after("import iotpipe.sources.mqtt")
    assert "sqlalchemy" not in loaded and "numpy" not in loaded and "pydantic" not in loaded


@pytest.mark.parametrize("command", [[], ["run"], ["import"], ["ingest", "mqtt"], ["query"]], ids=" ".join)
def test_help_loads_nothing_heavy(command: list[str]) -> None:
    code = (
        "import sys\nfrom iotpipe.cli import app\n"
        f"sys.argv = ['iotpipe', *{command!r}, '--help']\n"
        "try:\n    app(prog_name='iotpipe')\nexcept SystemExit:\n    pass"
    )
    assert loaded_after(code) == []


def test_numba_loads_only_when_the_detector_scores() -> None:
    # The pipeline's observer is built by every ingest command; numba (~1 s to import) is
    # for the process that scores readings.
    assert "numba" not in loaded_after("import iotpipe.app.wiring, iotpipe.analytics.streaming")
    scoring = (
        "from iotpipe.analytics.detector import StreamingDetector\n"
        "StreamingDetector().process([1], [1_000_000], [1.0])"
    )
    assert "numba" in loaded_after(scoring)
