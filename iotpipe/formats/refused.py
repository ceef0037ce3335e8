"""Messages their source already refused (e.g. a file line over the size limit, a row under an unusable CSV header).

The source knows why, and keeps the evidence: the reason travels in the header, so the
dead letter states it, and a replay of that dead letter states it again instead of
decoding a payload that was cut.
"""

from __future__ import annotations

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.model import DecodedMessage, RawMessage

REFUSED = "refused"


def refused(
    payload: bytes, source: str, origin: str, received_at: int, reason: str, device_id: str | None = None
) -> RawMessage:
    """A message that will be dead-lettered with `reason` (which must be printable text)."""
    return RawMessage(payload, source, origin, received_at, REFUSED, device_id, (reason,))


@register(REFUSED, internal=True)
def decode_refused(raw: RawMessage) -> list[DecodedMessage]:
    reason = raw.header[0] if raw.header else ""
    raise DecodeError(reason or "refused by its source")
