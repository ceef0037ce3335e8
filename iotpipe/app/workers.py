"""More cores for the HTTP API: worker processes on the one port, and the relay that keeps
them one server.

One Python process answers HTTP on about one core, however many threads it has: they share
one interpreter lock. With `[api] workers` = N, the process that runs the sources and the
jobs (the *primary*) starts N - 1 worker processes. Each inherits the listening socket (the
kernel hands every new connection to one of them) and opens its own App on the same
database: it answers queries, takes HTTP ingest through a pipeline of its own (stored
exactly once, like any writer's) and serves live-feed clients. What must look like one
server goes through the primary, over a private Unix socket that only holders of a random
key may use (multiprocessing's authenticated connections):

- committed readings, for the live feed: a process sends its batches' readings to the
  primary, which hands them to its own hub and to the other workers. Only while another
  process has a live client (each tells the primary its count): otherwise ingest pays
  nothing for it;
- anomaly detection: the streaming detector scores each series' readings in order, from
  state it keeps in memory (docs/nats.md says why not in the database), so one process
  must score them all: after each commit a worker sends the primary its readings (series
  ids, times, values) and waits while the primary's detector scores them, as its own
  pipeline's observer would before the request is answered. So a device that sends its
  readings one request after another has them scored in that order, whichever process
  takes each request, and the episodes are those one process finds;
- metrics: a worker sends what it counts (each commit's figures, each request) to the
  primary, whose registry is the only one; a worker answers /metrics, /health/ready and the
  ingest rate of /api/v1/stats by asking the primary. A scrape sees the same counters
  whichever process answers it, and never a counter going back.

Per process, and documented so (docs/api.md#more-cores): the rate limit, the 2-s cache of
/api/v1/stats, the polls of the live feed's anomalies, alerts and statuses.

A worker stops with the primary (SIGTERM, then its connection closes) and the primary starts
a new one in place of one that died.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import TYPE_CHECKING, Any

from iotpipe.analytics.streaming import anomaly_observers
from iotpipe.errors import StoreError
from iotpipe.sinks.live import Readings, committed_readings, hub_figures
from iotpipe.sinks.metrics import CommitFigures, Telemetry

if TYPE_CHECKING:
    from iotpipe.app import App, WebFactory
    from iotpipe.config import Settings
    from iotpipe.model import WriteBatch, WriteResult
    from iotpipe.sinks.live import LiveHub

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5  # how often a worker sends the requests it answered and its hub's figures
CALL_TIMEOUT = 10.0  # seconds a worker waits for the primary's answer
START_TIMEOUT = 60.0  # seconds the primary waits for its workers to listen
OUTBOX_LIMIT = 1_000  # batches of readings waiting for one peer before new ones are dropped
Message = tuple[Any, ...]


class Outbox:
    """Messages to one peer, sent by a thread of their own, so that a pipeline's commit
    does not wait on another process. When `OUTBOX_LIMIT` messages wait, live readings are
    dropped (the live feed is a view; its clients reconnect with a backfill) and anything
    else waits for room: the peer's pace bounds what is held, never memory."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self._queue: deque[Message] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, message: Message, droppable: bool = False) -> bool:
        with self._ready:
            while len(self._queue) >= OUTBOX_LIMIT and not self._closed:
                if droppable:
                    return False
                self._ready.wait()
            if self._closed:
                return False
            self._queue.append(message)
            self._ready.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                messages = list(self._queue)
                self._queue.clear()
                self._ready.notify_all()  # room again for those waiting in put()
            try:
                for message in messages:
                    self.conn.send(message)
            except (OSError, EOFError, ValueError):
                self.close(wait=False)  # the peer is gone: its reader notices too
                return

    def close(self, wait: bool = True) -> None:
        """Stop taking messages; with `wait`, send those queued first."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(5)


# -- the primary's side ------------------------------------------------------------------------
@dataclass
class _Peer:
    index: int
    outbox: Outbox
    listening: bool = False  # told: another process has live clients
    hub: dict[str, Any] | None = None  # its live feed's figures, as it last sent them
    requests: int = 0  # answered by this worker, since it started
    stored: int = 0  # readings it stored

    @property
    def clients(self) -> int:
        return self.hub["clients"] if self.hub is not None else 0


class Relay:
    """The primary's end: accepts the workers' connections and serves each on a thread."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._dir = tempfile.mkdtemp(prefix="iotpipe-api-")  # 0700: this user's alone
        self.address = os.path.join(self._dir, "relay")
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener(self.address, "AF_UNIX", authkey=self.authkey)
        self._peers: dict[int, _Peer] = {}
        self._lock = threading.Lock()
        self._clients = 0  # the primary's own live clients
        self.started: dict[int, threading.Event] = {}
        self._closing = False
        threading.Thread(target=self._accept, name="iotpipe-relay", daemon=True).start()

    # -- hooks the App sets up ----------------------------------------------------------------
    def attach_hub(self, hub: LiveHub) -> None:
        hub.on_clients = self._own_clients

    def observe(self, batch: WriteBatch, result: WriteResult) -> None:
        """The primary's pipelines' after-commit observer: its readings, to the workers'
        live clients (its own hub has them already)."""
        if batch.groups or batch.blocks:
            self._fan_out(committed_readings(batch), sender=None)

    def hubs(self) -> list[dict[str, Any]]:
        """The workers' live-feed figures, for /metrics."""
        with self._lock:
            return [peer.hub for peer in self._peers.values() if peer.hub is not None]

    def peers(self) -> list[_Peer]:
        """The workers connected now."""
        with self._lock:
            return list(self._peers.values())

    # -- connections ----------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closing:
            try:
                conn = self._listener.accept()
                kind, index = conn.recv()
            except (OSError, EOFError, ValueError, multiprocessing.AuthenticationError):
                continue  # closed (we are stopping), or a peer without the key
            if kind != "hello":
                conn.close()
                continue
            peer = _Peer(index, Outbox(conn, f"iotpipe-relay-to-{index}"))
            with self._lock:
                self._peers[index] = peer
            self._update_listening()
            threading.Thread(
                target=self._serve, args=(peer, conn), name=f"iotpipe-relay-from-{index}", daemon=True
            ).start()

    def _serve(self, peer: _Peer, conn: Connection) -> None:
        try:
            while True:
                self._handle(peer, conn.recv())
        except (OSError, EOFError):
            log.debug("API worker %d closed its connection", peer.index)
        except Exception:  # a bug here must not take the primary down
            log.exception("API worker %d: relay failed; dropping its connection", peer.index)
        finally:
            peer.outbox.close(wait=False)
            conn.close()
            with self._lock:
                if self._peers.get(peer.index) is peer:
                    del self._peers[peer.index]
            self._update_listening()

    def _handle(self, peer: _Peer, message: Message) -> None:
        kind = message[0]
        if kind == "commit":
            peer.stored += message[1].stored
            self.app.telemetry.record(message[1])
        elif kind == "requests":
            peer.requests += len(message[1])
            for route, method, code, seconds in message[1]:
                self.app.telemetry.observe_request(route, method, code, seconds)
        elif kind == "readings":
            self._fan_out(message[1], sender=peer.index)
        elif kind == "hub":
            before, peer.hub = peer.clients, message[1]
            if peer.clients != before:
                self._update_listening()
        elif kind == "call":
            peer.outbox.put(("reply", message[1], self._answer(message[2], *message[3:])))
        elif kind == "started":
            self.started.setdefault(peer.index, threading.Event()).set()

    def _answer(self, name: str, *args: Any) -> Any:
        try:
            if name == "score":
                for detector in anomaly_observers(self.app.store, self.app.settings):
                    detector.score(*args)
                return None
            if name == "exposition":
                return self.app.telemetry.exposition()
            if name == "readiness":
                return self.app.readiness()
            if name == "ingest_rate":
                return self.app.telemetry.ingest_rate()
            raise ValueError(f"no such call: {name}")
        except Exception as exc:
            return StoreError(f"the API's primary process could not answer: {exc}")

    def _fan_out(self, readings: Readings, sender: int | None) -> None:
        if sender is not None:
            self.app.live.hand_over(*readings)  # a no-op while the primary has no clients
        with self._lock:
            peers = [p for p in self._peers.values() if p.index != sender and p.clients]
        for peer in peers:
            peer.outbox.put(("readings", readings), droppable=True)

    # -- who listens ------------------------------------------------------------------------
    def _own_clients(self, count: int) -> None:
        self._clients = count
        self._update_listening()

    def _update_listening(self) -> None:
        """Tell each worker whether another process has live clients (then it sends its
        readings here)."""
        with self._lock:
            total = self._clients + sum(p.clients for p in self._peers.values())
            changed = []
            for peer in self._peers.values():
                listening = total - peer.clients > 0
                if listening != peer.listening:
                    peer.listening = listening
                    changed.append((peer, listening))
        for peer, listening in changed:
            peer.outbox.put(("listening", listening))

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            peers = list(self._peers.values())
        for peer in peers:
            peer.outbox.close(wait=False)
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class WorkerPlan:
    """What a worker process is started with (pickled into it: all plain data, the
    listening socket and the API's factory, a module-level function)."""

    index: int
    settings: Settings
    web: WebFactory
    sock: socket.socket
    address: str
    authkey: bytes


class WorkerPool:
    """The worker processes, started and stopped with the primary's API server; one that
    dies is started again."""

    def __init__(self, relay: Relay, settings: Settings, web: WebFactory, sock: socket.socket, count: int):
        self.relay = relay
        self.plans = [
            WorkerPlan(i, settings, web, sock, relay.address, relay.authkey) for i in range(1, count + 1)
        ]
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads forked
        self.processes: dict[int, Any] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        for plan in self.plans:
            self._spawn(plan)
        for plan in self.plans:
            started = self.relay.started.setdefault(plan.index, threading.Event())
            if not started.wait(START_TIMEOUT):
                log.warning("API worker %d did not start within %g s", plan.index, START_TIMEOUT)
        self._watcher = threading.Thread(target=self._watch, name="iotpipe-api-workers", daemon=True)
        self._watcher.start()

    def _spawn(self, plan: WorkerPlan) -> None:
        self.relay.started.pop(plan.index, None)
        process = self._context.Process(target=serve_worker, args=(plan,), name=f"iotpipe-api-{plan.index}")
        process.start()
        self.processes[plan.index] = process

    def _watch(self) -> None:
        plans = {plan.index: plan for plan in self.plans}
        while not self._stopping.wait(1.0):
            for index, process in list(self.processes.items()):
                if not process.is_alive() and not self._stopping.is_set():
                    log.error(
                        "API worker %d (pid %s) exited with %s; starting another",
                        index,
                        process.pid,
                        process.exitcode,
                    )
                    self._spawn(plans[index])

    def stop(self, grace: float) -> None:
        """SIGTERM each worker: it stops accepting and finishes its requests (an ingest
        commits before it answers); SIGKILL after `grace` seconds."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        for process in self.processes.values():
            process.join(grace)
            if process.is_alive():
                log.warning("API worker %s did not stop in %g s; killing it", process.pid, grace)
                process.kill()
                process.join(5)
        self.relay.close()

    def describe(self) -> str:
        return f"{len(self.plans) + 1} API processes"


# -- a worker's side -------------------------------------------------------------------------
class PrimaryLink:
    """A worker's end of the relay."""

    def __init__(self, address: str, authkey: bytes, index: int) -> None:
        self.index = index
        self.conn = Client(address, "AF_UNIX", authkey=authkey)
        self.outbox = Outbox(self.conn, "iotpipe-relay-out")
        self.outbox.put(("hello", index))
        self.listening = False
        self.hub: LiveHub | None = None
        self.on_lost: Callable[[], None] = lambda: None
        self._requests: list[tuple[str, str, int, float]] = []
        self._requests_lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[int, list[Any]] = {}  # call id -> [Event, answer]
        self._last_figures: dict[str, Any] | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._read, name="iotpipe-relay-in", daemon=True).start()
        threading.Thread(target=self._flush_every, name="iotpipe-relay-flush", daemon=True).start()

    # -- hooks the App sets up ----------------------------------------------------------------
    def attach_hub(self, hub: LiveHub) -> None:
        self.hub = hub

    def observe(self, batch: WriteBatch, result: WriteResult) -> None:
        """This worker's pipelines' after-commit observer: its readings, to the primary's
        detector, and to the other processes' live clients while there are some."""
        if self.listening and (batch.groups or batch.blocks):
            self.outbox.put(("readings", committed_readings(batch)), droppable=True)
        if result.series_ids is not None and len(result.series_ids):
            self.call("score", result.series_ids, result.times, result.values)

    def hubs(self) -> list[dict[str, Any]]:
        return []  # a worker's /metrics is the primary's

    def note_commit(self, figures: CommitFigures) -> None:
        self.outbox.put(("commit", figures))

    def note_request(self, route: str, method: str, code: int, seconds: float) -> None:
        with self._requests_lock:
            self._requests.append((route, method, code, seconds))

    def call(self, name: str, *args: Any) -> Any:
        """The primary's answer; what this worker counted goes first, so it is in it."""
        self._flush()
        call_id = next(self._ids)
        waiting: list[Any] = [threading.Event(), None]
        self._waiting[call_id] = waiting
        try:
            if not self.outbox.put(("call", call_id, name, *args)) or not waiting[0].wait(CALL_TIMEOUT):
                raise StoreError("the API's primary process did not answer; try again")
        finally:
            self._waiting.pop(call_id, None)
        if isinstance(waiting[1], Exception):
            raise waiting[1]
        return waiting[1]

    def started(self) -> None:
        self.outbox.put(("started",))

    # -- threads ------------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "readings" and self.hub is not None:
                    self.hub.hand_over(*message[1])
                elif kind == "listening":
                    self.listening = message[1]
                elif kind == "reply":
                    waiting = self._waiting.get(message[1])
                    if waiting is not None:
                        waiting[1] = message[2]
                        waiting[0].set()
        except (OSError, EOFError):
            log.debug("the relay's connection to the primary closed")
        if not self._closed.is_set():
            log.error("API worker %d lost the primary process; stopping", self.index)
            self.on_lost()

    def _flush_every(self) -> None:
        while not self._closed.wait(FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        with self._requests_lock:
            requests, self._requests = self._requests, []
        if requests:
            self.outbox.put(("requests", requests))
        if self.hub is not None:
            figures = hub_figures(self.hub)
            if figures != self._last_figures:
                self._last_figures = figures
                self.outbox.put(("hub", figures))

    def close(self) -> None:
        self._closed.set()
        self._flush()
        self.outbox.close()
        self.conn.close()


class PeerTelemetry(Telemetry):
    """A worker's metrics: counted by the primary (see the module's docstring)."""

    def __init__(self, link: PrimaryLink) -> None:
        super().__init__()
        self.link = link

    def observe_commit(self, batch: WriteBatch, result: WriteResult) -> None:
        self.link.note_commit(CommitFigures.of(batch, result))

    __call__ = observe_commit

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.link.note_request(route, method, code, seconds)

    def exposition(self) -> bytes:
        answer: bytes = self.link.call("exposition")
        return answer

    def ingest_rate(self) -> float:
        answer: float = self.link.call("ingest_rate")
        return answer


def serve_worker(plan: WorkerPlan) -> None:
    """A worker process's main: the API over its own App, on the inherited socket."""
    import uvicorn

    from iotpipe.app import App, register_secrets
    from iotpipe.app.server import uvicorn_config
    from iotpipe.logs import setup_logging

    settings = plan.settings
    register_secrets(settings)
    setup_logging(settings.log_level, settings.log_format)
    os.setpgrp()  # Ctrl-C in a terminal reaches the primary alone, which stops us once
    link = PrimaryLink(plan.address, plan.authkey, plan.index)
    app = App(settings)
    app.join_primary(link, PeerTelemetry(link))
    server = uvicorn.Server(uvicorn_config(plan.web(app)))
    link.on_lost = lambda: setattr(server, "should_exit", True)

    def announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            link.started()

    threading.Thread(target=announce, name="iotpipe-api-started", daemon=True).start()
    try:
        server.run(sockets=[plan.sock])
    finally:
        with contextlib.suppress(Exception):
            app.close()
        link.close()
