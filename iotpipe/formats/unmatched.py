"""Dead-letters MQTT messages whose topic matched none of the configured topic templates."""

from __future__ import annotations

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.model import DecodedMessage, RawMessage

UNMATCHED_TOPIC = "unmatched-topic"


@register(UNMATCHED_TOPIC, internal=True)
def decode_unmatched_topic(raw: RawMessage) -> list[DecodedMessage]:
    # The MQTT source puts the templates in force in the header, so the reason (kept in
    # the DLQ, and given again on replay) says what the topic was compared with.
    known = ", ".join(raw.header) if raw.header else "none"
    raise DecodeError(
        f"topic {raw.origin} matches no template (known: {known}); add a template for it "
        "(--template) or narrow the subscription (--topic)"
    )
