"""FileSource.blocks(): the bulk import's way of reading line-based files, in large blocks.
It must give exactly the messages iterating the source gives, in the same order, whatever
the lines and wherever the reads cut them."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.errors import TruncatedFile
from iotpipe.limits import Limits
from iotpipe.model import RawMessage
from iotpipe.sources import files
from iotpipe.sources.files import FileSource, LineBlock

LIMIT = 24  # max_payload_bytes: small, so lines over it are common


def _view(message: RawMessage) -> tuple[object, ...]:
    return (message.payload, message.origin, message.format, message.device_id, message.header)


def _from_blocks(source: FileSource, max_lines: int) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    for item in source.blocks(max_lines):
        if isinstance(item, LineBlock):
            assert 0 < len(item) <= max_lines
            found += [_view(m) for m in item]
        else:
            found.append(_view(item))
    return found


def _compare(path: Path, max_lines: int, **source: object) -> list[tuple[object, ...]]:
    expected = [_view(m) for m in FileSource([path], limits=Limits(max_payload_bytes=LIMIT), **source)]  # type: ignore[arg-type]
    assert (
        _from_blocks(FileSource([path], limits=Limits(max_payload_bytes=LIMIT), **source), max_lines)
        == expected
    )  # type: ignore[arg-type]
    return expected


line = st.one_of(
    st.binary(max_size=3 * LIMIT).map(lambda b: b.replace(b"\n", b"x")),
    st.sampled_from([b"", b"   ", b"# a comment", b'{"a": 1}', b"\r", b"x" * LIMIT, b"y" * (LIMIT + 1)]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(line, max_size=40),
    ending=st.sampled_from([b"\n", b"\r\n"]),
    last_newline=st.booleans(),
    read_bytes=st.integers(1, 64),
    max_lines=st.integers(1, 7),
    block_bytes=st.integers(1, 200),
)
def test_blocks_give_the_messages_iteration_gives_wherever_the_reads_cut(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[bytes],
    ending: bytes,
    last_newline: bool,
    read_bytes: int,
    max_lines: int,
    block_bytes: int,
) -> None:
    monkeypatch.setattr(files, "READ_BYTES", read_bytes)
    monkeypatch.setattr(files, "BLOCK_BYTES", block_bytes)
    path = tmp_path / "data.jsonl"
    # The first line is plain text: random bytes could start like gzip or a byte-order mark.
    lines = [b"# generated", *lines]
    path.write_bytes(ending.join(lines) + (ending if last_newline else b""))
    _compare(path, max_lines)


def test_a_block_of_long_lines_ends_at_block_bytes_not_at_its_line_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded whatever the lines' lengths: max_lines lines of up to
    max_payload_bytes each would otherwise be one block (20,000 x 256 KB = 5 GB)."""
    monkeypatch.setattr(files, "READ_BYTES", 1000)
    monkeypatch.setattr(files, "BLOCK_BYTES", 10_000)
    path = tmp_path / "long.lp"
    lines = [b"m,device_id=d v=%d %s" % (i, b"x" * 900) for i in range(200)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    blocks = list(FileSource([path]).blocks(max_lines=1_000_000))
    sizes = [sum(map(len, block.bodies)) for block in blocks if isinstance(block, LineBlock)]
    assert len(sizes) == len(blocks) > 1
    # At most BLOCK_BYTES, then one read's lines, and the line the read before left unfinished.
    assert max(sizes) <= 10_000 + 1000 + max(map(len, lines)) and min(sizes[:-1]) >= 10_000 - 1000
    assert [body for block in blocks for body in block.bodies] == lines  # type: ignore[union-attr]


def test_a_line_over_the_limit_is_refused_with_its_size_and_the_lines_around_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "READ_BYTES", 8)  # the long line spans many reads
    path = tmp_path / "data.lp"
    path.write_bytes(b"m,device_id=a v=1\n" + b"z" * 1000 + b"\n\n# note\nm,device_id=b v=2\n")
    found = _compare(path, 100)
    assert [(f[0], f[1].rsplit(":", 1)[1]) for f in found if f[2] != "refused"] == [  # type: ignore[union-attr]
        (b"m,device_id=a v=1", "1"),
        (b"m,device_id=b v=2", "5"),
    ]
    refused = [f for f in found if f[2] == "refused"]
    assert len(refused) == 1 and refused[0][1].endswith(":2")  # type: ignore[union-attr]
    assert "line is 1000 bytes, over the limit of 24" in str(refused[0][4][0])  # type: ignore[index]
    assert refused[0][0] == b"z" * LIMIT  # the dead letter keeps the first bytes only


def test_blocks_of_a_gzip_file_and_of_a_utf16_file_are_its_lines(tmp_path: Path) -> None:
    text = "m,device_id=a v=1\nm,device_id=é v=2\n"
    zipped = tmp_path / "data.lp.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    wide = tmp_path / "wide.lp"
    wide.write_bytes("\ufeff".encode("utf-16-le") + text.encode("utf-16-le"))
    for path in (zipped, wide):
        found = _compare(path, 10)
        assert [f[0] for f in found] == [b"m,device_id=a v=1", "m,device_id=é v=2".encode()]


def test_blocks_of_a_truncated_gzip_file_give_the_lines_before_the_damage_then_say_so(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(b"m,device_id=d v=%d\n" % i for i in range(20_000)))
    path = tmp_path / "cut.lp.gz"
    path.write_bytes(whole[: len(whole) // 2])
    got: list[bytes] = []
    with pytest.raises(TruncatedFile, match="truncated or damaged after line") as caught:
        for item in FileSource([path]).blocks(1000):
            assert isinstance(item, LineBlock)
            got += item.bodies
    assert got and got == [b"m,device_id=d v=%d" % i for i in range(len(got))]
    # Every line the message counts was given, the last short block too.
    assert len(got) == int(str(caught.value).split("after line ")[1].split(" ")[0])
    assert len(got) % 1000
