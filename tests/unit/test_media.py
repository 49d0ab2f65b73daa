from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InvalidArgument
from core.media import resolve_media_type, sniff
from tests import images


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (images.jpeg(8, 8), "image/jpeg"),
        (images.png(8, 8), "image/png"),
        (images.tiff(8, 8), "image/tiff"),
        (images.webp(8, 8), "image/webp"),
        (b"GIF89a....", "image/gif"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, expected: str | None) -> None:
    assert sniff(data[:64]) == expected


def test_declaration_may_use_aliases_and_parameters() -> None:
    assert resolve_media_type("IMAGE/JPG; q=1", images.jpeg(8, 8)[:64]) == "image/jpeg"
    assert resolve_media_type("", images.png(8, 8)[:64]) == "image/png"
    assert resolve_media_type("text/plain", b"hello") == "text/plain"


@pytest.mark.parametrize(
    ("declared", "head"),
    [("image/png", b"\xff\xd8\xff\xe0"), ("", b"hello"), ("image/jpeg", b""), ("nonsense", b"hello")],
)
def test_contradictions_are_invalid(declared: str, head: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_media_type(declared, head)
    assert info.value.violations[0][0] == "content_type"


def test_the_server_reads_headers_only_of_types_it_recognized(tmp_path: Path) -> None:
    """An SVG (declared: its bytes are not sniffed) is never handed to libvips in the server process."""
    from core.media import pixel_size

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    svg = tmp_path / "page.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude" width="640" height="480">'
        '<text><xi:include href="secret.txt" parse="text"/></text></svg>'
    )
    assert pixel_size(svg, "image/svg+xml") == (0, 0)
    png = tmp_path / "page.png"
    png.write_bytes(images.png(64, 32))
    assert pixel_size(png, "image/png") == (64, 32)
