"""Turning one metric's payload value into a float, or saying precisely why it is not one."""

from __future__ import annotations

import math
import re

from iotpipe import limits
from iotpipe.errors import DecodeError
from iotpipe.model import InvalidValue

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_METRIC_NAME = re.compile(r"[^a-z0-9]+")
MAX_ID_LENGTH = limits.MAX_ID_LENGTH  # decoders' own bound; [limits] max_id_length may only lower it


def coerce_value(metric: str, value: object) -> float | InvalidValue | None:
    """A metric's value as a float; InvalidValue if unusable; None if absent (null/empty).

    Booleans count as 1/0 (door contacts, relays). Strings holding a number are accepted,
    because Zigbee2MQTT and ThingSpeak send numbers as strings.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range; repr() of it may itself refuse
            return InvalidValue(metric, f"{metric}: integer is too large for a number")
    elif isinstance(value, str):
        if not value.strip():
            return None
        if not _NUMBER.fullmatch(value):
            return InvalidValue(metric, f"{metric}: {_preview(value)} is not a number")
        # strip(): the regex's \s takes separators (\x1c-\x1f) that float() refuses.
        number = float(value.strip())
    else:
        return InvalidValue(metric, f"{metric}: {type(value).__name__} is not a number")
    if not math.isfinite(number):
        return InvalidValue(metric, f"{metric}: {_preview(value)} is not a finite number")
    return number


def check_device_id(value: object, field: str = "device_id") -> str:
    """A usable device id or DecodeError naming the field."""
    if value is None:
        raise DecodeError(f"{field} missing")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DecodeError(f"{field} {_preview(value)} is not a string")
    text = str(value).strip()
    if not text:
        raise DecodeError(f"{field} is empty")
    if len(text) > MAX_ID_LENGTH:
        raise DecodeError(f"{field} is longer than {MAX_ID_LENGTH} characters")
    return text


def check_metric_name(value: object, field: str = "metric") -> str:
    if not isinstance(value, str) or not value.strip():
        raise DecodeError(f"{field} {_preview(value)} is not a metric name")
    if len(value) > MAX_ID_LENGTH:
        raise DecodeError(f"{field} is longer than {MAX_ID_LENGTH} characters")
    return value.strip()


def unusable_metric_name(name: str, field: str) -> InvalidValue | None:
    """InvalidValue when a payload key cannot name a metric (empty, blank, too long), else None.

    A bad key spoils only its own value, so it is reported like a bad value, not raised.
    """
    if 0 < len(name) <= MAX_ID_LENGTH and not name.isspace():
        return None
    if len(name) > MAX_ID_LENGTH:
        reason = f"{field}: metric name is longer than {MAX_ID_LENGTH} characters"
        return InvalidValue(name[:MAX_ID_LENGTH], reason)
    return InvalidValue(name, f"{field}: metric name {name!r} is empty")


def coordinate(value: object, limit: float) -> float | None:
    """A latitude/longitude/elevation as a float within ±limit; None when absent or unusable.

    Location is metadata: a bad one is dropped rather than costing the message its readings.
    """
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            return None
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # The range test also rejects NaN, and runs before float() so a huge int cannot overflow.
    return float(value) if -limit <= value <= limit else None


def slug_metric(label: str) -> str:
    """A metric name from a human label: 'Outside Temperature' -> 'outside_temperature'."""
    return _METRIC_NAME.sub("_", label.strip().lower()).strip("_") or "value"


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
