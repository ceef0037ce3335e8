"""`[api] workers` = 2: a worker process beside the primary on the one port, and the relay
that keeps them one server (app/workers.py) — on each engine."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from iotpipe.app.workers import Relay
from tests.api.conftest import Served, serve
from tests.servers import free_port, wait_for_port


@pytest.fixture
def two(database_url: str) -> Iterator[Served]:
    """The API in two processes over a fresh database."""
    yield from serve(database_url, workers=2)


def relay(served: Served) -> Relay:
    assert isinstance(served.app.relay, Relay)
    return served.app.relay


def fresh_get(served: Served, path: str) -> httpx.Response:
    """A request on a connection of its own, so the kernel may hand it to either process."""
    return httpx.get(served.url + path, headers={"Connection": "close"}, timeout=30)


def fresh_post_line(served: Served, line: str) -> httpx.Response:
    return httpx.post(
        served.url + "/api/v1/ingest",
        content=line.encode(),
        headers={"Connection": "close", "Content-Type": "text/plain"},
        timeout=30,
    )


def until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def counter(served: Served, line_start: str) -> float:
    text = fresh_get(served, "/metrics").text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


def test_requests_spread_over_both_processes_and_every_scrape_counts_them_all(two: Served) -> None:
    worker = until(lambda: relay(two).peers())[0]
    for _ in range(60):
        assert fresh_get(two, "/health/live").status_code == 200
    assert until(lambda: worker.requests > 0), "the worker answered none of 60 new connections"
    assert worker.requests < 60 + 10, "the primary answered none"
    time.sleep(1.0)  # a worker sends what it counted every half second
    # Each scrape lands on either process; each counts all 60 (a worker's /metrics is the
    # primary's, which the worker has told of its requests before it asks).
    live = 'iotpipe_http_requests_total{code="200",method="GET",route="/health/live"}'
    assert [counter(two, live) for _ in range(8)] == [60.0] * 8


def test_readings_ingested_on_either_process_reach_live_clients_on_both(two: Served) -> None:
    hub = two.app.live
    clients: list[ClientConnection] = []
    with contextlib.ExitStack() as stack:
        # Open live clients until each process holds at least one.
        while hub.clients == 0 or not any(p.clients for p in relay(two).peers()):
            assert len(clients) < 40, "every connection landed on the same process"
            ws = stack.enter_context(
                connect(two.url.replace("http://", "ws://") + "/api/v1/live", open_timeout=10)
            )
            ws.send(json.dumps({"type": "subscribe", "devices": ["relay-*"], "events": ["readings"]}))
            clients.append(ws)
            assert frame_of(ws)["type"] == "subscribed"
            opened = len(clients)
            until(lambda: live_clients(two) == opened)  # noqa: B023  used before the loop goes on
        worker = relay(two).peers()[0]
        now_ns = time.time_ns()
        for n in range(30):
            answer = fresh_post_line(two, f"m,device_id=relay-{n} v={n} {now_ns + n}")
            assert answer.status_code == 200 and answer.json()["stored"] == 1, answer.text
        assert until(lambda: worker.stored > 0), "the worker stored none of 30 ingests on new connections"
        assert worker.stored < 30, "the primary stored none"
        for ws in clients:
            seen: set[str] = set()
            deadline = time.monotonic() + 15
            while len(seen) < 30:
                try:
                    frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                except TimeoutError:
                    raise AssertionError(
                        f"{clients.index(ws)} of {len(clients)} saw only {sorted(seen)}; worker stored {worker.stored}, primary clients {hub.clients}"
                    ) from None
                for series in frame.get("readings", []):
                    seen.add(series["device_id"])
            assert seen == {f"relay-{n}" for n in range(30)}
        # The rate of /api/v1/stats and the metrics count both processes' readings.
        rates = [fresh_get(two, "/api/v1/stats").json()["ingest"]["readings_per_second"] for _ in range(6)]
        assert rates == [round(30 / 60, 3)] * 6
        assert counter(two, 'iotpipe_ingest_readings_total{outcome="stored",source="http"}') == 30.0
        assert counter(two, "iotpipe_live_clients ") == len(clients)


def frame_of(ws: ClientConnection) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return found


def live_clients(served: Served) -> int:
    """Live clients of the primary and of the workers (as they last told it)."""
    return served.app.live.clients + sum(p.clients for p in relay(served).peers())


def spiky_rounds(devices: int = 4, readings: int = 400) -> list[str]:
    """Line protocol, one request per round: devices reporting a noisy level, a minute
    apart, with a spike every 97 readings and a step at 250 (episodes to find)."""
    noise = random.Random(7)
    t0 = (time.time_ns() // 60_000_000_000 - readings) * 60_000_000_000
    rounds = []
    for i in range(readings):
        lines = []
        for d in range(devices):
            value = (
                20.0 + d + noise.gauss(0, 0.5) + (40.0 if i % 97 == 96 else 0.0) + (8.0 if i >= 250 else 0.0)
            )
            lines.append(f"fleet,device_id=spiky-{d} temperature={value:.3f} {t0 + i * 60_000_000_000}")
        rounds.append("\n".join(lines))
    return rounds


def episodes(served: Served) -> list[tuple[str, str, str]]:
    rows = served.client.get("/api/v1/anomalies", params={"method": "streaming", "limit": 1000}).json()
    return sorted((a["device_id"], a["time"], a["reason"]) for a in rows["items"])


def test_episodes_are_those_one_process_finds_whichever_process_takes_each_request(
    database_url: str, tmp_path: Path
) -> None:
    """The primary scores every process's readings, in the order their requests came."""
    found = {}
    rounds = spiky_rounds()
    for workers in (1, 2):
        url = database_url if workers == 2 else f"sqlite:///{tmp_path / 'alone.db'}"
        run = serve(url, workers=workers)
        served = next(run)
        try:
            for body in rounds:
                answer = fresh_post_line(served, body)
                assert answer.status_code == 200 and answer.json()["stored"] == 4, answer.text
            if workers == 2:
                assert relay(served).peers()[0].stored > 0, "the worker took none of the requests"
            found[workers] = episodes(served)
        finally:
            next(run, None)
    assert len(found[1]) >= 8  # the spikes and the step, on 4 devices
    assert found[2] == found[1]


def test_readiness_from_either_process_is_the_primarys_with_its_broker(tmp_path: Path, mosquitto) -> None:
    port = free_port()
    process = _serve(tmp_path, port, IOTPIPE_MQTT_URL=mosquitto.url)
    try:
        wait_for_port(port, timeout=60)
        lines = _lines(process)
        until(lambda: "2 API processes" in "".join(lines), timeout=60)
        # The worker runs no source; without the primary's answer it would say "not connected".
        answers = [
            httpx.get(f"http://127.0.0.1:{port}/health/ready", headers={"Connection": "close"})
            for _ in range(30)
        ]
        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        assert all(a.json()["checks"]["mqtt"] == {"ok": True, "detail": "connected"} for a in answers)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0


def test_a_worker_that_dies_is_replaced_and_all_stop_with_the_primary(two: Served) -> None:
    pool = two.server.workers
    assert pool is not None
    first = pool.processes[1]
    until(lambda: relay(two).peers())
    # A process without the relay's key is turned away, and the relay goes on accepting.
    with pytest.raises(multiprocessing.AuthenticationError):
        Client(relay(two).address, "AF_UNIX", authkey=b"not the key")
    os.kill(first.pid, signal.SIGKILL)
    replaced = until(lambda: pool.processes[1] is not first and _started(relay(two), 1))
    assert replaced and pool.processes[1].is_alive()
    assert all(fresh_get(two, "/health/live").status_code == 200 for _ in range(20))
    processes = list(pool.processes.values())
    two.server.stop()
    assert not any(p.is_alive() for p in processes)


def _started(relay: Relay, index: int) -> bool:
    started = relay.started.get(index)
    return started is not None and started.is_set()


def test_a_worker_stops_when_its_primary_is_killed(tmp_path: Path) -> None:
    port = free_port()
    process = _serve(tmp_path, port)
    try:
        wait_for_port(port, timeout=60)
        lines = _lines(process)
        until(lambda: "2 API processes" in "".join(lines), timeout=60)
        workers = [pid for pid in _children(process.pid) if "spawn_main" in _cmdline(pid)]
    finally:
        process.kill()
        process.wait(timeout=30)
    assert len(workers) == 1
    until(lambda: not _alive(workers[0]), timeout=15)


def _serve(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    url = f"sqlite:///{tmp_path / 'served.db'}"
    return subprocess.Popen(
        [sys.executable, "-m", "iotpipe", "-d", url, "serve", "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "IOTPIPE_ANALYTICS__JOBS": "false", **env},
    )


def _lines(process: subprocess.Popen[str]) -> list[str]:
    """The process's output lines so far, and those to come (read by a thread)."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
