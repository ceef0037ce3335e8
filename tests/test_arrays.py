"""The numpy helpers shared by the store, the analytics and the sinks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from iotpipe.arrays import distinct
from iotpipe.formats.columnar import Block


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
