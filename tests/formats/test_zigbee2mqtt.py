"""Zigbee2MQTT device state: flat JSON, numbers sometimes as strings, the device from the topic."""

from __future__ import annotations

import pytest

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.model import DeviceInfo, datetime_to_micros

from .support import RECEIVED_AT, assert_well_formed, raw_message, readings_of

decode_z2m = decoder_for("zigbee2mqtt")

# payload-examples.md: the Zigbee2MQTT docs' Xiaomi WSDCGQ01LM example, and a z2m 1.6.0 log line.
DOCS_EXAMPLE = '{"temperature": 27.34, "humidity": 44.72}'
LOG_LINE = (
    '{"temperature":22.75,"linkquality":97,"humidity":55.43,"pressure":1000.6,"battery":86,"voltage":2995}'
)
OLD_VERSION = '{"temperature":21.3,"battery":"100.00","linkquality":"81"}'


def test_docs_example_gives_one_reading_per_key_at_receipt() -> None:
    messages = decode_z2m(raw_message(DOCS_EXAMPLE, device_id="living_room"))
    assert readings_of(messages) == [
        ("living_room", "temperature", RECEIVED_AT, 27.34),
        ("living_room", "humidity", RECEIVED_AT, 44.72),
    ]
    assert_well_formed(messages)


def test_real_log_line_keeps_every_numeric_key() -> None:
    messages = decode_z2m(raw_message(LOG_LINE, device_id="0x00158d00036c1821"))
    assert {m: v for _, m, _, v in readings_of(messages)} == {
        "temperature": 22.75,
        "linkquality": 97.0,
        "humidity": 55.43,
        "pressure": 1000.6,
        "battery": 86.0,
        "voltage": 2995.0,
    }


def test_numbers_sent_as_strings_are_numbers() -> None:
    messages = decode_z2m(raw_message(OLD_VERSION, device_id="d"))
    assert {m: v for _, m, _, v in readings_of(messages)} == {
        "temperature": 21.3,
        "battery": 100.0,
        "linkquality": 81.0,
    }


def test_states_are_one_and_zero_and_labels_are_not_readings() -> None:
    payload = '{"state":"ON","contact":false,"action":"single","color_mode":"xy","color":{"x":0.3,"y":0.3}}'
    messages = decode_z2m(raw_message(payload, device_id="d"))
    assert {m: v for _, m, _, v in readings_of(messages)} == {"state": 1.0, "contact": 0.0}
    assert messages[0].invalid == []


def test_last_seen_is_the_reading_time() -> None:
    payload = '{"temperature":20.5,"last_seen":"2023-03-04T10:51:41.542Z"}'
    [message] = decode_z2m(raw_message(payload, device_id="d"))
    from datetime import datetime

    at = datetime_to_micros(datetime.fromisoformat("2023-03-04T10:51:41.542+00:00"))
    assert message.readings == [("temperature", at, 20.5)]


def test_device_information_fills_type_and_firmware() -> None:
    payload = (
        '{"temperature":20.5,"device":{"ieeeAddr":"0x00158d00036c1821","friendlyName":"kitchen",'
        '"model":"WSDCGQ11LM","softwareBuildID":"3000-0001"}}'
    )
    [message] = decode_z2m(raw_message(payload, device_id="kitchen"))
    assert message.info == DeviceInfo(type="WSDCGQ11LM", name="kitchen", firmware="3000-0001")
    assert [m for m, _, _ in message.readings] == ["temperature"]


@pytest.mark.parametrize(
    ("payload", "device_id", "reason"),
    [
        (DOCS_EXAMPLE, None, "device id (from the topic) missing"),
        ('"online"', "d", "expected a JSON object (Zigbee2MQTT device state), got str"),
        ('{"temperature":1,"last_seen":"soon"}', "d", "last_seen 'soon' is not a valid ISO 8601 time"),
        ("offline", "d", "payload is not valid JSON"),
    ],
)
def test_rejections_say_what_is_wrong(payload: str, device_id: str | None, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_z2m(raw_message(payload, device_id=device_id))
    assert caught.value.reason.startswith(reason)
