"""Zigbee2MQTT device state (`zigbee2mqtt/<friendly name>`): flat JSON, numbers sometimes as strings.

`{"temperature": 22.75, "linkquality": 97, "humidity": 55.43, "battery": "100.00"}` gives one
reading per numeric key for the device named by the topic. Numeric strings, booleans and
ON/OFF states are readings; other text (`action`, `color_mode`) and nested objects are
not. Without a `last_seen` (a Zigbee2MQTT option: ISO 8601 or epoch ms) the time is the
time of receipt. With `include_device_information`, the `device` object fills the
device's type and firmware.
"""

from __future__ import annotations

from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.json import load_json
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.value import add_state
from iotpipe.formats.values import check_device_id
from iotpipe.model import DecodedMessage, DeviceInfo, RawMessage

_TIME_KEY = "last_seen"


@register("zigbee2mqtt")
def decode_zigbee2mqtt(raw: RawMessage) -> list[DecodedMessage]:
    obj = load_json(raw)
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object (Zigbee2MQTT device state), got {type(obj).__name__}")
    device_id = check_device_id(raw.device_id, "device id (from the topic)")
    seen = obj.get(_TIME_KEY)
    time = raw.received_at if seen is None else parse_timestamp(seen, _TIME_KEY)
    message = DecodedMessage(device_id, [], info=_device_info(obj.get("device")))
    for key, value in obj.items():
        if key == _TIME_KEY or isinstance(value, dict | list):
            continue
        add_state(message, key, time, value)
    return [message]


def _device_info(device: Any) -> DeviceInfo | None:
    """What `include_device_information` adds: model, firmware build, friendly name."""
    if not isinstance(device, dict):
        return None

    def text(key: str) -> str | None:
        value = device.get(key)
        return value if isinstance(value, str) and value else None

    info = DeviceInfo(type=text("model"), name=text("friendlyName"), firmware=text("softwareBuildID"))
    return None if info == DeviceInfo() else info
