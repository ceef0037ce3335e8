"""Leases among the processes sharing one database: which worker owns which NATS partition.

PostgreSQL: session advisory locks held on one dedicated connection. A lease is held as
long as that session lives, so a worker that dies (kill -9, a lost machine) loses its
leases the moment the server notices its connection is gone, and another worker can
take them; nothing is left to clean up. Membership is a shared advisory lock every
worker holds, counted in pg_locks, so each knows how many share the partitions.

SQLite is one machine's database and iotpipe expects one ingest process on it: every
lease is granted.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from sqlalchemy import Connection, text

from iotpipe.store.base import Store

log = logging.getLogger(__name__)


def lease_key(name: str) -> int:
    """A stable positive 63-bit advisory lock key for a lease name."""
    digest = hashlib.blake2b(f"iotpipe.lease.{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class DatabaseLeases:
    """Leases in `store`'s database, among the members of `group`."""

    def __init__(self, store: Store, group: str) -> None:
        self._store = store
        self._group_key = lease_key(f"members:{group}")
        self._held: set[str] = set()
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one connection, used from the source's threads
        self._shared = store.dialect == "postgresql"

    def _connection(self) -> Connection:
        if self._conn is None:
            # Autocommit: a session that holds locks must not hold a transaction open too.
            self._conn = self._store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def join(self) -> None:
        if not self._shared:
            return
        with self._lock:
            self._connection().execute(text("SELECT pg_advisory_lock_shared(:k)"), {"k": self._group_key})

    def members(self) -> int:
        if not self._shared:
            return 1
        high, low = self._group_key >> 32, self._group_key & 0xFFFFFFFF
        with self._lock:
            count = self._connection().scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1"
                ),
                {"high": high, "low": low},
            )
        return max(1, int(count or 0))

    def try_acquire(self, name: str) -> bool:
        if not self._shared:
            self._held.add(name)
            return True
        with self._lock:
            got = bool(
                self._connection().scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lease_key(name)})
            )
        if got:
            self._held.add(name)
        return got

    def release(self, name: str) -> None:
        self._held.discard(name)
        if not self._shared:
            return
        with self._lock:
            self._connection().execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lease_key(name)})

    def alive(self) -> bool:
        """Whether the session holding our leases is still up; if it died, they are gone."""
        if not self._shared or self._conn is None:
            return True
        try:
            with self._lock:
                self._conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.error("lost the database session holding the partition leases: %s", exc)
            with self._lock:
                conn, self._conn = self._conn, None
                self._held.clear()
            try:
                conn.invalidate()
            except Exception:
                log.debug("closing the lost lease session failed", exc_info=True)
            # Join again, so the next balancing counts us and claims a share anew.
            try:
                self.join()
            except Exception:
                log.debug("joining the workers again failed", exc_info=True)
            return False

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            # The connection goes back to the pool, its session alive: let go of everything.
            try:
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
            finally:
                conn.close()
