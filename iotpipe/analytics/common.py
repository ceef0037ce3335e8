"""Small reads and week arithmetic shared by the analytics modules (days: iotpipe.model)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, select

from iotpipe.errors import IotpipeError, NotFound
from iotpipe.model import MICROS_PER_DAY, Micros
from iotpipe.store.schema import devices, series

MICROS_PER_WEEK = 7 * MICROS_PER_DAY
# ISO weeks start on Monday; the epoch (1970-01-01) was a Thursday, so Monday
# 1970-01-05 00:00 UTC is the origin every week bucket is aligned to.
WEEK_ORIGIN = 4 * MICROS_PER_DAY


def day_micros(day: str) -> Micros:
    """Start of a 'YYYY-MM-DD' UTC day."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        raise IotpipeError(f"{day!r} is not a day; write it as YYYY-MM-DD") from None
    return (date - dt.date(1970, 1, 1)).days * MICROS_PER_DAY


@dataclass(frozen=True, slots=True)
class SeriesRef:
    series_id: int
    device_pk: int
    device_id: str
    metric: str


def find_device(conn: Connection, device_id: str) -> int:
    """A device's key, or an error saying it is unknown: a filter on a misspelt device
    would otherwise answer "nothing there"."""
    device_pk = conn.scalar(select(devices.c.id).where(devices.c.device_id == device_id))
    if device_pk is None:
        raise NotFound(f"no device {device_id!r} in the store; check the device id (case matters)")
    return int(device_pk)


def find_series(conn: Connection, device_id: str, metric: str) -> SeriesRef:
    """The series of a device and metric, or an error saying which part is unknown."""
    row = conn.execute(
        select(series.c.id, devices.c.id)
        .join(devices, devices.c.id == series.c.device_pk)
        .where(devices.c.device_id == device_id, series.c.metric == metric)
    ).first()
    if row is not None:
        return SeriesRef(row[0], row[1], device_id, metric)
    device_pk = find_device(conn, device_id)
    metrics = sorted(conn.scalars(select(series.c.metric).where(series.c.device_pk == device_pk)))
    raise NotFound(f"device {device_id!r} has no metric {metric!r}; it has: {', '.join(metrics)}")
