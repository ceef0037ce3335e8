"""The relay's way into JetStream: MQTT messages published to the stream, acked to the broker after.

`iotpipe relay mqtt-to-nats` puts the MQTT source (sources/mqtt.py: persistent session,
QoS 1, manual acks, the broker's in-flight window) in front of this sink instead of the
pipeline. Each message is published to JetStream on the subject nats-server's own MQTT
listener would give it (`telemetry/pump-7` → `telemetry.pump-7`, a `.` inside a level →
`//`), so relayed devices and devices publishing to nats-server directly look the same
to the workers. Only when JetStream has acknowledged storing the message is the MQTT
source told to PUBACK it: a crash in between leaves it unacknowledged at the broker,
which delivers it again (JetStream may then hold it twice; the store keeps one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from iotpipe.model import DeviceInfo, RawMessage
from iotpipe.sources.nats import NatsOptions, connect, ensure_stream, safe_url

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0
_RETRY_MAX = 30.0


def subject_for(topic: str) -> str:
    """The NATS subject nats-server's MQTT listener gives an MQTT topic."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


@dataclass
class RelayStats:
    relayed: int = 0
    retries: int = 0  # publishes JetStream did not acknowledge in time, sent again
    in_flight: int = 0


class JetStreamRelay:
    """A MessageSink for the MQTT source: publishes to JetStream, then acknowledges to MQTT."""

    def __init__(self, options: NatsOptions, window: int) -> None:
        self.options = options
        self.stats = RelayStats()
        self._slots = threading.BoundedSemaphore(max(1, window))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="iotpipe-relay", daemon=True)
        self._js: Any = None
        self._nc: Any = None
        self._stopping = False
        self._idle = threading.Condition()

    def describe(self) -> str:
        return f"Relaying into JetStream stream {self.options.stream} at {safe_url(self.options.url)}."

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(60)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    async def _connect(self) -> None:
        def reconnected() -> None:
            pass

        self._nc = await connect(self.options, "iotpipe relay", reconnected, lambda: self._stopping)
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self.options)

    def stop(self, timeout: float = 30.0) -> None:
        """Wait for the publishes in flight (their MQTT acks), then disconnect."""
        with self._idle:
            self._idle.wait_for(lambda: self.stats.in_flight == 0, timeout)
        self._stopping = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- MessageSink ------------------------------------------------------------------------
    def submit(self, raw: RawMessage, timeout: float | None = None) -> None:
        """Publish; blocks (the MQTT source's network thread) while a window of publishes
        awaits JetStream's acknowledgement."""
        if not self._slots.acquire(timeout=timeout if timeout is None or timeout > 0 else 0.0):
            raise queue.Full
        with self._idle:
            self.stats.in_flight += 1
        asyncio.run_coroutine_threadsafe(self._publish(raw), self._loop)

    def submit_watermark(self, source: str, key: str, value: str) -> None:
        """Nothing to keep: the relay holds no cursor (MQTT sources submit none)."""

    def submit_device_info(self, device_id: str, info: DeviceInfo) -> None:
        """Nothing to keep: device metadata travels in the payloads the workers decode."""

    def flush_soon(self) -> None:
        """Every message is published as it comes: nothing waits for a batch."""

    def commit_point(self) -> threading.Event:
        done = threading.Event()
        done.set()
        return done

    def queue_depth(self) -> int:
        return self.stats.in_flight

    async def _publish(self, raw: RawMessage) -> None:
        subject = subject_for(raw.origin)
        backoff = 0.5
        try:
            while True:
                try:
                    await self._js.publish(subject, raw.payload, timeout=PUBLISH_TIMEOUT)
                    break
                except Exception as exc:
                    self.stats.retries += 1
                    log.warning(
                        "JetStream did not take the message on %s (%s); retrying in %.1f s",
                        subject,
                        type(exc).__name__,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _RETRY_MAX)
            if raw.acker is not None:
                raw.acker.acknowledge([raw.ack_token])
            self.stats.relayed += 1
        finally:
            self._slots.release()
            with self._idle:
                self.stats.in_flight -= 1
                self._idle.notify_all()
