"""Historical files: JSON lines, whole JSON documents, CSV and line protocol, gzipped or not.

Line-based files give one message per line (its origin is `path:line`, so a dead letter
points at the exact line); CSV rows carry the header; a whole JSON document is one
message, except a JSON array of plain objects, which gives one message per element.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import orjson

from iotpipe.errors import DecodeError
from iotpipe.formats.csv import split_header
from iotpipe.formats.senml import is_senml_record
from iotpipe.model import RawMessage, now_micros

SUFFIX_FORMATS = {".csv": "csv", ".senml.json": "senml", ".senml": "senml", ".lp": "lineproto"}


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


class FileSource:
    """Messages from files, with byte progress across all of them."""

    def __init__(self, paths: list[Path], format: str | None = None, device_id: str | None = None) -> None:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such file: {', '.join(missing)}")
        self.paths = paths
        self.format = format
        self.device_id = device_id
        self.bytes_total = sum(p.stat().st_size for p in paths)
        self.bytes_done = 0  # of files finished
        self.files_done = 0
        self._current: BinaryIO | None = None

    @property
    def bytes_read(self) -> int:
        """Compressed bytes consumed so far, for a progress bar."""
        return self.bytes_done + (self._current.tell() if self._current else 0)

    def __iter__(self) -> Iterator[RawMessage]:
        for path in self.paths:
            with open(path, "rb") as handle:
                self._current = handle
                stream = cast(BinaryIO, gzip.GzipFile(fileobj=handle) if path.suffix == ".gz" else handle)
                yield from self._messages(path, stream)
                self._current = None
            self.bytes_done += path.stat().st_size
            self.files_done += 1

    def _messages(self, path: Path, stream: BinaryIO) -> Iterator[RawMessage]:
        kind = file_kind(path)
        fmt = self.format or suffix_format(path)
        received_at = now_micros()
        if kind == "csv" or fmt == "csv":
            yield from self._csv(path, stream, received_at)
        elif kind == "document" and fmt not in ("lineproto",):
            yield from self._document(path, stream, fmt, received_at)
        else:
            yield from self._lines(path, stream, fmt, received_at)

    def _lines(self, path: Path, stream: BinaryIO, fmt: str | None, received_at: int) -> Iterator[RawMessage]:
        name = str(path)  # once: Path.__str__ per line was a tenth of a bulk import's time
        device_id = self.device_id
        for number, line in enumerate(stream, 1):
            body = line.strip()
            if not body or body[:1] == b"#":
                continue
            yield RawMessage(body, "file", f"{name}:{number}", received_at, fmt, device_id)

    def _csv(self, path: Path, stream: BinaryIO, received_at: int) -> Iterator[RawMessage]:
        lines = iter(enumerate(stream, 1))
        header: tuple[str, ...] | None = None
        for number, line in lines:
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            if header is None:
                try:
                    header = split_header(body)
                except DecodeError:
                    # Rows of a file without a usable header are still each accounted
                    # for: the CSV decoder dead-letters a row whose header is empty.
                    header = ()
                continue
            yield RawMessage(body, "file", f"{path}:{number}", received_at, "csv", self.device_id, header)

    def _document(
        self, path: Path, stream: BinaryIO, fmt: str | None, received_at: int
    ) -> Iterator[RawMessage]:
        body = stream.read()
        origin = str(path)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            yield RawMessage(body, "file", origin, received_at, fmt, self.device_id)
            return
        if isinstance(doc, list) and doc and not any(isinstance(d, dict) and is_senml_record(d) for d in doc):
            for index, element in enumerate(doc):
                yield RawMessage(
                    orjson.dumps(element), "file", f"{origin}[{index}]", received_at, fmt, self.device_id
                )
            return
        yield RawMessage(body, "file", origin, received_at, fmt, self.device_id)
