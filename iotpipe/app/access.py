"""API keys and roles: who may do what through the HTTP API.

A key is a random token (`iotp_` + 43 URL-safe characters, 256 bits) shown once when it
is created; the database keeps only its SHA-256 (a token has far too much entropy for a
slow hash to add anything) and its first characters, to recognise it in listings.

Roles, each allowed what the one before it is, and more:
- reader: read everything;
- writer: also ingest. A writer key scoped to devices (`--device`) may only write
  readings of those devices, and reads nothing: it is what a device carries, such as a
  ThingSpeak channel's write key;
- operator: also acknowledge alerts and edit alert rules;
- admin: also manage keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from iotpipe.errors import IotpipeError
from iotpipe.model import (
    MICROS_PER_DAY,
    MICROS_PER_HOUR,
    MICROS_PER_SECOND,
    Micros,
    format_micros,
    now_micros,
)
from iotpipe.redact import register_secret
from iotpipe.store import Store
from iotpipe.store import keys as key_rows

ROLES = ("reader", "writer", "operator", "admin")
TOKEN_PREFIX = "iotp_"
PREFIX_SHOWN = len(TOKEN_PREFIX) + 6  # what listings show of a token
TOUCH_EVERY = 60 * MICROS_PER_SECOND  # last_used_at is written at most this often per key
KEYS_RECHECK = 1.0  # seconds an open API takes to notice a key created by another process
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_UNITS = {
    "s": MICROS_PER_SECOND,
    "m": 60 * MICROS_PER_SECOND,
    "h": MICROS_PER_HOUR,
    "d": MICROS_PER_DAY,
    "w": 7 * MICROS_PER_DAY,
    "y": 365 * MICROS_PER_DAY,
}


class AccessDenied(IotpipeError):
    """A request's key may not do what it asked; `status` is the HTTP answer (401, 403)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


# What each action needs, as the lowest role allowed.
ACTIONS = {"read": "reader", "ingest": "writer", "operate": "operator", "admin": "admin"}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a key (name, role, devices), or everyone when the API is open."""

    name: str
    role: str
    devices: tuple[str, ...] | None = None  # a writer key's devices; None: any
    key_id: int | None = None

    def may(self, action: str) -> bool:
        if self.devices is not None and action != "ingest":
            return False  # a device key only writes for its devices
        return ROLES.index(self.role) >= ROLES.index(ACTIONS[action])

    def require(self, action: str) -> None:
        if not self.may(action):
            needed = ACTIONS[action]
            scoped = " (a key scoped to devices may only write their readings)" if self.devices else ""
            raise AccessDenied(
                f"key {self.name!r} ({self.role}{scoped}) may not {_ACTION_WORDS[action]}; "
                f"this needs {'an' if needed[0] in 'aeiou' else 'a'} {needed} key or higher"
            )

    def may_write(self, device_id: str) -> bool:
        return self.devices is None or device_id in self.devices


_ACTION_WORDS = {
    "read": "read data",
    "ingest": "ingest readings",
    "operate": "acknowledge alerts or edit alert rules",
    "admin": "manage API keys or replay dead letters",
}
OPEN = Principal("open access (no API key exists)", "admin")


def parse_expiry(text: str | None, now: Micros) -> Micros | None:
    """`90d`, `12h`, `1y`... from now, or an ISO 8601 time; None for no expiry."""
    if text is None:
        return None
    match = _DURATION.match(text)
    if match is not None:
        amount = int(match[1])
        if amount < 1:
            raise IotpipeError(f"--expires {text!r} must be in the future; e.g. 90d")
        return now + amount * _UNITS[match[2]]
    from iotpipe.app import parse_time

    moment = parse_time(text, "--expires")
    assert moment is not None
    if moment <= now:
        raise IotpipeError(f"--expires {text!r} is in the past; give a later time or a duration such as 90d")
    return moment


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyRing:
    """Creates, lists, revokes and checks keys against one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[int, Micros] = {}
        self._lock = threading.Lock()
        self._exist = False
        self._checked = -KEYS_RECHECK

    def create(
        self, name: str, role: str, devices: list[str] | None = None, expires: str | None = None
    ) -> dict[str, Any]:
        name = name.strip()
        if not name or len(name) > 100:
            raise IotpipeError(
                "a key needs a name of 1 to 100 characters, e.g. `iotpipe keys create grafana`"
            )
        if role not in ROLES:
            raise IotpipeError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        scope = sorted(set(devices)) if devices else None
        if scope is not None and role != "writer":
            raise IotpipeError(
                "--device scopes a writer key; give --role writer (other roles are fleet-wide)"
            )
        now = now_micros()
        expires_at = parse_expiry(expires, now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        register_secret(token)
        key_id = key_rows.insert_key(
            self.store, name, token[:PREFIX_SHOWN], token_hash(token), role, scope, now, expires_at
        )
        if key_id is None:
            if self._row(name)["revoked_at"] is not None:  # kept: its name stays in the audit trail
                raise IotpipeError(
                    f"a key named {name!r} was revoked, and names are not reused; choose another"
                )
            raise IotpipeError(f"a key named {name!r} exists; choose another name (or revoke that one)")
        self._exist = True
        return {**_view(self._row(name)), "token": token}

    def _row(self, name: str) -> dict[str, Any]:
        for row in key_rows.key_rows(self.store):
            if row["name"] == name:
                return row
        raise IotpipeError(f"no API key named {name!r}; `iotpipe keys list` shows them")

    def list(self) -> list[dict[str, Any]]:
        now = now_micros()
        return [_view(row, now) for row in key_rows.key_rows(self.store)]

    def revoke(self, name: str) -> dict[str, Any]:
        row = key_rows.revoke_key(self.store, name, now_micros())
        if row is None:
            raise IotpipeError(f"no API key named {name!r}; `iotpipe keys list` shows them")
        return _view(row)

    def any(self) -> bool:
        """Whether a key was ever created. Keys are never deleted, so once true this is
        remembered; while false it is asked again at most every KEYS_RECHECK seconds (a
        key made by `iotpipe keys create` in another process counts within that)."""
        if self._exist:
            return True
        now = time.monotonic()
        if now - self._checked >= KEYS_RECHECK:
            self._exist = key_rows.any_key(self.store)
            self._checked = now
        return self._exist

    def authenticate(self, token: str | None) -> Principal:
        """The principal a token stands for; AccessDenied (401) when it stands for none.

        With no key created yet the API is open, to a request with a token too (the
        server refuses to start on a non-loopback address in that state unless told
        --insecure)."""
        if not self.any():
            return OPEN  # whatever a client sends: with no key there is nothing to check it against
        if not token:
            raise AccessDenied(
                "this API needs a key: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY` "
                "(`iotpipe keys create NAME --role reader` makes one)",
                401,
            )
        row = key_rows.key_by_hash(self.store, token_hash(token))
        now = now_micros()
        if row is None:
            raise AccessDenied("unknown API key; check it, or create one with `iotpipe keys create`", 401)
        if row["revoked_at"] is not None:
            raise AccessDenied(f"API key {row['name']!r} was revoked; use another key", 401)
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise AccessDenied(
                f"API key {row['name']!r} expired at {format_micros(row['expires_at'])}; create a new one",
                401,
            )
        self._touch(row["id"], now)
        devices = tuple(row["devices"]) if row["devices"] is not None else None
        return Principal(row["name"], row["role"], devices, row["id"])

    def _touch(self, key_id: int, now: Micros) -> None:
        """Record last use, at most once a minute per key (not a write per request)."""
        with self._lock:
            if now - self._touched.get(key_id, 0) < TOUCH_EVERY:
                return
            self._touched[key_id] = now
        key_rows.touch_key(self.store, key_id, now)


def _view(row: dict[str, Any], now: Micros | None = None) -> dict[str, Any]:
    now = now if now is not None else now_micros()
    expired = row["expires_at"] is not None and row["expires_at"] <= now
    status = "revoked" if row["revoked_at"] is not None else "expired" if expired else "active"
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "role": row["role"],
        "devices": row["devices"],
        "status": status,
        "created_at": format_micros(row["created_at"]),
        "expires_at": _time(row["expires_at"]),
        "last_used_at": _time(row["last_used_at"]),
        "revoked_at": _time(row["revoked_at"]),
    }


def _time(value: Micros | None) -> str | None:
    return format_micros(value) if value is not None else None
