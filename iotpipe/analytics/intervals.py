"""How often each series usually reports: the median gap between its recent readings.

The median ignores the odd dropout or burst, and the recent sample follows a device
whose reporting interval was reconfigured.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from iotpipe.model import MICROS_PER_SECOND, Micros
from iotpipe.store.schema import readings


@dataclass(frozen=True, slots=True)
class SeriesActivity:
    first_time: Micros
    last_time: Micros
    last_value: float
    interval_seconds: float | None  # None until the series has two readings


def series_activity(conn: Connection, series_ids: Iterable[int], sample: int) -> dict[int, SeriesActivity]:
    """First and last reading and usual interval of each series with readings.

    Each is one index range read at the end of the series (and one lookup of its
    first reading), so the cost follows the number of series, not of readings.
    """
    found: dict[int, SeriesActivity] = {}
    for series_id in series_ids:
        recent = conn.execute(
            select(readings.c.time, readings.c.value)
            .where(readings.c.series_id == series_id)
            .order_by(readings.c.time.desc())
            .limit(sample + 1)
        ).all()
        if not recent:
            continue
        first = conn.scalar(select(func.min(readings.c.time)).where(readings.c.series_id == series_id))
        times = [t for t, _ in recent]
        gaps = [(a - b) / MICROS_PER_SECOND for a, b in itertools.pairwise(times) if a > b]
        found[series_id] = SeriesActivity(
            first_time=first if first is not None else times[-1],
            last_time=times[0],
            last_value=recent[0][1],
            interval_seconds=statistics.median(gaps) if gaps else None,
        )
    return found
