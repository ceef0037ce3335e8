"""MQTT: subscribe to a broker, route each topic through a template to a decoder, ack after commit.

At-least-once, end to end:
- a persistent session (MQTT 5: clean start off + session expiry; 3.1.1: clean session
  off) under a stable client id, so the broker keeps our subscriptions, and the
  messages published while we are away, until we return;
- QoS 1 with paho's manual acks: a message's PUBACK is sent only by `RawMessage.ack`,
  which the pipeline calls after the batch holding the message committed. A crash
  before that leaves the message unacknowledged, and the broker delivers it again;
- an ack goes out only on the connection that delivered the message: after a
  disconnect the broker redelivers what we had not acked (stored again as a duplicate,
  which the store ignores), and a stale packet id can never acknowledge a newer message.

Throughput under the broker's in-flight limit: the broker sends at most `inflight`
unacknowledged messages (MQTT 5: our Receive Maximum; 3.1.1: the broker's
`max_inflight_messages`, 20 on Mosquitto unless raised). The pipeline commits once half
that window awaits its ack, so the broker streams the other half meanwhile; when the
broker's window is smaller than ours, it commits as soon as the stream pauses.

Backpressure: messages are handed to `Pipeline.submit()` on paho's network thread, which
blocks while the pipeline's queue is full; paho then stops reading the socket and the
broker holds the stream.

Speed (see `_Client`): paho reads through a buffer, the common PUBLISH is decoded here
rather than by paho, and a batch's PUBACKs leave as one write.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iotpipe import formats
from iotpipe.config import Settings
from iotpipe.errors import ConfigError, IotpipeError
from iotpipe.formats.unmatched import UNMATCHED_TOPIC
from iotpipe.model import RawMessage
from iotpipe.pipeline import Pipeline

log = logging.getLogger(__name__)

# The layouts iotpipe knows by their template, and the decoder each implies.
BUILTIN_TEMPLATES: dict[str, str | None] = {
    "telemetry/{device_id}": None,  # any JSON or line protocol, sniffed
    "tele/{device_id}/SENSOR": "tasmota",
    "zigbee2mqtt/{device_id}": "zigbee2mqtt",
    "{device_id}/{metric}": "value",
}
# Subscribed when none is configured: the three self-describing layouts. The
# one-metric-per-topic layout matches every two-level topic, so it must be asked for.
DEFAULT_TEMPLATES = ("telemetry/{device_id}", "tele/{device_id}/SENSOR", "zigbee2mqtt/{device_id}")
# Unacked messages we let the broker send: our Receive Maximum on MQTT 5; on 3.1.1 the
# broker decides (Mosquitto: max_inflight_messages, 20 unless raised) and a smaller
# window than ours is met by committing on the pause (IDLE_COMMIT_SECONDS).
DEFAULT_INFLIGHT = 10_000
# Commit early once no message has come for this long while some await their ack: a
# broker whose in-flight limit is below our window has stopped sending until we ack.
IDLE_COMMIT_SECONDS = 0.01
_NEEDS_DEVICE = frozenset({"tasmota", "zigbee2mqtt", "value"})
SCHEMES = {"mqtt": 1883, "mqtts": 8883}
CONNECT_TIMEOUT = 15.0
_QUEUE_FULL_LOG_EVERY = 10.0  # seconds between two "queue full" warnings
_PUBACK = struct.Struct("!BBH")  # fixed header PUBACK, remaining length 2, packet id


class BrokerError(IotpipeError):
    """The broker could not be reached, refused us, or refused a subscription."""


# -- where the broker is -------------------------------------------------------------------
@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The URL without credentials, for logs and messages."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> Broker:
    """`mqtt://[user:pass@]host[:port]` or `mqtts://...`; errors never echo the password."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {parts.scheme or 'no'} scheme")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise ConfigError(
            f"MQTT URL has an invalid port: {parts.hostname}:{parts.netloc.rsplit(':', 1)[-1]}"
        ) from None
    if not parts.hostname:
        raise ConfigError("MQTT URL names no host; use mqtt://host:1883")
    return Broker(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


# -- topic layouts -------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """What the topic tells the decoder: its name, the device id, the metric (as header)."""

    format: str | None
    device_id: str | None
    header: tuple[str, ...] | None


@dataclass(frozen=True)
class TopicTemplate:
    """A topic layout: `tele/{device_id}/SENSOR` names the device in level 2; `=format` the decoder.

    A `{name}` level matches any one level (`{device_id}` and `{metric}` are kept, other
    names ignored); other levels must match exactly.
    """

    text: str
    format: str | None
    levels: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> TopicTemplate:
        text, _, given = spec.partition("=")
        text = text.strip()
        if not text:
            raise ConfigError(f"topic template {spec!r} is empty; write e.g. telemetry/{{device_id}}")
        levels = tuple(text.split("/"))
        for level in levels:
            placeholder = level.startswith("{") and level.endswith("}") and len(level) > 2
            if not placeholder and any(c in level for c in "{}+#"):
                raise ConfigError(
                    f"topic template {text!r}: level {level!r} must be plain text or one {{placeholder}}"
                )
        names = [level[1:-1] for level in levels if level.startswith("{")]
        implied = BUILTIN_TEMPLATES.get(text, "value" if "metric" in names else None)
        fmt = given.strip() or implied
        if fmt is not None and fmt not in formats.format_names():
            raise ConfigError(
                f"topic template {text!r}: unknown format {fmt!r}; known: {', '.join(formats.format_names())}"
            )
        if fmt in _NEEDS_DEVICE and "device_id" not in names:
            raise ConfigError(f"topic template {text!r}: the {fmt} format needs {{device_id}} in the topic")
        if fmt == "value" and "metric" not in names:
            raise ConfigError(f"topic template {text!r}: bare values need {{metric}} in the topic")
        return cls(text, fmt, levels)

    @property
    def subscription(self) -> str:
        return "/".join("+" if level.startswith("{") else level for level in self.levels)

    def match(self, levels: list[str]) -> Route | None:
        if len(levels) != len(self.levels):
            return None
        device_id = metric = None
        for pattern, level in zip(self.levels, levels, strict=True):
            if pattern == "{device_id}":
                device_id = level
            elif pattern == "{metric}":
                metric = level
            elif not pattern.startswith("{") and pattern != level:
                return None
        return Route(self.format, device_id, None if metric is None else (metric,))

    def __str__(self) -> str:
        return (
            self.text
            if self.format == BUILTIN_TEMPLATES.get(self.text, ...)
            else f"{self.text}={self.format}"
        )


class TopicRouter:
    """Routes each topic to the first template it matches; remembers the answer per topic."""

    _CACHE_LIMIT = 100_000

    def __init__(self, templates: list[TopicTemplate]) -> None:
        self.templates = templates
        self._unmatched = Route(UNMATCHED_TOPIC, None, tuple(str(t) for t in templates))
        self._cache: dict[str, Route] = {}

    def route(self, topic: str) -> Route:
        found = self._cache.get(topic)
        if found is None:
            levels = topic.split("/")
            found = next((r for t in self.templates if (r := t.match(levels)) is not None), self._unmatched)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()  # an unbounded topic space must not grow memory
            self._cache[topic] = found
        return found


def check_topic_filter(topic: str) -> str:
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ConfigError(
                f"topic filter {topic!r}: '+' must be a whole level and '#' the whole last level"
            )
    if not topic or topic.startswith("$share/"):
        raise ConfigError(f"topic filter {topic!r}: give a plain filter; use --shared-group for $share")
    return topic


def _covers(general: str, specific: str) -> bool:
    """Whether every topic matching filter `specific` also matches filter `general`."""
    g, s = general.split("/"), specific.split("/")
    for i, level in enumerate(g):
        if level == "#":
            return True
        if i >= len(s) or s[i] == "#" or (level != "+" and (s[i] == "+" or level != s[i])):
            return False
    return len(g) == len(s)


def _overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters."""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None or (p != q and "+" not in (p, q)):
            return False
    return True


def subscription_filters(
    topics: list[str], templates: list[TopicTemplate], shared_group: str | None
) -> list[str]:
    """The filters to subscribe: the topics given (else each template's), without overlaps —
    a message matching two of our subscriptions would be delivered twice."""
    wanted = [check_topic_filter(t) for t in topics] or [t.subscription for t in templates]
    unique = list(dict.fromkeys(wanted))
    kept = [f for f in unique if not any(o != f and _covers(o, f) for o in unique)]
    for i, first in enumerate(kept):
        for second in kept[i + 1 :]:
            if _overlap(first, second):
                log.warning(
                    "topic filters %s and %s overlap: on MQTT 5 the broker delivers a message matching "
                    "both twice (stored once if it carries its time); prefer filters that do not overlap",
                    first,
                    second,
                )
    if shared_group is None:
        return kept
    if not shared_group or any(c in shared_group for c in "/+#"):
        raise ConfigError(f"shared group {shared_group!r} must be a non-empty name without / + #")
    return [f"$share/{shared_group}/{f}" for f in kept]


# -- options -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttOptions:
    broker: Broker
    templates: list[TopicTemplate]
    filters: list[str]
    client_id: str
    qos: int = 1
    protocol: str = "5"
    inflight: int = DEFAULT_INFLIGHT
    session_expiry: int = 7 * 86_400
    keepalive: int = 30
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def max_unacked(self) -> int:
        """Commit once half the window awaits its ack: the other half keeps streaming meanwhile."""
        return max(1, self.inflight // 2)


def options_from_settings(settings: Settings) -> MqttOptions:
    """Resolve `mqtt_url` and `[mqtt]` into options; ConfigError says what to fix."""
    if not settings.mqtt_url:
        raise ConfigError("no MQTT broker configured: pass --url mqtt://host:1883 or set IOTPIPE_MQTT_URL")
    config = settings.mqtt
    broker = parse_broker_url(settings.mqtt_url)
    if broker.username is None and config.username:
        password = config.password.get_secret_value() if config.password else None
        broker = Broker(broker.host, broker.port, broker.tls, config.username, password)
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, name)
        if path is not None and not broker.tls:
            raise ConfigError(f"{name.replace('_', '-')} needs an mqtts:// URL (TLS); got {broker}")
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name.replace('_', '-')} {path} does not exist")
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError("a client certificate needs both --cert-file and --key-file")
    templates = [TopicTemplate.parse(spec) for spec in (config.templates or DEFAULT_TEMPLATES)]
    return MqttOptions(
        broker=broker,
        templates=templates,
        filters=subscription_filters(config.topics, templates, config.shared_group),
        client_id=config.client_id or f"iotpipe-{socket.gethostname()}",
        qos=config.qos,
        protocol=config.protocol,
        inflight=config.inflight or DEFAULT_INFLIGHT,
        session_expiry=config.session_expiry,
        keepalive=config.keepalive,
        ca_file=config.ca_file,
        cert_file=config.cert_file,
        key_file=config.key_file,
    )


# -- the source ----------------------------------------------------------------------------
@dataclass
class MqttStats:
    """What the source did; `queue_full` counts the times the store made us stop reading."""

    messages: int = 0
    unmatched: int = 0
    queue_full: int = 0
    blocked_seconds: float = 0.0
    connects: int = 0
    disconnects: int = 0
    acks_sent: int = 0
    acks_dropped: int = 0  # committed after their connection was lost: the broker redelivers them
    idle_commits: int = 0  # batches committed early because the stream paused with acks owed


class MqttSource:
    """A `Service` for `iotpipe run` and `iotpipe ingest mqtt`: paho client feeding a pipeline."""

    name = "mqtt"
    is_source = True

    def __init__(self, options: MqttOptions, stop_timeout: float = 30.0) -> None:
        self.options = options
        self.stats = MqttStats()
        self._router = TopicRouter(options.templates)
        self._stop_timeout = stop_timeout
        self._pipeline: Pipeline | None = None
        self._client: paho.Client | None = None
        # Guards the connection generation and the count of messages awaiting commit.
        self._acks = threading.Condition()
        self._generation = 0
        self._awaiting_commit = 0
        self._puback_mids: list[int] = []  # committed, PUBACK not yet handed to paho
        self._stopping = False  # set by stop(): take no more messages
        self._abandon = False  # set when stop() gives up waiting: drop what is blocked
        self._ready = threading.Event()
        self._refusal: str | None = None
        self._last_queue_warning = 0.0
        self._last_message = 0.0  # monotonic time of the latest delivery
        self._closed = threading.Event()

    # -- Service ------------------------------------------------------------------------
    def describe(self) -> str:
        o = self.options
        return (
            f"Subscribed to {', '.join(o.filters)} at {o.broker} (MQTT {o.protocol}, QoS {o.qos}, "
            f"client id {o.client_id}, in-flight window {o.inflight})."
        )

    def start(self, pipeline: Pipeline) -> None:
        """Connect, subscribe and start delivering into `pipeline`; BrokerError if that fails."""
        self._pipeline = pipeline
        if self.options.qos:
            # Shared pipelines (iotpipe run) take the smallest window of their sources.
            current = pipeline.config.max_unacked
            pipeline.config.max_unacked = min(current or self.options.max_unacked, self.options.max_unacked)
            # First among the observers: the batch's PUBACKs go out before analytics run.
            pipeline.observers.insert(0, self._send_acks)
        client = self._client = self._new_client()
        o = self.options
        try:
            if o.protocol == "5":
                client.connect(
                    o.broker.host,
                    o.broker.port,
                    keepalive=o.keepalive,
                    clean_start=False,
                    properties=self._connect_properties(),
                )
            else:
                client.connect(o.broker.host, o.broker.port, keepalive=o.keepalive)
        except ssl.SSLError as exc:
            raise BrokerError(
                f"cannot connect to MQTT broker {o.broker}: {exc}; check --ca-file (the CA that signed "
                "the broker's certificate) and the client certificate"
            ) from None
        except OSError as exc:
            raise BrokerError(
                f"cannot connect to MQTT broker {o.broker}: {exc}; check the URL and that the broker runs"
            ) from None
        client.loop_start()
        if o.qos:
            threading.Thread(target=self._commit_when_idle, name="iotpipe-mqtt-idle", daemon=True).start()
        if not self._ready.wait(CONNECT_TIMEOUT) or self._refusal is not None:
            reason = self._refusal or f"no answer within {CONNECT_TIMEOUT:g} s"
            self._closed.set()
            client.loop_stop()
            client.disconnect()
            raise BrokerError(f"MQTT broker {o.broker} {reason}")

    def stop(self) -> None:
        """Take no more messages, wait until those taken are committed and acked, disconnect."""
        self._stopping = True
        self._closed.set()
        if self._pipeline is not None:
            self._pipeline.flush_soon()  # what was taken is committed now, not after the batch delay
        with self._acks:
            if not self._acks.wait_for(lambda: self._awaiting_commit == 0, self._stop_timeout):
                log.warning(
                    "stopping with %d MQTT messages not committed; the broker will deliver them again",
                    self._awaiting_commit,
                )
                self._abandon = True
        if self._client is not None:
            self._send_acks()  # the last batch's, if its observers have not run yet
            self._client.disconnect()
            self._client.loop_stop()

    def _commit_when_idle(self) -> None:
        """Commit the open batch when the stream pauses while messages await their ack.

        The pipeline commits on its own once half our window awaits acks; a broker that
        allows fewer messages in flight than we asked for (an MQTT 3.1.1 broker's own
        limit, a broker capping Receive Maximum) stops before that and would wait for
        the batch delay. A pause of IDLE_COMMIT_SECONDS with acks owed is that stall.
        """
        pipeline = self._pipeline
        assert pipeline is not None
        while not self._closed.wait(IDLE_COMMIT_SECONDS):
            if (
                not self._awaiting_commit
                or pipeline.queue_depth()
                or time.monotonic() - self._last_message < IDLE_COMMIT_SECONDS
            ):
                continue
            # The writer thread commits: a flush from here could overlap its write-behind.
            pipeline.flush_soon()
            self.stats.idle_commits += 1
            # One request per pause: wait until it is committed or more messages come.
            pending = self._awaiting_commit
            while self._awaiting_commit == pending and not self._closed.wait(IDLE_COMMIT_SECONDS):
                pass

    # -- paho ---------------------------------------------------------------------------
    def _new_client(self) -> paho.Client:
        o = self.options
        v5 = o.protocol == "5"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            # The persistent session: the broker keeps subscriptions and queued messages.
            clean_session=None if v5 else False,
            manual_ack=o.qos > 0,
        )
        if o.broker.username is not None:
            client.username_pw_set(o.broker.username, o.broker.password)
        if o.broker.tls:
            client.tls_set(
                ca_certs=str(o.ca_file) if o.ca_file else None,
                certfile=str(o.cert_file) if o.cert_file else None,
                keyfile=str(o.key_file) if o.key_file else None,
            )
        client.reconnect_delay_set(1, 60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.deliver = self._deliver
        return client

    def _connect_properties(self) -> Properties | None:
        if self.options.protocol != "5":
            return None
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.options.session_expiry
        properties.ReceiveMaximum = self.options.inflight
        return properties

    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            if not self._ready.is_set():  # start() reports it
                self._refusal = (
                    f"refused the connection: {reason}; check the username and password "
                    "(URL, or IOTPIPE_MQTT__USERNAME / IOTPIPE_MQTT__PASSWORD) and the client certificate"
                )
                self._ready.set()
            else:
                log.error("MQTT broker %s refused the connection: %s", self.options.broker, reason)
            return
        self.stats.connects += 1
        log.info(
            "connected to MQTT broker %s as %s (session %s)",
            self.options.broker,
            self.options.client_id,
            "resumed" if flags.session_present else "new",
        )
        # Subscribing again restores a lost session's subscriptions; on MQTT 5, retained
        # messages are sent only for subscriptions the session did not have.
        if self.options.protocol == "5":
            options = SubscribeOptions(
                qos=self.options.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe([(f, options) for f in self.options.filters])
        else:
            client.subscribe([(f, self.options.qos) for f in self.options.filters])

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        refused = [f"{f} ({r})" for f, r in zip(self.options.filters, reasons, strict=False) if r.is_failure]
        if refused and not self._ready.is_set():  # start() reports it
            self._refusal = f"refused the subscription to {', '.join(refused)}; check the broker's ACL"
        elif refused:
            log.error(
                "MQTT broker %s refused the subscription to %s", self.options.broker, ", ".join(refused)
            )
        self._ready.set()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        with self._acks:
            # Acks of messages from the lost connection are dropped from now on.
            self._generation += 1
            self.stats.acks_dropped += len(self._puback_mids)
            self._puback_mids.clear()
        self.stats.disconnects += 1
        if self._stopping or self._refusal is not None:
            return
        if reason.value == 0x8E:  # Session taken over
            log.error(
                "another client connected with client id %s and took our session; "
                "give each worker its own --client-id",
                self.options.client_id,
            )
        else:
            log.warning(
                "lost the MQTT broker %s (%s); reconnecting with backoff", self.options.broker, reason
            )

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        """paho's delivery of the PUBLISH packets `_Client` leaves to it (QoS 2, properties)."""
        self._deliver(message._topic, bytes(message.payload), message.qos, message.mid)

    def _deliver(self, topic_bytes: bytes, payload: bytes, qos: int, mid: int) -> None:
        """One message from the broker into the pipeline, on paho's network thread."""
        if self._stopping:
            return  # not acked: the broker delivers it again next session
        received_at = time.time_ns() // 1000
        self._last_message = time.monotonic()
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            topic = repr(topic_bytes)[2:-1]  # MQTT topics are UTF-8; keep the evidence
        route = self._router.route(topic)
        ack: Callable[[], None] | None = None
        if qos:
            with self._acks:
                self._awaiting_commit += 1
                ack = partial(self._ack, mid, qos, self._generation)
        raw = RawMessage(
            payload, "mqtt", topic, received_at, route.format, route.device_id, route.header, ack
        )
        self.stats.messages += 1
        if route.format == UNMATCHED_TOPIC:
            self.stats.unmatched += 1
        self._submit(raw)

    def _submit(self, raw: RawMessage) -> None:
        """Hand the message to the pipeline, blocking paho's network thread while its queue is full."""
        assert self._pipeline is not None
        try:
            self._pipeline.submit(raw, timeout=0)
            return
        except queue.Full:
            pass
        self.stats.queue_full += 1
        now = time.monotonic()
        if now - self._last_queue_warning >= _QUEUE_FULL_LOG_EVERY:
            self._last_queue_warning = now
            log.warning(
                "pipeline queue full (%d messages): the store is slower than the broker; "
                "not reading from the broker until it catches up (full %d times so far)",
                self._pipeline.queue_depth(),
                self.stats.queue_full,
            )
        while True:
            try:
                self._pipeline.submit(raw, timeout=1.0)
                break
            except queue.Full:
                if self._abandon:
                    self._forget(raw)
                    return
        self.stats.blocked_seconds += time.monotonic() - now

    def _forget(self, raw: RawMessage) -> None:
        if raw.ack is not None:
            with self._acks:
                self._awaiting_commit -= 1

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        """Called by the pipeline's writer once the message is committed: queue its PUBACK.

        The PUBACKs of a batch go out together, from `_send_acks`, which the pipeline calls
        right after the batch's acks.
        """
        with self._acks:
            if generation != self._generation:
                self.stats.acks_dropped += 1
            elif qos == 1:
                self._puback_mids.append(mid)
            elif self._client is not None:
                self._client.ack(mid, qos)  # QoS 2: PUBCOMP, rare enough to send one by one
                self.stats.acks_sent += 1
            self._awaiting_commit -= 1
            if not self._awaiting_commit:
                self._acks.notify_all()

    def _send_acks(self, _batch: object = None, _result: object = None) -> None:
        """Send the queued PUBACKs as one write (a pipeline observer, run after each commit).

        paho's own `ack()` queues a packet and wakes its network thread through a socket
        pair; per message, that is two system calls on each side. One packet holding every
        PUBACK of the batch costs one of each, and is as thread-safe: paho's outgoing queue
        is a deque and its wake-up is the same.
        """
        with self._acks:
            mids, self._puback_mids = self._puback_mids, []
            if not mids or self._client is None:
                return
            queue_packet = getattr(self._client, "_packet_queue", None)
            if queue_packet is None:  # a paho without it: one ack() per message
                for mid in mids:
                    self._client.ack(mid, 1)
            else:
                queue_packet(paho.PUBACK, b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids), 0, 0)
            self.stats.acks_sent += len(mids)


class _BufferedSocket:
    """The broker's socket, read 64 KiB at a time on paho's behalf.

    paho reads each packet with one recv() per byte of its header and one for its body,
    so a stream of small messages costs several system calls each. This serves those
    reads from one large recv(), and tells paho (through `pending()`, as an SSL socket
    does) that buffered bytes are waiting, so its select() does not sleep on them.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._sock.recv(65536)
            if len(data) <= size:
                return data
            pos = 0
            self._data = data
        self._pos = pos + size
        return data[pos : pos + size]

    def buffered(self) -> int:
        return len(self._data) - self._pos

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(paho.Client):
    """paho's client, reading through `_BufferedSocket`, handling all it buffered at once,
    and handing the common PUBLISH packet straight to `deliver`."""

    _MAX_PACKETS_PER_READ = 1000  # then let paho send (acks, pings) before reading on
    deliver: Callable[[bytes, bytes, int, int], None] | None = None  # (topic, payload, qos, mid)

    def _handle_publish(self) -> paho.MQTTErrorCode:
        # paho decodes every PUBLISH into an MQTTMessage (which builds a Condition), on
        # MQTT 5 a Properties object (which scans all 27 property names twice), and
        # matches it against per-topic callbacks: together more CPU than iotpipe's whole
        # decode-and-store of the message. The common case, QoS 0 or 1 without
        # properties, is decoded here in a few slices; anything else goes paho's way,
        # which also reports malformed packets.
        deliver = self.deliver
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if deliver is None or qos >= 2 or (qos == 1 and not self._manual_ack):
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        size = len(packet)
        topic_end = 2 + (packet[0] << 8 | packet[1]) if size >= 2 else 0
        pos = topic_end + (2 if qos else 0)
        v5 = self._protocol == paho.MQTTv5
        # Leave to paho: an empty topic (a v5 topic alias, or a v3 error), a short packet,
        # and a v5 packet with properties (its property length is not a single 0 byte).
        if topic_end <= 2 or pos + v5 > size or (v5 and packet[pos] != 0):
            return super()._handle_publish()
        mid = packet[topic_end] << 8 | packet[topic_end + 1] if qos else 0
        deliver(bytes(packet[2:topic_end]), bytes(packet[pos + v5 :]), qos, mid)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        # paho handles one packet per select(), and each select() hands the GIL to the
        # pipeline's writer thread, which keeps it for up to a switch interval (5 ms):
        # reading every packet already buffered makes that once per 64 KiB instead.
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(self._MAX_PACKETS_PER_READ):
            if rc != paho.MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
            if not isinstance(sock, _BufferedSocket) or not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc
