"""The JSON dispatcher and the format sniffer: which decoder a payload reaches."""

from __future__ import annotations

import orjson
import pytest

from iotpipe.errors import DecodeError
from iotpipe.formats import decode, decoder_for, format_names, sniff_format
from iotpipe.formats.json import JSON_VERSIONS, detect_version

from .support import raw_message, readings_of

V2_EXAMPLE = {
    "schema_version": 2,
    "device": {"id": "pump-7", "type": "pump", "firmware": "1.4.0", "location": {"lat": 42.79, "lon": -86.1}},
    "ts": 1763805600123,
    "readings": {"temperature": 21.5, "pressure": {"value": 3.2, "unit": "bar"}},
}


def test_every_documented_format_is_registered() -> None:
    assert set(format_names()) >= {"json", "v1", "v2", "senml", "lineproto", "csv", "thingspeak"}
    assert set(JSON_VERSIONS) >= {1, 2}


def test_unknown_format_name_lists_the_known_ones() -> None:
    with pytest.raises(
        DecodeError,
        match=r"unknown format 'xml'; known formats: csv, csv-pipe, csv-semicolon, csv-tab, json, lineproto",
    ):
        decoder_for("xml")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"device_id": "a"}', "json"),
        (b"  \n[1]", "json"),
        (b"cpu,host=a usage=1", "lineproto"),
    ],
)
def test_sniffing_tells_json_from_line_protocol(payload: bytes, expected: str) -> None:
    assert sniff_format(payload) == expected


def test_sniffing_an_empty_payload_is_an_error() -> None:
    with pytest.raises(DecodeError, match="payload is empty"):
        sniff_format(b" \n ")


def test_v1_is_the_default_shape() -> None:
    messages = decode(
        raw_message(b'{"device_id": "pump-7", "timestamp": "2026-11-22T10:00:00Z", "humidity": 40}')
    )
    assert readings_of(messages) == [("pump-7", "humidity", 1_795_341_600_000_000, 40.0)]


def test_v2_is_recognised_by_its_device_and_readings_objects() -> None:
    obj = dict(V2_EXAMPLE)
    del obj["schema_version"]
    assert detect_version(obj) == 2
    messages = decode(raw_message(orjson.dumps(obj)))
    assert readings_of(messages) == [
        ("pump-7", "temperature", 1_763_805_600_123_000, 21.5),
        ("pump-7", "pressure", 1_763_805_600_123_000, 3.2),
    ]


def test_declared_schema_version_wins_over_shape() -> None:
    messages = decode(raw_message(orjson.dumps(V2_EXAMPLE)))
    assert messages[0].units == {"pressure": "bar"}


def test_unsupported_schema_version_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(DecodeError, match=r"schema_version 9 is not supported \(known: 1, 2\)"):
        decode(raw_message(b'{"schema_version": 9, "device_id": "a"}'))


@pytest.mark.parametrize("version", ['"2"', "2.0", "true"])
def test_non_integer_schema_version_is_rejected(version: str) -> None:
    with pytest.raises(DecodeError, match=r"schema_version .* is not an integer"):
        decode(raw_message(f'{{"schema_version": {version}}}'))


def test_json_array_of_senml_records_goes_to_senml() -> None:
    messages = decode(raw_message(b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'))
    assert messages[0].device_id == "urn:dev:ow:10e2073a01080063"


@pytest.mark.parametrize("payload", [b"[1, 2]", b'[{"device_id": "a", "v": 1}]'])
def test_json_array_that_is_not_senml_is_rejected(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="a JSON array must be a SenML pack"):
        decode(raw_message(payload))


def test_an_empty_json_array_is_named_as_such() -> None:
    with pytest.raises(DecodeError, match="the JSON array is empty: nothing to store"):
        decode(raw_message(b"[]"))


def test_json_that_is_not_utf8_says_where() -> None:
    with pytest.raises(DecodeError, match=r"payload is not valid UTF-8 \(bad byte at offset 28\)"):
        decode(raw_message(b'{"device_id": "a", "name": "\xff", "t": 1}'))


def test_thingspeak_document_goes_to_thingspeak() -> None:
    doc = {
        "channel": {"id": 9, "field1": "Light"},
        "feeds": [{"created_at": "2016-02-09T20:13:30Z", "field1": "199"}],
    }
    messages = decode(raw_message(orjson.dumps(doc)))
    assert readings_of(messages) == [("thingspeak-9", "light", 1_455_048_810_000_000, 199.0)]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "payload is not valid JSON"),
        (b'{"a": NaN', "payload is not valid JSON"),  # NaN itself is an invalid value: test_files.py
        (b"\xff\xfe{}", "payload is not valid UTF-8"),  # UTF-16
        (b'"just a string"', "expected a JSON object, got a string"),
        (b"42", "expected a JSON object, got a number"),
        (b"null", "expected a JSON object, got null"),
    ],
)
def test_json_that_is_not_an_object_or_array_is_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(raw_message(payload, format="json"))
