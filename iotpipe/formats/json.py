"""JSON payloads: tells V1, V2, SenML and ThingSpeak documents apart by their fields.

A new JSON schema version is one new module that registers itself in JSON_VERSIONS.
"""

from __future__ import annotations

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
    try:
        return orjson.loads(raw.payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None


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


def decode_object(obj: Any, raw: RawMessage) -> DecodedMessage:
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}")
    return JSON_VERSIONS[detect_version(obj)](obj, raw)


@register("json")
def decode_json(raw: RawMessage) -> list[DecodedMessage]:
    doc = load_json(raw)
    for matches, decode_document in JSON_DOCUMENTS:
        if matches(doc):
            return decode_document(doc, raw)
    if isinstance(doc, list):
        raise DecodeError("a JSON array must be a SenML pack (records with n/bn and v)")
    return [decode_object(doc, raw)]
