"""The dashboard in real Chromium against a running `iotpipe run`: the fleet, charts drawn
with their data, a year in one go, anomaly markers, acknowledging alerts by role, a
reading published over MQTT arriving live, screenshots of every page, and device text
that is script staying text."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import paho.mqtt.publish as publish
import pytest
from PIL import Image

from tests.dashboard.conftest import BULK, SIMULATED, XSS, Dashboard
from tests.fleet import DEVICES

PAGES = ("fleet", "device/pump-1", "alerts", "quality", "dead-letters")


def device_route(device_id: str) -> str:
    return f"device/{quote(device_id, safe='')}"


def wait_until(page: Any, function: str, timeout: float = 10) -> None:
    """Poll a JS function until it returns true (page.wait_for_function evaluates strings,
    which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(function):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {function}"
        page.wait_for_timeout(50)


def wait_loaded(page: Any, range_key: str = "24h") -> None:
    page.wait_for_selector(f"main[data-loaded='{range_key}']", timeout=20_000)


def chart_state(page: Any, metric: str) -> dict[str, Any]:
    """What the chart holds and how much of its canvas is painted in the line's colour."""
    found: dict[str, Any] = page.evaluate(
        """(metric) => {
            const chart = window.iotpipe.charts.get(metric);
            const canvas = chart.plot.ctx.canvas;
            const pixels = chart.plot.ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let line = 0, painted = 0;
            for (let i = 0; i < pixels.length; i += 4) {
                if (pixels[i + 3] === 0) continue;
                painted++;
                // the line's blue (#2f6fdf), allowing for antialiasing
                if (Math.abs(pixels[i] - 47) < 40 && Math.abs(pixels[i + 1] - 111) < 40 && Math.abs(pixels[i + 2] - 223) < 40) line++;
            }
            const [times, values, low, high] = chart.data;
            return {points: times.length, values, low, high, line, painted, markers: chart.markers.length,
                    thresholds: chart.thresholds.map((t) => t.value)};
        }""",
        metric,
    )
    return found


def test_the_fleet_shows_the_simulated_devices_and_counts_by_status(open_page: Callable[..., Any]) -> None:
    page = open_page("fleet")
    counts = {
        s: int(page.locator(f".count[data-status={s}] b").inner_text().replace(",", ""))
        for s in ("online", "stale", "offline")
    }
    assert counts["offline"] >= 1 and counts["online"] >= SIMULATED
    page.fill("input[type=search]", "sim-00")
    wait_until(page, "() => document.querySelectorAll('.grid-row').length === 5")
    for n in range(1, SIMULATED + 1):
        assert page.locator(f".grid-row[data-device='sim-{n:03d}'] .status").inner_text() == "online"
    page.fill("input[type=search]", "meter-3")
    wait_until(page, "() => document.querySelectorAll('.grid-row').length === 1")
    assert page.locator(".grid-row[data-device='meter-3'] .status").inner_text() == "offline"
    assert page.problems == []


def test_the_fleet_of_thousands_keeps_only_the_rows_in_view_in_the_page(
    open_page: Callable[..., Any],
) -> None:
    page = open_page("fleet")
    shown = int(page.locator(".count b").first.inner_text().replace(",", ""))
    assert shown > BULK
    rows = page.locator(".grid-row").count()
    assert 0 < rows < 100  # a virtual list: the page holds what is in view, not 2,000 rows
    page.locator(".viewport").evaluate("v => { v.scrollTop = v.scrollHeight; }")
    wait_until(page, "() => !!document.querySelector(\".grid-row[data-device='year-1']\")")  # the last by id
    page.fill("input[type=search]", "bulk-1999")
    wait_until(page, "() => document.querySelectorAll('.grid-row').length === 1")
    page.click("button[data-sort='last_seen']")  # sorts what is filtered
    assert page.locator(".grid-row").first.get_attribute("data-device") == "bulk-1999"


def test_each_chart_of_a_device_is_drawn_with_its_data(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    page = open_page("device/pump-1")
    wait_loaded(page)
    with dashboard.api() as api:
        metrics = [m["name"] for m in api.get("/devices/pump-1").json()["metrics"]]
    assert metrics == ["battery", "pressure", "temperature"]
    for metric in metrics:
        state = chart_state(page, metric)
        assert state["points"] > 250, metric  # a day at 5-minute steps, bucketed or raw
        assert state["line"] > 200, f"{metric}: the line is not on the canvas"
    temperature = chart_state(page, "temperature")
    assert max(temperature["high"]) == 60.0  # the spike of the fixture, kept by the band
    assert chart_state(page, "battery")["values"][-1] == 95.0
    assert page.problems == []


def test_thresholds_of_matching_rules_are_drawn(open_page: Callable[..., Any]) -> None:
    page = open_page("device/pump-2")
    wait_loaded(page)
    assert chart_state(page, "pressure")["thresholds"] == [5.0]
    assert chart_state(page, "temperature")["thresholds"] == []


def test_a_year_is_drawn_from_rollups_at_a_point_per_pixel(
    open_page: Callable[..., Any], record_property: Callable[[str, object], None]
) -> None:
    page = open_page("device/year-1")
    wait_loaded(page)
    page.click("button[data-range='1y']")
    wait_loaded(page, "1y")
    timings = [t for t in page.evaluate("window.iotpipe.timings") if t["range"] == "1y"]
    assert {t["metric"] for t in timings} == {"humidity", "temperature"}
    width = page.evaluate("() => window.iotpipe.charts.get('temperature').plot.bbox.width / devicePixelRatio")
    for timing in timings:
        # From the hourly or daily rollups (never the year's raw readings), about a point
        # per pixel column of the chart.
        assert timing["bucket"] in ("1h", "1d"), timing
        assert 300 <= timing["points"] <= 2 * width, timing
        assert chart_state(page, timing["metric"])["line"] > 200
    slowest = max(t["drawMs"] for t in timings)
    # Measured and reported (the goal is under 1 s; make bench measures it at 10M readings).
    record_property("year_chart_drawn_ms", round(slowest))
    print(f"\na year of year-1 drawn in {slowest:.0f} ms (request to drawn chart, slowest of two)")


def test_an_anomaly_is_marked_with_its_reason_and_score_on_hover(open_page: Callable[..., Any]) -> None:
    page = open_page("device/pump-1")
    wait_loaded(page)
    wait_until(page, "() => window.iotpipe.charts.get('temperature').markers.length > 0")
    marker = page.evaluate(
        """() => {
            const chart = window.iotpipe.charts.get('temperature');
            const spike = chart.markers.find((m) => m.anomaly.value === 60);
            chart.plot.over.scrollIntoView({block: "center"});
            const box = chart.plot.over.getBoundingClientRect();
            return {x: box.left + spike.x, y: box.top + spike.y};
        }"""
    )
    page.mouse.move(marker["x"], marker["y"])
    tip = page.locator(".chart[data-metric='temperature'] .tip")
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert "spike" in text and "score" in text and "60" in text


def test_acknowledging_needs_an_operator_key(open_page: Callable[..., Any], dashboard: Dashboard) -> None:
    with dashboard.api() as api:
        alert = api.get("/alerts", params={"status": "open", "severity": "major"}).json()["items"][0]
    row = f"tr[data-alert='{alert['id']}']"

    as_reader = open_page("alerts", role="reader")
    as_reader.click(f"{row} button[data-ack]")
    banner = as_reader.locator("#error")
    banner.wait_for(state="visible")
    assert "may not acknowledge alerts" in banner.inner_text()  # the API's own words
    with dashboard.api() as api:
        assert alert["id"] in [a["id"] for a in api.get("/alerts", params={"status": "open"}).json()["items"]]

    as_operator = open_page("alerts", role="operator")
    as_operator.click(f"{row} button[data-ack]")
    as_operator.wait_for_selector(f"{row}", state="detached")  # gone from the open alerts
    as_operator.click("button[data-status='acknowledged']")
    assert as_operator.locator(f"tr[data-alert='{alert['id']}'][data-status='acknowledged']").count() == 1
    # The reader's page hears of it live.
    as_reader.wait_for_selector(row, state="detached", timeout=10_000)
    assert as_operator.problems == []


def test_without_a_key_the_dashboard_asks_for_one_and_keeps_it_for_the_session(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    page = open_page("fleet", role=None, wait=False)
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", dashboard.keys["reader"])
    page.click("#key-dialog button[value=save]")
    page.wait_for_selector("main[data-ready=true]")
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    assert not page.locator("#key-dialog").evaluate("d => d.open")


def test_a_reading_published_over_mqtt_shows_live_within_two_seconds(
    open_page: Callable[..., Any], dashboard: Dashboard, record_property: Callable[[str, object], None]
) -> None:
    host, port = dashboard.mqtt_url.removeprefix("mqtt://").split(":")

    def send(value: float) -> None:
        body = {"device_id": "probe-1", "timestamp": int(time.time() * 1000), "level": value}
        publish.single("telemetry/probe-1", json.dumps(body), qos=1, hostname=host, port=int(port))

    send(1.0)
    with dashboard.api() as api:
        deadline = time.monotonic() + 20
        while api.get("/devices/probe-1/latest").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    page = open_page("device/probe-1")
    wait_loaded(page)
    page.wait_for_selector("#live-state.live")
    published = time.monotonic()
    send(42.5)
    page.wait_for_selector(".reading[data-metric='level'][data-live='42.5']", timeout=2_000)
    latency = time.monotonic() - published
    record_property("mqtt_to_browser_seconds", round(latency, 3))
    print(f"\nMQTT publish to the reading on the page: {latency * 1000:.0f} ms")
    assert chart_state(page, "level")["values"][-1] == 42.5


def not_blank(png: bytes) -> bool:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    return colours is None or len(colours) > 50


def test_screenshots_of_every_page_are_not_blank(open_page: Callable[..., Any], tmp_path: Path) -> None:
    for route in PAGES:
        page = open_page(route, height=1250)
        if route.startswith("device/"):
            wait_loaded(page)
        page.wait_for_timeout(300)
        png = page.screenshot()
        path = tmp_path / f"{route.replace('/', '-')}.png"
        path.write_bytes(png)
        assert not_blank(png), f"{route}: the screenshot is blank"
        assert page.problems == [], route
    # `make screenshots` keeps the README's picture up to date from this test.
    target = os.environ.get("IOTPIPE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "device-pump-1.png", Path(target) / "dashboard.png")
        shutil.copy(tmp_path / "fleet.png", Path(target) / "dashboard-fleet.png")


@pytest.mark.parametrize("device_id", XSS)
def test_device_text_that_is_script_stays_text_on_every_page(
    open_page: Callable[..., Any], device_id: str
) -> None:
    page = open_page("fleet")
    page.fill("input[type=search]", device_id[:8])
    page.wait_for_selector(f".grid-row[data-device={json.dumps(device_id)}]")
    assert device_id in page.locator(".viewport").inner_text()  # shown as the characters it is
    for route in (device_route(device_id), "alerts", "quality", "dead-letters", device_route(DEVICES[0])):
        page.goto(f"{page.url.split('#')[0]}#/{route}")
        page.wait_for_selector("main[data-ready=true]")
        page.wait_for_timeout(300)
        assert page.evaluate("typeof window.pwned") == "undefined", route
    page.goto(f"{page.url.split('#')[0]}#/{device_route(device_id)}")
    wait_loaded(page)
    assert page.locator("h1").inner_text().startswith(device_id)
    assert device_id in page.locator(".meta").inner_text()  # name, type and firmware
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("img[src=x]").count() == 0


def test_every_page_is_served_with_a_policy_forbidding_inline_script(dashboard: Dashboard) -> None:
    for path in ("/", "/static/app.js", "/health/live"):
        answer = httpx.get(f"{dashboard.url}{path}")
        policy = answer.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
    assert (
        "access-control-allow-origin"
        not in httpx.get(
            f"{dashboard.url}/api/v1/stats", headers={"Origin": "http://elsewhere.example"}
        ).headers
    )


def test_an_admin_replays_dead_letters_from_the_page(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    with dashboard.api() as api:
        waiting = len(api.get("/dead-letters", params={"limit": 1000}).json()["items"])
    assert waiting >= 3
    page = open_page("dead-letters", role="admin")
    assert page.locator("tr[data-dead-letter]").count() == waiting
    page.click("button[data-action=replay]")
    status = page.locator("[role=status]")
    status.wait_for(state="visible")
    wait_until(page, "() => document.querySelector('[role=status]').textContent.startsWith('replayed')")
    # Still undecodable: they stay, each counted as replayed.
    assert status.inner_text().startswith(f"replayed {waiting}: 0 now stored")
