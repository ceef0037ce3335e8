"""One settings object: command-line flags > environment (IOTPIPE_*) > iotpipe.toml > defaults.

Nested sections map to TOML tables and to environment variables with a double
underscore: `[pipeline] batch_size = 1000` is `IOTPIPE_PIPELINE__BATCH_SIZE=1000`.
A `.env` file in the working directory is read as environment.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from iotpipe import limits
from iotpipe.errors import ConfigError
from iotpipe.model import datetime_to_micros

DEFAULT_CONFIG_FILE = "iotpipe.toml"
DEFAULT_DATABASE_URL = "sqlite:///./iotpipe.db"


class PipelineSettings(BaseModel):
    """`[pipeline]`: micro-batching and the bounds of the ingest path (defaults: limits.py)."""

    batch_size: int = Field(limits.BATCH_SIZE, ge=1, description="readings per transaction")
    batch_delay: float = Field(
        limits.BATCH_DELAY, gt=0, description="seconds a reading may wait for its batch"
    )
    queue_size: int = Field(
        limits.QUEUE_SIZE, ge=1, description="messages buffered between sources and the writer"
    )


class LimitsSettings(BaseModel):
    """`[limits]`: what one message may hold (iotpipe/limits.py); past a limit it is dead-lettered."""

    earliest_time: datetime = Field(
        limits.EARLIEST_TIME, description="readings before this time are rejected (naive means UTC)"
    )
    max_future_seconds: float = Field(
        limits.FUTURE_TOLERANCE_SECONDS,
        ge=0,
        le=limits.FUTURE_TOLERANCE_CEILING_SECONDS,
        description="how far ahead of its receipt a reading may be",
    )
    max_payload_bytes: int = Field(
        limits.MAX_PAYLOAD_BYTES, ge=64, description="one message, file line or CSV record"
    )
    max_document_bytes: int = Field(
        limits.MAX_DOCUMENT_BYTES, ge=64, description="a whole .json file, parsed in one piece"
    )
    # The decoders classify names against the default themselves: it can only be lowered.
    max_id_length: int = Field(
        limits.MAX_ID_LENGTH,
        ge=1,
        le=limits.MAX_ID_LENGTH,
        description="characters of a device id or metric name",
    )
    max_text_length: int = Field(
        limits.MAX_TEXT_LENGTH, ge=1, description="characters of a unit or metadata string"
    )
    max_metrics_per_message: int = Field(
        limits.MAX_METRICS_PER_MESSAGE, ge=1, description="distinct metrics of a device in one message"
    )
    max_series_per_device: int = Field(
        limits.MAX_SERIES_PER_DEVICE, ge=1, description="series (metrics) one device may have"
    )

    @field_validator("earliest_time")
    @classmethod
    def _within_datetime(cls, value: datetime) -> datetime:
        value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if not limits.TIME_FLOOR <= datetime_to_micros(value) < limits.TIME_CEILING:
            raise ValueError("must be between 0001-01-08 and 9999-12-24")
        return value

    def to_limits(self) -> limits.Limits:
        values = self.model_dump()
        values["earliest_time"] = datetime_to_micros(self.earliest_time)
        return limits.Limits(**values)


class SimulatorSettings(BaseModel):
    devices: int = Field(5, ge=1)
    interval: float = Field(5.0, gt=0, description="seconds between a device's reports")
    seed: int | None = None


Severity = Literal["critical", "major", "minor", "warning"]
SEVERITIES: tuple[str, ...] = get_args(Severity)  # most severe first


class AlertRuleSettings(BaseModel):
    """`[[analytics.alert_rules]]`: alert when a metric leaves [min, max] for a while."""

    name: str = Field(min_length=1)
    device: str = Field("*", description="a device id or a glob (pump-*)")
    device_type: str | None = None
    metric: str = Field(min_length=1)
    # Finite: a NaN or an overflowing bound (1e400) would be stored as no bound at all.
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    for_seconds: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="how long the value must stay out of bounds"
    )
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _has_a_bound(self) -> AlertRuleSettings:
        if self.min is None and self.max is None:
            raise ValueError(f"alert rule {self.name!r} needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"alert rule {self.name!r}: min ({self.min:g}) is above max ({self.max:g}), so every"
                " value would be out of bounds; swap them"
            )
        return self


class MetricBounds(BaseModel):
    min: float | None = None
    max: float | None = None


class AnalyticsSettings(BaseModel):
    """`[analytics]`: the scheduled jobs (rollups, quality, health, alerts) and their knobs."""

    jobs: bool = Field(True, description="run the analytics jobs inside `iotpipe run`")
    # Seconds between two runs of each job inside `iotpipe run`.
    rollups_every: float = Field(60.0, gt=0)
    anomalies_every: float = Field(300.0, gt=0)
    quality_every: float = Field(300.0, gt=0)
    health_every: float = Field(30.0, gt=0)
    alerts_every: float = Field(30.0, gt=0)
    rollup_chunk_hours: int = Field(5000, ge=1, description="(series, hour) buckets per transaction")
    # Data quality: valid range per metric (readings outside are out-of-range).
    bounds: dict[str, MetricBounds] = Field(
        default_factory=lambda: {
            "humidity": MetricBounds(min=0, max=100),
            "battery": MetricBounds(min=0, max=100),
        }
    )
    quality_days: int = Field(7, ge=1, description="recent days the quality job recomputes each run")
    interval_sample: int = Field(
        100, ge=2, description="recent readings whose median gap is the usual interval"
    )
    # Device health.
    offline_multiple: float = Field(
        3.0, gt=0, description="offline after this many usual intervals of silence"
    )
    offline_min_seconds: float = Field(300.0, ge=0, description="never offline sooner than this")
    battery_metrics: list[str] = Field(default_factory=lambda: ["battery"])
    battery_threshold: float = Field(20.0, description="low battery below this (percent)")
    # Alerts.
    alert_rules: list[AlertRuleSettings] = Field(default_factory=list)
    quality_threshold: float = Field(80.0, ge=0, le=100, description="alert when a day's score is below")
    offline_severity: Severity = "major"
    battery_severity: Severity = "warning"
    anomaly_severity: Severity = "minor"
    # The streaming score is in decades of rarity on every series, so one table of levels
    # serves the whole fleet: an episode that reached `major = 10` is once in 10^10 readings.
    anomaly_severity_scores: dict[Severity, float] = Field(
        default_factory=dict,
        description="an anomaly episode whose score reaches a level gets its severity "
        "(the most severe reached), e.g. {major = 10, critical = 20}; below them, anomaly_severity",
    )
    quality_severity: Severity = "warning"
    alert_lookback_seconds: float = Field(86_400.0, gt=0, description="how far back alerts judge readings")
    webhooks: list[str] = Field(default_factory=list, description="URLs that get each alert event as JSON")
    webhook_timeout: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff: float = Field(2.0, gt=0, description="seconds before the first retry; doubles each time")

    @field_validator("anomaly_severity_scores")
    @classmethod
    def _positive_levels(cls, levels: dict[str, float]) -> dict[str, float]:
        for severity, level in levels.items():
            if not 0 < level < math.inf:
                raise ValueError(f"the score of {severity} must be a positive number of decades, not {level}")
        return levels


class ThingSpeakChannelSettings(BaseModel):
    """One entry of `[thingspeak] channels`: `{id = 9}` or `{id = 1234, read_key = "..."}`."""

    id: int = Field(ge=1, description="the number in the channel's URL")
    read_key: SecretStr | None = Field(None, description="Read API Key of a private channel")
    since: str | None = Field(
        None, description="first run only: ISO time to start from (default: all history)"
    )


class ThingSpeakSettings(BaseModel):
    """`[thingspeak]`: channels `iotpipe run` polls, and how politely."""

    channels: list[ThingSpeakChannelSettings] = Field(default_factory=list)
    # Keys kept out of the config file: IOTPIPE_THINGSPEAK__READ_KEYS__1234=KEY.
    read_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # The account's User API Key: only to read each channel's tags (its settings).
    user_api_key: SecretStr | None = None
    base_url: str = "https://api.thingspeak.com"
    interval: float = Field(60.0, gt=0, description="seconds between polls of a channel")
    requests_per_second: float = Field(1.0, gt=0, description="shared by every channel of a process")
    burst: int = Field(2, ge=1, description="requests that may go back to back")
    timeout: float = Field(30.0, gt=0, description="seconds to wait for an answer")
    max_attempts: int = Field(5, ge=1, description="tries per request on timeouts and 5xx")
    results: int = Field(8000, ge=1, le=8000, description="entries per request (ThingSpeak's cap: 8000)")

    def read_key(self, channel_id: int) -> str | None:
        """The channel's read key from its entry in `channels`, else from `read_keys`."""
        for channel in self.channels:
            if channel.id == channel_id and channel.read_key is not None:
                return channel.read_key.get_secret_value()
        key = self.read_keys.get(str(channel_id))
        return key.get_secret_value() if key is not None else None


class StreamingDetectorSettings(BaseModel):
    """`[anomalies.streaming]`: the detector that scores every reading as it is stored
    (docs/anomalies.md explains each knob; the defaults are the measured ones)."""

    enabled: bool = True
    threshold: float = Field(
        5.5, gt=0, description="score (decades of rarity: 5 = once in 10^5 readings) that opens an episode"
    )
    hysteresis: float = Field(0.6, gt=0, le=1, description="fraction of threshold that keeps an episode open")
    calm: int = Field(24, ge=1, description="readings below the hysteresis level that close an episode")
    refractory_seconds: float = Field(0.0, ge=0, description="no new episode this soon after one ended")
    warmup: int = Field(150, ge=0, description="readings of a series before it can raise an episode")
    level_seconds: float = Field(3600.0, gt=0, description="time constant of a series' level")
    season_seconds: float = Field(3 * 86_400.0, gt=0, description="time constant of its daily profile")
    range_seconds: float = Field(14 * 86_400.0, gt=0, description="how long its recent range remembers")
    stuck_min: int = Field(5, ge=2, description="identical readings in a row that can be a stuck sensor")
    stuck_chance: float = Field(
        1e-5, gt=0, lt=1, description="stuck: a run of identical values chance makes once in 1/this readings"
    )
    max_series: int = Field(100_000, ge=1, description="series whose state is kept in memory (LRU)")
    rebuild_readings: int = Field(
        4096, ge=0, description="stored readings replayed to rebuild a series' state after a restart"
    )


class AnomalySettings(BaseModel):
    """`[anomalies]`: the z-score rule (batch, the documented baseline) and the streaming detector."""

    k: float = Field(3.0, gt=0, description="z-score rule: flag |x - mean| > k * stddev")
    window_seconds: float = Field(3600.0, gt=0, description="the trailing window the mean and stddev cover")
    min_count: int = Field(20, ge=2, description="readings the window needs before a reading is judged")
    lookback_seconds: float = Field(3600.0, gt=0, description="what the scheduled job re-examines each run")
    streaming: StreamingDetectorSettings = StreamingDetectorSettings()  # type: ignore[call-arg]


class MqttSettings(BaseModel):
    """`[mqtt]`: how `iotpipe run` and `iotpipe ingest mqtt` subscribe to the broker at `mqtt_url`."""

    topics: list[str] = Field(
        default_factory=list, description="topic filters to subscribe to (default: one per template)"
    )
    templates: list[str] = Field(
        default_factory=list,
        description="topic layouts, 'template' or 'template=format', first match wins (default: built-ins)",
    )
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = Field(
        None, description="stable id of the persistent session (default iotpipe-<host>)"
    )
    shared_group: str | None = Field(
        None, description="split the stream with other workers: $share/<group>/..."
    )
    protocol: Literal["3.1.1", "5"] = "5"
    inflight: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="unacked messages we let the broker send (default 10000; MQTT 5: our Receive Maximum)",
    )
    session_expiry: int = Field(7 * 86_400, ge=0, description="seconds the broker keeps our session (MQTT 5)")
    keepalive: int = Field(30, ge=5)
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class StorageSettings(BaseModel):
    """`[storage]`: the packed tier (compaction) and the continuous Parquet lake."""

    hot_days: int = Field(
        2, ge=1, description="readings stay in the hot table this many days, then are packed per series-day"
    )
    compact_every: float = Field(600.0, gt=0, description="seconds between two compaction runs")
    compact_step_readings: int = Field(
        50_000, ge=1, description="readings packed per transaction (at least one series-day)"
    )
    compact_seconds: float = Field(120.0, gt=0, description="a compaction run stops after this long")
    lake_dir: Path | None = Field(
        None, description="write each closed UTC day as Parquet here (off if unset)"
    )
    lake_close_seconds: float = Field(
        3600.0, ge=0, description="a day is closed (written to the lake) this long after it ended"
    )
    lake_every: float = Field(300.0, gt=0, description="seconds between two lake runs")
    columnar_import: bool = Field(
        True, description="import V1 JSON and line protocol files through the columnar fast path"
    )
    import_packed: bool = Field(
        True, description="imported readings older than the hot window go straight into the packed tier"
    )
    import_workers: int = Field(
        0, ge=0, description="decoding processes for large imports (0: one per core but one, at most 4)"
    )


class RetentionSettings(BaseModel):
    """`[retention]`: how many days each tier keeps (unset: forever), purged in small chunks."""

    raw_days: int | None = Field(None, ge=1, description="raw readings, hot and packed")
    hourly_days: int | None = Field(None, ge=1, description="1h rollups")
    daily_days: int | None = Field(None, ge=1, description="1d rollups")
    weekly_days: int | None = Field(None, ge=1, description="1w rollups")
    every: float = Field(3600.0, gt=0, description="seconds between two retention runs")
    chunk_rows: int = Field(10_000, ge=1, description="rows deleted per transaction")


_NATS_NAME = r"^[A-Za-z0-9_-]+$"  # stream and consumer names: one subject token


class NatsSettings(BaseModel):
    """`[nats]`: how `iotpipe run` and `iotpipe ingest nats` consume the JetStream stream at `nats_url`."""

    stream: str = Field(
        "IOTPIPE", pattern=_NATS_NAME, description="the JetStream stream (created if missing)"
    )
    subjects: list[str] = Field(
        default_factory=list,
        description="subjects the stream takes, as devices publish them (default: one per template)",
    )
    templates: list[str] = Field(
        default_factory=list,
        description="subject layouts, written like MQTT topic templates (default: the MQTT built-ins)",
    )
    durable: str = Field(
        "iotpipe", pattern=_NATS_NAME, description="durable consumer name shared by the workers"
    )
    partitions: int = Field(
        0,
        ge=0,
        le=1024,
        description="device partitions, one consumer each (0: one consumer shared by every worker); "
        "nats-server must map subjects to them",
    )
    partition_prefix: str = Field(
        "part", pattern=_NATS_NAME, description="first token of partitioned subjects"
    )
    ack_wait: float = Field(
        30.0, ge=1, description="seconds before an unacknowledged message goes to another worker"
    )
    max_deliver: int = Field(5, ge=2, description="deliveries of a message before it is dead-lettered")
    max_ack_pending: int = Field(
        10_000,
        ge=2,
        description="messages a worker holds unacknowledged; it commits when half await their ack",
    )
    fetch_batch: int = Field(500, ge=1, description="messages asked for per pull")
    max_bytes: int = Field(
        -1, ge=-1, description="the stream's size limit (-1: none); when full, publishes are refused"
    )
    max_age: float = Field(
        0.0, ge=0, description="seconds the stream keeps a message not yet consumed (0: no limit)"
    )
    rebalance_every: float = Field(
        2.0, gt=0, description="seconds between two checks of the partition shares"
    )
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None


class ApiSettings(BaseModel):
    """`[api]`: the HTTP API that `iotpipe serve` and `iotpipe run` serve."""

    enabled: bool = Field(True, description="`iotpipe run` serves the API too")
    host: str = Field(limits.API_HOST, description="address to listen on (loopback unless told otherwise)")
    port: int = Field(limits.API_PORT, ge=0, le=65535, description="0 picks a free port")
    insecure: bool = Field(False, description="serve a non-loopback address without API keys")
    max_body_bytes: int = Field(limits.API_MAX_BODY_BYTES, ge=1024, description="largest request body")
    max_decompressed_bytes: int = Field(
        limits.API_MAX_DECOMPRESSED_BYTES, ge=1024, description="largest gzip request body once inflated"
    )
    rate_limit: float = Field(
        limits.API_RATE_LIMIT, gt=0, description="requests per second per key (or client)"
    )
    rate_burst: int = Field(limits.API_RATE_BURST, ge=1, description="requests a key may send back to back")
    max_points: int = Field(limits.API_MAX_POINTS, ge=10, description="points per history response at most")
    page_size: int = Field(limits.API_PAGE_SIZE, ge=1, description="default entries per page of a list")
    max_page_size: int = Field(
        limits.API_MAX_PAGE_SIZE, ge=1, description="largest page a client may ask for"
    )
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (none)")
    threads: int = Field(
        limits.API_THREADS, ge=1, le=256, description="threads answering read requests at once"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="processes answering HTTP on the one port (one Python process uses about one "
        "core; see docs/api.md#more-cores)",
    )
    live_max_pending: int = Field(
        limits.LIVE_MAX_PENDING,
        ge=10,
        description="live feed: updates waiting for a client before it is closed",
    )
    live_max_lag_seconds: float = Field(
        limits.LIVE_MAX_LAG_SECONDS, gt=0, description="live feed: seconds updates may wait for a client"
    )
    live_coalesce_seconds: float = Field(
        limits.LIVE_COALESCE_SECONDS,
        ge=0,
        le=10,
        description="live feed: at most one update frame per this long",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IOTPIPE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )
    # Which TOML file to read; set by load_settings() before construction.
    toml_path: ClassVar[Path | None] = None

    database_url: str = DEFAULT_DATABASE_URL
    mqtt_url: str | None = None
    nats_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    pipeline: PipelineSettings = PipelineSettings()  # type: ignore[call-arg]
    simulator: SimulatorSettings = SimulatorSettings()  # type: ignore[call-arg]
    thingspeak: ThingSpeakSettings = ThingSpeakSettings()  # type: ignore[call-arg]
    analytics: AnalyticsSettings = AnalyticsSettings()  # type: ignore[call-arg]
    anomalies: AnomalySettings = AnomalySettings()  # type: ignore[call-arg]
    mqtt: MqttSettings = MqttSettings()  # type: ignore[call-arg]
    storage: StorageSettings = StorageSettings()  # type: ignore[call-arg]
    retention: RetentionSettings = RetentionSettings()  # type: ignore[call-arg]
    api: ApiSettings = ApiSettings()  # type: ignore[call-arg]
    nats: NatsSettings = NatsSettings()  # type: ignore[call-arg]
    # Last: from here on in this class body, `limits` is this field, not the module.
    limits: LimitsSettings = LimitsSettings()  # type: ignore[call-arg]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Settings from every layer; flags that are None (not given) do not override."""
    path = Path(config_file or os.environ.get("IOTPIPE_CONFIG") or DEFAULT_CONFIG_FILE)
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a directory; give the path of a TOML file (e.g. {path / DEFAULT_CONFIG_FILE})"
        )
    if config_file is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_file():
        check_toml(path)
    Settings.toml_path = path if path.is_file() else None
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"invalid configuration ({problems}); check flags, IOTPIPE_* variables and {path}"
        ) from None


def check_toml(path: Path) -> None:
    """Refuse a config file that is not TOML, or that names a setting there is not: a
    misspelt key would otherwise leave its default in force without a word."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix that line") from None
    unknown = unknown_keys(Settings, data, "")
    if unknown:
        raise ConfigError(
            f"{path} names settings there are not: {', '.join(unknown)}; fix or remove them"
            " (the settings are listed in README.md and docs/)"
        )


def unknown_keys(model: type[BaseModel], table: Any, where: str) -> list[str]:
    """The keys of a TOML table, and of the tables within, that `model` has no field for."""
    if not isinstance(table, dict):
        return []  # not a table: the settings' own validation says what is wrong
    found: list[str] = []
    for key, value in table.items():
        field = model.model_fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            found.append(f"{where}{key}" + (f" (did you mean {close[0]}?)" if close else ""))
        else:
            found += _unknown_within(field.annotation, value, f"{where}{key}")
    return found


def _unknown_within(annotation: Any, value: Any, where: str) -> list[str]:
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return unknown_keys(annotation, value, f"{where}.")
    if origin in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return _unknown_within(models[0], value, where) if len(models) == 1 else []
    if origin is list and isinstance(value, list):
        (item,) = get_args(annotation)
        return [k for i, v in enumerate(value) for k in _unknown_within(item, v, f"{where}[{i}]")]
    if origin is dict and isinstance(value, dict):
        item = get_args(annotation)[1]
        return [k for name, v in value.items() for k in _unknown_within(item, v, f"{where}.{name}")]
    return []
