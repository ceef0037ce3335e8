"""One settings object: command-line flags > environment (IOTPIPE_*) > iotpipe.toml > defaults.

Nested sections map to TOML tables and to environment variables with a double
underscore: `[pipeline] batch_size = 1000` is `IOTPIPE_PIPELINE__BATCH_SIZE=1000`.
A `.env` file in the working directory is read as environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from iotpipe.errors import ConfigError
from iotpipe.pipeline import PipelineConfig

DEFAULT_CONFIG_FILE = "iotpipe.toml"
DEFAULT_DATABASE_URL = "sqlite:///./iotpipe.db"


class PipelineSettings(BaseModel):
    batch_size: int = Field(50_000, ge=1, description="readings per transaction")
    batch_delay: float = Field(1.0, gt=0, description="seconds a reading may wait for its batch")
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    queue_size: int = Field(10_000, ge=1, description="messages buffered between sources and the writer")

    def to_config(self) -> PipelineConfig:
        return PipelineConfig(**self.model_dump())


class SimulatorSettings(BaseModel):
    devices: int = Field(5, ge=1)
    interval: float = Field(5.0, gt=0, description="seconds between a device's reports")
    seed: int | None = None


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
    """`[anomalies.streaming]`: the detector that scores every reading as it is stored."""

    enabled: bool = True
    window: int = Field(128, ge=8, description="readings of a series' recent past its baseline is made of")
    refresh: int = Field(
        32, ge=1, description="the baseline is recomputed every this many readings, on average"
    )
    threshold: float = Field(6.0, gt=0, description="score (robust z) from which a reading is abnormal")
    calm: int = Field(5, ge=1, description="normal readings in a row that end an episode")
    stuck_min: int = Field(5, ge=2, description="identical readings in a row that can be a stuck sensor")
    stuck_chance: float = Field(
        1e-5, gt=0, lt=1, description="stuck: a run of identical values chance makes once in 1/this readings"
    )
    max_series: int = Field(100_000, ge=1, description="series whose state is kept in memory (LRU)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IOTPIPE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )
    # Which TOML file to read; set by load_settings() before construction.
    toml_path: ClassVar[Path | None] = None

    database_url: str = DEFAULT_DATABASE_URL
    mqtt_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    pipeline: PipelineSettings = PipelineSettings()  # type: ignore[call-arg]
    simulator: SimulatorSettings = SimulatorSettings()  # type: ignore[call-arg]
    thingspeak: ThingSpeakSettings = ThingSpeakSettings()  # type: ignore[call-arg]

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
    if config_file is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    Settings.toml_path = path if path.is_file() else None
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"invalid configuration ({problems}); check flags, IOTPIPE_* variables and {path}"
        ) from None
