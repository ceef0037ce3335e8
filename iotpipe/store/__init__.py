"""Storage: the schema, its migrations, and one Store per engine (SQLite, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, ProgrammingError

from iotpipe.errors import ConfigError, IotpipeError, StoreError
from iotpipe.redact import redact
from iotpipe.store.base import Store

__all__ = ["Store", "open_store"]


_USAGE = "use sqlite:///path/to/file.db or postgresql://user@host:port/dbname"


def open_store(url: str, migrate: bool = True) -> Store:
    """Open the database a URL names, creating and upgrading its schema unless told not to."""
    store: Store
    check_url(url)
    if url.startswith("sqlite:"):
        from iotpipe.store.sqlite import SqliteStore

        _ensure_sqlite_dir(url)
        store = SqliteStore(url)
    elif url.startswith(("postgresql", "postgres:")):
        from iotpipe.store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ConfigError(f"unsupported database URL {redact(url)!r}: {_USAGE}")
    _check_connection(store)
    if migrate:
        store.migrate()
    return store


def check_url(url: str) -> None:
    """ConfigError, saying what to fix, for a URL no engine of ours can open."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"the database URL {redact(url)!r} is malformed ({exc}): {_USAGE}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver not in ("", "psycopg"):
        raise ConfigError(
            f"the database URL asks for the {driver} driver; iotpipe uses psycopg 3: write postgresql://... "
            "(no +driver)"
        )
    if backend == "sqlite" and driver:
        raise ConfigError(f"the database URL asks for the {driver} driver; write sqlite:///path.db")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"the database URL's port {port} is out of range 1-65535")
    # user:p@ss@host parses as the password "p" at the host "ss@host": the server's "cannot
    # resolve host" would then show the rest of the password.
    if urlsplit(url).netloc.count("@") > 1:
        raise ConfigError(
            f"the database URL {redact(url)!r} has more than one @ before its host: write an @ in the "
            "user name or password as %40"
        )


def _check_connection(store: Store) -> None:
    try:
        with store.engine.connect():
            pass
    except DatabaseError as exc:
        store.close()
        raise _refusal(store, exc) from None


def _refusal(store: Store, exc: DatabaseError) -> IotpipeError:
    """What to tell a user whose database could not be opened, by why."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    if isinstance(exc, ProgrammingError):  # psycopg: an option in the URL it does not know
        return ConfigError(f"the database refused the URL: {reason}; remove that option from --database-url")
    if isinstance(exc, OperationalError):
        return StoreError(
            f"cannot connect to the database {store.describe()}: {reason}. Check --database-url "
            "(or IOTPIPE_DATABASE_URL) and that the database server is running."
        )
    return ConfigError(  # SQLite: "file is not a database"
        f"{store.describe()} cannot be opened as a database ({reason}); check --database-url "
        "(or IOTPIPE_DATABASE_URL): it names some other file"
    )


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, or None (another engine, or an in-memory database)."""
    path = url.split("///", 1)[-1] if url.startswith("sqlite:") and "///" in url else ""
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve()


def _ensure_sqlite_dir(url: str) -> None:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
