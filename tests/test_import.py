"""`iotpipe import` of mixed files, on both engines: exact counts, DLQ reasons, re-import."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iotpipe.store import open_store

T = "2026-11-22T10:00:00Z"

# Each valid line with the readings it holds.
VALID_LINES = [
    (json.dumps({"device_id": "pump-7", "timestamp": T, "temperature": 21.5, "humidity": 40}), 2),
    (
        json.dumps(
            {
                "schema_version": 2,
                "device": {
                    "id": "pump-8",
                    "type": "pump",
                    "firmware": "1.4.0",
                    "location": {"lat": 42.79, "lon": -86.1},
                },
                "ts": 1763805600123,
                "readings": {"temperature": 21.5, "pressure": {"value": 3.2, "unit": "bar"}},
            }
        ),
        2,
    ),
    # RFC 8428's own example: a voltage and six currents.
    (
        '[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V",'
        '"v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3},{"n":"current","t":-3,"v":1.4},'
        '{"n":"current","t":-2,"v":1.5},{"n":"current","t":-1,"v":1.6},{"n":"current","v":1.7}]',
        7,
    ),
    ("weather,device_id=ws-1,location=us-midwest temperature=82,humidity=40i 1465839830100400200", 2),
    ("cpu,cpu=cpu0,host=loaner time_idle=1527035.04,time_user=154324.34 1568760922000000000", 2),
]
PARTLY_INVALID = (
    json.dumps({"device_id": "pump-9", "timestamp": T, "temperature": 19.0, "humidity": "wet"}),
    1,
)
# Each malformed line with a fragment of the reason it must be dead-lettered with.
MALFORMED_LINES = [
    ('{"device_id": "broken", "temp', "payload is not valid JSON"),
    (json.dumps({"timestamp": T, "temperature": 20}), "device_id missing"),
    (json.dumps({"device_id": "bad-time", "timestamp": "yesterday", "t": 1}), "timestamp 'yesterday'"),
    (
        json.dumps({"device_id": "future", "timestamp": "2999-01-01T00:00:00Z", "t": 1}),
        "more than a day in the future",
    ),
    (json.dumps({"device_id": "no-metric", "temperature": "abc"}), "no valid metric: temperature"),
    (json.dumps({"schema_version": 7, "device": {"id": "v7"}}), "schema_version 7 is not supported"),
    ('[{"bn":"urn:dev:x:","n":"t","vs":"hot"}]', "no valid metric"),
    ("weather,device_id=lp-bad temperature= 1465839830100400200", "field 'temperature='"),
]
CSV_TEXT = (
    "timestamp,device_id,temperature,humidity\n"
    "2026-11-22T10:00:00Z,tank-1,18.5,61\n"
    "2026-11-22T10:05:00Z,tank-1,18.7,60\n"
    "2026-11-22T10:05:00Z,tank-1,18.7,60\n"  # duplicate row
    "2026-11-22T10:10:00Z,tank-1,18.9\n"  # a column short
    "not-a-time,tank-1,19.0,59\n"
)


def write_mixed(tmp_path: Path) -> tuple[Path, Path]:
    lines = [line for line, _ in VALID_LINES] + [VALID_LINES[0][0], PARTLY_INVALID[0]]
    lines += [line for line, _ in MALFORMED_LINES]
    jsonl = tmp_path / "mixed.jsonl.gz"
    with gzip.open(jsonl, "wt") as fh:
        fh.write("\n".join(lines) + "\n\n")
    csv_path = tmp_path / "tank.csv"
    csv_path.write_text(CSV_TEXT)
    return jsonl, csv_path


def iotpipe(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotpipe", "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_mixed_import_gives_exact_counts_and_reasons(database_url: str, tmp_path: Path) -> None:
    jsonl, csv_path = write_mixed(tmp_path)
    result = iotpipe("import", str(jsonl), str(csv_path), "--json", database_url=database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    expected_stored = sum(n for _, n in VALID_LINES) + PARTLY_INVALID[1] + 4  # + CSV: 2 rows × 2
    csv_dead = 2
    assert summary == {
        "messages": len(VALID_LINES) + 2 + len(MALFORMED_LINES) + 5,
        "stored": expected_stored,
        "duplicates": 2 + 2,  # the repeated V1 line and the repeated CSV row
        "invalid": 1,
        "dead_lettered": len(MALFORMED_LINES) + csv_dead,
    }
    store = open_store(database_url)
    stats = store.stats()
    assert stats["readings"] == expected_stored
    assert stats["dead_letters"] == len(MALFORMED_LINES) + csv_dead
    # Dead-lettered messages create no device.
    device_ids = {d["device_id"] for d in store.device_rows()}
    assert device_ids == {
        "pump-7",
        "pump-8",
        "pump-9",
        "urn:dev:ow:10e2073a01080063",
        "ws-1",
        "loaner",
        "tank-1",
    }

    letters = store.dead_letter_rows()
    for (line, reason), letter in zip(MALFORMED_LINES, letters, strict=False):
        assert reason in letter["reason"], (line, letter["reason"])
        assert bytes(letter["payload"]).decode() == line
    line_numbers = [int(letter["origin"].rsplit(":", 1)[1]) for letter in letters[: len(MALFORMED_LINES)]]
    assert line_numbers == list(range(len(VALID_LINES) + 3, len(VALID_LINES) + 3 + len(MALFORMED_LINES)))
    csv_letters = letters[len(MALFORMED_LINES) :]
    assert [letter["origin"] for letter in csv_letters] == [f"{csv_path}:5", f"{csv_path}:6"]
    assert "CSV row has 3 columns, the header has 4" in csv_letters[0]["reason"]
    assert "not-a-time" in csv_letters[1]["reason"]
    store.close()


def test_reimport_stores_nothing_new_and_does_not_double_the_dlq(database_url: str, tmp_path: Path) -> None:
    jsonl, csv_path = write_mixed(tmp_path)
    first = json.loads(
        iotpipe("import", str(jsonl), str(csv_path), "--json", database_url=database_url, cwd=tmp_path).stdout
    )
    second = json.loads(
        iotpipe("import", str(jsonl), str(csv_path), "--json", database_url=database_url, cwd=tmp_path).stdout
    )
    assert second["stored"] == 0
    assert second["duplicates"] == first["stored"] + first["duplicates"]
    assert second["dead_lettered"] == first["dead_lettered"]
    store = open_store(database_url)
    assert store.stats()["dead_letters"] == first["dead_lettered"]
    assert {letter["attempts"] for letter in store.dead_letter_rows()} == {2}
    store.close()


def test_single_device_csv_export_takes_the_device_flag(database_url: str, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text("timestamp,value\n2026-11-22T10:00:00Z,1.5\n1763805660,2.5\n")
    result = iotpipe(
        "import", str(export), "--device", "meter-1", "--json", database_url=database_url, cwd=tmp_path
    )
    assert json.loads(result.stdout)["stored"] == 2
    store = open_store(database_url)
    assert [v for _, v in store.raw_readings("meter-1", "value")] == [2.5, 1.5]
    store.close()


def test_whole_json_documents_import(database_url: str, tmp_path: Path) -> None:
    array = tmp_path / "batch.json"
    array.write_text(
        json.dumps([{"device_id": "a", "timestamp": T, "t": 1}, {"device_id": "b", "timestamp": T, "t": 2}])
    )
    pack = tmp_path / "pack.senml.json"
    pack.write_text(VALID_LINES[2][0])
    result = iotpipe("import", str(array), str(pack), "--json", database_url=database_url, cwd=tmp_path)
    assert json.loads(result.stdout)["stored"] == 2 + 7


def test_dlq_replay_stores_what_now_decodes(database_url: str, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text("timestamp,device_id,value\n2026-11-22T10:00:00Z,,1.5\n")
    # A row with an empty device cell, and no --device, has no device id: dead-lettered.
    first = json.loads(
        iotpipe("import", str(export), "--json", database_url=database_url, cwd=tmp_path).stdout
    )
    assert first["dead_lettered"] == 1
    listed = json.loads(iotpipe("dlq", "list", "--json", database_url=database_url, cwd=tmp_path).stdout)
    assert "device" in listed[0]["reason"] and listed[0]["origin"].endswith("export.csv:2")
    replay = json.loads(iotpipe("dlq", "replay", "--json", database_url=database_url, cwd=tmp_path).stdout)
    assert replay == {"replayed": 1, "stored_messages": 0, "still_dead": 1, "stored": 0, "duplicates": 0}
    store = open_store(database_url)
    assert store.dead_letter_rows()[0]["attempts"] == 1  # arrivals: a replay is not one
    assert store.stats()["dead_letter_messages"] == 1
    store.close()


@pytest.mark.parametrize("missing", ["nope.jsonl"])
def test_missing_file_is_a_clear_error(tmp_path: Path, missing: str) -> None:
    result = iotpipe("import", missing, database_url=f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "no such file: nope.jsonl; check the path" in result.stderr


def test_a_directory_is_refused_as_one(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    result = iotpipe("import", "exports", database_url=f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: exports is a directory; give a file" in result.stderr
    assert "no such file" not in result.stderr


def _parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"device_id": ["a"], "t": [1.0]}), sink)
    return bytes(sink.getvalue().to_pybytes())


LINE = b'{"device_id": "a", "timestamp": 1763805600, "t": 1}\n'
# Files iotpipe import cannot read, named so that their suffix does not give them away.
UNSUPPORTED = {
    "Parquet": _parquet,
    "zstd-compressed": lambda: b"\x28\xb5\x2f\xfd\x04\x58" + LINE,  # a zstd frame's start
    "xz-compressed": lambda: __import__("lzma").compress(LINE),
    "bzip2-compressed": lambda: __import__("bz2").compress(LINE),
    "Parquet, gzip-compressed": lambda: gzip.compress(_parquet()),
}


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_a_file_of_an_unsupported_type_is_refused_before_anything_is_read(tmp_path: Path, kind: str) -> None:
    """Read as text, each line of such a file was a dead letter "not valid UTF-8" (exit 0);
    now the import refuses it up front, the good file given with it included."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(LINE)
    odd = tmp_path / "readings.data"
    odd.write_bytes(UNSUPPORTED[kind]())
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = iotpipe("import", str(good), str(odd), database_url=url, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{odd}: unsupported file type ({kind}); iotpipe import reads JSON lines" in result.stderr
    assert "optionally gzip-compressed (.gz); convert it first" in result.stderr
    assert not (tmp_path / "x.db").exists()  # nothing received: nothing to store or dead-letter


def test_a_line_protocol_file_whose_first_measurement_starts_like_bzip2_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bz.lp"
    path.write_bytes(b"BZh9,device_id=a v=1 1763805600000000000\n")
    result = iotpipe(
        "import", str(path), "--json", database_url=f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stored"] == 1


def _cut_gzip(path: Path, lines: list[str]) -> None:
    """`lines` gzipped and cut in half, as `head -c` leaves an interrupted download."""
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    path.write_bytes(whole[: len(whole) // 2])


def _lines_read(stderr: str) -> int:
    return int(stderr.split("after line ")[1].split(" ")[0])


# Each kind of line file, with one reading per good line and a malformed line now and then.
CUT_FILES = {
    "v1.jsonl.gz": lambda i: (
        '{"device_id": "broken'
        if i % 97 == 5
        else json.dumps({"device_id": f"d{i % 7}", "ts": 1763805600 + i, "t": i})
    ),
    "data.lp.gz": lambda i: (
        "m,device_id=d v=" if i % 97 == 5 else f"m,device_id=d{i % 7} v={i} {1763805600 + i}000000000"
    ),
    "senml.jsonl.gz": lambda i: (
        "[{"
        if i % 97 == 5
        else json.dumps([{"bn": f"urn:dev:d{i % 7}:", "bt": 1763805600 + i, "n": "t", "v": i}])
    ),
}


@pytest.mark.parametrize("name", sorted(CUT_FILES))
def test_a_cut_gzip_file_stores_every_line_before_the_damage(
    database_url: str, tmp_path: Path, name: str
) -> None:
    """The lines read before the damage are received (stored or dead-lettered), however
    few: fewer than a chunk of the bulk import used to be lost with the damage."""
    path = tmp_path / name
    _cut_gzip(path, [CUT_FILES[name](i) for i in range(6000)])
    result = iotpipe("import", str(path), database_url=database_url, cwd=tmp_path)
    assert result.returncode == 2
    assert "is truncated or damaged after line" in result.stderr and "Traceback" not in result.stderr
    assert "Re-import the complete file" in result.stderr
    read = _lines_read(result.stderr)
    assert 1000 < read < 6000
    store = open_store(database_url)
    stats = store.stats()
    store.close()
    assert stats["dead_letters"] == len([i for i in range(read) if i % 97 == 5])
    assert stats["readings"] + stats["dead_letters"] == read
    assert (
        f"this import read {read:,} messages before it: {stats['readings']:,} readings stored"
        in result.stderr
    )


def test_a_nul_byte_in_one_csv_row_costs_only_that_row(database_url: str, tmp_path: Path) -> None:
    """It used to make the whole file (header included) dead letters "binary"."""
    path = tmp_path / "tank.csv"
    rows = [f"2026-11-22T10:{m:02d}:00Z,tank-1,{18 + m / 10}" for m in range(10)]
    rows[4] = "2026-11-22T10:04:00Z,tank-1,1\x008.4"
    path.write_bytes(("timestamp,device_id,temperature\n" + "\n".join(rows) + "\n").encode())
    result = iotpipe("import", str(path), "--json", database_url=database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == {"messages": 10, "stored": 9, "duplicates": 0, "invalid": 0, "dead_lettered": 1}
    store = open_store(database_url)
    [letter] = store.dead_letter_rows()
    assert letter["origin"] == f"{path}:6"
    assert "CSV row holds a NUL byte (at offset 29): the record is damaged" in letter["reason"]
    assert bytes(letter["payload"]) == rows[4].encode()  # kept as received, NUL included
    assert store.stats()["readings"] == 9
    store.close()


def test_a_csv_with_no_device_column_and_no_device_flag_is_refused_up_front(
    database_url: str, tmp_path: Path
) -> None:
    """Every row of it was a dead letter (exit 0) whose reason did not say what to do; now
    nothing is read, of it or of the files given with it, and the message says --device."""
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"device_id": "a", "timestamp": T, "t": 1}) + "\n")
    nab = tmp_path / "nab.csv.gz"  # NAB's layout; gzipped and ;-delimited, read as the import reads it
    nab.write_bytes(gzip.compress(b"timestamp;value\n2026-11-22T10:00:00Z;1,5\n2026-11-22T10:05:00Z;2,5\n"))
    result = iotpipe("import", str(good), str(nab), database_url=database_url, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        f"error: {nab}: no device column (device_id or device) and no --device given; pass --device NAME"
        in result.stderr
    )
    store = open_store(database_url)
    stats = store.stats()
    store.close()
    assert (stats["readings"], stats["dead_letters"]) == (0, 0)  # nothing received


def test_the_reason_of_a_csv_row_without_a_device_says_how_to_give_one() -> None:
    from iotpipe.errors import DecodeError
    from iotpipe.formats import decode
    from iotpipe.formats.csv import split_header
    from iotpipe.model import RawMessage

    raw = RawMessage(
        b"2026-11-22T10:00:00Z,1.5", "http", "POST", 0, "csv", None, split_header(b"timestamp,value")
    )
    with pytest.raises(DecodeError, match=r"give one \(iotpipe import --device NAME, or \?device_id=NAME"):
        decode(raw)


# What docs/formats.md documents for files, and nothing internal or topic-only.
IMPORT_FORMATS = [
    "csv",
    "csv-pipe",
    "csv-semicolon",
    "csv-tab",
    "json",
    "lineproto",
    "lineproto_ms",
    "lineproto_s",
    "lineproto_us",
    "senml",
    "tasmota",
    "thingspeak",
    "v1",
    "v2",
    "zigbee2mqtt",
]


@pytest.mark.parametrize("name", ["refused", "unmatched-topic", "value", "parquet"])
def test_import_refuses_a_format_it_does_not_read(tmp_path: Path, name: str) -> None:
    """`refused` and `unmatched-topic` are internal and dead-lettered every message; `value`
    takes its metric from an MQTT topic, which a file has not."""
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"device_id": "a", "timestamp": T, "t": 1}) + "\n")
    result = iotpipe(
        "import", str(path), "--format", name, database_url=f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"error: --format '{name}' is not a format iotpipe import reads; choose one of: " in result.stderr
    assert result.stderr.strip().endswith(", ".join(IMPORT_FORMATS))
    assert not (tmp_path / "x.db").exists()


def test_import_help_lists_exactly_the_formats_it_takes() -> None:
    import typer.main

    from iotpipe.app import import_format_names
    from iotpipe.cli import app

    assert import_format_names() == IMPORT_FORMATS
    command = typer.main.get_command(app).commands["import"]  # type: ignore[attr-defined]
    [option] = [p for p in command.params if "--format" in p.opts]
    assert option.help == f"Force a decoder: {', '.join(IMPORT_FORMATS)}."


@pytest.mark.parametrize("name", IMPORT_FORMATS)
def test_every_format_the_help_lists_is_taken(tmp_path: Path, name: str) -> None:
    from iotpipe.app import App
    from iotpipe.config import Settings

    path = tmp_path / "data.csv"
    path.write_text("timestamp,device_id,t\n2026-11-22T10:00:00Z,a,1\n")
    app = App(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))  # type: ignore[call-arg]
    # Read by that decoder (stored or dead-lettered), not refused as unknown.
    assert app.import_files([path], format=name, device_id="a").counters.messages_received == 1
    app.close()


def test_a_json_array_element_that_is_no_object_is_refused_in_json_terms(
    database_url: str, tmp_path: Path
) -> None:
    """`5` and `"x"` were sniffed as line protocol and refused with its reason ("no fields")."""
    path = tmp_path / "batch.json"
    good = {"device_id": "a", "timestamp": T, "t": 1}
    path.write_text(json.dumps([good, {**good, "t": 2, "device_id": "b"}, "x", 5, None, True]))
    result = iotpipe("import", str(path), "--json", database_url=database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["messages"], summary["stored"], summary["dead_lettered"]) == (6, 2, 4)
    store = open_store(database_url)
    letters = {letter["origin"]: letter for letter in store.dead_letter_rows()}
    store.close()
    kinds = {2: "a string", 3: "a number", 4: "null", 5: "a boolean"}
    assert set(letters) == {f"{path}[{i}]" for i in kinds}
    for index, kind in kinds.items():
        letter = letters[f"{path}[{index}]"]
        assert letter["reason"].startswith(f"element {index} of the JSON array is {kind}, not an object")
        assert "line protocol" not in letter["reason"] and "fields" not in letter["reason"]
    assert bytes(letters[f"{path}[3]"]["payload"]) == b"5"
