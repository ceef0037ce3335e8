"""Fuzz every decoder, and validation after it, with atheris: nothing may raise but DecodeError.

    make fuzz                                              # 60 s
    .venv/bin/python tests/fuzz/fuzz_decoders.py -max_total_time=3600 CORPUS_DIR   # longer

Any libFuzzer flag works (-max_total_time, -runs, -jobs). With no corpus directory the
run starts from built-in seeds in a temporary one; give a directory to keep what the
fuzzer learns between runs. A finding is printed with its traceback and saved as
crash-<hash> in the working directory: replay it with `fuzz_decoders.py crash-<hash>`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repo root

with atheris.instrument_imports(include=["iotpipe"]):
    from iotpipe import formats
    from iotpipe.errors import DecodeError
    from iotpipe.limits import DEFAULT_LIMITS
    from iotpipe.model import RawMessage
    from iotpipe.text import printable
    from iotpipe.validation import decode_valid

from tests.formats.support import assert_well_formed

RECEIVED_AT = 1_763_805_600_000_000
NAMES = [None, *formats.format_names()]  # None: sniffed, as for a source that does not know
HEADERS = [
    None,
    ("timestamp", "device_id", "temperature", "humidity"),
    ("time", "device", "metric", "value", "unit"),
    ("Temperature", "", "Humidity"),
]
DEVICES = [None, "pump-7", "", " ", "d" * 201]
SEEDS = [
    b'{"device_id": "pump-7", "timestamp": "2026-11-22T10:00:00Z", "temperature": 21.5, "humidity": 40}',
    b'{"schema_version": 2, "device": {"id": "p", "type": "pump", "location": {"lat": 42.7, "lon": -86.1}},'
    b' "ts": 1763805600123, "readings": {"t": 21.5, "p": {"value": 3.2, "unit": "bar"}}}',
    b'[{"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.276020076001e+09, "n": "voltage", "u": "V", "v": 120.1},'
    b' {"n": "current", "t": -5, "v": 1.2}]',
    b"weather,device_id=ws-1,location=us\\ midwest temperature=82,humidity=40i,ok=t 1465839830100400200",
    b'cpu,host=h,cpu=cpu0 usage_idle=99.5,msg="a \\"quoted\\" string"',
    b"2026-11-22T10:00:00Z,pump-7,21.5,40",
    b'{"created_at": "2016-02-09T20:13:30Z", "entry_id": 1, "field1": "199", "field2": null}',
    b'{"channel": {"id": 9, "field1": "Light"}, "feeds": [{"created_at": "2016-02-09T20:13:30Z", "field1": "1"}]}',
    b'{"Time": "2018-03-02T18:25:03", "AM2301": {"Temperature": 22.6, "Humidity": 32.4}, "TempUnit": "C"}',
    b'{"temperature": 22.75, "battery": "100.00", "state": "ON", "last_seen": 1763805600000}',
    b'{"device_id": "d", "t": NaN, "u": Infinity, "v": 1e400, "w": -1}',
    b"21.5",
]


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    name = provider.PickValueInList(NAMES)
    header = provider.PickValueInList(HEADERS)
    device_id = provider.PickValueInList(DEVICES)
    payload = provider.ConsumeBytes(provider.remaining_bytes())
    raw = RawMessage(payload, "fuzz", "fuzz", RECEIVED_AT, name, device_id, header)
    try:
        messages = formats.decode(raw)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert_well_formed(messages)
    try:
        decode_valid(raw, formats.decode, DEFAULT_LIMITS)
    except DecodeError as exc:
        assert printable(exc.reason) == exc.reason  # reasons are printed to terminals as they are


def main() -> None:
    argv = list(sys.argv)
    if not any(Path(arg).is_dir() or Path(arg).is_file() for arg in argv[1:]):
        corpus = tempfile.mkdtemp(prefix="iotpipe-fuzz-")
        for index, seed in enumerate(SEEDS):
            # The first two bytes pick the decoder and header; every seed is tried sniffed.
            Path(corpus, f"seed-{index}").write_bytes(b"\x00\x00\x01" + seed)
        argv.append(corpus)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
