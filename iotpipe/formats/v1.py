"""V1 flat JSON: `{"device_id": ..., "timestamp": ..., "<metric>": <number>, ...}`."""

from __future__ import annotations

from typing import Any

from iotpipe.formats import register
from iotpipe.formats.json import JSON_VERSIONS, decode_object, load_json
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.values import MAX_ID_LENGTH, check_device_id, coerce_value, unusable_metric_name
from iotpipe.model import DecodedMessage, DeviceInfo, InvalidValue, RawMessage

# Top-level keys that describe the message or device, never metrics.
RESERVED_KEYS = frozenset(
    {
        "device_id",
        "timestamp",
        "time",
        "ts",
        "schema_version",
        "type",
        "name",
        "firmware",
        "location",
        "lat",
        "lon",
        "latitude",
        "longitude",
        "elevation",
        "unit",
        "units",
    }
)
_TIME_KEYS = ("timestamp", "time", "ts")
_FLOAT_SAFE = 2**1000  # ints beyond this overflow float(); coerce_value explains them
_MILLIS_FROM, _MILLIS_BELOW = 10**11, 10**14  # parse_timestamp's band for epoch ms


def decode_v1_object(obj: dict[str, Any], raw: RawMessage) -> DecodedMessage:
    device_id = obj.get("device_id")
    if (
        type(device_id) is not str
        or not 0 < len(device_id) <= MAX_ID_LENGTH
        or device_id != device_id.strip()
    ):
        # A null device_id is as good as absent: fall back to what the source knows.
        device_id = check_device_id(_first(device_id, raw.device_id))
    stamp = obj.get("timestamp")
    if type(stamp) is int and _MILLIS_FROM <= stamp < _MILLIS_BELOW:
        time = stamp * 1000  # epoch ms, what most devices send: skip the general parser
    else:
        time = message_time(obj, raw)
    readings: list[tuple[str, int, float]] = []
    invalid: list[InvalidValue] = []
    for key, value in obj.items():
        if key in RESERVED_KEYS:
            continue
        kind = type(value)
        # Fast path for what devices send nearly always: a finite number under a sane key.
        if (kind is float or kind is int) and 0 < len(key) <= MAX_ID_LENGTH and not key.isspace():
            number = float(value) if kind is int and -_FLOAT_SAFE < value < _FLOAT_SAFE else value
            if type(number) is float and number - number == 0.0:  # finite: inf - inf and nan are nan
                # strip() returns the key itself when there is nothing to strip: cheap.
                readings.append((key.strip(), time, number))
                continue
        if kind is dict or kind is list:
            continue
        key = key.strip()
        coerced = coerce_value(key, value)
        if type(coerced) is float:
            bad_name = unusable_metric_name(key, "top-level key")
            if bad_name is None:
                readings.append((key, time, coerced))
            else:
                invalid.append(bad_name)
        elif coerced is not None:
            invalid.append(coerced)  # type: ignore[arg-type]
    return DecodedMessage(device_id, readings, invalid=invalid, info=_info(obj), time=time)


def message_time(obj: dict[str, Any], raw: RawMessage) -> int:
    """The first time key present, parsed; the receipt time when there is none."""
    for key in _TIME_KEYS:
        value = obj.get(key)
        if value is not None:
            return parse_timestamp(value, key)
    return raw.received_at


def _info(obj: dict[str, Any]) -> DeviceInfo | None:
    if "type" not in obj and "name" not in obj and "firmware" not in obj:
        return None
    return DeviceInfo(
        type=_text(obj.get("type")), name=_text(obj.get("name")), firmware=_text(obj.get("firmware"))
    )


def _first(value: object, fallback: object) -> object:
    return fallback if value is None else value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


JSON_VERSIONS[1] = decode_v1_object


@register("v1")
def decode_v1(raw: RawMessage) -> list[DecodedMessage]:
    obj = load_json(raw)
    if isinstance(obj, dict) and "schema_version" not in obj:
        return [decode_v1_object(obj, raw)]
    return [decode_object(obj, raw)]
