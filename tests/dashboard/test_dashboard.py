"""The dashboard in real Chromium against a running `iotpipe run`: the fleet, charts drawn
with their data, a year in one go, anomaly markers, acknowledging alerts by role, a
reading published over MQTT arriving live, screenshots of every page, device text that
is script staying text; every page on a phone's width, empty ranges and gaps in charts,
failed requests, addresses that lead nowhere, and the pages' table and chart semantics."""

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
from playwright.sync_api import expect

from tests.dashboard.conftest import BULK, GAP_HOURS, GAPPY, OLD, SIMULATED, XSS, Dashboard
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


def go(page: Any, route: str, shown: str | None = None) -> None:
    """Follow a link to `#/route` in the same tab and wait for its page (`shown`, by
    default the route's first part)."""
    page.goto(f"{page.url.split('#')[0]}#/{route}")
    name = shown or route.split("/")[0]
    page.wait_for_selector(f"main[data-page='{name}'][data-ready=true]", timeout=20_000)


def page_errors(page: Any) -> list[str]:
    """Uncaught exceptions and rejections (not the console's failed requests)."""
    return [p for p in page.problems if p.startswith("page error")]


def send(dashboard: Dashboard, device_id: str, at_ms: int | None = None, **readings: float) -> None:
    """One message over MQTT, as a device sends it, stamped `at_ms` (now by default)."""
    host, port = dashboard.mqtt_url.removeprefix("mqtt://").split(":")
    body = {"device_id": device_id, "timestamp": at_ms or int(time.time() * 1000), **readings}
    publish.single(f"telemetry/{device_id}", json.dumps(body), qos=1, hostname=host, port=int(port))


def wait_for_device(dashboard: Dashboard, device_id: str) -> None:
    with dashboard.api() as api:
        deadline = time.monotonic() + 20
        while api.get(f"/devices/{device_id}/latest").status_code != 200:
            assert time.monotonic() < deadline, f"{device_id} never stored"
            time.sleep(0.2)


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
    page.fill("input[type=search]", "zzz")  # nothing matches: the list says so
    page.wait_for_selector(".grid-note")
    assert page.locator(".fleet-table").inner_text().strip() != ""
    assert "No device matches “zzz”" in page.locator(".grid-note").inner_text()
    assert page.locator(".grid-row").count() == 0
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
    send(dashboard, "probe-1", level=1.0)
    wait_for_device(dashboard, "probe-1")
    page = open_page("device/probe-1")
    wait_loaded(page)
    page.wait_for_selector("#live-state.live")
    published = time.monotonic()
    send(dashboard, "probe-1", level=42.5)
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


PHONE = {"width": 390, "height": 844}
LAST_SEEN = ".meta dt:text-is('Last seen') + dd"


def test_every_page_fits_a_phone_and_tables_scroll_with_their_headings(open_page: Callable[..., Any]) -> None:
    page = open_page("fleet", **PHONE)
    for route in PAGES:
        go(page, route)
        if route.startswith("device/"):
            wait_loaded(page)
        widths = page.evaluate(
            """() => ({page: document.documentElement.scrollWidth, screen: innerWidth,
                       key: document.getElementById("key-button").getBoundingClientRect().right})"""
        )
        assert widths["page"] <= widths["screen"], (route, widths)  # no sideways scroll of the page
        assert widths["key"] <= widths["screen"], (route, widths)  # the header wraps instead
    go(page, "fleet")
    # The fleet's table scrolls sideways in its own box, its headings with its rows.
    columns = page.evaluate(
        """() => {
            const box = document.querySelector(".fleet-table");
            box.scrollLeft = 300;
            const heading = document.querySelector("[role=columnheader][data-sort=open_alerts]");
            const cell = document.querySelector(".grid-row [data-field=open_alerts]");
            return {scrolls: box.scrollWidth > box.clientWidth, moved: box.scrollLeft,
                    heading: heading.getBoundingClientRect().left, cell: cell.getBoundingClientRect().left};
        }"""
    )
    assert columns["scrolls"] and columns["moved"] > 0, columns
    assert abs(columns["heading"] - columns["cell"]) <= 1, columns
    assert page.problems == []


def test_a_new_metric_and_the_last_seen_follow_the_live_feed(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    send(dashboard, "probe-2", int(time.time() * 1000) - 60_000, level=1.0)  # a minute ago
    wait_for_device(dashboard, "probe-2")
    page = open_page("device/probe-2")
    wait_loaded(page)
    page.wait_for_selector("#live-state.live")
    last_seen = page.locator(LAST_SEEN)
    before = last_seen.inner_text().split(" (")[0]
    assert page.locator(".chart[data-metric='flow']").count() == 0
    send(dashboard, "probe-2", flow=3.5)  # a metric it never sent before
    page.wait_for_selector(".reading[data-metric='flow'][data-live='3.5']", timeout=10_000)
    page.wait_for_selector(".chart[data-metric='flow'][data-points='1']")
    assert chart_state(page, "flow")["values"] == [3.5]
    expect(last_seen).not_to_contain_text(before)  # the newest reading's time
    assert page.problems == []


def test_the_age_of_the_last_reading_moves_on_with_time(open_page: Callable[..., Any]) -> None:
    page = open_page("device/meter-3", clock=True)  # silent for two hours
    last_seen = page.locator(LAST_SEEN)
    hours = int(last_seen.inner_text().split("(")[1].split(" h ago")[0])
    page.clock.fast_forward("03:00:00")
    expect(last_seen).to_contain_text(f"({hours + 3} h ago)")


def test_open_alerts_in_the_fleet_follow_the_live_feed(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    send(dashboard, "pump-live", pressure=3.0)  # the rule "pressure high" watches pump-*
    wait_for_device(dashboard, "pump-live")
    page = open_page("fleet")
    page.fill("input[type=search]", "pump-live")
    page.wait_for_selector("#live-state.live")
    count = page.locator(".grid-row[data-device='pump-live'] > :nth-child(7)")  # Open alerts
    expect(count).to_have_text("0")
    send(dashboard, "pump-live", pressure=9.0)  # opens an alert (jobs run every 2 s here)
    # Well before the page's 30 s reload: from the feed's alert events.
    expect(count).to_have_text("1", timeout=15_000)
    send(dashboard, "pump-live", pressure=3.0)  # back inside: resolved
    expect(count).to_have_text("0", timeout=15_000)


def test_an_empty_range_says_so_and_when_the_last_reading_was(open_page: Callable[..., Any]) -> None:
    page = open_page(f"device/{OLD}")  # last heard of in 2015
    wait_loaded(page)
    chart = page.locator(".chart[data-metric='temperature']")
    message = chart.locator(".empty")
    assert message.is_visible()
    assert message.inner_text().startswith("No readings in this range (last reading ")
    assert "2015" in message.inner_text()
    assert "no readings in this range" in (chart.get_attribute("aria-label") or "")
    page.click("button[data-range='1y']")  # still nothing in the last year
    wait_loaded(page, "1y")
    assert message.is_visible()


def gap_columns(page: Any) -> dict[str, Any]:
    """Where the gap-1 chart breaks: its times around the null, and blue pixels (line or
    band) in the canvas columns at the middle of the gap."""
    found: dict[str, Any] = page.evaluate(
        """() => {
            const chart = window.iotpipe.charts.get("temperature");
            const [times, values] = chart.data;
            const at = values.indexOf(null);
            if (at < 0) return {nulls: 0};
            const u = chart.plot;
            const x = Math.round(u.valToPos(times[at], "x", true));
            const pixels = u.ctx.getImageData(x - 2, u.bbox.top, 5, u.bbox.height).data;
            let blue = 0;
            for (let i = 0; i < pixels.length; i += 4) {
                if (pixels[i + 3] && Math.abs(pixels[i] - 47) < 40 && Math.abs(pixels[i + 1] - 111) < 40 && Math.abs(pixels[i + 2] - 223) < 40) blue++;
            }
            const box = u.over.getBoundingClientRect();
            return {nulls: values.filter((v) => v === null).length, before: times[at - 1], after: times[at + 1], blue,
                    x: box.left + u.valToPos(times[at], "x"), y: box.top + box.height / 2, left: box.left};
        }"""
    )
    return found


def test_a_gap_in_the_readings_breaks_the_line_and_an_empty_zoom_says_so(
    open_page: Callable[..., Any],
) -> None:
    page = open_page(f"device/{GAPPY}")
    wait_loaded(page)
    gap = gap_columns(page)
    assert gap["nulls"] == 1, gap  # one break, where eight hours have no reading
    assert gap["after"] - gap["before"] == (GAP_HOURS[0] - GAP_HOURS[1]) * 3600, gap
    assert gap["blue"] == 0, gap  # neither line nor band crosses the gap
    assert chart_state(page, "temperature")["line"] > 200  # the rest is drawn
    # Drag across the middle of the gap: nothing there, and the chart says so.
    page.mouse.move(gap["x"] - 20, gap["y"])
    page.mouse.down()
    page.mouse.move(gap["x"] + 20, gap["y"], steps=5)
    page.mouse.up()
    wait_loaded(page, "zoom")
    message = page.locator(".chart[data-metric='temperature'] .empty")
    assert message.is_visible() and message.inner_text() == "No readings in this range"
    assert page.problems == []


def test_a_failed_range_shows_its_error_and_the_next_good_one_clears_it(
    open_page: Callable[..., Any],
) -> None:
    page = open_page("device/pump-1")
    wait_loaded(page)
    banner = page.locator("#error")
    page.click("button[data-range='custom']")  # no dates chosen
    banner.wait_for(state="visible")
    assert "choose a start" in banner.inner_text()
    page.route("**/api/v1/**", lambda route: route.abort())  # as if iotpipe stopped
    page.click("button[data-range='7d']")
    wait_until(page, "() => document.getElementById('error').textContent.includes('cannot reach iotpipe')")
    assert page.locator("[role=status]").inner_text() != "loading…"
    page.unroute("**/api/v1/**")
    page.click("button[data-range='24h']")
    wait_loaded(page)  # drawn after the failed Week (data-loaded was 24h before it too)
    banner.wait_for(state="hidden")
    assert page.locator("[role=status]").inner_text().endswith("ms")
    assert page_errors(page) == []  # the failed anomalies request is handled, not uncaught


def test_addresses_that_lead_nowhere_get_pages_saying_so(open_page: Callable[..., Any]) -> None:
    page = open_page("fleet")
    go(page, "device/%E0%A4%A", "bad-address")  # broken percent-encoding
    assert page.locator("main h1").inner_text() == "Not a valid device address"
    assert page.locator(".grid-row").count() == 0  # the fleet is gone
    go(page, "device/nope")
    assert page.locator("main h1").inner_text() == "Unknown device"
    assert "no device 'nope'" in page.locator("main").inner_text()
    assert page.locator("main a[href='#/fleet']").count() == 1
    assert page.locator("#error").is_hidden()
    go(page, "bogus", "not-found")
    assert page.locator("main h1").inner_text() == "Page not found"
    links = page.locator("main a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
    assert links == ["#/fleet", "#/alerts", "#/quality", "#/dead-letters"]
    assert page.locator(".top nav a.current").count() == 0
    assert page_errors(page) == []


def test_tables_sort_buttons_and_charts_have_their_semantics(open_page: Callable[..., Any]) -> None:
    page = open_page("fleet")
    table = page.locator("[role=table][aria-label=devices]")
    assert table.locator("[role=columnheader][aria-sort]").count() == 8  # on the headers
    assert page.locator("button[aria-sort]").count() == 0  # not on the buttons
    assert table.locator("[role=columnheader][data-sort=device_id]").get_attribute("aria-sort") == "ascending"
    cells = page.evaluate(
        "() => [...document.querySelectorAll('.grid-row > *')].every((c) => c.getAttribute('role') === 'cell')"
    )
    assert cells
    # Keyboard focus on a sort button shows an outline.
    page.focus("button[data-sort=type]")
    page.keyboard.press("Tab")
    outline = page.evaluate(
        """() => { const b = document.activeElement; const s = getComputedStyle(b);
                   return {sort: b.dataset.sort, style: s.outlineStyle, width: parseFloat(s.outlineWidth)}; }"""
    )
    assert outline["sort"] == "status" and outline["style"] != "none" and outline["width"] > 0, outline
    page.keyboard.press("Enter")
    assert table.locator("[role=columnheader][data-sort=status]").get_attribute("aria-sort") == "ascending"

    go(page, "alerts")
    headings = page.locator("table[aria-label=alerts] th").all_inner_texts()
    assert all(text.strip() for text in headings), headings  # the action column too

    go(page, "device/pump-1")
    wait_loaded(page)
    chart = page.locator(".chart[data-metric='temperature']")
    assert chart.get_attribute("role") == "img"
    label = chart.get_attribute("aria-label") or ""
    assert label.startswith("temperature from ") and "points" in label, label
