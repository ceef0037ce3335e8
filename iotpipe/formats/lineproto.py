"""InfluxDB line protocol (what Telegraf sends): one DecodedMessage per line.

    measurement[,tag=value...] field=value[,field=value...] [timestamp_ns]

* Device: the `device_id` tag, else the `host` tag (Telegraf sets it), else the device the
  source names (e.g. the MQTT topic), else DecodeError.
* Metric: `{measurement}_{field}` (`cpu_usage_idle`, `weather_temperature`), so that
  fields of different measurements never collide; the field key alone when the measurement
  is a generic one (GENERIC_MEASUREMENTS, e.g. `telemetry,device_id=pump-7 temperature=21.5`).
  Other tags tell series of one device apart (Telegraf's per-CPU `cpu=cpu0` and
  `cpu=cpu-total` lines): they are kept in the metric name, sorted, Prometheus-style —
  `cpu_usage_idle{cpu=cpu0}` — since dropping them would store one CPU and count the
  others as duplicates.
* Values: floats, `123i`, `123u`, booleans (t/T/true/True/TRUE and the f forms) as 1/0.
  Quoted strings are typed strings by design (`status="ok"`), never metrics: skipped.
  NaN/Inf (which InfluxDB itself refuses) become invalid values; any other malformed
  value is a syntax error of its line.
* Time: integer nanoseconds, floored to µs; absent means the receipt time. The formats
  `lineproto_us`, `lineproto_ms` and `lineproto_s` read it in that unit instead (an
  InfluxDB client's `precision`).
* Escapes follow the InfluxDB docs: `\\,` and `\\ ` in measurements, also `\\=` in tag keys,
  tag values and field keys, `\\"` and `\\\\` in string values; a backslash before any
  other character is literal. Quoted strings may span lines.
"""

from __future__ import annotations

import re

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.values import MAX_ID_LENGTH, check_device_id, unusable_metric_name
from iotpipe.model import DecodedMessage, InvalidValue, RawMessage

# Measurements that say nothing about the metric: their fields keep their bare names.
GENERIC_MEASUREMENTS = frozenset({"iotpipe", "telemetry", "readings"})
DEVICE_TAGS = ("device_id", "host")  # in order of precedence

_BOOLEANS = {
    "t": 1.0,
    "T": 1.0,
    "true": 1.0,
    "True": 1.0,
    "TRUE": 1.0,
    "f": 0.0,
    "F": 0.0,
    "false": 0.0,
    "False": 0.0,
    "FALSE": 0.0,
}
_INT64 = 2**63
_UINT64 = 2**64
_SYNTAX = "measurement[,tag=value...] field=value[,field=value...] [timestamp]"

# The escaped-line parser: `\\.` takes a backslash and the character after it together, so
# an escaped separator never ends a token. `.` does not match a newline: no escaped newlines.
_MEASUREMENT = re.compile(r"(?:[^\\, \n]|\\.)+")
_KEY = re.compile(r"(?:[^\\,= \n]|\\.)+")
_TAG_VALUE = re.compile(r"(?:[^\\, \n]|\\.)+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BARE_VALUE = re.compile(r"[^, \n]+")
_MEASUREMENT_ESCAPE = re.compile(r"\\([, \\])")
_KEY_ESCAPE = re.compile(r"\\([,= \\])")


# Nanoseconds per timestamp unit, by format name (InfluxDB's `precision` parameter).
PRECISIONS = {"lineproto": 1, "lineproto_us": 1_000, "lineproto_ms": 1_000_000, "lineproto_s": 1_000_000_000}


@register("lineproto_s")
@register("lineproto_ms")
@register("lineproto_us")
@register("lineproto")
def decode_lineproto(raw: RawMessage) -> list[DecodedMessage]:
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload is not valid UTF-8 (bad byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    messages: list[DecodedMessage] = []
    devices: dict[str, str] = {}  # raw tag value -> checked device id; batches repeat one host
    end = len(text)
    pos = 0
    lineno = 0
    # A one-line payload (an MQTT message, a line of a file or an HTTP body: its origin says
    # which) names no line in its reasons: "line 1" would contradict the origin's number.
    counting = 1 if "\n" in text.rstrip("\n") else 0
    while pos <= end:
        newline = text.find("\n", pos)
        if newline < 0:
            newline = end
        lineno += counting
        line = text[pos:newline].strip(" \t")
        if line and line[0] != "#":
            if "\\" in line or '"' in line:
                # A quoted string may hold newlines: the parser says where the line really ends.
                message, newline = _parse_escaped(text, pos, lineno, raw, devices)
                lineno += text.count("\n", pos, newline)
            else:
                message = _parse_plain(line, lineno, raw, devices)
            messages.append(message)
        pos = newline + 1
    if not messages:
        raise DecodeError("payload has no line protocol lines (only blank lines or comments)")
    return messages


def _parse_plain(line: str, lineno: int, raw: RawMessage, devices: dict[str, str]) -> DecodedMessage:
    """The fast path: a line without backslashes or quotes splits on plain separators."""
    parts = line.split(" ")
    if len(parts) > 3 or "" in parts:
        parts = [part for part in parts if part]  # runs of spaces between sections
    if len(parts) < 2:
        raise DecodeError(f"{_at(lineno)}no fields; expected {_SYNTAX}")
    if len(parts) > 3:
        raise DecodeError(f"{_at(lineno)}unexpected {parts[3]!r} after the timestamp")

    measurement, *tags = parts[0].split(",")
    if not measurement:
        raise DecodeError(f"{_at(lineno)}measurement is empty")
    device_tags: dict[str, str] = {}
    series_tags: list[tuple[str, str]] = []
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not key or not equals or not value:
            raise DecodeError(f"{_at(lineno)}tag {_preview(tag)} is not key=value")
        if key in DEVICE_TAGS:
            device_tags[key] = value
        else:
            series_tags.append((key, value))
    device_id = _device(device_tags, raw, lineno, devices)

    time = _timestamp(parts[2], lineno, raw.format) if len(parts) == 3 else raw.received_at
    prefix = "" if measurement in GENERIC_MEASUREMENTS else measurement + "_"
    suffix = _tag_suffix(series_tags)
    readings: list[tuple[str, int, float]] = []
    invalid: list[InvalidValue] = []
    for field in parts[1].split(","):
        key, equals, text = field.partition("=")
        if not key or not equals or not text:
            raise DecodeError(f"{_at(lineno)}field {_preview(field)} is not key=value")
        _add(readings, invalid, prefix + key + suffix, time, _number(text, key, lineno))
    return DecodedMessage(device_id, readings, invalid=invalid)


def _parse_escaped(
    text: str, pos: int, lineno: int, raw: RawMessage, devices: dict[str, str]
) -> tuple[DecodedMessage, int]:
    """The general path, token by token; returns the message and where its line ends."""
    end = len(text)
    i = _skip_blanks(text, pos)
    match = _MEASUREMENT.match(text, i)
    if match is None:
        raise DecodeError(f"{_at(lineno)}measurement is empty")
    measurement = _unescape(match.group(), _MEASUREMENT_ESCAPE)
    i = match.end()

    device_tags: dict[str, str] = {}
    series_tags: list[tuple[str, str]] = []
    while i < end and text[i] == ",":
        match = _KEY.match(text, i + 1)
        if match is None:
            raise DecodeError(f"{_at(lineno)}empty tag key after {_preview(text[pos : i + 1])}")
        key = _unescape(match.group(), _KEY_ESCAPE)
        i = match.end()
        if i >= end or text[i] != "=":
            raise DecodeError(f"{_at(lineno)}tag {key!r} is not key=value")
        match = _TAG_VALUE.match(text, i + 1)
        if match is None:
            raise DecodeError(f"{_at(lineno)}tag {key!r} has an empty value")
        if key in DEVICE_TAGS:
            device_tags[key] = _unescape(match.group(), _KEY_ESCAPE)
        else:
            series_tags.append((key, _unescape(match.group(), _KEY_ESCAPE)))
        i = match.end()
    if i >= end or text[i] != " ":
        raise DecodeError(f"{_at(lineno)}no fields; expected {_SYNTAX}")
    while i < end and text[i] == " ":
        i += 1

    fields: list[tuple[str, str | None]] = []  # (key, bare value text; None for a string)
    while True:
        match = _KEY.match(text, i)
        if match is None:
            raise DecodeError(f"{_at(lineno)}empty field key at {_preview(text[i : i + 20])}")
        key = _unescape(match.group(), _KEY_ESCAPE)
        i = match.end()
        if i >= end or text[i] != "=":
            raise DecodeError(f"{_at(lineno)}field {key!r} is not key=value")
        i += 1
        if i < end and text[i] == '"':
            match = _STRING.match(text, i)
            if match is None:
                raise DecodeError(f"{_at(lineno)}field {key!r} has an unterminated string")
            fields.append((key, None))
        else:
            match = _BARE_VALUE.match(text, i)
            if match is None:
                raise DecodeError(f"{_at(lineno)}field {key!r} has no value")
            fields.append((key, match.group()))
        i = match.end()
        if i < end and text[i] == ",":
            i += 1
            continue
        break

    timestamp = None
    blanks = _skip_blanks(text, i)
    if blanks > i and blanks < end and text[blanks] != "\n":
        stop = blanks
        while stop < end and text[stop] not in " \t\n":
            stop += 1
        timestamp = text[blanks:stop]
        blanks = _skip_blanks(text, stop)
    if blanks < end and text[blanks] != "\n":
        raise DecodeError(f"{_at(lineno)}unexpected {_preview(text[blanks : blanks + 20])} after the fields")

    device_id = _device(device_tags, raw, lineno, devices)
    time = raw.received_at if timestamp is None else _timestamp(timestamp, lineno, raw.format)
    prefix = "" if measurement in GENERIC_MEASUREMENTS else measurement + "_"
    suffix = _tag_suffix(series_tags)
    readings: list[tuple[str, int, float]] = []
    invalid: list[InvalidValue] = []
    for key, value in fields:
        if value is not None:  # string fields are not metrics
            _add(readings, invalid, prefix + key + suffix, time, _number(value, key, lineno))
    return DecodedMessage(device_id, readings, invalid=invalid), blanks


def _tag_suffix(tags: list[tuple[str, str]]) -> str:
    """`{k=v,...}` of the non-device tags in key order, '' when there are none."""
    if not tags:
        return ""
    return "{" + ",".join(f"{key}={value}" for key, value in sorted(tags)) + "}"


def _add(
    readings: list[tuple[str, int, float]], invalid: list[InvalidValue], metric: str, time: int, value: float
) -> None:
    if len(metric) > MAX_ID_LENGTH or metric.isspace():
        invalid.append(unusable_metric_name(metric, "field key"))  # type: ignore[arg-type]
    elif value - value == 0.0:  # finite: inf - inf and nan - nan are nan
        readings.append((metric, time, value))
    else:
        invalid.append(InvalidValue(metric, f"{metric}: {value!r} is not a finite number"))


def _number(text: str, key: str, lineno: int) -> float:
    """A bare field value as a float (maybe non-finite), or DecodeError for bad syntax."""
    number = _BOOLEANS.get(text)
    if number is not None:
        return number
    suffix = text[-1]
    if suffix == "i" or suffix == "u":
        digits = text[:-1]
        body = digits[1:] if suffix == "i" and digits[:1] == "-" else digits
        if body.isascii() and body.isdigit() and len(body) <= 20:
            integer = int(digits)
            if (-_INT64 <= integer < _INT64) if suffix == "i" else integer < _UINT64:
                return float(integer)
            raise DecodeError(f"{_at(lineno)}field {key!r} value {_preview(text)} is out of range")
    # float() alone would also take '1_000', ' 1' and non-ASCII digits, which are not
    # line protocol; it does take nan/inf, which _add reports as invalid values.
    elif text.isascii() and "_" not in text:
        try:
            return float(text)
        except ValueError:
            pass
    raise DecodeError(
        f"{_at(lineno)}field {key!r} value {_preview(text)} is not a number, integer, boolean or string"
    )


def _at(lineno: int) -> str:
    """Where a reason is, in a payload of several lines: "line N: " (lines count from 1)."""
    return f"line {lineno}: " if lineno else ""


def _timestamp(text: str, lineno: int, fmt: str | None = None) -> int:
    digits = text[1:] if text[:1] == "-" else text
    scale = PRECISIONS.get(fmt or "lineproto", 1)
    unit = "nanoseconds" if scale == 1 else fmt.removeprefix("lineproto_")  # type: ignore[union-attr]
    if not (digits.isascii() and digits.isdigit()):
        raise DecodeError(f"{_at(lineno)}timestamp {_preview(text)} is not an integer of {unit}")
    if len(digits) > 19 or not -_INT64 <= (nanos := int(text) * scale) < _INT64:
        raise DecodeError(f"{_at(lineno)}timestamp {_preview(text)} is out of range for {unit}")
    return nanos // 1000  # floor, in exact integer arithmetic


def _device(tags: dict[str, str], raw: RawMessage, lineno: int, devices: dict[str, str]) -> str:
    source = "device_id"
    for tag in DEVICE_TAGS:
        value = tags.get(tag)
        if value is not None:
            source = f"{tag} tag"
            break
    else:
        value = raw.device_id
        if value is None:
            raise DecodeError(f"{_at(lineno)}no device_id or host tag, and the message names no device")
    device_id = devices.get(value)
    if device_id is None:
        device_id = devices[value] = check_device_id(value, f"{_at(lineno)}{source}")
    return device_id


def _skip_blanks(text: str, i: int) -> int:
    end = len(text)
    while i < end and text[i] in " \t":
        i += 1
    return i


def _unescape(token: str, escapes: re.Pattern[str]) -> str:
    return escapes.sub(r"\1", token) if "\\" in token else token


def _preview(value: str, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
