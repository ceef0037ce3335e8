"""Three `iotpipe run` instances on one PostgreSQL and one nats-server: jobs once per interval,
and the streaming detector's episodes exactly those of a single instance."""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import psycopg

from iotpipe.store import open_store
from tests.servers import NATS_PARTITION_MAPPINGS, NATS_PARTITIONS, NatsServer, PostgresServer
from tests.sources.nats_helpers import T0_MS, JetStreamPublisher, clean_env, iotpipe, wait_until

EVERY = 2.0  # seconds between two runs of each job
DEVICES = 12
READINGS = 400  # per device: several streaming windows (128), with spikes to find


class SpikyFleet:
    """Devices reporting a noisy level with a spike every 97 readings (and a step at 250)."""

    count = DEVICES * READINGS
    readings = count
    malformed = 0

    def messages(self) -> Iterator[tuple[str, bytes]]:
        noise = random.Random(7)
        for i in range(READINGS):
            for d in range(DEVICES):
                value = (
                    20.0
                    + d
                    + noise.gauss(0, 0.5)
                    + (40.0 if i % 97 == 96 else 0.0)
                    + (8.0 if i >= 250 else 0.0)
                )
                yield (
                    f"fleet-{d:02d}",
                    orjson.dumps({"timestamp": T0_MS + i * 1000, "temperature": round(value, 3)}),
                )


@contextmanager
def instances(
    count: int, postgres: PostgresServer, name: str
) -> Iterator[tuple[str, NatsServer, list[subprocess.Popen[str]]]]:
    """`count` `iotpipe run` instances sharing one database and one partitioned stream."""
    url = postgres.create_database(name)
    server = NatsServer(mappings=NATS_PARTITION_MAPPINGS).start()
    subprocess.run(iotpipe("-d", url, "init"), check=True, capture_output=True, env=clean_env())
    env = clean_env() | {
        "IOTPIPE_NATS_URL": server.url,
        "IOTPIPE_NATS__PARTITIONS": str(NATS_PARTITIONS),
        "IOTPIPE_NATS__ACK_WAIT": "5",
        "IOTPIPE_NATS__REBALANCE_EVERY": "0.5",
        "IOTPIPE_PIPELINE__BATCH_DELAY": "0.2",
        "IOTPIPE_API__ENABLED": "false",  # three instances cannot all serve on one port
        **{
            f"IOTPIPE_ANALYTICS__{job.upper()}_EVERY": str(EVERY)
            for job in ("rollups", "anomalies", "quality", "health", "alerts")
        },
        # The storage jobs: compaction, retention and the lake, at the same interval.
        "IOTPIPE_STORAGE__COMPACT_EVERY": str(EVERY),
        "IOTPIPE_RETENTION__EVERY": str(EVERY),
        "IOTPIPE_STORAGE__LAKE_EVERY": str(EVERY),
    }
    runs = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                iotpipe("-d", url, "--log-level", "DEBUG", "--log-format", "json", "run"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            runs.append(process)
            assert process.stdout is not None
            while not (line := process.stdout.readline()).startswith("Consuming JetStream stream"):
                assert line, "an instance did not start"
        wait_until(lambda: _balanced(url, count), "the partitions to be shared out", 60)
        yield url, server, runs
    finally:
        for process in runs:
            if process.poll() is None:
                process.kill()
        server.stop()


def _balanced(url: str, count: int) -> bool:
    """Whether every partition lease is held, spread as evenly as the instances allow."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' "
            "AND granted GROUP BY pid"
        ).fetchall()
    held = [n for _, n in rows]
    return sum(held) == NATS_PARTITIONS and len(held) == count and max(held) - min(held) <= 1


def stop(runs: list[subprocess.Popen[str]]) -> list[str]:
    logs = []
    for process in runs:
        process.send_signal(signal.SIGTERM)
    for process in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        logs.append(err)
    return logs


def episodes(url: str) -> list[dict[str, object]]:
    result = subprocess.run(
        iotpipe("-d", url, "anomalies", "--method", "streaming", "--limit", "100000", "--json"),
        capture_output=True, text=True, env=clean_env(), check=True,
    )  # fmt: skip
    return sorted(json.loads(result.stdout), key=lambda e: (e["device_id"], e["metric"], e["time"]))


def ingest(
    count: int, postgres: PostgresServer, name: str, linger: float = 0.0
) -> tuple[list[dict[str, object]], list[str]]:
    """Publish the fleet to `count` instances; their episodes and logs once all is stored."""
    with instances(count, postgres, name) as (url, server, runs):
        started = time.monotonic()
        publisher = JetStreamPublisher(server.url, SpikyFleet(), subject="telemetry.{device}", window=500)  # type: ignore[arg-type]
        publisher.start().join()
        store = open_store(url)
        try:
            wait_until(lambda: store.stats()["readings"] == SpikyFleet.readings, "every reading", 120)
        finally:
            store.close()
        time.sleep(max(0.0, linger - (time.monotonic() - started)))
        logs = stop(runs)
        return episodes(url), logs


def job_starts(logs: list[str]) -> dict[str, list[float]]:
    """Each job's start times (s), whichever instance ran it."""
    starts: dict[str, list[float]] = defaultdict(list)
    for log in logs:
        for line in log.splitlines():
            if '"job ' in line and " started at " in line:
                message = json.loads(line)["message"]
                name, micros = message.removeprefix("job ").split(" started at ")
                starts[name].append(int(micros) / 1e6)
    return {name: sorted(times) for name, times in starts.items()}


def test_three_run_instances_run_each_job_once_per_interval_and_find_the_episodes_one_finds(
    postgres: PostgresServer,
) -> None:
    alone, _ = ingest(1, postgres, "scale_one")
    together, logs = ingest(3, postgres, "scale_three", linger=6 * EVERY)

    # The detector found the spikes, and three instances found exactly what one did.
    assert len(alone) >= DEVICES * 2
    assert together == alone

    starts = job_starts(logs)
    assert set(starts) == {
        "rollups",
        "anomalies",
        "quality",
        "health",
        "alerts",
        "webhooks",
        "compact",
        "retention",
        "lake",
    }
    # Every instance schedules the jobs; those that found a job run too recently skipped it.
    for log in logs:
        assert job_starts([log]).get("rollups") or "by another process" in log
    assert sum("by another process" in log for log in logs) >= 2
    for name, times in starts.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 4, (name, times)
        # Once per interval across the three: never two runs of a job within one interval.
        assert min(gaps) >= EVERY - 0.05, (name, gaps)
        span = times[-1] - times[0]
        assert len(times) <= span / EVERY + 1, (name, len(times), span)
