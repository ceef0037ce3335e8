"""Webhooks: every alert event is POSTed as JSON to each configured URL (a sink).

Events are written to an outbox (`alert_notifications`) in the transaction that records
them, and delivered afterwards, outside the ingest path: a webhook that is down delays
only its own notifications. A failed delivery is retried with exponential backoff
(`webhook_backoff`, doubling) up to `webhook_max_attempts`, then marked failed. A
notification is marked sent once its URL answered 2xx, so a receiver sees it once
(at least once if iotpipe dies between the answer and the mark: the
`X-Iotpipe-Notification` header carries its id for deduplication).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from sqlalchemy import select, update

from iotpipe.config import Settings
from iotpipe.model import MICROS_PER_SECOND, Micros, now_micros
from iotpipe.redact import redact, redact_url
from iotpipe.store import Store
from iotpipe.store.schema import alert_notifications

log = logging.getLogger(__name__)

BATCH = 500  # notifications looked at per delivery pass


def deliver_due(
    store: Store, settings: Settings, now: Micros, client: httpx.Client | None = None
) -> dict[str, int]:
    """POST every notification that is due, oldest first; schedule retries of failures."""
    config = settings.analytics
    with store.read_connection() as conn:
        due = conn.execute(
            select(
                alert_notifications.c.id,
                alert_notifications.c.url,
                alert_notifications.c.payload,
                alert_notifications.c.attempts,
            )
            .where(alert_notifications.c.status == "pending", alert_notifications.c.next_attempt_at <= now)
            .order_by(alert_notifications.c.id)
            .limit(BATCH)
        ).all()
    counts = {"sent": 0, "retrying": 0, "failed": 0}
    if not due:
        return counts
    own_client = client is None
    http = client or httpx.Client(timeout=config.webhook_timeout)
    down: set[str] = set()  # a URL that failed once in this pass is not tried again now
    try:
        for notification_id, url, payload, attempts in due:
            if url in down:
                continue
            error = _post(http, url, payload, notification_id)
            attempts += 1
            if error is None:
                values: dict[str, Any] = {
                    "status": "sent",
                    "attempts": attempts,
                    "sent_at": now,
                    "last_error": None,
                }
                counts["sent"] += 1
            elif attempts >= config.webhook_max_attempts:
                values = {"status": "failed", "attempts": attempts, "last_error": error}
                counts["failed"] += 1
                log.warning(
                    "webhook %s failed %d times, giving up on notification %d: %s",
                    redact_url(url),
                    attempts,
                    notification_id,
                    error,
                )
            else:
                delay = config.webhook_backoff * 2 ** (attempts - 1)
                values = {
                    "attempts": attempts,
                    "last_error": error,
                    "next_attempt_at": now + int(delay * MICROS_PER_SECOND),
                }
                counts["retrying"] += 1
                down.add(url)
                log.info(
                    "webhook %s failed (%s); retry %d in %.0f s", redact_url(url), error, attempts, delay
                )
            with store.write_transaction() as conn:
                conn.execute(
                    update(alert_notifications)
                    .where(alert_notifications.c.id == notification_id)
                    .values(**values)
                )
    finally:
        if own_client:
            http.close()
    return counts


def _post(http: httpx.Client, url: str, payload: Any, notification_id: int) -> str | None:
    """None when the receiver took it (2xx), else what went wrong."""
    try:
        response = http.post(url, json=payload, headers={"X-Iotpipe-Notification": str(notification_id)})
    except httpx.HTTPError as exc:  # its text may quote the URL
        return redact(f"{type(exc).__name__}: {exc}").replace(url, redact_url(url))
    if response.is_success:
        return None
    return f"HTTP {response.status_code}"


def webhooks_job(store: Store, settings: Settings) -> dict[str, Any]:
    """Deliver the due notifications (run by the scheduler after the alerts job)."""
    return deliver_due(store, settings, now_micros())
