"""V2 JSON: `{"schema_version": 2, "device": {"id": ...}, "ts": ..., "readings": {"<metric>": ...}}`.

A reading is a bare value (`"temperature": 21.5`) or an object with a value and optional
unit (`"pressure": {"value": 3.2, "unit": "bar"}`). Other keys of a reading object are
ignored: per-reading times are not part of V2.
"""

from __future__ import annotations

from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.json import JSON_VERSIONS, decode_object, load_json
from iotpipe.formats.v1 import message_time
from iotpipe.formats.values import check_device_id, coerce_value, coordinate, unusable_metric_name
from iotpipe.model import DecodedMessage, DeviceInfo, InvalidValue, RawMessage

_NO_DEVICE: dict[str, Any] = {}
_INFO_KEYS = ("type", "name", "firmware", "location")
# Several spellings are in the wild (GeoJSON-ish `lng`, GPS `alt`); accept them all.
_LATITUDE_KEYS = ("lat", "latitude")
_LONGITUDE_KEYS = ("lon", "lng", "longitude")
_ELEVATION_KEYS = ("elevation", "alt", "altitude")
_MAX_ELEVATION_M = 100_000.0  # generous: covers balloons and aircraft, rejects garbage


def decode_v2_object(obj: dict[str, Any], raw: RawMessage) -> DecodedMessage:
    device = obj.get("device")
    if device is None:
        device = _NO_DEVICE  # the source (e.g. the MQTT topic) may still name the device
    elif not isinstance(device, dict):
        raise DecodeError(f"device must be an object, got {type(device).__name__}")
    device_id = device.get("id")
    device_id = check_device_id(raw.device_id if device_id is None else device_id, "device.id")
    time = message_time(obj, raw)

    values = obj.get("readings")
    if not isinstance(values, dict):
        if values is None:
            raise DecodeError("readings missing")
        raise DecodeError(f"readings must be an object, got {type(values).__name__}")

    readings: list[tuple[str, int, float]] = []
    invalid: list[InvalidValue] = []
    units: dict[str, str] = {}
    for metric, value in values.items():
        metric = metric.strip()  # " temperature " is the metric temperature
        unit = None
        if type(value) is dict:
            if "value" not in value:
                invalid.append(InvalidValue(metric, f"readings.{metric}: object has no 'value'"))
                continue
            unit = value.get("unit")
            reading_object = value
            value = value["value"]
        else:
            reading_object = None
        number = coerce_value(metric, value)
        if type(number) is float:
            bad_name = unusable_metric_name(metric, "readings")
            if bad_name is not None:
                invalid.append(bad_name)
                continue
            readings.append((metric, time, number))
            if type(unit) is str and unit.strip():
                units[metric] = unit.strip()
        elif number is not None:
            invalid.append(_invalid(metric, value, reading_object is not None))
    return DecodedMessage(
        device_id, readings, units=units, invalid=invalid, info=device_info(device), time=time
    )


def _invalid(metric: str, value: object, in_object: bool) -> InvalidValue:
    # Rebuilt off the hot path so the reason names the exact JSON path of the bad value.
    path = f"readings.{metric}.value" if in_object else f"readings.{metric}"
    problem = coerce_value(path, value)
    reason = problem.reason if isinstance(problem, InvalidValue) else f"{path}: not a number"
    return InvalidValue(metric, reason)


def device_info(device: dict[str, Any]) -> DeviceInfo | None:
    """The metadata a V2 `device` object carries; None when it carries none.

    Metadata never rejects a message: a field of the wrong type or an impossible coordinate
    is left out ("not said").
    """
    if not any(key in device for key in _INFO_KEYS):
        return None
    location = device.get("location")
    if not isinstance(location, dict):
        location = _NO_DEVICE
    return DeviceInfo(
        type=_text(device.get("type")),
        name=_text(device.get("name")),
        firmware=_text(device.get("firmware")),
        latitude=coordinate(_first_present(location, _LATITUDE_KEYS), 90.0),
        longitude=coordinate(_first_present(location, _LONGITUDE_KEYS), 180.0),
        elevation=coordinate(_first_present(location, _ELEVATION_KEYS), _MAX_ELEVATION_M),
    )


def _first_present(obj: dict[str, Any], keys: tuple[str, ...]) -> object:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


JSON_VERSIONS[2] = decode_v2_object


@register("v2")
def decode_v2(raw: RawMessage) -> list[DecodedMessage]:
    obj = load_json(raw)
    if isinstance(obj, dict) and "schema_version" not in obj:
        return [decode_v2_object(obj, raw)]
    # A message that declares its version goes to that version's decoder.
    return [decode_object(obj, raw)]
