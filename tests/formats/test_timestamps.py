"""The one timestamp parser: ISO 8601 and epoch numbers of any unit, told apart by magnitude."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats.timestamps import epoch_to_micros, parse_timestamp
from iotpipe.model import datetime_to_micros

T = 1_763_805_600_123_456  # 2025-11-22T10:00:00.123456Z in µs


@pytest.mark.parametrize(
    "value",
    [
        "2025-11-22T10:00:00.123456Z",
        "2025-11-22T10:00:00.123456+00:00",
        "2025-11-22T11:00:00.123456+01:00",
        "2025-11-22T05:00:00.123456-05:00",
        "2025-11-22 10:00:00.123456",  # naive means UTC
        " 2025-11-22T10:00:00.123456Z ",
    ],
)
def test_iso_8601_in_any_offset_gives_the_same_instant(value: str) -> None:
    assert parse_timestamp(value) == T


def test_iso_date_without_time_is_midnight_utc() -> None:
    assert parse_timestamp("2025-11-22") == 1_763_769_600_000_000


@pytest.mark.parametrize(
    "value",
    [
        1_763_805_600,  # s
        1_763_805_600_000,  # ms
        1_763_805_600_000_000,  # µs
        1_763_805_600_000_000_000,  # ns
        "1763805600",
        "1763805600000",
        "1763805600000000000",
        1_763_805_600.0,
        "1763805600.0",
    ],
)
def test_epoch_unit_is_told_by_magnitude(value: object) -> None:
    assert parse_timestamp(value) == 1_763_805_600_000_000


def test_fractional_epoch_seconds_keep_their_microseconds() -> None:
    assert parse_timestamp(1_276_020_076.001) == 1_276_020_076_001_000
    assert parse_timestamp("1276020076.000123") == 1_276_020_076_000_123


def test_nanosecond_strings_are_exact_to_the_microsecond() -> None:
    # As a float this number would round; the parser keeps integer digits exact.
    assert parse_timestamp("1763805600123456789") == 1_763_805_600_123_456
    assert parse_timestamp(1_763_805_600_123_456_789) == 1_763_805_600_123_456


def test_millisecond_epoch_from_v2_example() -> None:
    assert parse_timestamp(1763805600123, "ts") == 1_763_805_600_123_000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "ts True is a boolean, not a timestamp"),
        ("", "ts is empty"),
        ("   ", "ts is empty"),
        ("yesterday", "ts 'yesterday' is not a valid ISO 8601 time"),
        ("2025-13-45T99:00:00Z", "is not a valid ISO 8601 time"),
        ([1, 2], "ts [1, 2] is neither ISO 8601 nor an epoch number"),
        (None, "ts None is neither ISO 8601 nor an epoch number"),
        (float("nan"), "ts nan is out of range for an epoch timestamp"),
        (float("inf"), "ts inf is out of range"),
        (1e20, "ts 1e+20 is out of range"),
        ("1e400", "ts '1e400' is out of range"),
    ],
)
def test_unusable_timestamps_are_rejected_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(DecodeError, match=r"^ts ") as caught:
        parse_timestamp(value, "ts")
    assert message in caught.value.reason


def test_huge_integers_are_out_of_range_not_a_crash() -> None:
    # Thousands of digits once escaped as ValueError/OverflowError from int()/float().
    for value in ("1" * 400, "9" * 5000, 10**400, -(10**400), "-" + "1" * 30):
        with pytest.raises(DecodeError, match="out of range"):
            parse_timestamp(value)


def test_epoch_to_micros_scales_a_known_unit() -> None:
    assert epoch_to_micros(1_276_020_076.001, 1) == 1_276_020_076_001_000
    assert epoch_to_micros(1_500, 1e-3) == 1_500_000


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none(), st.binary()))
def test_any_value_is_micros_or_a_decode_error(value: object) -> None:
    try:
        result = parse_timestamp(value)
    except DecodeError as exc:
        assert exc.reason
    else:
        assert type(result) is int


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=100_000_000_000, max_value=99_999_999_999_999))
def test_millisecond_integers_round_trip(millis: int) -> None:
    assert parse_timestamp(millis) == millis * 1000
    assert parse_timestamp(str(millis)) == millis * 1000


@settings(max_examples=200, deadline=None)
@given(st.datetimes(timezones=st.timezones()))
def test_iso_strings_round_trip_to_the_same_instant(moment: datetime) -> None:
    assert parse_timestamp(moment.isoformat()) == datetime_to_micros(moment)
