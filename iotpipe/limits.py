"""Every default and bound of the ingest path, in one place (config.py exposes them).

Batch limits, backlog bounds and payload sizes are set here once; the settings, the
pipeline and the sources all read them from here, so a default is never written twice.
"""

from __future__ import annotations

# -- the pipeline -----------------------------------------------------------------------
BATCH_SIZE = 50_000  # readings per transaction
BATCH_DELAY = 1.0  # seconds a reading may wait for its batch to fill
QUEUE_SIZE = 10_000  # messages buffered between push sources and the writer
MAX_PAYLOAD_BYTES = 256 * 1024  # a network message; files get FILE_MAX_PAYLOAD_BYTES
# A whole JSON document in a file is one message; files are the user's own, so the
# network-facing payload limit would only reject legitimate exports.
FILE_MAX_PAYLOAD_BYTES = 1 << 30
FUTURE_TOLERANCE_SECONDS = 86_400.0  # readings may be up to a day ahead of receipt

# -- the writer's retries when the store is down ----------------------------------------
WRITE_RETRY_MAX_BACKOFF = 30.0  # seconds between two tries, at most
SHUTDOWN_GRACE = 30.0  # seconds a stopping writer keeps retrying before it gives up

# -- the HTTP API ------------------------------------------------------------------------
API_HOST = "127.0.0.1"  # loopback: nothing else reaches it unless told otherwise
API_PORT = 8080
API_MAX_BODY_BYTES = 16 * 1024 * 1024  # a request body as sent (gzip or not)
API_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024  # a gzip body once inflated
API_RATE_LIMIT = 100.0  # requests per second per key, sustained
API_RATE_BURST = 200  # requests back to back before the rate applies
API_MAX_POINTS = 10_000  # points of one history response; past it: truncated + next
API_PAGE_SIZE = 100  # entries per page of a list, by default
API_MAX_PAGE_SIZE = 1000

# -- the live feed (sinks/live.py, /api/v1/live) -----------------------------------------
LIVE_MAX_PENDING = 100_000  # updates waiting for one client before it is closed as too slow
LIVE_MAX_LAG_SECONDS = 10.0  # how long updates may wait for a client before it is closed as too slow
LIVE_SEND_BUFFER_BYTES = 128 * 1024  # kernel send buffer of a WebSocket (Linux doubles it)
LIVE_MAX_FRAME = 10_000  # readings in one update frame; more wait for the next
LIVE_COALESCE_SECONDS = 0.25  # a client gets at most one update frame per this long
LIVE_MAX_BACKLOG = 1_000_000  # readings committed but not yet fanned out, past which clients are closed
LIVE_POLL_SECONDS = 1.0  # how often anomalies, alert changes and device statuses are polled
LIVE_MAX_BACKFILL_SECONDS = 3600.0  # history a subscription may ask for first
LIVE_MAX_BACKFILL_READINGS = 200_000  # readings one backfill sends at most
