"""Trends per series from its daily rollups: daily mean, day-over-day change, 7-day average.

The change compares a day with the calendar day before it (none when that day has no
readings); the 7-day moving average is the mean of the daily means of the days with
readings among that day and the six before it.
"""

from __future__ import annotations

from typing import Any

from iotpipe.analytics.common import SeriesRef
from iotpipe.analytics.rollups import bucket_rows
from iotpipe.model import MICROS_PER_DAY, Micros, day_name
from iotpipe.store import Store

WINDOW_DAYS = 7


def daily_trends(
    store: Store, ref: SeriesRef, start: Micros | None = None, end: Micros | None = None
) -> list[dict[str, Any]]:
    """One entry per day with readings in [start, end), oldest first."""
    context = None if start is None else start - (WINDOW_DAYS - 1) * MICROS_PER_DAY
    days = bucket_rows(store, ref, "1d", context, end)
    means = {d.bucket_start: d.avg for d in days}
    trends = []
    for day in days:
        if start is not None and day.bucket_start < start:
            continue  # context for the moving average only
        previous = means.get(day.bucket_start - MICROS_PER_DAY)
        change = day.avg - previous if previous is not None else None
        window = [
            means[d]
            for d in range(
                day.bucket_start - (WINDOW_DAYS - 1) * MICROS_PER_DAY, day.bucket_start + 1, MICROS_PER_DAY
            )
            if d in means
        ]
        trends.append(
            {
                "day": day_name(day.bucket_start),
                "count": day.count,
                "mean": day.avg,
                "change": change,
                "change_pct": 100.0 * change / abs(previous) if change is not None and previous else None,
                "avg_7d": sum(window) / len(window),
            }
        )
    return trends
