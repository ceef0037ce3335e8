"""Publishing to an MQTT broker: the simulator's way out to a broker (and the shape of a
future MQTT output sink)."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from iotpipe.brokers import Broker, BrokerError


class Publisher:
    """A paho client that publishes, rides out broker restarts, and on close waits until the
    broker has taken every message (at QoS 1: acknowledged it)."""

    _AHEAD = 10_000  # messages published but not yet taken, before publish() waits
    _PATIENCE = 60.0  # seconds without progress before giving up

    def __init__(self, broker: Broker, qos: int) -> None:
        self.qos = qos
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv311)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)  # paho keeps what waits for a reconnect
        self._client.on_publish = self._on_publish
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set()
        self._taken = threading.Condition()
        self._published = 0
        self._acknowledged = 0
        try:
            self._client.connect(broker.host, broker.port)
        except OSError as exc:
            raise BrokerError(f"cannot connect to MQTT broker {broker}: {exc}") from None
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        # Published while disconnected, a message waits in paho and goes out on reconnect.
        self._client.publish(topic, payload, qos=self.qos)
        self._published += 1
        if self._published - self._acknowledged > self._AHEAD:
            self._wait_until(self._published - self._AHEAD // 2)

    def _on_publish(self, *_args: Any) -> None:
        with self._taken:
            self._acknowledged += 1
            self._taken.notify_all()

    def _wait_until(self, count: int) -> None:
        with self._taken:
            while self._acknowledged < count:
                before = self._acknowledged
                self._taken.wait(self._PATIENCE)
                if self._acknowledged == before:
                    raise BrokerError(
                        f"the broker took no message for {self._PATIENCE:g} s; "
                        f"{self._published - self._acknowledged} were not delivered"
                    )

    def close(self) -> None:
        try:
            self._wait_until(self._published)
        finally:
            self._client.disconnect()
            self._client.loop_stop()
