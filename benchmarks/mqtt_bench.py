"""MQTT ingest benchmark (issue 3): publisher -> Mosquitto -> `iotpipe ingest mqtt` -> PostgreSQL/SQLite,
against the ceiling of a bare paho subscriber that only counts, with the same publisher and broker.

Four processes share the machine, as in production on one box: the broker, the publisher
(this script: a raw-socket MQTT client, measured alone first so that it is known not to
be the bottleneck), the subscriber under test (a child process: the bare counter, or the
iotpipe worker built exactly as `iotpipe ingest mqtt` builds it), and the database.
Every message is V1 JSON with 5 metrics from one of 1,000 devices on telemetry/<device>;
its timestamp is its publish time in µs, so the worker measures publish-to-commit latency.
Rates are messages from the first publish to the last commit (or last count, for the
bare subscriber); the worker's peak RSS is its own ru_maxrss.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/mqtt_bench.py`: put the repo root (for tests.servers) on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime as dt
import json
import os
import platform
import resource
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import orjson

from tests.servers import MosquittoServer, PostgresServer

METRICS = ("temperature", "humidity", "pressure", "battery", "rssi")
DEVICES = 1000
ENGINES = ("postgresql", "sqlite")
# The broker settings docs/mqtt.md asks for: hold what a lagging subscriber has not
# taken yet (the publisher here is faster than any subscriber; Mosquitto's default of
# 1,000 queued messages per client would drop the rest), and let MQTT 3.1.1 clients
# have the in-flight window MQTT 5 clients ask for with Receive Maximum.
BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages {inflight}\n"
CHUNK = 200  # messages generated and written per send() by the publisher
IDLE_END = 2.0  # seconds without a message that end a shared-group worker's run


# -- a publisher that is not the bottleneck ----------------------------------------------------
def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


def _connect_packet(client_id: bytes) -> bytes:
    body = _utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def _publish_packet(topic: bytes, payload: bytes, qos: int, mid: int) -> bytes:
    body = _utf8(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


@dataclass
class Published:
    messages: int
    first: float  # wall clock of the first send
    seconds: float  # until the broker had taken every message

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def publish(port: int, messages: int, qos: int, rate: float | None = None, window: int = 5000) -> Published:
    """Publish V1 readings from DEVICES devices over one raw MQTT 3.1.1 connection.

    Packets are built in chunks and written with one send() each; at QoS 1 at most
    `window` await their PUBACK. Ends with a PINGREQ/PINGRESP round trip, which the
    broker answers only after handling everything sent before it.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"bench-pub-{os.getpid()}-{time.monotonic_ns()}".encode()))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("the broker refused the publisher")
    topics = [f"telemetry/dev-{d:04d}".encode() for d in range(DEVICES)]
    ids = [f"dev-{d:04d}" for d in range(DEVICES)]
    acked = sent = 0
    pending = b""
    started_mono = time.monotonic()
    first = time.time()
    while sent < messages:
        if rate is not None:
            delay = started_mono + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        chunk = bytearray()
        now = time.time_ns() // 1000
        for i in range(sent, min(messages, sent + CHUNK)):
            d = i % DEVICES
            body = orjson.dumps(
                {
                    "device_id": ids[d],
                    "timestamp": now,
                    "temperature": 20.0 + (i % 97) / 10,
                    "humidity": 40.0 + (i % 53) / 10,
                    "pressure": 1000.0 + (i % 31),
                    "battery": 90.0 - (i % 7),
                    "rssi": -60.0 - (i % 11),
                }
            )
            chunk += _publish_packet(topics[d], body, qos, i % 65535 + 1)
            now += 1  # distinct times per device, whatever the clock resolution
        sent = min(messages, sent + CHUNK)
        sock.sendall(chunk)
        if qos:
            while sent - acked > window or select.select([sock], [], [], 0)[0]:
                pending += sock.recv(65536)
                whole = len(pending) // 4  # PUBACKs are 4 bytes
                acked += whole
                pending = pending[whole * 4 :]
    while qos and acked < sent:
        pending += sock.recv(65536)
        whole = len(pending) // 4
        acked += whole
        pending = pending[whole * 4 :]
    sock.sendall(b"\xc0\x00")  # PINGREQ
    while not pending.endswith(b"\xd0\x00"):
        pending += sock.recv(65536)
    seconds = time.monotonic() - started_mono
    sock.sendall(b"\xe0\x00")
    sock.close()
    return Published(messages, first, seconds)


# -- the subscribers under test (child processes) ----------------------------------------------
def bare_subscriber(url: str, qos: int, messages: int, inflight: int, protocol: str) -> dict[str, Any]:
    """A paho client that only counts; same protocol and window as the worker."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from iotpipe.brokers import parse_broker_url

    broker = parse_broker_url(url)
    done = threading.Event()
    count = 0
    last = 0.0

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal count, last
        count += 1
        if count >= messages:
            last = time.time()
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{os.getpid()}",
        protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311,
    )
    client.on_message = on_message
    if protocol == "5":
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = inflight
        client.connect(broker.host, broker.port, properties=properties)
    else:
        client.connect(broker.host, broker.port)
    client.subscribe("telemetry/+", qos=qos)
    client.loop_start()
    time.sleep(0.5)
    cpu_at_start = _cpu_seconds()
    _ready()
    done.wait()
    client.disconnect()
    client.loop_stop()
    cpu = _cpu_seconds() - cpu_at_start
    return {"last": last, "messages": count, "peak_rss_mb": _peak_rss_mb(), "cpu_seconds": cpu}


def worker(
    url: str, database_url: str, qos: int, messages: int, inflight: int, protocol: str, group: str | None
) -> dict[str, Any]:
    """The iotpipe worker as `iotpipe ingest mqtt` builds it, timing each commit.

    Alone, it stops after `messages`; in a shared group (which splits them with other
    workers) once no message has come for IDLE_END seconds.
    """
    from iotpipe.app import App
    from iotpipe.app.wiring import mqtt_options
    from iotpipe.config import MqttSettings, PipelineSettings, Settings
    from iotpipe.model import WriteBatch, WriteResult
    from iotpipe.pipeline import PipelineWriter
    from iotpipe.sources.mqtt import MqttSource

    settings = Settings(  # type: ignore[call-arg]
        database_url=database_url,
        mqtt_url=url,
        pipeline=PipelineSettings(),  # type: ignore[call-arg]
        # A fresh session per run that ends with it: no run inherits another's backlog.
        mqtt=MqttSettings(  # type: ignore[call-arg]
            client_id=f"bench-worker-{os.getpid()}",
            qos=qos,
            inflight=inflight,
            protocol=protocol,
            session_expiry=0,
            shared_group=group,
        ),
    )
    application = App(settings)
    application.init()
    options = mqtt_options(settings)
    source = MqttSource(options)
    done = threading.Event()
    latencies: list[int] = []
    last = 0.0

    def on_commit(batch: WriteBatch, _result: WriteResult) -> None:
        nonlocal last
        committed = time.time_ns() // 1000
        latencies.extend(committed - readings[0][1] for _, readings in batch.groups)
        if batch.groups:
            last = time.time()
        if group is None and pipeline.counters.messages_received >= messages:
            done.set()

    # First among the observers, before the analytics: the commit time.
    pipeline = application.pipeline(max_unacked=source.ack_window)
    pipeline.observers = (on_commit, *pipeline.observers)
    writer = PipelineWriter(pipeline)
    writer.start()
    source.start(pipeline)
    cpu_at_start = _cpu_seconds()
    _ready()
    if group is None:
        done.wait()
    else:
        seen = -1
        while seen != source.stats.messages or not seen:
            seen = source.stats.messages
            time.sleep(IDLE_END)
    threads = _thread_cpu_seconds()
    cpu = _cpu_seconds() - cpu_at_start
    source.stop()
    writer.stop()
    application.close()
    latencies.sort()
    return {
        "last": last,
        "messages": pipeline.counters.messages_received,
        "counters": pipeline.counters.as_dict(),
        "mqtt": asdict(source.stats),
        "latency_p50_ms": _percentile(latencies, 0.50) / 1000,
        "latency_p99_ms": _percentile(latencies, 0.99) / 1000,
        "peak_rss_mb": _peak_rss_mb(),
        "cpu_seconds": cpu,
        "thread_cpu_seconds": threads,
    }


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU time of each live thread, by name: where the worker's time goes."""
    spent: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is not None:
            clock = time.pthread_getcpuclockid(thread.ident)
            spent[thread.name] = round(time.clock_gettime(clock), 2)
    return spent


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


@dataclass
class Run:
    name: str
    qos: int
    messages: int
    seconds: float
    rate: float
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_rss_mb: float = 0.0
    ratio: float | None = None  # to the bare subscriber on the same protocol
    ratio_best: float | None = None  # to the faster of the two bare subscribers (3.1.1 and 5)
    details: dict[str, Any] = field(default_factory=dict)


def measure(
    roles: list[list[str]], port: int, messages: int, qos: int, name: str, rate: float | None = None
) -> Run:
    """Start subscriber children, publish once all are subscribed, combine their reports."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *role, "--messages", str(messages), "--qos", str(qos)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for role in roles
    ]
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            for c in children:
                c.kill()
            raise RuntimeError(f"{name}: a subscriber did not start")
    published = publish(port, messages, qos, rate)
    reports = []
    for child in children:
        assert child.stdout is not None
        reports.append(json.loads(child.stdout.read()))
        if child.wait() != 0:
            raise RuntimeError(f"{name}: a subscriber failed")
    received = sum(r["messages"] for r in reports)
    seconds = max(r["last"] for r in reports) - published.first
    latency = [r for r in reports if "latency_p50_ms" in r]
    return Run(
        name=name,
        qos=qos,
        messages=received,
        seconds=seconds,
        rate=received / seconds,
        latency_p50_ms=max(r["latency_p50_ms"] for r in latency) if latency else None,
        latency_p99_ms=max(r["latency_p99_ms"] for r in latency) if latency else None,
        peak_rss_mb=max(r["peak_rss_mb"] for r in reports),
        details={
            "published": messages,
            "publish_seconds": published.seconds,
            "cpu_seconds": sum(r["cpu_seconds"] for r in reports),
            "workers": [
                {k: v for k, v in r.items() if k in ("messages", "counters", "mqtt", "thread_cpu_seconds")}
                for r in reports
            ],
        },
    )


def _child(args: argparse.Namespace) -> int:
    args.qos = int(args.qos)
    if args.bare:
        report = bare_subscriber(args.bare, args.qos, args.messages, args.inflight, args.protocol)
    else:
        report = worker(
            args.url,
            args.database_url,
            args.qos,
            args.messages,
            args.inflight,
            args.protocol,
            args.shared_group,
        )
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000, help="messages per run (5 readings each)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: postgresql,sqlite")
    parser.add_argument("--qos", default="1,0", help="comma-separated QoS levels to run")
    parser.add_argument(
        "--inflight", type=int, default=None, help="worker's in-flight window (default: iotpipe's)"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=5000.0,
        help="msg/s of the paced run that measures latency below saturation (0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON (progress to stderr)")
    # Child roles.
    parser.add_argument("--bare", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--shared-group", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help="workers of the shared-group run (0: skip it)")
    parser.add_argument(
        "--protocol", default="5", choices=("5", "3.1.1"), help="MQTT version of both subscribers"
    )
    args = parser.parse_args(argv)
    from iotpipe.sources.mqtt import DEFAULT_INFLIGHT

    if args.inflight is None:
        args.inflight = DEFAULT_INFLIGHT
    if args.bare or args.url:
        return _child(args)
    say = sys.stderr if args.json else sys.stdout
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    levels = [int(q) for q in args.qos.split(",") if q.strip()]
    if set(engines) - set(ENGINES) or set(levels) - {0, 1}:
        parser.error("engines are postgresql and sqlite; QoS levels 0 and 1")
    runs = bench(args, engines, levels, say)
    failures = [r.name for r in runs if _failure(r)]
    for run in runs:
        if _failure(run):
            print(f"FAIL: {run.name} (QoS {run.qos}): {_failure(run)}", file=say)
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "mqtt",
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "messages": args.messages,
                    "inflight": args.inflight,
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        )
    else:
        _print_table(runs, say)
    return 1 if failures else 0


def bench(args: argparse.Namespace, engines: list[str], levels: list[int], say: TextIO) -> list[Run]:
    runs: list[Run] = []
    n, window, protocol = args.messages, args.inflight, args.protocol
    config = BROKER_CONFIG.format(inflight=window)
    print(
        f"mqtt: {n:,} messages x 5 readings, {DEVICES:,} devices; MQTT {protocol}, window {window:,}; "
        f"Mosquitto with {'; '.join(config.strip().splitlines())}",
        file=say,
    )

    def record(run: Run) -> Run:
        runs.append(run)
        _say(run, say)
        return run

    pg = PostgresServer().start() if "postgresql" in engines else None
    try:
        with MosquittoServer(extra_config=config) as broker, tempfile.TemporaryDirectory() as tmp:
            for qos in levels:
                alone = publish(broker.port, n, qos)
                record(Run("publisher alone", qos, n, alone.seconds, alone.rate))
                # The ceiling, on both protocols: paho parses MQTT 5 packets at a
                # higher cost, so the bare 3.1.1 subscriber is the faster one.
                bares = {}
                for version in sorted({protocol, "3.1.1", "5"}, key=lambda v: v != protocol):
                    role = ["--bare", broker.url, "--inflight", str(window), "--protocol", version]
                    bares[version] = record(
                        measure([role], broker.port, n, qos, f"bare paho subscriber, MQTT {version}")
                    )
                bare, best = bares[protocol], max(r.rate for r in bares.values())

                def compare(run: Run) -> Run:
                    run.ratio, run.ratio_best = run.rate / bare.rate, run.rate / best  # noqa: B023
                    return record(run)

                for engine in engines:
                    url = _database(engine, pg, Path(tmp), f"q{qos}")
                    role = _worker_role(broker.url, url, window, protocol)
                    compare(measure([role], broker.port, n, qos, f"iotpipe -> {engine}"))
                if args.workers > 1 and engines:
                    # Scale-out on one box: workers sharing the subscription, one database.
                    engine = engines[0]
                    url = _database(engine, pg, Path(tmp), f"shared{qos}")
                    role = [*_worker_role(broker.url, url, window, protocol), "--shared-group", f"bench{qos}"]
                    compare(measure([role] * args.workers, broker.port, n, qos,
                                    f"{args.workers} iotpipe workers (shared group) -> {engine}"))  # fmt: skip
            if args.latency_rate and 1 in levels and engines:
                engine = engines[0]
                url = _database(engine, pg, Path(tmp), "paced")
                role = _worker_role(broker.url, url, window, protocol)
                count = int(min(n, args.latency_rate * 10))
                name = f"iotpipe -> {engine}, paced at {args.latency_rate:,.0f}/s"
                record(measure([role], broker.port, count, 1, name, rate=args.latency_rate))
        if 1 in levels and engines:
            # What the window design is for: an MQTT 3.1.1 broker left at Mosquitto's default
            # max_inflight_messages of 20, with iotpipe told so, and with iotpipe not told.
            engine = engines[0]
            with (
                MosquittoServer(extra_config="max_queued_messages 0") as broker,
                tempfile.TemporaryDirectory() as tmp,
            ):
                for told in (20, window):
                    url = _database(engine, pg, Path(tmp), f"w{told}")
                    role = _worker_role(broker.url, url, told, "3.1.1")
                    name = f"iotpipe -> {engine}, 3.1.1, broker window 20, --inflight {told}"
                    record(measure([role], broker.port, max(1000, n // 10), 1, name))
    finally:
        if pg is not None:
            pg.stop()
    return runs


def _failure(run: Run) -> str | None:
    """What went wrong in a run: fewer messages received or readings stored than published."""
    published = run.details.get("published")
    if published is None:
        return None
    if run.messages != published:
        return f"received {run.messages:,} of {published:,} messages"
    workers = run.details.get("workers", [])
    stored = sum(w["counters"]["readings_stored"] for w in workers if "counters" in w)
    if any("counters" in w for w in workers) and stored != 5 * published:
        return f"stored {stored:,} readings of {5 * published:,}"
    return None


def _worker_role(url: str, database_url: str, inflight: int, protocol: str = "5") -> list[str]:
    return ["--url", url, "--database-url", database_url, "--inflight", str(inflight), "--protocol", protocol]


def _database(engine: str, pg: PostgresServer | None, tmp: Path, name: str) -> str:
    if engine == "sqlite":
        return f"sqlite:///{tmp / f'{name}.db'}"
    assert pg is not None
    return pg.create_database(f"mqtt_{name}")


def _say(run: Run, say: TextIO) -> None:
    extra = ""
    if run.latency_p50_ms is not None:
        extra = (
            f", latency p50 {run.latency_p50_ms:,.0f} ms p99 {run.latency_p99_ms:,.0f} ms, "
            f"peak RSS {run.peak_rss_mb:.0f} MB"
        )
    ratio = ""
    if run.ratio is not None:
        ratio = (
            f" ({run.ratio:.2f} of the bare subscriber, same protocol; {run.ratio_best:.2f} of the fastest)"
        )
    if "cpu_seconds" in run.details:
        extra += f", CPU {run.details['cpu_seconds'] / run.seconds:.0%} of a core"
    print(f"  QoS {run.qos} {run.name:<60} {run.rate:>9,.0f} msg/s{ratio}{extra}", file=say, flush=True)


def _print_table(runs: list[Run], say: TextIO) -> None:
    print(
        f"\n{'run':<66}{'QoS':>4}{'msg/s':>10}{'readings/s':>12}{'ratio':>7}{'/best':>7}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'RSS MB':>8}",
        file=say,
    )
    for r in runs:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        best = f"{r.ratio_best:.2f}" if r.ratio_best is not None else ""
        p50 = f"{r.latency_p50_ms:,.0f}" if r.latency_p50_ms is not None else ""
        p99 = f"{r.latency_p99_ms:,.0f}" if r.latency_p99_ms is not None else ""
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else ""
        print(
            f"{r.name:<66}{r.qos:>4}{r.rate:>10,.0f}{r.rate * 5:>12,.0f}{ratio:>7}{best:>7}{p50:>9}{p99:>9}{rss:>8}",
            file=say,
        )


if __name__ == "__main__":
    sys.exit(main())
