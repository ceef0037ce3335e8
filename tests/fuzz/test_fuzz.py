"""A short fuzz run of the decoders on every test run, so CI runs it (`make fuzz` runs longer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from iotpipe.formats.values import coerce_value
from iotpipe.model import InvalidValue

SCRIPT = Path(__file__).with_name("fuzz_decoders.py")


def test_a_short_fuzz_of_the_decoders_finds_nothing_but_decode_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "-max_total_time=15", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    finding = done.stderr.find("=== Uncaught")
    assert done.returncode == 0, done.stderr[finding:][:3000] if finding >= 0 else done.stderr[-3000:]
    assert "Done" in done.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_a_separator_control_before_a_number_is_stripped_not_a_crash() -> None:
    # Found by the fuzzer: the number pattern's \s takes \x1c-\x1f, which float() refuses.
    assert coerce_value("t", "\x1d4") == 4.0
    assert coerce_value("t", "\x1d4\x1c") == 4.0
    assert isinstance(coerce_value("t", "\x1d"), type(None) | InvalidValue)
