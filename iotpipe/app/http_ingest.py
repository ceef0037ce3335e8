"""Readings sent over HTTP: a request body becomes messages, one pipeline commits them,
and the request is answered with what happened to them after the commit.

Every request goes through the same decoders, validation and dead-letter queue as any
source. HTTP ingest has its own pull-mode pipeline. A request is decoded into batches set
aside (`Pipeline.holding()`) under one lock, then committed under another: the next
request decodes while this one commits, as `iotpipe import` decodes a batch while the one
before is written. Commits come one request after another, so the pipeline's counters
before and after give a request its own answer, and an observer collects the reasons of
its dead letters. At most two requests hold decoded batches at once (memory stays that of
two bodies).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from iotpipe import formats
from iotpipe.app.access import AccessDenied, Principal
from iotpipe.app.bulk_import import CHUNK_LINES, BulkImport
from iotpipe.errors import DecodeError, IotpipeError, StoreError
from iotpipe.limits import DEFAULT_LIMITS, Limits
from iotpipe.model import Counters, RawMessage, WriteBatch, WriteResult, now_micros
from iotpipe.pipeline import Pipeline
from iotpipe.sources.files import LineBlock, read_body
from iotpipe.text import printable

log = logging.getLogger(__name__)

SOURCE = "http"
MAX_REJECTIONS_LISTED = 1000  # a response lists this many rejections at most (all are counted)

# Content types and the decoders they mean; `kind` says how the body splits into messages.
CONTENT_TYPES = {
    "application/json": ("json", "document"),
    "application/senml+json": ("senml", "whole"),
    "text/plain": ("lineproto", "lines"),
    "application/x-ndjson": ("json", "lines"),
    "text/csv": ("csv", "csv"),
}
# InfluxDB's `precision` values and the line-protocol decoder each selects.
PRECISION_FORMATS = {
    None: "lineproto",
    "n": "lineproto",
    "ns": "lineproto",
    "u": "lineproto_us",
    "us": "lineproto_us",
    "µ": "lineproto_us",
    "ms": "lineproto_ms",
    "s": "lineproto_s",
}


class UnsupportedContent(IotpipeError):
    """The body's content type is not one iotpipe decodes: HTTP 415."""


class _DeadLetterReasons:
    """An after-commit observer keeping the dead letters of the request being answered."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def __call__(self, batch: WriteBatch, result: WriteResult) -> None:
        for letter in batch.dead_letters:
            self.found.append((letter.raw.origin, letter.reason))


class HttpIngest:
    """The pipeline behind POST /api/v1/ingest, /api/v2/write, /write and ThingSpeak updates."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        # Lines of line protocol go to the import's columnar decoder, a body's lines at once.
        self._bulk = BulkImport(pipeline, 0)
        self.reasons = _DeadLetterReasons()
        pipeline.observers = (*pipeline.observers, self.reasons)
        self._decoding = threading.Lock()
        self._committing = threading.Lock()
        self._in_progress = threading.BoundedSemaphore(2)  # one request commits, one decodes

    def ingest(self, messages: Iterable[RawMessage | LineBlock], principal: Principal) -> dict[str, Any]:
        """Store the messages; what was accepted, stored, duplicate and rejected, and why."""
        principal.require("ingest")
        if principal.devices is not None:
            expanded = _each_message(messages)
            check_devices(expanded, principal)
            messages = expanded
        with self._in_progress:
            with self._decoding, self.pipeline.holding() as batches:
                self._bulk.feed(messages)
            with self._committing:
                before = Counters(**self.pipeline.counters.as_dict())
                self.reasons.found = []
                self._commit(batches)
                after = Counters(**self.pipeline.counters.as_dict())  # a copy: the next request counts on
                reasons = self.reasons.found
        delta = {k: v - getattr(before, k) for k, v in asdict(after).items()}
        return {
            "messages": delta["messages_received"],
            "accepted": delta["messages_accepted"],
            "rejected": delta["messages_dead_lettered"],
            "stored": delta["readings_stored"],
            "duplicates": delta["readings_duplicate"],
            "invalid": delta["values_invalid"],
            "rejections": [
                {"origin": printable(origin), "reason": printable(reason)}
                for origin, reason in reasons[:MAX_REJECTIONS_LISTED]
            ],
        }

    def _commit(self, batches: list[Any]) -> None:
        """Commit a request's batches; on a failure, drop what is left of them."""
        try:
            for batch in batches:
                self.pipeline.write_held(batch)
        except IotpipeError:
            self.pipeline.discard_failed()
            raise
        except Exception as exc:
            dropped = self.pipeline.discard_failed()
            log.error("an HTTP ingest request failed to commit (%d messages not stored): %s", dropped, exc)
            raise StoreError(
                f"the database failed ({type(exc).__name__}); what this request sent was not "
                "stored, send it again (readings already stored count as duplicates)"
            ) from exc


def _each_message(items: Iterable[RawMessage | LineBlock]) -> list[RawMessage]:
    found: list[RawMessage] = []
    for item in items:
        if isinstance(item, LineBlock):
            found.extend(item)
        else:
            found.append(item)
    return found


def check_devices(messages: list[RawMessage], principal: Principal) -> None:
    """Refuse the whole request if a message holds readings of a device the key may not
    write (decoding it here; what does not decode is left for the dead-letter queue)."""
    for raw in messages:
        try:
            decoded = formats.decode(raw)
        except DecodeError:
            continue
        for message in decoded:
            if not principal.may_write(message.device_id):
                allowed = ", ".join(principal.devices or ())
                raise AccessDenied(
                    f"key {principal.name!r} may write only for {allowed}, not for "
                    f"{printable(message.device_id)!r}; nothing of this request was stored"
                )


def body_messages(
    body: bytes,
    content_type: str | None,
    origin: str,
    device_id: str | None = None,
    precision: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[RawMessage | LineBlock]:
    """The messages a request body holds, by its content type (parameters ignored), read by
    the same rules as a file of that kind (bounded lines, CSV dialects, JSON documents);
    lines come in LineBlocks, for the columnar decoder."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        raise UnsupportedContent(
            f"content type {printable(media) or '(none)'!r} is not ingested; send one of: "
            + ", ".join(CONTENT_TYPES)
        )
    fmt, kind = CONTENT_TYPES[media]
    if fmt == "lineproto":
        if precision not in PRECISION_FORMATS:  # a bad parameter (400), not a bad body (415)
            raise IotpipeError(
                f"precision {printable(str(precision))!r} is not supported; use ns, us, ms or s"
            )
        fmt = PRECISION_FORMATS[precision]
    if kind in ("lines", "csv", "document"):
        return read_body(body, kind, SOURCE, origin, fmt, device_id, limits, CHUNK_LINES)
    return iter([RawMessage(body, SOURCE, origin, now_micros(), fmt, device_id)])
