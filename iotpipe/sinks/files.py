"""Readings and rollups as files: Hive-partitioned Parquet or CSV, one file per UTC day.

Layout: `DIR/date=YYYY-MM-DD/part-0.parquet` (or `.csv`). A partition is written to a
hidden temp file in its folder and renamed over the old one, so a reader sees the old
partition or the new one, never half of one or both; writing the same data again gives
the same bytes. The `date` column is the folder's (DuckDB, pandas, polars and Spark add it
from the path), not repeated in the file.

Raw rows: device_id, metric, time (timestamp µs UTC), value — sorted by device, metric,
time. Rollup rows (tiers 1h, 1d): device_id, metric, bucket_start, count, avg, min, max,
stddev, first_time, first_value, last_time, last_value.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from iotpipe.errors import IotpipeError
from iotpipe.model import MICROS_PER_DAY, Micros, day_name, day_start
from iotpipe.store import Store

FORMATS = ("parquet", "csv")
TIERS = ("raw", "1h", "1d")
PART = "part-0"

RAW_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("value", pa.float64()),
    ]
)
ROLLUP_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("bucket_start", pa.timestamp("us", tz="UTC")),
        ("count", pa.int64()),
        ("avg", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("stddev", pa.float64()),
        ("first_time", pa.timestamp("us", tz="UTC")),
        ("first_value", pa.float64()),
        ("last_time", pa.timestamp("us", tz="UTC")),
        ("last_value", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class SeriesName:
    series_id: int
    device_id: str
    metric: str


def partition_path(out: Path, day: Micros, fmt: str) -> Path:
    return out / f"date={day_name(day)}" / f"{PART}.{fmt}"


def write_partition(out: Path, day: Micros, table: pa.Table, fmt: str) -> Path:
    """Replace the day's partition with `table`, atomically; an empty table removes it."""
    final = partition_path(out, day, fmt)
    if table.num_rows == 0:
        final.unlink(missing_ok=True)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        if fmt == "parquet":
            # Statistics per column let readers skip row groups by time; no timestamps in
            # the file, so the same rows give the same bytes.
            pq.write_table(table, temp, compression="zstd", row_group_size=1 << 20)
        else:
            pa_csv.write_csv(table, temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    for other in FORMATS:  # a partition exported before in the other format goes
        if other != fmt:
            partition_path(out, day, other).unlink(missing_ok=True)
    return final


def raw_day_table(store: Store, names: Sequence[SeriesName], start: Micros, end: Micros) -> pa.Table:
    """The readings of the series in [start, end) (within one day), sorted by device,
    metric, time."""
    by_id = {n.series_id: n for n in names}
    found = store.read_range(list(by_id), start, end)
    if not len(found):
        return RAW_SCHEMA.empty_table()
    # Rows come by series id; files are sorted by (device, metric): rank the series so.
    rank = np.zeros(max(by_id) + 1, dtype=np.int64)
    for i, sid in enumerate(sorted(by_id, key=lambda s: (by_id[s].device_id, by_id[s].metric))):
        rank[sid] = i
    order = np.lexsort((found.times, rank[found.series_ids]))
    sids = found.series_ids[order]
    unique_ids, inverse = np.unique(sids, return_inverse=True)
    devices = pa.array([by_id[int(s)].device_id for s in unique_ids], pa.string())
    metrics = pa.array([by_id[int(s)].metric for s in unique_ids], pa.string())
    index = pa.array(inverse.astype(np.int32))
    return pa.table(
        [
            devices.take(index),
            metrics.take(index),
            pa.array(found.times[order], pa.timestamp("us", tz="UTC")),
            pa.array(found.values[order], pa.float64()),
        ],
        schema=RAW_SCHEMA,
    )


def rollup_day_table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return ROLLUP_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=ROLLUP_SCHEMA)


def days_between(start: Micros, end: Micros) -> list[Micros]:
    """Start of each UTC day overlapping [start, end)."""
    return list(range(day_start(start), end, MICROS_PER_DAY))


def export(
    store: Store,
    out: Path,
    fmt: str,
    tier: str,
    names: Sequence[SeriesName],
    start: Micros,
    end: Micros,
    rollup_rows: Callable[[Micros, Micros], list[dict[str, Any]]],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write one partition per day of [start, end) holding data; return what was written."""
    if fmt not in FORMATS:
        raise IotpipeError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if tier not in TIERS:
        raise IotpipeError(f"unknown tier {tier!r}; choose one of: {', '.join(TIERS)}")
    days = days_between(start, end)
    written = {"partitions": 0, "rows": 0, "days": len(days)}
    for done, day in enumerate(days, 1):
        first, last = max(day, start), min(day + MICROS_PER_DAY, end)
        table = (
            raw_day_table(store, names, first, last)
            if tier == "raw"
            else rollup_day_table(rollup_rows(first, last))
        )
        write_partition(out, day, table, fmt)
        if table.num_rows:
            written["partitions"] += 1
            written["rows"] += table.num_rows
        if progress is not None:
            progress(done, len(days))
    return written
