"""Rollup benchmark (issue "Analytics"): full rollup of 10M readings over 1,000 series, then
the incremental cost after 100,000 new readings spread over the last hours.

Ceiling, measured in the same run on the same table: one `GROUP BY series_id, hour`
computing count, avg, min, max and stddev of every reading into a table — what any
hourly rollup must at least do. Readings are loaded through the store's own bulk path
(`Store.write`: COPY on PostgreSQL), which also marks their hours dirty as ingest does.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from iotpipe.analytics.jobs import find_job, run_job
from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_HOUR, MICROS_PER_SECOND, WriteBatch, now_micros
from iotpipe.store import Store, open_store
from tests.servers import PostgresServer

METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
MINUTE = 60 * MICROS_PER_SECOND
BATCH = 50_000  # the pipeline's default batch size


def device_ids(series: int) -> list[str]:
    return [f"dev-{d:04d}" for d in range(series // len(METRICS))]


def load_history(store: Store, readings: int, series: int, end: int) -> int:
    """`readings` readings, one a minute per series, ending at `end`, in time order."""
    devices = device_ids(series)
    per_series = readings // (len(devices) * len(METRICS))
    start = end - per_series * MINUTE
    rng = random.Random(11)
    base = {(d, m): rng.uniform(0, 100) for d in devices for m in METRICS}
    written = 0
    rounds_per_batch = max(1, BATCH // (len(devices) * len(METRICS)))
    for first_round in range(0, per_series, rounds_per_batch):
        batch = WriteBatch()
        rounds = range(first_round, min(per_series, first_round + rounds_per_batch))
        for d, device in enumerate(devices):
            jitter = (d * 7919) % MINUTE  # devices do not report in lockstep
            group = [
                (m, start + r * MINUTE + jitter, base[(device, m)] + (r % 97) * 0.01)
                for r in rounds
                for m in METRICS
            ]
            batch.groups.append((device, group))
            batch.reading_count += len(group)
        store.write(batch)
        written += batch.reading_count
    return written


def load_live(store: Store, readings: int, series: int, start: int) -> int:
    """Each series goes on reporting once a minute from `start`: the new readings of a live
    fleet, spread over the recent hours (the last rolled-up hour's end and new hours)."""
    devices = device_ids(series)
    rounds = readings // (len(devices) * len(METRICS))
    rng = random.Random(12)
    written = 0
    for first_round in range(0, rounds, max(1, BATCH // (len(devices) * len(METRICS)))):
        batch = WriteBatch()
        last_round = min(rounds, first_round + BATCH // (len(devices) * len(METRICS)))
        for d, device in enumerate(devices):
            jitter = (d * 7919) % MINUTE
            group = [
                (m, start + r * MINUTE + jitter, rng.uniform(0, 100))
                for r in range(first_round, last_round)
                for m in METRICS
            ]
            batch.groups.append((device, group))
            batch.reading_count += len(group)
        store.write(batch)
        written += batch.reading_count
    return written


def load_late(store: Store, readings: int, series: int, start: int, end: int) -> int:
    """Late readings at random times in [start, end), into hours already rolled up."""
    devices = device_ids(series)
    rng = random.Random(13)
    batch, written = WriteBatch(), 0
    for _ in range(readings):
        device, metric = rng.choice(devices), rng.choice(METRICS)
        t = start + rng.randrange((end - start) // MINUTE) * MINUTE + 17  # off the grid: new readings
        batch.groups.append((device, [(metric, t, rng.uniform(0, 100))]))
        batch.reading_count += 1
        if batch.reading_count >= BATCH:
            store.write(batch)
            written += batch.reading_count
            batch = WriteBatch()
    if batch.reading_count:
        store.write(batch)
        written += batch.reading_count
    return written


def settle(store: Store) -> None:
    """Off the clock: leave no autovacuum or checkpoint work to the timed phase."""
    if store.dialect == "postgresql":
        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) readings")
            conn.execute("VACUUM (ANALYZE) dirty_hours")
            conn.execute("CHECKPOINT")
    else:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


_CEILING = {
    "postgresql": "CREATE TEMP TABLE ceiling AS SELECT series_id, "
    "date_bin('1 hour', time, timestamptz '1970-01-01 00:00:00+00') AS hour, count(*), avg(value), "
    "min(value), max(value), stddev_samp(value) FROM readings GROUP BY 1, 2",
    # SQLite has no stddev: the ceiling computes count, avg, min, max and sum of squares.
    "sqlite": "CREATE TEMP TABLE ceiling AS SELECT series_id, time - time % 3600000000 AS hour, count(*), "
    "avg(value), min(value), max(value), sum(value * value) FROM readings GROUP BY 1, 2",
}


def ceiling_seconds(store: Store) -> float:
    with store.engine.connect() as conn:
        started = time.perf_counter()
        conn.exec_driver_sql(_CEILING[store.dialect])
        seconds = time.perf_counter() - started
        conn.rollback()
    return seconds


def check(store: Store, samples: int = 25) -> list[str]:
    """Hourly rollups of a sample of series equal a direct GROUP BY on their readings."""
    failures = []
    width = 3600 * MICROS_PER_SECOND
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM series ORDER BY id")]
        for series_id in random.Random(5).sample(ids, min(samples, len(ids))):
            stored = store_rollups(conn, series_id)
            direct: dict[int, list[float]] = {}
            for t, v in series_readings(conn, series_id):
                direct.setdefault(t - t % width, []).append(v)
            want = {h: (len(v), sum(v) / len(v)) for h, v in direct.items()}
            if set(stored) != set(want) or any(
                stored[h][0] != want[h][0]
                or abs(stored[h][1] - want[h][1]) > 1e-9 * max(1.0, abs(want[h][1]))
                for h in want
            ):
                failures.append(f"series {series_id}: hourly rollups differ from its readings")
    return failures


def store_rollups(conn: object, series_id: int) -> dict[int, tuple[int, float]]:
    from sqlalchemy import select

    from iotpipe.store.schema import rollups

    rows = conn.execute(  # type: ignore[attr-defined]
        select(rollups.c.bucket_start, rollups.c.count, rollups.c.mean).where(
            rollups.c.series_id == series_id, rollups.c.bucket == "1h"
        )
    )
    return {start: (count, mean) for start, count, mean in rows}


def series_readings(conn: object, series_id: int) -> list[tuple[int, float]]:
    from sqlalchemy import select

    from iotpipe.store.schema import readings

    query = select(readings.c.time, readings.c.value).where(readings.c.series_id == series_id)
    return [(t, v) for t, v in conn.execute(query)]  # type: ignore[attr-defined]


def incremental_run(
    store: Store, settings: Settings, added: int, full_seconds: float, kind: str
) -> dict[str, Any]:
    settle(store)
    result = run_job(find_job("rollups"), store, settings)
    seconds = float(result["seconds"])
    ratio = seconds / full_seconds
    print(
        f"  {kind + ':':<9} {added:>12,} new readings: {seconds:.3f} s ({result['hours']:,} hours; "
        f"take-over {result['take_seconds']:.3f} s, recompute {result['recompute_seconds']:.3f} s) "
        f"= {100 * ratio:.2f} % of the full rollup",
        flush=True,
    )
    return {"readings": added, "seconds": seconds, "hours": result["hours"], "ratio": ratio}


@contextmanager
def database(engine: str) -> Iterator[str]:
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="iotpipe-rollup-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    with PostgresServer() as server:
        yield server.create_database("bench_rollups")


def bench(engine: str, readings: int, series: int, recent: int, hours: int) -> dict[str, object]:
    settings = Settings()
    end = now_micros() // MICROS_PER_HOUR * MICROS_PER_HOUR
    with database(engine) as url:
        store = open_store(url)
        try:
            started = time.perf_counter()
            # History stops `hours` hours ago; the live increment continues it from there.
            loaded = load_history(store, readings, series, end - hours * MICROS_PER_HOUR)
            load_seconds = time.perf_counter() - started
            print(f"  loaded    {loaded:>12,} readings in {load_seconds:.1f} s (Store.write)", flush=True)
            settle(store)
            ceiling = ceiling_seconds(store)
            print(
                f"  ceiling   {loaded / ceiling:>12,.0f} readings/s ({ceiling:.2f} s, one GROUP BY)",
                flush=True,
            )
            settle(store)
            full = run_job(find_job("rollups"), store, settings)
            full_seconds = float(full["seconds"])
            print(
                f"  full      {loaded / full_seconds:>12,.0f} readings/s ({full_seconds:.2f} s, "
                f"{full['hours']:,} hours in {full['chunks']} chunks); ratio to ceiling "
                f"{ceiling / full_seconds:.2f}",
                flush=True,
            )
            live_start = end - hours * MICROS_PER_HOUR
            added = load_live(store, recent, series, live_start)
            live = incremental_run(store, settings, added, full_seconds, "live")
            late = load_late(store, recent, series, live_start - 2 * MICROS_PER_HOUR, live_start)
            late_run = incremental_run(store, settings, late, full_seconds, "late")
            again = run_job(find_job("rollups"), store, settings)
            failures = check(store)
            if again.get("hours"):
                failures.append(f"a second run recomputed {again['hours']} hours; expected none")
            for failure in failures:
                print(f"  FAIL: {failure}")
            return {
                "engine": engine,
                "readings": loaded,
                "series": series,
                "load_seconds": load_seconds,
                "ceiling_seconds": ceiling,
                "full_seconds": full_seconds,
                "full_rate": loaded / full_seconds,
                "full_to_ceiling": ceiling / full_seconds,
                "hours": full["hours"],
                "live": live,
                "late": late_run,
                "failures": failures,
            }
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--series", type=int, default=1_000, help="a multiple of 5 (5 metrics a device)")
    parser.add_argument("--recent", type=int, default=100_000, help="new readings for the incremental run")
    parser.add_argument("--hours", type=int, default=2, help="history stops this many hours ago")
    parser.add_argument("--engines", default="postgresql", help="comma-separated: postgresql,sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        print(f"{engine}: {args.readings:,} readings, {args.series:,} series, one a minute", flush=True)
        results.append(bench(engine, args.readings, args.series, args.recent, args.hours))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
