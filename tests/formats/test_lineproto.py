"""InfluxDB line protocol: Telegraf's output, escaping, value types, devices, rejections."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.lineproto import GENERIC_MEASUREMENTS, _parse_escaped, _parse_plain
from iotpipe.model import DecodedMessage, InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_lineproto = decoder_for("lineproto")

# From payload-examples.md: the InfluxDB tutorial and two real Telegraf outputs.
INFLUX_TUTORIAL = "weather,location=us-midwest temperature=82 1465839830100400200"
TELEGRAF_CPU = (
    "cpu,cpu=cpu0,host=loaner time_active=202224.15999999992,time_guest=30250.35,time_guest_nice=0,"
    "time_idle=1527035.04,time_iowait=1352,time_irq=0,time_nice=169.28,time_softirq=6281.4,time_steal=0,"
    "time_system=40097.14,time_user=154324.34 1568760922000000000"
)
TELEGRAF_TEST = (
    "cpu,cpu=cpu0,host=BER-0803 usage_guest=0,usage_guest_nice=0,usage_idle=96.875,usage_iowait=0,"
    "usage_irq=0,usage_nice=0,usage_softirq=0,usage_steal=0,usage_system=3.125,usage_user=0 1727601679000000000"
)


def decode(payload: str, device_id: str | None = None) -> list[DecodedMessage]:
    return decode_lineproto(raw_message(payload, device_id=device_id))


def test_influx_tutorial_line_uses_measurement_prefixed_metric_and_ns_time() -> None:
    [message] = decode(INFLUX_TUTORIAL, device_id="station-1")
    assert message.device_id == "station-1"
    assert message.readings == [("weather_temperature{location=us-midwest}", 1_465_839_830_100_400, 82.0)]


def test_telegraf_cpu_output_takes_the_host_tag_as_device() -> None:
    [message] = decode(TELEGRAF_CPU)
    assert message.device_id == "loaner"
    assert len(message.readings) == 11
    assert message.readings[0] == ("cpu_time_active{cpu=cpu0}", 1_568_760_922_000_000, 202224.15999999992)
    assert message.readings[-1] == ("cpu_time_user{cpu=cpu0}", 1_568_760_922_000_000, 154324.34)


def test_telegraf_batch_gives_one_message_per_line() -> None:
    messages = decode(f"{TELEGRAF_CPU}\n{TELEGRAF_TEST}\n")
    assert [m.device_id for m in messages] == ["loaner", "BER-0803"]
    assert ("BER-0803", "cpu_usage_idle{cpu=cpu0}", 1_727_601_679_000_000, 96.875) in readings_of(messages)


def test_device_id_tag_wins_over_host_and_host_over_the_source() -> None:
    [message] = decode("m,host=h,device_id=d x=1", device_id="topic")
    assert message.device_id == "d"
    [message] = decode("m,host=h x=1", device_id="topic")
    assert message.device_id == "h"


def test_generic_measurement_keeps_bare_field_names() -> None:
    assert "telemetry" in GENERIC_MEASUREMENTS
    [message] = decode("telemetry,device_id=pump-7 temperature=21.5,pressure=3.2")
    assert [metric for metric, _, _ in message.readings] == ["temperature", "pressure"]


def test_integer_unsigned_and_boolean_fields_are_numbers() -> None:
    [message] = decode("mem,host=a total=17179869184i,neg=-5i,free=42u,on=t,off=F,yes=True,no=false,up=TRUE")
    assert [(metric, value) for metric, _, value in message.readings] == [
        ("mem_total", 17179869184.0),
        ("mem_neg", -5.0),
        ("mem_free", 42.0),
        ("mem_on", 1.0),
        ("mem_off", 0.0),
        ("mem_yes", 1.0),
        ("mem_no", 0.0),
        ("mem_up", 1.0),
    ]


def test_string_fields_are_skipped_silently() -> None:
    [message] = decode('system,host=a status="ok, all good",load=0.5,note="say \\"hi\\"" 1000')
    assert message.readings == [("system_load", 1, 0.5)]
    assert message.invalid == []


def test_string_field_may_span_lines() -> None:
    messages = decode('log,host=a msg="line one\nline two",level=3\nlog,host=b level=4')
    assert readings_of(messages) == [
        ("a", "log_level", RECEIVED_AT, 3.0),
        ("b", "log_level", RECEIVED_AT, 4.0),
    ]


def test_line_numbers_count_lines_inside_multiline_strings() -> None:
    with pytest.raises(DecodeError, match=r"^line 4: "):
        decode('log,host=a msg="one\ntwo",level=3\nlog,host=b level=4\nlog,host=c level=oops')


def test_escaped_separators_in_names_and_tags() -> None:
    [message] = decode(r"disk\ io\,total,host=my\ host\,1,path=/a\=b read\ bytes=1,w\=x=2")
    assert message.device_id == "my host,1"
    assert [metric for metric, _, _ in message.readings] == [
        "disk io,total_read bytes{path=/a=b}",
        "disk io,total_w=x{path=/a=b}",
    ]


def test_double_backslash_is_one_backslash_and_lone_backslash_is_literal() -> None:
    [message] = decode(r"m\\x,host=a\b f\\=1")
    assert message.device_id == "a\\b"
    assert message.readings[0][0] == "m\\x_f\\"


def test_blank_lines_comments_crlf_and_bom_are_ignored() -> None:
    messages = decode("\ufeff# written by telegraf\r\n\r\n  cpu,host=a x=1 1000000\r\n# end\r\n")
    assert readings_of(messages) == [("a", "cpu_x", 1000, 1.0)]


def test_absent_timestamp_means_receipt_time() -> None:
    [message] = decode("m,host=a x=1")
    assert message.readings == [("m_x", RECEIVED_AT, 1.0)]


def test_nanoseconds_are_floored_to_microseconds_exactly() -> None:
    [message] = decode("m,host=a x=1 1465839830100400999")
    assert message.readings[0][1] == 1_465_839_830_100_400
    [message] = decode("m,host=a x=1 -1500")
    assert message.readings[0][1] == -2


def test_non_finite_float_is_an_invalid_value_and_the_rest_is_kept() -> None:
    [message] = decode("m,host=a x=NaN,y=1,z=-inf")
    assert message.readings == [("m_y", RECEIVED_AT, 1.0)]
    assert message.invalid == [
        InvalidValue("m_x", "m_x: nan is not a finite number"),
        InvalidValue("m_z", "m_z: -inf is not a finite number"),
    ]


def test_each_line_may_name_its_own_device() -> None:
    messages = decode("m,host=a x=1\nm,host=b x=2\nm x=3", device_id="fallback")
    assert [m.device_id for m in messages] == ["a", "b", "fallback"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("m x=1", "^no device_id or host tag, and the message names no device$"),
        ("m,host=a x=1\nm,host=b", "^line 2: no fields; expected measurement"),
        ("m x=1\nm,host=a x=2", "^line 1: no device_id or host tag, and the message names no device$"),
        ('m,host=a x="two\nlines"\nm,host=a x=1 1 2', "^line 3: unexpected '2' after the timestamp$"),
        ("m,host=a", "^no fields"),
        (",host=a x=1", "^measurement is empty$"),
        ("m,host x=1", "^tag 'host' is not key=value$"),
        ("m,host= x=1", "^tag 'host=' is not key=value$"),
        ("m,host=a x", "^field 'x' is not key=value$"),
        ("m,host=a x=", "^field 'x=' is not key=value$"),
        ("m,host=a =1", "^field '=1' is not key=value$"),
        ("m,host=a x=1x", "^field 'x' value '1x' is not a number, integer, boolean or string$"),
        ("m,host=a x=1_000", "^field 'x' value '1_000' is not a number"),
        ("m,host=a x=١", "^field 'x' value '١' is not a number"),
        ("m,host=a x=-1u", "^field 'x' value '-1u' is not a number"),
        (
            "m,host=a x=9223372036854775808i",
            "^field 'x' value '9223372036854775808i' is out of range$",
        ),
        ("m,host=a x=1 12:00", "^timestamp '12:00' is not an integer of nanoseconds$"),
        ("m,host=a x=1 1.5", "^timestamp '1.5' is not an integer of nanoseconds$"),
        ("m,host=a x=1 99999999999999999999", "^timestamp '99999999999999999999' is out of range"),
        ("m,host=a x=1 1 2", "^unexpected '2' after the timestamp$"),
        ('m,host=a x="open', "^field 'x' has an unterminated string$"),
        ('m,host=a x="s"y', "^unexpected 'y' after the fields$"),
        ('m,host=a x="s",', "^empty field key"),
        ("m,host=a\\ x", "^no fields"),
        ('m,host= x="s"', "^tag 'host' has an empty value$"),
        ("# only a comment\n\n", "^payload has no line protocol lines"),
        ("", "^payload has no line protocol lines"),
        ("m,host=" + "h" * 201 + " x=1", "^host tag is longer than 200 characters$"),
    ],
)
def test_malformed_lines_are_rejected_naming_the_line_of_a_payload_of_several(
    payload: str, message: str
) -> None:
    # A one-line payload names no line: its origin (`file:870`, `POST /api/v1/ingest:870`)
    # already says which line of the file or body it was, and "line 1" would contradict it.
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"^payload is not valid UTF-8 \(bad byte at offset 7\)$"):
        decode_lineproto(raw_message(b"m,host=\xff x=1"))


# --- properties --------------------------------------------------------------------------

_alphabet = st.characters(
    exclude_categories=["Cs", "Cc"], exclude_characters="\n\r\t\x0b\x0c\x85\u2028\u2029"
)
_special = st.sampled_from([" ", ",", "=", "\\", '"', "#"])
_name = st.text(st.one_of(_alphabet, _special), min_size=1, max_size=12)


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(text: str) -> str:
    return _escape_measurement(text).replace("=", "\\=")


def _escape_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


_field_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: (repr(v), v)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda v: (f"{v}i", float(v))),
    st.integers(min_value=0, max_value=2**64 - 1).map(lambda v: (f"{v}u", float(v))),
    st.sampled_from([("t", 1.0), ("false", 0.0), ("True", 1.0), ("F", 0.0)]),
    st.text(max_size=10).map(lambda s: ('"' + _escape_string(s) + '"', None)),
)


@st.composite
def _lines(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, float]], int | None]:
    measurement = draw(_name.filter(lambda m: not m.startswith("#") and m not in GENERIC_MEASUREMENTS))
    device = draw(_name.filter(lambda d: d.strip() == d))
    keys = draw(st.lists(_name, min_size=1, max_size=5, unique=True))
    values = [draw(_field_value) for _ in keys]
    nanos = draw(st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)))
    fields = ",".join(f"{_escape_key(k)}={text}" for k, (text, _) in zip(keys, values, strict=True))
    line = f"{_escape_measurement(measurement)},{_escape_key('host')}={_escape_key(device)} {fields}"
    if nanos is not None:
        line += f" {nanos}"
    expected = [(f"{measurement}_{k}", v) for k, (_, v) in zip(keys, values, strict=True) if v is not None]
    return line, device, expected, nanos


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_lines(), min_size=1, max_size=4), st.lists(st.sampled_from(["", "# comment", "  "]), max_size=3)
)
def test_generated_escaped_lines_decode_back_to_their_fields(
    lines: list[tuple[str, str, list[tuple[str, float]], int | None]], noise: list[str]
) -> None:
    payload = "\n".join(noise + [line for line, _, _, _ in lines])
    messages = decode(payload)
    assert len(messages) == len(lines)
    for message, (_, device, expected, nanos) in zip(messages, lines, strict=True):
        time = RECEIVED_AT if nanos is None else nanos // 1000
        assert message.device_id == device
        assert message.readings == [(metric, time, value) for metric, value in expected]
        assert message.invalid == []


_piece = st.one_of(
    st.sampled_from(["m", "host", "device_id", "x1"]), st.text(st.sampled_from("ab=,#"), max_size=3)
)
_plain_value = st.sampled_from(["1", "-2.5", "3i", "4u", "t", "false", "nan", "-inf", "1e3", "1x", "5_0", ""])


@st.composite
def _plain_lines(draw: st.DrawFn) -> str:
    """Mostly well-formed lines without backslashes or quotes, with some damage."""
    tags = draw(st.lists(st.tuples(_piece, _piece), max_size=3))
    fields = draw(
        st.lists(st.tuples(_piece, _plain_value), min_size=draw(st.sampled_from([0, 1, 1])), max_size=3)
    )
    line = draw(_piece) + "".join(f",{k}={v}" for k, v in tags)
    line += draw(st.sampled_from([" ", " ", "  ", ""])) + ",".join(f"{k}={v}" for k, v in fields)
    return line + draw(st.sampled_from(["", "", " 123", " -5000", " 1.5", " 12 13", "  7 "]))


@settings(max_examples=200, deadline=None)
@given(_plain_lines())
def test_fast_path_and_escaped_path_agree_on_plain_lines(line: str) -> None:
    line = line.strip(" \t")
    raw = raw_message(b"", device_id="dev")
    outcomes: list[tuple[object, ...]] = []
    for parse in (lambda: _parse_plain(line, 1, raw, {}), lambda: _parse_escaped(line, 0, 1, raw, {})[0]):
        try:
            message = parse()
            outcomes.append(("ok", message.device_id, message.readings, [i.reason for i in message.invalid]))
        except DecodeError:
            outcomes.append(("error",))
    assert outcomes[0] == outcomes[1]


def test_per_cpu_lines_of_one_host_are_separate_series() -> None:
    payload = (
        b"cpu,cpu=cpu0,host=loaner usage_idle=90 1568760922000000000\n"
        b"cpu,cpu=cpu-total,host=loaner usage_idle=95 1568760922000000000\n"
    )
    messages = decoder_for("lineproto")(raw_message(payload))
    metrics = [m for message in messages for m, _, _ in message.readings]
    assert metrics == ["cpu_usage_idle{cpu=cpu0}", "cpu_usage_idle{cpu=cpu-total}"]
