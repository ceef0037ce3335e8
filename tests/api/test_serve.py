"""`iotpipe serve` as a user runs it: a real process, stopped by SIGTERM, keys kept out of its output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from tests.servers import MosquittoServer, free_port, wait_for_port


def test_serve_answers_stops_cleanly_on_sigterm_and_never_prints_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'served.db'}"
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotpipe",
            "-d",
            url,
            "keys",
            "create",
            "ch-12",
            "--role",
            "writer",
            "--device",
            "thingspeak-12",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "iotpipe", "-d", url, "--log-level", "DEBUG", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "IOTPIPE_ANALYTICS__JOBS": "false"},
    )
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/update?api_key={token}&field1=21.5").text == "1"
        assert (
            httpx.get(f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code
            == 403
        )
        assert httpx.get(f"{base}/update?api_key=iotp_wrong&field1=1").text == "0"
        time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"dashboard and API at http://127.0.0.1:{port}" in out
    assert re.search(r"SIGTERM", out + err)
    # The summary counts what came over HTTP (it counted only the sources' pipeline).
    assert out.splitlines()[-1] == "stored 1 readings from 1 messages (0 duplicates, 0 dead letters)"
    assert token not in out + err and token[5:] not in out + err


def _serve(url: str, port: int, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "iotpipe", "-d", url, *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "IOTPIPE_ANALYTICS__JOBS": "false", **env},
    )


def _ready(port: int, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"http://127.0.0.1:{port}/health/ready")
        if answer.status_code == 200 or time.monotonic() > deadline:
            body: dict[str, object] = answer.json()
            return body
        time.sleep(0.2)


def test_ready_needs_the_configured_broker_and_run_serves_the_api_too(tmp_path: Path, mosquitto) -> None:
    url = f"sqlite:///{tmp_path / 'ready.db'}"
    port = free_port()
    process = _serve(url, port, "run", IOTPIPE_MQTT_URL=mosquitto.url)
    try:
        wait_for_port(port)
        ready = _ready(port)
        assert ready["ready"] is True and ready["checks"]["mqtt"] == {"ok": True, "detail": "connected"}  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert f"dashboard and API at http://127.0.0.1:{port}" in out, err


def test_ready_is_503_once_the_broker_is_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'unready.db'}"
    port = free_port()
    with MosquittoServer() as broker:
        process = _serve(url, port, "serve", IOTPIPE_MQTT_URL=broker.url)
        try:
            wait_for_port(port)
            assert _ready(port)["ready"] is True
            broker.stop()
            deadline = time.monotonic() + 30
            while (answer := httpx.get(f"http://127.0.0.1:{port}/health/ready")).status_code != 503:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            assert answer.json()["checks"]["mqtt"] == {"ok": False, "detail": "not connected"}
            assert answer.json()["checks"]["database"]["ok"] is True
            assert httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def test_http_ingest_through_a_postgresql_restart_is_503_then_stored_once_when_sent_again(
    tmp_path: Path,
) -> None:
    """A client told 503 sends again (Retry-After); what it sent is stored exactly once."""
    from tests.servers import PostgresServer

    def send(device: str) -> httpx.Response:
        """Five line-protocol readings of `device`, the same each time it is sent."""
        lines = "\n".join(f"pump,device_id={device} pressure={i}.5 {1_764_000_000 + i}" for i in range(5))
        return httpx.post(
            f"{api}/api/v1/ingest?precision=s", content=lines, headers={"Content-Type": "text/plain"}
        )

    with PostgresServer() as postgres:
        url = postgres.create_database("http_restart")
        port = free_port()
        process = _serve(url, port, "serve")
        api = f"http://127.0.0.1:{port}"
        try:
            wait_for_port(port)
            first = send("p-old")
            assert first.status_code == 200 and first.json()["stored"] == 5, first.text

            postgres.stop(cleanup=False)
            # a new device (its series looked up) and one already known (the write alone)
            for device in ("p-new", "p-old"):
                down = send(device)
                assert down.status_code == 503, down.text
                assert down.headers["Retry-After"] == "5"
                assert "the database failed" in down.json()["detail"]
            assert httpx.get(f"{api}/update?field1=1").text == "0"  # ThingSpeak's answer to a failure

            postgres.launch()
            for device in ("p-new", "p-old"):
                again = send(device)
                assert again.status_code == 200, again.text
            assert again.json()["duplicates"] == 5  # p-old's five: stored before the outage
            with psycopg.connect(url) as conn:
                counted = conn.execute(
                    "SELECT d.device_id, count(*) FROM readings r JOIN series s ON s.id = r.series_id "
                    "JOIN devices d ON d.id = s.device_pk GROUP BY d.device_id ORDER BY 1"
                ).fetchall()
            assert counted == [("p-new", 5), ("p-old", 5)]
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "Traceback" not in err, err
