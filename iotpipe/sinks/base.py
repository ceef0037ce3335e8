"""The two roles a sink can play for the pipeline, as interfaces the pipeline knows.

- The *primary* sink (the store) commits each batch; its commit is what gates the
  sources' acknowledgements. If it raises, nothing of the batch is acknowledged.
- *Observers* run after that commit, in the writer's thread, with the batch and what
  the primary sink stored: the streaming anomaly detector, the live feed, the lake.
  They never fail the batch (the pipeline logs and carries on) and must be quick or
  hand the work to a thread of their own.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from iotpipe.model import WriteBatch, WriteResult


class PrimarySink(Protocol):
    # Whether the pipeline should commit a full batch from a second thread while it
    # decodes the next: worth it when the engine's server does the work elsewhere.
    writes_behind: bool

    def write(self, batch: WriteBatch) -> WriteResult:
        """Commit the whole batch in one transaction, or raise and commit nothing:
        BatchRejected when the data itself cannot be stored, anything else for an outage."""
        ...

    def prepare_columns(self, batch: WriteBatch) -> None:
        """Do what can be done before the write, in the decoding thread."""
        ...

    def known_metrics(self, device_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The metrics each device already has series for (for the per-device limit)."""
        ...


class CommitObserver(Protocol):
    def __call__(self, batch: WriteBatch, result: WriteResult) -> None: ...
