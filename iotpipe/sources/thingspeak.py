"""ThingSpeak channels: pull feeds incrementally, politely and without loss, as raw messages.

One `ThingSpeakClient` per process talks to the REST API (one rate limiter shared by
every channel, retries with backoff and jitter, ThingSpeak's error conventions turned
into precise exceptions). One `ChannelReader` per channel walks `feeds.json` in
explicit `start`/`end` windows from its cursor (the last `entry_id` handed over and
its `created_at`) until it reaches the channel's `last_entry_id`, yielding `Page`s:
the entries as raw messages, the channel's metadata as device info, and the cursor to
commit after them. `ThingSpeakPoller` runs the readers in threads, once or every
`interval` seconds. Nothing here touches the store: callers read the stored cursor
and commit the new one through the pipeline.

Paging rule (ThingSpeak returns the *most recent* `results` entries of a window, oldest
first): a window is complete when it returned fewer than `results` entries, or when it
returned the cursor's own entry (then everything after the cursor is there). Otherwise
the window is narrowed, using the density of what came back, and asked again. Entry
ids are assumed to grow with `created_at`, as they do for every live write.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from iotpipe import __version__
from iotpipe.errors import DecodeError, IotpipeError
from iotpipe.formats.thingspeak import DEVICE_PREFIX, FIELD_KEYS, channel_info, field_labels
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.values import coordinate
from iotpipe.model import MICROS_PER_SECOND, DeviceInfo, Micros, RawMessage, format_micros, now_micros
from iotpipe.sources.base import MessageSink

log = logging.getLogger(__name__)
# httpx logs every request URL at INFO, read key included: keep it quiet.
logging.getLogger("httpx").setLevel(logging.WARNING)

SOURCE = "thingspeak"  # RawMessage.source and the watermark's source
DEFAULT_BASE_URL = "https://api.thingspeak.com"
MAX_RESULTS = 8000  # ThingSpeak's cap on `results`
# Where `--all` starts: before any live ThingSpeak data (2010), and early enough for
# history bulk-imported with older timestamps.
HISTORY_START: Micros = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * MICROS_PER_SECOND
# Windows end this far past our clock, so a ThingSpeak clock ahead of ours loses nothing.
HORIZON_MARGIN_SECONDS = 3600
# A narrowed window aims at this share of `results`: room for density to vary.
PAGE_FILL = 0.7
# Tags change rarely: read a channel's settings (one more request) at most this often.
SETTINGS_REFRESH_SECONDS = 3600.0


# -- errors ---------------------------------------------------------------------------------
class ThingSpeakError(IotpipeError):
    """ThingSpeak refused or failed a request; the message names the channel and what to do."""

    def __init__(self, channel_id: int, message: str) -> None:
        super().__init__(message)
        self.channel_id = channel_id


class ChannelNotFound(ThingSpeakError):
    """HTTP 404: no such channel."""


class AccessDenied(ThingSpeakError):
    """Body `-1` (or 401/403): the channel is private and the read key is missing or wrong."""


class RateLimited(ThingSpeakError):
    """HTTP 429 for longer than we are willing to wait."""


class ThingSpeakUnavailable(ThingSpeakError):
    """Timeouts, connection failures or 5xx, still failing after every retry."""


class UnexpectedResponse(ThingSpeakError):
    """A body that is not what ThingSpeak documents (not JSON, no channel or feeds, `0`)."""


FATAL_ERRORS = (ChannelNotFound, AccessDenied)  # retrying without a config change cannot help


class Stopped(Exception):
    """Raised inside a wait when the poller is asked to stop."""


# -- channels and cursors -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel to pull, with its read key and the account's User API Key (for its tags);
    repr hides both."""

    id: int
    read_key: str | None = field(default=None, repr=False)
    user_key: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> ChannelSpec:
        """`ID` or `ID:READ_KEY`, as `--channel` takes it."""
        ident, _, key = text.strip().partition(":")
        ident = ident.strip()
        if not (ident.isascii() and ident.isdigit()) or int(ident) < 1:
            raise IotpipeError(
                f"--channel {ident!r} is not a ThingSpeak channel id: give the number from the "
                "channel's URL, optionally followed by :READ_KEY (e.g. --channel 9 or --channel 1234:ABCD)"
            )
        return cls(int(ident), key.strip() or None)

    def redact(self, text: str) -> str:
        """`text` with the keys masked: for words that came from elsewhere (httpx)."""
        for key in (self.read_key, self.user_key):
            if key:
                text = text.replace(key, "***")
        return text

    @property
    def device_id(self) -> str:
        return f"{DEVICE_PREFIX}{self.id}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a channel resumes: the last entry handed over, and its created_at."""

    entry_id: int
    time: Micros

    def encode(self) -> str:
        return orjson.dumps({"entry_id": self.entry_id, "created_at": format_micros(self.time)}).decode()

    @classmethod
    def decode(cls, channel_id: int, value: str) -> Cursor:
        try:
            doc = orjson.loads(value)
            entry_id, created_at = doc["entry_id"], doc["created_at"]
            if isinstance(entry_id, bool) or not isinstance(entry_id, int):
                raise TypeError
            return cls(entry_id, parse_timestamp(created_at, "created_at"))
        except (orjson.JSONDecodeError, KeyError, TypeError, DecodeError):
            raise ThingSpeakError(
                channel_id,
                f"the stored cursor of ThingSpeak channel {channel_id} is unreadable ({value[:80]!r}): "
                "start it again with --all or --since",
            ) from None


# -- politeness -----------------------------------------------------------------------------
Sleep = Callable[[float], None]


class RateLimiter:
    """A token bucket shared by every channel of a process: `rate` requests per second on
    average, at most `burst` back to back; `pause()` holds everyone (after a 429)."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait until a request may be sent, then take its token."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                wait = max(self._paused_until - now, (1 - self._tokens) / self.rate)
                if wait <= 0:
                    self._tokens -= 1
                    return
            self.sleep(wait)

    @property
    def paused_until(self) -> float:
        """The clock time before which nothing is sent (0 when never paused)."""
        return self._paused_until

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (ThingSpeak's Retry-After applies to the whole client)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._tokens = min(self._tokens, 0.0)


@dataclass(frozen=True)
class ClientOptions:
    """How the client talks to ThingSpeak; defaults suit api.thingspeak.com."""

    base_url: str = DEFAULT_BASE_URL
    # ThingSpeak does not limit reads (it limits writes to one per 15 s on free plans);
    # one request a second with a small burst keeps a backfill far from being a burden.
    requests_per_second: float = 1.0
    burst: int = 2
    timeout: float = 30.0
    max_attempts: int = 5  # per request, counting the first
    backoff_base: float = 1.0  # seconds before the first retry; doubles each time
    backoff_cap: float = 60.0
    max_retry_after: float = 900.0  # a longer Retry-After fails the request instead of waiting


@dataclass(slots=True)
class Feed:
    """One feeds.json answer."""

    channel: dict[str, Any]
    entries: list[dict[str, Any]]


class ThingSpeakClient:
    """The REST API: retries, backoff, Retry-After and the error conventions; thread-safe."""

    def __init__(
        self,
        options: ClientOptions | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        check_base_url(self.options.base_url)
        self.sleep = sleep
        self.limiter = limiter or RateLimiter(
            self.options.requests_per_second, self.options.burst, sleep=sleep
        )
        self._rng = rng or random.Random()
        self._http = httpx.Client(
            base_url=self.options.base_url.rstrip("/"),
            timeout=self.options.timeout,
            transport=transport,
            headers={"User-Agent": f"iotpipe/{__version__}"},
        )

    def close(self) -> None:
        self._http.close()

    def feeds(self, channel: ChannelSpec, start: int, end: int, results: int = MAX_RESULTS) -> Feed:
        """Entries created in [start, end] (epoch seconds, inclusive): the most recent
        `results` of them, oldest first, as ThingSpeak serves them."""
        params: dict[str, str | int] = {
            "start": _thingspeak_time(start),
            "end": _thingspeak_time(end),
            "results": min(results, MAX_RESULTS),
            "timezone": "UTC",
            "status": "true",
            "location": "true",
        }
        if channel.read_key:
            params["api_key"] = channel.read_key
        doc = self._get_json(channel, f"/channels/{channel.id}/feeds.json", params)
        if not isinstance(doc, dict) or not isinstance(doc.get("channel"), dict):
            raise UnexpectedResponse(
                channel.id,
                f"ThingSpeak's answer for channel {channel.id} has no channel object: {_preview(doc)}",
            )
        entries = doc.get("feeds")
        if not isinstance(entries, list):
            raise UnexpectedResponse(
                channel.id,
                f"ThingSpeak's answer for channel {channel.id} has no feeds array: {_preview(doc)}",
            )
        return Feed(doc["channel"], [entry for entry in entries if isinstance(entry, dict)])

    def channel_settings(self, channel: ChannelSpec) -> dict[str, Any]:
        """The channel's settings (`/channels/{id}.json`, "Read Settings"), which carry its
        tags and elevation; ThingSpeak serves them only with the account's User API Key."""
        doc = self._get_json(
            channel, f"/channels/{channel.id}.json", {"api_key": channel.user_key or ""}, user_key=True
        )
        if not isinstance(doc, dict):
            raise UnexpectedResponse(
                channel.id,
                f"ThingSpeak's settings of channel {channel.id} are not an object: {_preview(doc)}",
            )
        return doc

    # -- one request, politely ------------------------------------------------------------
    def _get_json(
        self, channel: ChannelSpec, path: str, params: dict[str, str | int], user_key: bool = False
    ) -> Any:
        # ThingSpeak documents start/end as `YYYY-MM-DD%20HH:NN:SS`: keep ':' and use %20.
        url = f"{path}?{urlencode(params, quote_via=quote, safe=':')}"
        options = self.options
        attempt = 0
        while True:
            attempt += 1
            self.limiter.acquire()
            try:
                response = self._http.get(url)
            except httpx.TimeoutException:
                problem = f"no answer within {options.timeout:g}s"
            except httpx.TransportError as exc:
                # httpx's words should not carry the URL (and its key), but be sure.
                problem = channel.redact(f"connection failed ({type(exc).__name__}: {exc})")
            else:
                if response.status_code == 429:
                    self._wait_out_rate_limit(channel, response, attempt)
                    continue
                if response.status_code < 500:
                    return _parse(channel, response, options.base_url, user_key)
                problem = f"HTTP {response.status_code}"
            if attempt >= options.max_attempts:
                raise ThingSpeakUnavailable(
                    channel.id,
                    f"ThingSpeak did not answer for channel {channel.id} after {attempt} attempts "
                    f"(last: {problem}): check that {options.base_url} is reachable; the next run "
                    "resumes from the stored cursor",
                )
            delay = self._backoff(attempt)
            log.warning(
                "ThingSpeak channel %d: %s; retry %d of %d in %.1fs",
                channel.id,
                problem,
                attempt,
                options.max_attempts - 1,
                delay,
            )
            self.sleep(delay)

    def _wait_out_rate_limit(self, channel: ChannelSpec, response: httpx.Response, attempt: int) -> None:
        asked = _retry_after(response.headers.get("Retry-After"))
        wait = asked if asked is not None else self._backoff(attempt)
        if wait > self.options.max_retry_after or attempt >= self.options.max_attempts:
            raise RateLimited(
                channel.id,
                f"ThingSpeak is rate-limiting reads of channel {channel.id} (HTTP 429, retry after "
                f"{wait:.0f}s, attempt {attempt}): lower thingspeak.requests_per_second in iotpipe.toml, poll less "
                "often (--interval) or pull fewer channels from this address",
            )
        log.warning("ThingSpeak channel %d: HTTP 429, every channel waits %.1fs as asked", channel.id, wait)
        self.limiter.pause(wait)

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter: half the step fixed, half random, so clients spread out."""
        step = min(self.options.backoff_cap, self.options.backoff_base * 2 ** (attempt - 1))
        return step / 2 + self._rng.uniform(0, step / 2)


def check_base_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise IotpipeError(f"ThingSpeak base URL {url!r} must start with https:// (or http://)")


def _parse(channel: ChannelSpec, response: httpx.Response, base_url: str, user_key: bool = False) -> Any:
    """The JSON of a < 500 answer, or the ThingSpeakError its body or status means."""
    status = response.status_code
    body = response.content.strip()
    if body == b"-1" or status in (401, 403):
        if user_key:
            raise AccessDenied(
                channel.id,
                f"ThingSpeak refused the User API Key for the settings of channel {channel.id} (it "
                "answered -1): copy it from Account > My Profile into thingspeak.user_api_key (or "
                "IOTPIPE_THINGSPEAK__USER_API_KEY), or unset it to go without the channel's tags",
            )
        raise _access_denied(channel)
    if status == 404:
        raise ChannelNotFound(
            channel.id,
            f"ThingSpeak channel {channel.id} does not exist ({base_url} answered 404): check the "
            "channel id (the number in the channel's URL)",
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if status >= 400:
        raise ThingSpeakError(
            channel.id,
            f"ThingSpeak refused the read of channel {channel.id} (HTTP {status}: "
            f"{_error_text(doc, body)}); check the channel's settings and the thingspeak options in iotpipe.toml",
        )
    if body == b"0":
        raise UnexpectedResponse(
            channel.id, f"ThingSpeak answered 0, its failure code, to a read of channel {channel.id}"
        )
    if doc is None:
        raise UnexpectedResponse(
            channel.id,
            f"ThingSpeak's answer for channel {channel.id} is not JSON: {body[:80]!r}; check the base URL "
            f"{base_url}",
        )
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        raise ThingSpeakError(
            channel.id, f"ThingSpeak refused channel {channel.id}: {_error_text(doc, body)}"
        )
    return doc


def _access_denied(channel: ChannelSpec) -> AccessDenied:
    if channel.read_key:
        return AccessDenied(
            channel.id,
            f"ThingSpeak refused the read key given for channel {channel.id} (it answered -1): copy "
            "the channel's Read API Key from its API Keys tab (a Write or User key does not read feeds)",
        )
    return AccessDenied(
        channel.id,
        f"ThingSpeak channel {channel.id} is private (it answered -1 to a read without a key): give "
        f"its Read API Key as --channel {channel.id}:KEY, IOTPIPE_THINGSPEAK__READ_KEYS__{channel.id}=KEY "
        "or read_key in its entry of thingspeak.channels in iotpipe.toml",
    )


def _error_text(doc: Any, body: bytes) -> str:
    """ThingSpeak's documented error object, in words; else the start of the body."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        error = doc["error"]
        parts = [str(error.get(k)) for k in ("error_code", "message", "details") if error.get(k)]
        return " - ".join(parts) or "no details"
    return repr(body[:80]) if body else "empty body"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _thingspeak_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- one channel ----------------------------------------------------------------------------
@dataclass(slots=True)
class Page:
    """What one window adds: messages, then device info, then the cursor to commit after them."""

    channel_id: int
    messages: list[RawMessage]
    info: DeviceInfo | None  # the device record, when there is something to write
    cursor: Cursor | None  # the new resume point, None when it did not move
    entries: int  # new entries in the window
    skipped: int  # of which had no field value at all (status-only updates): nothing to store
    last_entry_id: int | None  # the channel's, as of this window

    @property
    def watermark(self) -> tuple[str, str, str] | None:
        """(source, key, value) for Pipeline.set_watermark / submit_watermark."""
        if self.cursor is None:
            return None
        return SOURCE, str(self.channel_id), self.cursor.encode()


@dataclass(slots=True)
class ChannelTotals:
    """Running totals of one channel, for summaries."""

    entries: int = 0
    skipped: int = 0
    requests: int = 0
    error: str | None = None


class ChannelReader:
    """One channel's incremental pull: windows from the cursor until the channel's last entry."""

    def __init__(
        self,
        spec: ChannelSpec,
        cursor: Cursor | None = None,
        start: Micros = HISTORY_START,
        results: int = MAX_RESULTS,
    ) -> None:
        self.spec = spec
        # Without a cursor, entry ids start at 1: cursor 0 means "nothing handed over yet".
        self.cursor = cursor or Cursor(0, start)
        self.first_entry_id = self.cursor.entry_id  # where this run started, for progress
        self.results = max(1, min(results, MAX_RESULTS))
        self.last_entry_id: int | None = None
        self.totals = ChannelTotals()
        self._channel: dict[str, Any] = {}
        self._labels: tuple[str, ...] = ("",) * len(FIELD_KEYS)
        self._position: tuple[float | None, float | None, float | None] | None = None
        self._status: dict[str, Any] | None = None
        self._info_sent: DeviceInfo | None = None
        # Where the last cut answer began (time, entry id) and its density (entries/s).
        self._cut: tuple[int, int, float] | None = None
        self._settings: dict[str, Any] = {}  # tags and elevation, from the channel's settings
        self._settings_read_at: float | None = None

    @property
    def channel_id(self) -> int:
        return self.spec.id

    def pull(self, client: ThingSpeakClient, now: Micros | None = None) -> Iterator[Page]:
        """Pages from the cursor up to `now` (default: the clock); the cursor moves as each
        page is taken, so a caller that stops early resumes from the last page it took."""
        horizon = (now if now is not None else now_micros()) // MICROS_PER_SECOND + HORIZON_MARGIN_SECONDS
        self._read_settings(client)
        start = self.cursor.time // MICROS_PER_SECOND
        end = horizon  # a poll that is up to date needs one request for the whole way
        while True:
            self.totals.requests += 1
            feed = client.feeds(self.spec, start, end, self.results)
            self._learn_channel(feed.channel)
            entries = feed.entries
            if not self._complete(entries):
                end = self._narrow(start, end, entries)
                continue
            yield self._page(entries)
            if end >= horizon or self._caught_up():
                return
            start, end = end, self._next_end(start, end, horizon, entries)

    # -- windows ------------------------------------------------------------------------
    def _complete(self, entries: list[dict[str, Any]]) -> bool:
        """Whether the window's every entry after the cursor came back (see module doc)."""
        if len(entries) < self.results:
            return True
        ids = (_entry_id(e) for e in entries)
        return any(i is not None and i <= self.cursor.entry_id for i in ids)

    def _narrow(self, start: int, end: int, entries: list[dict[str, Any]]) -> int:
        """A new end for a window that held more than `results` entries.

        ThingSpeak returned its most recent ones, `oldest` to `newest`; the entries
        between the cursor and the oldest returned id lie in [start, oldest]. Assume they
        sit right before `oldest` at the density just seen, and aim one page into them.
        """
        pairs = ((_entry_seconds(e), _entry_id(e)) for e in entries)
        timed = sorted((t, i) for t, i in pairs if t is not None and i is not None)
        if end <= start or not timed:
            raise UnexpectedResponse(
                self.channel_id,
                f"ThingSpeak channel {self.channel_id} holds more than {self.results} entries within "
                f"one second at {_thingspeak_time(start)} UTC: they cannot be paged by time",
            )
        (oldest, oldest_id), newest = timed[0], timed[-1][0]
        density = len(timed) / (newest - oldest + 1)  # entries per second
        self._cut = (oldest, oldest_id, density)
        missing = max(0, oldest_id - self.cursor.entry_id - 1)
        empty_before = max(0.0, (oldest - start) - missing / density)
        span = int(empty_before + PAGE_FILL * self.results / density)
        return start + max(0, min(span, oldest - start, end - start - 1))

    def _next_end(self, start: int, end: int, horizon: int, entries: list[dict[str, Any]]) -> int:
        """The end of the window after a complete one: one page at the density of the
        newest entries just seen, never past where an earlier answer was cut."""
        if (
            self.last_entry_id is not None
            and self.last_entry_id - self.cursor.entry_id <= PAGE_FILL * self.results
        ):
            return horizon  # the rest fits in one page
        limit = horizon
        if self._cut is not None and self._cut[0] > end:
            cut_time, cut_id, cut_density = self._cut
            before_cut = cut_id - self.cursor.entry_id - 1  # known exactly
            if before_cut <= PAGE_FILL * self.results:  # fill the page with what follows the cut
                return min(horizon, cut_time + int((PAGE_FILL * self.results - before_cut) / cut_density))
            limit = cut_time  # past it the answer would be cut again
        else:
            self._cut = None
        times = sorted(t for t in (_entry_seconds(e) for e in entries) if t is not None)
        if times:
            newest_half = times[len(times) // 2 :]  # a window may end where the density changes
            span = PAGE_FILL * self.results * (end - newest_half[0] + 1) / len(newest_half)
        else:
            span = max(3600.0, (end - start) * 8.0)  # nothing here: stride on
        return min(limit, end + max(1, int(span)))

    def _read_settings(self, client: ThingSpeakClient) -> None:
        """Tags and elevation, with a User API Key, at most once per SETTINGS_REFRESH_SECONDS;
        they are metadata, so failing to read them costs only them."""
        if not self.spec.user_key:
            return
        if (
            self._settings_read_at is not None
            and time.monotonic() - self._settings_read_at < SETTINGS_REFRESH_SECONDS
        ):
            return
        self._settings_read_at = time.monotonic()
        self.totals.requests += 1
        try:
            settings = client.channel_settings(self.spec)
        except ThingSpeakError as exc:
            log.warning("%s; going on without the channel's tags", exc)
            return
        self._settings = {key: settings[key] for key in ("tags", "elevation") if key in settings}

    def _caught_up(self) -> bool:
        return self.last_entry_id is not None and self.cursor.entry_id >= self.last_entry_id

    # -- entries and metadata -----------------------------------------------------------
    def _learn_channel(self, channel: dict[str, Any]) -> None:
        self._channel = channel
        self._labels = field_labels(channel)
        last = channel.get("last_entry_id")
        if isinstance(last, int) and not isinstance(last, bool):
            self.last_entry_id = last

    def _page(self, entries: list[dict[str, Any]]) -> Page:
        received_at = now_micros()
        # An entry without an entry_id cannot be placed by the cursor: hand it over each
        # time it is served (the store keeps its readings once) rather than drop it.
        after = self.cursor.entry_id
        fresh = [e for e in entries if (_entry_id(e) or after + 1) > after]
        fresh.sort(key=lambda e: _entry_id(e) or 0)
        messages: list[RawMessage] = []
        skipped = 0
        cursor = self.cursor
        for entry in fresh:
            entry_id = _entry_id(entry)
            self._note_status_and_position(entry)
            if any(entry.get(key) is not None for key in FIELD_KEYS):
                messages.append(
                    RawMessage(
                        orjson.dumps(entry),
                        SOURCE,
                        f"channel {self.channel_id} entry {entry.get('entry_id') if entry_id is None else entry_id}",
                        received_at,
                        format=SOURCE,
                        device_id=self.spec.device_id,
                        header=self._labels,
                    )
                )
            else:
                skipped += 1
            created = _entry_seconds(entry)
            if entry_id is not None:
                cursor = Cursor(entry_id, cursor.time if created is None else created * MICROS_PER_SECOND)
        moved = cursor != self.cursor
        self.cursor = cursor
        self.totals.entries += len(fresh)
        self.totals.skipped += skipped
        info = self.device_info()
        if not messages and info == self._info_sent:
            info_out = None
        else:
            info_out = self._info_sent = info
        return Page(
            self.channel_id,
            messages,
            info_out,
            cursor if moved else None,
            len(fresh),
            skipped,
            self.last_entry_id,
        )

    def device_info(self) -> DeviceInfo:
        """The channel's metadata as the device record, with its latest position and status."""
        info = channel_info({**self._channel, **self._settings}, self._labels)
        attributes = dict(info.attributes or {})
        attributes["channel_id"] = self.channel_id
        if self._status is not None:
            attributes.update(self._status)
        if self._position is not None:
            latitude, longitude, elevation = self._position
            info = dataclasses.replace(
                info,
                latitude=latitude if latitude is not None else info.latitude,
                longitude=longitude if latitude is not None else info.longitude,
                elevation=elevation if elevation is not None else info.elevation,
            )
        return dataclasses.replace(info, attributes=attributes)

    def _note_status_and_position(self, entry: dict[str, Any]) -> None:
        status = entry.get("status")
        if isinstance(status, str) and status.strip():
            self._status = {
                "status": status,
                "status_at": entry.get("created_at"),
                "status_entry": entry.get("entry_id"),
            }
        latitude = coordinate(entry.get("latitude"), 90.0)
        longitude = coordinate(entry.get("longitude"), 180.0)
        if latitude is None or longitude is None or (latitude == 0.0 and longitude == 0.0):
            latitude = longitude = None  # as the decoder: half a position, or 0/0, is none
        elevation = coordinate(entry.get("elevation"), 100_000.0)
        if latitude is not None or elevation is not None:
            self._position = (latitude, longitude, elevation)


def _entry_id(entry: dict[str, Any]) -> int | None:
    value = entry.get("entry_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entry_seconds(entry: dict[str, Any]) -> int | None:
    try:
        return parse_timestamp(entry.get("created_at"), "created_at") // MICROS_PER_SECOND
    except DecodeError:
        return None


def parse_start(text: str, what: str = "--since") -> Micros:
    try:
        return parse_timestamp(text, what)
    except DecodeError as exc:
        raise IotpipeError(f"{exc.reason}: give a time like 2024-01-31T00:00:00Z") from None


# -- running channels -----------------------------------------------------------------------
Deliver = Callable[[ChannelReader, Page], None]


class ThingSpeakPoller:
    """Pulls each channel in its own thread through one client, once or every `interval` s.

    `deliver` gets every page in order (messages, then info, then cursor) from the
    channel's thread; `caught_up` is called when a channel has nothing more for now.
    """

    def __init__(
        self,
        readers: list[ChannelReader],
        options: ClientOptions,
        deliver: Deliver,
        *,
        interval: float = 60.0,
        once: bool = False,
        caught_up: Callable[[ChannelReader], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.readers = readers
        self.interval = interval
        self.once = once
        self._deliver = deliver
        self._caught_up = caught_up
        self._stop = threading.Event()
        self.client = ThingSpeakClient(options, transport=transport, sleep=self._sleep)
        self._threads: list[threading.Thread] = []

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped

    def start(self) -> None:
        for reader in self.readers:
            thread = threading.Thread(
                target=self._run, args=(reader,), name=f"iotpipe-thingspeak-{reader.channel_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the channel threads (they end by themselves with `once`); True if all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the page in hand is delivered; waits at most `timeout` for a slow request."""
        self._stop.set()
        if self.join(self.client.options.timeout + 5 if timeout is None else timeout):
            self.client.close()  # a thread still in a request would fail on a closed client

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self, reader: ChannelReader) -> None:
        while not self._stop.is_set():
            try:
                for page in reader.pull(self.client):
                    self._deliver(reader, page)
                    if self._stop.is_set():
                        return
                reader.totals.error = None
                if self._caught_up is not None:
                    self._caught_up(reader)
            except Stopped:
                return
            except FATAL_ERRORS as exc:
                reader.totals.error = str(exc)
                if not self.once:  # with `once` the caller reports it
                    log.error("%s; this channel is not polled again until restarted", exc)
                return
            except ThingSpeakError as exc:
                reader.totals.error = str(exc)
                if self.once:
                    return
                log.warning("%s; trying again in %gs", exc, self.interval)
            except Exception:  # a bug must not silently end the channel's polling
                log.exception("ThingSpeak channel %d failed unexpectedly", reader.channel_id)
                reader.totals.error = f"channel {reader.channel_id} failed unexpectedly (see the log)"
                if self.once:
                    return
            if self.once or self._stop.wait(self.interval):
                return


def submit_page(target: MessageSink, page: Page) -> None:
    """Push mode: queue the page's messages, then its device info, then its cursor."""
    for raw in page.messages:
        target.submit(raw)
    if page.info is not None:
        target.submit_device_info(f"{DEVICE_PREFIX}{page.channel_id}", page.info)
    if page.watermark is not None:
        target.submit_watermark(*page.watermark)


class ThingSpeakSource:
    """ThingSpeak channels as a source: every channel polled every `interval` seconds, or
    caught up with once (`once`), each page queued with its cursor behind its messages."""

    name = "thingspeak"
    ack_window: int | None = None  # nothing to acknowledge

    def __init__(
        self,
        readers: list[ChannelReader],
        options: ClientOptions,
        interval: float,
        *,
        once: bool = False,
        on_page: Callable[[ChannelReader], None] | None = None,
        caught_up: Callable[[ChannelReader], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        check_base_url(options.base_url)  # now, not once `iotpipe run` has started
        self.readers = readers
        self.options = options
        self.interval = interval
        self.once = once
        self._on_page = on_page
        self._caught_up = caught_up
        self._transport = transport
        self._poller: ThingSpeakPoller | None = None

    def start(self, sink: MessageSink) -> None:
        def deliver(reader: ChannelReader, page: Page) -> None:
            submit_page(sink, page)
            # A page is the unit of progress: it is committed with its cursor before the
            # next is fetched, so a pull stopped by any means resumes after it.
            committed = sink.commit_point()
            while not committed.wait(1.0):
                if self._poller is None or self._poller.stopping:
                    return
            if self._on_page is not None:
                self._on_page(reader)

        self._poller = ThingSpeakPoller(
            self.readers,
            self.options,
            deliver,
            interval=self.interval,
            once=self.once,
            caught_up=self._caught_up,
            transport=self._transport,
        )
        self._poller.start()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    def finished(self) -> bool:
        return self._poller is not None and self.once and self._poller.join(timeout=0)

    def describe(self) -> str:
        channels = ", ".join(str(r.channel_id) for r in self.readers)
        if self.once:
            return f"ThingSpeak: pulling channel(s) {channels} from {self.options.base_url} once."
        return (
            f"ThingSpeak: polling channel(s) {channels} at {self.options.base_url} every {self.interval:g}s."
        )
