"""The streaming ZIP writer: members round-trip through zipfile, about.txt and the comment are there, Zip64 works.

Zip64 is tested for real, without 4 GiB of disk: a 4 GiB + 8 MiB member of zeros is streamed through the writer
into a sparse file (its zero chunks are skipped with a seek, so the file holds a hole where they go), and the
archive is then read by zipfile. A member of that size makes the member's sizes, the offsets of every later
member and the central directory's offset Zip64 fields. An archive of more than 65,535 members (the other Zip64
trigger, the entry count) is built in memory.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from worker.zip_writer import zip_stream

ZIP32_LIMIT = 0xFFFFFFFF
ZIP64_EOCD = b"PK\x06\x06"
ZIP64_LOCATOR = b"PK\x06\x07"


def build(members: Iterable[tuple[str, Iterable[bytes]]], about: str = "about", comment: str = "comment") -> bytes:
    return b"".join(zip_stream(members, about, comment))


def test_members_round_trip_with_about_and_comment() -> None:
    members = {
        "001-a_w1_1_a1.jpg": [b"\xff\xd8first", b"", b"more bytes" * 1000, b"\xff\xd9"],
        "002-a_w1_2_a2.jpg": [bytes(range(256)) * 300],
        "003-ünïcode_w1_3_a3.jpg": [b"x"],
        "004-empty.jpg": [],
    }
    about = "Institution\nA title — ü\nPages: 4\n"
    data = build(((name, iter(chunks)) for name, chunks in members.items()), about, "the comment: ü")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every CRC checks
        assert archive.namelist() == [*members, "about.txt"]
        for name, chunks in members.items():
            assert archive.read(name) == b"".join(chunks)
        assert archive.read("about.txt").decode("utf-8") == about
        assert archive.comment == "the comment: ü".encode()
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_comment_is_cut_to_the_zip_limit() -> None:
    data = build([("a.jpg", [b"a"])], "about", "c" * 70_000)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.comment == b"c" * 65535
        assert archive.read("a.jpg") == b"a"


def test_members_are_read_one_at_a_time() -> None:
    out = bytearray()

    def members() -> Iterator[tuple[str, Iterator[bytes]]]:
        yield "one.jpg", iter([b"ONE-" * 10])
        assert b"ONE-" * 10 in out  # the first member is written before the second is asked for
        yield "two.jpg", iter([b"TWO-" * 10])
        assert b"TWO-" * 10 in out

    for chunk in zip_stream(members(), "about", "comment"):
        out += chunk
    with zipfile.ZipFile(io.BytesIO(bytes(out))) as archive:
        assert archive.namelist() == ["one.jpg", "two.jpg", "about.txt"]


def _sparse_files_work(directory: Path) -> bool:
    probe = directory / "probe"
    with probe.open("wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"x")
    try:
        return probe.stat().st_blocks * 512 < (1 << 20)
    finally:
        probe.unlink()


def test_zip64_past_4_gib(tmp_path: Path) -> None:
    if not _sparse_files_work(tmp_path):
        pytest.skip("the temporary directory's filesystem has no sparse files (the test would write 4 GiB)")
    zero = bytes(8 << 20)
    chunks = (ZIP32_LIMIT >> 23) + 2  # 513 chunks of 8 MiB: 4 GiB + 8 MiB
    big_size = chunks * len(zero)
    assert big_size > ZIP32_LIMIT

    def big() -> Iterator[bytes]:
        for _ in range(chunks):
            yield zero

    path = tmp_path / "big.zip"
    with path.open("wb") as fh:
        for chunk in zip_stream([("a.jpg", [b"small"]), ("big.bin", big()), ("c.jpg", [b"after" * 100])], "ab", "cm"):
            if len(chunk) == len(zero) and chunk == zero:
                fh.seek(len(chunk), os.SEEK_CUR)  # a hole reads back as zeros
            else:
                fh.write(chunk)
    assert path.stat().st_size > big_size
    assert path.stat().st_blocks * 512 < 10 << 20  # nothing near 4 GiB was written to disk

    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert list(infos) == ["a.jpg", "big.bin", "c.jpg", "about.txt"]
        big_info = infos["big.bin"]
        assert big_info.file_size == big_info.compress_size == big_size
        assert big_info.CRC == _crc_of_zeros(zero, chunks)
        assert infos["c.jpg"].header_offset > ZIP32_LIMIT
        assert infos["about.txt"].header_offset > ZIP32_LIMIT
        # Reading members after the big one needs their Zip64 offsets (and the Zip64 end record) to be right.
        assert archive.read("c.jpg") == b"after" * 100
        assert archive.read("about.txt") == b"ab"
        assert archive.read("a.jpg") == b"small"
        assert archive.comment == b"cm"

    with path.open("rb") as reader:
        reader.seek(-4096, os.SEEK_END)
        tail = reader.read()
    assert ZIP64_EOCD in tail and ZIP64_LOCATOR in tail
    # The classic end record points at the Zip64 one: its central directory offset is saturated.
    eocd = tail[tail.rindex(b"PK\x05\x06") :]
    assert struct.unpack("<I", eocd[16:20])[0] == ZIP32_LIMIT


def _crc_of_zeros(zero: bytes, chunks: int) -> int:
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(zero, crc)
    return crc


def test_zip64_past_65535_members() -> None:
    count = 65_536  # with about.txt, 65,537 entries: more than the classic end record can count
    data = build(((f"{i:05d}.jpg", iter([b"%d" % i])) for i in range(count)), "about", "comment")
    tail = data[-200:]
    assert ZIP64_EOCD in tail and ZIP64_LOCATOR in tail
    eocd = tail[tail.rindex(b"PK\x05\x06") :]
    assert struct.unpack("<HH", eocd[8:12]) == (0xFFFF, 0xFFFF)  # counts saturated: the Zip64 record holds them
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert len(infos) == count + 1
        assert infos[-1].filename == "about.txt"
        for i in (0, 1, 65_534, 65_535):
            assert infos[i].filename == f"{i:05d}.jpg"
            assert archive.read(infos[i]) == b"%d" % i
        assert archive.read("about.txt") == b"about"
