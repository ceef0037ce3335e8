"""SenML (RFC 8428): base fields, name resolution, relative times, value kinds, grouping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.senml import decode_records, is_senml_record
from iotpipe.model import InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_senml = decoder_for("senml")

# RFC 8428 §5.1.1 and §5.1.2, as quoted in payload-examples.md.
RFC_SINGLE = b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'
RFC_MULTIPLE = b"""[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
 {"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3},{"n":"current","t":-3,"v":1.4},
 {"n":"current","t":-2,"v":1.5},{"n":"current","t":-1,"v":1.6},{"n":"current","v":1.7}]"""
IPSO = b'[{"bn":"2001:db8::2/3311/0/","n":"5850","vb":true},{"n":"5851","v":42},{"n":"5750","vs":"Ceiling light"}]'
BT = 1_276_020_076_001_000  # µs


def senml(*records: dict[str, Any], device_id: str | None = None) -> list[Any]:
    return decode_senml(raw_message(orjson.dumps(list(records)), device_id=device_id))


def test_rfc_single_datapoint_is_the_device_urns_only_value() -> None:
    [message] = decode_senml(raw_message(RFC_SINGLE))
    assert message.device_id == "urn:dev:ow:10e2073a01080063"
    assert message.readings == [("value", RECEIVED_AT, 23.1)]
    assert message.units == {"value": "Cel"}


def test_rfc_multiple_datapoints_decode_exactly() -> None:
    [message] = decode_senml(raw_message(RFC_MULTIPLE))
    assert message.device_id == "urn:dev:ow:10e2073a01080063"
    assert message.readings == [
        ("voltage", BT, 120.1),
        ("current", BT - 5_000_000, 1.2),
        ("current", BT - 4_000_000, 1.3),
        ("current", BT - 3_000_000, 1.4),
        ("current", BT - 2_000_000, 1.5),
        ("current", BT - 1_000_000, 1.6),
        ("current", BT, 1.7),
    ]
    # `u` overrides the base unit for voltage; the currents take `bu`.
    assert message.units == {"voltage": "V", "current": "A"}
    assert message.invalid == []


def test_ipso_pack_booleans_count_and_strings_are_invalid() -> None:
    [message] = decode_senml(raw_message(IPSO))
    assert message.device_id == "2001:db8::2/3311/0"
    assert message.readings == [("5850", RECEIVED_AT, 1.0), ("5851", RECEIVED_AT, 42.0)]
    assert message.invalid == [InvalidValue("5750", "record 2: vs 'Ceiling light' is a string, not a number")]


def test_senml_negative_t_is_relative_to_base_time() -> None:
    [message] = senml({"bn": "d/", "bt": 1_700_000_000, "n": "x", "t": -60, "v": 1})
    assert message.readings == [("x", 1_699_999_940_000_000, 1.0)]


def test_senml_small_resolved_time_is_relative_to_receipt() -> None:
    [message] = senml({"n": "d/x", "t": -30, "v": 1}, {"n": "d/y", "t": 0, "v": 2}, {"n": "d/z", "v": 3})
    assert message.readings == [
        ("x", RECEIVED_AT - 30_000_000, 1.0),
        ("y", RECEIVED_AT, 2.0),
        ("z", RECEIVED_AT, 3.0),
    ]


def test_senml_absolute_t_without_base_time() -> None:
    [message] = senml({"n": "d/x", "t": 1_700_000_123.5, "v": 1})
    assert message.readings == [("x", 1_700_000_123_500_000, 1.0)]


def test_senml_base_value_is_added_and_base_fields_carry_over() -> None:
    [message] = senml({"bn": "d:", "bv": 100, "bu": "W", "n": "p", "v": 1.5}, {"n": "q", "v": -1})
    assert message.readings == [("p", RECEIVED_AT, 101.5), ("q", RECEIVED_AT, 99.0)]
    assert message.units == {"p": "W", "q": "W"}


def test_senml_sum_becomes_its_own_metric_with_base_sum() -> None:
    [message] = senml({"bn": "meter/", "bs": 1000, "n": "energy", "u": "W", "v": 50, "s": 12})
    assert message.readings == [("energy", RECEIVED_AT, 50.0), ("energy_sum", RECEIVED_AT, 1012.0)]
    assert message.units == {"energy": "W"}


def test_senml_name_without_base_name_splits_at_last_separator() -> None:
    [message] = senml({"n": "site/boiler:temperature", "v": 60})
    assert (message.device_id, message.readings[0][0]) == ("site/boiler", "temperature")


def test_senml_device_urn_with_measurement_keeps_the_urn_whole() -> None:
    [message] = senml({"n": "urn:dev:mac:0024befffe804ff1:temp", "v": 20})
    assert (message.device_id, message.readings[0][0]) == ("urn:dev:mac:0024befffe804ff1", "temp")


def test_senml_bare_name_uses_the_source_device() -> None:
    [message] = senml({"n": "temperature", "v": 21}, device_id="pump-7")
    assert readings_of([message]) == [("pump-7", "temperature", RECEIVED_AT, 21.0)]


def test_senml_base_name_alone_names_device_and_value() -> None:
    [message] = senml({"bn": "sensor-1/", "v": 5})
    assert readings_of([message]) == [("sensor-1", "value", RECEIVED_AT, 5.0)]


def test_senml_records_are_grouped_per_device_in_order() -> None:
    messages = senml(
        {"bn": "b/", "n": "x", "v": 1}, {"bn": "a/", "n": "x", "v": 2}, {"bn": "b/", "n": "y", "v": 3}
    )
    assert [m.device_id for m in messages] == ["b", "a"]
    assert readings_of(messages) == [
        ("b", "x", RECEIVED_AT, 1.0),
        ("b", "y", RECEIVED_AT, 3.0),
        ("a", "x", RECEIVED_AT, 2.0),
    ]


def test_senml_data_values_and_non_boolean_vb_are_invalid() -> None:
    [message] = senml(
        {"bn": "d/", "n": "blob", "vd": "aGVsbG8"}, {"n": "flag", "vb": "yes"}, {"n": "ok", "v": 1}
    )
    assert message.readings == [("ok", RECEIVED_AT, 1.0)]
    assert message.invalid == [
        InvalidValue("blob", "record 0: vd is binary data, not a number"),
        InvalidValue("flag", "record 1: vb 'yes' is not a boolean"),
    ]


def test_senml_null_values_are_missing() -> None:
    [message] = senml({"bn": "d/", "n": "a", "v": None}, {"n": "b", "vs": None}, {"n": "c", "v": 2})
    assert message.readings == [("c", RECEIVED_AT, 2.0)]
    assert message.invalid == []


def test_senml_unknown_labels_are_ignored_but_must_understand_ones_reject() -> None:
    [message] = senml({"n": "d/x", "v": 1, "vendor": "acme"})
    assert message.readings == [("x", RECEIVED_AT, 1.0)]
    with pytest.raises(DecodeError, match=r"^record 0: unsupported must-understand field 'vendor_'$"):
        senml({"n": "d/x", "v": 1, "vendor_": "acme"})


def test_senml_base_only_record_sets_bases_without_readings() -> None:
    [message] = senml({"bn": "d/", "bt": 1_700_000_000}, {"n": "x", "v": 1})
    assert message.readings == [("x", 1_700_000_000_000_000, 1.0)]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "^SenML pack is empty$"),
        ([{"n": "d/x", "v": 1}, 5], r"^record 1 is not a JSON object \(got int\)$"),
        ([{"v": 1}], r"^record 0: no name \(neither n nor bn is given\)$"),
        (
            [{"n": "temperature", "v": 1}],
            "^record 0: name 'temperature' has no device part and the message names no device$",
        ),
        ([{"n": 5, "v": 1}], "^record 0: n 5 is not a string$"),
        ([{"bn": ["d"], "n": "x", "v": 1}], r"^record 0: bn \['d'\] is not a string$"),
        ([{"n": "d/x", "t": "now", "v": 1}], "^record 0: t 'now' is not a number$"),
        ([{"bt": True, "n": "d/x", "v": 1}], "^record 0: bt True is not a number$"),
        ([{"bn": "d/", "bt": 1e12, "n": "x", "v": 1}], r"^record 0: time 1000000000000.0 s is out of range$"),
        ([{"bver": "10", "n": "d/x", "v": 1}], "^record 0: bver '10' is not a positive integer$"),
        ([{"bv": "1", "n": "d/x", "v": 1}], "^record 0: bv '1' is not a number$"),
        ([{"n": " /x", "v": 1}], "^record 0: device is empty$"),
        ([{"bn": "d" * 201 + "/", "n": "x", "v": 1}], "^record 0: device is longer than 200 characters$"),
    ],
)
def test_senml_structural_problems_reject_the_pack(records: list[Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_records(records, raw_message(b""))


def test_senml_decoder_needs_an_array() -> None:
    with pytest.raises(DecodeError, match=r"^a SenML pack is a JSON array of records, got dict$"):
        decode_senml(raw_message(b'{"n": "d/x", "v": 1}'))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"n": "x", "v": 1}, True),
        ({"bn": "d/", "bt": 1}, True),
        ({"vs": "on"}, True),
        ({}, False),
        ({"n": "x", "v": 1, "device_id": "a"}, False),
        ({"device_id": "a", "temperature": 1}, False),
    ],
)
def test_is_senml_record_accepts_only_senml_labels(record: dict[str, Any], expected: bool) -> None:
    assert is_senml_record(record) is expected


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,15}", fullmatch=True)
_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@settings(max_examples=200, deadline=None)
@given(
    device=_names,
    base_time=st.integers(min_value=2**28 + 86_400, max_value=4_000_000_000),
    points=st.lists(
        st.tuples(_names, st.integers(min_value=-86_400, max_value=0), _finite), min_size=1, max_size=10
    ),
)
def test_generated_pack_with_base_name_and_relative_times_round_trips(
    device: str, base_time: int, points: list[tuple[str, int, float]]
) -> None:
    records: list[dict[str, Any]] = [{"n": n, "t": t, "v": v} for n, t, v in points]
    records[0].update(bn=device + ":", bt=base_time)
    messages = decode_records(records, raw_message(b""))
    assert readings_of(messages) == [(device, n, (base_time + t) * 1_000_000, v) for n, t, v in points]
