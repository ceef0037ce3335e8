"""The source role: what a source is given (a MessageSink) and what it offers a runner.

A source turns the outside world (a broker, a poller, a simulator) into RawMessages and
hands them to its sink; it never sees the pipeline, the store or the settings. The
pipeline is the sink in practice, but a source knows only these methods.
"""

from __future__ import annotations

import threading
from typing import Protocol

from iotpipe.model import DeviceInfo, RawMessage


class MessageSink(Protocol):
    def submit(self, raw: RawMessage, timeout: float | None = None) -> None:
        """Queue a message; blocks while the queue is full (raises queue.Full after `timeout`)."""
        ...

    def submit_watermark(self, source: str, key: str, value: str) -> None:
        """Queue a resume point, committed with the messages submitted before it."""
        ...

    def submit_device_info(self, device_id: str, info: DeviceInfo) -> None: ...

    def flush_soon(self) -> None:
        """Ask for the open batch to be committed now rather than when full or late."""
        ...

    def commit_point(self) -> threading.Event:
        """Ask for everything submitted so far to be committed now; the event is set once
        it is (a pull source waits on it before fetching more: bounded progress lost)."""
        ...

    def queue_depth(self) -> int: ...


class Source(Protocol):
    name: str

    @property
    def ack_window(self) -> int | None:
        """Messages the source may leave awaiting their ack before the pipeline must commit
        them (a broker's in-flight window); None when it does not wait for acks."""
        ...

    def start(self, sink: MessageSink) -> None:
        """Begin handing messages to `sink` (from threads of the source's own)."""
        ...

    def stop(self) -> None:
        """Take no more messages; return once those taken are handed to the sink."""
        ...

    def finished(self) -> bool:
        """True once a source with an end (a one-off pull) has handed over everything."""
        ...

    def describe(self) -> str: ...
