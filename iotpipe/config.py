"""One settings object: command-line flags > environment (IOTPIPE_*) > iotpipe.toml > defaults.

Nested sections map to TOML tables and to environment variables with a double
underscore: `[pipeline] batch_size = 1000` is `IOTPIPE_PIPELINE__BATCH_SIZE=1000`.
A `.env` file in the working directory is read as environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError
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
