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
BULK_BATCH_SIZE = 2_000_000  # readings per transaction of history imported into the packed tier (~60 MB)

# -- the writer's retries when the store is down ----------------------------------------
WRITE_RETRY_MAX_BACKOFF = 30.0  # seconds between two tries, at most
SHUTDOWN_GRACE = 30.0  # seconds a stopping writer keeps retrying before it gives up
