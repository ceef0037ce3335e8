"""Tasmota SENSOR/STATE payloads: nested sensors flattened, zone-less Time read as UTC."""

from __future__ import annotations

import pytest

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.model import datetime_to_micros

from .support import RECEIVED_AT, assert_well_formed, raw_message, readings_of

decode_tasmota = decoder_for("tasmota")

# payload-examples.md: Sonoff TH16 + AM2301 (GitHub robertklep/name.klep.sonoff#6).
TH16_SENSOR = '{"Time":"2018-03-02T18:25:03","AM2301":{"Temperature":22.6,"Humidity":32.4},"TempUnit":"C"}'
TH16_STATE = (
    '{"Time":"2018-03-02T18:25:02","Uptime":"0T00:00:19","Vcc":3.151,"POWER":"OFF",'
    '"Wifi":{"AP":1,"SSId":"TGV","RSSI":66,"APMac":"60:A4:4C:DC:F8:78"}}'
)
# payload-examples.md: BLE gateway (miller45/jiotsensorhub README).
BLE_GATEWAY = (
    '{"Time":"2022-10-28T13:44:23","ATC04b555":{"mac":"a4c13804b555","Temperature":25.1,'
    '"Humidity":56.3,"DewPoint":15.8,"Btn":1,"Battery":54,"RSSI":-43}}'
)


def _utc(text: str) -> int:
    from datetime import datetime

    return datetime_to_micros(datetime.fromisoformat(text))


def test_th16_sensor_gives_nested_metrics_at_its_zoneless_time_read_as_utc() -> None:
    messages = decode_tasmota(raw_message(TH16_SENSOR, device_id="TH16"))
    at = _utc("2018-03-02T18:25:03+00:00")
    assert readings_of(messages) == [
        ("TH16", "am2301_temperature", at, 22.6),
        ("TH16", "am2301_humidity", at, 32.4),
    ]
    assert messages[0].units == {"am2301_temperature": "C"}
    assert_well_formed(messages)


def test_state_payload_keeps_numbers_and_switch_state_but_not_labels() -> None:
    messages = decode_tasmota(raw_message(TH16_STATE, device_id="TH16"))
    metrics = {metric: value for _, metric, _, value in readings_of(messages)}
    # Uptime "0T00:00:19", SSId and APMac are labels, not readings; POWER OFF is 0.
    assert metrics == {"vcc": 3.151, "power": 0.0, "wifi_ap": 1.0, "wifi_rssi": 66.0}
    assert messages[0].invalid == []


def test_ble_gateway_sensor_skips_its_mac_address() -> None:
    messages = decode_tasmota(raw_message(BLE_GATEWAY, device_id="sonoff-13DC54"))
    metrics = [metric for _, metric, _, _ in readings_of(messages)]
    assert metrics == [
        "atc04b555_temperature",
        "atc04b555_humidity",
        "atc04b555_dewpoint",
        "atc04b555_btn",
        "atc04b555_battery",
        "atc04b555_rssi",
    ]


def test_multi_channel_arrays_are_numbered_from_one() -> None:
    payload = '{"Time":"2024-01-05T10:00:00","ENERGY":{"Total":12.5,"Current":[0.1,0.25]}}'
    metrics = {m: v for _, m, _, v in readings_of(decode_tasmota(raw_message(payload, device_id="plug")))}
    assert metrics == {"energy_total": 12.5, "energy_current_1": 0.1, "energy_current_2": 0.25}


def test_without_time_the_reading_is_stamped_at_receipt() -> None:
    messages = decode_tasmota(raw_message('{"DS18B20":{"Temperature":19.5}}', device_id="d"))
    assert readings_of(messages) == [("d", "ds18b20_temperature", RECEIVED_AT, 19.5)]


def test_a_key_too_long_for_a_metric_name_is_invalid_and_the_rest_kept() -> None:
    payload = '{"Time":"2024-01-05T10:00:00","S":{"Temperature":21.0,"' + "x" * 300 + '":1}}'
    [message] = decode_tasmota(raw_message(payload, device_id="d"))
    assert [m for m, _, _ in message.readings] == ["s_temperature"]
    assert [bad.reason for bad in message.invalid] == ["key: metric name is longer than 200 characters"]


@pytest.mark.parametrize(
    ("payload", "device_id", "reason"),
    [
        (TH16_SENSOR, None, "device id (from the topic) missing"),
        ("[1, 2]", "d", "expected a JSON object (Tasmota SENSOR/STATE), got list"),
        ('{"Time":"yesterday","S":{"T":1}}', "d", "Time 'yesterday' is not a valid ISO 8601 time"),
        ('{"Time":"2018-03-02T18:25:03"', "d", "payload is not valid JSON"),
    ],
)
def test_rejections_say_what_is_wrong(payload: str, device_id: str | None, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_tasmota(raw_message(payload, device_id=device_id))
    assert caught.value.reason.startswith(reason)
