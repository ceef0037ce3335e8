"""JSON payloads: tells V1, V2, SenML and ThingSpeak documents apart by their fields.

A new JSON schema version is one new module that registers itself in JSON_VERSIONS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.model import DecodedMessage, RawMessage

ObjectDecoder = Callable[[dict[str, Any], RawMessage], DecodedMessage]

# schema_version -> decoder of one JSON object of that version.
JSON_VERSIONS: dict[int, ObjectDecoder] = {}

# Whole-document shapes other than one versioned object (a SenML pack, a ThingSpeak
# feeds export), each registered by its module as (recognises, decode).
JSON_DOCUMENTS: list[tuple[Callable[[Any], bool], Callable[[Any, RawMessage], list[DecodedMessage]]]] = []


def load_json(raw: RawMessage) -> Any:
    return parse_json(raw.payload)


def parse_json(payload: bytes) -> Any:
    """A JSON document (orjson; the standard library for what only it accepts), or DecodeError."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return _load_lenient_json(payload, exc)


def _load_lenient_json(payload: bytes, refusal: orjson.JSONDecodeError) -> Any:
    """What orjson refuses but devices send: NaN, Infinity, -Infinity (Python's json.dumps
    writes them) and numbers beyond a double (1e400, 400-digit integers).

    Parsed by the standard library, off the fast path, so that those values become invalid
    values of their metric (counted for data quality) instead of costing the message.
    Anything else the standard library refuses too is reported with orjson's reason.
    """
    try:
        # Decoded here, as UTF-8 only: given bytes, json.loads would also take UTF-16 and UTF-32.
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:  # orjson says only "surrogates not allowed"
        raise DecodeError(f"payload is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, parse_int=_integer, parse_constant=float)
    except (ValueError, RecursionError):
        raise DecodeError(f"payload is not valid JSON: {refusal}") from None


def _integer(digits: str) -> int | float:
    # int() refuses more than 4300 digits; as a float such a number is simply infinite.
    return int(digits) if len(digits) <= 400 else float(digits)


def detect_version(obj: dict[str, Any]) -> int:
    """The schema version an object declares, or the one its shape implies."""
    declared = obj.get("schema_version")
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int):
            raise DecodeError(f"schema_version {declared!r} is not an integer")
        if declared not in JSON_VERSIONS:
            known = ", ".join(str(v) for v in sorted(JSON_VERSIONS))
            raise DecodeError(f"schema_version {declared} is not supported (known: {known})")
        return declared
    if isinstance(obj.get("device"), dict) and isinstance(obj.get("readings"), dict):
        return 2
    return 1


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words ("a number", not Python's "int")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def decode_object(obj: Any, raw: RawMessage) -> DecodedMessage:
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {json_kind(obj)}")
    return JSON_VERSIONS[detect_version(obj)](obj, raw)


@register("json")
def decode_json(raw: RawMessage) -> list[DecodedMessage]:
    doc = load_json(raw)
    for matches, decode_document in JSON_DOCUMENTS:
        if matches(doc):
            return decode_document(doc, raw)
    if isinstance(doc, list):
        if not doc:
            raise DecodeError("the JSON array is empty: nothing to store")
        raise DecodeError("a JSON array must be a SenML pack (records with n/bn and v)")
    return [decode_object(doc, raw)]
