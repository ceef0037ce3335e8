"""Bulk decoding straight into columns: V1 JSON lines and InfluxDB line protocol, for imports.

pyarrow's native JSON reader (and its string kernels, for line protocol) decode a chunk of
a file's lines at once into columns of (device, metric, time, value). Only records the
fast path can decode *exactly as the per-record decoder would* are taken; every other
record — an unusual type, a null, a string timestamp, an escape, a name or id that is not
plainly valid, a value that is not finite, a time outside the accepted range — is left
to the exact decoder (`Block.fallback`), so what is stored and what is dead-lettered is
the same as without this module, only faster.

Validation seam: `plain_label` and `plain_times` are the one place this module decides
what it may take without the pipeline's per-message validation; they accept a strict
subset of what validation accepts (printable, trimmed, ≤ MAX_ID_LENGTH; 1970 ≤ time ≤
receipt + tolerance). When the validation module changes its rules, only these two need
to follow.

Loaded by the App's import only (pyarrow is heavy), never by formats/__init__ or a source.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from iotpipe import limits
from iotpipe.formats.lineproto import DEVICE_TAGS, GENERIC_MEASUREMENTS
from iotpipe.formats.v1 import RESERVED_KEYS
from iotpipe.formats.values import MAX_ID_LENGTH
from iotpipe.model import MICROS_PER_SECOND, RawMessage

FORMATS = ("v1", "lineproto")  # what this module decodes; None (auto) lines are tried as V1
MIN_BISECT = 32  # a chunk pyarrow refuses is split in halves down to this many lines
_MILLIS_FROM, _MILLIS_BELOW = 10**11, 10**14  # parse_timestamp's bands for epoch ints
_MICROS_BELOW = 10**17
BLOCK_BYTES = 1 << 20  # pyarrow's JSON reader: below this, a body is parsed as one block
_FLOAT_SAFE = 2**53  # ints beyond this: left to the exact decoder's float(int)
_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# The scalars the compute calls take, typed and made once. pyarrow converts an untyped
# Python scalar argument on every call, and its type inference (pyarrow 26) tries to
# import dateutil each time: without it, a failed import that searches sys.path, which
# cost HTTP ingest (a request is a small block, decoded with ~17 such calls) ~6 % of its
# CPU. tests/test_bulk_import.py checks that a decode imports nothing.
_INT = {
    n: pa.scalar(n, pa.int64())
    for n in (0, 1, 2, 1_000, 1_000_000, _MILLIS_FROM, _MILLIS_BELOW, _MICROS_BELOW, _FLOAT_SAFE)
}
_NO, _YES = pa.scalar(False, pa.bool_()), pa.scalar(True, pa.bool_())
_ZERO_TEXT, _EMPTY_TEXT = pa.scalar("0", pa.string()), pa.scalar("", pa.string())
_UNDERSCORE, _NUL = pa.scalar("_", pa.string()), pa.scalar("\x00", pa.string())
_DEVICE_TAGS = pa.array(sorted(DEVICE_TAGS), pa.string())
_GENERIC_MEASUREMENTS = pa.array(sorted(GENERIC_MEASUREMENTS), pa.string())
_MASK_BITS = 63  # a block's metrics as the bits of one int64 per device, up to this many


@dataclass
class Decoded:
    """What the fast path made of a chunk of payloads: readings in long form, and which
    payloads it took (the others are the exact decoder's). Plain data: it crosses processes."""

    devices: pa.Array  # string, one per reading
    metrics: pa.Array  # string
    times: pa.Array  # int64 Unix µs
    values: pa.Array  # float64
    taken: list[bool]
    lines: pa.Array  # int32: which payload each reading came from


@dataclass(slots=True)
class Pairs:
    names: list[tuple[str, str]]  # a block's distinct (device, metric) pairs
    inverse: pa.Array  # int32, one per reading: its pair's index in names
    by_device: dict[str, frozenset[str]]  # each device's metrics
    devices: list[str]  # the block's distinct devices
    device_of: pa.Array  # int64, one per pair: its device's index in devices


@dataclass
class Block:
    """Readings decoded from a chunk of records, in long form, and the records left over."""

    devices: pa.Array  # string, one per reading
    metrics: pa.Array  # string
    times: pa.Array  # int64 Unix µs
    values: pa.Array  # float64
    messages: Sequence[RawMessage] = field(default_factory=list)  # the records decoded here
    fallback: list[RawMessage] = field(default_factory=list)  # for the exact decoder
    lines: pa.Array | None = None  # int32: index in the chunk of each reading's record
    _pairs: Pairs | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.times)

    def pairs(self) -> Pairs:
        """The block's distinct (device, metric) pairs and which one each reading is;
        found once (the pipeline's series limit and the store's write both ask)."""
        if self._pairs is None:
            devices, metrics = self.devices.dictionary_encode(), self.metrics.dictionary_encode()
            device_names, metric_names = devices.dictionary.to_pylist(), metrics.dictionary.to_pylist()
            width = pa.scalar(max(1, len(metric_names)), pa.int64())
            # One integer per reading (device index × metric count + metric index): hashing
            # integers is far cheaper than joining and hashing the two strings.
            keys = pc.add(
                pc.multiply(devices.indices.cast(pa.int64()), width), metrics.indices.cast(pa.int64())
            ).dictionary_encode()
            device_of = pc.divide(keys.dictionary, width)  # integer division
            metric_of = pc.subtract(keys.dictionary, pc.multiply(device_of, width))
            names = [
                (device_names[d], metric_names[m])
                for d, m in zip(device_of.to_pylist(), metric_of.to_pylist(), strict=True)
            ]
            by_device = _metrics_by_device(device_names, metric_names, device_of, metric_of)
            self._pairs = Pairs(names, keys.indices, by_device, device_names, device_of)
        return self._pairs

    def series(self) -> dict[str, frozenset[str]]:
        """Each device's metrics in this block."""
        return self.pairs().by_device


def _metrics_by_device(
    device_names: list[str], metric_names: list[str], device_of: pa.Array, metric_of: pa.Array
) -> dict[str, frozenset[str]]:
    """Each device's metrics, given each distinct pair's device and metric index. Devices
    mostly report the same few metrics: each distinct set is made once, from a bit mask per
    device (the sum of its pairs' bits: they are distinct), where a set per device cost
    more than the rest of a small block's checks."""
    if len(metric_names) > _MASK_BITS:
        found: dict[str, set[str]] = {}
        for d, m in zip(device_of.to_pylist(), metric_of.to_pylist(), strict=True):
            found.setdefault(device_names[d], set()).add(metric_names[m])
        return {device_id: frozenset(metrics) for device_id, metrics in found.items()}
    bits = pc.shift_left(_INT[1], metric_of)
    per_device = pa.table({"device": device_of, "bits": bits}).group_by("device").aggregate([("bits", "sum")])
    masks = per_device["bits_sum"].combine_chunks().dictionary_encode()
    sets = [
        frozenset(name for bit, name in enumerate(metric_names) if mask >> bit & 1)
        for mask in masks.dictionary.to_pylist()
    ]
    return {
        device_names[d]: sets[k]
        for d, k in zip(per_device["device"].to_pylist(), masks.indices.to_pylist(), strict=True)
    }


def _none_taken(count: int) -> Decoded:
    return Decoded(
        pa.array([], pa.string()),
        pa.array([], pa.string()),
        pa.array([], pa.int64()),
        pa.array([], pa.float64()),
        [False] * count,
        pa.array([], pa.int32()),
    )


# -- the validation seam -----------------------------------------------------------------------
def plain_label(text: str) -> bool:
    """A device id or metric name the pipeline's validation surely accepts as it is."""
    return 0 < len(text) <= MAX_ID_LENGTH and text.isprintable() and text == text.strip()


def plain_times(times: pa.Array, received_at: int) -> pa.Array:
    """Which times validation surely accepts: from 1970 up to the receipt's tolerance."""
    horizon = received_at + int(limits.FUTURE_TOLERANCE_SECONDS * MICROS_PER_SECOND)
    return pc.and_(pc.greater_equal(times, _INT[0]), pc.less_equal(times, pa.scalar(horizon, pa.int64())))


# -- entry points ----------------------------------------------------------------------------
def decode_chunk(messages: list[RawMessage], fmt: str) -> Block:
    """Decode what can be decoded exactly of `messages` (one format, one file's lines)."""
    return to_block(messages, decode_payloads([m.payload for m in messages], fmt, messages[0].received_at))


def to_block(messages: Sequence[RawMessage], decoded: Decoded) -> Block:
    taken = decoded.taken
    if all(taken):  # the usual case: the chunk itself, not a copy (its messages may be lazy)
        return Block(
            decoded.devices, decoded.metrics, decoded.times, decoded.values, messages, [], decoded.lines
        )
    return Block(
        decoded.devices,
        decoded.metrics,
        decoded.times,
        decoded.values,
        [m for m, ok in zip(messages, taken, strict=True) if ok],
        [m for m, ok in zip(messages, taken, strict=True) if not ok],
        decoded.lines,
    )


def in_file_order(
    messages: Sequence[RawMessage], decoded: Decoded, max_runs: int = 16
) -> list[Block | RawMessage]:
    """The chunk as the pipeline must see it for "the first stored wins" to hold as on the
    exact path: blocks of consecutive taken records and the records left over, in file
    order. A chunk broken into more than `max_runs` runs goes whole to the exact path."""
    taken = decoded.taken
    if all(taken):
        return [to_block(messages, decoded)]
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(taken) + 1):
        if i == len(taken) or taken[i] != taken[start]:
            runs.append((start, i, taken[start]))
            start = i
    if len(runs) > max_runs:
        return list(messages)
    parts: list[Block | RawMessage] = []
    for first, end, fast in runs:
        if not fast:
            parts.extend(messages[first:end])
            continue
        mine = pc.and_(pc.greater_equal(decoded.lines, first), pc.less(decoded.lines, end))
        parts.append(
            Block(
                pc.filter(decoded.devices, mine),
                pc.filter(decoded.metrics, mine),
                pc.filter(decoded.times, mine),
                pc.filter(decoded.values, mine),
                messages[first:end],
                [],
            )
        )
    return parts


def decode_payloads(payloads: list[bytes], fmt: str, received_at: int) -> Decoded:
    """The fast path over raw payloads (a process pool's unit of work)."""
    decode = _decode_lineproto if fmt == "lineproto" else _decode_v1
    try:
        return decode(payloads, received_at)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # One odd line (not an object, a type that changes) spoils pyarrow's whole read:
        # halve the chunk until the odd lines are in small parts left to the exact decoder.
        if len(payloads) <= MIN_BISECT:
            return _none_taken(len(payloads))
        middle = len(payloads) // 2
        first = decode_payloads(payloads[:middle], fmt, received_at)
        second = decode_payloads(payloads[middle:], fmt, received_at)
        return Decoded(
            pa.concat_arrays([first.devices, second.devices]),
            pa.concat_arrays([first.metrics, second.metrics]),
            pa.concat_arrays([first.times, second.times]),
            pa.concat_arrays([first.values, second.values]),
            first.taken + second.taken,
            pa.concat_arrays([first.lines, pc.add(second.lines, pa.scalar(middle, pa.int32()))]),
        )


def _taking(count: int, taken: pa.Array, readings: list[tuple[pa.Array, ...]]) -> Decoded:
    """The readings of the rows `taken` marks."""
    flags = pc.fill_null(taken, _NO).to_pylist()  # Python bools, no None
    if not readings or not any(flags):
        return _none_taken(count)
    return Decoded(
        pa.concat_arrays([r[0] for r in readings]),
        pa.concat_arrays([r[1] for r in readings]),
        pa.concat_arrays([r[2] for r in readings]),
        pa.concat_arrays([r[3] for r in readings]),
        flags,
        pa.concat_arrays([pc.cast(r[4], pa.int32()) for r in readings]),
    )


# -- V1 JSON ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _line_numbers(count: int) -> pa.Array:
    """0 … count-1 as int32 (a chunk's line numbers; chunks mostly have one size)."""
    return pa.array(range(count), pa.int32())


def _epoch_micros(stamps: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Integer epoch timestamps as µs by magnitude (parse_timestamp's bands: s, ms, µs,
    ns floored), and which rows have one."""
    bounds = pc.min_max(stamps)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is not None and low >= _MILLIS_FROM and high < _MILLIS_BELOW:
        return pc.multiply(stamps, _INT[1_000]), pc.is_valid(stamps)  # all in ms, as most files
    magnitude = pc.abs(stamps)
    seconds = pc.less(magnitude, _INT[_MILLIS_FROM])
    millis = pc.and_(pc.greater_equal(magnitude, _INT[_MILLIS_FROM]), pc.less(magnitude, _INT[_MILLIS_BELOW]))
    micros = pc.and_(
        pc.greater_equal(magnitude, _INT[_MILLIS_BELOW]), pc.less(magnitude, _INT[_MICROS_BELOW])
    )
    scaled = pc.case_when(
        pc.make_struct(seconds, millis, micros),
        pc.multiply(stamps, _INT[1_000_000]),
        pc.multiply(stamps, _INT[1_000]),
        stamps,
        _floor_div_1000(stamps),
    )
    return scaled, pc.is_valid(stamps)


def _floor_div_1000(stamps: pa.Array) -> pa.Array:
    quotient = pc.divide(stamps, _INT[1_000])  # int division truncates toward zero
    inexact_negative = pc.and_(
        pc.less(stamps, _INT[0]), pc.not_equal(pc.multiply(quotient, _INT[1_000]), stamps)
    )
    return pc.subtract(quotient, pc.cast(inexact_negative, pa.int64()))


def _decode_v1(payloads: list[bytes], received_at: int) -> Decoded:
    body = b"\n".join(payloads)
    # Two blocks, parsed on two threads, for a chunk of a large import (a third less time
    # than one); a block must hold a whole line, and a small body stays one block.
    block_size = max(len(body) // 2, max(map(len, payloads)), BLOCK_BYTES) + 1
    table = pa_json.read_json(
        io.BytesIO(body), read_options=pa_json.ReadOptions(use_threads=True, block_size=block_size)
    )
    if table.num_rows != len(payloads):
        raise pa.ArrowInvalid("line count changed")  # a record spanning lines: bisect
    names = table.column_names
    taken = pa.repeat(_YES, len(payloads))
    if "device_id" not in names or table.schema.field("device_id").type != pa.string():
        return _none_taken(len(payloads))
    devices = table.column("device_id").combine_chunks()
    valid_ids = {d for d in pc.unique(devices).drop_null().to_pylist() if plain_label(d)}
    taken = pc.and_(taken, pc.fill_null(pc.is_in(devices, pa.array(sorted(valid_ids), pa.string())), _NO))
    if "timestamp" not in names or not pa.types.is_integer(table.schema.field("timestamp").type):
        return _none_taken(len(payloads))
    times, has_time = _epoch_micros(pc.cast(table.column("timestamp").combine_chunks(), pa.int64()))
    taken = pc.and_(taken, has_time)
    taken = pc.and_(taken, pc.fill_null(plain_times(times, received_at), _NO))
    metrics: list[tuple[str, pa.Array]] = []
    for name in names:
        column = table.column(name).combine_chunks()
        if name in ("device_id", "timestamp"):
            continue
        kind = column.type
        numeric = pa.types.is_floating(kind) or pa.types.is_integer(kind)
        if name in RESERVED_KEYS or not numeric or not plain_label(name):
            # Another time key, metadata, a string or nested value, an odd name: the
            # exact decoder knows what each means.
            taken = pc.and_(taken, pc.is_null(column))
            continue
        if pa.types.is_integer(kind):
            small = pc.less_equal(pc.abs(column), _INT[_FLOAT_SAFE])
            taken = pc.and_(taken, pc.fill_null(small, _YES))
        values = pc.cast(column, pa.float64())
        finite = pc.is_finite(values)
        taken = pc.and_(taken, pc.fill_null(finite, _YES))
        metrics.append((name, values))
    if not metrics:
        return _none_taken(len(payloads))
    # A record with no metric at all is the exact decoder's to refuse.
    present = pc.is_valid(metrics[0][1])
    for _, values in metrics[1:]:
        present = pc.or_(present, pc.is_valid(values))
    taken = pc.and_(taken, present)
    readings = []
    line_index = _line_numbers(len(payloads))
    for name, values in metrics:
        keep = pc.and_(taken, pc.is_valid(values))
        count = pc.sum(pc.cast(keep, pa.int64())).as_py() or 0
        if not count:
            continue
        readings.append(
            (
                pc.filter(devices, keep),
                pa.repeat(pa.scalar(name, pa.string()), count),
                pc.filter(times, keep),
                pc.filter(values, keep),
                pc.filter(line_index, keep),
            )
        )
    return _taking(len(payloads), taken, readings)


# -- line protocol -----------------------------------------------------------------------------
# measurement,tag=device fields stamp: checked whole by a regex without captures, then cut
# at its two spaces, its comma and its equals sign (no part can hold another's separator),
# half the time of a regex with five captures.
_LINE = r"^[^ ,=]+,[^ ,=]+=[^ ,=]+ [^ ]+ -?[0-9]{1,19}$"
_OTHER_SHAPE = pa.scalar("-,-=- - 0", pa.string())  # cut in place of a line of another shape, never taken
_FIELD = r"^(?P<key>[^=]+)=(?P<value>[^=]+)$"


# Past this many fields on a line, repeated keys are found by counting (line, key) pairs.
_COMPARED_FIELDS = 16


def _lines_naming_a_key_twice(owner: pa.Array, keys: pa.Array, widest: int) -> pa.Array:
    """The lines (with repeats) in which a field key comes twice, given each field's line
    (a line's fields are consecutive: `list_parent_indices`) and key (null where the field
    did not parse: that line is refused already), and the most fields on one line.

    Comparing each key with the few before it is cheap; counting (line, key) strings, as
    the wide case still does, took a quarter of the decode."""
    if widest > _COMPARED_FIELDS:
        line_keys = pc.binary_join_element_wise(pc.cast(owner, pa.string()), keys, _NUL)
        counts = pc.value_counts(line_keys)
        repeated = pc.filter(
            pc.struct_field(counts, "values"), pc.greater(pc.struct_field(counts, "counts"), _INT[1])
        )
        return pc.filter(owner, pc.is_in(line_keys, repeated)) if len(repeated) else owner.slice(0, 0)
    kind = pc.dictionary_encode(keys).indices
    total = len(kind)
    found = [owner.slice(0, 0)]
    for step in range(1, min(widest, total)):
        same = pc.and_(
            pc.equal(kind.slice(step), kind.slice(0, total - step)),
            pc.equal(owner.slice(step), owner.slice(0, total - step)),
        )
        found.append(pc.filter(owner.slice(step), pc.fill_null(same, _NO)))
    return pa.concat_arrays(found)


def _line_parts(lines: pa.Array, shaped: pa.Array) -> tuple[pa.Array, ...]:
    """Measurement, tag, device, fields and stamp of each line of the plain shape."""
    parts = pc.split_pattern(pc.if_else(shaped, lines, _OTHER_SHAPE), " ")
    head = pc.split_pattern(pc.list_element(parts, _INT[0]), ",")
    tag_device = pc.split_pattern(pc.list_element(head, _INT[1]), "=")
    return (
        pc.list_element(head, _INT[0]),
        pc.list_element(tag_device, _INT[0]),
        pc.list_element(tag_device, _INT[1]),
        pc.list_element(parts, _INT[1]),
        pc.list_element(parts, _INT[2]),
    )


def _decode_lineproto(payloads: list[bytes], received_at: int) -> Decoded:
    """Lines of the plain shape only: `measurement,device_id=D f=1.5,g=2i 1700000000000000000`
    (or host=D): one tag naming the device, no escapes, no quotes, a timestamp, and decimal
    or integer fields. Every other line is the exact decoder's."""
    lines = pa.array(payloads, pa.binary()).cast(pa.string())
    shaped = pc.match_substring_regex(lines, _LINE)
    plain = pc.fill_null(pc.and_(shaped, pc.invert(pc.match_substring_regex(lines, r'[\\"]'))), _NO)
    measurement, tag, device, fields, stamp = _line_parts(lines, shaped)
    plain = pc.and_(plain, pc.fill_null(pc.is_in(tag, _DEVICE_TAGS), _NO))
    ids = {d for d in pc.unique(pc.filter(device, plain)).to_pylist() if plain_label(d)}
    plain = pc.and_(plain, pc.fill_null(pc.is_in(device, pa.array(sorted(ids), pa.string())), _NO))
    names = {m for m in pc.unique(pc.filter(measurement, plain)).to_pylist() if plain_label(m)}
    plain = pc.and_(plain, pc.fill_null(pc.is_in(measurement, pa.array(sorted(names), pa.string())), _NO))
    stamps = pc.cast(pc.if_else(plain, stamp, _ZERO_TEXT), pa.int64())
    times = _floor_div_1000(stamps)
    plain = pc.and_(plain, pc.fill_null(plain_times(times, received_at), _NO))
    # One row per field of the plain lines.
    pairs = pc.split_pattern(pc.if_else(plain, fields, _EMPTY_TEXT), ",")
    owner = pc.list_parent_indices(pairs)
    field = pc.extract_regex(pc.list_flatten(pairs), _FIELD)
    keys, raw_values = pc.struct_field(field, "key"), pc.struct_field(field, "value")
    integer = pc.match_substring_regex(raw_values, r"^[+-]?[0-9]{1,15}i$")
    field_ok = pc.fill_null(pc.or_(integer, pc.match_substring_regex(raw_values, _DECIMAL)), _NO)
    number_text = pc.if_else(integer, pc.utf8_slice_codeunits(raw_values, 0, -1), raw_values)
    values = pc.cast(pc.if_else(field_ok, number_text, _ZERO_TEXT), pa.float64())
    field_ok = pc.and_(field_ok, pc.is_finite(values))
    key_names = {k for k in pc.unique(pc.filter(keys, field_ok)).to_pylist() if plain_label(k)}
    field_ok = pc.fill_null(
        pc.and_(field_ok, pc.is_in(keys, pa.array(sorted(key_names), pa.string()))), False
    )
    # A line with any field the fast path cannot take goes whole to the exact decoder, and
    # so does one naming a field twice (the exact decoder's rule decides which value).
    bad_lines = pc.unique(pc.filter(owner, pc.invert(field_ok)))
    widest = pc.max(pc.list_value_length(pairs)).as_py() or 0
    twice = _lines_naming_a_key_twice(owner, keys, widest)
    if len(twice):
        bad_lines = pc.unique(pa.concat_arrays([bad_lines, twice]))
    line_index = pa.array(range(len(payloads)), pa.int64())
    plain = pc.and_(plain, pc.invert(pc.is_in(line_index, pc.cast(bad_lines, pa.int64()))))
    keep = pc.take(plain, owner)
    kept_owner = pc.filter(owner, keep)
    field_measurement = pc.take(measurement, kept_owner)
    field_key = pc.filter(keys, keep)
    generic = pc.is_in(field_measurement, _GENERIC_MEASUREMENTS)
    metric = pc.if_else(
        generic, field_key, pc.binary_join_element_wise(field_measurement, field_key, _UNDERSCORE)
    )
    if not all(plain_label(m) for m in pc.unique(metric).to_pylist()):
        return _none_taken(len(payloads))  # a measurement_field name too long: rare, the exact path says so
    readings = [
        (pc.take(device, kept_owner), metric, pc.take(times, kept_owner), pc.filter(values, keep), kept_owner)
    ]
    return _taking(len(payloads), plain, readings if len(kept_owner) else [])
