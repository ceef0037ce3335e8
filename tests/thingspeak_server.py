"""A local ThingSpeak: `GET /channels/{id}/feeds.json` (and the channel settings) as api.thingspeak.com serves them.

What it reproduces (shared/reference/thingspeak-api.md, and the open-source Rails app's
FeedFactory): the channel object (id, name, description, latitude/longitude as strings,
field1..fieldN labels of enabled fields, created_at, updated_at, last_entry_id); entries
with `created_at` to the second with `Z`, `entry_id`, and field values as strings or
null; `status` and `latitude`/`longitude`/`elevation` only when asked; `start`/`end`
(`YYYY-MM-DD HH:NN:SS`, inclusive) and `results` (at most 8000, default 100 without a
range) selecting the *most recent* entries of the window, served oldest first; `-1`
with HTTP 400 for a private channel read without its key; 404 for a missing channel.
Faults (429 + Retry-After, 5xx, slow answers, a hang) are scripted by tests, and every
request is logged with the server's own arrival time.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

DEFAULT_LIMIT = 100  # no results/start/end/days given
MAX_RESULTS = 8000
_OLD_DATA_START = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_range_time(text: str) -> int:
    """`YYYY-MM-DD HH:NN:SS` (what ThingSpeak documents for start/end), read as UTC."""
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())


@dataclass
class Entry:
    entry_id: int
    created_at: int  # epoch seconds
    fields: dict[str, str | None]  # "field1" -> "25.0" or None
    status: str | None = None
    latitude: str | None = None
    longitude: str | None = None
    elevation: str | None = None


@dataclass
class Channel:
    id: int
    name: str
    labels: dict[str, str]  # enabled fields: "field1" -> "Temperature"
    description: str = ""
    latitude: str = "0.0"
    longitude: str = "0.0"
    read_key: str | None = None  # private when set
    write_key: str = "WRITEKEY0000XYZ"
    elevation: str | None = None
    tags: list[str] = field(default_factory=list)
    created_at: int = int(datetime(2016, 2, 9, 20, 22, 23, tzinfo=UTC).timestamp())
    entries: list[Entry] = field(default_factory=list)
    _times: list[int] = field(default_factory=list)

    @property
    def last_entry_id(self) -> int | None:
        return self.entries[-1].entry_id if self.entries else None

    def add(self, created_at: int, status: str | None = None, **values: str | None) -> Entry:
        """Append an entry the way a write does: the next entry_id, fields as strings."""
        entry = Entry(
            (self.last_entry_id or 0) + 1,
            created_at,
            {key: values.get(key) for key in self.labels},
            status,
            values.get("latitude"),
            values.get("longitude"),
            values.get("elevation"),
        )
        self.entries.append(entry)
        self._times.append(created_at)
        return entry

    def add_series(self, count: int, start: int, step: int, value: Callable[[int, str], str | None]) -> None:
        """`count` entries `step` seconds apart; value(n, field) gives each field's string."""
        for n in range(count):
            self.add(start + n * step, **{key: value(n, key) for key in self.labels})

    def window(self, start: int, end: int, limit: int) -> list[Entry]:
        """Entries with start <= created_at <= end: the `limit` most recent, oldest first
        (FeedFactory: `order('created_at desc').limit(limit)`, then reversed)."""
        low = bisect.bisect_left(self._times, start)
        high = bisect.bisect_right(self._times, end)
        return self.entries[max(low, high - limit) : high]

    def settings_object(self) -> dict[str, Any]:
        """`GET /channels/{id}.json` (Read Settings, User API Key): the listing shape, with
        tags, elevation and the channel's API keys."""
        keys = [{"api_key": self.write_key, "write_flag": True}]
        if self.read_key:
            keys.append({"api_key": self.read_key, "write_flag": False})
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "created_at": iso(self.created_at),
            "elevation": self.elevation,
            "last_entry_id": self.last_entry_id,
            "public_flag": self.read_key is None,
            "url": None,
            "ranking": 50,
            "metadata": "",
            "tags": [{"id": n, "name": tag} for n, tag in enumerate(self.tags, 1)],
            "api_keys": keys,
        }

    def channel_object(self) -> dict[str, Any]:
        updated = self.entries[-1].created_at if self.entries else self.created_at
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "latitude": self.latitude,
            "longitude": self.longitude,
            **self.labels,
            "created_at": iso(self.created_at),
            "updated_at": iso(updated),
            "last_entry_id": self.last_entry_id,
        }


@dataclass
class Fault:
    """What the server does instead of (or before) answering one request."""

    status: int | None = None  # answer with this status and a ThingSpeak error body
    body: bytes | None = None  # ... or with this body
    retry_after: str | None = None  # Retry-After header (with 429)
    delay: float = 0.0  # wait this long first (a slow ThingSpeak: the client times out)
    hang: threading.Event | None = None  # wait until set (a frozen connection)
    channel: int | None = None  # only for requests of this channel


@dataclass
class Request:
    """One request as the server saw it."""

    at: float  # time.monotonic() on arrival
    channel: int | None
    params: dict[str, str]
    status: int = 0
    entry_ids: list[int] = field(default_factory=list)  # what was served

    @property
    def start(self) -> str | None:
        return self.params.get("start")

    @property
    def end(self) -> str | None:
        return self.params.get("end")


_ERROR_CODES = {
    400: ("error_bad_request", "Bad Request"),
    401: ("error_auth_required", "Authorization Required"),
    404: ("error_resource_not_found", "Resource Not Found"),
    429: ("error_too_many_requests", "Too Many Requests"),
    500: ("error_internal_server_error", "Internal Server Error"),
    502: ("error_bad_gateway", "Bad Gateway"),
    503: ("error_service_unavailable", "Service Unavailable"),
}


def error_body(status: int, details: str = "") -> bytes:
    """ThingSpeak's documented error object."""
    code, message = _ERROR_CODES.get(status, ("error_bad_request", "Bad Request"))
    return orjson.dumps(
        {"status": str(status), "error": {"error_code": code, "message": message, "details": details}}
    )


class ThingSpeakServer:
    """Runs on a free 127.0.0.1 port in a thread; use as a context manager."""

    def __init__(self) -> None:
        self.channels: dict[int, Channel] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.raw_queries: list[str] = []  # query strings as sent, for encoding checks
        self.user_api_key = "USERAPIKEY0000AB"  # the account's, for channel settings
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> ThingSpeakServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for fault in self.faults:
            if fault.hang is not None:
                fault.hang.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_channel(self, channel: Channel) -> Channel:
        self.channels[channel.id] = channel
        return channel

    def served(self, channel: int) -> list[Request]:
        """Answered requests of one channel (status 200), in order."""
        return [r for r in self.requests if r.channel == channel and r.status == 200]

    def wait_for_requests(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.requests)} requests arrived, expected {count}")
            time.sleep(0.01)

    # -- serving ------------------------------------------------------------------------
    def _take_fault(self, channel: int | None) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.channel is None or fault.channel == channel:
                    return self.faults.pop(index)
        return None

    def _answer(self, path: str, query: str) -> Iterator[tuple[int, dict[str, str], bytes]]:
        """The response for one GET (a generator so faults can wait before answering)."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "channels" and parts[1].endswith(".json"):
            parts = ["channels", parts[1].removesuffix(".json"), "settings"]
        channel_id = (
            int(parts[1]) if len(parts) == 3 and parts[0] == "channels" and parts[1].isdigit() else None
        )
        record = Request(time.monotonic(), channel_id, {k: v for k, v in params.items()})
        with self._lock:
            self.requests.append(record)
            self.raw_queries.append(query)
        fault = self._take_fault(channel_id)
        if fault is not None:
            if fault.hang is not None:
                fault.hang.wait()
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                record.status = fault.status
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                body = (
                    fault.body if fault.body is not None else error_body(fault.status, "scripted by the test")
                )
                yield fault.status, headers, body
                return
        if channel_id is None or parts[2] not in ("feeds.json", "settings"):
            record.status = 404
            yield 404, {}, error_body(404, "Please check the URL.")
            return
        channel = self.channels.get(channel_id)
        if channel is None:
            record.status = 404
            yield 404, {}, error_body(404, "Please make sure the channel ID is correct.")
            return
        if parts[2] == "settings":
            if params.get("api_key") != self.user_api_key:
                record.status = 400
                yield 400, {}, b"-1"
                return
            record.status = 200
            yield 200, {}, orjson.dumps(channel.settings_object())
            return
        if channel.read_key is not None and params.get("api_key") != channel.read_key:
            # feed_controller.rb: render :text => '-1', :status => 400 (recorded with a JSON type)
            record.status = 400
            yield 400, {}, b"-1"
            return
        entries = channel.window(*_date_range(params), _limit(params))
        record.status = 200
        record.entry_ids = [e.entry_id for e in entries]
        with_status = params.get("status") == "true"
        with_location = params.get("location") == "true"
        feeds = [_entry_object(e, with_status, with_location) for e in entries]
        yield 200, {}, orjson.dumps({"channel": channel.channel_object(), "feeds": feeds})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                for status, headers, body in server._answer(split.path, split.query):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)  # unless the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _limit(params: dict[str, str]) -> int:
    """FeedFactory.calculate_limit."""
    limit = DEFAULT_LIMIT
    if any(params.get(k) for k in ("results", "days", "start", "end")):
        limit = MAX_RESULTS
    if params.get("results") and int(params["results"]) < MAX_RESULTS:
        limit = int(params["results"])
    return limit


def _date_range(params: dict[str, str]) -> tuple[int, int]:
    """FeedHelper.get_date_range (the later version: results/start/days reach old data)."""
    now = int(time.time())
    old_data = any(params.get(k) for k in ("results", "start", "days"))
    start = _OLD_DATA_START if old_data else now - 86_400
    end = now
    if params.get("days"):
        start = now - int(params["days"]) * 86_400
    if params.get("minutes"):
        start = now - int(params["minutes"]) * 60
    if params.get("start"):
        start = parse_range_time(params["start"])
    if params.get("end"):
        end = parse_range_time(params["end"])
    if end - start > 30 * 86_400 and not old_data:
        start = end - 30 * 86_400
    return start, end


def _entry_object(entry: Entry, with_status: bool, with_location: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {"created_at": iso(entry.created_at), "entry_id": entry.entry_id, **entry.fields}
    if with_status:
        obj["status"] = entry.status
    if with_location:
        obj.update(latitude=entry.latitude, longitude=entry.longitude, elevation=entry.elevation)
    return obj
