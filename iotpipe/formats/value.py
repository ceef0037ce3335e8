"""A bare number as the whole payload (MQTT `{device_id}/{metric}`): the topic names device and metric."""

from __future__ import annotations

from iotpipe.errors import DecodeError
from iotpipe.formats import register
from iotpipe.formats.values import check_device_id, check_metric_name, coerce_value, unusable_metric_name
from iotpipe.model import DecodedMessage, InvalidValue, RawMessage

# Switch and relay states that devices publish as words (Tasmota POWER, Zigbee2MQTT
# state, Shelly relays); stored as 1/0 like booleans.
STATE_WORDS = {"ON": 1.0, "OFF": 0.0}


def state_or_number(metric: str, value: object) -> float | InvalidValue | None:
    """A value of a self-describing payload (Tasmota, Zigbee2MQTT) as a reading.

    Numbers, numeric strings, booleans and ON/OFF states are readings; other text is a
    label (a MAC address, an action name) and, like null, not a reading: None.
    """
    if isinstance(value, str):
        state = STATE_WORDS.get(value.strip().upper())
        if state is not None:
            return state
        number = coerce_value(metric, value)
        return number if isinstance(number, float) else None
    return coerce_value(metric, value)


def add_state(message: DecodedMessage, metric: str, time: int, value: object) -> bool:
    """Add one key of a self-describing payload to `message`: a reading, an invalid value
    (also for a key that cannot name a metric), or nothing for labels and nulls.

    True when a reading was added.
    """
    number = state_or_number(metric, value)
    if number is None:
        return False
    bad_name = unusable_metric_name(metric, "key")
    if bad_name is not None:
        message.invalid.append(bad_name)
    elif isinstance(number, InvalidValue):
        message.invalid.append(number)
    else:
        message.readings.append((metric, time, number))
        return True
    return False


# Its metric comes from the topic ({device_id}/{metric}): a file has none to give.
@register("value", files=False)
def decode_value(raw: RawMessage) -> list[DecodedMessage]:
    if not raw.header:
        raise DecodeError(
            "metric missing: a bare value takes its metric from the topic, as in {device_id}/{metric}"
        )
    metric = check_metric_name(raw.header[0], "metric (from the topic)")
    device_id = check_device_id(raw.device_id, "device id (from the topic)")
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not UTF-8 text; expected a bare number such as 21.5") from None
    state = STATE_WORDS.get(text.strip().upper())
    value = coerce_value(metric, text) if state is None else state
    if value is None:
        raise DecodeError("payload is empty; expected a bare number such as 21.5")
    if isinstance(value, InvalidValue):
        return [DecodedMessage(device_id, [], invalid=[value])]
    return [DecodedMessage(device_id, [(metric, raw.received_at, value)])]
