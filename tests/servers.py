"""Private, throw-away PostgreSQL and Mosquitto servers for tests and benchmarks.

Each server runs from a temp dir on a free 127.0.0.1 port and is removed on stop.
PostgreSQL refuses to run as root, so when we are root its processes run as the
`postgres` system user (created by Debian's postgresql package).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def _pg_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(f"{name} not found: install PostgreSQL (make install does it)")
    return candidates[-1]


def _as_postgres_user() -> dict[str, object]:
    """subprocess arguments that drop root to the postgres user."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster: initdb in a temp dir, trust auth, loopback only."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iotpipe-pg-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        drop = _as_postgres_user()
        if drop:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **drop,  # type: ignore[call-overload]
        )
        return self.launch()

    def launch(self) -> PostgresServer:
        """Run the server on the cluster initdb made (again, after `stop(cleanup=False)`)."""
        drop = _as_postgres_user()
        self.process = subprocess.Popen(
            [
                _pg_bin("postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=256MB",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "wb"),  # noqa: SIM115 - the child keeps it
            **drop,  # type: ignore[call-overload]
        )
        wait_for_port(self.port)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, *, cleanup: bool = True) -> None:
        """Fast shutdown (SIGINT: sessions are cut, as in an outage); keep the data to
        `launch()` again unless `cleanup`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        if cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class MosquittoServer:
    """A private Mosquitto broker with persistence in a temp dir, anonymous, loopback only."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iotpipe-mqtt-")))
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> MosquittoServer:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.root}/\n"
            f"{self.extra_config}\n"
        )
        if os.geteuid() == 0:
            # mosquitto drops root to the `mosquitto` user; let it write its store.
            shutil.chown(self.root, user="mosquitto")
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "broker.log", "wb"),  # noqa: SIM115 - the child keeps it
        )
        wait_for_port(self.port)
        return self

    def stop(self, *, cleanup: bool = True) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        if cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence store."""
        self.stop(cleanup=False)
        self.start()

    def __enter__(self) -> MosquittoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Partitioned subjects, as deploy/nats-server.conf maps them: the device level of each
# built-in layout hashed into PARTITIONS partitions, under `part.<n>.`.
NATS_PARTITIONS = 8
NATS_PARTITION_MAPPINGS = (
    f'"telemetry.*": "part.{{{{partition({NATS_PARTITIONS},1)}}}}.telemetry.{{{{wildcard(1)}}}}"\n'
    f'"tele.*.SENSOR": "part.{{{{partition({NATS_PARTITIONS},1)}}}}.tele.{{{{wildcard(1)}}}}.SENSOR"\n'
    f'"zigbee2mqtt.*": "part.{{{{partition({NATS_PARTITIONS},1)}}}}.zigbee2mqtt.{{{{wildcard(1)}}}}"\n'
)


@dataclass
class NatsServer:
    """A private nats-server with JetStream (its store in a temp dir) and its MQTT listener."""

    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iotpipe-nats-")))
    mappings: str = ""  # e.g. NATS_PARTITION_MAPPINGS
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def config_file(self) -> Path:
        return self.root / "nats-server.conf"

    def start(self) -> NatsServer:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        mappings = f"mappings = {{\n{self.mappings}}}\n" if self.mappings else ""
        # MQTT needs a server name and JetStream (it keeps sessions and QoS 1 messages there).
        self.config_file.write_text(
            f"server_name: iotpipe-test-{self.port}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.root / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
            f"{mappings}"
        )
        self.process = subprocess.Popen(
            [binary, "--config", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115 - the child keeps it
        )
        wait_for_port(self.port)
        wait_for_port(self.mqtt_port)
        return self

    def stop(self, *, cleanup: bool = True) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        if cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same JetStream store."""
        self.stop(cleanup=False)
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PrometheusServer:
    """A private Prometheus scraping `targets` every `interval`, its TSDB in a temp dir."""

    targets: list[str]
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iotpipe-prom-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        config = self.root / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in self.targets)
        config.write_text(
            f"global:\n  scrape_interval: {self.interval}\n  evaluation_interval: {self.interval}\n"
            f"scrape_configs:\n  - job_name: iotpipe\n    static_configs:\n      - targets: [{targets}]\n"
        )
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "prometheus.log", "wb"),  # noqa: SIM115 - the child keeps it
        )
        wait_for_port(self.port)
        return self

    def query(self, expression: str) -> list[dict[str, object]]:
        """The instant vector an expression gives now (PromQL over the HTTP API)."""
        import httpx

        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
