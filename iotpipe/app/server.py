"""The HTTP API as a service of the run loop: uvicorn in a thread of its own.

`iotpipe serve` and `iotpipe run` both add it to the Runner beside the job scheduler, so
the one shutdown path (app/runner.py) stops it too: uvicorn stops accepting, finishes the
requests in flight (each HTTP ingest commits before it answers), then the pipeline's
writer stops.

The App never imports the API package: the API sits above the App in the layers and
calls it. The entry point (the CLI) builds the ASGI application with
`iotpipe.api.create_app(app)` and the App runs it here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from iotpipe import limits
from iotpipe.errors import ConfigError

if TYPE_CHECKING:
    from iotpipe.app.workers import WorkerPool

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10  # seconds requests in flight get to finish


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, insecure: bool, has_keys: bool) -> None:
    """Refuse to serve beyond this machine without keys, unless told --insecure."""
    if is_loopback(host) or has_keys or insecure:
        return
    raise ConfigError(
        f"refusing to serve the API on {host} without API keys: anyone who can reach it could "
        "read and write everything. Create a key first (`iotpipe keys create admin --role admin`), "
        "or pass --insecure if this network is yours alone"
    )


class ApiServer:
    """A Service (app/runner.py): the ASGI app on uvicorn, in a daemon thread."""

    name = "api"

    def __init__(self, asgi: Any, host: str, port: int) -> None:
        import uvicorn

        self.host = host
        self.port = port
        self.asgi = asgi
        self.socket = _bind(host, port)
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(asgi))
        self._thread: threading.Thread | None = None
        self.workers: WorkerPool | None = None  # more processes on this socket (app/workers.py)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="iotpipe-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise ConfigError(f"the API server did not start on {self.url}; see the log above")
        if self.workers is not None:
            self.workers.start()

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop(SHUTDOWN_GRACE + 5)
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_GRACE + 5)
        self.socket.close()

    def describe(self) -> str:
        more = f"; {self.workers.describe()}" if self.workers is not None else ""
        return f"dashboard and API at {self.url} (OpenAPI docs at {self.url}/docs{more})"


def uvicorn_config(asgi: Any) -> Any:
    """How every API process runs uvicorn (this one's thread, and app/workers.py's)."""
    import uvicorn

    return uvicorn.Config(
        asgi,
        log_config=None,  # our logging (logs.py) already handles uvicorn's loggers
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        lifespan="on",  # the app sizes its threads at start (api/threads.py)
        server_header=False,
        proxy_headers=False,
        ws=_websocket_protocol(),
    )


def _bind(host: str, port: int) -> Any:
    """The listening socket, bound now, so a taken port is a clear error at start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _websocket_protocol() -> Any:
    """uvicorn's WebSocket protocol, with a small kernel send buffer per connection.

    A live-feed client that stops reading is noticed when our sends start to wait; the
    kernel's autotuned send buffer (up to net.ipv4.tcp_wmem's 4 MB) would first swallow
    megabytes and hide it for minutes. A fixed buffer also stops autotuning, which bounds
    what each such client costs; 256 KB still fills a LAN link at any dashboard's rate."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    class BoundedSendBuffer(AutoWebSocketsProtocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.LIVE_SEND_BUFFER_BYTES)
            super().connection_made(transport)

    return BoundedSendBuffer
