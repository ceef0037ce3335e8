"""The fast path of `iotpipe import`: lines decoded into columns in chunks, by a process pool
for large files, and fed to the one pipeline (the one writer) in file order.

Each chunk holds consecutive lines of one file and one format that formats/columnar.py
can decode (V1 JSON lines, line protocol); any other message — CSV rows, whole JSON
documents, SenML — goes to the exact path at once, as do the lines of a chunk that the
columnar decoder leaves (`Block.fallback`). Chunks are decoded in worker processes when
the import is large (the parent only reads lines and writes batches), at most two per
worker in flight, and handed to the pipeline in the order they were read.

A line-based file is read in large blocks (FileSource.blocks): a block whose lines all go
to one columnar decoder is a chunk as it is, and no RawMessage is made for its lines but
those the decoder leaves (LineBlock makes them on demand).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from iotpipe import limits
from iotpipe.errors import SourceError
from iotpipe.model import RawMessage
from iotpipe.pipeline import Pipeline
from iotpipe.sources.files import FileSource, LineBlock

# Lines decoded as one chunk (at most files.BLOCK_BYTES of them). Each chunk costs its
# fixed part (finding its series, checking the series limit, placing it in the batch);
# 100,000 lines instead of 20,000: hot imports 16 % faster, historical 0-22 % (three A/B
# rounds), for ~150 MB more at the peak (docs/performance.md).
CHUNK_LINES = 100_000
POOL_FROM_BYTES = 16 << 20  # smaller imports decode in this process: a pool costs ~0.3 s to start
MAX_WORKERS = 4


def block_format(block: LineBlock) -> str | None:
    """The columnar decoder for every line of a block, or None when not all can go to one."""
    if block.format == "lineproto":
        return "lineproto"
    # V1 when every line is a JSON object: the least and the greatest line start with "{",
    # so all do (one byte, sorted), found at C speed.
    if block.format in (None, "v1") and min(block.bodies)[:1] == b"{" == max(block.bodies)[:1]:
        return "v1"
    return None


def columnar_format(raw: RawMessage) -> str | None:
    """The columnar decoder for a message, or None for the exact path."""
    if raw.header is not None:
        return None
    if raw.format == "lineproto":
        return "lineproto"
    if raw.format in (None, "v1") and raw.payload[:1] == b"{":
        return "v1"  # a JSON object: a line, or an element of a JSON array document
    return None


class BulkImport:
    def __init__(self, pipeline: Pipeline, total_bytes: int, workers: int = 0) -> None:
        self.pipeline = pipeline
        # The parent keeps a core of its own (it reads, packs, scores and writes): on two
        # cores a pool of two slowed imports by a fifth to a third (docs/performance.md).
        count = workers or min(MAX_WORKERS, (os.cpu_count() or 1) - 1)
        self.workers = count if total_bytes >= POOL_FROM_BYTES and count > 1 else 0
        self._pending: deque[tuple[Sequence[RawMessage], Future[Any] | Any]] = deque()
        self._chunk: list[RawMessage] = []  # messages one by one, gathered for the columnar decoder

    def run(
        self,
        source: FileSource,
        stopped: Callable[[], bool],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        def report() -> None:
            if progress is not None:
                progress(source.bytes_read, source.bytes_total)

        self.feed(source.blocks(CHUNK_LINES), stopped, report)

    def feed(
        self,
        items: Iterable[RawMessage | LineBlock],
        stopped: Callable[[], bool] = lambda: False,
        report: Callable[[], None] | None = None,
    ) -> None:
        """Feed messages and blocks of lines (in their order) to the pipeline, each block
        that one columnar decoder can take as one chunk; `report()` now and then."""
        from iotpipe.formats import columnar

        pool: Executor | None = None
        if self.workers:
            pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"))
        self._chunk = []
        self._pending.clear()  # a feed that failed half-way leaves nothing for the next
        try:
            try:
                for number, item in enumerate(items):
                    if isinstance(item, LineBlock) or not number % 1024:
                        if stopped():
                            break
                        if report is not None:
                            report()
                    if isinstance(item, LineBlock) and (fmt := block_format(item)) is not None:
                        self._flush_chunk(pool, columnar)
                        self._submit(pool, item, fmt, columnar)
                    else:  # a CSV row, a JSON document, a refusal, or a block of mixed lines
                        for raw in item if isinstance(item, LineBlock) else (item,):
                            self._take(raw, pool, columnar)
            except SourceError:
                # The source cannot go on (a damaged file): what it gave before is received
                # like the rest (stored or dead-lettered), then the user hears why it stopped.
                self._flush_chunk(pool, columnar)
                self._drain(columnar, keep=0)
                raise
            if not stopped():
                self._flush_chunk(pool, columnar)
            self._drain(columnar, keep=0)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _take(self, raw: RawMessage, pool: Executor | None, columnar: Any) -> None:
        """One message: into the open chunk if the columnar decoder can take it, else (after
        the chunk, to keep the file's order) to the exact path."""
        fmt = columnar_format(raw)
        chunk = self._chunk
        if fmt is None:
            self._flush_chunk(pool, columnar)
            self._drain(columnar, keep=0)
            self.pipeline.feed(raw)
            return
        # A chunk shares a format and a receipt time (the time check's horizon).
        if chunk and (
            columnar_format(chunk[0]) != fmt
            or chunk[0].received_at != raw.received_at
            or len(chunk) >= CHUNK_LINES
        ):
            self._flush_chunk(pool, columnar)
        self._chunk.append(raw)

    def _flush_chunk(self, pool: Executor | None, columnar: Any) -> None:
        if self._chunk:
            chunk, self._chunk = self._chunk, []
            fmt = columnar_format(chunk[0])
            assert fmt is not None
            self._submit(pool, chunk, fmt, columnar)

    def _submit(self, pool: Executor | None, chunk: Sequence[RawMessage], fmt: str, columnar: Any) -> None:
        payloads = chunk.bodies if isinstance(chunk, LineBlock) else [m.payload for m in chunk]
        if pool is None:
            self._pending.append((chunk, columnar.decode_payloads(payloads, fmt, chunk[0].received_at)))
        else:
            self._pending.append(
                (chunk, pool.submit(columnar.decode_payloads, payloads, fmt, chunk[0].received_at))
            )
        self._drain(columnar, keep=2 * self.workers)

    def _drain(self, columnar: Any, keep: int) -> None:
        """Feed decoded chunks to the pipeline, in order, until at most `keep` are pending."""
        while len(self._pending) > keep:
            chunk, result = self._pending.popleft()
            decoded = result.result() if isinstance(result, Future) else result
            for part in columnar.in_file_order(chunk, decoded):
                if isinstance(part, RawMessage):
                    self.pipeline.feed(part)
                else:
                    self._size_batches(part)
                    self.pipeline.feed_block(part)

    def _size_batches(self, block: Any) -> None:
        """History going into the packed tier: larger batches pack each series-day in fewer
        passes (a day split across batches is merged once more). Columns cost ~20 B a
        reading; hot imports keep the configured size (write-behind overlaps them)."""
        import pyarrow.compute as pc

        config = self.pipeline.config
        if config.pack_before is None or config.batch_size >= limits.BULK_BATCH_SIZE or not len(block):
            return
        if pc.min(block.times).as_py() < config.pack_before:
            config.batch_size = limits.BULK_BATCH_SIZE
