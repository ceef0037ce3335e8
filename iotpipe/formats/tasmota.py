"""Tasmota telemetry (`tele/<topic>/SENSOR`, also STATE): nested sensor objects and a zone-less `Time`.

`{"Time": "2018-03-02T18:25:03", "AM2301": {"Temperature": 22.6, "Humidity": 32.4}, "TempUnit": "C"}`
gives `am2301_temperature` and `am2301_humidity` of the device named by the topic. Metric
names are the path of keys, slugged (`ENERGY.Current[2]` -> `energy_current_2`). `Time`
has no zone: like every zone-less time it is read as UTC (Tasmota sends the device's
local time, so set `Timezone 0` on devices). Numbers, numeric strings, booleans and
ON/OFF are readings; other text (MAC addresses, ids, `Uptime`) is not.
"""

from __future__ import annotations

from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.json import load_json
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.value import add_state
from iotpipe.formats.values import check_device_id, slug_metric
from iotpipe.model import DecodedMessage, RawMessage

# Top-level keys that say how to read the others; never readings.
_UNIT_KEYS = {"TempUnit": ("Temperature", "DewPoint"), "PressureUnit": ("Pressure", "SeaPressure")}
_NOT_READINGS = frozenset({"Time", "TempUnit", "PressureUnit", "SpeedUnit"})
_MAX_DEPTH = 4  # sensor objects nest two or three levels; deeper is not telemetry


@register("tasmota")
def decode_tasmota(raw: RawMessage) -> list[DecodedMessage]:
    obj = load_json(raw)
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object (Tasmota SENSOR/STATE), got {type(obj).__name__}")
    device_id = check_device_id(raw.device_id, "device id (from the topic)")
    stamp = obj.get("Time")
    time = raw.received_at if stamp is None else parse_timestamp(stamp, "Time")
    units = {
        field: unit
        for key, fields in _UNIT_KEYS.items()
        if isinstance(unit := obj.get(key), str) and unit
        for field in fields
    }
    message = DecodedMessage(device_id, [])
    for key, value in obj.items():
        if key not in _NOT_READINGS:
            _add(message, (key,), value, time, units)
    return [message]


def _add(
    message: DecodedMessage, path: tuple[str, ...], value: Any, time: int, units: dict[str, str]
) -> None:
    """Add the readings under one key, descending into sensor objects and channel arrays."""
    if isinstance(value, dict | list):
        if len(path) >= _MAX_DEPTH:
            return
        items = value.items() if isinstance(value, dict) else ((str(i), v) for i, v in enumerate(value, 1))
        for key, inner in items:
            _add(message, (*path, key), inner, time, units)
        return
    metric = slug_metric(" ".join(path))
    if add_state(message, metric, time, value):
        unit = units.get(path[-1])
        if unit is not None:
            message.units[metric] = unit
