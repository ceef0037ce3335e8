"""MQTT: subscribe to a broker, route each topic through a template to a decoder, ack after commit.

At-least-once, end to end:
- a persistent session (MQTT 5: clean start off + session expiry; 3.1.1: clean session
  off) under a stable client id, so the broker keeps our subscriptions, and the
  messages published while we are away, until we return;
- QoS 1 with paho's manual acks: a message's PUBACK is sent only by `acknowledge()`,
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

Backpressure: messages are handed to the sink's `submit()` on paho's network thread, which
blocks while the pipeline's queue is full; paho then stops reading the socket and the
broker holds the stream.

Speed (see mqtt_client.py, which holds every use of paho's internals): paho reads
through a buffer, the common PUBLISH is decoded there rather than by paho, and a
batch's PUBACKs leave as one write.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iotpipe.brokers import Broker, BrokerError
from iotpipe.errors import ConfigError
from iotpipe.formats.unmatched import UNMATCHED_TOPIC
from iotpipe.model import RawMessage
from iotpipe.sources.base import MessageSink
from iotpipe.sources.mqtt_client import FastClient, message_topic, queue_pubacks
from iotpipe.sources.topics import (  # noqa: F401 - re-exported: MQTT's own names for the layouts
    BUILTIN_TEMPLATES,
    DEFAULT_TEMPLATES,
    Route,
    TopicRouter,
    TopicTemplate,
)

log = logging.getLogger(__name__)

# Unacked messages we let the broker send: our Receive Maximum on MQTT 5; on 3.1.1 the
# broker decides (Mosquitto: max_inflight_messages, 20 unless raised) and a smaller
# window than ours is met by committing on the pause (IDLE_COMMIT_SECONDS).
DEFAULT_INFLIGHT = 10_000
# Commit early once no message has come for this long while some await their ack: a
# broker whose in-flight limit is below our window has stopped sending until we ack.
IDLE_COMMIT_SECONDS = 0.01
CONNECT_TIMEOUT = 15.0
_QUEUE_FULL_LOG_EVERY = 10.0  # seconds between two "queue full" warnings


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
    """The MQTT source of `iotpipe run` and `iotpipe ingest mqtt`: a paho client feeding a
    sink, and the Acknowledger of what it delivered."""

    name = "mqtt"

    def __init__(self, options: MqttOptions, stop_timeout: float = 30.0) -> None:
        self.options = options
        self.stats = MqttStats()
        self._router = TopicRouter(options.templates)
        self._stop_timeout = stop_timeout
        self._sink: MessageSink | None = None
        self._client: paho.Client | None = None
        # Guards the connection generation and the count of messages awaiting commit.
        self._acks = threading.Condition()
        self._generation = 0
        self._awaiting_commit = 0
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

    @property
    def ack_window(self) -> int | None:
        return self.options.max_unacked if self.options.qos else None

    def finished(self) -> bool:
        return False  # a subscription has no end

    def start(self, sink: MessageSink) -> None:
        """Connect, subscribe and start delivering into `sink`; BrokerError if that fails."""
        self._sink = sink
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
        if self._sink is not None:
            self._sink.flush_soon()  # what was taken is committed now, not after the batch delay
        with self._acks:
            if not self._acks.wait_for(lambda: self._awaiting_commit == 0, self._stop_timeout):
                log.warning(
                    "stopping with %d MQTT messages not committed; the broker will deliver them again",
                    self._awaiting_commit,
                )
                self._abandon = True
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _commit_when_idle(self) -> None:
        """Commit the open batch when the stream pauses while messages await their ack.

        The pipeline commits on its own once half our window awaits acks; a broker that
        allows fewer messages in flight than we asked for (an MQTT 3.1.1 broker's own
        limit, a broker capping Receive Maximum) stops before that and would wait for
        the batch delay. A pause of IDLE_COMMIT_SECONDS with acks owed is that stall.
        """
        sink = self._sink
        assert sink is not None
        while not self._closed.wait(IDLE_COMMIT_SECONDS):
            if (
                not self._awaiting_commit
                or sink.queue_depth()
                or time.monotonic() - self._last_message < IDLE_COMMIT_SECONDS
            ):
                continue
            # The writer thread commits: a flush from here could overlap its write-behind.
            sink.flush_soon()
            self.stats.idle_commits += 1
            # One request per pause: wait until it is committed or more messages come.
            pending = self._awaiting_commit
            while self._awaiting_commit == pending and not self._closed.wait(IDLE_COMMIT_SECONDS):
                pass

    # -- paho ---------------------------------------------------------------------------
    def _new_client(self) -> paho.Client:
        o = self.options
        v5 = o.protocol == "5"
        client = FastClient(
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
        self._deliver(message_topic(message), bytes(message.payload), message.qos, message.mid)

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
        raw = RawMessage(payload, "mqtt", topic, received_at, route.format, route.device_id, route.header)
        if qos:
            with self._acks:
                self._awaiting_commit += 1
                raw.acker, raw.ack_token = self, (mid, qos, self._generation)
        self.stats.messages += 1
        if route.format == UNMATCHED_TOPIC:
            self.stats.unmatched += 1
        self._submit(raw)

    def _submit(self, raw: RawMessage) -> None:
        """Hand the message to the sink, blocking paho's network thread while its queue is full."""
        sink = self._sink
        assert sink is not None
        try:
            sink.submit(raw, timeout=0)
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
                sink.queue_depth(),
                self.stats.queue_full,
            )
        while True:
            try:
                sink.submit(raw, timeout=1.0)
                break
            except queue.Full:
                if self._abandon:
                    self._forget(raw)
                    return
        self.stats.blocked_seconds += time.monotonic() - now

    def _forget(self, raw: RawMessage) -> None:
        if raw.acker is not None:
            with self._acks:
                self._awaiting_commit -= 1

    def acknowledge(self, tokens: list[Any]) -> None:
        """Called by the pipeline once a batch is committed, with the (packet id, QoS,
        connection) of each of our messages in it: their PUBACKs leave as one write.

        An ack goes out only on the connection that delivered the message; after a
        reconnect the broker redelivers the rest, and a stale packet id never
        acknowledges a newer message.
        """
        with self._acks:
            mids: list[int] = []
            for mid, qos, generation in tokens:
                if generation != self._generation:
                    self.stats.acks_dropped += 1
                elif qos == 1:
                    mids.append(mid)
                elif self._client is not None:
                    self._client.ack(mid, qos)  # QoS 2: PUBCOMP, rare enough to send one by one
                    self.stats.acks_sent += 1
            self._awaiting_commit -= len(tokens)
            if mids and self._client is not None:
                queue_pubacks(self._client, mids)
                self.stats.acks_sent += len(mids)
            if not self._awaiting_commit:
                self._acks.notify_all()
