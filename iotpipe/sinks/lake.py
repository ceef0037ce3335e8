"""The continuous lake: each closed UTC day of readings as one Parquet partition, exactly once.

`lake_dir/date=YYYY-MM-DD/part-0.parquet` (sinks/files.py's layout). A day is *closed*
`lake_close_seconds` after it ends; then it is written, and rewritten — the same one file,
replaced atomically — whenever late readings change it. A partition's name is its day,
never a time of writing, so two writes of a day can only replace each other: no
partition is ever lost to another, or held twice.

Which days to write comes from two places: after each commit the observer notes the days
the batch touched (so a late reading reaches the lake at the next run), and the lake
job also takes every day whose daily rollup changed since its last run (so nothing is
missed across restarts, and a lake turned on later gets the whole history). The cursor
(the start of the last successful run) is kept in `lake_dir/_iotpipe_lake.json`;
readers skip files starting with `_` or `.`.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import bindparam, select, text

from iotpipe.arrays import distinct
from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_DAY, Micros, WriteBatch, WriteResult, day_name, day_start, now_micros
from iotpipe.sinks import files
from iotpipe.store import Store
from iotpipe.store.schema import UtcMicros, devices, series

STATE_FILE = "_iotpipe_lake.json"


class LakeObserver:
    """After each commit, remembers which UTC days the batch wrote readings into."""

    def __init__(self) -> None:
        self._days: set[Micros] = set()
        self._lock = threading.Lock()

    def __call__(self, batch: WriteBatch, result: WriteResult) -> None:
        if result.times is None or not len(result.times):
            return
        times = np.asarray(result.times)
        days = distinct(times - times % MICROS_PER_DAY).tolist()
        with self._lock:
            self._days.update(days)

    def take(self, closed_before: Micros) -> set[Micros]:
        """The noted days that are closed, forgetting them."""
        with self._lock:
            closed = {d for d in self._days if d < closed_before}
            self._days -= closed
        return closed

    def give_back(self, days: set[Micros]) -> None:
        with self._lock:
            self._days |= days


_observers: weakref.WeakKeyDictionary[Store, LakeObserver] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


def lake_observers(store: Store, settings: Settings) -> list[LakeObserver]:
    """The store's lake observer (one per process and store), if a lake is configured."""
    if settings.storage.lake_dir is None:
        return []
    with _observers_lock:
        observer = _observers.get(store)
        if observer is None:
            observer = _observers[store] = LakeObserver()
    return [observer]


def closed_before(settings: Settings, now: Micros) -> Micros:
    """Days starting before this are closed: they ended `lake_close_seconds` ago or more."""
    return day_start(now - int(settings.storage.lake_close_seconds * 1_000_000))


def lake_job(store: Store, settings: Settings) -> dict[str, Any]:
    """Write every closed day that changed since the last run; return what was written."""
    lake = settings.storage.lake_dir
    if lake is None:
        return {"lake": "off (set [storage] lake_dir to keep one)"}
    started = now_micros()
    limit = closed_before(settings, started)
    cursor = _read_cursor(lake)
    noted = lake_observers(store, settings)[0].take(limit)
    days = noted | {d for d in _days_with_changed_rollups(store, cursor) if d < limit}
    try:
        written = write_days(store, lake, sorted(days))
    except BaseException:
        lake_observers(store, settings)[0].give_back(noted)
        raise
    _write_cursor(lake, started)
    return {"days": len(days), **written, "closed_before": day_name(limit)}


def write_days(store: Store, lake: Path, days: list[Micros]) -> dict[str, int]:
    """Rewrite each day's partition with all of that day's readings."""
    with store.read_connection() as conn:
        names = [
            files.SeriesName(sid, device_id, metric)
            for sid, device_id, metric in conn.execute(
                select(series.c.id, devices.c.device_id, series.c.metric).join(
                    devices, devices.c.id == series.c.device_pk
                )
            )
        ]
    written = {"partitions": 0, "rows": 0}
    if not names:
        return written
    for day in days:
        table = files.raw_day_table(store, names, day, day + MICROS_PER_DAY)
        files.write_partition(lake, day, table, "parquet")
        written["partitions"] += 1 if table.num_rows else 0
        written["rows"] += table.num_rows
    return written


def _days_with_changed_rollups(store: Store, since: Micros) -> set[Micros]:
    query = (
        text("SELECT DISTINCT bucket_start FROM rollups WHERE bucket = '1d' AND updated_at >= :since")
        .bindparams(bindparam("since", type_=UtcMicros()))
        .columns(bucket_start=UtcMicros())
    )
    with store.read_connection() as conn:
        return {int(day) for day in conn.execute(query, {"since": since}).scalars()}


def _read_cursor(lake: Path) -> Micros:
    try:
        return int(json.loads((lake / STATE_FILE).read_text())["rollups_seen_until"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def _write_cursor(lake: Path, value: Micros) -> None:
    lake.mkdir(parents=True, exist_ok=True)
    temp = lake / f".{STATE_FILE}.tmp"
    temp.write_text(json.dumps({"rollups_seen_until": value}))
    os.replace(temp, lake / STATE_FILE)
