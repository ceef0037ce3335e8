"""CSV rows: wide and long layouts told apart by the header, quoting, and header parsing."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decoder_for
from iotpipe.formats.csv import split_header
from iotpipe.model import DecodedMessage, InvalidValue

from .support import RECEIVED_AT, raw_message, readings_of

decode_csv = decoder_for("csv")
T = 1_795_341_600_000_000  # 2026-11-22T10:00:00Z


def row(line: str, header: str, device_id: str | None = None) -> list[DecodedMessage]:
    return decode_csv(raw_message(line, header=split_header(header.encode()), device_id=device_id))


def test_wide_row_gives_one_reading_per_metric_column() -> None:
    messages = row("2026-11-22T10:00:00Z,pump-7,21.5,40", "timestamp,device_id,temperature,humidity")
    assert readings_of(messages) == [("pump-7", "temperature", T, 21.5), ("pump-7", "humidity", T, 40.0)]


def test_long_row_gives_one_reading() -> None:
    messages = row("2026-11-22T10:00:00Z,pump-7,pressure,3.2,bar", "time,device_id,metric,value,unit")
    assert readings_of(messages) == [("pump-7", "pressure", T, 3.2)]
    assert messages[0].units == {"pressure": "bar"}


def test_single_device_export_with_a_value_column_names_the_metric_value() -> None:
    messages = row("1795341600,12.5", "timestamp,value", device_id="meter-1")
    assert readings_of(messages) == [("meter-1", "value", T, 12.5)]


def test_long_layout_takes_the_device_from_the_source_when_there_is_no_column() -> None:
    messages = row("1795341600000,flow,7", "ts,metric,value", device_id="pump-9")
    assert readings_of(messages) == [("pump-9", "flow", T, 7.0)]


@pytest.mark.parametrize("time_column", ["timestamp", "Time", "TS", "created_at", "DateTime", "date"])
def test_time_column_names_are_recognised_case_insensitively(time_column: str) -> None:
    messages = row("2026-11-22T10:00:00Z,1", f"{time_column},x", device_id="d")
    assert readings_of(messages) == [("d", "x", T, 1.0)]


def test_first_time_column_wins_and_the_others_are_not_metrics() -> None:
    messages = row("2026-11-22,2026-11-22T10:00:00Z,1", "date,timestamp,x", device_id="d")
    assert readings_of(messages) == [("d", "x", T, 1.0)]


def test_no_time_column_means_receipt_time() -> None:
    assert readings_of(row("5", "x", device_id="d")) == [("d", "x", RECEIVED_AT, 5.0)]


def test_quoted_cells_with_commas_and_quotes_are_split_by_the_csv_rules() -> None:
    messages = row('2026-11-22T10:00:00Z,"pump, ""north""",1', "timestamp,device_id,x")
    assert messages[0].device_id == 'pump, "north"'


def test_empty_cells_are_missing_and_text_cells_are_invalid() -> None:
    [message] = row("2026-11-22T10:00:00Z,,n/a,3", "timestamp,a,b,c", device_id="d")
    assert message.readings == [("c", T, 3.0)]
    assert message.invalid == [InvalidValue("b", "b: 'n/a' is not a number")]


def test_entry_id_and_unnamed_columns_are_not_metrics() -> None:
    messages = row("2016-02-09T20:25:53Z,1,9.2,", "created_at,entry_id,cpu_pc,", device_id="thingspeak-86945")
    assert readings_of(messages) == [("thingspeak-86945", "cpu_pc", 1_455_049_553_000_000, 9.2)]


def test_empty_device_cell_falls_back_to_the_source_device() -> None:
    messages = row("2026-11-22T10:00:00Z,,1", "timestamp,device_id,x", device_id="d")
    assert messages[0].device_id == "d"


def test_crlf_row_ending_is_ignored() -> None:
    assert readings_of(row("5\r\n", "x", device_id="d")) == [("d", "x", RECEIVED_AT, 5.0)]


@pytest.mark.parametrize(
    ("line", "header", "device_id", "message"),
    [
        ("1,2", "timestamp,x,y", "d", r"^CSV row has 2 columns, the header has 3$"),
        ("", "timestamp,x", "d", r"^CSV row has 1 column, the header has 2$"),
        ("1,2,3", "x,y", "d", r"^CSV row has 3 columns, the header has 2$"),
        (
            "2026-11-22,1",
            "timestamp,x",
            None,
            r"^device_id missing: the CSV has no device_id \(or device\) column.*--device NAME",
        ),
        ("2026-11-22,,1", "timestamp,device_id,x", None, r"^device_id missing$"),
        ("soon,1", "timestamp,x", "d", r"^timestamp 'soon' is not a valid ISO 8601 time$"),
        (",1", "Time,x", "d", r"^Time is empty$"),
        ("2026-11-22,,1", "timestamp,metric,value", "d", r"^metric '' is not a metric name$"),
        ("2026-11-22", "timestamp", "d", r"^CSV header has no metric columns"),
        ('"open,1', "x,y", "d", r"^CSV row is not valid CSV"),
        ('1,"a"\n2,"b"', "x,y", "d", r"^CSV row holds 2 CSV rows, expected one$"),
    ],
)
def test_unusable_rows_are_rejected(line: str, header: str, device_id: str | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        row(line, header, device_id)


def test_row_without_header_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"^CSV row without a header"):
        decode_csv(raw_message("1,2", device_id="d"))


def test_non_utf8_row_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"^CSV row is not valid UTF-8 \(bad byte at offset 0\)$"):
        decode_csv(raw_message(b"\xff,1", header=("x", "y"), device_id="d"))


def test_split_header_strips_bom_whitespace_and_line_ending() -> None:
    assert split_header(b'\xef\xbb\xbftimestamp, temperature ,"Humidity, %"\r\n') == (
        "timestamp",
        "temperature",
        "Humidity, %",
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", r"^CSV header is empty$"),
        (b" , ,\n", r"^CSV header is empty$"),
        (b"\xef\xbb\xbf\r\n", r"^CSV header is empty$"),
        (b"a,b,a", r"^CSV header repeats the column 'a'$"),
        (b"a,\xff", r"^CSV header is not valid UTF-8 \(bad byte at offset 2\); save the file as UTF-8"),
    ],
)
def test_unusable_headers_are_rejected(line: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        split_header(line)


# Control characters make a header unusable (see test_files.py): names here are printable.
_column = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=12).filter(
    lambda c: (
        c.strip() == c
        and c.lower()
        not in {
            "timestamp",
            "time",
            "ts",
            "created_at",
            "datetime",
            "date",
            "device_id",
            "device",
            "entry_id",
            "metric",
            "value",
        }
    )
)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    columns=st.lists(_column, min_size=1, max_size=6, unique=True),
    data=st.data(),
    seconds=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_generated_wide_rows_written_by_the_csv_module_decode_back(
    columns: list[str], data: st.DataObject, seconds: int
) -> None:
    values = [data.draw(_finite) for _ in columns]
    header_io, row_io = io.StringIO(), io.StringIO()
    csv.writer(header_io).writerow(["timestamp", *columns])
    csv.writer(row_io).writerow([seconds, *(repr(v) for v in values)])
    header = split_header(header_io.getvalue().encode())
    messages = decode_csv(raw_message(row_io.getvalue(), header=header, device_id="d"))
    assert readings_of(messages) == [
        ("d", column, seconds * 1_000_000, value) for column, value in zip(columns, values, strict=True)
    ]


def test_a_row_holding_a_nul_byte_is_refused_saying_so() -> None:
    with pytest.raises(DecodeError, match=r"CSV row holds a NUL byte \(at offset 3\): the record is damaged"):
        row("179\x005341600,12.5", "timestamp,value", device_id="meter-1")
