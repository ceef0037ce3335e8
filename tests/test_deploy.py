"""The deployment files are valid for the tools that read them: systemd, docker compose,
nats-server, and iotpipe's own settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iotpipe.app import wiring
from iotpipe.config import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_the_nats_server_config_is_valid_for_nats_server() -> None:
    result = subprocess.run(
        ["nats-server", "--config", str(DEPLOY / "nats-server.conf"), "-t"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


def test_the_systemd_units_pass_systemd_analyze_verify_and_are_hardened(tmp_path: Path) -> None:
    # Debian's systemd package provides systemd-analyze (make system-packages installs it).
    # verify checks that ExecStart's program exists: the units name /opt/iotpipe, where
    # docs/operations.md installs iotpipe; here it is this checkout's.
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: apt-get install systemd"
    here = str(Path(sys.executable).parent / "iotpipe")
    names = []
    for unit in UNITS:
        text = unit.read_text()
        assert "/opt/iotpipe/bin/iotpipe " in text
        for setting in ("User=iotpipe", "ProtectSystem=strict", "Restart=on-failure", "NoNewPrivileges=yes"):
            assert setting in text, f"{unit.name} lacks {setting}"
        (tmp_path / unit.name).write_text(text.replace("/opt/iotpipe/bin/iotpipe", here))
        names.append(unit.name.replace("@.service", "@1.service"))
    assert {"iotpipe-worker@1.service", "iotpipe-api.service", "iotpipe-relay.service"} <= set(names)
    result = subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr


def _compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) where the docker CLI has it, else Debian's
    docker-compose (v1, which make system-packages installs): both validate with `config`
    and need no engine for it."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor docker-compose is installed: run make system-packages")


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", **env},
    )


def test_the_compose_file_is_valid_for_docker_compose() -> None:
    result = _compose_config({"POSTGRES_PASSWORD": "not-a-secret"})
    assert result.returncode == 0, result.stdout + result.stderr
    for service in ("nats", "postgres", "migrate", "worker", "api", "prometheus", "grafana"):
        assert f"\n  {service}:\n" in result.stdout, service


def test_the_compose_file_refuses_to_start_without_a_database_password() -> None:
    result = _compose_config({})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_the_sample_production_config_loads_and_wires_a_partitioned_nats_source() -> None:
    settings = load_settings(DEPLOY / "iotpipe.toml")
    options = wiring.nats_options(settings)
    assert settings.database_url.startswith("postgresql://")
    assert (options.partitions, options.partition_prefix, options.stream) == (8, "part", "IOTPIPE")
    conf = (DEPLOY / "nats-server.conf").read_text()
    assert conf.count("{{partition(8,1)}}") == 3  # the mapping agrees with the partitions
    assert options.ack_wait > 2 * settings.pipeline.batch_delay
