"""Storage: the schema, its migrations, and one Store per engine (SQLite, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import OperationalError

from iotpipe.errors import ConfigError, StoreError
from iotpipe.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str, migrate: bool = True) -> Store:
    """Open the database a URL names, creating and upgrading its schema unless told not to."""
    store: Store
    if url.startswith("sqlite:"):
        from iotpipe.store.sqlite import SqliteStore

        _ensure_sqlite_dir(url)
        store = SqliteStore(url)
    elif url.startswith(("postgresql", "postgres:")):
        from iotpipe.store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ConfigError(
            f"unsupported database URL {url!r}: use sqlite:///path/to/file.db "
            "or postgresql://user@host:port/dbname"
        )
    _check_connection(store)
    if migrate:
        store.migrate()
    return store


def _check_connection(store: Store) -> None:
    try:
        with store.engine.connect():
            pass
    except OperationalError as exc:
        store.close()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(
            f"cannot connect to the database {store.describe()}: {reason}. Check --database-url "
            "(or IOTPIPE_DATABASE_URL) and that the database server is running."
        ) from None


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
