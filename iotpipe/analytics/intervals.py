"""How often each series usually reports: the median gap between its recent readings.

The median ignores the odd dropout or burst, and the recent sample follows a device
whose reporting interval was reconfigured.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection

from iotpipe.model import MICROS_PER_SECOND, Micros
from iotpipe.store import Store


@dataclass(frozen=True, slots=True)
class SeriesActivity:
    first_time: Micros
    last_time: Micros
    last_value: float
    interval_seconds: float | None  # None until the series has two readings


def series_activity(
    store: Store, conn: Connection, series_ids: Iterable[int], sample: int
) -> dict[int, SeriesActivity]:
    """First and last reading and usual interval of each series with readings.

    Each is one index range read at the end of the series (and one lookup of its
    first reading), so the cost follows the number of series, not of readings.
    """
    found: dict[int, SeriesActivity] = {}
    for series_id in series_ids:
        recent_times, recent_values = store.last_readings(series_id, sample + 1, conn=conn)
        if not len(recent_times):
            continue
        span = store.series_span(series_id, conn)
        times = recent_times.tolist()
        gaps = [(a - b) / MICROS_PER_SECOND for a, b in itertools.pairwise(times) if a > b]
        found[series_id] = SeriesActivity(
            first_time=span[0] if span is not None else times[-1],
            last_time=times[0],
            last_value=float(recent_values[0]),
            interval_seconds=statistics.median(gaps) if gaps else None,
        )
    return found
