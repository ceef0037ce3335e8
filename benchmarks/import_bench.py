"""Import benchmark: V1 JSON lines through iotpipe vs. each engine's bulk-insert ceiling and vs.
InfluxDB 1.6 taking the same readings as line protocol over HTTP /write, in the same run.

Two iotpipe imports per engine: *hot* (recent readings, into the hot table) against the
raw COPY / executemany ceiling, and *historical* (the same readings ten days older,
straight into the packed tier) against InfluxDB.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/import_bench.py`, Python puts benchmarks/ (not the repo root)
# on sys.path, so `tests.servers` (the private PostgreSQL server) would not import.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import cProfile
import datetime as dt
import io
import json
import math
import os
import platform
import pstats
import random
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np
import orjson
import psycopg

from iotpipe.app import App
from iotpipe.config import PipelineSettings, Settings
from iotpipe.pipeline import Counters, PipelineConfig
from iotpipe.store import open_store
from iotpipe.store.base import ReadingColumns
from iotpipe.store.postgres import PG_EPOCH_OFFSET_MICROS, binary_copy_payload
from iotpipe.store.sqlite import _PRAGMAS as SQLITE_PRAGMAS  # the ceiling runs under the same durability
from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
# iotpipe creates a device's series with its metrics sorted, devices in order of first
# appearance; numbering the ceiling's series the same way makes it write the very rows
# the import writes, in the same order, so the two differ only by the work in between.
_METRIC_RANK = {m: i for i, m in enumerate(sorted(METRICS))}
REPORT_INTERVAL_MS = 60_000
ENGINES = ("sqlite", "postgresql")

Row = tuple[int, int, float]  # (series_id, time µs, value)


@dataclass
class Dataset:
    path: Path
    lines: int
    devices: int
    rows: list[Row]  # what the file holds, as the store's rows, in file order


@dataclass
class ImportRun:
    seconds: float
    cpu_seconds: float  # this process only: steadier than wall time on a shared machine
    counters: dict[str, int]

    @property
    def rate(self) -> float:
        return self.counters["readings_received"] / self.seconds


@dataclass
class EngineResult:
    engine: str
    readings: int
    import_seconds: float
    import_rate: float
    import_cpu_seconds: float
    ceiling_seconds: float
    ceiling_rate: float
    ratio: float
    reimport_seconds: float
    reimport_rate: float
    bytes_per_reading: float
    ceiling_bytes_per_reading: float
    batches: int
    mean_batch: float
    runs: dict[str, list[float]]  # every run's seconds, when --repeat > 1
    import_counters: dict[str, int]
    reimport_counters: dict[str, int]
    failures: list[str] = field(default_factory=list)
    historical_seconds: float = 0.0
    historical_rate: float = 0.0
    historical_packed: int = 0


# -- the data --------------------------------------------------------------------------
def generate(path: Path, readings: int, devices: int = 1000, seed: int = 7, days_ago: int = 0) -> Dataset:
    """Write `readings` V1 readings (5 per line, round-robin over devices, one report a
    minute each, ms timestamps) and return the same readings as store rows."""
    rng = random.Random(seed)
    lines = math.ceil(readings / len(METRICS))
    devices = max(1, min(devices, lines))
    # Recent past: readings more than a day ahead of the import are rejected.
    now_ms = int(time.time() * 1000)
    rounds = math.ceil(lines / devices)
    start_ms = (now_ms // 3_600_000) * 3_600_000 - rounds * REPORT_INTERVAL_MS - 86_400_000
    start_ms -= days_ago * 86_400_000
    temp_base = [rng.uniform(15.0, 24.0) for _ in range(devices)]
    pressure = [rng.uniform(1005.0, 1020.0) for _ in range(devices)]
    battery = [rng.uniform(60.0, 100.0) for _ in range(devices)]
    rows: list[Row] = []
    left = readings
    with open(path, "wb") as out:
        for i in range(lines):
            d, round_index = i % devices, i // devices
            # Per-device ms jitter: devices do not report in lockstep, and real ms digits.
            t_ms = start_ms + round_index * REPORT_INTERVAL_MS + (d * 7919) % REPORT_INTERVAL_MS
            daily = math.sin(2 * math.pi * (t_ms / 1000 % 86_400) / 86_400 - math.pi / 2)
            pressure[d] += rng.gauss(0, 0.05)
            battery[d] = max(0.0, battery[d] - rng.uniform(0.0, 0.002))
            values = {
                "temperature": round(temp_base[d] + 5.0 * daily + rng.gauss(0, 0.3), 2),
                "humidity": round(min(100.0, max(5.0, 55.0 - 12.0 * daily + rng.gauss(0, 1.5))), 1),
                "pressure": round(pressure[d], 2),
                "battery": round(battery[d], 2),
                "rssi": float(round(-65 + rng.gauss(0, 4))),
            }
            metrics = METRICS[: min(len(METRICS), left)]  # the last line may carry fewer
            left -= len(metrics)
            out.write(
                orjson.dumps(
                    {"device_id": f"dev-{d + 1:04d}", "timestamp": t_ms, **{m: values[m] for m in metrics}}
                )
            )
            out.write(b"\n")
            t_us = t_ms * 1000
            rows.extend((d * len(METRICS) + _METRIC_RANK[m] + 1, t_us, values[m]) for m in metrics)
    return Dataset(path, lines, devices, rows)


def batches(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# -- the iotpipe path ------------------------------------------------------------------
def line_protocol(data: Dataset, batch_lines: int = 5_000) -> list[bytes]:
    """The dataset as InfluxDB line protocol, one body per `batch_lines` lines."""
    lines = []
    with open(data.path, "rb") as source:
        for line in source:
            record = orjson.loads(line)
            fields = ",".join(f"{k}={v}" for k, v in record.items() if k not in ("device_id", "timestamp"))
            lines.append(f"telemetry,device_id={record['device_id']} {fields} {record['timestamp'] * 1000}")
    return ["\n".join(lines[i : i + batch_lines]).encode() for i in range(0, len(lines), batch_lines)]


def bench_influx(data: Dataset, repeat: int, say: TextIO) -> float:
    """Best seconds InfluxDB 1.x takes for the dataset over /write, one client, fresh database each run."""
    from benchmarks.influx import InfluxServer

    bodies = line_protocol(data)
    best = math.inf
    with InfluxServer() as influx:
        for run in range(1, repeat + 1):
            database = f"bench{run}"
            influx.create_database(database)
            seconds = influx.write(database, bodies)
            stored = influx.count(database, "telemetry")
            if stored != len(data.rows):
                raise RuntimeError(f"InfluxDB stored {stored:,} values, expected {len(data.rows):,}")
            best = min(best, seconds)
            print(f"  InfluxDB  {len(data.rows) / seconds:>12,.0f} readings/s  ({seconds:.2f} s)", file=say)
    return best


def iotpipe_import(url: str, path: Path, profile: Path | None = None) -> ImportRun:
    """`iotpipe import path` as the CLI runs it, default pipeline settings; the store is
    opened and migrated before the clock starts (a one-off, not a per-reading cost)."""
    # Explicit defaults, so an IOTPIPE_PIPELINE__* variable or .env cannot skew the figure.
    app = App(Settings(database_url=url, pipeline=PipelineSettings()))  # type: ignore[call-arg]
    try:
        app.store  # noqa: B018 - opens and migrates
        profiler = cProfile.Profile() if profile else None
        started, cpu_started = time.perf_counter(), time.process_time()
        with profiler or nullcontext():
            # A progress callback as the CLI passes one: its clock reads are on the path.
            counters = app.import_files([path], progress=lambda done, total: None).counters
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        return ImportRun(seconds, cpu_seconds, counters.as_dict())
    finally:
        app.close()


def stored_readings(url: str) -> int:
    store = open_store(url, migrate=False)
    try:
        return store.stats()["readings"]
    finally:
        store.close()


# -- the ceilings ----------------------------------------------------------------------
# A ceiling is what the engine alone takes: the rows the import writes, in the same
# transactions (as many readings each as the import's batches), each batch in primary-key
# order and, for PostgreSQL, already encoded as one COPY BINARY stream, all prepared
# before the clock starts. Only the engine's work (and the wire) is timed.
def ceiling_batches(rows: list[Row], size: int) -> list[list[Row]]:
    """`rows` cut into batches of `size`, each sorted by (series_id, time)."""
    return [sorted(batch) for batch in batches(rows, size)]


def sqlite_ceiling(path: Path, rows: list[Row], batch_size: int) -> float:
    """Plain executemany INSERT, one transaction per batch, under the store's pragmas."""
    open_store(f"sqlite:///{path}").close()  # the same migrated schema, WITHOUT ROWID table
    prepared = ceiling_batches(rows, batch_size)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        started = time.perf_counter()
        for batch in prepared:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO readings (series_id, time, value) VALUES (?, ?, ?)", batch)
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def postgres_ceiling(url: str, rows: list[Row], batch_size: int) -> float:
    """COPY BINARY into the keyed table, one transaction per batch, each batch's stream
    encoded beforehand (times shifted to PostgreSQL's 2000-01-01 epoch, as the store does)."""
    open_store(url).close()
    payloads = []
    for batch in ceiling_batches(rows, batch_size):
        sids, times, values = zip(*batch, strict=True)
        columns = ReadingColumns(
            np.array(sids, dtype=np.int32),
            np.array(times, dtype=np.int64) - PG_EPOCH_OFFSET_MICROS,
            np.array(values, dtype=np.float64),
            [],
            [],
        )
        payloads.append(binary_copy_payload(columns))
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for payload in payloads:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY readings (series_id, time, value) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.write(payload)
        return time.perf_counter() - started


# -- bytes per reading -----------------------------------------------------------------
def sqlite_bytes(path: Path) -> float:
    conn = sqlite3.connect(path)
    try:
        count = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        try:
            size = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'readings'").fetchone()[0]
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            size = _sqlite_readings_only_size(conn)
        return size / count if count else 0.0
    finally:
        conn.close()


def _sqlite_readings_only_size(conn: sqlite3.Connection) -> int:
    """page_count * page_size of a database holding nothing but a copy of readings."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "readings.db"
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'readings'").fetchone()[0]
        conn.execute("ATTACH DATABASE ? AS only_readings", (str(copy),))
        conn.execute(ddl.replace("CREATE TABLE readings", "CREATE TABLE only_readings.readings", 1))
        conn.execute("INSERT INTO only_readings.readings SELECT * FROM main.readings")
        conn.commit()
        conn.execute("DETACH DATABASE only_readings")
        with sqlite3.connect(copy) as only:
            pages = only.execute("PRAGMA page_count").fetchone()[0]
            page_size = only.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * page_size)


def postgres_bytes(url: str) -> float:
    with psycopg.connect(url) as conn:
        size, count = conn.execute(
            "SELECT pg_total_relation_size('readings'), (SELECT count(*) FROM readings)"
        ).fetchone() or (0, 0)
    return size / count if count else 0.0


def settle(engine: str, target: Any) -> None:
    """Between timed phases, off the clock: leave no background work to the next phase.

    Without it, autovacuum of the 1M rows just written and the kernel's writeback of the
    last phase's pages compete with the next phase for the machine's two cores.
    """
    if engine == "postgresql":
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) readings")
            conn.execute("CHECKPOINT")
    os.sync()


# -- one engine ------------------------------------------------------------------------
@contextmanager
def database_factory(engine: str, workdir: Path) -> Iterator[Callable[[str], Any]]:
    """name -> a fresh, empty database: a SQLite file path, or a PostgreSQL URL on one
    private server shared by the engine's runs."""
    if engine == "sqlite":
        yield lambda name: workdir / f"{name}.db"
        return
    with PostgresServer() as server:
        yield server.create_database


def bench_engine(
    engine: str,
    data: Dataset,
    history: Dataset,
    workdir: Path,
    repeat: int,
    profile_dir: Path | None,
    say: TextIO,
) -> EngineResult:
    """Import, ceiling, re-import and historical import `repeat` times on fresh databases;
    best of each."""
    expected = len(data.rows)
    failures: list[str] = []
    ceilings: list[float] = []
    imports: list[ImportRun] = []
    reimports: list[ImportRun] = []
    historicals: list[ImportRun] = []
    with database_factory(engine, workdir) as fresh:
        for run in range(1, repeat + 1):
            ceiling_db, pipe_db = fresh(f"bench_ceiling_{run}"), fresh(f"bench_import_{run}")
            url = f"sqlite:///{pipe_db}" if engine == "sqlite" else pipe_db
            if repeat > 1:
                print(f"  run {run} of {repeat}", file=say)
            profile = profile_dir / f"import-{engine}.pstats" if profile_dir and run == 1 else None
            first = iotpipe_import(url, data.path, profile)
            imports.append(first)
            print(
                f"  iotpipe   {first.rate:>12,.0f} readings/s  ({first.seconds:.2f} s, "
                f"{first.cpu_seconds:.2f} s CPU in this process)",
                file=say,
            )
            c = first.counters
            in_db = stored_readings(url)
            if not (c["readings_stored"] == in_db == expected and c["readings_duplicate"] == 0):
                failures.append(
                    f"import stored {c['readings_stored']:,} (table holds {in_db:,}), "
                    f"{c['readings_duplicate']:,} duplicates; expected {expected:,} and 0"
                )
            if c["messages_dead_lettered"] or c["values_invalid"]:
                failures.append(
                    f"{c['messages_dead_lettered']} dead letters, {c['values_invalid']} invalid values"
                )
            size = sqlite_bytes(pipe_db) if engine == "sqlite" else postgres_bytes(pipe_db)
            settle(engine, pipe_db)

            # The ceiling takes the rows in the transactions the import wrote: a bulk import
            # batches whole decoded chunks, larger than the pipeline's batch_size.
            batch_size = math.ceil(expected / max(1, c["batches_written"]))
            if engine == "sqlite":
                ceilings.append(sqlite_ceiling(ceiling_db, data.rows, batch_size))
                ceiling_bytes = sqlite_bytes(ceiling_db)
            else:
                ceilings.append(postgres_ceiling(ceiling_db, data.rows, batch_size))
                ceiling_bytes = postgres_bytes(ceiling_db)
            settle(engine, ceiling_db)
            print(
                f"  ceiling   {expected / ceilings[-1]:>12,.0f} rows/s      ({ceilings[-1]:.2f} s, "
                f"batches of {batch_size:,})",
                file=say,
            )

            second = iotpipe_import(url, data.path)
            reimports.append(second)
            print(
                f"  re-import {second.rate:>12,.0f} readings/s  ({second.seconds:.2f} s, "
                f"{second.cpu_seconds:.2f} s CPU in this process)",
                file=say,
            )
            settle(engine, pipe_db)  # the re-import's staging rows and pages, off the next clock
            history_db = fresh(f"bench_history_{run}")
            history_url = f"sqlite:///{history_db}" if engine == "sqlite" else history_db
            past = iotpipe_import(history_url, history.path)
            historicals.append(past)
            store = open_store(history_url, migrate=False)
            packed = store.stats()["tiers"]["packed"]["readings"]
            store.close()
            if packed != expected or past.counters["readings_stored"] != expected:
                failures.append(
                    f"historical import stored {past.counters['readings_stored']:,}, packed {packed:,}"
                )
            print(
                f"  history   {past.rate:>12,.0f} readings/s  ({past.seconds:.2f} s, straight into the packed tier)",
                file=say,
            )
            r = second.counters
            in_db = stored_readings(url)
            if not (r["readings_stored"] == 0 and r["readings_duplicate"] == expected and in_db == expected):
                failures.append(
                    f"re-import stored {r['readings_stored']:,} new, {r['readings_duplicate']:,} "
                    f"duplicates (table holds {in_db:,}); expected 0 and {expected:,}"
                )
            for counters in (c, r):
                if not Counters(**counters).accounted():
                    failures.append(f"counters do not add up: {counters}")
            settle(engine, pipe_db)
    ceiling_seconds = min(ceilings)
    best = min(imports, key=lambda i: i.seconds)
    best_again = min(reimports, key=lambda i: i.seconds)
    c = best.counters
    return EngineResult(
        engine=engine,
        readings=expected,
        import_seconds=best.seconds,
        import_rate=best.rate,
        import_cpu_seconds=best.cpu_seconds,
        ceiling_seconds=ceiling_seconds,
        ceiling_rate=expected / ceiling_seconds,
        ratio=best.rate / (expected / ceiling_seconds),
        reimport_seconds=best_again.seconds,
        reimport_rate=best_again.rate,
        bytes_per_reading=size,
        ceiling_bytes_per_reading=ceiling_bytes,
        batches=c["batches_written"],
        mean_batch=c["readings_received"] / max(1, c["batches_written"]),
        runs={
            "ceiling_seconds": ceilings,
            "import_seconds": [i.seconds for i in imports],
            "reimport_seconds": [i.seconds for i in reimports],
            "historical_seconds": [h.seconds for h in historicals],
        },
        import_counters=c,
        reimport_counters=best_again.counters,
        failures=failures,
        historical_seconds=min(h.seconds for h in historicals),
        historical_rate=max(h.rate for h in historicals),
        historical_packed=packed,  # readings in the packed tier after the last historical import
    )


def print_profile(path: Path, say: TextIO, top: int = 30) -> None:
    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("cumulative").print_stats(top)
    print(text.getvalue(), file=say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000, help="readings in the file (5 per line)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sqlite,postgresql")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (progress to stderr)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cProfile the first import per engine into DIR/import-<engine>.pstats "
        "(slows it: rates are then not comparable)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each phase N times on fresh databases and keep the best "
        "(steadier figures on a busy or virtual machine)",
    )
    parser.add_argument("--no-influx", action="store_true", help="skip the InfluxDB peer run")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {unknown}")
    if args.readings < 1 or args.repeat < 1:
        parser.error("--readings and --repeat must be positive")
    say = sys.stderr if args.json else sys.stdout
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    results: list[EngineResult] = []
    with tempfile.TemporaryDirectory(prefix="iotpipe-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        data = generate(workdir / "readings.jsonl", args.readings)
        history = generate(workdir / "history.jsonl", args.readings, days_ago=10)
        generated = time.perf_counter() - started
        print(
            f"import: {len(data.rows):,} readings, {data.lines:,} V1 JSON lines, {data.devices:,} devices, "
            f"{data.path.stat().st_size / 1e6:.1f} MB (generated in {generated:.1f} s); "
            f"pipeline batch_size {PipelineConfig().batch_size:,}; best of {args.repeat}; at {revision()}",
            file=say,
        )
        load = os.getloadavg()[0]
        if load > 0.5:
            # Both engines share the machine's cores with whatever else runs.
            print(
                f"warning: load average {load:.1f} before starting: other work is running, "
                "figures will be low and noisy",
                file=say,
            )
        influx_seconds = math.nan
        if not args.no_influx:
            print("influxdb (line protocol over HTTP /write, batches of 5,000 lines, one client):", file=say)
            influx_seconds = bench_influx(data, args.repeat, say)
        influx_rate = len(data.rows) / influx_seconds
        for engine in engines:
            print(f"{engine}:", file=say)
            result = bench_engine(engine, data, history, workdir, args.repeat, args.profile, say)
            results.append(result)
            print(
                f"  ratio     {result.ratio:>12.2f} of the ceiling; "
                f"{result.bytes_per_reading:.1f} B/reading "
                f"(ceiling table {result.ceiling_bytes_per_reading:.1f}); "
                f"{result.batches} batches of {result.mean_batch:,.0f}",
                file=say,
            )
            print(
                f"  vs InfluxDB: hot import {result.import_rate / influx_rate:.2f}, "
                f"historical import {result.historical_rate / influx_rate:.2f}",
                file=say,
            )
            for failure in result.failures:
                print(f"  FAIL: {failure}", file=say)
            if args.profile:
                print_profile(args.profile / f"import-{engine}.pstats", say)

    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "import",
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                        "sqlite": sqlite3.sqlite_version,
                    },
                    "revision": revision(),
                    "repeat": args.repeat,
                    "load_average_before": load,
                    "profiled": bool(args.profile),
                    "influxdb_rate": influx_rate,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    else:
        _print_table(results, influx_rate, say)
    return 1 if any(r.failures for r in results) else 0


def revision() -> str:
    """The commit measured, '+dirty' when iotpipe/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "iotpipe"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return head + ("+dirty" if dirty else "")


def _print_table(results: list[EngineResult], influx_rate: float, say: TextIO) -> None:
    print(
        f"\n{'engine':<11}{'iotpipe/s':>12}{'ceiling/s':>12}{'ratio':>7}{'/influx':>8}{'B/reading':>11}"
        f"{'re-import/s':>13}{'history/s':>12}{'/influx':>8}",
        file=say,
    )
    for r in results:
        print(
            f"{r.engine:<11}{r.import_rate:>12,.0f}{r.ceiling_rate:>12,.0f}{r.ratio:>7.2f}"
            f"{r.import_rate / influx_rate:>8.2f}{r.bytes_per_reading:>11.1f}{r.reimport_rate:>13,.0f}"
            f"{r.historical_rate:>12,.0f}{r.historical_rate / influx_rate:>8.2f}",
            file=say,
        )
    print(f"{'InfluxDB':<11}{influx_rate:>12,.0f}", file=say)


if __name__ == "__main__":
    sys.exit(main())
