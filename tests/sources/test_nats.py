"""NATS JetStream ingestion against a real nats-server and PostgreSQL: workers that survive each other.

The big tests publish IOTPIPE_TEST_NATS_MESSAGES messages (default 200,000; about two
minutes on two cores) through JetStream, and IOTPIPE_TEST_NATS_MQTT_MESSAGES (default
20,000, paho publishes one at a time) through nats-server's MQTT listener.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from iotpipe.store import Store, open_store
from tests.servers import NATS_PARTITION_MAPPINGS, NATS_PARTITIONS, NatsServer, PostgresServer
from tests.sources.nats_helpers import (
    JetStreamPublisher,
    Telemetry,
    clean_env,
    iotpipe,
    start_nats_worker,
    wait_until,
)

MESSAGES = int(os.environ.get("IOTPIPE_TEST_NATS_MESSAGES", "200000"))
MQTT_MESSAGES = int(os.environ.get("IOTPIPE_TEST_NATS_MQTT_MESSAGES", "20000"))
# Quick hand-overs for tests: a dead worker's messages come back after ACK_WAIT seconds.
# Not quicker: a worker starved of CPU for max_deliver x ACK_WAIT (5 x 10 s) would see
# JetStream give up on messages it is still committing (docs/nats.md, "Limits").
ACK_WAIT = "10"
WORKER_ENV = {"IOTPIPE_NATS__REBALANCE_EVERY": "0.5", "IOTPIPE_PIPELINE__BATCH_DELAY": "0.2"}


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private nats-server that maps the built-in layouts onto device partitions."""
    with NatsServer(mappings=NATS_PARTITION_MAPPINGS) as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.create_database(
        f"nats_{request.node.name[:40].lower().replace('[', '_').replace(']', '')}"
    )


def assert_exactly(store: Store, plan: Telemetry) -> None:
    """Every valid reading stored once with its value, every malformed message one dead letter."""
    stats = store.stats()
    assert (stats["readings"], stats["dead_letters"]) == (plan.readings, plan.malformed)
    for device in plan.device_ids():
        assert store.raw_readings(device, "temperature") == plan.expected(device), device
    reasons = {row["reason"].split(":")[0] for row in store.dead_letter_rows()}
    assert reasons == {"payload is not valid JSON"}


def _reasons(store: Store) -> dict[str, int]:
    """How many dead letters give each reason (its first words)."""
    return dict(collections.Counter(row["reason"][:60] for row in store.dead_letter_rows()))


def stop_all(workers: list[subprocess.Popen[str]]) -> list[str]:
    """SIGTERM each worker; their stderr (all must exit 0)."""
    errors = []
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=120)
        errors.append(err)
        assert worker.returncode in (0, -signal.SIGKILL), err
    return errors


def run_three_workers_through_a_kill_and_a_restart(
    nats_server: NatsServer,
    pg_url: str,
    plan: Telemetry,
    publish: threading.Thread,
    restart_gate: tuple[threading.Event, threading.Event] | None = None,
    failures: list[BaseException] | None = None,
) -> None:
    """Three workers; one kill -9'ed after a third of the stream, nats-server restarted after
    two thirds; the stream must end up stored exactly. With `restart_gate` (ready, done),
    the restart waits for `ready` and then sets `done`."""
    args = ("--url", nats_server.url, "--partitions", str(NATS_PARTITIONS), "--ack-wait", ACK_WAIT)
    workers = [start_nats_worker(pg_url, *args, env=WORKER_ENV) for _ in range(3)]
    store = open_store(pg_url)
    try:
        publish.start()
        wait_until(
            lambda: store.stats()["readings"] > plan.readings // 3, "a third of the stream", 600, store.stats
        )
        workers[0].kill()  # SIGKILL: no flush, no ack, no goodbye; its partitions go to the others
        workers[0].wait()
        stored_at_kill = store.stats()["readings"]
        wait_until(
            lambda: store.stats()["readings"] > 2 * plan.readings // 3, "two thirds of the stream", 600
        )
        if restart_gate is not None:
            restart_gate[0].wait(600)
        stored_at_restart = store.stats()["readings"]
        nats_server.restart()
        if restart_gate is not None:
            restart_gate[1].set()
        failed = failures if failures is not None else []
        wait_until(
            lambda: (
                bool(failed)
                or (
                    store.stats()["readings"] == plan.readings
                    and store.stats()["dead_letters"] == plan.malformed
                )
            ),
            "the whole stream",
            600,
            state=lambda: (store.stats(), failed, _reasons(store)),
        )
        assert not failed, f"the publisher failed: {failed!r}"
        publish.join(300)
        assert not publish.is_alive(), "the publisher did not finish within 5 minutes"
        time.sleep(1.0)  # nothing more may arrive (no duplicate of anything stored)
        errors = stop_all(workers)
        assert stored_at_kill < stored_at_restart < plan.readings
        assert_exactly(store, plan)
        assert all("Traceback" not in err for err in errors), errors
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        store.close()


def test_three_workers_store_the_stream_exactly_once_through_a_kill_9_and_a_server_restart(
    nats_server: NatsServer, pg_url: str
) -> None:
    plan = Telemetry(MESSAGES, devices=500)
    publisher = JetStreamPublisher(nats_server.url, plan)
    publish = threading.Thread(target=publisher._run)
    run_three_workers_through_a_kill_and_a_restart(nats_server, pg_url, plan, publish)
    assert publisher.error is None
    assert publisher.acked == MESSAGES


def test_mqtt_devices_publishing_to_nats_servers_mqtt_listener_are_stored_exactly_once_too(
    nats_server: NatsServer, pg_url: str
) -> None:
    # The devices pause while nats-server restarts (the workers do not: they are still
    # working through the stream): what is tested is that the workers lose and double
    # nothing through the kill and the restart. A device publishing during the restart
    # itself is nats-server's MQTT listener's business; docs/nats.md.
    plan = Telemetry(MQTT_MESSAGES, devices=200, prefix="mq")
    failures: list[BaseException] = []
    published_first_part, restarted = threading.Event(), threading.Event()

    def publish_over_mqtt() -> None:
        try:
            _publish_mqtt(nats_server.mqtt_port, plan, published_first_part, restarted)
        except BaseException as exc:
            failures.append(exc)

    run_three_workers_through_a_kill_and_a_restart(
        nats_server,
        pg_url,
        plan,
        threading.Thread(target=publish_over_mqtt),
        (published_first_part, restarted),
        failures,
    )


def _publish_mqtt(port: int, plan: Telemetry, paused: threading.Event, resume: threading.Event) -> None:
    """QoS 1, each publish retried until nats-server acknowledged it; after 90 % of the
    plan, `paused` is set and publishing waits for `resume` (the server's restart)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id="mqtt-device-fleet",
        clean_session=False,
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(100)
    client.reconnect_delay_set(0.2, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    pending: list[tuple[str, bytes, paho.MQTTMessageInfo]] = []
    pause_at = plan.count * 9 // 10
    try:
        for number, (device, payload) in enumerate(plan.messages()):
            if number == pause_at:
                _settle(client, pending)
                paused.set()
                resume.wait(600)
            pending.append((device, payload, client.publish(f"telemetry/{device}", payload, qos=1)))
            if len(pending) >= 100:
                _settle(client, pending)
        _settle(client, pending)
    finally:
        client.disconnect()
        client.loop_stop()


def _settle(client: object, pending: list, patience: float = 120.0) -> None:  # type: ignore[type-arg]
    """Wait for each publish's PUBACK; publish again what a lost connection left unacknowledged."""
    deadline = time.monotonic() + patience
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"nats-server acknowledged none of {len(pending)} publishes for {patience:g} s"
            )
        device, payload, info = pending[0]
        published = False
        # paho raises from both calls for a publish made while disconnected: published again below.
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(10)
            published = info.is_published()
        if published:
            pending.pop(0)
            continue
        while not client.is_connected() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        pending[0] = (device, payload, client.publish(f"telemetry/{device}", payload, qos=1))  # type: ignore[attr-defined]


# -- max_deliver -----------------------------------------------------------------------------
@pytest.fixture
def plain_nats() -> Iterator[NatsServer]:
    """A private nats-server without partition mappings: one consumer shared by the workers."""
    with NatsServer() as server:
        yield server


def test_a_message_no_worker_commits_within_max_deliver_is_dead_lettered_with_the_reason(
    plain_nats: NatsServer, pg_url: str
) -> None:
    """A "worker" that takes the message and dies before committing it, twice (max_deliver 2):
    JetStream gives up on it, and a live iotpipe worker dead-letters it with the reason."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    payload = b'{"timestamp": 1763800000000, "temperature": 21.5}'

    async def take_twice_without_acking() -> int:
        nc = await nats.connect(plain_nats.url)
        js = nc.jetstream()
        # What iotpipe creates: the same stream and consumer (a worker would find them there).
        await js.add_stream(
            StreamConfig(name="IOTPIPE", subjects=["telemetry.*"], retention=RetentionPolicy.WORK_QUEUE)
        )
        await js.add_consumer(
            "IOTPIPE",
            ConsumerConfig(
                durable_name="iotpipe",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=2,
                max_deliver=2,
                max_ack_pending=40000 * 16,
                max_waiting=512,
            ),
        )
        await js.publish("telemetry.poison-1", payload)
        pull = await js.pull_subscribe_bind("iotpipe", stream="IOTPIPE")
        deliveries = []
        for _ in range(2):  # the first delivery, then again once ack_wait passed
            (message,) = await pull.fetch(1, timeout=10)
            deliveries.append(message.metadata.num_delivered)
        await nc.close()
        return deliveries[-1]

    last = asyncio.run(take_twice_without_acking())
    assert last == 2
    worker = start_nats_worker(
        pg_url, "--url", plain_nats.url, "--subject", "telemetry.*", "--ack-wait", "2", "--max-deliver", "2",
        "--max-ack-pending", "40000", "--json", env=WORKER_ENV,
    )  # fmt: skip
    store = open_store(pg_url)
    try:
        wait_until(lambda: store.stats()["dead_letters"] == 1, "the dead letter", 30)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        (letter,) = store.dead_letter_rows()
        assert store.stats()["readings"] == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        store.close()
    assert bytes(letter["payload"]) == payload
    assert letter["origin"] == "telemetry.poison-1"
    assert letter["reason"].startswith(
        "JetStream delivered it 2 times (max_deliver 2, stream IOTPIPE message 1"
    )
    assert "no worker committed it" in letter["reason"]
    assert json.loads(out)["nats"]["max_deliver_dead_letters"] == 1
    # The reason is the delivery's, not the payload's: a replay stores it.
    replayed = subprocess.run(
        iotpipe("-d", pg_url, "dlq", "replay", "--json"), capture_output=True, text=True, env=clean_env()
    )
    assert json.loads(replayed.stdout)["stored"] == 1


# -- one shared consumer -----------------------------------------------------------------------
def test_with_one_shared_consumer_a_killed_workers_messages_go_to_the_other(
    plain_nats: NatsServer, pg_url: str
) -> None:
    server = plain_nats
    if True:
        plan = Telemetry(6000, devices=50, prefix="sh")
        args = ("--url", server.url, "--ack-wait", ACK_WAIT, "--max-ack-pending", "2000", "--json")
        workers = [start_nats_worker(pg_url, *args, env=WORKER_ENV) for _ in range(2)]
        store = open_store(pg_url)
        try:
            publisher = JetStreamPublisher(server.url, plan, window=200)
            thread = publisher.start()
            wait_until(lambda: store.stats()["readings"] > plan.readings // 4, "a quarter of the stream")
            workers[0].kill()
            wait_until(lambda: store.stats()["readings"] == plan.readings, "the whole stream")
            thread.join()
            workers[1].send_signal(signal.SIGTERM)
            _, err = workers[1].communicate(timeout=60)
            assert workers[1].returncode == 0, err
            assert_exactly(store, plan)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            store.close()


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--url", "nats://127.0.0.1:1"), "error: cannot connect to NATS server nats://127.0.0.1:1"),
        (("--url", "http://127.0.0.1:1"), "error: NATS URL must start with nats:// or tls://"),
        (
            ("--url", "nats://127.0.0.1:1", "--ack-wait", "1.5"),
            "error: nats.ack_wait (1.5 s) must be well above",
        ),
        (("--url", "nats://127.0.0.1:1", "--subject", "a.>.b"), "error: NATS subject 'a.>.b'"),
        (("--url", "nats://127.0.0.1:1", "--max-deliver", "1"), "error: invalid option (--max-deliver: "),
    ],
)
def test_ingest_nats_refuses_what_it_cannot_do_and_says_why(
    tmp_path: object, args: tuple[str, ...], message: str
) -> None:
    result = subprocess.run(
        iotpipe("-d", f"sqlite:///{tmp_path}/x.db", "ingest", "nats", *args),
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- the relay -----------------------------------------------------------------------------------
def start_relay(mqtt_url: str, nats_url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        iotpipe("relay", "mqtt-to-nats", "--mqtt", mqtt_url, "--nats", nats_url, "--client-id", "relay-1", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    assert process.stderr is not None
    while not (line := process.stderr.readline()).startswith("Relaying into JetStream"):
        assert line, "the relay did not start"
    return process


def test_the_relay_bridges_mosquitto_into_jetstream_through_a_kill_9_of_the_relay(
    plain_nats: NatsServer, pg_url: str
) -> None:
    from tests.servers import MosquittoServer
    from tests.sources.test_mqtt import KEEP_QUEUED

    plan = Telemetry(4000, devices=40, prefix="rl")
    with MosquittoServer(extra_config=KEEP_QUEUED) as mosquitto:
        relay = start_relay(mosquitto.url, plain_nats.url)
        worker = start_nats_worker(pg_url, "--url", plain_nats.url, "--ack-wait", ACK_WAIT, env=WORKER_ENV)
        store = open_store(pg_url)
        try:
            # The second half of the stream waits for the kill: the relay that takes over
            # has something of its own to relay, however fast the first one was.
            halfway = threading.Event()
            publishing = threading.Thread(target=_publish_plain_mqtt, args=(mosquitto.port, plan, halfway))
            publishing.start()
            wait_until(lambda: store.stats()["readings"] > plan.readings // 4, "a quarter of the stream")
            relay.kill()  # what it had not published to JetStream stays unacknowledged at Mosquitto
            relay.wait()
            relay = start_relay(mosquitto.url, plain_nats.url)  # the same session: Mosquitto redelivers
            halfway.set()
            publishing.join()
            wait_until(
                lambda: store.stats()["readings"] == plan.readings, "the whole stream", state=store.stats
            )
            relay.send_signal(signal.SIGTERM)
            out, err = relay.communicate(timeout=60)
            assert relay.returncode == 0, err
            assert json.loads(out)["nats"]["relayed"] > 0
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
            assert_exactly(store, plan)
        finally:
            for process in (relay, worker):
                if process.poll() is None:
                    process.kill()
            store.close()


def _publish_plain_mqtt(port: int, plan: Telemetry, halfway: threading.Event | None = None) -> None:
    """The plan's messages at QoS 1; with `halfway`, the second half only once it is set."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="relay-devices")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        messages = list(plan.messages())
        for index, (device, payload) in enumerate(messages):
            if halfway is not None and index == len(messages) // 2:
                halfway.wait(300)
            client.publish(f"telemetry/{device}", payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
