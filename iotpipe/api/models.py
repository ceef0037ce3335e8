"""The shapes of the API's answers, for the OpenAPI document (/docs) and its clients.

Routes return ready JSON (orjson) rather than these models, so answering costs no
validation; tests run schemathesis against the live server to hold the two together.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """RFC 9457 problem details: every error answer."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str


class ValidationProblem(Problem):
    """A 422: which parameter (`loc`) was invalid, and why (`msg`), when a parameter was;
    an ingest request none of whose messages could be stored carries its summary instead."""

    errors: list[dict[str, str]] | None = None


class Metric(BaseModel):
    name: str
    unit: str | None


class Location(BaseModel):
    lat: float
    lon: float
    elevation: float | None


class Device(BaseModel):
    device_id: str
    name: str | None
    type: str | None
    firmware: str | None
    location: Location | None
    attributes: dict[str, Any]
    status: str = Field(description="online, stale or offline (judged when asked)")
    first_seen: str | None
    last_seen: str | None
    battery: float | None
    battery_low: bool | None
    quality_score: float | None
    health_score: float | None
    interval_seconds: float | None
    metrics: list[Metric]


class DevicePage(BaseModel):
    items: list[Device]
    next: str | None = Field(description="cursor of the next page; null on the last")


class LatestReading(BaseModel):
    metric: str
    unit: str | None
    time: str
    value: float


class Latest(BaseModel):
    device_id: str
    readings: list[LatestReading]


class Series(BaseModel):
    """A series' history as columns: `times` (epoch ms) and `values` (by `agg`), with
    `min`, `max` and `count` per bucket (null for raw readings)."""

    device_id: str
    metric: str
    requested_bucket: str
    bucket: str = Field(description="the bucket answered: raw, 1m, 5m, 1h, 1d or 1w")
    agg: str
    source: str = Field(description="rollups or readings")
    start: str
    end: str
    time_unit: str
    width: int | None
    reduced: bool = Field(description="buckets merged to one point per pixel column (min/max kept)")
    points: int
    times: list[int]
    values: list[float]
    min: list[float] | None
    max: list[float] | None
    count: list[int] | None
    truncated: bool
    next: str | None


class Page(BaseModel):
    items: list[dict[str, Any]]
    next: str | None


class IngestResult(BaseModel):
    messages: int
    accepted: int
    rejected: int
    stored: int
    duplicates: int
    invalid: int
    rejections: list[dict[str, str]]


class Stats(BaseModel):
    devices: dict[str, int]
    readings: dict[str, int]
    ingest: dict[str, float]
    alerts: dict[str, Any]
    quality: dict[str, float | None]
    dead_letters: int
    computed_at: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]]


class AlertRuleIn(BaseModel):
    """A threshold rule, as in `[[analytics.alert_rules]]`."""

    name: str
    device: str = "*"
    device_type: str | None = None
    metric: str
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    for_seconds: float = Field(0.0, allow_inf_nan=False)
    severity: str = "warning"
