"""Historical files: JSON lines, whole JSON documents, CSV and line protocol, gzipped or not.

Line-based files give one message per line (its origin is `path:line`, so a dead letter
points at the exact line); CSV records carry the header (a quoted field may span lines,
RFC 4180); a whole JSON document is one message, except a JSON array of plain objects,
which gives one message per element.

Whatever the input, memory stays bounded: a line (or CSV record) is read up to
`max_payload_bytes` + 1 bytes; a longer one is refused with its size, skipping to the
next newline without holding it, and a whole document is read up to
`max_document_bytes`. Compression is recognised by its magic bytes, the text encoding by
its byte-order mark (UTF-8, UTF-16 and UTF-32; other files must be UTF-8), the CSV
delimiter (`,` `;` tab `|`) by csv.Sniffer on the first records. A compressed file that
ends early raises TruncatedFile after yielding every complete line before the damage.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, overload

import orjson

from iotpipe.errors import DecodeError, SourceError, TruncatedFile
from iotpipe.formats.csv import CSV_DELIMITERS, DEVICE_COLUMNS, split_header
from iotpipe.formats.json import json_kind, parse_json
from iotpipe.formats.refused import refused
from iotpipe.formats.senml import is_senml_record
from iotpipe.limits import DEFAULT_LIMITS, Limits, setting_hint
from iotpipe.model import RawMessage, now_micros
from iotpipe.text import printable

SUFFIX_FORMATS = {".csv": "csv", ".senml.json": "senml", ".senml": "senml", ".lp": "lineproto"}
GZIP_MAGIC = b"\x1f\x8b"
# What `iotpipe import` reads (docs/formats.md, "Files"), for the refusal of anything else.
SUPPORTED_FILES = (
    "JSON lines (.jsonl, .ndjson), line protocol (.lp), JSON (.json), SenML (.senml.json, .senml) and CSV "
    "(.csv), each optionally gzip-compressed (.gz)"
)
# Files people hand to an import that it cannot read, by their first bytes (the name may
# say nothing): read as text, each "line" of them would be a dead letter.
UNSUPPORTED_MAGIC = (
    (b"PAR1", "Parquet"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"PK\x03\x04", "zip archive or Excel workbook"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
)
# bzip2: "BZh", the block size 1-9, then the first block's magic (pi's digits in BCD) or,
# when empty, the end of stream's (sqrt(pi)'s), so a line protocol line "BZh..." is not one.
BZIP2_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
# Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
TEXT_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
SNIFF_RECORDS = 20  # CSV records csv.Sniffer sees to choose the delimiter
_SKIP_CHUNK = 1 << 16
# What a damaged or cut compressed stream raises as it is read.
DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile)
READ_BYTES = 1 << 20  # blocks() reads this much at a time and splits the whole lines out
BLOCK_BYTES = 16 << 20  # and gives a block once it holds this much (or its max_lines lines)


class LineBlock(Sequence[RawMessage]):
    """Consecutive message lines of one line-based file, kept as bytes (`bodies`).

    A bulk reader takes the bodies as columns; a RawMessage is made only of a line that is
    asked for (`block[i]`, a slice, iteration): one the columnar decoder leaves to the exact
    path, a dead letter. Making one per line, up front, cost more than decoding it.
    `numbers[i]` is the file line of `bodies[i]` (its origin is `path:number`)."""

    __slots__ = ("bodies", "device_id", "format", "numbers", "origin", "received_at", "source")

    def __init__(
        self,
        bodies: list[bytes],
        numbers: Sequence[int],
        origin: str,
        received_at: int,
        format: str | None,
        device_id: str | None,
        source: str,
    ) -> None:
        self.bodies = bodies
        self.numbers = numbers
        self.origin = origin
        self.received_at = received_at
        self.format = format
        self.device_id = device_id
        self.source = source

    def __len__(self) -> int:
        return len(self.bodies)

    @overload
    def __getitem__(self, index: int) -> RawMessage: ...
    @overload
    def __getitem__(self, index: slice) -> LineBlock: ...
    def __getitem__(self, index: int | slice) -> RawMessage | LineBlock:
        if isinstance(index, slice):
            return LineBlock(
                self.bodies[index],
                self.numbers[index],
                self.origin,
                self.received_at,
                self.format,
                self.device_id,
                self.source,
            )
        return RawMessage(
            self.bodies[index],
            self.source,
            f"{self.origin}:{self.numbers[index]}",
            self.received_at,
            self.format,
            self.device_id,
        )


class _LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def file_kind(path: Path) -> str:
    """'csv', 'document' (whole JSON) or 'lines', from the name without a .gz suffix."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".json") or name.endswith(".senml"):
        return "document"
    return "lines"


def suffix_format(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def check_files(paths: Sequence[Path]) -> None:
    """Refuse, before anything is read, paths that are no file or files of a type the import
    cannot read (SourceError naming each and what to do)."""
    problems: list[str] = []
    missing = [printable(str(p)) for p in paths if not p.exists()]
    if missing:
        problems.append(f"no such file: {', '.join(missing)}; check the path")
    for path in paths:
        if path.is_dir():
            problems.append(
                f"{printable(str(path))} is a directory; give a file (e.g. {printable(str(path))}/*.jsonl)"
            )
        elif path.exists() and not path.is_file():
            problems.append(f"{printable(str(path))} is not a regular file; give a file")
        elif path.is_file() and (kind := unsupported_type(path)) is not None:
            problems.append(
                f"{printable(str(path))}: unsupported file type ({kind}); iotpipe import reads "
                f"{SUPPORTED_FILES}; convert it first"
            )
    if problems:
        raise SourceError("; ".join(problems))


def unsupported_type(path: Path) -> str | None:
    """What a file is when its first bytes (or, gzipped, those of its content) say it is a
    type the import cannot read, else None."""
    with open(path, "rb") as handle:
        start = handle.read(16)
        if start.startswith(GZIP_MAGIC):
            handle.seek(0)
            try:
                with gzip.GzipFile(fileobj=handle) as inner:
                    start = inner.read(16)
            except DAMAGED:
                return None  # told when it is read, after the lines before the damage
            kind = _magic_type(start)
            return None if kind is None else f"{kind}, gzip-compressed"
    return _magic_type(start)


def _magic_type(start: bytes) -> str | None:
    for magic, kind in UNSUPPORTED_MAGIC:
        if start.startswith(magic):
            return kind
    if start[:3] == b"BZh" and start[3:4] in b"123456789" and start[4:10] in BZIP2_MAGICS:
        return "bzip2-compressed"
    return None


class FileSource:
    """Messages from files, with byte progress across all of them."""

    def __init__(
        self,
        paths: list[Path],
        format: str | None = None,
        device_id: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        source: str = "file",
    ) -> None:
        check_files(paths)
        self.paths = paths
        self.format = format
        self.device_id = device_id
        self.limits = limits
        self.source = source  # RawMessage.source of what it reads
        self._refuse_csv_without_devices()
        self.bytes_total = sum(p.stat().st_size for p in paths)
        self.bytes_done = 0  # of files finished
        self.files_done = 0
        self._current: BinaryIO | None = None
        self._lines_read = 0  # of the current file, for the truncation message

    def _refuse_csv_without_devices(self) -> None:
        """Refuse, before anything is read, CSV files whose header names no device column
        when no device was given: not one of their rows could be stored."""
        if self.device_id is not None:
            return
        lacking = [
            printable(str(p)) for p in self.paths if self._is_csv(p) and _names_no_device(self._csv_header(p))
        ]
        if lacking:
            raise SourceError(
                f"{', '.join(lacking)}: no device column ({' or '.join(DEVICE_COLUMNS)}) and no --device "
                "given; pass --device NAME, the device whose readings the file holds"
            )

    def _is_csv(self, path: Path) -> bool:
        fmt = self.format or suffix_format(path)
        return file_kind(path) == "csv" or (fmt is not None and fmt.startswith("csv"))

    def _csv_header(self, path: Path) -> tuple[str, ...] | None:
        """The column names of a CSV file as its import reads them; None when it has no usable
        header (its rows are then dead letters saying why) or is damaged (said when read)."""
        with open(path, "rb") as handle:
            try:
                stream = _text_stream(path, _decompressed(path, handle))
                fmt, head, _ = self._csv_head(stream, self.format or suffix_format(path))
            except DAMAGED:
                return None
        first = next((body for _, body, size in head if size is None and body.strip()), None)
        try:
            return None if first is None else split_header(first.rstrip(b"\r\n"), fmt)
        except DecodeError:
            return None

    @property
    def bytes_read(self) -> int:
        """Compressed bytes consumed so far, for a progress bar."""
        return self.bytes_done + (self._current.tell() if self._current else 0)

    def __iter__(self) -> Iterator[RawMessage]:
        return self._each_file(self._messages)  # type: ignore[return-value]

    def blocks(self, max_lines: int) -> Iterator[RawMessage | LineBlock]:
        """The same messages in the same order, but the lines of a line-based file come as
        LineBlocks of up to `max_lines` lines, read in large blocks (the bulk import's way)."""
        return self._each_file(lambda path, stream: self._messages(path, stream, max_lines))

    def _each_file(
        self, read: Callable[[Path, _LineReader], Iterator[RawMessage | LineBlock]]
    ) -> Iterator[RawMessage | LineBlock]:
        for path in self.paths:
            with open(path, "rb") as handle:
                self._current = handle
                self._lines_read = 0
                try:
                    yield from read(path, _text_stream(path, _decompressed(path, handle)))
                except DAMAGED as exc:
                    raise TruncatedFile(
                        f"{printable(str(path))} is truncated or damaged after line {self._lines_read} "
                        f"({exc}); the lines before it are kept. Re-import the complete file: "
                        "what is already stored is not stored twice"
                    ) from None
                self._current = None
            self.bytes_done += path.stat().st_size
            self.files_done += 1

    def _messages(
        self, path: Path, stream: _LineReader, max_lines: int | None = None
    ) -> Iterator[RawMessage | LineBlock]:
        kind = file_kind(path)
        fmt = self.format or suffix_format(path)
        received_at = now_micros()
        origin = printable(str(path))  # a file name may hold bytes that are not UTF-8
        if self._is_csv(path):
            yield from self._csv(origin, stream, fmt, received_at)
        elif kind == "document" and fmt not in ("lineproto",):
            yield from self._document(origin, stream, fmt, received_at)
        elif max_lines is not None:
            yield from self._line_blocks(origin, stream, fmt, received_at, max_lines)
        else:
            yield from self._lines(origin, stream, fmt, received_at)

    def _lines(
        self, origin: str, stream: _LineReader, fmt: str | None, received_at: int
    ) -> Iterator[RawMessage]:
        for number, line, oversize in self._read_lines(stream):
            if oversize is not None:
                yield self._oversize(line, oversize, f"{origin}:{number}", "line", received_at)
                continue
            body = line.strip()
            if not body or body[:1] == b"#":
                continue
            yield RawMessage(body, self.source, f"{origin}:{number}", received_at, fmt, self.device_id)

    def _line_blocks(
        self, origin: str, stream: _LineReader, fmt: str | None, received_at: int, max_lines: int
    ) -> Iterator[RawMessage | LineBlock]:
        """What _lines gives, as LineBlocks (and an oversize line's refusal in its place)."""
        for first, lines, oversize in self._read_blocks(stream, max_lines):
            if oversize is not None:
                yield self._oversize(lines[0], oversize, f"{origin}:{first}", "line", received_at)
                continue
            bodies = [line.strip() for line in lines]
            numbers: Sequence[int] = range(first, first + len(bodies))
            # Blank and comment lines are no messages. b"" and b"#..." sort before every
            # usual line, so one C-speed min() says whether there is any to drop.
            if min(bodies)[:1] <= b"#":
                kept = [i for i, body in enumerate(bodies) if body and body[:1] != b"#"]
                bodies = [bodies[i] for i in kept]
                numbers = [first + i for i in kept]
            if bodies:
                yield LineBlock(bodies, numbers, origin, received_at, fmt, self.device_id, self.source)

    def _read_blocks(
        self, stream: _LineReader, max_lines: int
    ) -> Iterator[tuple[int, list[bytes], int | None]]:
        """(first line number, up to max_lines whole lines without their newline, None), in
        order; a line over max_payload_bytes comes alone as (number, [its first
        max_payload_bytes], its size), the rest of it skipped without being held. A block
        also ends once its lines reach BLOCK_BYTES, so that what is held stays under
        BLOCK_BYTES + READ_BYTES + max_payload_bytes whatever the lengths of the lines."""
        limit = self.limits.max_payload_bytes
        # read1: one read of what is there, so the lines before a damaged gzip member are
        # given before the damage is raised (a read() of a whole block would drop them).
        read: Callable[[int], bytes] = getattr(stream, "read1", None) or cast(BinaryIO, stream).read
        lines: list[bytes] = []  # read, not yet given; the first is line number - len + 1
        number = 0
        tail = b""  # the unfinished line at the end of what was read
        held = 0  # bytes of `lines` (with their newlines)
        while True:
            try:
                chunk = read(READ_BYTES)
            except DAMAGED:
                # Every whole line read before the damage is given before it is raised:
                # the caller stores them, then stops with the damage (nothing read is lost).
                yield from _whole_blocks(lines, number - len(lines) + 1, max_lines, final=True)
                raise
            if chunk:
                data = tail + chunk if tail else chunk
                cut = data.rfind(b"\n")
                new, tail = (data[:cut].split(b"\n"), data[cut + 1 :]) if cut >= 0 else ([], data)
                held += cut + 1
            else:  # the end: a last line without its newline is a line too
                # (what follows a skipped line may hold whole lines: split it as well)
                held += len(tail)
                new, tail = (tail.removesuffix(b"\n").split(b"\n") if tail else []), b""
            if new and max(map(len, new)) > limit:  # one of them may be over the limit
                for line in new:
                    size = len(line.rstrip(b"\r"))
                    number += 1
                    if size <= limit:
                        lines.append(line)
                        continue
                    yield from _whole_blocks(lines, number - len(lines), max_lines, final=True)
                    lines = []
                    self._lines_read = number
                    yield number, [line[:limit]], size
            else:
                lines.extend(new)
                number += len(new)
            self._lines_read = number
            if len(tail) > limit + 1:  # a line still unfinished, already over the limit
                yield from _whole_blocks(lines, number - len(lines) + 1, max_lines, final=True)
                lines = []
                number += 1
                head = tail[:limit]
                size, tail = _skip_rest(read, len(tail), tail, READ_BYTES)
                self._lines_read = number
                if size <= limit:  # only "\r"s went past the limit: a line like the others
                    lines.append(head)
                else:
                    yield number, [head], size
                held = sum(map(len, lines)) + len(lines)  # the rare path: count again
            given = 0
            give_all = not chunk or held >= BLOCK_BYTES  # the end, or enough bytes held
            for block in _whole_blocks(lines, number - len(lines) + 1, max_lines, final=give_all):
                given += len(block[1])
                yield block
            if given:
                del lines[:given]
                held = sum(map(len, lines)) + len(lines)  # fewer than max_lines: once per block
            if not chunk:
                return

    def _csv(
        self, origin: str, stream: _LineReader, fmt: str | None, received_at: int
    ) -> Iterator[RawMessage]:
        fmt, head, records = self._csv_head(stream, fmt)
        header: tuple[str, ...] | None = None
        problem: str | None = None
        # NULs near the start tell a binary (or BOM-less UTF-16) file only when its header is
        # unusable too: under a good header, a NUL costs just the row that holds it.
        binary = any(b"\x00" in body for _, body, _ in head)
        for number, record, oversize in _chain(head, records):
            where = f"{origin}:{number}"
            if oversize is not None:
                yield self._oversize(record, oversize, where, "CSV record", received_at)
                continue
            body = record.rstrip(b"\r\n")
            if not body.strip():
                continue
            if header is None and problem is None:
                try:
                    header = split_header(body, fmt)
                    continue
                except DecodeError as exc:
                    if not binary:
                        problem = f"{exc.reason} (line {number} of the file), so its rows cannot be read"
                        continue
                    # Not a header at all: every line of the file is refused, this one too.
                    problem = (
                        "the file holds NUL bytes in its first lines: it is binary, or UTF-16/UTF-32 "
                        "without a byte-order mark (save it as UTF-8), not CSV text"
                    )
            if problem is not None:
                yield refused(body, self.source, where, received_at, problem, self.device_id)
            else:
                yield RawMessage(body, self.source, where, received_at, fmt, self.device_id, header)

    def _csv_head(
        self, stream: _LineReader, fmt: str | None
    ) -> tuple[str, list[tuple[int, bytes, int | None]], Iterator[tuple[int, bytes, int | None]]]:
        """(the CSV decoder, the first records, the records after them): the first records
        are kept to choose the delimiter, then served like the rest."""
        records = self._read_records(stream)
        head = list(itertools.islice(records, SNIFF_RECORDS))
        if fmt is None or fmt not in CSV_DELIMITERS.values() or fmt == "csv":
            fmt = _sniff_csv_format(body for _, body, size in head if size is None)
        return fmt, head, records

    def _document(
        self, origin: str, stream: _LineReader, fmt: str | None, received_at: int
    ) -> Iterator[RawMessage]:
        limit = self.limits.max_document_bytes
        body = cast(BinaryIO, stream).read(limit + 1)
        if len(body) > limit:
            reason = (
                f"file is over the limit of {limit} bytes for a whole JSON document (raise it with "
                f"{setting_hint('max_document_bytes')}, or import it as JSON lines)"
            )
            yield refused(
                body[: self.limits.max_payload_bytes],
                self.source,
                origin,
                received_at,
                reason,
                self.device_id,
            )
            return
        self._lines_read = body.count(b"\n")
        try:
            doc = orjson.loads(body)
            dump: Callable[[Any], bytes] = orjson.dumps
        except orjson.JSONDecodeError:
            try:
                doc = parse_json(body)
            except DecodeError:
                yield RawMessage(body, self.source, origin, received_at, fmt, self.device_id)
                return
            # NaN, Infinity or a huge number: written back as such (orjson would write NaN
            # as null, and the value would be missing instead of invalid).
            dump = _dump_lenient_json
        if isinstance(doc, list) and doc and not any(isinstance(d, dict) and is_senml_record(d) for d in doc):
            for index, element in enumerate(doc):
                where = f"{origin}[{index}]"
                if isinstance(element, dict | list):
                    yield RawMessage(dump(element), self.source, where, received_at, fmt, self.device_id)
                    continue
                # A bare 5 or "x" would be sniffed as line protocol, and refused in its terms.
                reason = (
                    f"element {index} of the JSON array is {json_kind(element)}, not an object; "
                    "a JSON array document holds one object per message"
                )
                yield refused(dump(element), self.source, where, received_at, reason, self.device_id)
            return
        yield RawMessage(body, self.source, origin, received_at, fmt, self.device_id)

    def _read_lines(self, stream: _LineReader) -> Iterator[tuple[int, bytes, int | None]]:
        """(line number, line, None), or (number, its first max_payload_bytes, its size) when longer."""
        limit = self.limits.max_payload_bytes
        number = 0
        while True:
            # limit + 2: a line of `limit` bytes ends in "\r\n" whole, not split at its "\r".
            line = stream.readline(limit + 2)
            if not line:
                return
            number += 1
            self._lines_read = number
            size = len(line.rstrip(b"\r\n"))
            if len(line) == limit + 2 and not line.endswith(b"\n"):
                # The read stopped inside the line: read past its end (what is left may be
                # only "\r"s, and the line then still within the limit).
                size, _ = _skip_rest(stream.readline, len(line), line, _SKIP_CHUNK)
            if size <= limit:
                yield number, line, None
                continue
            yield number, line[:limit], size

    def _read_records(self, stream: _LineReader) -> Iterator[tuple[int, bytes, int | None]]:
        """Like _read_lines, but a record whose quotes are open goes on at the next line (RFC 4180)."""
        limit = self.limits.max_payload_bytes
        lines = self._read_lines(stream)
        for number, line, oversize in lines:
            record = line
            # An odd count of quotes means a quoted field is still open: "" escapes pair up.
            while oversize is None and record.count(b'"') % 2 and len(record) <= limit:
                following = next(lines, None)
                if following is None:
                    break
                _, line, oversize = following
                if oversize is not None:
                    oversize += len(record)
                record += line
            if oversize is None and len(record.rstrip(b"\r\n")) > limit:
                oversize = len(record.rstrip(b"\r\n"))
            yield number, (record if oversize is None else record[:limit]), oversize

    def _oversize(self, head: bytes, size: int, origin: str, what: str, received_at: int) -> RawMessage:
        limit = self.limits.max_payload_bytes
        reason = (
            f"{what} is {size} bytes, over the limit of {limit} (raise it with "
            f"{setting_hint('max_payload_bytes')}); the dead letter keeps its first {limit} bytes"
        )
        return refused(head[:limit], self.source, origin, received_at, reason, self.device_id)


def read_body(
    body: bytes,
    kind: str,
    source: str,
    origin: str,
    fmt: str | None = None,
    device_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    max_lines: int | None = None,
) -> Iterator[RawMessage | LineBlock]:
    """The messages of a body held in memory (an HTTP request), read by the rules of a file
    of that kind: "lines" (JSON lines, line protocol), "csv", or "document" (JSON). With
    `max_lines`, lines come as LineBlocks of up to that many, as FileSource.blocks gives."""
    reader = FileSource([], fmt, device_id, limits, source)
    stream = io.BytesIO(body)
    received_at = now_micros()
    if kind == "csv":
        return reader._csv(origin, stream, fmt, received_at)
    if kind == "document":
        return reader._document(origin, stream, fmt, received_at)
    if max_lines is not None:
        return reader._line_blocks(origin, stream, fmt, received_at, max_lines)
    return reader._lines(origin, stream, fmt, received_at)


def _whole_blocks(
    lines: list[bytes], first: int, max_lines: int, final: bool
) -> Iterator[tuple[int, list[bytes], None]]:
    """`lines` (the first is line `first`) in blocks of max_lines; the short last one too
    when `final`."""
    for at in range(0, len(lines), max_lines):
        block = lines[at : at + max_lines]
        if len(block) < max_lines and not final:
            return
        yield first + at, block, None


def _skip_rest(read: Callable[[int], bytes], length: int, tail: bytes, chunk_size: int) -> tuple[int, bytes]:
    """Read past the rest of a line of which `length` bytes were read (ending in `tail`),
    without keeping it: (its size, as for any line without its "\n" and the "\r"s before;
    what follows its newline in the last read)."""
    crs = len(tail) - len(tail.rstrip(b"\r"))  # the "\r"s the line ends with so far
    while True:
        chunk = read(chunk_size)
        if not chunk:
            return length - crs, b""
        cut = chunk.find(b"\n")
        part = chunk if cut < 0 else chunk[:cut]
        kept = len(part.rstrip(b"\r"))
        crs = crs + len(part) if not kept else len(part) - kept
        length += len(part)
        if cut >= 0:
            return length - crs, chunk[cut + 1 :]


def _decompressed(path: Path, handle: BinaryIO) -> BinaryIO:
    """The file's bytes, gunzipped when they start with gzip's magic (whatever the suffix)."""
    magic = cast(io.BufferedReader, handle).peek(2)[:2]
    if magic == GZIP_MAGIC:
        return cast(BinaryIO, gzip.GzipFile(fileobj=handle))
    if path.name.lower().endswith(".gz"):
        raise SourceError(
            f"{printable(str(path))} is named .gz but is not gzip-compressed; rename or recompress it"
        )
    return handle


def _text_stream(path: Path, stream: BinaryIO) -> _LineReader:
    """UTF-8 lines from a stream: its UTF-8 byte-order mark dropped, UTF-16/32 transcoded."""
    start = _peek(stream, 4)
    for mark, encoding in TEXT_ENCODINGS:
        if start.startswith(mark):
            if encoding == "utf-8":
                stream.read(len(mark))
                return stream
            return _Transcoded(path, stream, encoding)
    return stream


def _peek(stream: BinaryIO, size: int) -> bytes:
    if isinstance(stream, gzip.GzipFile):
        return stream.peek(size)[:size]
    return cast(io.BufferedReader, stream).peek(size)[:size]


class _Transcoded:
    """A UTF-16 or UTF-32 stream read as UTF-8 lines (the byte-order mark says the byte order)."""

    def __init__(self, path: Path, stream: BinaryIO, encoding: str) -> None:
        self._path = path
        self._encoding = encoding
        # surrogatepass: an unpaired surrogate survives into the UTF-8 bytes, so the decoder
        # of that line reports "not valid UTF-8" rather than the file stopping here.
        self._text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogatepass", newline="")

    def readline(self, size: int = -1, /) -> bytes:
        try:
            return self._text.readline(size).encode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{printable(str(self._path))} starts with a {self._encoding.upper()} byte-order mark but "
                f"is not valid {self._encoding.upper()} ({exc.reason}); save it as UTF-8"
            ) from None

    def read(self, size: int = -1, /) -> bytes:
        return self._text.read(size).encode("utf-8", "surrogatepass")


def _sniff_csv_format(records: Iterator[bytes]) -> str:
    """The CSV decoder for the delimiter csv.Sniffer finds in the first records; `,` if unsure."""
    sample = b"".join(records).decode("utf-8", "replace")
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters="".join(CSV_DELIMITERS))
    except csv.Error:  # one column, or nothing to tell the delimiters apart
        return "csv"
    return CSV_DELIMITERS.get(dialect.delimiter, "csv")


def _names_no_device(header: tuple[str, ...] | None) -> bool:
    return header is not None and not any(name.lower() in DEVICE_COLUMNS for name in header)


def _chain(
    head: list[tuple[int, bytes, int | None]], rest: Iterator[tuple[int, bytes, int | None]]
) -> Iterator[tuple[int, bytes, int | None]]:
    yield from head
    yield from rest


def _dump_lenient_json(element: object) -> bytes:
    return json.dumps(element).encode()
