"""The exception hierarchy: one precise type per kind of failure."""


class IotpipeError(Exception):
    """Base of every error iotpipe raises on purpose; its message is meant for users."""


class DecodeError(IotpipeError):
    """A payload could not be turned into readings; the message says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(IotpipeError):
    """What was asked for (a device, a metric, an alert, a key) does not exist."""


class Conflict(IotpipeError):
    """What was asked clashes with what exists (a name taken, a rule the config file owns)."""


class ConfigError(IotpipeError):
    """Configuration is missing or contradictory; the message says what to set."""


class StoreError(IotpipeError):
    """The database could not be reached or is not in the expected shape."""


class SourceError(IotpipeError):
    """A source cannot read its input any further (e.g. a damaged file); what it gave before is kept."""


class TruncatedFile(SourceError):
    """A compressed file ends early or is damaged: the lines before the damage were read."""


class BatchRejected(StoreError):
    """The database refused a batch for what it holds (not for being unreachable): the
    pipeline splits the batch to find the message at fault and dead-letters it."""


class Interrupted(IotpipeError):
    """The user stopped a command (Ctrl-C, SIGTERM) before it finished."""


def first_line(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy wraps it in `orig`), for a
    message that names the cause without SQLAlchemy's background links."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
