"""CSV: one data row per message, its meaning fixed by the file's header (raw.header).

Two layouts, told apart by the header's column names (case-insensitive):

* long — has `metric` and `value` columns: one reading per row, plus an optional `unit`
  column; other columns are ignored.
* wide — every column that is not the time, device or an ignored column is a metric,
  named by its header text as written (stripped). A single device's export
  `timestamp,value` gives the metric `value`.

The time column is the first of TIME_COLUMNS present; other time-named columns are ignored.
With no time column the row takes the receipt time; an empty time cell is a DecodeError.
The device comes from a `device_id` (or `device`) column, else the source (`--device`).
Columns with an empty name (a trailing comma in the header) are ignored.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.formats.values import check_device_id, check_metric_name, coerce_value, unusable_metric_name
from iotpipe.model import DecodedMessage, InvalidValue, RawMessage
from iotpipe.text import CONTROL_OR_SURROGATE, describe_character, printable

TIME_COLUMNS = ("timestamp", "time", "ts", "created_at", "datetime", "date")  # by precedence
DEVICE_COLUMNS = ("device_id", "device")
IGNORED_COLUMNS = frozenset({"entry_id"})  # ThingSpeak CSV exports number their rows
# The delimiters a file source tells apart, each with its decoder's name.
CSV_DELIMITERS = {",": "csv", ";": "csv-semicolon", "\t": "csv-tab", "|": "csv-pipe"}
_DELIMITER = {fmt: delimiter for delimiter, fmt in CSV_DELIMITERS.items()}


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where things are in a row; computed once per header."""

    width: int
    time: int | None
    time_name: str
    device: int | None
    metric: int | None  # long layout only
    value: int | None  # long layout only
    unit: int | None  # long layout only
    metrics: tuple[tuple[int, str], ...]  # wide layout: (column, metric name)
    bad_names: tuple[InvalidValue, ...]  # wide layout: metric columns that cannot be names


def split_header(line: bytes, fmt: str = "csv") -> tuple[str, ...]:
    """The column names of a CSV header row (BOM and surrounding whitespace removed)."""
    if b"\x00" in line:
        raise DecodeError(
            "CSV header holds NUL bytes: the file is binary, or UTF-16/UTF-32 without a byte-order "
            "mark; save it as UTF-8"
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"CSV header is not valid UTF-8 (bad byte at offset {exc.start}); save the file as UTF-8 "
            "(or UTF-16 with a byte-order mark)"
        ) from None
    cells = _split(text.removeprefix("\ufeff"), "CSV header", _DELIMITER[fmt])
    names = tuple(cell.strip() for cell in cells)
    if not any(names):
        raise DecodeError("CSV header is empty")
    seen: set[str] = set()
    for column, name in enumerate(names, 1):
        if name in seen and name:
            raise DecodeError(f"CSV header repeats the column '{printable(name)}'")
        seen.add(name)
        control = CONTROL_OR_SURROGATE.search(name)
        if control is not None:
            raise DecodeError(
                f"CSV header: the name of column {column}, '{printable(name)[:40]}', holds the control "
                f"character {describe_character(control.group())}"
            )
    return names


def decode_csv(raw: RawMessage, delimiter: str = ",") -> list[DecodedMessage]:
    if raw.header is None:
        raise DecodeError("CSV row without a header: the source must give the column names")
    layout = _layout(raw.header, raw.device_id is not None)
    nul = raw.payload.find(b"\x00")
    if nul >= 0:  # no CSV text holds one: the record is damaged (the others are not)
        raise DecodeError(f"CSV row holds a NUL byte (at offset {nul}): the record is damaged, not text")
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"CSV row is not valid UTF-8 (bad byte at offset {exc.start})") from None
    cells = _split(text, "CSV row", delimiter)
    if len(cells) != layout.width:
        got = f"{len(cells)} column" + ("" if len(cells) == 1 else "s")
        raise DecodeError(f"CSV row has {got}, the header has {layout.width}")

    if layout.device is None:
        device_id = check_device_id(raw.device_id)
    else:
        device_id = check_device_id(cells[layout.device] or raw.device_id, "device_id")
    time = raw.received_at if layout.time is None else parse_timestamp(cells[layout.time], layout.time_name)

    if layout.metric is not None and layout.value is not None:
        metric = check_metric_name(cells[layout.metric], "metric")
        message = DecodedMessage(device_id, [])
        _add(message, metric, time, coerce_value(metric, cells[layout.value]))
        if layout.unit is not None and message.readings and cells[layout.unit].strip():
            message.units[metric] = cells[layout.unit].strip()
        return [message]

    readings: list[tuple[str, int, float]] = []
    invalid = list(layout.bad_names)
    for column, metric in layout.metrics:
        value = coerce_value(metric, cells[column])
        if type(value) is float:
            readings.append((metric, time, value))
        elif value is not None:
            invalid.append(value)  # type: ignore[arg-type]
    return [DecodedMessage(device_id, readings, invalid=invalid, time=time)]


def _register_dialect(fmt: str, delimiter: str) -> None:
    register(fmt)(lambda raw: decode_csv(raw, delimiter))


for _delimiter, _format in CSV_DELIMITERS.items():
    _register_dialect(_format, _delimiter)


def _add(message: DecodedMessage, metric: str, time: int, value: float | InvalidValue | None) -> None:
    if type(value) is float:
        message.readings.append((metric, time, value))
    elif value is not None:
        message.invalid.append(value)  # type: ignore[arg-type]


def _split(text: str, what: str, delimiter: str) -> list[str]:
    text = text.rstrip("\r\n")
    # Most rows hold no quotes: a plain split is what the csv module would return, faster.
    if '"' not in text and "\n" not in text and "\r" not in text:
        return text.split(delimiter)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise DecodeError(f"{what} is not valid CSV: {exc}") from None
    if len(rows) != 1:
        raise DecodeError(f"{what} holds {len(rows)} CSV rows, expected one")
    return rows[0]


@lru_cache(maxsize=256)
def _layout(header: tuple[str, ...], source_names_device: bool) -> _Layout:
    names = [name.strip() for name in header]
    lowered = [name.lower() for name in names]
    positions = {name: column for column, name in enumerate(lowered) if name}
    if not positions:
        raise DecodeError("CSV header is empty")

    time = next((positions[name] for name in TIME_COLUMNS if name in positions), None)
    device = next((positions[name] for name in DEVICE_COLUMNS if name in positions), None)
    if device is None and not source_names_device:
        raise DecodeError(
            "device_id missing: the CSV has no device_id (or device) column and its source names no "
            "device; give one (iotpipe import --device NAME, or ?device_id=NAME on the HTTP API)"
        )
    time_name = names[time] if time is not None else ""

    if "metric" in positions and "value" in positions:
        return _Layout(
            len(names),
            time,
            time_name,
            device,
            positions["metric"],
            positions["value"],
            positions.get("unit"),
            (),
            (),
        )

    not_metrics = set(TIME_COLUMNS) | set(DEVICE_COLUMNS) | IGNORED_COLUMNS
    metrics: list[tuple[int, str]] = []
    bad_names: list[InvalidValue] = []
    for column, name in enumerate(names):
        if not name or lowered[column] in not_metrics:
            continue
        problem = unusable_metric_name(name, f"column {column + 1}")
        if problem is None:
            metrics.append((column, name))
        else:
            bad_names.append(problem)
    if not metrics and not bad_names:
        raise DecodeError("CSV header has no metric columns (and no metric/value columns)")
    return _Layout(len(names), time, time_name, device, None, None, None, tuple(metrics), tuple(bad_names))
