"""Topic layouts: which device (and metric, and decoder) a topic or a NATS subject names.

One set of templates serves MQTT topics (`telemetry/pump-7`) and NATS subjects
(`telemetry.pump-7`): a template is written with `/` between its levels, and a router
splits what it routes on its own separator. Sources name their messages' devices here;
nothing here knows a broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from iotpipe import formats
from iotpipe.errors import ConfigError
from iotpipe.formats.unmatched import UNMATCHED_TOPIC

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
_NEEDS_DEVICE = frozenset({"tasmota", "zigbee2mqtt", "value"})


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
        """The MQTT topic filter of the layout: `tele/+/SENSOR`."""
        return "/".join("+" if level.startswith("{") else level for level in self.levels)

    @property
    def subject(self) -> str:
        """The NATS subject filter of the layout: `tele.*.SENSOR`."""
        return ".".join("*" if level.startswith("{") else level for level in self.levels)

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
    """Routes each topic to the first template it matches; remembers the answer per topic.

    `separator` is what splits levels: `/` for MQTT topics, `.` for NATS subjects. On
    NATS a level may hold `//`, which is how nats-server's MQTT listener writes a `.` of
    an MQTT topic level (`telemetry/dev.1` arrives as `telemetry.dev//1`): it is read
    back as `.`, so a device has the same id whichever way it came in.
    """

    _CACHE_LIMIT = 100_000

    def __init__(self, templates: list[TopicTemplate], separator: str = "/") -> None:
        self.templates = templates
        self.separator = separator
        self._unmatched = Route(UNMATCHED_TOPIC, None, tuple(str(t) for t in templates))
        self._cache: dict[str, Route] = {}

    def route(self, topic: str) -> Route:
        found = self._cache.get(topic)
        if found is None:
            levels = topic.split(self.separator)
            if self.separator == "." and "//" in topic:
                levels = [level.replace("\x00", ".") for level in topic.replace("//", "\x00").split(".")]
            found = next((r for t in self.templates if (r := t.match(levels)) is not None), self._unmatched)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()  # an unbounded topic space must not grow memory
            self._cache[topic] = found
        return found
