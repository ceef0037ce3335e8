"""Decoders: one per payload format, registered by name, each turning bytes into canonical readings.

A decoder is a function `RawMessage -> list[DecodedMessage]` that raises only DecodeError.
`decode()` picks the decoder the source named, or sniffs the payload: JSON (V1, V2,
SenML, ThingSpeak documents — told apart by their fields) or InfluxDB line protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from iotpipe.errors import DecodeError
from iotpipe.model import DecodedMessage, RawMessage

Decoder = Callable[[RawMessage], list[DecodedMessage]]

_DECODERS: dict[str, Decoder] = {}
# The names users may give (`--format`, topic templates), each with whether a file's
# messages can take it. Internal decoders (a source's refusal) are not among them: named
# by a user, they would dead-letter everything.
_USER_FORMATS: dict[str, bool] = {}


def register(name: str, *, internal: bool = False, files: bool = True) -> Callable[[Decoder], Decoder]:
    """Register a decoder under the name users give to `--format` and topic templates (none
    when `internal`; not `--format` of a file import unless `files`)."""

    def add(decoder: Decoder) -> Decoder:
        _DECODERS[name] = decoder
        if not internal:
            _USER_FORMATS[name] = files
        return decoder

    return add


def format_names() -> list[str]:
    """The formats a user may name (a topic template's, say)."""
    return sorted(_USER_FORMATS)


def file_format_names() -> list[str]:
    """The formats `iotpipe import --format` takes: those a file's message can be decoded by."""
    return sorted(name for name, files in _USER_FORMATS.items() if files)


def decoder_for(name: str) -> Decoder:
    try:
        return _DECODERS[name]
    except KeyError:
        raise DecodeError(f"unknown format {name!r}; known formats: {', '.join(format_names())}") from None


def sniff_format(payload: bytes) -> str:
    """Name the decoder for a payload whose source did not say its format."""
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        return "json"
    if not head:
        raise DecodeError("payload is empty")
    return "lineproto"


def decode(raw: RawMessage) -> list[DecodedMessage]:
    """Decode one raw message into canonical readings, or raise DecodeError with the reason."""
    name = raw.format or sniff_format(raw.payload)
    return decoder_for(name)(raw)


# Importing the modules registers their decoders.
from iotpipe.formats import (  # noqa: E402,F401
    csv,
    json,
    lineproto,
    refused,
    senml,
    tasmota,
    thingspeak,
    unmatched,
    v1,
    v2,
    value,
    zigbee2mqtt,
)
