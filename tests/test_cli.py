"""The CLI as users meet it: help everywhere, stats, run on the embedded default, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [[], ["init"], ["run"], ["import"], ["stats"], ["dlq"], ["dlq", "list"], ["dlq", "replay"]]


def iotpipe(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotpipe", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_useful_help(command: list[str], tmp_path: Path) -> None:
    result = iotpipe(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: iotpipe" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_run_ingests_simulated_data_into_the_default_sqlite_file(tmp_path: Path) -> None:
    result = iotpipe(
        "run", "--duration", "3", "--interval", "0.5", "--devices", "3", "--seed", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    database = tmp_path / "iotpipe.db"
    assert f"SQLite database {database}" in result.stdout
    stats = json.loads(iotpipe("stats", "--json", cwd=tmp_path).stdout)
    assert stats["devices"] == 3
    assert stats["series"] == 15  # 5 metrics each
    assert stats["readings"] >= 15 * 4  # at least 4 rounds in 3 s at 0.5 s
    assert stats["dead_letters"] == 0


def test_unreachable_postgres_says_what_to_check(tmp_path: Path) -> None:
    result = iotpipe("--database-url", "postgresql://nobody@127.0.0.1:1/x", "stats", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot connect to the database" in result.stderr
    assert "--database-url" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_password_with_an_unencoded_at_sign_is_refused_without_showing_it(tmp_path: Path) -> None:
    result = iotpipe("--database-url", "postgresql://bob:x@Hunter2@127.0.0.1:1/db", "stats", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "has more than one @ before its host: write an @ in the user name or password as %40" in result.stderr
    )
    assert "Hunter2" not in result.stderr + result.stdout


def test_unsupported_database_url_is_explained(tmp_path: Path) -> None:
    result = iotpipe("--database-url", "mysql://x/y", "stats", cwd=tmp_path)
    assert result.returncode == 2
    assert "unsupported database URL 'mysql://x/y'" in result.stderr


def test_a_broken_config_file_is_a_usage_error_not_a_bug(tmp_path: Path) -> None:
    (tmp_path / "iotpipe.toml").write_text("[pipeline\n")
    broken = iotpipe("stats", cwd=tmp_path)
    assert broken.returncode == 2
    assert "iotpipe.toml is not valid TOML" in broken.stderr and "line 1" in broken.stderr
    assert "internal error" not in broken.stderr and "Traceback" not in broken.stderr
    (tmp_path / "iotpipe.toml").write_text("[pipeline]\nbatchsize = 5\n")
    misspelt = iotpipe("stats", cwd=tmp_path)
    assert misspelt.returncode == 2
    assert "pipeline.batchsize (did you mean batch_size?)" in misspelt.stderr
    assert not (tmp_path / "iotpipe.db").exists()  # refused before anything was opened


def test_log_format_json_prints_json_lines(tmp_path: Path) -> None:
    result = iotpipe(
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "run",
        "--duration",
        "1.5",
        "--interval",
        "0.5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines, result.stderr
    assert all({"time", "level", "logger", "message"} <= json.loads(line).keys() for line in lines)


def test_a_command_on_what_is_stored_at_a_mistyped_path_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "iotpipe.db"
    for command in (
        ["stats"],
        ["dlq", "list"],
        ["query", "--device", "a", "--metric", "b"],
        ["keys", "list"],
        ["purge", "--dry-run"],
        ["jobs", "all"],
    ):
        result = iotpipe("--database-url", f"sqlite:///{typo}", *command, cwd=tmp_path)
        assert result.returncode == 2, command
        assert f"no database at {typo}; check --database-url" in result.stderr
    assert not (tmp_path / "typo").exists()


def test_a_file_that_is_not_a_database_is_named_not_called_a_bug(tmp_path: Path) -> None:
    other = tmp_path / "readings.jsonl"
    other.write_text('{"device_id": "a", "t": 1}\n')
    result = iotpipe("--database-url", f"sqlite:///{other}", "stats", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot be opened as a database (file is not a database)" in result.stderr
    assert "internal error" not in result.stderr
    assert other.read_text() == '{"device_id": "a", "t": 1}\n'
