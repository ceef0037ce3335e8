"""Helpers for the NATS tests: fast publishers (JetStream and MQTT), worker processes, expectations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson

T0_MS = 1_763_800_000_000  # readings' times: ms since the epoch, one second apart per device


@dataclass(frozen=True)
class Telemetry:
    """A planned stream: `count` messages over `devices` devices, every `malformed_every`-th broken."""

    count: int
    devices: int = 500
    malformed_every: int = 97
    prefix: str = "dev"

    def messages(self) -> Iterator[tuple[str, bytes]]:
        """(device id, payload) in publishing order."""
        for i in range(self.count):
            device = f"{self.prefix}-{i % self.devices:04d}"
            if i % self.malformed_every == self.malformed_every - 1:
                yield device, f'{{"timestamp": {T0_MS + i * 1000}, "temperature": '.encode() + str(i).encode()
            else:
                yield device, orjson.dumps({"timestamp": T0_MS + i * 1000, "temperature": i / 10})

    @property
    def malformed(self) -> int:
        return self.count // self.malformed_every

    @property
    def readings(self) -> int:
        return self.count - self.malformed

    def expected(self, device: str) -> list[tuple[int, float]]:
        """What the store must hold for one device: (µs, value), in time order."""
        index = int(device.rsplit("-", 1)[1])
        return [
            ((T0_MS + i * 1000) * 1000, i / 10)
            for i in range(index, self.count, self.devices)
            if i % self.malformed_every != self.malformed_every - 1
        ]

    def device_ids(self) -> list[str]:
        return [f"{self.prefix}-{d:04d}" for d in range(min(self.devices, self.count))]


@dataclass
class JetStreamPublisher:
    """Publishes a plan to JetStream, `window` publishes awaiting their ack at once, and
    publishes again whatever JetStream did not acknowledge (a server restart): at least once."""

    url: str
    plan: Telemetry
    subject: str = "telemetry.{device}"
    window: int = 2000
    acked: int = 0
    resent: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            asyncio.run(self._publish_all())
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    async def _publish_all(self) -> None:
        import nats

        nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        js = nc.jetstream()
        slots = asyncio.Semaphore(self.window)

        async def one(subject: str, payload: bytes) -> None:
            try:
                while True:
                    try:
                        await js.publish(subject, payload, timeout=5)
                        self.acked += 1
                        return
                    except Exception:
                        self.resent += 1
                        await asyncio.sleep(0.5)
            finally:
                slots.release()

        tasks = []
        for device, payload in self.plan.messages():
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(self.subject.format(device=device), payload)))
        await asyncio.gather(*tasks)
        await nc.close()


def clean_env() -> dict[str, str]:
    # An `iotpipe run` of a test serves its API on a free port, not 8080.
    return {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_")} | {"IOTPIPE_API__PORT": "0"}


def iotpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotpipe", *args]


def start_nats_worker(
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`iotpipe ingest nats` as a process; returns once it consumes."""
    process = subprocess.Popen(
        iotpipe("-d", database_url, "ingest", "nats", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env() | (env or {}),
    )
    said = process.stderr if "--json" in args else process.stdout
    assert said is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Consuming JetStream stream"):
        lines.append(said.readline())
        if not lines[-1]:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"the worker did not start: {''.join(lines)}{err}")
    return process


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 120.0,
    state: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            seen = f" (then: {state()})" if state is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        time.sleep(0.1)
