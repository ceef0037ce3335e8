"""API benchmark (issue 10): latency under load, and HTTP ingest beside `iotpipe import` and InfluxDB.

Latency. A year of history — 1,000 devices × 5 metrics × 2,000 readings per series
(10M readings; `--scale` shrinks the fleet) — loaded through the store's bulk path, the
rollups, health and quality jobs run, then `iotpipe serve` (a process of its own) is
loaded by wrk (C, a process of its own: it does not take the GIL from the server) with
50 connections for 30 s per endpoint: `latest`, `stats`, and `series?bucket=auto&width=1000`
over 1 day, 30 days and 1 year, each request for a random device. Reported: requests/s,
p50 and p99, beside the time of the same query in plain SQL measured in the same run (one
client, sequential), and beside the stack's ceiling: /health/live, a constant answered by
the same server, middleware and read threads, loaded the same way.

Ingest. The same line-protocol lines (1,000 devices, 5 fields a line) three ways into
fresh databases: `iotpipe import` of them as a .lp file (in-process, as the CLI runs it),
POST /api/v1/ingest in batches of 5,000 lines from 4 concurrent clients (threads of this
process; the server is `iotpipe serve`, another process) into PostgreSQL, and InfluxDB
1.6's /write of the same batches from 4 clients; `--ingest-rounds` (5) rounds of the
three in turn, medians (this machine's neighbours move each rate by ±15 %), each write
after an untimed warm-up (the detector's code loaded, each API process's first commits).

Both parts run `iotpipe serve` with each `--workers` count in turn (default 1 and 2: one
API process, and one per core of this machine).

    .venv/bin/python benchmarks/api_bench.py                  # everything (~15 min)
    .venv/bin/python benchmarks/api_bench.py --scale 0.1 --seconds 10 --ingest-lines 100000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

from iotpipe.analytics.jobs import find_job, run_job
from iotpipe.app import App
from iotpipe.config import Settings
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    WriteBatch,
    format_micros,
    now_micros,
)
from iotpipe.store import Store, open_store
from tests.servers import PostgresServer, free_port, wait_for_port

METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
PER_SERIES = 2000
YEAR = 365 * MICROS_PER_DAY
BATCH = 50_000
ENGINES = ("sqlite", "postgresql")
RANGES = {"1d": MICROS_PER_DAY, "30d": 30 * MICROS_PER_DAY, "1y": YEAR}
SQL_RUNS = 300


def device_ids(count: int) -> list[str]:
    return [f"dev-{d:04d}" for d in range(count)]


# -- a year of history ---------------------------------------------------------------------
def load_year(store: Store, devices: int, end: int) -> int:
    """2,000 readings per series, evenly over the year before `end`, through Store.write."""
    step = YEAR // PER_SERIES
    start = end - PER_SERIES * step
    rng = random.Random(7)
    ids = device_ids(devices)
    base = {(d, m): rng.uniform(10, 90) for d in ids for m in METRICS}
    rounds_per_batch = max(1, BATCH // (devices * len(METRICS)))
    written = 0
    for first in range(0, PER_SERIES, rounds_per_batch):
        batch = WriteBatch()
        rounds = range(first, min(PER_SERIES, first + rounds_per_batch))
        for index, device in enumerate(ids):
            jitter = (index * 7919) % step
            group = [
                (m, start + r * step + jitter, base[(device, m)] + ((r * 31 + index) % 97) * 0.1)
                for r in rounds
                for m in METRICS
            ]
            batch.groups.append((device, group))
            batch.reading_count += len(group)
        store.write(batch)
        written += batch.reading_count
    return written


def settle(store: Store) -> None:
    if store.dialect == "postgresql":
        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
    else:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


@contextmanager
def database(engine: str, name: str, pg: PostgresServer | None) -> Iterator[str]:
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="iotpipe-api-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    assert pg is not None
    yield pg.create_database(name)


@contextmanager
def served(url: str, workers: int = 1) -> Iterator[str]:
    """`iotpipe serve --workers N` in a process of its own; its base URL, once every API
    process listens (it says so once the workers have started)."""
    port = free_port()
    env = {
        **os.environ,
        "IOTPIPE_ANALYTICS__JOBS": "false",
        "IOTPIPE_API__RATE_LIMIT": "1000000",
        "IOTPIPE_API__RATE_BURST": "1000000",
        "IOTPIPE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "iotpipe", "-d", url, "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("dashboard and API at"):
                break
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep it drained
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
        if process.returncode not in (0, -15):
            print(err, file=sys.stderr)


# -- wrk -----------------------------------------------------------------------------------
@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_LUA = """
math.randomseed({seed})
local paths = {{}}
{paths}
request = function()
  return wrk.format("GET", paths[math.random(1, #paths)])
end
"""


def wrk(base: str, paths: list[str], seconds: int, connections: int) -> Load:
    """wrk with `connections` connections for `seconds`, each request a random path."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        listed = "\n".join(f"paths[{i + 1}] = {json.dumps(p)}" for i, p in enumerate(paths))
        script.write(_LUA.format(seed=42, paths=listed))
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, base],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors: connect (\d+)", out))
    return Load(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        errors=errors,
    )


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


# -- the same queries in plain SQL -------------------------------------------------------------
def plain_sql(store: Store, devices: int, end: int) -> dict[str, tuple[float, float]]:
    """(median ms, p99 ms) of each endpoint's query in plain SQL, one client, sequential."""
    pg = store.dialect == "postgresql"
    t = (lambda v: f"to_timestamp({v} / 1e6)") if pg else (lambda v: str(v))
    latest = (
        "SELECT s.metric, (SELECT time FROM readings r WHERE r.series_id = s.id ORDER BY time DESC LIMIT 1), "
        "(SELECT value FROM readings r WHERE r.series_id = s.id ORDER BY time DESC LIMIT 1) "
        "FROM series s JOIN devices d ON d.id = s.device_pk WHERE d.device_id = :d"
    )
    stats = [
        "SELECT count(*) FROM devices",
        "SELECT count(*) FROM device_health WHERE status = 'offline'",
        "SELECT sum(count) FROM rollups WHERE bucket = '1w'",
        "SELECT severity, count(*) FROM alerts WHERE status <> 'resolved' GROUP BY severity",
        "SELECT avg(quality_score) FROM device_health",
        "SELECT count(*) FROM dead_letters",
    ]
    series_id = (
        "(SELECT s.id FROM series s JOIN devices d ON d.id = s.device_pk "
        "WHERE d.device_id = :d AND s.metric = 'temperature')"
    )
    raw_day = (
        f"SELECT time, value FROM readings WHERE series_id = {series_id} "
        f"AND time >= {t(end - MICROS_PER_DAY)} AND time < {t(end)} ORDER BY time"
    )

    def rollup(bucket: str, span: int) -> str:
        return (
            f"SELECT bucket_start, count, mean, min, max FROM rollups WHERE series_id = {series_id} "
            f"AND bucket = '{bucket}' AND bucket_start >= {t(end - span)} AND bucket_start < {t(end)} "
            "ORDER BY bucket_start"
        )

    queries: dict[str, list[str]] = {
        "latest": [latest],
        "stats": stats,
        "auto 1d": [raw_day],
        "auto 30d": [rollup("1h", 30 * MICROS_PER_DAY)],
        "auto 1y": [rollup("1d", YEAR)],
    }
    ids = device_ids(devices)
    rng = random.Random(3)
    found = {}
    with store.engine.connect() as conn:
        for name, statements in queries.items():
            times = []
            for _ in range(SQL_RUNS):
                device = rng.choice(ids)
                started = time.perf_counter()
                for statement in statements:
                    conn.execute(text(statement), {"d": device}).all()
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            found[name] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    return found


def latency(
    engine: str,
    scale: float,
    seconds: int,
    connections: int,
    pg: PostgresServer | None,
    workers: list[int],
) -> dict[str, Any]:
    devices = max(1, round(1000 * scale))
    end = now_micros() // MICROS_PER_HOUR * MICROS_PER_HOUR
    with database(engine, "bench_api", pg) as url:
        store = open_store(url)
        started = time.perf_counter()
        readings = load_year(store, devices, end)
        load_seconds = time.perf_counter() - started
        settings = Settings(database_url=url)
        jobs: dict[str, float] = {}
        for name in ("rollups", "health"):
            started = time.perf_counter()
            run_job(find_job(name), store, settings)
            jobs[name] = round(time.perf_counter() - started, 1)
        settle(store)
        sql = plain_sql(store, devices, end)
        ids = device_ids(devices)

        def window(span: int) -> str:
            return f"start={format_micros(end - span)}&end={format_micros(end)}"

        endpoints: dict[str, list[str]] = {
            # The stack's ceiling, measured in the same run: a route answering a constant
            # through the same server, middleware and read threads, without the database.
            "ceiling": ["/health/live"],
            "latest": [f"/api/v1/devices/{d}/latest" for d in ids],
            "stats": ["/api/v1/stats"],
            **{
                f"auto {label}": [
                    f"/api/v1/devices/{d}/series/temperature?bucket=auto&width=1000&{window(span)}"
                    for d in ids
                ]
                for label, span in RANGES.items()
            },
        }
        by_workers: dict[int, dict[str, Any]] = {}
        for count in workers:
            results = by_workers[count] = {}
            with served(url, count) as base:
                for name, paths in endpoints.items():
                    check = httpx.get(base + paths[0], timeout=30)
                    assert check.status_code == 200, (name, check.text)
                    if name.startswith("auto"):
                        body = check.json()
                        results[f"{name} answer"] = f"{body['bucket']}, {body['points']} points"
                    wrk(base, paths, 2, connections)  # warm-up
                    load = wrk(base, paths, seconds, connections)
                    plain = sql.get(name, (None, None))
                    results[name] = {**load.__dict__, "sql_p50_ms": plain[0], "sql_p99_ms": plain[1]}
        store.close()
    return {
        "engine": engine,
        "devices": devices,
        "readings": readings,
        "load_seconds": round(load_seconds, 1),
        "jobs_seconds": jobs,
        "endpoints": by_workers,
    }


# -- ingest ----------------------------------------------------------------------------------
def line_batches(lines: int, batch: int) -> list[bytes]:
    """Line protocol of 1,000 devices, 5 fields a line, a minute apart per device, ns times,
    ending a few minutes ago: live data, as Telegraf sends it, which the import and HTTP
    ingest both write to the hot table (history older than the hot window the import
    would pack instead, a different write: docs/performance.md)."""
    rng = random.Random(5)
    rounds = -(-lines // 1000)
    start = (now_micros() - (rounds + 10) * 60 * MICROS_PER_SECOND) * 1000
    out, current = [], []
    for n in range(lines):
        device, round_ = n % 1000, n // 1000
        fields = ",".join(f"{m}={rng.uniform(0, 100):.3f}" for m in METRICS)
        current.append(
            f"telemetry,device_id=dev-{device:04d} {fields} {start + round_ * 60_000_000_000 + device}"
        )
        if len(current) == batch:
            out.append(("\n".join(current) + "\n").encode())
            current = []
    if current:
        out.append(("\n".join(current) + "\n").encode())
    return out


def post_all(
    batches: list[bytes],
    url: str,
    clients: int,
    headers: dict[str, str],
    ok: Callable[[httpx.Response], None],
) -> float:
    """Seconds for `clients` threads to POST every batch (each takes the next one free)."""
    pending = list(reversed(batches))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    body = pending.pop()
                try:
                    ok(http.post(url, content=body, headers=headers))
                except BaseException as exc:
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - started


@contextmanager
def influxdb() -> Iterator[str]:
    """A private InfluxDB 1.x (Debian's influxdb) on a free port, data in a temp dir."""
    root = Path(tempfile.mkdtemp(prefix="iotpipe-influx-"))
    port, bind = free_port(), free_port()
    config = root / "influxdb.conf"
    config.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{bind}"\n'
        f'[meta]\n  dir = "{root}/meta"\n'
        f'[data]\n  dir = "{root}/data"\n  wal-dir = "{root}/wal"\n  query-log-enabled = false\n'
        f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{port}"\n  auth-enabled = false\n'
        "  log-enabled = false\n[monitor]\n  store-enabled = false\n"
    )
    binary = shutil.which("influxd") or "/usr/bin/influxd"
    process = subprocess.Popen(
        [binary, "-config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def ingest(
    lines: int,
    pg: PostgresServer,
    clients: int = 4,
    batch: int = 5000,
    rounds: int = 5,
    workers: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """`rounds` rounds of import, HTTP ingest (into `iotpipe serve --workers N` for each N)
    and InfluxDB in turn (each into a fresh database), so that a neighbour's load falls on
    all of them; medians, and each round's ratio (the HTTP rate over the import's of the
    same round)."""
    batches = line_batches(lines, batch)
    readings = lines * len(METRICS)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="iotpipe-api-ingest-") as tmp:
        path = Path(tmp) / "lines.lp"
        path.write_bytes(b"".join(batches))
        warm = Path(tmp) / "warm.lp"
        warm.write_bytes(warm_up_body(0))
        # Untimed: the first import in a process loads (after an install, compiles) the
        # detector's code, a one-off that must not fall in round 1's import alone.
        import_rate(warm, WARM_UP_READINGS, pg.create_database("bench_import_warm_up"))
        with influxdb() as influx:
            for round_ in range(rounds):
                run = {"import": import_rate(path, readings, pg.create_database(f"bench_import_{round_}"))}
                for count in workers:
                    url = pg.create_database(f"bench_http_{round_}_{count}")
                    run[f"http x{count}"] = http_rate(batches, readings, clients, url, count)
                run["influxdb"] = influxdb_rate(batches, readings, clients, influx, f"bench{round_}")
                runs.append(run)
    https = [f"http x{count}" for count in workers]
    return {
        "lines": lines,
        "readings": readings,
        "batch_lines": batch,
        "clients": clients,
        "rounds": runs,
        "medians": {key: statistics.median(run[key] for run in runs) for key in runs[0]},
        "to_import": {key: statistics.median(run[key] / run["import"] for run in runs) for key in https},
        "to_influxdb": {key: statistics.median(run[key] / run["influxdb"] for run in runs) for key in https},
    }


WARM_UP_READINGS = 100


def warm_up_body(part: int) -> bytes:
    """Lines of a device of their own, sent before the clock starts; each part new
    readings (a duplicate would send the store's next write through its slower path for
    replays, PostgresStore._insert_readings)."""
    start = (now_micros() - 3_600_000_000 + part * WARM_UP_READINGS) * 1000
    return b"".join(
        f"telemetry,device_id=warm-up temperature={n}.5 {start + n * 1000}\n".encode()
        for n in range(WARM_UP_READINGS)
    )


def import_rate(path: Path, readings: int, url: str) -> float:
    app = App(Settings(database_url=url))
    app.init()
    started = time.perf_counter()
    outcome = app.import_files([path])
    seconds = time.perf_counter() - started
    app.close()
    assert outcome.counters.readings_stored == readings, outcome.summary()
    return readings / seconds


def http_rate(batches: list[bytes], readings: int, clients: int, url: str, workers: int = 1) -> float:
    stored = [0]

    def accepted(answer: httpx.Response) -> None:
        assert answer.status_code == 200, answer.text[:300]
        stored[0] += answer.json()["stored"]

    with served(url, workers) as base:
        # Untimed, as for the import: each API process's first commits (a worker's first
        # relay to the primary, the detector's code loaded in the background at start).
        warm_up = [warm_up_body(part) for part in range(2 * workers)]
        post_all(warm_up, f"{base}/api/v1/ingest", clients, {"content-type": "text/plain"}, lambda _: None)
        seconds = post_all(
            batches, f"{base}/api/v1/ingest", clients, {"content-type": "text/plain"}, accepted
        )
    assert stored[0] == readings, stored
    return readings / seconds


def influxdb_rate(batches: list[bytes], readings: int, clients: int, base: str, database: str) -> float:
    httpx.post(f"{base}/query", params={"q": f"CREATE DATABASE {database}"}, timeout=30).raise_for_status()

    def written(answer: httpx.Response) -> None:
        assert answer.status_code == 204, answer.text[:300]

    seconds = post_all(batches, f"{base}/write?db={database}&precision=ns", clients, {}, written)
    return readings / seconds


# -- report ----------------------------------------------------------------------------------
def report(latencies: list[dict[str, Any]], ingested: dict[str, Any] | None) -> None:
    for run in latencies:
        for workers, endpoints in run["endpoints"].items():
            print(
                f"\n{run['engine']}, {workers} API process(es): {run['devices']:,} devices, "
                f"{run['readings']:,} readings (loaded in {run['load_seconds']} s; jobs {run['jobs_seconds']})"
            )
            print(
                f"{'endpoint':<10} {'req/s':>8} {'÷ ceiling':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
                f"{'SQL p50':>8} {'SQL p99':>8}  answer"
            )
            ceiling = endpoints["ceiling"]["requests_per_second"]
            for name, value in endpoints.items():
                if name.endswith("answer"):
                    continue
                answer = endpoints.get(f"{name} answer", "")
                sql = "".join(
                    f" {value[k]:>8.3f}" if value[k] is not None else f" {'-':>8}"
                    for k in ("sql_p50_ms", "sql_p99_ms")
                )
                print(
                    f"{name:<10} {value['requests_per_second']:>8.0f} "
                    f"{value['requests_per_second'] / ceiling:>9.2f} {value['p50_ms']:>8.2f} "
                    f"{value['p99_ms']:>8.2f} {value['errors']:>7}{sql}  {answer}"
                )
    if ingested:
        print(
            f"\ningest into PostgreSQL: {ingested['lines']:,} lines = {ingested['readings']:,} readings, "
            f"batches of {ingested['batch_lines']:,} lines, {ingested['clients']} clients"
        )
        for number, run in enumerate(ingested["rounds"], 1):
            https = ", ".join(
                f"{key.upper()} {value:,.0f} ({value / run['import']:.2f} of import)"
                for key, value in run.items()
                if key.startswith("http")
            )
            print(
                f"  round {number}: import {run['import']:,.0f}, {https}, "
                f"InfluxDB {run['influxdb']:,.0f} readings/s"
            )
        medians = ingested["medians"]
        print(f"  medians of {len(ingested['rounds'])} rounds:")
        print(f"  iotpipe import                 {medians['import']:>10,.0f} readings/s")
        for key, ratio in ingested["to_import"].items():
            processes = key.removeprefix("http x")
            print(
                f"  POST /api/v1/ingest, {processes} process(es) {medians[key]:>10,.0f} readings/s"
                f"  = {ratio:.2f} of import (median of the rounds' ratios; goal ≥ 0.8), "
                f"{ingested['to_influxdb'][key]:.2f} of InfluxDB"
            )
        print(f"  InfluxDB 1.6 /write            {medians['influxdb']:>10,.0f} readings/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fleet size as a fraction of 1,000 devices")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--seconds", type=int, default=30, help="wrk duration per endpoint")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--ingest-lines", type=int, default=200_000, help="line-protocol lines (5 readings each)"
    )
    parser.add_argument(
        "--ingest-rounds", type=int, default=5, help="rounds of import, HTTP and InfluxDB in turn (medians)"
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="API processes to measure with, each in turn (`iotpipe serve --workers N`)",
    )
    parser.add_argument("--parts", default="latency,ingest")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for tool in ("wrk", "influxd"):
        if shutil.which(tool) is None and not Path(f"/usr/bin/{tool}").exists():
            print(f"{tool} is missing: run `make install` (it installs wrk and influxdb)", file=sys.stderr)
            return 2
    parts = set(args.parts.split(","))
    workers = [int(n) for n in args.workers.split(",")]
    latencies: list[dict[str, Any]] = []
    ingested = None
    with PostgresServer() as pg:
        if "latency" in parts:
            for engine in args.engines.split(","):
                latencies.append(latency(engine, args.scale, args.seconds, args.connections, pg, workers))
        if "ingest" in parts:
            ingested = ingest(args.ingest_lines, pg, rounds=args.ingest_rounds, workers=tuple(workers))
    if args.json:
        print(json.dumps({"latency": latencies, "ingest": ingested}, indent=2))
    else:
        report(latencies, ingested)
    return 0


if __name__ == "__main__":
    sys.exit(main())
