"""deploy/prometheus/: the scrape config and alerting rules pass Debian's promtool, and
the rules' own unit tests (each rule fires on the series that should raise it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def test_scrape_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: prometheus.yml is valid" in result.stdout


def test_alerting_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", "iotpipe-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerting_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", "iotpipe-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_cover_stalls_rollup_lag_offline_devices_and_dead_letters() -> None:
    rules = yaml.safe_load((PROMETHEUS / "iotpipe-rules.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "IotpipeIngestStalled",
        "IotpipeRollupLag",
        "IotpipeDevicesOffline",
        "IotpipeDeadLettersRising",
    } <= names
