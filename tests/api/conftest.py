"""A real iotpipe API server (uvicorn on a free port) over a store on each engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from iotpipe.api import create_app
from iotpipe.app import App
from iotpipe.app.server import ApiServer
from iotpipe.config import Settings


@dataclass
class Served:
    app: App
    server: ApiServer
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, name: str, role: str, devices: list[str] | None = None, expires: str | None = None) -> str:
        token: str = self.app.create_key(name, role, devices, expires)["token"]
        return token

    def post_lines(self, text: str, **headers: str) -> httpx.Response:
        return self.client.post(
            "/api/v1/ingest", content=text.encode(), headers={"content-type": "text/plain", **headers}
        )


def serve(database_url: str, **api: Any) -> Iterator[Served]:
    settings = Settings(database_url=database_url)
    settings.api = settings.api.model_copy(update={"port": 0, **api})
    settings.analytics = settings.analytics.model_copy(update={"jobs": False})
    app = App(settings)
    app.init()
    server: ApiServer = app.api_server(create_app)  # with [api] workers > 1, their processes too
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield Served(app, server, client)
    finally:
        client.close()
        server.stop()
        app.close()


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    """The API over a fresh database, on each engine in turn."""
    yield from serve(database_url)


@pytest.fixture
def served_with() -> Iterator[Callable[..., Served]]:
    """Start a server with `[api]` settings of the test's choosing (SQLite)."""
    started: list[Iterator[Served]] = []

    def start(database_url: str, **api: Any) -> Served:
        run = serve(database_url, **api)
        started.append(run)
        return next(run)

    yield start
    for run in started:
        next(run, None)
