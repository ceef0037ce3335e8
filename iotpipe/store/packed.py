"""The packed tier's codec: one series-day of readings as two compressed columns, exactly.

Times (Unix µs, strictly increasing) become their deltas divided by the deltas' greatest
common divisor (1,000 for millisecond timestamps), then delta-of-delta: a regular series
is all zeros. Values are decoded back bit for bit: when every value of the day is a
decimal of at most 12 digits after the point (what sensors with a resolution send), they
are stored as the scaled integers' deltas; otherwise as deltas of the float64 bit
patterns (neighbouring values share sign, exponent and high mantissa bits). Either way
the integers are zigzag-coded into the narrowest of 1, 2, 4 or 8 bytes, split into byte
planes (the high bytes are mostly zero) and compressed with zstandard.

Every blob starts with a 10-byte header `<BBq`: codec, integer width, parameter (the time
unit, or the decimal scale). Decoding needs the reading count, kept beside the blobs.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np
import zstandard

FORMAT_VERSION = 1
_HEADER = struct.Struct("<BBq")
TIMES_DOD = 1  # parameter: the time unit in µs
VALUES_DECIMAL = 2  # parameter: the number of decimal digits
VALUES_FLOAT_BITS = 3  # parameter: unused
MAX_DECIMALS = 12
_LEVEL = 3  # zstd: level 3 packs within ~3 % of level 19 on sensor data, at ~20x the speed
_SCALES = [10.0**k for k in range(MAX_DECIMALS + 1)]
_TWO_POW_53 = 2.0**53

_local = threading.local()  # zstd contexts are not thread-safe; one pair per thread


def _compressor() -> zstandard.ZstdCompressor:
    found = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=_LEVEL)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


# -- integers ------------------------------------------------------------------------------
def _pack_ints(codec: int, parameter: int, ints: np.ndarray) -> bytes:
    """Signed int64s as zigzag, narrowest width, byte planes, zstd, behind the header."""
    zigzag = ((ints << 1) ^ (ints >> 63)).view(np.uint64)
    top = int(zigzag.max()) if len(zigzag) else 0
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    planes = zigzag.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T.tobytes()
    return _HEADER.pack(codec, width, parameter) + _compressor().compress(planes)


def _unpack_ints(blob: bytes, count: int) -> tuple[int, int, np.ndarray]:
    codec, width, parameter = _HEADER.unpack_from(blob)
    planes = _decompressor().decompress(blob[_HEADER.size :], max_output_size=count * width)
    narrow = np.frombuffer(planes, dtype=np.uint8).reshape(width, count).T.copy().view(f"<u{width}")
    zigzag = narrow.reshape(count).astype(np.uint64)
    ints = (zigzag >> np.uint64(1)).view(np.int64) ^ -(zigzag & np.uint64(1)).view(np.int64)
    return codec, parameter, ints


# -- times -----------------------------------------------------------------------------------
def encode_times(times: np.ndarray) -> bytes:
    """Strictly increasing Unix µs of one series-day (at least one)."""
    times = np.asarray(times, dtype=np.int64)
    deltas = np.diff(times)
    unit = int(np.gcd.reduce(deltas)) if len(deltas) else 1
    steps = deltas // unit
    # The first time itself, then the first step, then each step's change.
    ints = np.empty(len(times), dtype=np.int64)
    ints[0] = times[0]
    if len(steps):
        ints[1] = steps[0]
        ints[2:] = np.diff(steps)
    return _pack_ints(TIMES_DOD, unit, ints)


def decode_times(blob: bytes, count: int) -> np.ndarray:
    codec, unit, ints = _unpack_ints(blob, count)
    if codec != TIMES_DOD:
        raise ValueError(f"packed times have codec {codec}, expected {TIMES_DOD}")
    times = np.empty(count, dtype=np.int64)
    times[0] = ints[0]
    if count > 1:
        steps = np.cumsum(ints[1:])
        times[1:] = ints[0] + np.cumsum(steps) * unit
    return times


# -- values ----------------------------------------------------------------------------------
def decimal_places(values: np.ndarray) -> int | None:
    """The fewest decimal digits that give every value back bit for bit, if ≤ 12."""
    bits = values.view(np.int64)
    largest = float(np.max(np.abs(values))) if len(values) else 0.0
    for places, scale in enumerate(_SCALES):
        if largest * scale >= _TWO_POW_53:
            return None  # the scaled integers would no longer be exact in a float
        scaled = np.rint(values * scale).astype(np.int64)
        # The very division decode_values does; -0.0 comes back as 0.0 and so fails here.
        if np.array_equal((scaled / scale).view(np.int64), bits):
            return places
    return None


def encode_values(values: np.ndarray) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float64)
    places = decimal_places(values)
    if places is not None:
        ints = np.rint(values * _SCALES[places]).astype(np.int64)
        codec = VALUES_DECIMAL
    else:
        ints = values.view(np.int64)
        places, codec = 0, VALUES_FLOAT_BITS
    deltas = np.empty_like(ints)
    deltas[:1] = ints[:1]
    # Wrapping subtraction: the cumulative sum on decoding wraps back exactly.
    np.subtract(ints[1:], ints[:-1], out=deltas[1:])
    return _pack_ints(codec, places, deltas)


def decode_values(blob: bytes, count: int) -> np.ndarray:
    codec, places, deltas = _unpack_ints(blob, count)
    with np.errstate(over="ignore"):
        ints = np.cumsum(deltas, dtype=np.int64)
    if codec == VALUES_DECIMAL:
        return ints / _SCALES[places]
    if codec == VALUES_FLOAT_BITS:
        return ints.view(np.float64)
    raise ValueError(f"packed values have codec {codec}")


# -- many series-days at once ------------------------------------------------------------------
_WIDTHS = (1, 2, 4, 8)
_NARROW: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


def encode_days(times: np.ndarray, values: np.ndarray, starts: np.ndarray) -> list[tuple[bytes, bytes]]:
    """encode_times and encode_values of every run [starts[i], starts[i+1]) at once, the
    same bytes as one call per run, with numpy over all runs and one zstd call for all
    blobs: a historical import packs thousands of small series-days."""
    times = np.asarray(times, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    count = len(times)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.append(starts[1:], count)
    sizes = ends - starts
    first = np.zeros(count, dtype=bool)
    first[starts] = True
    second = starts[sizes > 1] + 1
    # Times: step from the previous reading of the run, divided by the run's gcd.
    steps = np.zeros(count, dtype=np.int64)
    steps[1:] = np.diff(times)
    steps[first] = 0
    units = np.gcd.reduceat(np.abs(steps), starts)
    units[units == 0] = 1
    quotients = steps // np.repeat(units, sizes)
    time_ints = np.empty(count, dtype=np.int64)
    time_ints[1:] = np.diff(quotients)
    time_ints[second] = quotients[second]
    time_ints[starts] = times[starts]
    places = _run_decimal_places(values, starts)
    decimal = places >= 0
    value_ints = values.view(np.int64).copy()
    in_decimal = np.repeat(decimal, sizes)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(values[in_decimal] * np.repeat(_SCALE_ARRAY[places[decimal]], sizes[decimal]))
    value_ints[in_decimal] = scaled.astype(np.int64)
    value_deltas = np.empty(count, dtype=np.int64)
    value_deltas[1:] = value_ints[1:] - value_ints[:-1]
    value_deltas[starts] = value_ints[starts]
    time_blobs = _compress_runs(time_ints, starts, sizes, np.full(len(starts), TIMES_DOD), units)
    value_blobs = _compress_runs(
        value_deltas,
        starts,
        sizes,
        np.where(decimal, VALUES_DECIMAL, VALUES_FLOAT_BITS),
        np.where(decimal, places, 0),
    )
    return list(zip(time_blobs, value_blobs, strict=True))


_SCALE_ARRAY = np.array(_SCALES)


def _run_decimal_places(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run, the fewest decimal digits (≤ 12) that give each of its values back bit for
    bit, as decimal_places does; -1 where there are none."""
    bits = values.view(np.int64)
    places = np.full(len(starts), -1, dtype=np.int64)
    largest = np.maximum.reduceat(np.abs(values), starts)
    buffer = np.empty_like(values)
    exact = np.empty(len(values), dtype=bool)
    for digits, scale in enumerate(_SCALES):
        pending = places < 0
        if not pending.any():
            break
        with np.errstate(over="ignore"):
            fits = largest * scale < _TWO_POW_53
        if not (pending & fits).any():
            break  # a larger scale fits no run that this one did not
        # Where a run fits, its scaled values are exact integers in a float, so rounding
        # and dividing is the very division decode_values does. Its integers have no
        # sign of zero: adding 0.0 turns -0.0 into 0.0, so a -0.0 fails the comparison.
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(values, scale, out=buffer)
            np.rint(buffer, out=buffer)
            np.add(buffer, 0.0, out=buffer)
            np.divide(buffer, scale, out=buffer)
        np.equal(buffer.view(np.int64), bits, out=exact)
        places[pending & fits & np.logical_and.reduceat(exact, starts)] = digits
    return places


def _compress_runs(
    ints: np.ndarray, starts: np.ndarray, sizes: np.ndarray, codecs: np.ndarray, parameters: np.ndarray
) -> list[bytes]:
    """_pack_ints of every run, with one zstd call (on both cores) for all of them."""
    zigzag = ((ints << 1) ^ (ints >> 63)).view(np.uint64)
    tops = np.maximum.reduceat(zigzag, starts)
    widths = np.select([tops < 1 << 8, tops < 1 << 16, tops < 1 << 32], [1, 2, 4], 8)
    # One array per width, so that a run's byte planes are a slice's transpose. (Putting
    # every run's planes in place with fancy indexing instead took longer than this loop.)
    narrowed = {width: zigzag.astype(_NARROW[width]) for width in set(widths.tolist())}
    planes: list[bytes | bytearray | memoryview] = [
        narrowed[width][a : a + size].view(np.uint8).reshape(-1, width).T.tobytes()
        for a, size, width in zip(starts.tolist(), sizes.tolist(), widths.tolist(), strict=True)
    ]
    compressed = _compressor().multi_compress_to_buffer(planes, threads=-1)
    return [
        _HEADER.pack(codec, width, parameter) + compressed[i].tobytes()
        for i, (codec, width, parameter) in enumerate(
            zip(codecs.tolist(), widths.tolist(), parameters.tolist(), strict=True)
        )
    ]
