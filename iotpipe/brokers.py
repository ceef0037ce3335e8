"""Where an MQTT broker is: `mqtt://[user:pass@]host[:port]` URLs, parsed once for every
client of ours (the MQTT source, the simulator's publisher); errors never echo a password."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from iotpipe.errors import ConfigError, IotpipeError

SCHEMES = {"mqtt": 1883, "mqtts": 8883}


class BrokerError(IotpipeError):
    """The broker could not be reached, refused us, or refused a subscription."""


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
    """`mqtt://[user:pass@]host[:port]` or `mqtts://...`."""
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
