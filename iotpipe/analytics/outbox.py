"""The alert notification outbox: each alert event queued per webhook URL, in the
transaction that records the event (delivery: iotpipe/sinks/webhooks.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from iotpipe.config import Settings
from iotpipe.model import Micros
from iotpipe.store.schema import alert_notifications


def enqueue(
    conn: Connection, settings: Settings, event_id: int, payload: dict[str, Any], now: Micros
) -> None:
    """Queue one notification of an event per webhook, in the event's transaction."""
    for url in settings.analytics.webhooks:
        conn.execute(
            insert(alert_notifications).values(
                event_id=event_id,
                url=url,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
        )
