"""Fixtures shared by every test: real PostgreSQL and Mosquitto, stores on both engines."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotpipe.store import Store, open_store
from tests.servers import MosquittoServer, PostgresServer

ENGINES = ("sqlite", "postgresql")
# `iotpipe run` serves the API: in tests on a free port each, never on the default 8080.
os.environ.setdefault("IOTPIPE_API__PORT", "0")
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


def _url_for(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'iotpipe.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each engine in turn (SQLite file, fresh PostgreSQL database)."""
    return _url_for(request.param, tmp_path, request)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on each engine in turn."""
    opened = open_store(database_url)
    yield opened
    opened.close()
