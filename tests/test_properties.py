"""Property: whatever devices send, every message is stored or dead-lettered, the counts add up, nothing raises.

Arbitrary device ids, metric names, units, metadata strings, timestamps and values go
through the whole path (decode -> validate -> store) of a real Pipeline on both engines.
"""

from __future__ import annotations

import itertools
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.model import RawMessage
from iotpipe.pipeline import Pipeline, PipelineConfig
from iotpipe.store import Store
from iotpipe.text import CONTROL_OR_SURROGATE, printable

RECEIVED_AT = 1_763_805_600_000_000  # 2025-11-22T10:00:00Z
_origins = itertools.count()

# Any code point, lone surrogates and NUL included: what a broken or hostile device may send.
_text = st.text(st.characters(codec=None), max_size=12)
_names = st.one_of(_text, st.sampled_from(["temperature", "humidity", " padded ", "", "x" * 201]))
_timestamps = st.one_of(
    st.none(),
    st.integers(min_value=-(10**22), max_value=10**22),
    st.integers(min_value=1_000_000_000, max_value=2_000_000_000_000),  # plausible s and ms
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes().map(lambda d: d.isoformat()),
    _text,
)
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    _text,
)
_metrics = st.dictionaries(_names, _values, max_size=6)


@st.composite
def v1_payloads(draw: st.DrawFn) -> bytes:
    message: dict[str, object] = {"device_id": draw(st.one_of(_names, st.integers()))}
    timestamp = draw(_timestamps)
    if timestamp is not None:
        message["timestamp"] = timestamp
    for key in ("type", "name", "firmware"):
        if draw(st.booleans()):
            message[key] = draw(_text)
    message.update(draw(_metrics))
    return _dumps(message)


@st.composite
def v2_payloads(draw: st.DrawFn) -> bytes:
    readings = {
        name: {"value": value, "unit": draw(_text)} if draw(st.booleans()) else value
        for name, value in draw(_metrics).items()
    }
    device = {"id": draw(_names), "type": draw(_text), "firmware": draw(_text)}
    message = {"schema_version": 2, "device": device, "ts": draw(_timestamps), "readings": readings}
    return _dumps(message)


def _dumps(message: dict[str, object]) -> bytes:
    # Python's json writes NaN and Infinity and escapes lone surrogates, as devices running
    # Python do; a huge int becomes a long run of digits.
    return json.dumps(message).encode()


_payloads = st.one_of(v1_payloads(), v2_payloads(), st.binary(max_size=64))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(_payloads, min_size=1, max_size=8))
def test_every_message_is_stored_or_dead_lettered_and_the_counts_add_up(
    store: Store, payloads: list[bytes]
) -> None:
    before = store.stats()
    messages = [RawMessage(p, "property", f"case-{next(_origins)}", RECEIVED_AT) for p in payloads]
    counters = Pipeline(store, PipelineConfig(batch_size=5)).feed_all(messages)  # must not raise

    assert counters.accounted()
    assert counters.messages_received == len(payloads)
    assert counters.messages_accepted + counters.messages_dead_lettered == len(payloads)
    after = store.stats()
    assert after["readings"] - before["readings"] == counters.readings_stored
    assert after["dead_letters"] - before["dead_letters"] == counters.messages_dead_lettered  # origins differ
    for device in store.device_rows():
        assert not CONTROL_OR_SURROGATE.search(device["device_id"])
    for row in store.dead_letter_rows(limit=None):
        assert printable(str(row["reason"])) == row["reason"]  # nothing left to escape


def test_stored_values_are_finite_whatever_was_sent(store: Store) -> None:
    Pipeline(store).feed_all(
        [
            RawMessage(
                b'{"device_id": "d", "a": NaN, "b": -Infinity, "c": 1e400, "ok": 1}', "t", "o", RECEIVED_AT
            )
        ]
    )
    assert [math.isfinite(value) for _, value in store.raw_readings("d", "ok")] == [True]
    assert store.raw_readings("d", "a") == store.raw_readings("d", "c") == []


@given(st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999))
def test_a_time_in_micros_becomes_a_datetime_and_back_exactly(t: int) -> None:
    from iotpipe.model import datetime_to_micros, micros_to_datetime

    assert datetime_to_micros(micros_to_datetime(t)) == t
