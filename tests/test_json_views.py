"""Every `--json` view prints the same types on both engines, on a store holding invalid
values, dead letters, anomalies and alerts (PostgreSQL returns Decimal for sums and
datetime for times; none of that may leak into what scripts read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iotpipe.model import MICROS_PER_DAY, MICROS_PER_SECOND, format_micros, now_micros
from tests.servers import PostgresServer
from tests.test_cli import iotpipe

CONFIG = """
[[analytics.alert_rules]]
name = "pressure high"
metric = "pressure"
max = 50
"""
VIEWS = [
    ["stats"],
    ["dlq", "list"],
    ["query", "--device", "pump-7", "--metric", "pressure", "--bucket", "raw"],
    ["query", "--device", "pump-7", "--metric", "pressure", "--bucket", "1h"],
    ["query", "--device", "pump-7", "--metric", "pressure", "--bucket", "1d"],
    ["query", "--device", "pump-7", "--metric", "pressure", "--bucket", "1w"],
    ["trends", "--device", "pump-7", "--metric", "pressure"],
    ["anomalies"],
    ["report", "--days", "4"],
    ["alerts"],
    ["jobs", "health"],
]


def skeleton(value: Any) -> Any:
    """The JSON types of a value, element by element (the values themselves left out)."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        kinds = []
        for item in value:
            kind = skeleton(item)
            if kind not in kinds:
                kinds.append(kind)
        return kinds
    return type(value).__name__


START = (now_micros() - 3 * MICROS_PER_DAY) // MICROS_PER_DAY * MICROS_PER_DAY


def history(path: Path) -> None:
    lines = []
    for i in range(3 * 720):  # three days up to today, every 2 minutes, a spike and an unusable value
        t = START + i * 120 * MICROS_PER_SECOND
        pressure: Any = 500.0 if i == 2000 else 10.0 + (i % 5) / 10
        lines.append(
            json.dumps(
                {
                    "device_id": "pump-7",
                    "timestamp": format_micros(t),
                    "pressure": pressure,
                    "flow": "n/a" if i == 7 else 1.0,
                }
            )
        )
    lines.append('{"device_id": "pump-7", "timestamp": "not a time", "pressure": 1}')
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")


def views(url: str, cwd: Path) -> dict[str, Any]:
    env = None
    assert iotpipe("--database-url", url, "import", "history.jsonl", cwd=cwd, env=env).returncode == 0
    detect = iotpipe("--database-url", url, "anomalies", "--detect", "--start", format_micros(START), cwd=cwd)
    assert detect.returncode == 0, detect.stderr
    for _ in range(2):  # the second run sees the first one's health and quality
        run = iotpipe("--database-url", url, "jobs", "all", cwd=cwd, env=env)
        assert run.returncode == 0, run.stderr
    found = {}
    for view in VIEWS:
        result = iotpipe("--database-url", url, *view, "--json", cwd=cwd, env=env)
        assert result.returncode == 0, (view, result.stderr)
        found[" ".join(view)] = json.loads(result.stdout)
    return found


def test_every_json_view_prints_the_same_types_on_both_engines(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    (tmp_path / "iotpipe.toml").write_text(CONFIG)
    history(tmp_path / "history.jsonl")
    on_sqlite = views(f"sqlite:///{tmp_path / 'views.db'}", tmp_path)
    on_postgres = views(postgres.create_database("json_views"), tmp_path)
    # The store holds what the test means it to, so the comparison covers every kind of row.
    stats = on_sqlite["stats"]
    assert stats["invalid_values"] == 1 and stats["dead_letters"] == 2
    assert on_sqlite["anomalies"] and on_sqlite["alerts"]
    for name in on_sqlite:
        assert skeleton(on_postgres[name]) == skeleton(on_sqlite[name]), name

    def counted(stats: dict) -> dict:  # bytes on disk are each engine's own; counts are not
        return {**stats, "tiers": {tier: v["readings"] for tier, v in stats["tiers"].items()}}

    assert counted(on_postgres["stats"]) == counted(on_sqlite["stats"])  # the same data, counted the same
