"""The numpy helpers shared by the store, the analytics and the sinks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from iotpipe.arrays import distinct, in_series_time_order, non_decreasing
from iotpipe.formats.columnar import Block
from iotpipe.store.base import ReadingColumns


@given(st.lists(st.integers(-(2**63), 2**63 - 1)), st.sampled_from([np.int64, np.int32]))
def test_distinct_is_numpys_unique(values: list[int], dtype: type) -> None:
    array = np.array(values, dtype=np.int64).astype(dtype)
    found = distinct(array)
    assert found.dtype == array.dtype
    assert found.tolist() == np.unique(array).tolist() == sorted(set(array.tolist()))


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "dev-1", "é"]), st.sampled_from(["t", "h", "x"]))))
def test_a_blocks_pairs_name_each_readings_device_and_metric_once(readings: list[tuple[str, str]]) -> None:
    block = Block(
        pa.array([d for d, _ in readings], pa.string()),
        pa.array([m for _, m in readings], pa.string()),
        pa.array(range(len(readings)), pa.int64()),
        pa.array([0.0] * len(readings), pa.float64()),
    )
    pairs = block.pairs()
    assert len(set(pairs.names)) == len(pairs.names) == len(set(readings))
    assert [pairs.names[i] for i in pairs.inverse.to_pylist()] == readings
    assert block.pairs() is pairs  # found once
    assert block.series() == {d: {m for e, m in readings if e == d} for d, _ in readings}


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 5)), max_size=40))
def test_order_checks_agree_with_sorting(pairs: list[tuple[int, int]]) -> None:
    sids = np.array([s for s, _ in pairs], dtype=np.int64)
    times = np.array([t for _, t in pairs], dtype=np.int64)
    ordered = pairs == sorted(pairs)
    assert in_series_time_order(sids, times) is ordered
    assert non_decreasing(times) is (times.tolist() == sorted(times.tolist()))


@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),
            st.lists(st.tuples(st.integers(1, 5), st.integers(0, 9)), min_size=1, max_size=6),
        ),
        max_size=8,
    )
)
def test_a_batch_put_in_series_order_keeps_every_reading_first_fed_first_and_its_device_spans(
    groups: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    """Store.write sorts a batch's columns once; of two readings of a series at one time
    the first fed must stay first (it is the one stored), and each device's first and
    last times must survive the reordering of its runs."""
    readings = [
        (device * 10 + metric, t, float(n)) for n, (device, group) in enumerate(groups) for metric, t in group
    ]
    columns = ReadingColumns(
        np.array([r[0] for r in readings], dtype=np.int32),
        np.array([r[1] for r in readings], dtype=np.int64),
        np.array([r[2] for r in readings], dtype=np.float64),
        [device for device, _ in groups],
        [len(group) for _, group in groups],
    )
    spans = columns.device_spans()
    ordered = columns.in_series_order()
    rows = list(
        zip(ordered.series_ids.tolist(), ordered.times.tolist(), ordered.values.tolist(), strict=True)
    )
    assert rows == sorted(readings, key=lambda r: (r[0], r[1]))  # sorted() is stable too
    assert ordered.device_spans() == spans
