"""The one timestamp parser: ISO 8601 (naive means UTC) or epoch s/ms/µs/ns by magnitude."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from iotpipe.errors import DecodeError
from iotpipe.model import Micros, datetime_to_micros

# Epoch magnitude bands. A value below 1e11 is seconds (up to year 5138); below 1e14
# milliseconds; below 1e17 microseconds; anything larger nanoseconds. Real devices send
# 10-digit seconds, 13-digit ms, 16-digit µs and 19-digit ns, so the bands never overlap.
_SECONDS_BELOW = 1e11
_MILLIS_BELOW = 1e14
_MICROS_BELOW = 1e17
_MAX_ABS = 1e20  # beyond ns range of year ~5000: not a timestamp
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_timestamp(value: object, field: str = "timestamp") -> Micros:
    """Parse a timestamp of any accepted shape into µs since the epoch, or raise DecodeError."""
    if isinstance(value, bool):
        raise DecodeError(f"{field} {value!r} is a boolean, not a timestamp")
    if isinstance(value, int | float):
        return _from_epoch(value, field)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise DecodeError(f"{field} is empty")
        if _INTEGER.fullmatch(text) and len(text) <= 24:
            # int keeps ns/µs digits a float would round; the length bound keeps int() from
            # refusing (or slowly parsing) thousands of digits, which are out of range anyway.
            return _from_epoch(int(text), field, text)
        if _DECIMAL.fullmatch(text) or _INTEGER.fullmatch(text):
            return _from_epoch(float(text), field, text)
        return _from_iso(text, field)
    raise DecodeError(f"{field} {value!r} is neither ISO 8601 nor an epoch number")


def epoch_to_micros(value: float, unit_seconds: float) -> Micros:
    """Scale an epoch number whose unit is known (SenML seconds, line protocol ns)."""
    return round(value * unit_seconds * 1_000_000)


def _from_epoch(number: float, field: str, text: str | None = None) -> Micros:
    # Compare before any float conversion: a huge int would overflow math.isfinite.
    if abs(number) >= _MAX_ABS or not math.isfinite(number):
        shown = repr(text if text is not None else number)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise DecodeError(f"{field} {shown} is out of range for an epoch timestamp")
    magnitude = abs(number)
    if magnitude < _SECONDS_BELOW:
        scale = 1_000_000
    elif magnitude < _MILLIS_BELOW:
        scale = 1_000
    elif magnitude < _MICROS_BELOW:
        scale = 1
    else:
        return int(number) // 1_000 if isinstance(number, int) else round(number / 1_000)
    return number * scale if isinstance(number, int) else round(number * scale)


def _from_iso(text: str, field: str) -> Micros:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(f"{field} {text!r} is not a valid ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return datetime_to_micros(parsed)
