"""The analytics views as scripts use them: jobs, query, trends, report, alerts (JSON shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from iotpipe.model import MICROS_PER_DAY, MICROS_PER_SECOND, format_micros, now_micros
from iotpipe.store import open_store
from iotpipe.store.schema import job_state
from tests.test_cli import iotpipe

HOUR = 3600 * MICROS_PER_SECOND


@pytest.mark.parametrize(
    "command", [["jobs"], ["query"], ["trends"], ["report"], ["alerts"], ["alerts", "ack"]], ids=" ".join
)
def test_every_analytics_command_has_useful_help(command: list[str], tmp_path: Path) -> None:
    result = iotpipe(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: iotpipe" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def run_json(*args: str, cwd: Path) -> object:
    result = iotpipe(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_views_after_an_import_and_one_run_of_the_jobs(tmp_path: Path) -> None:
    today = now_micros() // MICROS_PER_DAY * MICROS_PER_DAY
    first_day = today - 3 * MICROS_PER_DAY  # the last reading is a day old, whatever the hour
    lines = []
    for day, level in enumerate((10.0, 12.0, 9.0)):  # three days, two readings an hour
        for half_hour in range(6):
            t = first_day + day * MICROS_PER_DAY + half_hour * HOUR // 2
            lines.append(
                {"device_id": "pump-7", "timestamp": format_micros(t), "pressure": level + half_hour % 2}
            )
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert run_json("import", "history.jsonl", cwd=tmp_path)["stored"] == 18  # type: ignore[index]

    jobs_started = now_micros()
    jobs = run_json("jobs", "all", cwd=tmp_path)
    jobs_ended = now_micros()
    assert [j["job"] for j in jobs] == [
        "rollups",
        "anomalies",
        "quality",
        "health",
        "alerts",
        "webhooks",
        "compact",
        "retention",
        "lake",
    ]  # type: ignore[union-attr,index]

    hourly = run_json("query", "--device", "pump-7", "--metric", "pressure", "--bucket", "1h", cwd=tmp_path)
    assert hourly[0] == {  # type: ignore[index]
        "bucket_start": format_micros(first_day),
        "count": 2,
        "avg": 10.5,
        "min": 10.0,
        "max": 11.0,
        "stddev": 0.7071067811865476,
    }
    raw = run_json(
        "query",
        "--device",
        "pump-7",
        "--metric",
        "pressure",
        "--bucket",
        "raw",
        "--start",
        format_micros(first_day + HOUR),
        "--end",
        format_micros(first_day + 2 * HOUR),
        cwd=tmp_path,
    )
    assert raw == [
        {"time": format_micros(first_day + HOUR), "value": 10.0},
        {"time": format_micros(first_day + 3 * HOUR // 2), "value": 11.0},
    ]

    trends = run_json("trends", "--device", "pump-7", "--metric", "pressure", cwd=tmp_path)
    assert [(d["mean"], d["change"], d["change_pct"], d["avg_7d"]) for d in trends] == [  # type: ignore[union-attr]
        (10.5, None, None, 10.5),
        (12.5, 2.0, 2.0 / 10.5 * 100, 11.5),
        (9.5, -3.0, -3.0 / 12.5 * 100, 32.5 / 3),
    ]

    (device,) = run_json("report", cwd=tmp_path)  # type: ignore[misc]
    assert device["device_id"] == "pump-7"
    assert device["readings"] == 18
    assert {"expected", "missing", "invalid", "out_of_range", "anomalous", "missing_pct", "score"} <= set(
        device
    )
    # Today, silent, is listed (0 readings, all missing) once a reading was due on it: from
    # 00:15 UTC at this series' 30-minute interval (`round` of the intervals elapsed).
    due_today = {round((t - today) / (HOUR // 2)) > 0 for t in (jobs_started, jobs_ended)}
    days = [d["readings"] for d in device["days"]]
    assert days in ([6, 6, 6, 0] if True in due_today else None, [6, 6, 6] if False in due_today else None)

    alerts = run_json("alerts", "--status", "open", cwd=tmp_path)
    [offline] = [a for a in alerts if a["rule"] == "device offline"]  # type: ignore[union-attr,index]
    assert {"id", "status", "severity", "device_id", "rule", "message"} <= set(offline)
    assert (offline["status"], offline["severity"], offline["device_id"]) == ("open", "major", "pump-7")
    # The API's filters: severity and device pick it out, or nothing.
    majors = run_json("alerts", "--status", "open", "--severity", "major", "--device", "pump-7", cwd=tmp_path)
    assert offline in majors and majors == [a for a in alerts if a["severity"] == "major"]  # type: ignore[union-attr,index,operator]
    assert run_json("alerts", "--severity", "critical", cwd=tmp_path) == []
    none = iotpipe("alerts", "--status", "open", "--severity", "critical", "--device", "pump-7", cwd=tmp_path)
    assert (none.returncode, none.stdout.strip()) == (0, "No open critical alerts for pump-7.")
    # A misspelt device is not "no alerts": every filter on a device names an unknown one.
    for view in (["alerts"], ["anomalies"], ["report"]):
        ghost = iotpipe(*view, "--device", "ghost", cwd=tmp_path)
        assert ghost.returncode == 2, view
        assert "no device 'ghost' in the store; check the device id (case matters)" in ghost.stderr


def test_views_explain_unknown_series_buckets_and_alerts(tmp_path: Path) -> None:
    assert iotpipe("init", cwd=tmp_path).returncode == 0
    unknown = iotpipe("query", "--device", "ghost", "--metric", "x", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no device 'ghost' in the store" in unknown.stderr
    bucket = iotpipe("query", "--device", "ghost", "--metric", "x", "--bucket", "5m", cwd=tmp_path)
    assert "unknown bucket '5m'; choose one of: raw, 1h, 1d, 1w" in bucket.stderr
    ack = iotpipe("alerts", "ack", "41", cwd=tmp_path)
    assert (ack.returncode, "no alert 41" in ack.stderr) == (2, True)
    status = iotpipe("alerts", "--status", "closed", cwd=tmp_path)
    assert "unknown alert status 'closed'" in status.stderr
    severity = iotpipe("alerts", "--severity", "Major", cwd=tmp_path)
    assert (severity.returncode, severity.stderr.strip()) == (
        2,
        "error: unknown severity 'Major'; choose one of: critical, major, minor, warning",
    )
    backwards = ["--start", "2026-01-02T00:00:00Z", "--end", "2026-01-01T00:00:00Z"]
    for command in (
        ["anomalies"],
        ["trends", "--device", "ghost", "--metric", "x"],
        ["export", "--out", "x"],
    ):
        refused = iotpipe(*command, *backwards, cwd=tmp_path)
        assert (refused.returncode, refused.stderr.strip()) == (
            2,
            "error: --start (2026-01-02T00:00:00Z) must be before --end (2026-01-01T00:00:00Z)",
        ), command
        assert not (tmp_path / "x").exists()
    job = iotpipe("jobs", "cleanup", cwd=tmp_path)
    assert "unknown job 'cleanup'" in job.stderr


def test_run_also_runs_the_jobs(tmp_path: Path) -> None:
    result = iotpipe(
        "run", "--duration", "3", "--interval", "0.5", "--devices", "2", "--seed", "4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Analytics jobs: rollups every 60 s" in result.stdout
    store = open_store(f"sqlite:///{tmp_path / 'iotpipe.db'}")
    try:
        with store.engine.connect() as conn:
            runs = {r.name: r.last_status for r in conn.execute(select(job_state))}
    finally:
        store.close()
    assert runs == dict.fromkeys(
        ("rollups", "anomalies", "quality", "health", "alerts", "webhooks", "compact", "retention", "lake"),
        "ok",
    )
