"""Validation on both engines: what one engine cannot store, or no one should see, never reaches a transaction."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from iotpipe.app.wiring import pipeline_config
from iotpipe.config import load_settings
from iotpipe.limits import Limits
from iotpipe.model import MICROS_PER_SECOND, datetime_to_micros, now_micros
from iotpipe.pipeline import Counters, Pipeline, PipelineConfig
from iotpipe.sources.files import FileSource
from iotpipe.store import Store
from iotpipe.text import printable
from tests.helpers import raw

T0 = 1_763_805_600_000_000  # 2025-11-22T10:00:00Z
T0_MS = T0 // 1000


def line(device: str = "pump-7", **fields: object) -> bytes:
    return orjson.dumps({"device_id": device, "timestamp": T0_MS, "temperature": 21.5, **fields})


def only_dead_letter(store: Store) -> str:
    [letter] = store.dead_letter_rows()
    return str(letter["reason"])


def assert_accounted(counters: Counters, received: int, dead: int) -> None:
    assert counters.accounted()
    assert counters.messages_received == received
    assert counters.messages_dead_lettered == dead
    assert counters.messages_accepted == received - dead


# JSON escapes, so each payload is valid JSON that carries the character into a string.
NUL_PAYLOADS = [
    (
        '{"device_id": "pump\\u00007", "temperature": 1}',
        "device_id 'pump\\x007' holds the control character NUL",
    ),
    (
        '{"device_id": "d", "temp\\u0000": 1}',
        "metric name 'temp\\x00' of device 'd' holds the control character NUL",
    ),
    ('{"device_id": "d", "temp\\u0000": "x", "h": 1}', "metric name 'temp\\x00' of device 'd' holds"),
    (
        '{"schema_version": 2, "device": {"id": "d"}, "readings": {"p": {"value": 1, "unit": "b\\u0000ar"}}}',
        "unit 'b\\x00ar' of 'd'/'p' holds the control character NUL",
    ),
    ('{"device_id": "d", "type": "pu\\u0000mp", "t": 1}', "device type 'pu\\x00mp' of 'd' holds NUL"),
    ('{"device_id": "d", "firmware": "1.\\u00004", "t": 1}', "device firmware '1.\\x004' of 'd' holds NUL"),
    ('{"device_id": "d", "name": "\\u0000", "t": 1}', "device name '\\x00' of 'd' holds NUL"),
    (
        '{"schema_version": 2, "device": {"id": "d", "type": "x\\u0000"}, "readings": {"p": 1}}',
        "device type 'x\\x00' of 'd' holds NUL",
    ),
    (
        '{"channel": {"id": 9, "name": "c", "description": "a\\u0000b", "field1": "t"},'
        ' "feeds": [{"created_at": "2025-11-22T10:00:00Z", "field1": "1"}]}',
        "device attribute description 'a\\x00b' of 'thingspeak-9' holds NUL",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), NUL_PAYLOADS)
def test_a_nul_in_any_stored_string_is_a_dead_letter_naming_the_field(
    store: Store, payload: str, reason: str
) -> None:
    counters = Pipeline(store).feed_all([raw(payload), raw(line("other"))])
    assert reason in only_dead_letter(store)
    assert store.raw_readings("other", "temperature") == [(T0, 21.5)]
    assert_accounted(counters, received=2, dead=1)


def test_import_of_a_thousand_lines_with_one_nul_stores_the_other_999(store: Store, tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"device_id": f"d{i % 10}", "timestamp": T0_MS + i, "t": float(i)}) for i in range(1000)
    ]
    lines[500] = b'{"device_id": "d\\u0000", "timestamp": 1763805600000, "t": 1}'
    path = tmp_path / "nul.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    counters = Pipeline(store).feed_all(FileSource([path]))
    assert counters.readings_stored == 999
    assert_accounted(counters, received=1000, dead=1)
    assert "holds the control character NUL" in only_dead_letter(store)
    assert store.stats()["readings"] == 999
    again = Pipeline(store).feed_all(FileSource([path]))  # and again: nothing doubled, no failure
    assert again.readings_stored == 0 and again.readings_duplicate == 999


def test_a_lone_surrogate_which_postgresql_refuses_is_a_dead_letter(store: Store) -> None:
    # orjson refuses the escape; the lenient parser (for NaN) accepts it; validation must not.
    counters = Pipeline(store).feed_all([raw('{"device_id": "d\\ud800", "t": 1, "x": NaN}'), raw(line())])
    assert "device_id 'd\\ud800' holds the control character a lone surrogate" in only_dead_letter(store)
    assert_accounted(counters, received=2, dead=1)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (line("pump\x1b[31m7"), "device_id 'pump\\x1b[31m7' holds the control character \\x1b at position 4"),
        (line("pump\x857"), "device_id 'pump\\x857' holds the control character \\x85"),  # C1: NEL
        (
            line(**{"temp\x1b[2J": 1.0}),
            "metric name 'temp\\x1b[2J' of device 'pump-7' holds the control character \\x1b",
        ),
        (line(**{"t\x7f": 1.0}), "holds the control character \\x7f"),
    ],
)
def test_control_characters_in_ids_and_names_are_rejected_with_an_escaped_reason(
    store: Store, payload: bytes, reason: str
) -> None:
    Pipeline(store).feed_all([raw(payload)])
    shown = only_dead_letter(store)
    assert reason in shown
    assert printable(shown) == shown  # the reason itself can be printed as it is
    assert store.stats()["devices"] == 0


def test_control_characters_in_free_text_metadata_are_kept_for_the_printer_to_escape(store: Store) -> None:
    Pipeline(store).feed_all([raw(line(name="Pump\nhall 2"))])
    [device] = store.device_rows()
    assert device["name"] == "Pump\nhall 2"


def test_printable_escapes_terminal_controls_and_bidi_overrides() -> None:
    assert printable("pump-7") == "pump-7"
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("a\x00b\x85c\ud800\u202eevil") == "a\\x00b\\x85c\\ud800\\u202eevil"
    assert printable("Küche 21°C ü") == "Küche 21°C ü"


@pytest.mark.parametrize("length", [201, 5000])
def test_an_over_long_device_id_is_a_dead_letter(store: Store, length: int) -> None:
    counters = Pipeline(store).feed_all([raw(line("d" * length)), raw(line())])
    assert "device_id is longer than 200 characters" in only_dead_letter(store)
    assert_accounted(counters, received=2, dead=1)


def test_a_lower_configured_id_length_turns_long_metric_names_into_invalid_values(store: Store) -> None:
    config = PipelineConfig(limits=Limits(max_id_length=12))
    counters = Pipeline(store, config).feed_all([raw(line(**{"a_long_metric_name": 1.0}))])
    assert store.raw_readings("pump-7", "temperature") == [(T0, 21.5)]
    assert counters.values_invalid == 1 and counters.messages_dead_lettered == 0


# -- item 2: one time range ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        (-90_000_000_000, "is in the year -882, before the earliest accepted time 1970-01-01T00:00:00Z"),
        (-1, "is 1969-12-31T23:59:59Z, before the earliest accepted time 1970-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "is in the year 1, before the earliest accepted time 1970-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59Z", "is in the year 9999, more than a day in the future"),
    ],
)
def test_times_outside_the_range_are_dead_letters_and_nothing_else_breaks(
    store: Store, timestamp: object, reason: str
) -> None:
    payload = orjson.dumps({"device_id": "d", "timestamp": timestamp, "t": 1.0})
    counters = Pipeline(store).feed_all([raw(payload), raw(line())])
    shown = only_dead_letter(store)
    assert reason in shown and "IOTPIPE_LIMITS__" in shown
    assert_accounted(counters, received=2, dead=1)
    assert store.raw_readings("pump-7", "temperature") == [(T0, 21.5)]


def test_the_earliest_time_and_the_future_tolerance_are_configurable(store: Store) -> None:
    limits = Limits(earliest_time=datetime_to_micros_iso("2025-01-01"), max_future_seconds=60)
    now = now_micros()
    counters = Pipeline(store, PipelineConfig(limits=limits)).feed_all(
        [
            raw(line(timestamp=T0_MS)),  # 2025-11-22: kept
            raw(line(timestamp=1_700_000_000_000)),  # 2023-11-14: before 2025
            raw(line(timestamp=(now + 120 * MICROS_PER_SECOND) // 1000), received_at=now),  # 2 min ahead
        ]
    )
    reasons = " | ".join(str(row["reason"]) for row in store.dead_letter_rows())
    assert "is 2023-11-14T22:13:20Z, before the earliest accepted time 2025-01-01T00:00:00Z" in reasons
    assert "more than 60 seconds in the future" in reasons
    assert_accounted(counters, received=3, dead=2)


def datetime_to_micros_iso(day: str) -> int:
    from datetime import date, datetime, time

    return datetime_to_micros(datetime.combine(date.fromisoformat(day), time()))


# -- item 5: non-finite JSON numbers are invalid values, not dead messages --------------------------
@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, "9" * 5000]
)
def test_a_non_finite_json_number_is_an_invalid_value_and_the_rest_is_kept(
    store: Store, literal: str
) -> None:
    payload = f'{{"device_id": "d", "timestamp": {T0_MS}, "bad": {literal}, "good": 2.5}}'
    counters = Pipeline(store).feed_all([raw(payload)])
    assert store.raw_readings("d", "good") == [(T0, 2.5)]
    assert store.raw_readings("d", "bad") == []
    assert counters.values_invalid == 1 and counters.messages_dead_lettered == 0
    assert store.stats()["invalid_values"] == 1


def test_python_json_dumps_output_with_nan_is_accepted(store: Store) -> None:
    import json

    payload = json.dumps({"device_id": "d", "timestamp": T0_MS, "t": float("nan"), "h": 40})
    assert "NaN" in payload
    Pipeline(store).feed_all([raw(payload)])
    assert store.raw_readings("d", "h") == [(T0, 40.0)]


# -- item 12: metrics per message ----------------------------------------------------------------
def test_a_message_over_the_metric_limit_is_dead_lettered_naming_the_setting(store: Store) -> None:
    wide = orjson.dumps({"device_id": "d", "timestamp": T0_MS, **{f"m{i}": float(i) for i in range(1001)}})
    at_limit = orjson.dumps(
        {"device_id": "e", "timestamp": T0_MS, **{f"m{i}": float(i) for i in range(1000)}}
    )
    counters = Pipeline(store).feed_all([raw(wide), raw(at_limit)])
    reason = only_dead_letter(store)
    assert "device 'd' has 1001 metrics in one message, over the limit of 1000" in reason
    assert "max_metrics_per_message" in reason and "IOTPIPE_LIMITS__MAX_METRICS_PER_MESSAGE" in reason
    assert counters.readings_stored == 1000
    assert_accounted(counters, received=2, dead=1)


def test_limits_from_the_environment_reach_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOTPIPE_LIMITS__MAX_METRICS_PER_MESSAGE", "3")
    monkeypatch.setenv("IOTPIPE_LIMITS__EARLIEST_TIME", "2000-01-01T00:00:00")
    monkeypatch.setenv("IOTPIPE_LIMITS__MAX_PAYLOAD_BYTES", "4096")
    limits = pipeline_config(load_settings()).limits
    assert limits.max_metrics_per_message == 3
    assert limits.earliest_time == 946_684_800_000_000
    assert limits.max_payload_bytes == 4096


def test_an_earliest_time_outside_what_datetime_holds_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from iotpipe.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOTPIPE_LIMITS__EARLIEST_TIME", "0001-01-01T00:00:00")
    with pytest.raises(ConfigError, match=r"limits\.earliest_time"):
        load_settings()


def test_a_device_past_its_series_limit_is_refused_with_the_setting_to_raise(store: Store) -> None:
    limits = Limits(max_series_per_device=3)
    first = raw({"device_id": "chatty", "timestamp": 1_700_000_000, "a": 1, "b": 2})
    third = raw({"device_id": "chatty", "timestamp": 1_700_000_001, "c": 3})
    fourth = raw({"device_id": "chatty", "timestamp": 1_700_000_002, "d": 4, "e": 5})
    known = raw({"device_id": "chatty", "timestamp": 1_700_000_003, "a": 6})
    Pipeline(store, PipelineConfig(limits=limits)).feed_all([first, third])
    # A new process: what the device has comes from the store.
    counters = Pipeline(store, PipelineConfig(limits=limits)).feed_all([fourth, known])
    assert (counters.messages_accepted, counters.messages_dead_lettered) == (1, 1)
    [letter] = store.dead_letter_rows()
    assert letter["reason"] == (
        "device chatty has 3 series and this message would add 2, over the limit of 3 series per device; "
        "raise it with [limits] max_series_per_device in iotpipe.toml or IOTPIPE_LIMITS__MAX_SERIES_PER_DEVICE"
    )
    stats = store.stats()
    assert stats["series"] == 3 and stats["readings"] == 4
    assert stats["dead_letters_over_limits"]["max_series_per_device"] == 1
