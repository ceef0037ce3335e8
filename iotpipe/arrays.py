"""numpy helpers shared by the store, the analytics and the sinks.

numpy 2.3+ finds `np.unique` values by hashing: on this project's large integer keys
(a million (series, time) or (series, hour) keys per batch) it is 2 to 25 times slower
than sorting, the more so the more distinct values there are (1M distinct int64: 0.6 s
against 0.03 s). With return_inverse it still sorts, and is left as it is.
"""

from __future__ import annotations

import numpy as np


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values, as `np.unique(values)`."""
    ordered = values if non_decreasing(values) else np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def non_decreasing(values: np.ndarray) -> bool:
    """Whether the values are in order already (one pass, no sort): a batch's columns are
    put in (series, time) order once, and what derives keys from them need not sort again."""
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


def in_series_time_order(series_ids: np.ndarray, times: np.ndarray) -> bool:
    """Whether readings are grouped by series in ascending ids, each in time order."""
    if len(times) < 2:
        return True
    later = series_ids[1:] > series_ids[:-1]
    same = series_ids[1:] == series_ids[:-1]
    return bool(np.all(later | (same & (times[1:] >= times[:-1]))))
