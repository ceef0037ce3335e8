"""ThingSpeak feeds: one feed entry, or a whole feeds.json document, into canonical readings.

An entry's field1..field8 are named by the channel's field labels: `slug_metric(label)`
("Outside Temperature" -> `outside_temperature`), or `fieldN` when the field has no label
(or its label names the same metric as an earlier field's). Values are strings or null:
numbers are parsed, null/empty is missing, anything else is an invalid value. `entry_id`
and `status` are not metrics. A latitude/longitude of 0/0 is ThingSpeak's "no location".
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.json import JSON_DOCUMENTS, load_json
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.values import MAX_ID_LENGTH, check_device_id, coerce_value, coordinate, slug_metric
from iotpipe.model import DecodedMessage, DeviceInfo, InvalidValue, RawMessage

FIELD_KEYS = tuple(f"field{number}" for number in range(1, 9))
DEVICE_PREFIX = "thingspeak-"
_MAX_ELEVATION_M = 100_000.0


def field_labels(channel: dict[str, Any]) -> tuple[str, ...]:
    """The channel's labels of field1..field8, "" where a field is unnamed."""
    labels = []
    for key in FIELD_KEYS:
        label = channel.get(key)
        labels.append(label.strip() if isinstance(label, str) else "")
    return tuple(labels)


@lru_cache(maxsize=256)
def metric_names(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The metric of each of field1..field8, given the channel's labels (maybe fewer than 8)."""
    names: list[str] = []
    for index, key in enumerate(FIELD_KEYS):
        label = labels[index].strip() if index < len(labels) else ""
        name = slug_metric(label)[:MAX_ID_LENGTH] if label else key
        if name in names:
            name = key  # two labels that slug alike ("Temp", "temp") must stay two series
            while name in names:
                name += "_"
        names.append(name)
    return tuple(names)


@register("thingspeak")
def decode_thingspeak(raw: RawMessage) -> list[DecodedMessage]:
    """One feed entry; raw.header holds the field labels and raw.device_id the device."""
    doc = load_json(raw)
    if isinstance(doc, dict) and "feeds" in doc and "channel" in doc:
        return decode_document(doc, raw)
    device_id = check_device_id(raw.device_id)
    return [decode_entry(doc, raw, device_id, metric_names(raw.header or ()), None)]


def decode_document(doc: dict[str, Any], raw: RawMessage) -> list[DecodedMessage]:
    """A whole feeds.json export: one DecodedMessage per entry, device `thingspeak-{channel.id}`.

    All or nothing: an entry that does not decode (e.g. a bad created_at) raises DecodeError
    for the whole document, naming the entry. The ThingSpeak connector decodes entry by
    entry instead, so one bad entry costs only itself there.
    """
    channel = doc.get("channel")
    if not isinstance(channel, dict):
        raise DecodeError(f"channel must be an object, got {type(channel).__name__}")
    feeds = doc.get("feeds")
    if not isinstance(feeds, list):
        raise DecodeError(f"feeds must be an array, got {type(feeds).__name__}")
    device_id = channel_device_id(channel, raw)
    labels = field_labels(channel)
    names = metric_names(labels)
    info = channel_info(channel, labels)
    messages = []
    for index, entry in enumerate(feeds):
        try:
            messages.append(decode_entry(entry, raw, device_id, names, info))
        except DecodeError as exc:
            raise DecodeError(f"feeds[{index}]: {exc.reason}") from None
    return messages


def channel_device_id(channel: dict[str, Any], raw: RawMessage) -> str:
    channel_id = channel.get("id")
    if channel_id is None:
        return check_device_id(raw.device_id, "channel.id")
    if isinstance(channel_id, bool) or not isinstance(channel_id, int | str):
        raise DecodeError(f"channel.id {channel_id!r} is not an integer")
    text = str(channel_id).strip()
    if not text:
        raise DecodeError("channel.id is empty")
    return check_device_id(DEVICE_PREFIX + text, "channel.id")


def channel_info(channel: dict[str, Any], labels: tuple[str, ...]) -> DeviceInfo:
    """The channel's metadata as the device's: name, location, description, tags, labels."""
    attributes: dict[str, Any] = {}
    description = channel.get("description")
    if isinstance(description, str) and description:
        attributes["description"] = description
    tags = channel.get("tags")
    if isinstance(tags, list):
        # Channel listings give [{"id": 1, "name": "weather"}]; accept bare strings too.
        names = [tag.get("name") if isinstance(tag, dict) else tag for tag in tags]
        attributes["tags"] = [name for name in names if isinstance(name, str) and name]
    attributes["field_labels"] = {key: label for key, label in zip(FIELD_KEYS, labels, strict=True) if label}
    name = channel.get("name")
    latitude, longitude, elevation = _location(channel)
    return DeviceInfo(
        name=name if isinstance(name, str) and name else None,
        latitude=latitude,
        longitude=longitude,
        elevation=elevation,
        attributes=attributes,
    )


def decode_entry(
    entry: Any, raw: RawMessage, device_id: str, names: tuple[str, ...], info: DeviceInfo | None
) -> DecodedMessage:
    """One feed entry; `names` from metric_names(), `info` the channel's (or None)."""
    if not isinstance(entry, dict):
        raise DecodeError(f"a ThingSpeak feed entry must be a JSON object, got {type(entry).__name__}")
    created_at = entry.get("created_at")
    time = raw.received_at if created_at is None else parse_timestamp(created_at, "created_at")
    readings: list[tuple[str, int, float]] = []
    invalid: list[InvalidValue] = []
    for key, metric in zip(FIELD_KEYS, names, strict=True):
        value = entry.get(key)
        if value is None:
            continue
        number = coerce_value(metric, value)
        if type(number) is float:
            readings.append((metric, time, number))
        elif number is not None:
            invalid.append(number)  # type: ignore[arg-type]
    # An entry may carry the device's position at that time (mobile channels).
    if "latitude" in entry or "longitude" in entry or "elevation" in entry:
        latitude, longitude, elevation = _location(entry)
        if latitude is not None or elevation is not None:
            base = info or DeviceInfo()
            # What the entry does not say keeps the channel's value.
            info = dataclasses.replace(
                base,
                latitude=base.latitude if latitude is None else latitude,
                longitude=base.longitude if longitude is None else longitude,
                elevation=base.elevation if elevation is None else elevation,
            )
    return DecodedMessage(device_id, readings, invalid=invalid, info=info)


def _location(obj: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    latitude = coordinate(obj.get("latitude"), 90.0)
    longitude = coordinate(obj.get("longitude"), 180.0)
    if latitude is None or longitude is None or (latitude == 0.0 and longitude == 0.0):
        latitude = longitude = None  # half a position, or ThingSpeak's 0/0 default, is none
    return latitude, longitude, coordinate(obj.get("elevation"), _MAX_ELEVATION_M)


def _is_feeds_export(doc: Any) -> bool:
    return isinstance(doc, dict) and "feeds" in doc and "channel" in doc


JSON_DOCUMENTS.append((_is_feeds_export, decode_document))
