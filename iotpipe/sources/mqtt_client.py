"""The one module that leans on paho-mqtt's private internals, for speed.

paho decodes every PUBLISH into objects that cost more CPU than iotpipe's whole
decode-and-store of a message, reads each packet with several system calls, and sends
each PUBACK with two more. `FastClient` overrides three private methods and reads four
private attributes to avoid that; `queue_pubacks` sends a batch's PUBACKs as one packet
write. Everything private used here is listed in PRIVATE_INTERNALS, which
`check_internals()` verifies against the installed paho; a test calls it, so a paho
release that changes them fails loudly instead of slowly or subtly. paho-mqtt is pinned
to the 2.x line in pyproject.toml.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

_PUBACK = struct.Struct("!BBH")  # fixed header PUBACK, remaining length 2, packet id

# name -> the parameters it must take (methods) or None (attributes set by __init__).
PRIVATE_INTERNALS: dict[str, tuple[str, ...] | None] = {
    "_handle_publish": ("self",),
    "_create_socket": ("self",),
    "_packet_queue": ("self", "command", "packet", "mid", "qos", "info"),
    "_in_packet": None,
    "_sock": None,
    "_manual_ack": None,
    "_protocol": None,
}


def check_internals() -> list[str]:
    """What of PRIVATE_INTERNALS the installed paho lacks or changed (empty: all good)."""
    problems: list[str] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    for name, parameters in PRIVATE_INTERNALS.items():
        if parameters is None:
            if name not in vars(client):
                problems.append(f"paho.Client() has no attribute {name}")
            continue
        method = getattr(paho.Client, name, None)
        if method is None:
            problems.append(f"paho.Client has no method {name}")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found[: len(parameters)] != parameters:
            problems.append(f"paho.Client.{name} takes {found}, expected {parameters}")
    if "command" not in client._in_packet or "packet" not in client._in_packet:
        problems.append("paho.Client._in_packet lacks 'command' or 'packet'")
    if not hasattr(paho.MQTTMessage(), "_topic"):
        problems.append("paho.MQTTMessage has no _topic")
    return problems


def message_topic(message: paho.MQTTMessage) -> bytes:
    """The topic as the bytes received (paho's `topic` property decodes and may raise)."""
    return bytes(message._topic)


def queue_pubacks(client: paho.Client, mids: list[int]) -> None:
    """Send the PUBACKs of `mids` as one write.

    paho's own `ack()` queues a packet and wakes its network thread through a socket
    pair; per message, that is two system calls on each side. One packet holding every
    PUBACK of the batch costs one of each, and is as thread-safe: paho's outgoing queue
    is a deque and its wake-up is the same.
    """
    client._packet_queue(paho.PUBACK, b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids), 0, 0)


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


class FastClient(paho.Client):
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
