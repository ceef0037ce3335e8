"""NATS JetStream ingest: msgs/s for 1, 2 and 3 `iotpipe ingest nats` workers into PostgreSQL.

Each figure is measured on a backlog: N messages are published to the stream first, then
the workers start and the clock runs from when all of them consume until the store
holds every reading. Beside it, in the same run:
- the ceiling: a bare nats-py pull consumer on the same backlog that only acks;
- the peer path: one `iotpipe ingest mqtt` worker on the same backlog held by Mosquitto
  for its persistent session.
Medians over --repeats runs.

    .venv/bin/python benchmarks/nats_bench.py [--messages 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iotpipe.store import open_store
from tests.servers import (
    NATS_PARTITION_MAPPINGS,
    NATS_PARTITIONS,
    MosquittoServer,
    NatsServer,
    PostgresServer,
)
from tests.sources.nats_helpers import JetStreamPublisher, Telemetry, start_nats_worker

ENV = {"IOTPIPE_PIPELINE__BATCH_DELAY": "0.2", "IOTPIPE_NATS__REBALANCE_EVERY": "0.5"}


def backlog(plan: Telemetry) -> NatsServer:
    server = NatsServer(mappings=NATS_PARTITION_MAPPINGS).start()
    # The stream must exist before the backlog: iotpipe's own settings create it.
    asyncio.run(_create_stream(server.url))
    publisher = JetStreamPublisher(server.url, plan, window=5000)
    publisher._run()
    assert publisher.acked == plan.count, publisher.error
    return server


async def _create_stream(url: str) -> None:
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(url)
    await nc.jetstream().add_stream(
        StreamConfig(
            name="IOTPIPE",
            subjects=["part.*.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    await nc.close()


def iotpipe_workers(postgres: PostgresServer, plan: Telemetry, workers: int, run: int) -> float:
    server = backlog(plan)
    url = postgres.create_database(f"bench_{workers}_{run}")
    try:
        args = ("--url", server.url, "--partitions", str(NATS_PARTITIONS))
        # The clock starts before the first worker: a worker started earlier drains the
        # backlog while the next one starts, so timing from the last start would overstate.
        started = time.perf_counter()
        processes = [start_nats_worker(url, *args, env=ENV) for _ in range(workers)]
        store = open_store(url)
        while store.stats()["readings"] < plan.readings:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        store.close()
        for process in processes:
            process.terminate()
            process.communicate(timeout=60)
        return plan.count / elapsed
    finally:
        server.stop()


def bare_consumer(plan: Telemetry) -> float:
    """The ceiling: pull the backlog of every partition and ack, nothing else."""
    server = backlog(plan)

    async def consume() -> float:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await nats.connect(server.url)
        js = nc.jetstream()
        subs = []
        for p in range(NATS_PARTITIONS):
            await js.add_consumer(
                "IOTPIPE",
                ConsumerConfig(
                    durable_name=f"bare-p{p}",
                    filter_subject=f"part.{p}.>",
                    ack_policy=AckPolicy.EXPLICIT,
                    max_ack_pending=10000,
                ),
            )
            subs.append(await js.pull_subscribe_bind(f"bare-p{p}", stream="IOTPIPE"))
        done = 0
        started = time.perf_counter()

        async def drain(sub: object) -> None:
            nonlocal done
            while done < plan.count:
                try:
                    messages = await sub.fetch(500, timeout=0.5)  # type: ignore[attr-defined]
                except TimeoutError:
                    continue
                for message in messages:
                    await nc.publish(message.reply, b"+ACK")
                done += len(messages)

        await asyncio.gather(*(drain(sub) for sub in subs))
        await nc.flush()
        elapsed = time.perf_counter() - started
        await nc.close()
        return plan.count / elapsed

    try:
        return asyncio.run(consume())
    finally:
        server.stop()


def mqtt_worker(postgres: PostgresServer, plan: Telemetry, run: int) -> float:
    """One `iotpipe ingest mqtt` worker on the same backlog, held by Mosquitto."""
    from tests.sources.test_mqtt import start_worker

    url = postgres.create_database(f"bench_mqtt_{run}")
    with MosquittoServer(extra_config="max_queued_messages 0\nmax_inflight_messages 0") as broker:
        args = ("--url", broker.url, "--template", "telemetry/{device_id}", "--client-id", "bench-mqtt")
        first = start_worker(url, *args)  # creates the persistent session, then leaves
        first.terminate()
        first.communicate(timeout=60)
        _publish_mqtt(broker.port, plan)
        started = time.perf_counter()
        worker = start_worker(url, *args)
        store = open_store(url)
        while store.stats()["readings"] < plan.readings:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        store.close()
        worker.terminate()
        worker.communicate(timeout=60)
    return plan.count / elapsed


def _publish_mqtt(port: int, plan: Telemetry) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-devices")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"telemetry/{d}", p, qos=1) for d, p in plan.messages()]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plan = Telemetry(args.messages, devices=1000, malformed_every=10**9)
    figures: dict[str, list[float]] = {}
    with PostgresServer() as postgres:
        for run in range(args.repeats):
            figures.setdefault("bare nats-py consumer (acks only)", []).append(bare_consumer(plan))
            for workers in (1, 2, 3):
                figures.setdefault(f"iotpipe ingest nats x{workers}", []).append(
                    iotpipe_workers(postgres, plan, workers, run)
                )
            figures.setdefault("iotpipe ingest mqtt x1 (Mosquitto)", []).append(
                mqtt_worker(postgres, plan, run)
            )
    ceiling = statistics.median(figures["bare nats-py consumer (acks only)"])
    mqtt = statistics.median(figures["iotpipe ingest mqtt x1 (Mosquitto)"])
    print(
        f"{args.messages:,} messages (1 reading each) over 1,000 devices, 8 partitions; median of {args.repeats}"
    )
    print(f"{'path':40} {'msgs/s':>9} {'vs bare':>8} {'vs MQTT':>8}")
    for name, values in figures.items():
        rate = statistics.median(values)
        print(f"{name:40} {rate:9,.0f} {rate / ceiling:8.2f} {rate / mqtt:8.2f}")


if __name__ == "__main__":
    main()
