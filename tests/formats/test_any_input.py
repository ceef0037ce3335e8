"""Every registered decoder, fed anything: only DecodeError escapes, and output is well formed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.errors import DecodeError
from iotpipe.formats import decode, decoder_for, format_names

from .support import assert_well_formed, raw_message

DECODERS = format_names()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys the decoders look for, so generated objects reach past the first shape check.
_VOCABULARY = [
    "device_id",
    "timestamp",
    "time",
    "ts",
    "schema_version",
    "device",
    "id",
    "type",
    "name",
    "firmware",
    "location",
    "lat",
    "lon",
    "alt",
    "readings",
    "value",
    "unit",
    "temperature",
    "n",
    "bn",
    "v",
    "vs",
    "vb",
    "vd",
    "s",
    "t",
    "bt",
    "bu",
    "bv",
    "bs",
    "bver",
    "u",
    "x_",
    "channel",
    "feeds",
    "created_at",
    "entry_id",
    "field1",
    "field2",
    "latitude",
    "longitude",
    "elevation",
    "tags",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "1", "2026-11-22T10:00:00Z", "1763805600123", "nan", "inf", "urn:dev:ow:1:", "a/b"]),
)
_keys = st.one_of(st.sampled_from(_VOCABULARY), st.text(max_size=8))
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=6)),
    max_leaves=30,
)
_headers = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.sampled_from(["timestamp", "device_id", "metric", "value", "x", "Light", ""]),
            st.text(max_size=6),
        ),
        max_size=6,
    ).map(tuple),
)
_devices = st.one_of(st.none(), st.sampled_from(["dev-1", "", " ", "d" * 201]), st.text(max_size=10))
_line_pieces = st.sampled_from(
    [
        "m",
        ",",
        "host=h",
        "device_id=d",
        " ",
        "x=1",
        "y=2i",
        "z=3u",
        "w=t",
        's="a b"',
        '"',
        "\\",
        "=",
        "\n",
        "#",
        "1465839830100400200",
        "nan",
        "1e400",
        "\\ ",
        "\\,",
        '\\"',
        "\r\n",
        "\t",
        "é",
    ]
)


def _check(name: str, payload: bytes, header: tuple[str, ...] | None, device_id: str | None) -> None:
    raw = raw_message(payload, format=name, header=header, device_id=device_id)
    try:
        messages = decoder_for(name)(raw)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
    else:
        assert_well_formed(messages)


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(payload=st.binary(max_size=200), header=_headers, device_id=_devices)
def test_arbitrary_bytes_raise_only_decode_errors(
    name: str, payload: bytes, header: tuple[str, ...] | None, device_id: str | None
) -> None:
    _check(name, payload, header, device_id)


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(document=_json, header=_headers, device_id=_devices)
def test_arbitrary_json_raises_only_decode_errors(
    name: str, document: Any, header: tuple[str, ...] | None, device_id: str | None
) -> None:
    _check(name, orjson.dumps(document), header, device_id)


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(
    lines=st.lists(
        st.one_of(st.text(max_size=30), st.lists(_line_pieces, max_size=12).map("".join)), max_size=5
    ),
    header=_headers,
    device_id=_devices,
)
def test_arbitrary_text_lines_raise_only_decode_errors(
    name: str, lines: list[str], header: tuple[str, ...] | None, device_id: str | None
) -> None:
    _check(name, "\n".join(lines).encode("utf-8", "surrogatepass"), header, device_id)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=100), _json.map(orjson.dumps)), device_id=_devices)
def test_sniffing_decode_raises_only_decode_errors(payload: bytes, device_id: str | None) -> None:
    try:
        messages = decode(raw_message(payload, device_id=device_id))
    except DecodeError:
        pass
    else:
        assert_well_formed(messages)
