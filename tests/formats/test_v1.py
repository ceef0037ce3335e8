"""V1 flat JSON: every numeric top-level field that is not reserved is a metric."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.v1 import RESERVED_KEYS
from iotpipe.model import InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_v1 = decoder_for("v1")


def test_product_example_decodes_to_two_readings() -> None:
    payload = (
        b'{"device_id": "pump-7", "timestamp": "2026-11-22T10:00:00Z", "temperature": 21.5, "humidity": 40}'
    )
    t = 1_795_341_600_000_000
    assert readings_of(decode_v1(raw_message(payload))) == [
        ("pump-7", "temperature", t, 21.5),
        ("pump-7", "humidity", t, 40.0),
    ]


def test_non_numeric_metric_is_invalid_and_the_rest_is_kept() -> None:
    [message] = decode_v1(raw_message(b'{"device_id": "a", "temperature": 21.5, "status": "ok"}'))
    assert message.readings == [("temperature", RECEIVED_AT, 21.5)]
    assert message.invalid == [InvalidValue("status", "status: 'ok' is not a number")]


def test_null_and_empty_values_are_missing_not_invalid() -> None:
    [message] = decode_v1(raw_message(b'{"device_id": "a", "x": null, "y": "", "z": 1}'))
    assert message.readings == [("z", RECEIVED_AT, 1.0)]
    assert message.invalid == []


def test_booleans_and_numeric_strings_are_numbers() -> None:
    [message] = decode_v1(raw_message(b'{"device_id": "a", "door": true, "battery": "100.00"}'))
    assert message.readings == [("door", RECEIVED_AT, 1.0), ("battery", RECEIVED_AT, 100.0)]


def test_null_device_id_falls_back_to_the_source_device() -> None:
    [message] = decode_v1(raw_message(b'{"device_id": null, "x": 1}', device_id="from-topic"))
    assert message.device_id == "from-topic"


def test_missing_device_id_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"^device_id missing$"):
        decode_v1(raw_message(b'{"x": 1}'))


def test_bad_timestamp_rejects_the_message() -> None:
    with pytest.raises(DecodeError, match=r"^timestamp 'soon' is not a valid ISO 8601 time$"):
        decode_v1(raw_message(b'{"device_id": "a", "timestamp": "soon", "x": 1}'))


def test_empty_key_is_an_invalid_metric_not_a_reading() -> None:
    [message] = decode_v1(raw_message(b'{"device_id": "a", "": 1, "x": 2}'))
    assert message.readings == [("x", RECEIVED_AT, 2.0)]
    assert message.invalid == [InvalidValue("", "top-level key: metric name '' is empty")]


# Keys are stripped (test_files.py checks padded ones): these come without padding.
_metric_names = st.text(min_size=1, max_size=30).filter(
    lambda k: k not in RESERVED_KEYS and k.strip() == k != ""
)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    device_id=st.text(min_size=1, max_size=50).filter(lambda d: d.strip() == d and d != ""),
    metrics=st.dictionaries(_metric_names, _finite, max_size=10),
    millis=st.integers(min_value=100_000_000_000, max_value=9_999_999_999_999),
)
def test_generated_v1_object_decodes_to_exactly_its_metrics(
    device_id: str, metrics: dict[str, float], millis: int
) -> None:
    payload = orjson.dumps({"device_id": device_id, "timestamp": millis, **metrics})
    [message] = decode_v1(raw_message(payload))
    assert message.device_id == device_id
    assert message.readings == [(key, millis * 1000, value) for key, value in metrics.items()]
    assert message.invalid == []
