"""V2 JSON: a device object, a timestamp and a readings object with optional units."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.v2 import decode_v2_object
from iotpipe.model import DeviceInfo, InvalidValue

from .support import RECEIVED_AT, raw_message

decode_v2 = decoder_for("v2")

PRODUCT_EXAMPLE = (
    b'{"schema_version": 2, "device": {"id": "pump-7", "type": "pump", "firmware": "1.4.0", '
    b'"location": {"lat": 42.79, "lon": -86.1}}, "ts": 1763805600123, '
    b'"readings": {"temperature": 21.5, "pressure": {"value": 3.2, "unit": "bar"}}}'
)
T = 1_763_805_600_123_000


def v2(**fields: Any) -> bytes:
    obj: dict[str, Any] = {"schema_version": 2, "device": {"id": "pump-7"}, "readings": {}}
    obj.update(fields)
    return orjson.dumps(obj)


def test_product_example_decodes_readings_units_and_device_info() -> None:
    [message] = decode_v2(raw_message(PRODUCT_EXAMPLE))
    assert message.device_id == "pump-7"
    assert message.readings == [("temperature", T, 21.5), ("pressure", T, 3.2)]
    assert message.units == {"pressure": "bar"}
    assert message.invalid == []
    assert message.info == DeviceInfo(type="pump", firmware="1.4.0", latitude=42.79, longitude=-86.1)


def test_reading_object_without_value_is_invalid_and_the_rest_is_kept() -> None:
    [message] = decode_v2(raw_message(v2(readings={"a": 1, "b": {"unit": "bar"}})))
    assert message.readings == [("a", RECEIVED_AT, 1.0)]
    assert message.invalid == [InvalidValue("b", "readings.b: object has no 'value'")]


def test_non_numeric_reading_value_names_its_json_path() -> None:
    [message] = decode_v2(raw_message(v2(readings={"pressure": {"value": "x"}, "temperature": "warm"})))
    assert message.readings == []
    assert message.invalid == [
        InvalidValue("pressure", "readings.pressure.value: 'x' is not a number"),
        InvalidValue("temperature", "readings.temperature: 'warm' is not a number"),
    ]


def test_list_reading_is_invalid() -> None:
    [message] = decode_v2(raw_message(v2(readings={"a": [1, 2]})))
    assert message.invalid == [InvalidValue("a", "readings.a: list is not a number")]


def test_null_reading_and_null_value_are_missing() -> None:
    [message] = decode_v2(raw_message(v2(readings={"a": None, "b": {"value": None, "unit": "V"}, "c": ""})))
    assert message.readings == [] and message.invalid == [] and message.units == {}


def test_unit_is_kept_only_for_a_usable_reading_and_only_if_text() -> None:
    [message] = decode_v2(
        raw_message(v2(readings={"a": {"value": 1, "unit": 5}, "b": {"value": 2, "unit": "V"}}))
    )
    assert message.units == {"b": "V"}


@pytest.mark.parametrize(
    "ts", ["2025-11-22T10:00:00.123Z", 1763805600.123, "1763805600123", 1763805600123000]
)
def test_ts_takes_any_accepted_timestamp_shape(ts: object) -> None:
    [message] = decode_v2(raw_message(v2(ts=ts, readings={"a": 1})))
    assert message.readings == [("a", T, 1.0)]


def test_missing_ts_means_receipt_time() -> None:
    [message] = decode_v2(raw_message(v2(readings={"a": 1})))
    assert message.readings == [("a", RECEIVED_AT, 1.0)]


def test_device_id_falls_back_to_the_source_device() -> None:
    [message] = decode_v2(raw_message(b'{"readings": {"a": 1}}', device_id="from-topic"))
    assert message.device_id == "from-topic"
    [message] = decode_v2(raw_message(v2(device={"type": "pump"}, readings={"a": 1}), device_id="t"))
    assert message.device_id == "t" and message.info == DeviceInfo(type="pump")


def test_location_accepts_alternative_spellings_and_drops_impossible_values() -> None:
    device = {"id": "d", "location": {"latitude": "42.5", "lng": -86, "alt": 190}}
    [message] = decode_v2(raw_message(v2(device=device)))
    assert message.info == DeviceInfo(latitude=42.5, longitude=-86.0, elevation=190.0)
    device = {"id": "d", "name": "Pump", "location": {"lat": 91, "lon": "west", "elevation": True}}
    [message] = decode_v2(raw_message(v2(device=device)))
    assert message.info == DeviceInfo(name="Pump")


def test_device_without_metadata_has_no_info() -> None:
    [message] = decode_v2(raw_message(v2(readings={"a": 1})))
    assert message.info is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (v2(device={"type": "pump"}), "^device.id missing$"),
        (v2(device={"id": ""}), "^device.id is empty$"),
        (v2(device={"id": ["a"]}), r"^device.id \['a'\] is not a string$"),
        (v2(device="pump-7"), "^device must be an object, got str$"),
        (b'{"schema_version": 2, "device": {"id": "a"}}', "^readings missing$"),
        (v2(readings=[1, 2]), "^readings must be an object, got list$"),
        (v2(ts="later"), "^ts 'later' is not a valid ISO 8601 time$"),
        (v2(ts=True), "^ts True is a boolean, not a timestamp$"),
        (b"[]", "^expected a JSON object, got an array$"),
        (b"{", "^payload is not valid JSON"),
    ],
)
def test_whole_message_problems_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_v2(raw_message(payload))


def test_v2_decoder_passes_a_v1_declared_message_to_v1() -> None:
    [message] = decode_v2(raw_message(b'{"schema_version": 1, "device_id": "a", "x": 1}'))
    assert message.readings == [("x", RECEIVED_AT, 1.0)]


def test_object_decoder_is_usable_directly() -> None:
    message = decode_v2_object({"device": {"id": "a"}, "readings": {"x": 2}}, raw_message(b""))
    assert message.readings == [("x", RECEIVED_AT, 2.0)]


# Names and units are stripped (test_files.py checks padded ones): these come without padding.
_names = st.text(min_size=1, max_size=30).filter(lambda k: k.strip() == k != "")
_finite = st.floats(allow_nan=False, allow_infinity=False)
_units = st.one_of(st.none(), st.text(min_size=1, max_size=5).filter(lambda u: u.strip() == u))


@settings(max_examples=200, deadline=None)
@given(readings=st.dictionaries(_names, st.tuples(_finite, _units), max_size=10))
def test_generated_v2_readings_decode_to_exactly_those_values_and_units(
    readings: dict[str, tuple[float, str | None]],
) -> None:
    body = {
        name: value if unit is None else {"value": value, "unit": unit}
        for name, (value, unit) in readings.items()
    }
    [message] = decode_v2(raw_message(v2(ts=1763805600123, readings=body)))
    assert message.readings == [(name, T, value) for name, (value, _) in readings.items()]
    assert message.units == {name: unit for name, (_, unit) in readings.items() if unit is not None}
