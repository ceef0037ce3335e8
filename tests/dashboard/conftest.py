"""A running `iotpipe run` for the browser tests: its store pre-filled (a fleet with
anomalies, alerts and a dead letter, a year of one device, devices whose id, metric and
firmware are script, a device last heard of in 2015 and one silent for hours), subscribed to a real Mosquitto that `iotpipe simulate` publishes a
fleet to, with reader, operator and admin keys; and Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from iotpipe.app import App
from iotpipe.model import MICROS_PER_SECOND, RawMessage, now_micros
from tests.browser import chromium
from tests.fleet import fill, fill_year, fleet_settings
from tests.servers import MosquittoServer, free_port, wait_for_port

XSS = ('<img src=x onerror="window.pwned=1">', "<script>window.pwned=1</script>")
SIMULATED = 5
BULK = 2000  # devices that reported once: the fleet page at thousands of devices
OLD = "old-1"  # reported for an hour in 2015, never since
OLD_DAY = 1_420_070_400_000_000  # 2015-01-01 00:00 UTC, µs
GAPPY = "gap-1"  # the last day at 5-minute steps, but for a silence of GAP_HOURS
GAP_HOURS = (16, 8)  # the silence, in hours before the fill: from, to


@dataclass
class Dashboard:
    url: str
    mqtt_url: str
    keys: dict[str, str]  # role -> token
    root: Path

    def api(self, role: str = "reader") -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30
        )


def fill_store(database_url: str) -> dict[str, str]:
    app = App(fleet_settings(database_url))
    try:
        fill(app, days=3)
        fill_year(app)
        pipeline = app.pipeline()
        at = now_micros()
        for text in XSS:
            body = {
                "schema_version": 2,
                "device": {"id": text, "type": text, "name": text, "firmware": text},
                "ts": at // 1000,
                "readings": {text: 1.0, "temperature": 20.0},
            }
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", "telemetry/x", at))
            pipeline.feed(RawMessage(text.encode(), "mqtt", f"telemetry/{text}", at))  # a dead letter
        for step in range(12):  # an hour at 5-minute steps
            at_old = OLD_DAY + step * 300 * MICROS_PER_SECOND
            body = {"device_id": OLD, "timestamp": at_old // 1000, "temperature": 15.0 + step}
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{OLD}", at_old))
        for step in range(24 * 12):
            back = step * 300 * MICROS_PER_SECOND
            if GAP_HOURS[1] * 3600 * MICROS_PER_SECOND < back < GAP_HOURS[0] * 3600 * MICROS_PER_SECOND:
                continue
            body = {"device_id": GAPPY, "timestamp": (at - back) // 1000, "temperature": 20.0 + step % 5}
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{GAPPY}", at))
        for n in range(BULK):
            body = {"device_id": f"bulk-{n:04d}", "timestamp": at // 1000, "temperature": 20.0 + n % 7}
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/bulk-{n:04d}", at))
        pipeline.close()
        app.run_jobs("all")
        return {
            role: app.create_key(f"{role}-key", role)["token"] for role in ("reader", "operator", "admin")
        }
    finally:
        app.close()


CONFIG = """
[pipeline]
batch_delay = 0.2

[analytics]
rollups_every = 5
alerts_every = 2

[[analytics.alert_rules]]
name = "pressure high"
device = "pump-*"
metric = "pressure"
max = 5.0

[[analytics.alert_rules]]
name = "script metric"
device = "*"
metric = '<img src=x onerror="window.pwned=1">'
max = 0.5
"""


@pytest.fixture(scope="package")
def dashboard(tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoServer) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    database_url = f"sqlite:///{root / 'iotpipe.db'}"
    keys = fill_store(database_url)
    (root / "iotpipe.toml").write_text(CONFIG)
    port = free_port()
    env = {
        **os.environ,
        "IOTPIPE_DATABASE_URL": database_url,
        "IOTPIPE_MQTT_URL": mosquitto.url,
        "IOTPIPE_API__PORT": str(port),
        "IOTPIPE_MQTT__CLIENT_ID": f"dashboard-test-{port}",
    }
    iotpipe = [sys.executable, "-m", "iotpipe"]
    run = subprocess.Popen(
        [*iotpipe, "--config", str(root / "iotpipe.toml"), "run"],
        cwd=root,
        env=env,
        stdout=open(root / "run.out", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    simulate = None
    try:
        wait_for_port(port, timeout=60)
        simulate = subprocess.Popen(
            [
                *iotpipe,
                "simulate",
                "--mqtt",
                mosquitto.url,
                "--devices",
                str(SIMULATED),
                "--interval",
                "1",
                "--duration",
                "3600",
                "--seed",
                "5",
            ],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=open(root / "simulate.err", "w"),  # noqa: SIM115
        )
        url = f"http://127.0.0.1:{port}"
        reader = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['reader']}"}, timeout=30)
        deadline = time.monotonic() + 60
        while (
            len(
                [
                    d
                    for d in reader.get("/api/v1/devices", params={"q": "sim-"}).json()["items"]
                    if d["device_id"].startswith("sim-")
                ]
            )
            < SIMULATED
        ):
            assert time.monotonic() < deadline, (root / "run.out").read_text()[-3000:]
            time.sleep(0.5)
        yield Dashboard(url, mosquitto.url, keys, root)
    finally:
        for process in (simulate, run):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


# Package scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it lives, and later tests call asyncio.run().
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    with chromium() as found:
        yield found


@pytest.fixture
def open_page(browser: Any, dashboard: Dashboard) -> Iterator[Callable[..., Any]]:
    """open_page(route, role="reader"): a new tab with that key in its session, at `#/route`,
    rendered; console errors and failed requests collected on `page.problems`. `clock`
    installs Playwright's clock first, for tests that move the page's time on."""
    contexts: list[Any] = []

    def open_(
        route: str = "fleet",
        role: str | None = "reader",
        wait: bool = True,
        height: int = 900,
        width: int = 1400,
        clock: bool = False,
    ) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        if role is not None:
            token = orjson.dumps(dashboard.keys[role]).decode()
            context.add_init_script(f"sessionStorage.setItem('iotpipe.key', {token});")
        page = context.new_page()
        if clock:
            page.clock.install()
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.goto(f"{dashboard.url}/#/{route}")
        if wait:
            page.wait_for_selector("main[data-ready=true]", timeout=20_000)
        return page

    yield open_
    for context in contexts:
        context.close()
