"""MQTT configuration without a broker: URLs, topic templates, routing and subscription filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotpipe.app.wiring import mqtt_options as options_from_settings
from iotpipe.brokers import parse_broker_url
from iotpipe.config import MqttSettings, Settings
from iotpipe.errors import ConfigError
from iotpipe.sources.mqtt import Route, TopicRouter, TopicTemplate, subscription_filters

DEFAULTS = ["telemetry/{device_id}", "tele/{device_id}/SENSOR", "zigbee2mqtt/{device_id}"]


def templates(*specs: str) -> list[TopicTemplate]:
    return [TopicTemplate.parse(spec) for spec in specs]


def test_broker_url_gives_host_port_tls_and_credentials() -> None:
    broker = parse_broker_url("mqtts://ingest:p%40ss@broker.example:8884")
    assert (broker.host, broker.port, broker.tls, broker.username, broker.password) == (
        "broker.example",
        8884,
        True,
        "ingest",
        "p@ss",
    )
    assert str(broker) == "mqtts://ingest@broker.example:8884"  # never the password
    assert "p@ss" not in repr(broker)
    assert parse_broker_url("mqtt://localhost").port == 1883
    assert parse_broker_url("mqtts://localhost").port == 8883


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker:1883", "MQTT URL must start with mqtt:// or mqtts://, got http scheme"),
        ("mqtt://:1883", "MQTT URL names no host; use mqtt://host:1883"),
        ("mqtt://user:secret@host:99999", "MQTT URL has an invalid port"),
    ],
)
def test_bad_broker_urls_say_what_to_fix_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_broker_url(url)
    assert str(caught.value).startswith(message)
    assert "secret" not in str(caught.value)


def test_builtin_layouts_route_to_their_decoders_first_match_wins() -> None:
    router = TopicRouter(templates(*DEFAULTS, "{device_id}/{metric}"))
    assert router.route("telemetry/pump-7") == Route(None, "pump-7", None)
    assert router.route("tele/TH16/SENSOR") == Route("tasmota", "TH16", None)
    assert router.route("zigbee2mqtt/0x00158d00036c1821") == Route("zigbee2mqtt", "0x00158d00036c1821", None)
    assert router.route("shelly1/temperature") == Route("value", "shelly1", ("temperature",))


def test_a_topic_matching_no_template_routes_to_the_dead_letter_decoder_with_the_templates() -> None:
    router = TopicRouter(templates(*DEFAULTS))
    route = router.route("telemetry/site-1/pump-7")
    assert route.format == "unmatched-topic"
    assert route.header == tuple(DEFAULTS)
    assert route.device_id is None


def test_custom_templates_name_their_format_and_ignore_other_placeholders() -> None:
    [template] = templates("sites/{site}/{device_id}/state=v2")
    assert template.subscription == "sites/+/+/state"
    assert template.match(["sites", "north", "pump-7", "state"]) == Route("v2", "pump-7", None)
    assert template.match(["sites", "north", "pump-7", "other"]) is None
    assert str(template) == "sites/{site}/{device_id}/state=v2"
    assert TopicTemplate.parse("meters/{device_id}/{metric}").format == "value"
    assert TopicTemplate.parse("all-devices").format is None  # device id from the payload


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "topic template '' is empty"),
        ("telemetry/+", "topic template 'telemetry/+': level '+' must be plain text or one {placeholder}"),
        ("a/{device_id}x", "level '{device_id}x' must be plain text or one {placeholder}"),
        ("a/{device_id}=nope", "unknown format 'nope'; known: "),
        ("a/{site}=tasmota", "the tasmota format needs {device_id} in the topic"),
        ("a/{device_id}=value", "bare values need {metric} in the topic"),
    ],
)
def test_bad_templates_say_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TopicTemplate.parse(spec)
    assert message in str(caught.value)


def test_subscriptions_default_to_the_templates_without_overlaps() -> None:
    assert subscription_filters([], templates(*DEFAULTS), None) == [
        "telemetry/+",
        "tele/+/SENSOR",
        "zigbee2mqtt/+",
    ]
    # {device_id}/{metric} is +/+, which covers telemetry/+ and zigbee2mqtt/+: a message on
    # two overlapping subscriptions would arrive twice.
    assert subscription_filters([], templates(*DEFAULTS, "{device_id}/{metric}"), None) == [
        "tele/+/SENSOR",
        "+/+",
    ]
    assert subscription_filters(["telemetry/#", "telemetry/+", "telemetry/#"], [], None) == ["telemetry/#"]


def test_a_shared_group_prefixes_every_filter() -> None:
    assert subscription_filters(["telemetry/#"], [], "ingest") == ["$share/ingest/telemetry/#"]
    with pytest.raises(ConfigError, match="shared group 'a/b' must be a non-empty name without / \\+ #"):
        subscription_filters(["t/#"], [], "a/b")


@pytest.mark.parametrize("topic", ["telemetry/#/x", "tele/a+", "$share/g/t/#", ""])
def test_bad_topic_filters_are_refused(topic: str) -> None:
    with pytest.raises(ConfigError, match="topic filter"):
        subscription_filters([topic], [], None)


def test_options_resolve_settings_with_the_same_window_on_both_protocols() -> None:
    v5 = options_from_settings(Settings(mqtt_url="mqtt://broker", mqtt=MqttSettings(client_id="w1")))  # type: ignore[call-arg]
    assert (v5.protocol, v5.inflight, v5.max_unacked, v5.qos) == ("5", 10_000, 5_000, 1)
    assert [str(t) for t in v5.templates] == DEFAULTS
    v311 = options_from_settings(
        Settings(mqtt_url="mqtt://broker", mqtt=MqttSettings(protocol="3.1.1", inflight=20))
    )  # type: ignore[call-arg]
    assert (v311.inflight, v311.max_unacked) == (20, 10)
    assert v311.client_id.startswith("iotpipe-")


def test_credentials_come_from_the_url_or_the_settings() -> None:
    settings = Settings(  # type: ignore[call-arg]
        mqtt_url="mqtt://broker", mqtt=MqttSettings(username="ingest", password="s3cret")
    )
    broker = options_from_settings(settings).broker
    assert (broker.username, broker.password) == ("ingest", "s3cret")
    assert "s3cret" not in repr(settings.mqtt)


def test_tls_files_need_an_mqtts_url_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="ca-file needs an mqtts:// URL"):
        options_from_settings(Settings(mqtt_url="mqtt://b", mqtt=MqttSettings(ca_file=ca)))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"cert-file .*missing\.pem does not exist"):
        options_from_settings(
            Settings(mqtt_url="mqtts://b", mqtt=MqttSettings(cert_file=tmp_path / "missing.pem", key_file=ca))  # type: ignore[call-arg]
        )
    with pytest.raises(ConfigError, match="needs both --cert-file and --key-file"):
        options_from_settings(Settings(mqtt_url="mqtts://b", mqtt=MqttSettings(cert_file=ca)))  # type: ignore[call-arg]


def test_no_broker_configured_says_how_to_configure_one() -> None:
    with pytest.raises(ConfigError, match="pass --url mqtt://host:1883 or set IOTPIPE_MQTT_URL"):
        options_from_settings(Settings())  # type: ignore[call-arg]


def test_overlapping_filters_are_kept_but_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="iotpipe.sources.mqtt"):
        assert subscription_filters(["+/+", "telemetry/#", "tele/+/SENSOR"], [], None) == [
            "+/+",
            "telemetry/#",
            "tele/+/SENSOR",
        ]
    assert "topic filters +/+ and telemetry/# overlap" in caplog.text
    assert "tele/+/SENSOR" not in caplog.text  # neither +/+ (two levels) nor telemetry/# matches it
