"""Bare values (one metric per topic) and messages on topics that match no template."""

from __future__ import annotations

import pytest

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.model import InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_value = decoder_for("value")


@pytest.mark.parametrize(
    ("payload", "value"), [("21.5", 21.5), (" 47.69\n", 47.69), ("-3", -3.0), ("on", 1.0)]
)
def test_a_bare_number_is_one_reading_of_the_topics_metric(payload: str, value: float) -> None:
    messages = decode_value(raw_message(payload, device_id="shelly1", header=("temperature",)))
    assert readings_of(messages) == [("shelly1", "temperature", RECEIVED_AT, value)]


def test_text_that_is_no_number_is_an_invalid_value_of_the_metric() -> None:
    [message] = decode_value(raw_message("ERR", device_id="d", header=("temperature",)))
    assert message.readings == []
    assert message.invalid == [InvalidValue("temperature", "temperature: 'ERR' is not a number")]


@pytest.mark.parametrize(
    ("payload", "device_id", "header", "reason"),
    [
        ("21.5", "d", None, "metric missing: a bare value takes its metric from the topic"),
        ("21.5", None, ("t",), "device id (from the topic) missing"),
        ("", "d", ("t",), "payload is empty; expected a bare number such as 21.5"),
        (b"\xff\xfe", "d", ("t",), "payload is not UTF-8 text"),
    ],
)
def test_rejections_say_what_is_wrong(
    payload: str | bytes, device_id: str | None, header: tuple[str, ...] | None, reason: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_value(raw_message(payload, device_id=device_id, header=header))
    assert caught.value.reason.startswith(reason)


def test_unmatched_topic_is_rejected_naming_the_topic_and_the_templates() -> None:
    raw = raw_message(
        '{"t": 1}', format="unmatched-topic", header=("telemetry/{device_id}", "a/{device_id}=v2")
    )
    raw.origin = "telemetry/site-1/pump-7"
    with pytest.raises(DecodeError) as caught:
        decoder_for("unmatched-topic")(raw)
    assert caught.value.reason.startswith(
        "topic telemetry/site-1/pump-7 matches no template (known: telemetry/{device_id}, a/{device_id}=v2)"
    )
