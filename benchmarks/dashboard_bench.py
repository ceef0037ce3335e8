"""Dashboard benchmark (issue 11): from a click on a range to the device's charts drawn,
in Chromium, over a store of 10M readings; the server's time reported apart.

The store: a year of one device reporting 5 metrics every minute (2.6M readings: the
device charted), beside a fleet of 740 devices × 5 metrics × 2,000 readings over the
year (7.4M), loaded through the store's bulk path, rolled up. `iotpipe serve` runs as a
process of its own; Debian's Chromium (Playwright) opens the device page at 1400 px and
clicks Day, Month and Year in turn, `--runs` times each.

Reported per engine and range, medians over the runs:
- drawn: from the click to the last of the 5 charts drawn (requests in parallel, as the
  page makes them), measured by the page (performance.now() around fetch and uPlot draw);
- fetch: from the click to the slowest of the 5 answers parsed;
- server: one request for one metric's `/series?bucket=auto&width=…`, sequential, from
  this process (httpx): the server's part without the browser;
- points and tier: what `auto` answered with.
The goal is under 1 s for every range (ratio to it printed); the peer is the same
request's server time, so `drawn − server` is what the browser adds.

    .venv/bin/python benchmarks/dashboard_bench.py                 # 10M readings, both engines (~10 min)
    .venv/bin/python benchmarks/dashboard_bench.py --scale 0.05 --engines sqlite
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from benchmarks.api_bench import database, load_year, served, settle
from iotpipe.analytics.jobs import find_job, run_job
from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_HOUR, WriteBatch, format_micros, now_micros
from iotpipe.store import Store, open_store
from tests.browser import chromium
from tests.servers import PostgresServer

DEVICE = "chart-1"
METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
MINUTE = 60_000_000
YEAR_MINUTES = 365 * 24 * 60
RANGES = {"24h": "1 day", "30d": "30 days", "1y": "1 year"}
GOAL_MS = 1000.0
BATCH = 50_000


def load_chart_device(store: Store, end: int, step: int) -> int:
    """A year of DEVICE: 5 metrics every `step` µs, through Store.write."""
    start = end - YEAR_MINUTES * MINUTE
    written = 0
    batch = WriteBatch()
    group: list[tuple[str, int, float]] = []
    for n, at in enumerate(range(start, end, step)):
        day = (at % (86_400 * 1_000_000)) / (86_400 * 1_000_000)
        for k, metric in enumerate(METRICS):
            group.append((metric, at, round(20 + 10 * k + 5 * ((day * 7 + n * 0.001 * k) % 1), 3)))
        if len(group) >= BATCH:
            batch.groups.append((DEVICE, group))
            batch.reading_count = len(group)
            store.write(batch)
            written += len(group)
            batch, group = WriteBatch(), []
    if group:
        batch.groups.append((DEVICE, group))
        batch.reading_count = len(group)
        store.write(batch)
        written += len(group)
    return written


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(engine: str, scale: float, runs: int, pg: PostgresServer | None) -> dict[str, Any]:
    end = now_micros() // MICROS_PER_HOUR * MICROS_PER_HOUR
    with database(engine, "bench_dashboard", pg) as url:
        store = open_store(url)
        started = time.perf_counter()
        readings = load_chart_device(store, end, max(MINUTE, int(MINUTE / scale)))
        fleet = max(1, round(740 * scale))
        readings += load_year(store, fleet, end)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        run_job(find_job("rollups"), store, Settings(database_url=url))
        rollup_seconds = time.perf_counter() - started
        settle(store)
        store.close()
        results: dict[str, Any] = {}
        with served(url) as base, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/#/device/{DEVICE}")
            page.wait_for_selector("main[data-loaded='24h']", timeout=120_000)
            width = page.evaluate(
                "() => Math.max(320, document.querySelector('main > div:last-child').clientWidth - 32)"
            )
            for key, label in RANGES.items():
                drawn, fetched, answers = [], [], []
                for _ in range(runs + 1):  # the first is a warm-up
                    page.click("button[data-range='1h']")
                    page.wait_for_selector("main[data-loaded='1h']", timeout=120_000)
                    before = len(page.evaluate("window.iotpipe.timings"))
                    page.click(f"button[data-range='{key}']")
                    page.wait_for_selector(f"main[data-loaded='{key}']", timeout=120_000)
                    timings = page.evaluate("window.iotpipe.timings")[before:]
                    drawn.append(max(t["drawMs"] for t in timings))
                    fetched.append(max(t["fetchMs"] for t in timings))
                    answers = timings
                drawn, fetched = drawn[1:], fetched[1:]
                span = {"24h": 86_400, "30d": 30 * 86_400, "1y": 365 * 86_400}[key] * 1_000_000
                params = {
                    "start": format_micros(end - span),
                    "end": format_micros(end),
                    "bucket": "auto",
                    "width": width,
                }
                server = []
                with httpx.Client(base_url=base, timeout=60) as client:
                    for n in range(runs * len(METRICS) + 1):
                        metric = METRICS[n % len(METRICS)]
                        began = time.perf_counter()
                        answer = client.get(f"/api/v1/devices/{DEVICE}/series/{metric}", params=params)
                        answer.raise_for_status()
                        if n:
                            server.append((time.perf_counter() - began) * 1000)
                results[label] = {
                    "drawn_ms": round(median(drawn), 1),
                    "fetch_ms": round(median(fetched), 1),
                    "server_ms": round(median(server), 1),
                    "points": answers[0]["points"],
                    "tier": answers[0]["bucket"],
                }
    return {
        "engine": engine,
        "readings": readings,
        "fleet_devices": fleet,
        "load_seconds": round(load_seconds, 1),
        "rollup_seconds": round(rollup_seconds, 1),
        "ranges": results,
    }


def report(runs: list[dict[str, Any]], repeats: int) -> None:
    for run in runs:
        print(
            f"\n{run['engine']}: {run['readings']:,} readings ({run['fleet_devices']} fleet devices + {DEVICE}); "
            f"loaded in {run['load_seconds']} s, rolled up in {run['rollup_seconds']} s; medians of {repeats} runs"
        )
        print(
            f"{'range':<8} {'drawn ms':>9} {'/goal':>6} {'fetch ms':>9} {'server ms':>10} {'points':>7}  tier"
        )
        for label, value in run["ranges"].items():
            print(
                f"{label:<8} {value['drawn_ms']:>9.0f} {value['drawn_ms'] / GOAL_MS:>6.2f} {value['fetch_ms']:>9.0f} "
                f"{value['server_ms']:>10.1f} {value['points']:>7}  {value['tier']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="store size as a fraction of 10M readings")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=5, help="clicks per range (after one warm-up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    found = []
    with PostgresServer() as pg:
        for engine in args.engines.split(","):
            found.append(measure(engine, args.scale, args.runs, pg))
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        report(found, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
