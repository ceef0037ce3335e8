"""ThingSpeak feeds: entries named by channel field labels, and whole feeds.json documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.thingspeak import decode_document, field_labels, metric_names
from iotpipe.formats.values import coerce_value
from iotpipe.model import DecodedMessage, DeviceInfo, InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_thingspeak = decoder_for("thingspeak")

# payload-examples.md: public channel 9, real feeds.json.
CHANNEL_9 = b"""{"channel":{"id":9,"name":"my_house","description":"Netduino Plus connected to sensors around the house",
 "latitude":"40.44","longitude":"-79.9965","field1":"Light","field2":"Outside Temperature",
 "created_at":"2010-12-14T01:20:06Z","updated_at":"2016-02-09T20:13:45Z","last_entry_id":9680342},
 "feeds":[{"created_at":"2016-02-09T20:13:30Z","entry_id":9680341,"field1":"199","field2":"29.554140127388536"},
          {"created_at":"2016-02-09T20:13:45Z","entry_id":9680342,"field1":"193","field2":"27.855626326963908"}]}"""
# thingspeak-api.md: recorded channel 86945 (lat/lon "0.0" and a null field).
CHANNEL_86945 = b"""{"channel":{"id":86945,"name":"py thingspeak","description":"Python thingspeak testing",
  "latitude":"0.0","longitude":"0.0","field1":"cpu_pc","field2":"mem_avail_mb",
  "created_at":"2016-02-09T20:22:23Z","updated_at":"2017-02-11T21:40:41Z","last_entry_id":16},
 "feeds":[{"created_at":"2016-02-09T20:25:53Z","entry_id":1,"field1":"9.2","field2":"1000"},
          {"created_at":"2016-02-09T20:30:16Z","entry_id":2,"field1":"25.0","field2":"58.9"},
          {"created_at":"2017-02-11T19:48:30Z","entry_id":3,"field1":"1","field2":null}]}"""
# thingspeak-api.md: feeds/last.json with a timezone offset.
LAST_ENTRY = b'{"created_at":"2014-02-26T12:42:49-05:00","entry_id":6060624,"field1":"188","field2":"25.902335456475583"}'
LABELS_9 = ("Light", "Outside Temperature", "", "", "", "", "", "")


def entry(
    obj: dict[str, Any] | bytes,
    header: tuple[str, ...] | None = LABELS_9,
    device_id: str | None = "thingspeak-9",
) -> list[DecodedMessage]:
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return decode_thingspeak(raw_message(payload, header=header, device_id=device_id))


def test_channel_9_document_decodes_entries_with_labelled_metrics() -> None:
    messages = decode_document(orjson.loads(CHANNEL_9), raw_message(b""))
    assert readings_of(messages) == [
        ("thingspeak-9", "light", 1_455_048_810_000_000, 199.0),
        ("thingspeak-9", "outside_temperature", 1_455_048_810_000_000, 29.554140127388536),
        ("thingspeak-9", "light", 1_455_048_825_000_000, 193.0),
        ("thingspeak-9", "outside_temperature", 1_455_048_825_000_000, 27.855626326963908),
    ]


def test_channel_metadata_becomes_device_info() -> None:
    [first, _] = decode_document(orjson.loads(CHANNEL_9), raw_message(b""))
    assert first.info == DeviceInfo(
        name="my_house",
        latitude=40.44,
        longitude=-79.9965,
        attributes={
            "description": "Netduino Plus connected to sensors around the house",
            "field_labels": {"field1": "Light", "field2": "Outside Temperature"},
        },
    )


def test_zero_zero_location_is_thingspeaks_no_location_and_null_fields_are_missing() -> None:
    messages = decode_document(orjson.loads(CHANNEL_86945), raw_message(b""))
    assert messages[0].info is not None
    assert (messages[0].info.latitude, messages[0].info.longitude) == (None, None)
    assert messages[2].readings == [("cpu_pc", 1_486_842_510_000_000, 1.0)]
    assert messages[2].invalid == []


def test_channel_tags_are_kept_by_name() -> None:
    doc: dict[str, Any] = {
        "channel": {"id": 1, "tags": [{"id": 3, "name": "weather"}, "outdoor", 5]},
        "feeds": [],
    }
    assert decode_document(doc, raw_message(b"")) == []
    doc["feeds"] = [{"field1": "1"}]
    [message] = decode_document(doc, raw_message(b""))
    assert message.info is not None and message.info.attributes == {
        "tags": ["weather", "outdoor"],
        "field_labels": {},
    }


def test_json_dispatch_hands_a_feeds_document_to_thingspeak() -> None:
    messages = decoder_for("json")(raw_message(CHANNEL_9))
    assert len(messages) == 2 and messages[0].device_id == "thingspeak-9"


def test_single_entry_uses_header_labels_and_source_device() -> None:
    [message] = entry(LAST_ENTRY)
    assert message.device_id == "thingspeak-9"
    assert message.readings == [
        ("light", 1_393_436_569_000_000, 188.0),
        ("outside_temperature", 1_393_436_569_000_000, 25.902335456475583),
    ]


def test_unnamed_fields_are_called_fieldn() -> None:
    [message] = entry({"field1": "1", "field3": "3"}, header=("Light",))
    assert [metric for metric, _, _ in message.readings] == ["light", "field3"]
    [message] = entry({"field2": "2"}, header=None)
    assert message.readings == [("field2", RECEIVED_AT, 2.0)]


def test_labels_that_slug_alike_stay_separate_series() -> None:
    assert metric_names(("Temp", "temp", "%", "% ")) == (
        "temp",
        "field2",
        "value",
        "field4",
        *[f"field{n}" for n in range(5, 9)],
    )


def test_entry_values_empty_null_or_garbage() -> None:
    [message] = entry(
        {"created_at": "2016-02-09T20:13:30Z", "field1": "", "field2": "oops", "status": "rebooted"}
    )
    assert message.readings == []
    assert message.invalid == [
        InvalidValue("outside_temperature", "outside_temperature: 'oops' is not a number")
    ]


def test_entry_location_is_the_devices_position() -> None:
    [message] = entry({"field1": "1", "latitude": "51.5", "longitude": "-0.12", "elevation": "35"})
    assert message.info == DeviceInfo(latitude=51.5, longitude=-0.12, elevation=35.0)
    [message] = entry({"field1": "1", "latitude": None, "longitude": None, "elevation": None})
    assert message.info is None


def test_field_labels_are_eight_with_blanks_for_unnamed() -> None:
    assert field_labels({"field1": " Light ", "field3": "Humidity", "field4": 7}) == (
        "Light",
        "",
        "Humidity",
        "",
        "",
        "",
        "",
        "",
    )


def test_a_bad_created_at_rejects_the_whole_document_naming_the_entry() -> None:
    doc = orjson.loads(CHANNEL_9)
    doc["feeds"][1]["created_at"] = "yesterday"
    with pytest.raises(
        DecodeError, match=r"^feeds\[1\]: created_at 'yesterday' is not a valid ISO 8601 time$"
    ):
        decode_document(doc, raw_message(b""))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"channel": [], "feeds": []}, r"^channel must be an object, got list$"),
        ({"channel": {"id": 1}, "feeds": {}}, r"^feeds must be an array, got dict$"),
        ({"channel": {}, "feeds": []}, r"^channel.id missing$"),
        ({"channel": {"id": True}, "feeds": []}, r"^channel.id True is not an integer$"),
        ({"channel": {"id": " "}, "feeds": []}, r"^channel.id is empty$"),
        (
            {"channel": {"id": 1}, "feeds": [[1]]},
            r"^feeds\[0\]: a ThingSpeak feed entry must be a JSON object, got list$",
        ),
    ],
)
def test_unusable_documents_are_rejected(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_document(doc, raw_message(b""))


def test_document_without_channel_id_uses_the_source_device() -> None:
    [message] = decode_document(
        {"channel": {}, "feeds": [{"field1": "1"}]}, raw_message(b"", device_id="ts-x")
    )
    assert message.device_id == "ts-x"


@pytest.mark.parametrize(
    ("payload", "device_id", "message"),
    [
        (b'{"field1": "1"}', None, r"^device_id missing$"),
        (b"[1]", "d", r"^a ThingSpeak feed entry must be a JSON object, got list$"),
        (b'{"created_at": 5.5e30}', "d", r"^created_at 5.5e\+30 is out of range"),
        (b"-1", "d", r"^a ThingSpeak feed entry must be a JSON object, got int$"),
    ],
)
def test_unusable_entries_are_rejected(payload: bytes, device_id: str | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        entry(payload, device_id=device_id)


_labels = st.lists(st.text(max_size=20), max_size=8).map(tuple)
_field_values = st.one_of(
    st.none(), st.floats(allow_nan=False, allow_infinity=False).map(repr), st.text(max_size=8)
)


@settings(max_examples=200, deadline=None)
@given(labels=_labels, values=st.lists(_field_values, min_size=8, max_size=8))
def test_generated_entries_map_field_n_to_its_label_metric(
    labels: tuple[str, ...], values: list[str | None]
) -> None:
    names = metric_names(labels)
    assert len(set(names)) == 8
    [message] = entry({f"field{n}": value for n, value in enumerate(values, start=1)}, header=labels)
    expected = [(name, coerce_value(name, value)) for name, value in zip(names, values, strict=True)]
    assert message.readings == [(name, RECEIVED_AT, v) for name, v in expected if isinstance(v, float)]
    assert [i.metric for i in message.invalid] == [
        name for name, v in expected if isinstance(v, InvalidValue)
    ]
