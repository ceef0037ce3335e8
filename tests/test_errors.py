"""User and environment errors end with exit status 2 and one line saying what to do —
never a traceback: bad URLs, an unreadable schema, a read-only file, a database that
goes away mid-import, out-of-range flags."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from iotpipe.app import explain_error
from tests.servers import PostgresServer
from tests.test_cli import iotpipe


def assert_refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("url", "phrases"),
    [
        ("postgresql://u@127.0.0.1:abc/db", ["is malformed", "postgresql://user@host:port/dbname"]),
        (
            "postgresql://u@127.0.0.1:5432/db?colour=blue",
            ['invalid connection option "colour"', "remove that option"],
        ),
        ("postgresql+psycopg2://u@127.0.0.1:5432/db", ["psycopg2 driver", "no +driver"]),
        ("postgresql://u@127.0.0.1:70000/db", ["port 70000 is out of range"]),
        ("mysql://root:s3cret@localhost/x", ["unsupported database URL 'mysql://root:***@localhost/x'"]),
    ],
)
def test_a_bad_database_url_is_explained_without_its_password(
    url: str, phrases: list[str], tmp_path: Path
) -> None:
    result = iotpipe("--database-url", url, "stats", cwd=tmp_path)
    assert_refused(result, *phrases)
    assert "s3cret" not in result.stderr + result.stdout


def test_tables_without_a_migration_ledger_are_refused(tmp_path: Path) -> None:
    assert iotpipe("init", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "iotpipe.db") as conn:
        conn.execute("DROP TABLE schema_migrations")
    assert_refused(
        iotpipe("stats", cwd=tmp_path), "no record of their migrations", "restore it from a backup"
    )
    assert_refused(iotpipe("init", cwd=tmp_path), "no record of their migrations")


def test_a_database_from_a_newer_iotpipe_is_refused(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("from_the_future")
    assert iotpipe("--database-url", url, "init", cwd=tmp_path).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', now())")
    result = iotpipe("--database-url", url, "init", cwd=tmp_path)
    assert_refused(result, "upgraded by a newer iotpipe", "9999_from_the_future", "upgrade iotpipe")
    assert "up to date" not in result.stdout


def test_a_read_only_database_is_explained(tmp_path: Path) -> None:
    assert iotpipe("init", cwd=tmp_path).returncode == 0
    (tmp_path / "one.jsonl").write_text('{"device_id": "d", "timestamp": 1700000000, "t": 1}\n')
    url = f"sqlite:///file:{tmp_path / 'iotpipe.db'}?mode=ro&uri=true"
    assert_refused(iotpipe("--database-url", url, "import", "one.jsonl", cwd=tmp_path), "read-only")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["dlq", "list", "--limit", "-1"], "Invalid value for '--limit'"),
        (["report", "--days", "1000000"], "Invalid value for '--days'"),
        (
            ["query", "--device", "d", "--metric", "m", "--start", "yesterday"],
            "write e.g. 2026-11-22T10:00:00Z",
        ),
    ],
)
def test_out_of_range_flags_are_refused_before_any_work(
    args: list[str], phrase: str, database_url: str, tmp_path: Path
) -> None:
    assert_refused(iotpipe("--database-url", database_url, *args, cwd=tmp_path), phrase)


def test_a_range_from_year_one_is_answered(database_url: str, tmp_path: Path) -> None:
    assert iotpipe("--database-url", database_url, "init", cwd=tmp_path).returncode == 0
    result = iotpipe(
        "--database-url", database_url, "anomalies", "--start", "0001-01-01", "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_database_going_away_mid_import_is_explained_and_the_rerun_completes(tmp_path: Path) -> None:
    # Recent readings (the last day, ms timestamps): they go to the hot table batch by
    # batch; history past the hot window would be packed in one large batch.
    base_ms = int(time.time() * 1000) - 86_000_000
    lines = (
        f'{{"device_id": "d{i % 100}", "timestamp": {base_ms + i * 200}, "t": {i}}}' for i in range(400_000)
    )
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    with PostgresServer() as server:
        url = server.create_database("going_away")
        process = subprocess.Popen(
            [sys.executable, "-m", "iotpipe", "--database-url", url, "import", "big.jsonl"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while True:  # wait for the first committed batch, then take the database away
            assert time.monotonic() < deadline and process.poll() is None, "the import ended too soon"
            try:
                with psycopg.connect(url) as conn:
                    if conn.execute("SELECT count(*) FROM readings").fetchone()[0]:  # type: ignore[index]
                        break
            except psycopg.errors.UndefinedTable:
                pass
            time.sleep(0.05)
        server.stop(cleanup=False)
        stdout, stderr = process.communicate(timeout=120)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert_refused(result, "the database failed", "The import stopped after", "run the same import again")
        server.launch()
        rerun = iotpipe("--database-url", url, "import", "big.jsonl", "--json", cwd=tmp_path, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 400_000  # type: ignore[index]


def test_an_unexpected_error_is_one_line_that_points_to_the_debug_log() -> None:
    message, expected = explain_error(ZeroDivisionError("division by zero"))
    assert not expected
    assert "internal error (ZeroDivisionError: division by zero)" in message
    assert "--log-level DEBUG" in message
