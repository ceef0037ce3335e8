"""Validation: what a decoded message must satisfy before it may enter a write batch.

One rule set, the same on both engines, applied once per message by the pipeline, so
that nothing one engine cannot store (a NUL, a lone surrogate, a time outside what
Python's datetime holds) ever reaches a transaction, where it would fail the whole batch:

- the payload is at most `max_payload_bytes`;
- device ids, metric names and units are 1..`max_id_length` (units: `max_text_length`)
  characters of printable text: no control character (C0, DEL, C1), no lone surrogate;
- metadata strings (type, name, firmware, attributes) hold no NUL or lone surrogate and
  are at most `max_text_length` characters (other controls are kept, escaped when printed);
- every reading's time is within [`earliest_time`, receipt + `max_future_seconds`];
  (values need no check here: every decoder gives finite floats only, and counts the
  rest as invalid values; the fuzz and property tests hold them to that)
- one device has at most `max_metrics_per_message` distinct metrics in one message.

A message that breaks a rule is rejected whole with a DecodeError whose reason names the
field, the problem and, for a limit, the setting that raises it. Strings that passed are
remembered, so the steady state costs a set lookup per device id and metric name.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.limits import TIME_CEILING, TIME_FLOOR, Limits, setting_hint
from iotpipe.model import (
    MICROS_PER_SECOND,
    DecodedMessage,
    DeviceInfo,
    InvalidValue,
    Micros,
    RawMessage,
    format_micros,
)
from iotpipe.text import CONTROL_OR_SURROGATE, UNSTORABLE, describe_character, printable

log = logging.getLogger(__name__)

Decoder = Callable[[RawMessage], list[DecodedMessage]]

_metric = operator.itemgetter(0)
_time = operator.itemgetter(1)
# Ids and names already seen to be clean text (no controls, no surrogates). Bounded: a
# flood of distinct names empties it rather than growing it.
_CLEAN_CACHE_SIZE = 100_000
_clean: set[str] = set()
_clean_shapes: dict[tuple[str, ...], int] = {}
_MAX_ATTRIBUTE_DEPTH = 8


def decode_valid(raw: RawMessage, decode: Decoder, limits: Limits) -> list[DecodedMessage]:
    """Decode `raw` with `decode` and validate the result, or raise DecodeError with the reason."""
    size = len(raw.payload)
    if size > limits.max_payload_bytes:
        raise DecodeError(
            f"payload is {size} bytes, over the limit of {limits.max_payload_bytes} "
            f"(raise it with {setting_hint('max_payload_bytes')})"
        )
    try:
        decoded = decode(raw)
    except DecodeError as exc:
        if exc.reason.isprintable():
            raise
        raise DecodeError(printable(exc.reason)) from None
    except RecursionError:
        raise DecodeError("payload is nested too deeply to decode") from None
    except Exception as exc:
        # A decoder bug must cost one message, not stop the source; the log keeps the trace.
        log.exception("decoder failed on a message from %s %s", raw.source, printable(raw.origin))
        raise DecodeError(
            printable(f"internal error while decoding ({type(exc).__name__}: {exc}); please report it")
        ) from None
    if not decoded:
        raise DecodeError("payload holds no readings")
    received_at = raw.received_at
    valid = False
    for message in decoded:
        check_message(message, received_at, limits)
        valid = valid or bool(message.readings)
    if not valid:
        raise DecodeError(_nothing_valid_reason(decoded))
    return decoded


def check_message(message: DecodedMessage, received_at: Micros, limits: Limits) -> None:
    """Raise DecodeError if one device's part of a message breaks a rule (see the module doc)."""
    device_id = message.device_id
    if device_id not in _clean or len(device_id) > limits.max_id_length:
        check_label(device_id, "device_id", limits.max_id_length, "max_id_length")
        _remember(device_id)
    readings = message.readings
    if readings:
        # Devices send the same metrics message after message: a known tuple of names
        # (clean, and its longest name's length) skips the per-name checks.
        shape = tuple(map(_metric, readings))
        longest = _clean_shapes.get(shape)
        if (
            longest is None
            or longest > limits.max_id_length
            or len(shape) + len(message.invalid) > limits.max_metrics_per_message
        ):
            _check_names(message, shape, limits)
            readings = message.readings  # over-long names may have become invalid values
        if readings:
            latest = received_at + limits.max_future_micros
            if latest > TIME_CEILING:
                latest = TIME_CEILING
            time = message.time
            if time is not None:
                if not limits.earliest_time <= time <= latest:
                    _check_times(message, received_at, limits)
            elif min(map(_time, readings)) < limits.earliest_time or max(map(_time, readings)) > latest:
                _check_times(message, received_at, limits)
    if message.invalid:
        _check_invalid_names(message)
    if message.units:
        for metric, unit in message.units.items():
            of = f" of {_shown(device_id)}/{_shown(metric)}"
            check_label(unit, "unit", limits.max_text_length, "max_text_length", of)
    if message.info is not None:
        _check_info(message.info, device_id, limits)


def _check_names(message: DecodedMessage, shape: tuple[str, ...], limits: Limits) -> None:
    names = set(shape)
    of = f" of device {_shown(message.device_id)}"
    for name in names - _clean:
        check_label(name, "metric name", None, "max_id_length", of)
        _remember(name)
    longest = max(map(len, names))
    if longest > limits.max_id_length:
        _invalidate_long_names(message, limits.max_id_length)
    else:
        if len(_clean_shapes) >= _CLEAN_CACHE_SIZE:
            _clean_shapes.clear()
        _clean_shapes[shape] = longest
    if len(names) + len(message.invalid) > limits.max_metrics_per_message:
        _check_metric_count(message, limits)


def _check_invalid_names(message: DecodedMessage) -> None:
    # An invalid value's name is stored with its count: it must be storable and printable
    # too, though an empty or over-long one only spoils its own value (as decoders decide).
    for bad in message.invalid:
        control = CONTROL_OR_SURROGATE.search(bad.metric)
        if control is not None:
            raise DecodeError(
                f"metric name {_shown(bad.metric)} of device {_shown(message.device_id)} holds the control "
                f"character {describe_character(control.group())} at position {control.start()}; "
                "ids, names and units must be printable text"
            )


def check_label(text: str, field: str, max_length: int | None, setting: str, of: str = "") -> None:
    """An id, name or unit: non-empty printable text of at most `max_length` characters.

    Reasons read "{field} '{text}'{of} holds ...", e.g. of=" of device 'pump-7'".
    """
    if type(text) is not str:
        raise DecodeError(f"{field} {_shown(text)}{of} is not text")
    if not text.strip():
        raise DecodeError(f"{field}{of} is empty")
    bad = CONTROL_OR_SURROGATE.search(text)
    if bad is not None:
        raise DecodeError(
            f"{field} {_shown(text)}{of} holds the control character {describe_character(bad.group())} "
            f"at position {bad.start()}; ids, names and units must be printable text"
        )
    if max_length is not None and len(text) > max_length:
        raise DecodeError(
            f"{field} {_shown(text)}{of} is {len(text)} characters, over the limit of {max_length} "
            f"(raise it with {setting_hint(setting)})"
        )


def check_text(text: str, field: str, limits: Limits, of: str = "") -> None:
    """Free text (metadata): storable on both engines and at most max_text_length characters."""
    bad = UNSTORABLE.search(text)
    if bad is not None:
        raise DecodeError(
            f"{field} {_shown(text)}{of} holds {describe_character(bad.group())} at position {bad.start()}, "
            "which cannot be stored"
        )
    if len(text) > limits.max_text_length:
        raise DecodeError(
            f"{field}{of} is {len(text)} characters, over the limit of {limits.max_text_length} "
            f"(raise it with {setting_hint('max_text_length')})"
        )


def _check_info(info: DeviceInfo, device_id: str, limits: Limits) -> None:
    for field in ("type", "name", "firmware"):
        value = getattr(info, field)
        if value is not None:
            check_text(value, f"device {field}", limits, f" of {_shown(device_id)}")
    if info.attributes:
        _check_attributes(info.attributes, "", f" of {_shown(device_id)}", limits, 0)


def _check_attributes(value: Any, path: str, of: str, limits: Limits, depth: int) -> None:
    field = f"device attribute {path or '(root)'}"
    if depth > _MAX_ATTRIBUTE_DEPTH:
        raise DecodeError(f"{field}{of} is nested more than {_MAX_ATTRIBUTE_DEPTH} levels deep")
    if isinstance(value, str):
        check_text(value, field, limits, of)
    elif isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str):
                check_text(key, "device attribute name", limits, of)
            inner_path = f"{path}.{printable(str(key))[:40]}" if path else printable(str(key))[:40]
            _check_attributes(inner, inner_path, of, limits, depth + 1)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _check_attributes(inner, f"{path}[{index}]", of, limits, depth + 1)


def _check_times(message: DecodedMessage, received_at: Micros, limits: Limits) -> None:
    readings = message.readings
    earliest = limits.earliest_time
    latest = min(received_at + limits.max_future_micros, TIME_CEILING)
    if min(map(_time, readings)) < earliest:
        metric, time, _ = next(r for r in readings if r[1] < earliest)
        raise DecodeError(
            f"timestamp of {_shown(message.device_id)}/{_shown(metric)} is {describe_time(time)}, before the "
            f"earliest accepted time {describe_time(earliest)} (change it with {setting_hint('earliest_time')})"
        )
    if max(map(_time, readings)) > latest:
        metric, time, _ = next(r for r in readings if r[1] > latest)
        if latest == TIME_CEILING:
            where = f"after the latest time iotpipe stores, {describe_time(TIME_CEILING)}"
        else:
            where = (
                f"more than {_duration(limits.max_future_seconds)} in the future "
                f"(allow more with {setting_hint('max_future_seconds')})"
            )
        raise DecodeError(
            f"timestamp of {_shown(message.device_id)}/{_shown(metric)} is {describe_time(time)}, {where}"
        )


def _check_metric_count(message: DecodedMessage, limits: Limits) -> None:
    names = set(map(_metric, message.readings))
    names.update(bad.metric for bad in message.invalid)
    if len(names) > limits.max_metrics_per_message:
        raise DecodeError(
            f"device {_shown(message.device_id)} has {len(names)} metrics in one message, over the limit "
            f"of {limits.max_metrics_per_message} (raise it with {setting_hint('max_metrics_per_message')})"
        )


def _invalidate_long_names(message: DecodedMessage, max_length: int) -> None:
    """Like a decoder's over-long key, a name over the configured limit spoils only its value."""
    kept = []
    for reading in message.readings:
        name = reading[0]
        if len(name) <= max_length:
            kept.append(reading)
        else:
            reason = (
                f"metric name {_shown(name)} is {len(name)} characters, over the limit of {max_length} "
                f"(raise it with {setting_hint('max_id_length')})"
            )
            message.invalid.append(InvalidValue(name[:max_length], reason))
    message.readings = kept


def describe_time(time: Micros) -> str:
    """An ISO 8601 time where datetime can show it, else the year it falls in."""
    if TIME_FLOOR <= time <= TIME_CEILING:
        return format_micros(time)
    # The year it falls in: floored, as a calendar counts (Dec 31st of 9999 is not 10000).
    year = math.floor(1970 + time / (365.2425 * 86_400 * MICROS_PER_SECOND))
    return f"in the year {year}"


def _duration(seconds: float) -> str:
    if seconds == 86_400:
        return "a day"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} seconds"


def _remember(text: str) -> None:
    if len(_clean) >= _CLEAN_CACHE_SIZE:
        _clean.clear()
    _clean.add(text)


def _shown(value: object, limit: int = 40) -> str:
    """A value quoted for a reason: printable, and cut to `limit` characters."""
    text = repr(value) if not isinstance(value, str) else "'" + printable(value) + "'"
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _nothing_valid_reason(decoded: list[DecodedMessage]) -> str:
    invalid = [bad.reason for m in decoded for bad in m.invalid]
    if invalid:
        return printable("no valid metric: " + "; ".join(invalid[:10]))
    return "no metric in message"
