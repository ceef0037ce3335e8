"""MQTT ingestion against a real Mosquitto: at least once, nothing doubled, every layout decoded."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from iotpipe.app import App
from iotpipe.brokers import parse_broker_url
from iotpipe.config import MqttSettings, PipelineSettings, Settings
from iotpipe.model import datetime_to_micros, now_micros
from iotpipe.sinks.mqtt import Publisher
from iotpipe.sources.simulator import Simulator
from iotpipe.store import Store, open_store
from tests.servers import MosquittoServer, PostgresServer, free_port
from tests.sources.mqtt_helpers import (
    Worker,
    expected_readings,
    publish,
    run_inside_writes,
    stored_readings,
    unique,
    wait_until,
)

# What a broker needs so that messages for a subscriber that is away or slow are kept,
# not dropped after Mosquitto's default 1,000 (see docs/mqtt.md).
KEEP_QUEUED = "max_queued_messages 100000"


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    """A private broker, for tests that restart it or rely on its exact topics."""
    with MosquittoServer(extra_config=KEEP_QUEUED) as server:
        yield server


def clean_env() -> dict[str, str]:
    # An `iotpipe run` of a test serves its API on a free port, not 8080.
    return {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_")} | {"IOTPIPE_API__PORT": "0"}


def iotpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotpipe", *args]


def start_worker(database_url: str, *args: str) -> subprocess.Popen[str]:
    """`iotpipe ingest mqtt` as a process; returns once it is subscribed."""
    process = subprocess.Popen(
        iotpipe("-d", database_url, "ingest", "mqtt", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    # With --json, stdout is kept for the summary and what people read goes to stderr.
    said = process.stderr if "--json" in args else process.stdout
    assert said is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Subscribed to"):
        lines.append(said.readline())
        if not lines[-1]:
            process.kill()
            raise AssertionError(f"the worker did not subscribe: {''.join(lines)}")
    return process


def reports(prefix: str, count: int, **faults: float) -> list[Any]:
    sim = Simulator(devices=10, interval=0.01, seed=len(prefix), prefix=prefix, **faults)
    return list(sim.reports(now_micros() - 3_600_000_000, count // 10))


def assert_exactly(store: Store, sent: list[Any]) -> None:
    """Every valid reading stored once with its value, every malformed message dead-lettered."""
    stored = stored_readings(store)
    assert len(stored) == len(set(stored))
    assert set(stored) == expected_readings(sent)
    assert store.stats()["dead_letters"] == sum(r.kind == "malformed" for r in sent)


# -- reconciliation --------------------------------------------------------------------------
def test_everything_the_simulator_sends_is_stored_or_dead_lettered_exactly(
    mosquitto: MosquittoServer, database_url: str, store: Store
) -> None:
    root = unique("sim")
    with Worker(database_url, mosquitto.url, templates=[f"{root}/{{device_id}}"]):
        result = subprocess.run(
            iotpipe(
                "simulate", "--mqtt", mosquitto.url, "--topic-template", f"{root}/{{device_id}}",
                "--devices", "10", "--interval", "0.005", "--count", "1500", "--seed", "42",
                "--anomaly-rate", "0.02", "--dropout-rate", "0.005", "--malformed-rate", "0.03",
            ),
            capture_output=True, text=True, env=clean_env(), timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        sent = json.loads(result.stdout)
        wait_until(
            lambda: (
                store.stats()["readings"] == sent["readings"]
                and store.stats()["dead_letters"] == sent["malformed"]
            ),
            "the simulated stream to be stored",
        )
    stats = json.loads(
        subprocess.run(iotpipe("-d", database_url, "stats", "--json"), capture_output=True, text=True).stdout
    )
    assert sent["messages"] == 1500
    assert sent["messages"] == sum(sent["formats"].values()) + sent["malformed"]
    assert 0 < sent["malformed"] < 100 and sent["dropouts"] > 0 and sum(sent["anomalies"].values()) > 0
    assert set(sent["formats"]) == {"v1", "v2"}
    assert (stats["readings"], stats["dead_letters"], stats["devices"]) == (
        sent["readings"],
        sent["malformed"],
        10,
    )
    assert sent["readings"] == 5 * (sent["messages"] - sent["malformed"])


# -- at least once -------------------------------------------------------------------------
def test_a_broker_restart_mid_stream_loses_nothing_and_stores_nothing_twice(
    broker: MosquittoServer, database_url: str, store: Store
) -> None:
    sent = reports("restart", 3000, malformed_rate=0.01)
    with Worker(database_url, broker.url, templates=["r/{device_id}"], client_id="restart-worker") as worker:
        publishing = threading.Thread(
            target=publish, args=(broker.url, sent, "r/{device_id}"), kwargs={"pace": 0.0005}
        )
        publishing.start()
        wait_until(lambda: store.stats()["readings"] > 2000, "the stream to start")
        broker.restart()
        publishing.join()
        wait_until(lambda: len(stored_readings(store)) == len(expected_readings(sent)), "the whole stream")
        assert worker.source.stats.connects >= 2
    assert_exactly(store, sent)


def test_a_worker_killed_mid_stream_and_restarted_with_its_client_id_loses_and_doubles_nothing(
    broker: MosquittoServer, database_url: str, store: Store
) -> None:
    sent = reports("killed", 3000, malformed_rate=0.01)
    args = ("--url", broker.url, "--template", "k/{device_id}", "--client-id", "kill-9-worker")
    worker = start_worker(database_url, *args)
    publishing = threading.Thread(
        target=publish, args=(broker.url, sent, "k/{device_id}"), kwargs={"pace": 0.0005}
    )
    publishing.start()
    try:
        wait_until(lambda: store.stats()["readings"] > 2000, "the stream to start")
        worker.kill()  # SIGKILL: no flush, no ack, no goodbye
        worker.wait()
        stored_at_kill = store.stats()["readings"]
        worker = start_worker(database_url, *args)  # the broker kept the session and its messages
        publishing.join()
        wait_until(lambda: len(stored_readings(store)) == len(expected_readings(sent)), "the whole stream")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert stored_at_kill < len(expected_readings(sent))
    assert_exactly(store, sent)


def test_iotpipe_run_stops_cleanly_on_sigterm_with_everything_received_stored_or_unacknowledged(
    broker: MosquittoServer, database_url: str, store: Store
) -> None:
    sent = reports("sigterm", 3000, malformed_rate=0.01)
    env = clean_env() | {
        "IOTPIPE_DATABASE_URL": database_url,
        "IOTPIPE_MQTT_URL": broker.url,
        "IOTPIPE_MQTT__TEMPLATES": '["t/{device_id}"]',
        "IOTPIPE_MQTT__CLIENT_ID": "sigterm-run",
        "IOTPIPE_ANALYTICS__JOBS": "false",
    }
    run = subprocess.Popen(iotpipe("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert run.stdout is not None
    while not (line := run.stdout.readline()).startswith("Subscribed to"):
        assert line, run.communicate()[1]
    publishing = threading.Thread(
        target=publish, args=(broker.url, sent, "t/{device_id}"), kwargs={"pace": 0.0005}
    )
    publishing.start()
    wait_until(lambda: store.stats()["readings"] > 1000, "the stream to start")
    run.send_signal(signal.SIGTERM)  # what systemd and docker stop send
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "Stopping. (SIGTERM" in out and "Traceback" not in err
    stored_at_stop = store.stats()["readings"]
    publishing.join()
    # What `run` took but did not store, it did not acknowledge: the broker keeps it for the session.
    drain = start_worker(
        database_url, "--url", broker.url, "--template", "t/{device_id}", "--client-id", "sigterm-run"
    )
    try:
        wait_until(
            lambda: len(stored_readings(store)) == len(expected_readings(sent)), "the rest of the stream"
        )
    finally:
        drain.send_signal(signal.SIGTERM)
        drain.communicate(timeout=60)
    assert stored_at_stop < len(expected_readings(sent))
    assert_exactly(store, sent)


def test_messages_published_while_no_worker_runs_are_delivered_to_iotpipe_run(
    mosquitto: MosquittoServer, tmp_path: Path, database_url: str
) -> None:
    root, client_id = unique("away"), unique("run-worker-")
    url = database_url
    mqtt = MqttSettings(templates=[f"{root}/{{device_id}}"], client_id=client_id)
    with Worker(url, mosquitto.url, templates=mqtt.templates, client_id=client_id):
        pass  # the first run creates the persistent session and its subscription
    sent = publish(mosquitto.url, reports(root, 300), f"{root}/{{device_id}}")
    settings = Settings(  # type: ignore[call-arg]
        database_url=url, mqtt_url=mosquitto.url, mqtt=mqtt, pipeline=PipelineSettings(batch_delay=0.2)
    )
    application = App(settings)
    counters = application.run(duration=3).counters
    application.close()
    store = open_store(url)
    try:
        assert counters.messages_received == 300
        assert_exactly(store, sent)  # and no simulator: a broker is a source
    finally:
        store.close()


# -- scale-out -----------------------------------------------------------------------------
def test_two_workers_in_a_shared_group_split_the_stream_and_store_each_reading_once(
    mosquitto: MosquittoServer, database_url: str, store: Store
) -> None:
    root, group = unique("shared"), unique("group")
    common = (
        "--url",
        mosquitto.url,
        "--template",
        f"{root}/{{device_id}}",
        "--shared-group",
        group,
        "--json",
    )
    workers = [start_worker(database_url, *common, "--client-id", unique(f"{group}-w")) for _ in range(2)]
    try:
        sent = publish(mosquitto.url, reports(root, 2000), f"{root}/{{device_id}}")
        wait_until(lambda: len(stored_readings(store)) == len(expected_readings(sent)), "the whole stream")
    finally:
        summaries = []
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            summaries.append(json.loads(out))
    shares = [s["mqtt"]["messages"] for s in summaries]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == 2000
    assert sum(s["stored"] for s in summaries) == len(expected_readings(sent))
    assert_exactly(store, sent)


def test_a_dead_shared_group_members_share_waits_for_it_and_is_delivered_when_it_returns(
    broker: MosquittoServer, database_url: str, store: Store
) -> None:
    # The limit of $share (docs/mqtt.md): the broker keeps assigning a dead member with a
    # persistent session its share, and holds it until that member comes back; the
    # survivors never get it (NATS JetStream redelivers it to them: docs/nats.md).
    common = ("--url", broker.url, "--template", "dead/{device_id}", "--shared-group", "g")
    alive = start_worker(database_url, *common, "--client-id", "member-alive")
    dead = start_worker(database_url, *common, "--client-id", "member-dead")
    dead.kill()  # SIGKILL: its session (and subscription) stays at the broker
    dead.wait()
    try:
        sent = publish(broker.url, reports("dead", 2000), "dead/{device_id}")
        expected = len(expected_readings(sent))
        held_back = _settled(store)
        assert 0 < held_back < expected  # the survivor got its share only
        dead = start_worker(database_url, *common, "--client-id", "member-dead")
        wait_until(lambda: len(stored_readings(store)) == expected, "the dead member's share")
    finally:
        for worker in (alive, dead):
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
    assert_exactly(store, sent)


def _settled(store: Store, quiet: float = 2.0) -> int:
    """The number of stored readings once it has not changed for `quiet` seconds."""
    count, since = store.stats()["readings"], time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = store.stats()["readings"]
        if now != count:
            count, since = now, time.monotonic()
    return count


# -- topic layouts ---------------------------------------------------------------------------
LAYOUT_MESSAGES = [
    # (topic, payload) — payloads from /work/shared/reference/payload-examples.md
    (
        "telemetry/pump-7",
        '{"device_id":"pump-7","timestamp":"2026-11-22T10:00:00Z","temperature":21.5,"humidity":40}',
    ),
    (
        "telemetry/pump-8",
        '{"schema_version":2,"ts":1763805600123,"readings":{"pressure":{"value":3.2,"unit":"bar"}}}',
    ),
    (
        "tele/TH16/SENSOR",
        '{"Time":"2018-03-02T18:25:03","AM2301":{"Temperature":22.6,"Humidity":32.4},"TempUnit":"C"}',
    ),
    (
        "zigbee2mqtt/0x00158d00036c1821",
        '{"temperature":22.75,"linkquality":97,"humidity":55.43,"battery":"86.00"}',
    ),
    ("zigbee2mqtt/bridge/state", '{"state":"online"}'),  # not a device: not subscribed to
    ("zigbee2mqtt/0x00158d00036c1821/availability", '{"state":"online"}'),
    ("shellies/temperature", "47.69"),
    ("telemetry/site-1/pump-9", '{"temperature":20.1}'),  # subscribed (telemetry/#), matches no template
    ("tele/TH16/SENSOR", '{"Time":"2018-03-02T18:25:0'),  # matches, but the payload is cut short
]


def test_each_topic_layout_is_decoded_and_an_unmatched_topic_is_dead_lettered_with_the_reason(
    broker: MosquittoServer, tmp_path: Path, database_url: str
) -> None:
    url = database_url
    templates = [
        "telemetry/{device_id}",
        "tele/{device_id}/SENSOR",
        "zigbee2mqtt/{device_id}",
        "{device_id}/{metric}",
    ]
    topics = ["telemetry/#", "tele/+/SENSOR", "zigbee2mqtt/+", "shellies/+"]
    with Worker(url, broker.url, templates=templates, topics=topics) as worker:
        for topic, payload in LAYOUT_MESSAGES:
            publish_one(broker.url, topic, payload)
        wait_until(lambda: worker.pipeline.counters.messages_received == 7, "seven deliveries")
        assert worker.source.stats.unmatched == 1
    store = open_store(url)
    try:
        stored = {(d, m): (t, v) for d, m, t, v in stored_readings(store)}
        letters = {row["origin"]: row["reason"] for row in store.dead_letter_rows()}
    finally:
        store.close()
    assert stored[("pump-7", "temperature")] == (utc("2026-11-22T10:00:00"), 21.5)
    assert stored[("pump-8", "pressure")] == (utc("2025-11-22T10:00:00.123"), 3.2)
    assert stored[("TH16", "am2301_temperature")] == (utc("2018-03-02T18:25:03"), 22.6)  # zone-less = UTC
    assert stored[("0x00158d00036c1821", "battery")][1] == 86.0
    assert stored[("shellies", "temperature")][1] == 47.69
    assert set(stored) == {
        ("pump-7", "temperature"),
        ("pump-7", "humidity"),
        ("pump-8", "pressure"),
        ("TH16", "am2301_temperature"),
        ("TH16", "am2301_humidity"),
        ("0x00158d00036c1821", "temperature"),
        ("0x00158d00036c1821", "linkquality"),
        ("0x00158d00036c1821", "humidity"),
        ("0x00158d00036c1821", "battery"),
        ("shellies", "temperature"),
    }
    assert letters["telemetry/site-1/pump-9"].startswith(
        "topic telemetry/site-1/pump-9 matches no template (known: telemetry/{device_id}, "
        "tele/{device_id}/SENSOR, zigbee2mqtt/{device_id}, {device_id}/{metric})"
    )
    assert letters["tele/TH16/SENSOR"].startswith("payload is not valid JSON")
    assert len(letters) == 2


def publish_one(url: str, topic: str, payload: str) -> None:
    publisher = Publisher(parse_broker_url(url), qos=1)
    publisher.publish(topic, payload.encode())
    publisher.close()


def utc(text: str) -> int:
    return datetime_to_micros(datetime.fromisoformat(text + "+00:00"))


# -- backpressure -----------------------------------------------------------------------------
def test_a_slow_store_makes_the_worker_stop_taking_messages_instead_of_growing_or_dropping(
    broker: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    url = database_url
    outstanding: list[int] = []  # delivered to us, not yet committed
    with Worker(
        url, broker.url, pipeline={"queue_size": 20}, templates=["slow/{device_id}"], inflight=200
    ) as worker:
        run_inside_writes(worker.app.store, lambda: threading.Event().wait(0.1))
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                outstanding.append(worker.source.stats.messages - worker.pipeline.counters.messages_received)
                done.wait(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with caplog.at_level(logging.WARNING, logger="iotpipe.sources.mqtt"):
            sent = publish(broker.url, reports("slow", 1500), "slow/{device_id}")
            wait_until(
                lambda: worker.pipeline.counters.messages_received == 1500, "the slow store to catch up"
            )
        done.set()
        watcher.join()
        assert worker.source.stats.queue_full > 0
        assert worker.source.stats.blocked_seconds > 0
    # However slow the store, what the process holds uncommitted is bounded by its settings:
    # a batch being written (half the window of 200), the batch filling behind it, the queue
    # (20) and the one message blocked in submit — not the 1,500 the broker has for us.
    assert 0 < max(outstanding) <= 2 * (200 // 2) + 20 + 1
    assert "pipeline queue full (20 messages): the store is slower than the broker" in caplog.text
    store = open_store(url)
    try:
        assert_exactly(store, sent)
    finally:
        store.close()


def test_qos_0_stores_what_arrives_without_acknowledgements(
    mosquitto: MosquittoServer, tmp_path: Path, database_url: str
) -> None:
    url = database_url
    root = unique("q0")
    with Worker(url, mosquitto.url, templates=[f"{root}/{{device_id}}"], qos=0) as worker:
        sent = publish(mosquitto.url, reports(root, 200), f"{root}/{{device_id}}", qos=0)
        wait_until(lambda: worker.pipeline.counters.messages_received == 200, "QoS 0 deliveries")
        assert worker.source.stats.acks_sent == 0
    assert Counter(r.kind for r in sent)["malformed"] == 0
    store = open_store(url)
    try:
        assert_exactly(store, sent)
    finally:
        store.close()


# -- security ---------------------------------------------------------------------------------
@pytest.fixture
def tls_broker() -> Iterator[MosquittoServer]:
    """A broker on mqtts:// that wants a client certificate from our CA and a password."""
    server = MosquittoServer()
    root = server.root
    _make_certificates(root)
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(root / "passwords"), "ingest", "s3cret-pw"], check=True
    )
    for path in root.iterdir():
        path.chmod(0o644)  # the broker runs as the mosquitto user
    server.extra_config = (
        f"cafile {root / 'ca.crt'}\ncertfile {root / 'server.crt'}\nkeyfile {root / 'server.key'}\n"
        f"require_certificate true\npassword_file {root / 'passwords'}\nallow_anonymous false\n"
    )
    with server:
        yield server


def _make_certificates(root: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=iotpipe test CA")  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *extra)  # fmt: skip


def test_mqtts_with_a_client_certificate_and_a_password_from_the_environment(
    tls_broker: MosquittoServer, tmp_path: Path, database_url: str
) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    root = tls_broker.root
    url = database_url
    tls = (
        "--ca-file",
        str(root / "ca.crt"),
        "--cert-file",
        str(root / "client.crt"),
        "--key-file",
        str(root / "client.key"),
    )
    env = clean_env() | {"IOTPIPE_MQTT__USERNAME": "ingest", "IOTPIPE_MQTT__PASSWORD": "s3cret-pw"}
    args = ("-d", url, "ingest", "mqtt", "--url", f"mqtts://127.0.0.1:{tls_broker.port}", *tls)
    worker = subprocess.Popen(
        iotpipe(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert worker.stdout is not None
    worker.stdout.readline()
    assert worker.stdout.readline().startswith(
        f"Subscribed to telemetry/+, tele/+/SENSOR, zigbee2mqtt/+ at mqtts://ingest@127.0.0.1:{tls_broker.port}"
    )
    publisher = paho.Client(CallbackAPIVersion.VERSION2)
    publisher.tls_set(
        ca_certs=str(root / "ca.crt"), certfile=str(root / "client.crt"), keyfile=str(root / "client.key")
    )
    publisher.username_pw_set("ingest", "s3cret-pw")
    publisher.connect("127.0.0.1", tls_broker.port)
    publisher.loop_start()
    publisher.publish("telemetry/secure-1", b'{"temperature": 21.5}', qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()
    store = open_store(url)
    try:
        wait_until(lambda: store.stats()["readings"] == 1, "the reading over TLS")
    finally:
        store.close()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "s3cret-pw" not in err

    wrong = env | {"IOTPIPE_MQTT__PASSWORD": "not-the-password"}
    refused = subprocess.run(iotpipe(*args), capture_output=True, text=True, env=wrong, timeout=60)
    assert refused.returncode == 2
    assert (
        f"MQTT broker mqtts://ingest@127.0.0.1:{tls_broker.port} refused the connection: " in refused.stderr
    )
    assert "not-the-password" not in refused.stdout + refused.stderr

    untrusted = subprocess.run(iotpipe(*args[:-6]), capture_output=True, text=True, env=env, timeout=60)
    assert untrusted.returncode == 2
    assert f"cannot connect to MQTT broker mqtts://ingest@127.0.0.1:{tls_broker.port}: " in untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_a_failing_store_delays_readings_but_loses_and_doubles_none(
    broker: MosquittoServer, database_url: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    outage = threading.Event()
    outage.set()

    def unavailable() -> None:
        if outage.is_set():
            raise RuntimeError("database unavailable")

    with Worker(database_url, broker.url, templates=["down/{device_id}"], inflight=200) as worker:
        run_inside_writes(worker.app.store, unavailable)
        with caplog.at_level(logging.ERROR, logger="iotpipe.pipeline"):
            sent = publish(broker.url, reports("outage", 600), "down/{device_id}")
            wait_until(lambda: "writing a batch failed again" in caplog.text, "a retry")
            assert store.stats()["readings"] == 0
            assert worker.source.stats.acks_sent == 0  # nothing acknowledged while not stored
            outage.clear()
            wait_until(lambda: worker.pipeline.counters.messages_received == 600, "the store to come back")
    assert (
        "writing a batch failed: database unavailable; nothing is acknowledged until it is stored"
        in caplog.text
    )
    assert_exactly(store, sent)


def test_iotpipe_run_rides_out_a_postgresql_restart_and_its_api_says_so_meanwhile(
    broker: MosquittoServer,
) -> None:
    """The real outage the test above simulates: the server stops under `iotpipe run`."""
    with PostgresServer() as postgres:
        url = postgres.create_database("restarted")
        port = free_port()
        env = clean_env() | {
            "IOTPIPE_DATABASE_URL": url,
            "IOTPIPE_MQTT_URL": broker.url,
            "IOTPIPE_MQTT__TEMPLATES": '["pg/{device_id}"]',
            "IOTPIPE_MQTT__CLIENT_ID": "pg-restart-run",
            "IOTPIPE_ANALYTICS__JOBS": "false",
            "IOTPIPE_API__PORT": str(port),
        }
        run = subprocess.Popen(
            iotpipe("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert run.stdout is not None
        while not (line := run.stdout.readline()).startswith("Subscribed to"):
            assert line, run.communicate()[1]
        threading.Thread(target=run.stdout.read, daemon=True).start()  # never let its pipe fill
        logged: list[str] = []
        threading.Thread(target=lambda: logged.extend(run.stderr), daemon=True).start()  # type: ignore[arg-type]
        api = f"http://127.0.0.1:{port}"
        store = open_store(url)
        try:
            before = publish(broker.url, reports("pg-before", 300), "pg/{device_id}")
            wait_until(
                lambda: len(stored_readings(store)) == len(expected_readings(before)), "the first readings"
            )
            store.close()

            postgres.stop(cleanup=False)
            wait_until(lambda: httpx.get(f"{api}/health/ready").status_code == 503, "ready to say 503")
            ready = httpx.get(f"{api}/health/ready").json()
            assert ready["checks"]["database"]["ok"] is False
            assert ready["checks"]["mqtt"]["ok"] is True
            down = httpx.get(f"{api}/api/v1/devices")
            assert down.status_code == 503 and down.headers["Retry-After"]
            assert down.headers["content-type"] == "application/problem+json"
            assert "the database failed" in down.json()["detail"]
            assert "Check that it is running and reachable" in down.json()["detail"]
            during = publish(broker.url, reports("pg-during", 300), "pg/{device_id}")
            wait_until(lambda: any("writing a batch failed" in line for line in logged), "a failed write")

            postgres.launch()
            wait_until(lambda: httpx.get(f"{api}/health/ready").status_code == 200, "ready again")
            store = open_store(url)
            sent = before + during
            wait_until(
                lambda: len(stored_readings(store)) == len(expected_readings(sent)), "the held readings"
            )
            assert_exactly(store, sent)
            devices = httpx.get(f"{api}/api/v1/devices", params={"limit": 100})
            assert devices.status_code == 200
            assert {d["device_id"] for d in devices.json()["items"]} == {r.device_id for r in sent}
        finally:
            store.close()
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=60)
        err = "".join(logged)
        assert run.returncode == 0, err
        assert "nothing is acknowledged until it is stored" in err
        assert "Traceback" not in err, err


def test_a_broker_window_smaller_than_ours_does_not_stall_the_stream(tmp_path: Path) -> None:
    # The broker lets 5 messages wait for their ack; iotpipe was told 1,000 and would commit
    # at 500, or after the batch delay of a minute: only the early commit on a pause helps.
    url = f"sqlite:///{tmp_path / 'window.db'}"
    with (
        MosquittoServer(extra_config=f"{KEEP_QUEUED}\nmax_inflight_messages 5") as strict,
        Worker(url, strict.url, pipeline={"batch_delay": 60}, templates=["w/{device_id}"], protocol="3.1.1",
               inflight=1000) as worker,
    ):  # fmt: skip
        publish(strict.url, reports("window", 300), "w/{device_id}")
        wait_until(lambda: worker.pipeline.counters.messages_received == 300, "the stream", timeout=30)
        assert worker.source.stats.idle_commits > 0


def test_messages_with_mqtt5_properties_or_at_qos_2_are_stored_like_the_others(
    mosquitto: MosquittoServer, tmp_path: Path, database_url: str
) -> None:
    # Plain QoS 0/1 messages take iotpipe's short decoding path; these take paho's.
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    root = unique("props")
    url = database_url
    with Worker(url, mosquitto.url, templates=[f"{root}/{{device_id}}"], qos=2) as worker:
        publisher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        publisher.connect("127.0.0.1", mosquitto.port)
        publisher.loop_start()
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = ("site", "north")
        properties.MessageExpiryInterval = 3600
        sent = [
            (1, None, '{"timestamp": 1763805600000, "temperature": 1.0}'),
            (1, properties, '{"timestamp": 1763805601000, "temperature": 2.0}'),
            (2, None, '{"timestamp": 1763805602000, "temperature": 3.0}'),
            (2, properties, '{"timestamp": 1763805603000, "temperature": 4.0}'),
            (0, properties, '{"timestamp": 1763805604000, "temperature": 5.0}'),
        ]
        for qos, props, payload in sent:
            publisher.publish(f"{root}/dev-1", payload, qos=qos, properties=props).wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()
        wait_until(lambda: worker.pipeline.counters.messages_received == 5, "five deliveries")
        wait_until(lambda: worker.source.stats.acks_sent == 4, "acks of the QoS 1 and 2 messages")
    store = open_store(url)
    try:
        assert [v for _, v in store.raw_readings("dev-1", "temperature")] == [1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: nothing to publish to: pass --mqtt mqtt://host:1883"),
        (
            ("--mqtt", "mqtt://127.0.0.1:1", "--topic-template", "s/{site}/{device_id}", "--count", "1"),
            "error: simulate fills {device_id} and {metric} only, not {site}",
        ),
        (
            ("--mqtt", "mqtt://127.0.0.1:1", "--topic-template", "s/{device_id}=senml", "--count", "1"),
            "error: simulate publishes JSON, tasmota, zigbee2mqtt and bare values; 'senml' is not one of them",
        ),
        (
            ("--mqtt", "mqtt://127.0.0.1:1", "--count", "1"),
            "error: cannot connect to MQTT broker mqtt://127.0.0.1:1: [Errno 111] Connection refused",
        ),
    ],
)
def test_simulate_refuses_what_it_cannot_do_and_says_why(args: tuple[str, ...], message: str) -> None:
    result = subprocess.run(
        iotpipe("simulate", *args), capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
