"""Storage benchmark (issue 13): bytes per reading hot and packed, and query times on each tier.

Per engine and per kind of series — `regular` (60 s, values at 0.1 resolution), `jitter`
(the same values, timestamps jittered by whole milliseconds), `walk` (60 s, a
full-precision random walk) — 1,000 series × 10,000 minutes (10M readings) are written
through the store's own bulk path into a fresh database, ending three days ago. Then, in
the same run:

1. hot: bytes per reading of the `readings` table (heap + primary key on PostgreSQL, its
   B-tree pages on SQLite); `Store.read_series` of one series over 1 day and over 30 days
   (the series' whole ~7 days), median of --repeat runs over random series; the hourly
   rollup of everything (`iotpipe jobs rollups` with every hour queued);
2. `Store.compact` packs every day (the compaction job's code), timed;
3. packed: the same measurements on the packed tier (`packed_readings`).

Ratios are packed ÷ hot: bytes (the compression), query times (goal ≤ 1.5). Goals for
packed bytes per reading on PostgreSQL: regular ≤ 1, jitter ≤ 3, walk ≤ 7. `--scale 0.1`
runs a tenth of the series for a quick look.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg

from iotpipe.analytics.rollups import refresh
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    WriteBatch,
    day_start,
    now_micros,
)
from iotpipe.store import Store, open_store
from tests.servers import PostgresServer

KINDS = ("regular", "jitter", "walk")
ENGINES = ("postgresql", "sqlite")
GOALS = {"regular": 1.0, "jitter": 3.0, "walk": 7.0}  # packed bytes per reading on PostgreSQL
MINUTE = 60 * MICROS_PER_SECOND
BATCH = 50_000


def series_data(
    kind: str, series: int, minutes: int, start: int, seed: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    grid = start + np.arange(minutes, dtype=np.int64) * MINUTE
    for s in range(series):
        walk = 20.0 + rng.uniform(-5, 5) + np.cumsum(rng.normal(0, 0.1, minutes))
        if kind == "walk":
            yield s, grid, walk
            continue
        values = np.round(walk, 1)
        times = grid + rng.integers(0, 1000, minutes) * 1000 if kind == "jitter" else grid
        yield s, times, values


def load(store: Store, kind: str, series: int, minutes: int, start: int) -> int:
    """Write the readings in time order, as a fleet reports, in batches of 50,000."""
    per_round = max(1, BATCH // series)
    data = list(series_data(kind, series, minutes, start, seed=13))
    written = 0
    for first in range(0, minutes, per_round):
        batch = WriteBatch()
        for s, times, values in data:
            part = slice(first, first + per_round)
            group = list(
                zip(["v"] * len(times[part]), times[part].tolist(), values[part].tolist(), strict=True)
            )
            batch.groups.append((f"s-{s:05d}", group))
            batch.reading_count += len(group)
        store.write(batch)
        written += batch.reading_count
    return written


def tier_bytes(store: Store, url: str, table: str) -> int:
    if store.dialect == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"VACUUM (ANALYZE) {table}")
            row = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()
            return int(row[0]) if row else 0
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        names = (table, f"sqlite_autoindex_{table}_1")
        row = conn.execute(
            f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({','.join('?' * len(names))})", names
        ).fetchone()
        return int(row[0] or 0)


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def query_times(store: Store, series_ids: list[int], start: int, repeat: int) -> dict[str, float]:
    """Median seconds of reading 1 day and 30 days of one series (random ones)."""
    rng = np.random.default_rng(5)
    picks = rng.choice(series_ids, size=repeat).tolist()
    days = rng.integers(1, 6, size=repeat).tolist()
    one_day = [
        timed(
            lambda s=s, d=d: store.read_series(
                s, start + d * MICROS_PER_DAY, start + (d + 1) * MICROS_PER_DAY
            )
        )
        for s, d in zip(picks, days, strict=True)
    ]
    thirty = [timed(lambda s=s: store.read_series(s, start, start + 30 * MICROS_PER_DAY)) for s in picks]
    return {"day_seconds": statistics.median(one_day), "month_seconds": statistics.median(thirty)}


def rollup_everything(store: Store, ids: list[int], start: int, end: int) -> float:
    """The hourly (and daily, weekly) rollup of every reading: every hour queued, one job run."""
    first = start - start % MICROS_PER_HOUR
    hours = [(s, h) for s in ids for h in range(first, end + MICROS_PER_HOUR, MICROS_PER_HOUR)]
    with store.write_transaction() as conn:
        conn.exec_driver_sql("DELETE FROM rollups")
        conn.exec_driver_sql("DELETE FROM dirty_hours")
        conn.exec_driver_sql("DELETE FROM rollup_queue")
    with store.write_transaction() as conn:  # marked as ingest marks them (engine time)
        store._insert_dirty_hours(conn, [(s, h + store.time_offset) for s, h in hours])
    started = time.perf_counter()
    refresh(store)
    return time.perf_counter() - started


def settle(store: Store, url: str) -> None:
    if store.dialect == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
    os.sync()


@contextmanager
def databases(engine: str, workdir: Path) -> Iterator[Callable[[str], str]]:
    if engine == "sqlite":
        yield lambda name: f"sqlite:///{workdir / name}.db"
        return
    with PostgresServer() as server:
        yield server.create_database


def bench(
    engine: str, kind: str, url: str, series: int, minutes: int, repeat: int, say: Any
) -> dict[str, Any]:
    store = open_store(url)
    end = day_start(now_micros()) - 3 * MICROS_PER_DAY
    start = end - minutes * MINUTE
    started = time.perf_counter()
    readings = load(store, kind, series, minutes, start)
    load_seconds = time.perf_counter() - started
    settle(store, url)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM series ORDER BY id")]
    hot = {"bytes_per_reading": tier_bytes(store, url, "readings") / readings}
    query_start = day_start(start)
    hot |= query_times(store, ids, query_start, repeat)
    hot["rollup_seconds"] = rollup_everything(store, ids, start, end)
    settle(store, url)
    compact_seconds = timed(lambda: store.compact(end, step_readings=50_000))
    stats = store.stats()["tiers"]
    assert stats["packed"]["readings"] == readings and stats["hot"]["readings"] == 0, stats
    settle(store, url)
    packed = {"bytes_per_reading": tier_bytes(store, url, "packed_readings") / readings}
    packed |= query_times(store, ids, query_start, repeat)
    packed["rollup_seconds"] = rollup_everything(store, ids, start, end)
    store.close()
    ratios = {k: packed[k] / hot[k] for k in hot}
    result = {
        "engine": engine,
        "kind": kind,
        "readings": readings,
        "load_readings_per_second": readings / load_seconds,
        "compact_readings_per_second": readings / compact_seconds,
        "hot": hot,
        "packed": packed,
        "ratios": ratios,
    }
    print(
        f"  {kind:8s} hot {hot['bytes_per_reading']:6.2f} B  packed {packed['bytes_per_reading']:5.2f} B "
        f"(÷{hot['bytes_per_reading'] / packed['bytes_per_reading']:.0f}); "
        f"1 day {hot['day_seconds'] * 1e3:.2f}/{packed['day_seconds'] * 1e3:.2f} ms ({ratios['day_seconds']:.2f}), "
        f"30 days {hot['month_seconds'] * 1e3:.1f}/{packed['month_seconds'] * 1e3:.1f} ms ({ratios['month_seconds']:.2f}), "
        f"rollup {hot['rollup_seconds']:.1f}/{packed['rollup_seconds']:.1f} s ({ratios['rollup_seconds']:.2f}); "
        f"compaction {result['compact_readings_per_second']:,.0f} readings/s",
        file=say,
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 1,000 series (0.1: quick)")
    parser.add_argument("--minutes", type=int, default=10_000, help="readings per series, one a minute")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--repeat", type=int, default=21, help="query repeats (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    series = max(1, round(1000 * args.scale))
    say = sys.stderr if args.json else sys.stdout
    results = []
    print(
        f"storage: {series:,} series × {args.minutes:,} minutes = {series * args.minutes:,} readings per kind; "
        f"load average {os.getloadavg()[0]:.1f}",
        file=say,
    )
    with tempfile.TemporaryDirectory(prefix="iotpipe-storage-") as tmp:
        for engine in args.engines.split(","):
            print(f"{engine}:", file=say, flush=True)
            with databases(engine, Path(tmp)) as fresh:
                for kind in args.kinds.split(","):
                    results.append(
                        bench(engine, kind, fresh(f"storage_{kind}"), series, args.minutes, args.repeat, say)
                    )
    failures = [
        f"{r['kind']}: {r['packed']['bytes_per_reading']:.2f} B/reading packed on PostgreSQL, goal ≤ {GOALS[r['kind']]}"
        for r in results
        if r["engine"] == "postgresql" and r["packed"]["bytes_per_reading"] > GOALS[r["kind"]]
    ]
    failures += [
        f"{r['engine']} {r['kind']}: packed {q} {r['ratios'][q]:.2f}× the hot table, goal ≤ 1.5"
        for r in results
        for q in ("day_seconds", "month_seconds", "rollup_seconds")
        if r["ratios"][q] > 1.5
    ]
    for failure in failures:
        print(f"  goal not met: {failure}", file=say)
    if args.json:
        print(
            json.dumps(
                {"benchmark": "storage", "series": series, "minutes": args.minutes, "results": results},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
