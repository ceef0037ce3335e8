"""SenML (RFC 8428) JSON packs: base fields resolved, records grouped into one message per device.

How a record's name becomes (device, metric):

* with a base name, the device is `bn` without its trailing ':' or '/' separator and the
  metric is `n` (`bn="urn:dev:ow:10e2073a01080063:", n="voltage"`);
* without one, the name is split at its last ':' or '/' (`n="boiler/temperature"`);
  a device URN (`urn:dev:<kind>:<id>`, RFC 9039) is never split inside its id, so
  `n="urn:dev:ow:10e2073a01080063"` is that device's single measurement;
* a name that is all device and no measurement gives the metric "value";
* a name with no separator at all is a metric of the device the source names
  (e.g. the MQTT topic), and a DecodeError when the source names none.

Times follow RFC 8428 §4.5.3: bt + t seconds, and a sum below 2**28 is relative to now
(the receipt time). `vs` and `vd` are kept as invalid values (strings and data are not
numbers); `vb` is 1/0; `s` (a sum) becomes the metric `<metric>_sum`.
"""

from __future__ import annotations

import math
from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.json import JSON_DOCUMENTS, load_json
from iotpipe.formats.values import MAX_ID_LENGTH, check_device_id, coerce_value
from iotpipe.model import DecodedMessage, InvalidValue, RawMessage

# Labels of the IANA SenML registry: RFC 8428 §12.2 and later additions (`ct`/`bct`, RFC 9193).
SENML_LABELS = frozenset(
    {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "l", "ct", "bct"}
)
_RELATIVE_BELOW = 2**28  # RFC 8428 §4.5.3: smaller resolved times are relative to "now"
_MAX_SECONDS = 1e11  # year ~5138, the same bound the timestamp parser uses
_BASE_LABELS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver"})
_VALUE_LABELS = frozenset({"v", "vb", "vs", "vd", "s"})
_ABSENT = object()
_SEPARATORS = ":/"
_NUMBER_TYPES = (int, float)


def is_senml_record(record: dict[str, Any]) -> bool:
    """Whether a JSON object looks like a SenML record: only SenML labels, at least one.

    Extension labels outside the registry make it "not SenML" for sniffing; a source that
    names the "senml" format explicitly still gets them ignored as RFC 8428 §4.4 says.
    """
    return bool(record) and record.keys() <= SENML_LABELS


def decode_records(records: list[Any], raw: RawMessage) -> list[DecodedMessage]:
    """Decode a pack; one DecodedMessage per device, in order of first appearance."""
    if not records:
        raise DecodeError("SenML pack is empty")
    messages: dict[str, DecodedMessage] = {}
    base_name = ""
    base_micros = 0
    base_seconds = 0.0
    base_unit: str | None = None
    base_value = 0.0
    base_sum = 0.0
    # Packs repeat a handful of names many times: resolve each (bn, n) once.
    names: dict[tuple[str, str], tuple[DecodedMessage, str]] = {}

    for index, record in enumerate(records):
        if type(record) is not dict:
            raise DecodeError(f"record {index} is not a JSON object (got {type(record).__name__})")
        if not record.keys() <= SENML_LABELS:
            _check_extensions(record, index)

        # Base fields apply to this and every later record until redefined (RFC 8428 §4.1).
        if not record.keys().isdisjoint(_BASE_LABELS):
            if "bn" in record:
                base_name = _text(record["bn"], "bn", index)
            if "bt" in record:
                base_seconds = _number(record["bt"], "bt", index)
                base_micros = round(base_seconds * 1_000_000)
            if "bu" in record:
                base_unit = _text(record["bu"], "bu", index) or None
            if "bv" in record:
                base_value = _number(record["bv"], "bv", index)
            if "bs" in record:
                base_sum = _number(record["bs"], "bs", index)
            if "bver" in record:
                version = record["bver"]
                if type(version) is not int or version < 1:
                    raise DecodeError(f"record {index}: bver {version!r} is not a positive integer")
        if record.keys().isdisjoint(_VALUE_LABELS):
            continue  # a record of base fields only

        name = record.get("n", "")
        if type(name) is not str:
            raise DecodeError(f"record {index}: n {name!r} is not a string")
        key = (base_name, name)
        target = names.get(key)
        if target is None:
            device_id, metric = _resolve_name(base_name, name, raw, index)
            message = messages.get(device_id)
            if message is None:
                message = messages[device_id] = DecodedMessage(device_id, [])
            target = names[key] = (message, metric)
        message, metric = target

        offset = record.get("t")
        if offset is None:
            time = _absolute(base_seconds, base_micros, raw, index)
        else:
            offset = _number(offset, "t", index)
            # Summed in µs, so whole-second offsets from a fractional bt stay exact.
            time = _absolute(base_seconds + offset, base_micros + round(offset * 1_000_000), raw, index)
        unit = record.get("u", base_unit)
        if type(unit) is not str:
            unit = base_unit

        value = record.get("v", _ABSENT)
        if value is not _ABSENT:
            value = coerce_value(metric, value)
            if type(value) is float:
                value += base_value
                if value - value != 0.0:  # v + bv overflowed to infinity
                    value = InvalidValue(metric, f"record {index}: v + bv is not a finite number")
        elif "vb" in record:
            flag = record["vb"]
            value = (
                coerce_value(metric, flag)
                if flag is None or type(flag) is bool
                else InvalidValue(metric, f"record {index}: vb {_preview(flag)} is not a boolean")
            )
        elif "vs" in record:
            text = record["vs"]
            value = (
                None
                if text is None
                else InvalidValue(metric, f"record {index}: vs {_preview(text)} is a string, not a number")
            )
        elif "vd" in record:
            value = (
                None
                if record["vd"] is None
                else InvalidValue(metric, f"record {index}: vd is binary data, not a number")
            )
        else:
            value = None  # only a sum
        _add(message, metric, time, value, unit)
        if "s" in record:
            sum_metric = metric + "_sum"
            value = coerce_value(sum_metric, record["s"])
            if type(value) is float:
                value += base_sum
            # No unit: a sum's unit is the value's unit times seconds (RFC 8428 §4.2).
            _add(message, sum_metric, time, value, None)
    return list(messages.values())


def _add(
    message: DecodedMessage, metric: str, time: int, value: float | InvalidValue | None, unit: str | None
) -> None:
    if type(value) is float:
        message.readings.append((metric, time, value))
        if unit:
            message.units[metric] = unit
    elif value is not None:
        message.invalid.append(value)  # type: ignore[arg-type]


def _resolve_name(base_name: str, name: str, raw: RawMessage, index: int) -> tuple[str, str]:
    """(device_id, metric) of a record, by the rules in the module docstring."""
    if base_name and name:
        device_id = base_name[:-1] if base_name[-1] in _SEPARATORS else base_name
        metric = name
    else:
        full = base_name + name
        if not full:
            raise DecodeError(f"record {index}: no name (neither n nor bn is given)")
        device_id, metric = _split_name(full)
        if not device_id:
            if raw.device_id is None:
                raise DecodeError(
                    f"record {index}: name {_preview(full)} has no device part and the message "
                    "names no device"
                )
            device_id = raw.device_id
    device_id = check_device_id(device_id, f"record {index}: device")
    if len(metric) > MAX_ID_LENGTH:
        raise DecodeError(f"record {index}: metric name is longer than {MAX_ID_LENGTH} characters")
    return device_id, metric if metric.strip() else "value"


def _split_name(full: str) -> tuple[str, str]:
    """Split a resolved name at its last separator, never inside a device URN's id."""
    if full.startswith("urn:dev:"):
        # urn:dev:<kind>:<id>[:<measurement>] — the first four segments name the device.
        parts = full.split(":", 4)
        if len(parts) <= 4:
            return full, ""
        return ":".join(parts[:4]), parts[4]
    cut = max(full.rfind(":"), full.rfind("/"))
    if cut < 0:
        return "", full
    return full[:cut], full[cut + 1 :]


def _absolute(seconds: float, micros: int, raw: RawMessage, index: int) -> int:
    """The time of a record from its resolved bt + t, in seconds and in µs."""
    if not -_MAX_SECONDS < seconds < _MAX_SECONDS:
        raise DecodeError(f"record {index}: time {seconds!r} s is out of range")
    if seconds < _RELATIVE_BELOW:
        return raw.received_at + micros  # relative to "now", which for us is receipt
    return micros


def _number(value: object, label: str, index: int) -> float:
    # Base fields and times are structure, not readings: a bad one spoils the whole pack.
    if type(value) not in _NUMBER_TYPES:
        raise DecodeError(f"record {index}: {label} {_preview(value)} is not a number")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise DecodeError(f"record {index}: {label} {_preview(value)} is not a finite number")
    return number


def _text(value: object, label: str, index: int) -> str:
    if type(value) is not str:
        raise DecodeError(f"record {index}: {label} {_preview(value)} is not a string")
    return value


def _check_extensions(record: dict[str, Any], index: int) -> None:
    # RFC 8428 §4.4: unknown labels are ignored unless they end in "_" (must-understand).
    for label in record.keys() - SENML_LABELS:
        if label.endswith("_"):
            raise DecodeError(f"record {index}: unsupported must-understand field {label!r}")


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@register("senml")
def decode_senml(raw: RawMessage) -> list[DecodedMessage]:
    pack = load_json(raw)
    if not isinstance(pack, list):
        raise DecodeError(f"a SenML pack is a JSON array of records, got {type(pack).__name__}")
    return decode_records(pack, raw)


def _is_pack(doc: Any) -> bool:
    return (
        isinstance(doc, list) and bool(doc) and all(isinstance(r, dict) and is_senml_record(r) for r in doc)
    )


JSON_DOCUMENTS.append((_is_pack, decode_records))
