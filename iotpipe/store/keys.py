"""API key rows: created with the hash of their token, found by it, listed, revoked."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, text, update

from iotpipe.model import Micros
from iotpipe.store.base import Store
from iotpipe.store.schema import JsonDocument, UtcMicros, api_keys


def insert_key(
    store: Store,
    name: str,
    prefix: str,
    token_hash: str,
    role: str,
    devices: list[str] | None,
    created_at: Micros,
    expires_at: Micros | None,
) -> int | None:
    """The new key's id, or None when a key of that name exists."""
    with store.write_transaction() as conn:
        if conn.scalar(select(api_keys.c.id).where(api_keys.c.name == name)) is not None:
            return None
        inserted = conn.execute(
            insert(api_keys).values(
                name=name,
                prefix=prefix,
                token_hash=token_hash,
                role=role,
                devices=devices,
                created_at=created_at,
                expires_at=expires_at,
            )
        ).inserted_primary_key
        assert inserted is not None
        return int(inserted[0])


# Every request with a key looks it up: plain SQL, compiled once.
_BY_HASH = text(
    "SELECT id, name, role, devices, expires_at, revoked_at FROM api_keys WHERE token_hash = :h"
).columns(devices=JsonDocument(), expires_at=UtcMicros(), revoked_at=UtcMicros())
_ANY = text("SELECT 1 FROM api_keys LIMIT 1")


def key_by_hash(store: Store, token_hash: str) -> dict[str, Any] | None:
    with store.read_connection() as conn:
        row = conn.execute(_BY_HASH, {"h": token_hash}).first()
        return dict(row._mapping) if row is not None else None


def key_rows(store: Store) -> list[dict[str, Any]]:
    with store.read_connection() as conn:
        return [dict(row._mapping) for row in conn.execute(select(api_keys).order_by(api_keys.c.id))]


def any_key(store: Store) -> bool:
    """Whether a key was ever created (revoked and expired ones included)."""
    with store.read_connection() as conn:
        return conn.execute(_ANY).first() is not None


def count_keys(store: Store) -> int:
    with store.read_connection() as conn:
        return int(conn.scalar(select(func.count()).select_from(api_keys)) or 0)


def revoke_key(store: Store, name: str, at: Micros) -> dict[str, Any] | None:
    """Revoke a key by name (once: a revoked key keeps its first revocation time)."""
    with store.write_transaction() as conn:
        conn.execute(
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        row = conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
        return dict(row._mapping) if row is not None else None


def touch_key(store: Store, key_id: int, at: Micros) -> None:
    with store.write_transaction() as conn:
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))
