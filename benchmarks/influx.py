"""A private InfluxDB 1.x server (Debian's `influxdb`) for the import benchmark's peer run.

Like tests/servers.py: a temp dir, 127.0.0.1 on free ports, no reporting, no internal
monitoring database, removed on stop. `make bench` installs the package.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_port, wait_for_port

CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


@dataclass
class InfluxServer:
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iotpipe-influx-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InfluxServer:
        binary = shutil.which("influxd")
        if binary is None:
            raise FileNotFoundError("influxd not found: install Debian's influxdb (make bench does)")
        config = self.root / "influxdb.conf"
        config.write_text(CONFIG.format(root=self.root, port=self.port, rpc_port=free_port()))
        self.process = subprocess.Popen(
            [binary, "run", "-config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 30
        while httpx.get(f"{self.url}/ping").status_code != 204:
            if time.monotonic() > deadline:
                raise TimeoutError("influxd did not answer /ping")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        httpx.post(f"{self.url}/query", params={"q": f"CREATE DATABASE {name}"}).raise_for_status()

    def write(self, database: str, bodies: Iterable[bytes]) -> float:
        """POST each body to /write (precision µs) from one client; return the seconds taken."""
        with httpx.Client(base_url=self.url, timeout=120) as client:
            started = time.perf_counter()
            for body in bodies:
                client.post(
                    "/write", params={"db": database, "precision": "u"}, content=body
                ).raise_for_status()
            return time.perf_counter() - started

    def count(self, database: str, measurement: str) -> int:
        """Field values stored (the sum over fields of count(*))."""
        answer = httpx.get(
            f"{self.url}/query", params={"db": database, "q": f"SELECT count(*) FROM {measurement}"}
        ).json()
        series = answer["results"][0].get("series") or [{"values": [[0]]}]
        return sum(v for v in series[0]["values"][0][1:] if isinstance(v, int))
