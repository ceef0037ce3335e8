"""Configuration precedence: flags > environment > iotpipe.toml > defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotpipe.config import DEFAULT_DATABASE_URL, load_settings
from iotpipe.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "IOTPIPE_DATABASE_URL",
        "IOTPIPE_CONFIG",
        "IOTPIPE_LOG_LEVEL",
        "IOTPIPE_PIPELINE__BATCH_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_without_any_configuration() -> None:
    settings = load_settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.pipeline.batch_size == 50_000


def test_toml_then_environment_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "iotpipe.toml").write_text(
        'database_url = "sqlite:///from-toml.db"\nlog_level = "WARNING"\n[pipeline]\nbatch_size = 10\nbatch_delay = 3\n'
    )
    settings = load_settings()
    assert (settings.database_url, settings.log_level, settings.pipeline.batch_size) == (
        "sqlite:///from-toml.db",
        "WARNING",
        10,
    )

    monkeypatch.setenv("IOTPIPE_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("IOTPIPE_PIPELINE__BATCH_SIZE", "20")
    settings = load_settings()
    assert settings.database_url == "sqlite:///from-env.db"
    assert settings.pipeline.batch_size == 20
    assert settings.pipeline.batch_delay == 3  # the rest of the TOML table still applies

    settings = load_settings(database_url="sqlite:///from-flag.db", log_level=None)
    assert settings.database_url == "sqlite:///from-flag.db"
    assert settings.log_level == "WARNING"  # a flag not given does not override


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IOTPIPE_DATABASE_URL=sqlite:///from-dotenv.db\n")
    assert load_settings().database_url == "sqlite:///from-dotenv.db"


def test_explicit_config_file_must_exist() -> None:
    with pytest.raises(ConfigError, match=re.escape("config file missing.toml does not exist")):
        load_settings("missing.toml")


def test_a_config_file_that_is_a_directory_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"config file {tmp_path} is a directory; give the path of a TOML file")
    ):
        load_settings(tmp_path)


def test_invalid_value_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "iotpipe.toml").write_text("[pipeline]\nbatch_size = 0\n")
    with pytest.raises(
        ConfigError, match=r"pipeline\.batch_size: Input should be greater than or equal to 1"
    ):
        load_settings()


def test_a_misspelt_setting_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "iotpipe.toml").write_text(
        "[pipeline]\nbatchsize = 5\n"
        '[[analytics.alert_rules]]\nname = "hot"\nmetric = "t"\nmax = 1\ncolour = "red"\n'
        "[analytics.bounds.temperature]\nmim = 3\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    assert "pipeline.batchsize (did you mean batch_size?)" in message
    assert "analytics.alert_rules[0].colour" in message
    assert "analytics.bounds.temperature.mim (did you mean min?)" in message


def test_a_config_file_that_is_not_toml_says_where(tmp_path: Path) -> None:
    (tmp_path / "iotpipe.toml").write_text('log_level = "INFO"\n[pipeline\n')
    with pytest.raises(ConfigError, match=r"iotpipe\.toml is not valid TOML: .*line 2"):
        load_settings()
    (tmp_path / "iotpipe.toml").write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError, match=r"iotpipe\.toml is not UTF-8 text"):
        load_settings()
