"""The file source: encodings, compression, CSV dialects, bounded memory, damaged files; on both engines."""

from __future__ import annotations

import codecs
import gzip
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import orjson
import pytest

from iotpipe.errors import TruncatedFile
from iotpipe.limits import Limits
from iotpipe.pipeline import Counters, Pipeline
from iotpipe.sources.files import FileSource
from iotpipe.store import Store

T0 = 1_763_805_600_000_000  # 2025-11-22T10:00:00Z
T0_MS = T0 // 1000
ROOT = Path(__file__).resolve().parents[2]


def v1_lines(count: int, device: str = "d") -> list[bytes]:
    return [orjson.dumps({"device_id": device, "timestamp": T0_MS + i, "t": float(i)}) for i in range(count)]


def reasons(store: Store) -> list[str]:
    return [str(row["reason"]) for row in store.dead_letter_rows()]


def imported(store: Store, *paths: Path, **source: object) -> Counters:
    counters = Pipeline(store).feed_all(FileSource(list(paths), **source))  # type: ignore[arg-type]
    assert counters.accounted()
    return counters


# -- item 8: valid input that was rejected or misreported ----------------------------------------------
def test_a_utf8_bom_on_the_first_jsonl_line_is_not_part_of_the_json(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b"\n".join(v1_lines(3)))
    counters = imported(store, path)
    assert counters.readings_stored == 3 and counters.messages_dead_lettered == 0


def test_a_quoted_newline_in_csv_is_one_record(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(
        b'timestamp,device_id,note,t\r\n2025-11-22T10:00:00Z,d,"two\r\nlines, and ""quotes""",1.5\r\n'
        b"2025-11-22T10:01:00Z,d,plain,2.5\r\n"
    )
    counters = imported(store, path)
    assert counters.messages_received == 2 and counters.messages_dead_lettered == 0
    assert store.raw_readings("d", "t") == [(T0, 1.5), (T0 + 60_000_000, 2.5)]
    assert counters.values_invalid == 2  # the note column is text, counted invalid in each row


@pytest.mark.parametrize("name", ["UPPER.JSONL.GZ", "upper.jsonl.GZ", "Upper.Jsonl"])
def test_suffixes_are_read_whatever_their_case(store: Store, tmp_path: Path, name: str) -> None:
    body = b"\n".join(v1_lines(4))
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.lower().endswith(".gz") else body)
    assert imported(store, path).readings_stored == 4


def test_gzip_is_recognised_by_its_magic_bytes_not_its_name(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "readings.jsonl"
    path.write_bytes(gzip.compress(b"\n".join(v1_lines(2))))
    assert imported(store, path).readings_stored == 2


@pytest.mark.parametrize(("delimiter", "decimal"), [(";", ","), ("\t", "."), ("|", ".")])
def test_semicolon_tab_and_pipe_delimited_csv_are_sniffed(
    store: Store, tmp_path: Path, delimiter: str, decimal: str
) -> None:
    rows = ["timestamp;device_id;temperature;humidity".replace(";", delimiter)]
    for minute in range(3):
        value = f"2{minute}{decimal}5"
        rows.append(delimiter.join([f"2025-11-22T10:0{minute}:00Z", "d", value, "40"]))
    path = tmp_path / "export.csv"
    path.write_text("\n".join(rows) + "\n")
    counters = imported(store, path)
    assert counters.messages_dead_lettered == 0
    assert store.raw_readings("d", "humidity") == [(T0 + m * 60_000_000, 40.0) for m in range(3)]
    if decimal == ".":
        assert [value for _, value in store.raw_readings("d", "temperature")] == [20.5, 21.5, 22.5]
    else:  # a decimal comma is not a number: counted invalid, and said so
        assert counters.values_invalid == 3


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_csv_with_a_byte_order_mark_is_decoded(
    store: Store, tmp_path: Path, encoding: str
) -> None:
    text = "timestamp,device_id,température\r\n2025-11-22T10:00:00Z,pompe-é,21.5\r\n"
    bom = {"utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    path = tmp_path / "excel.csv"
    path.write_bytes(bom + text.encode(encoding))
    counters = imported(store, path)
    assert counters.messages_dead_lettered == 0
    assert store.raw_readings("pompe-é", "température") == [(T0, 21.5)]


def test_a_binary_csv_is_reported_as_binary(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\n\x00\x01\x02\x03\n\xff\xfe\n")
    counters = imported(store, path)
    assert counters.messages_dead_lettered == counters.messages_received == 5  # every line: no header
    for reason in reasons(store):
        assert "the file holds NUL bytes in its first lines: it is binary" in reason
        assert "header is empty" not in reason


def test_utf16_without_a_byte_order_mark_says_so(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "nobom.csv"
    path.write_bytes("timestamp,device_id,t\n2025-11-22T10:00:00Z,d,1\n".encode("utf-16-le"))
    imported(store, path)
    assert any("UTF-16/UTF-32 without a byte-order mark" in reason for reason in reasons(store))


def test_rows_under_an_unusable_header_are_dead_letters_that_say_why(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"timestamp,device_id,t\x1b[2J\n2025-11-22T10:00:00Z,d,1\n2025-11-22T10:01:00Z,d,2\n")
    counters = imported(store, path)
    assert counters.messages_dead_lettered == 2
    assert set(reasons(store)) == {
        "CSV header: the name of column 3, 't\\x1b[2J', holds the control character \\x1b "
        "(line 1 of the file), so its rows cannot be read"
    }


def test_padded_v1_metric_keys_are_stripped(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "padded.jsonl"
    path.write_bytes(
        b'{"device_id": "d", "timestamp": %d, " temperature ": 21.5, "\\thumidity": 40}\n' % T0_MS
    )
    imported(store, path)
    assert store.raw_readings("d", "temperature") == [(T0, 21.5)]
    assert store.raw_readings("d", "humidity") == [(T0, 40.0)]


def test_a_json_array_with_nan_still_gives_one_message_per_element(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(
        b'[{"device_id": "d", "timestamp": %d, "t": NaN, "h": 1}, {"device_id": "e", "t": 2}]' % T0_MS
    )
    counters = imported(store, path)
    assert counters.messages_received == 2 and counters.values_invalid == 1
    assert store.raw_readings("d", "h") == [(T0, 1.0)]


# -- item 13: oversize input, bombs and damaged files ------------------------------------------------
def test_a_line_over_the_limit_is_refused_with_its_size_and_the_next_line_is_read(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "long.jsonl"
    good = v1_lines(2)
    path.write_bytes(good[0] + b"\n" + b"x" * 5000 + b"\n" + good[1] + b"\n")
    counters = Pipeline(store).feed_all(FileSource([path], limits=Limits(max_payload_bytes=1024)))
    assert counters.readings_stored == 2 and counters.messages_dead_lettered == 1
    [letter] = store.dead_letter_rows()
    assert letter["reason"].startswith("line is 5000 bytes, over the limit of 1024 (raise it with [limits]")
    assert letter["origin"] == f"{path}:2"
    assert bytes(letter["payload"]) == b"x" * 1024  # the evidence: its first 1024 bytes


def test_an_oversize_csv_record_is_refused_and_the_rest_read(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_bytes(
        b"timestamp,device_id,t\n2025-11-22T10:00:00Z,d," + b"9" * 3000 + b"\n2025-11-22T10:01:00Z,d,2\n"
    )
    counters = Pipeline(store).feed_all(FileSource([path], limits=Limits(max_payload_bytes=1024)))
    assert counters.readings_stored == 1
    assert reasons(store)[0].startswith("CSV record is 3023 bytes, over the limit of 1024")


def test_a_document_over_the_document_limit_is_refused_without_reading_it_all(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b",".join(v1_lines(200)) + b"]")
    counters = Pipeline(store).feed_all(FileSource([path], limits=Limits(max_document_bytes=1000)))
    assert counters.messages_dead_lettered == 1
    assert "over the limit of 1000 bytes for a whole JSON document" in reasons(store)[0]


def test_a_truncated_gzip_keeps_what_came_before_and_says_after_which_line(
    store: Store, tmp_path: Path
) -> None:
    body = b"\n".join(v1_lines(5000)) + b"\n"
    compressed = gzip.compress(body)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    pipeline = Pipeline(store)
    with pytest.raises(
        TruncatedFile, match=r"cut\.jsonl\.gz is truncated or damaged after line (\d+)"
    ) as caught:
        for message in FileSource([path]):
            pipeline.feed(message)
    pipeline.close()
    lines = int(caught.value.args[0].split("after line ")[1].split(" ")[0])
    assert 0 < lines < 5000
    # Every line read before the damage is stored; a cut last line is not a message.
    assert pipeline.counters.messages_received in (lines, lines - 1)
    assert pipeline.counters.readings_stored == pipeline.counters.messages_received
    assert "Re-import the complete file" in str(caught.value)


def test_a_damaged_gzip_is_reported_like_a_truncated_one(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(b"\n".join(v1_lines(2000))))
    compressed[len(compressed) // 2] ^= 0xFF
    path = tmp_path / "flipped.jsonl.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(TruncatedFile, match="truncated or damaged after line"):
        list(FileSource([path]))


def _peak_memory_mb(script: str, path: Path) -> tuple[float, str]:
    """Run `script` (with PATH set) in a fresh interpreter; its peak RSS in MB and its output."""
    code = (
        "import resource, sys\nPATH = sys.argv[1]\n"
        + textwrap.dedent(script)
        + ("\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    *output, peak = done.stdout.strip().splitlines()
    return float(peak), "\n".join(output)


BASELINE = """
from pathlib import Path
from iotpipe.sources.files import FileSource
from iotpipe import formats, validation
"""
READ_ALL = (
    BASELINE
    + """
messages = list(FileSource([Path(PATH)]))
print(len(messages), messages[1].format, len(messages[1].payload), messages[1].header[0][:39])
"""
)


def test_a_400_mb_line_in_a_small_gzip_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jsonl.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    chunk = b"7" * (1 << 20)
    with path.open("wb") as out:
        out.write(compressor.compress(v1_lines(1)[0] + b"\n"))
        for _ in range(400):
            out.write(compressor.compress(chunk))
        out.write(compressor.compress(b"\n" + v1_lines(1)[0] + b"\n"))
        out.write(compressor.flush())
    assert path.stat().st_size < 1_000_000
    baseline, _ = _peak_memory_mb(BASELINE, path)
    peak, output = _peak_memory_mb(READ_ALL, path)
    assert output == "3 refused 262144 line is 419430400 bytes, over the limit"
    assert peak - baseline < 50, f"reading used {peak - baseline:.0f} MB over the baseline"


def test_a_gzip_bomb_of_short_lines_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.lp.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"m,host=h v=1 1763805600000000000\n" * 30_000  # 1 MB of identical lines
    with path.open("wb") as out:
        for _ in range(50):
            out.write(compressor.compress(block))
        out.write(compressor.flush())
    count = (
        BASELINE
        + """
count = sum(1 for _ in FileSource([Path(PATH)]))
print(count)
"""
    )
    baseline, _ = _peak_memory_mb(BASELINE, path)
    peak, output = _peak_memory_mb(count, path)
    assert output == str(50 * 30_000)
    assert peak - baseline < 50
