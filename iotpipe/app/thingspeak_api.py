"""ThingSpeak's own API, served by iotpipe, so that firmware and scripts written for
ThingSpeak work unchanged when pointed at it (see docs/api.md for the differences).

A channel is a device: channel N is device `thingspeak-N`, the device the ThingSpeak
connector stores channel N's history under. A channel's write key is a writer key scoped
to that one device; its read key is any key that may read. Field N is the metric named
by the channel's field label (as the connector stores it, in the device's attributes),
else `fieldN`. An entry is the set of readings of one time; `entry_id` is its ordinal
among the channel's distinct reading times.

Answers follow ThingSpeak's: a failed write answers `0` (HTTP 200; HTTP 400 for a read
key), a read without access answers `-1` (HTTP 400); bulk updates answer 202
`{"success": true}`, or ThingSpeak's JSON error object.
"""

from __future__ import annotations

import re
import statistics
from typing import TYPE_CHECKING, Any

import orjson

from iotpipe.app.access import AccessDenied, Principal
from iotpipe.errors import DecodeError, IotpipeError, NotFound
from iotpipe.formats.thingspeak import DEVICE_PREFIX, FIELD_KEYS, metric_names
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.model import MICROS_PER_SECOND, Micros, RawMessage, format_micros, now_micros

if TYPE_CHECKING:
    from iotpipe.app import App

SOURCE = "http"
MAX_RESULTS = 8000
DEFAULT_RESULTS = 100
BUCKET_MINUTES = {
    "10": 10,
    "15": 15,
    "20": 20,
    "30": 30,
    "60": 60,
    "240": 240,
    "720": 720,
    "1440": 1440,
    "daily": 1440,
}
BUCKET_PARAMS = ("timescale", "average", "median", "sum")
ENTRY_KEYS = (*FIELD_KEYS, "created_at", "latitude", "longitude", "elevation", "status")
SECRET_KEYS = ("api_key", "write_api_key")  # never kept in a dead letter
UPDATE_KEYS = (*SECRET_KEYS, "channel_id", "lat", "long", "timezone")  # known, not entry values
_CHANNEL_DEVICE = re.compile(r"^thingspeak-(\d+)$")


class WriteFailed(IotpipeError):
    """A ThingSpeak write that stores nothing: answered `0` (`status` 200, or 400)."""

    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.status = status


def channel_device(channel_id: int) -> str:
    return f"{DEVICE_PREFIX}{channel_id}"


def _channel_of(device_id: str) -> int:
    match = _CHANNEL_DEVICE.match(device_id)
    return int(match[1]) if match else 0


def _labels(app: App, device_id: str) -> tuple[str, ...]:
    """The channel's field labels from the device's attributes ("" where unnamed)."""
    from iotpipe.analytics.fleet import device_rows

    rows = device_rows(app.store, device_id)
    attributes = (rows[0]["attributes"] or {}) if rows else {}
    labels = attributes.get("field_labels") or {}
    return tuple(str(labels.get(key, "")) for key in FIELD_KEYS)


def _write_device(principal: Principal, channel_id: int | None) -> str:
    """The device a ThingSpeak write goes to: its key's one device, or the channel given."""
    if not principal.may("ingest"):
        raise WriteFailed(f"key {principal.name!r} may not write (a {principal.role} key)", 400)
    if channel_id is not None:
        device = channel_device(channel_id)
        if not principal.may_write(device):
            raise WriteFailed(f"key {principal.name!r} is not channel {channel_id}'s write key")
        return device
    if principal.devices is not None and len(principal.devices) == 1:
        return principal.devices[0]
    raise WriteFailed(
        "this key names no channel: create the channel's write key with "
        "`iotpipe keys create NAME --role writer --device thingspeak-ID` (or pass channel_id)"
    )


# -- writes ------------------------------------------------------------------------------------
def update(app: App, principal: Principal, params: dict[str, str]) -> dict[str, Any]:
    """GET|POST /update: one entry; the new feed entry as ThingSpeak's update.json shows it."""
    channel = params.get("channel_id")
    device = _write_device(principal, _int_param(channel, "channel_id") if channel else None)
    entry = {key: params[key] for key in ENTRY_KEYS if params.get(key) not in (None, "")}
    if "lat" in params:
        entry["latitude"] = params["lat"]
    if "long" in params:
        entry["longitude"] = params["long"]
    received = now_micros()
    problem = _unwritable(entry, params)
    if problem is not None:
        # Answered 0 as ThingSpeak does, and kept as a dead letter: a device that sends
        # field9 or a bad created_at for ever must show up somewhere an operator looks.
        _dead_letter(app, principal, device, params, problem, received)
        raise WriteFailed(problem)
    result = _store_entries(app, principal, device, [entry], received)
    if result["stored"] == 0:
        raise WriteFailed(
            "nothing stored: an entry at this created_at exists (created_at must be unique in a channel)"
            if not result["rejections"]
            else result["rejections"][0]["reason"]
        )
    labels = _labels(app, device)
    metrics = list(metric_names(labels))
    at = parse_timestamp(entry["created_at"], "created_at") if "created_at" in entry else received
    view: dict[str, Any] = {"channel_id": _channel_of(device)}
    for key in FIELD_KEYS:
        view[key] = entry.get(key)
    view.update(
        {
            "created_at": format_micros(at - at % MICROS_PER_SECOND),
            "entry_id": app.store.count_entries(device, metrics),
            "status": entry.get("status"),
            "latitude": entry.get("latitude"),
            "longitude": entry.get("longitude"),
            "elevation": entry.get("elevation"),
            "location": None,
        }
    )
    return view


def _unwritable(entry: dict[str, Any], params: dict[str, str]) -> str | None:
    """Why a single update cannot be stored, or None."""
    if not any(key in entry for key in FIELD_KEYS):
        unknown = sorted(key for key in params if key not in (*ENTRY_KEYS, *UPDATE_KEYS))
        named = f"; {', '.join(unknown)} {'is not a ThingSpeak field' if len(unknown) == 1 else 'are not ThingSpeak fields'}"
        return "an update needs at least one of field1..field8" + (named if unknown else "")
    if "created_at" in entry:
        try:
            parse_timestamp(entry["created_at"], "created_at")
        except DecodeError as exc:
            return exc.reason
    return None


def _dead_letter(
    app: App, principal: Principal, device: str, params: dict[str, str], reason: str, received: Micros
) -> None:
    """Keep an update that cannot be stored in the dead-letter queue, without its key."""
    kept = {key: value for key, value in params.items() if key not in SECRET_KEYS}
    message = RawMessage(
        orjson.dumps(kept),
        SOURCE,
        f"ThingSpeak channel {_channel_of(device)} update",
        received,
        "thingspeak",
        device,
        _labels(app, device),
        reject=reason,
    )
    app.http_ingest.ingest([message], principal)


def bulk_update(app: App, principal: Principal, channel_id: int, body: bytes) -> dict[str, Any]:
    """POST /channels/{id}/bulk_update.json: every update of the body, in one request."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IotpipeError(f"the body is not JSON: {exc}") from None
    updates = doc.get("updates") if isinstance(doc, dict) else None
    if not isinstance(updates, list) or not updates:
        raise IotpipeError('the body needs "updates": a non-empty array of entries')
    if not principal.may("ingest") or not principal.may_write(channel_device(channel_id)):
        raise AccessDenied(f"key {principal.name!r} is not channel {channel_id}'s write key", 401)
    received = now_micros()
    entries = _with_times(updates, received)
    result = _store_entries(app, principal, channel_device(channel_id), entries, received)
    return {"success": True, **{k: result[k] for k in ("stored", "duplicates", "rejected", "rejections")}}


def _with_times(updates: list[Any], received: Micros) -> list[dict[str, Any]]:
    """Entries with a created_at each: delta_t (seconds after the entry before) counts
    back from the last update, which is taken to be sent now."""
    entries: list[dict[str, Any]] = []
    deltas: list[float | None] = []
    for index, update_entry in enumerate(updates):
        if not isinstance(update_entry, dict):
            raise IotpipeError(f"updates[{index}] is not an object")
        entry = {k: update_entry[k] for k in ENTRY_KEYS if k in update_entry and update_entry[k] is not None}
        delta = update_entry.get("delta_t")
        if "created_at" not in entry and delta is None:
            raise IotpipeError(f"updates[{index}] needs created_at or delta_t")
        if delta is not None and "created_at" not in entry:
            try:
                seconds = float(delta)
            except (TypeError, ValueError):
                raise IotpipeError(f"updates[{index}].delta_t {delta!r} is not a number of seconds") from None
            if seconds < 0 or (seconds == 0 and index > 0):
                raise IotpipeError(f"updates[{index}].delta_t must be positive (only the first may be 0)")
            deltas.append(seconds)
        else:
            deltas.append(None)
        entries.append(entry)
    at = received
    for index in range(len(entries) - 1, -1, -1):
        if deltas[index] is not None:
            entries[index]["created_at"] = at
            at -= int(deltas[index] * MICROS_PER_SECOND)  # type: ignore[operator]
        else:
            at = parse_timestamp(entries[index]["created_at"], f"updates[{index}].created_at")
    return entries


def _store_entries(
    app: App, principal: Principal, device: str, entries: list[dict[str, Any]], received: Micros
) -> dict[str, Any]:
    labels = _labels(app, device)
    messages = [
        RawMessage(
            orjson.dumps(entry),
            SOURCE,
            f"ThingSpeak channel {_channel_of(device)} entry {i}",
            received,
            "thingspeak",
            device,
            labels,
        )
        for i, entry in enumerate(entries)
    ]
    return app.http_ingest.ingest(messages, principal)


# -- reads -------------------------------------------------------------------------------------
def _channel(app: App, channel_id: int) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the channel object, its field keys with data, the metric of each)."""
    from iotpipe.analytics.fleet import device_rows

    device = channel_device(channel_id)
    rows = device_rows(app.store, device)
    if not rows:
        raise NotFound(f"no channel {channel_id}: no device {device} in the store")
    row = rows[0]
    labels = _labels(app, device)
    names = metric_names(labels)
    stored = {m["name"] for m in row["metrics"]}
    keys = [key for key, name in zip(FIELD_KEYS, names, strict=True) if name in stored]
    metrics = [names[FIELD_KEYS.index(key)] for key in keys]
    channel: dict[str, Any] = {
        "id": channel_id,
        "name": row["name"] or device,
        "description": (row["attributes"] or {}).get("description", ""),
        "latitude": str(row["latitude"] if row["latitude"] is not None else 0.0),
        "longitude": str(row["longitude"] if row["longitude"] is not None else 0.0),
    }
    for key, name in zip(keys, metrics, strict=True):
        channel[key] = labels[FIELD_KEYS.index(key)] or name
    channel["created_at"] = _ts(row["first_seen"]) if row["first_seen"] is not None else None
    channel["updated_at"] = _ts(row["last_seen"]) if row["last_seen"] is not None else None
    channel["last_entry_id"] = app.store.count_entries(device, metrics) if metrics else 0
    return channel, keys, metrics


def feeds(app: App, channel_id: int, params: dict[str, str], field: int | None = None) -> dict[str, Any]:
    """feeds.json (or fields/{n}.json): the channel and its entries, per ThingSpeak's parameters."""
    channel, keys, metrics = _channel(app, channel_id)
    if field is not None:
        key = f"field{field}"
        if not 1 <= field <= 8:
            raise NotFound(f"field {field} does not exist; a channel has field1..field8")
        keys, metrics = ([key], [metrics[keys.index(key)]]) if key in keys else ([], [])
    results = params.get("results")
    limit = min(_int_param(results, "results"), MAX_RESULTS) if results else None
    start, end = _window(params)
    if limit is None:
        limit = MAX_RESULTS if (start is not None or end is not None) else DEFAULT_RESULTS
    device = channel_device(channel_id)
    rows = app.store.device_entries(device, metrics, start, end, limit, newest=True) if metrics else []
    first_id = app.store.count_entries(device, metrics, before=rows[0][0]) + 1 if rows else 0
    entries = [(at, first_id + i, values) for i, (at, values) in enumerate(rows)]
    low, high = _float_param(params.get("min"), "min"), _float_param(params.get("max"), "max")
    decimals = _int_param(params["round"], "round") if params.get("round") else None
    by_key = dict(zip(metrics, keys, strict=True))
    bucket = next(((p, params[p]) for p in BUCKET_PARAMS if params.get(p)), None)
    feed: list[dict[str, Any]] = []
    if bucket is None:
        for at, entry_id, values in entries:
            item: dict[str, Any] = {"created_at": _ts(at), "entry_id": entry_id}
            for metric, key in by_key.items():
                item[key] = _text(_filtered(values.get(metric), low, high), decimals)
            feed.append(item)
    else:
        feed = _bucketed(entries, by_key, bucket, low, high, decimals)
    return {"channel": channel, "feeds": feed}


def last_entry(app: App, channel_id: int, params: dict[str, str]) -> dict[str, Any]:
    """feeds/last.json: the newest entry (no channel object)."""
    _, keys, metrics = _channel(app, channel_id)
    device = channel_device(channel_id)
    rows = app.store.device_entries(device, metrics, None, None, 1, newest=True) if metrics else []
    if not rows:
        raise NotFound(f"channel {channel_id} has no entries yet")
    at, values = rows[0]
    decimals = _int_param(params["round"], "round") if params.get("round") else None
    item: dict[str, Any] = {"created_at": _ts(at), "entry_id": app.store.count_entries(device, metrics)}
    for metric, key in zip(metrics, keys, strict=True):
        item[key] = _text(values.get(metric), decimals)
    return item


def feeds_csv(feed: dict[str, Any]) -> str:
    """feeds.csv: created_at,entry_id,field1..; one line per entry."""
    import csv
    import io

    keys = [k for k in FIELD_KEYS if k in feed["channel"]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["created_at", "entry_id", *keys])
    for item in feed["feeds"]:
        writer.writerow([item["created_at"], item.get("entry_id", ""), *(item.get(k) or "" for k in keys)])
    return out.getvalue()


def _bucketed(
    entries: list[tuple[Micros, int, dict[str, float]]],
    by_key: dict[str, str],
    bucket: tuple[str, str],
    low: float | None,
    high: float | None,
    decimals: int | None,
) -> list[dict[str, Any]]:
    """timescale (first value), sum, average or median per bucket of N minutes (UTC-aligned),
    over the entries `results` selected (ThingSpeak applies `results` first)."""
    how, size = bucket
    if size not in BUCKET_MINUTES:
        raise IotpipeError(f"{how}={size!r} is not a bucket; use one of: {', '.join(BUCKET_MINUTES)}")
    step = BUCKET_MINUTES[size] * 60 * MICROS_PER_SECOND
    groups: dict[Micros, dict[str, list[float]]] = {}
    for at, _, values in entries:
        slot = groups.setdefault(at - at % step, {})
        for metric in by_key:
            value = _filtered(values.get(metric), low, high)
            if value is not None:
                slot.setdefault(metric, []).append(value)
    feed = []
    for start in sorted(groups):
        item: dict[str, Any] = {"created_at": _ts(start)}
        for metric, key in by_key.items():
            found = groups[start].get(metric)
            value = None
            if found:
                value = {
                    "timescale": found[0],
                    "sum": sum(found),
                    "average": sum(found) / len(found),
                    "median": statistics.median(found),
                }[how]
            item[key] = _text(value, decimals)
        feed.append(item)
    return feed


def _window(params: dict[str, str]) -> tuple[Micros | None, Micros | None]:
    """start/end, else minutes, else days (before now); none of them: no bound."""
    now = now_micros()
    start = _time_param(params.get("start"), "start")
    end = _time_param(params.get("end"), "end")
    if start is not None or end is not None:
        return start, end + 1 if end is not None else None  # end is inclusive
    if params.get("minutes"):
        return now - _int_param(params["minutes"], "minutes") * 60 * MICROS_PER_SECOND, None
    if params.get("days"):
        return now - _int_param(params["days"], "days") * 86_400 * MICROS_PER_SECOND, None
    return None, None


def _time_param(value: str | None, name: str) -> Micros | None:
    if not value:
        return None
    try:
        return parse_timestamp(value, name)
    except DecodeError as exc:
        raise IotpipeError(f"{exc.reason}; write it as YYYY-MM-DD HH:NN:SS") from None


def _int_param(value: str | None, name: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise IotpipeError(f"{name} must be a whole number, got {value!r}") from None
    if number < 0:
        raise IotpipeError(f"{name} must not be negative, got {number}")
    return number


def _float_param(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(str(value))
    except ValueError:
        raise IotpipeError(f"{name} must be a number, got {value!r}") from None


def _filtered(value: float | None, low: float | None, high: float | None) -> float | None:
    if value is None or (low is not None and value < low) or (high is not None and value > high):
        return None
    return value


def _text(value: float | None, decimals: int | None) -> str | None:
    """A value as ThingSpeak sends it: a string (integral numbers without a decimal point)."""
    if value is None:
        return None
    if decimals is not None:
        value = round(value, decimals)
        return f"{value:.{decimals}f}" if decimals > 0 else str(int(value))
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _ts(at: Micros) -> str:
    """ThingSpeak's created_at: UTC, whole seconds, Z."""
    return format_micros(at - at % MICROS_PER_SECOND)
