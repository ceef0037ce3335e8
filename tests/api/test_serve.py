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

from tests.servers import free_port, wait_for_port


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
    assert token not in out + err and token[5:] not in out + err
