"""The streaming PDF writer: valid (qpdf's checks), and every page renders as img2pdf's page of the same JPEG.

Each JPEG kind is made here with Pillow (libjpeg): baseline 4:2:0, 4:4:4, progressive, greyscale, Adobe CMYK
(APP14, inverted values), restart markers, and 0xFF fill bytes before the header's markers. Each is written
as a one-page PDF by `PdfStream` and by img2pdf at the same dpi, both are rendered by pdfium at the same
scale, and the pixels must be equal.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterator

import img2pdf
import pikepdf
import pypdfium2 as pdfium
import pytest
import pyvips
from PIL import Image, ImageChops, ImageStat

from worker.pdf_writer import JpegInfo, NotAJpeg, Page, PdfStream, jpeg_info

SOI, SOS = 0xD8, 0xDA
NOW = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def source(mode: str, width: int = 97, height: int = 61) -> Image.Image:
    """A picture with structure in every channel (gradients and stripes), odd-sized to exercise partial MCUs."""
    xy = pyvips.Image.xyz(width, height)
    x, y = xy[0], xy[1]
    planes = [x * 255 / (width - 1), y * 255 / (height - 1), (x * 7 + y * 13) % 256, (x * 3 + y * 5) % 256]
    bands = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    img = planes[0].bandjoin(planes[1:bands]) if bands > 1 else planes[0]
    return Image.frombytes(mode, (width, height), img.cast("uchar").write_to_memory())


def encode(mode: str, width: int = 97, height: int = 61, **options: object) -> bytes:
    out = io.BytesIO()
    source(mode, width, height).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """The header's (marker, payload) pairs up to and including SOS, skipping fill bytes (independent of the writer)."""
    found, i = [], 2
    while True:
        assert data[i] == 0xFF, f"no marker at {i}"
        while data[i + 1] == 0xFF:
            i += 1
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        found.append((marker, data[i + 4 : i + 2 + length]))
        if marker == SOS:
            return found
        i += 2 + length


def with_fill_bytes(data: bytes) -> bytes:
    """The JPEG with 0xFF fill bytes before every header marker after SOI (ITU-T T.81 B.1.1.2 allows any number)."""
    out, i, n = bytearray(data[:2]), 2, 1
    while True:
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        out += b"\xff" * n + data[i : i + 2 + length]
        if data[i + 1] == SOS:
            return bytes(out + data[i + 2 + length :])
        i, n = i + 2 + length, n % 3 + 1


def sof(data: bytes) -> tuple[int, bytes]:
    return next((m, s) for m, s in segments(data) if m in (0xC0, 0xC1, 0xC2))


def sampling(data: bytes) -> list[int]:
    """Each component's sampling factors byte (0x22: 2x2, i.e. 4:2:0 luma; 0x11: 1x1)."""
    _, frame = sof(data)
    return [frame[6 + 3 * c + 1] for c in range(frame[5])]


def _baseline() -> bytes:
    data = encode("RGB")
    assert sof(data)[0] == 0xC0 and sampling(data) == [0x22, 0x11, 0x11]
    return data


def _444() -> bytes:
    data = encode("RGB", subsampling=0)
    assert sof(data)[0] == 0xC0 and sampling(data) == [0x11, 0x11, 0x11]
    return data


def _progressive() -> bytes:
    data = encode("RGB", progressive=True)
    assert sof(data)[0] == 0xC2
    return data


def _grey() -> bytes:
    data = encode("L")
    assert sof(data)[1][5] == 1
    return data


def _cmyk_adobe() -> bytes:
    data = encode("CMYK")
    assert sof(data)[1][5] == 4
    assert any(m == 0xEE and s.startswith(b"Adobe") for m, s in segments(data))
    return data


def _restart_markers() -> bytes:
    data = encode("RGB", restart_marker_blocks=2)
    assert any(m == 0xDD for m, _ in segments(data))  # DRI
    scan = data[data.index(b"\xff\xda") :]
    assert re.search(rb"\xff[\xd0-\xd7]", scan)  # RSTn in the entropy-coded data
    return data


def _fill_bytes() -> bytes:
    data = with_fill_bytes(_baseline())
    assert b"\xff\xff\xc0" in data and b"\xff\xff\xff\xdb" in data
    return data


KINDS = {
    "baseline": _baseline,
    "444": _444,
    "progressive": _progressive,
    "grey": _grey,
    "cmyk_adobe": _cmyk_adobe,
    "restart_markers": _restart_markers,
    "fill_bytes": _fill_bytes,
}
EXPECTED_INFO = {
    "baseline": JpegInfo(97, 61, 3, False),
    "444": JpegInfo(97, 61, 3, False),
    "progressive": JpegInfo(97, 61, 3, False),
    "grey": JpegInfo(97, 61, 1, False),
    "cmyk_adobe": JpegInfo(97, 61, 4, True),
    "restart_markers": JpegInfo(97, 61, 3, False),
    "fill_bytes": JpegInfo(97, 61, 3, False),
}
COLOUR = {1: "/DeviceGray", 3: "/DeviceRGB", 4: "/DeviceCMYK"}


def ours(pages: list[Page], dpi: float, info: dict[str, str] | None = None) -> bytes:
    return b"".join(PdfStream(info or {}, dpi, now=NOW).write(pages))


def reference(jpegs: list[bytes], dpi: float) -> bytes:
    return bytes(img2pdf.convert(jpegs, layout_fun=img2pdf.get_fixed_dpi_layout_fun((dpi, dpi))))


def render(pdf: bytes, page: int, scale: float) -> tuple[tuple[float, float], Image.Image]:
    doc = pdfium.PdfDocument(pdf)
    try:
        p = doc[page]
        return p.get_size(), p.render(scale=scale).to_pil().convert("RGB")
    finally:
        doc.close()


def check(pdf: bytes) -> None:
    """qpdf --check finds nothing, and the xref table's offsets are exact (so qpdf did not quietly rebuild it)."""
    with pikepdf.open(io.BytesIO(pdf)) as doc:
        assert doc.check_pdf_syntax() == []
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", pdf).group(1))  # type: ignore[union-attr]
    assert pdf[start:].startswith(b"xref\n0 ")
    count = int(pdf[start:].split(b"\n")[1].split()[1])
    entries = pdf[start:].split(b"\n", 2)[2][: 20 * count]
    assert entries[:20] == b"0000000000 65535 f \n"
    for num in range(1, count):
        entry = entries[20 * num : 20 * num + 20]
        assert entry.endswith(b" 00000 n \n"), entry
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj\n" % num), (num, offset)


def mean(img: Image.Image) -> float:
    return max(ImageStat.Stat(img).mean)


# 144 dpi rendered at scale 2 puts one image pixel on one device pixel (a page 97 px wide is 48.5 pt); 150 dpi
# gives a page of 46.56 pt, a fractional scale. The MediaBox is written with 4 decimals, which is exact for
# both, so the two PDFs draw the same DCT stream through the same matrix and pdfium's output is expected to be
# bit-identical: no tolerance is allowed.
@pytest.mark.parametrize("dpi", [144, 150])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_page_is_valid_and_renders_as_img2pdf(kind: str, dpi: float) -> None:
    jpeg = KINDS[kind]()
    info = jpeg_info(jpeg)
    assert info == EXPECTED_INFO[kind]
    pdf = ours([Page(jpeg, "Page 1")], dpi)
    check(pdf)

    with pikepdf.open(io.BytesIO(pdf)) as doc:
        assert len(doc.pages) == 1
        page = doc.pages[0]
        assert [float(v) for v in page.MediaBox] == pytest.approx([0, 0, 97 * 72 / dpi, 61 * 72 / dpi], abs=1e-4)
        image = page.Resources.XObject.Im0
        assert image.read_raw_bytes() == jpeg  # passed through, not re-encoded
        assert image.Filter == "/DCTDecode"
        assert (int(image.Width), int(image.Height), int(image.BitsPerComponent)) == (97, 61, 8)
        assert image.ColorSpace == COLOUR[info.components]
        if info.components == 4:
            assert list(image.Decode) == [1, 0, 1, 0, 1, 0, 1, 0]  # Adobe CMYK is stored inverted
        else:
            assert "/Decode" not in image

    scale = 2
    size, got = render(pdf, 0, scale)
    want_size, want = render(reference([jpeg], dpi), 0, scale)
    assert size == pytest.approx(want_size, abs=1e-3)
    assert got.size == want.size
    assert ImageChops.difference(got, want).getbbox() is None, ImageChops.difference(got, want).getextrema()

    # Not both wrong alike: at one device pixel per image pixel the page is the decoded JPEG itself.
    if dpi == 144:
        decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
        assert got.size == decoded.size
        if info.components == 4:
            # pdfium's CMYK->RGB is not Pillow's naive one (mean difference ~15); uninverted it is ~80.
            assert mean(ImageChops.difference(got, decoded)) < 40
        else:
            assert ImageChops.difference(got, decoded).getbbox() is None


def test_pages_in_order_with_bookmarks_labels_and_info() -> None:
    jpegs = [encode("RGB", 97, 61), encode("L", 40, 80), encode("CMYK", 64, 64), encode("RGB", 30, 20)]
    titles = ["Page 1 (a1)", "Page 2 (a2)", "Seite 3 — ü", "Page 4 (a4)"]
    dpi = 144
    info = {"Title": "Ünïcödé — title", "Author": "An Author", "Subject": "", "Creator": "Inst."}
    pdf = ours([Page(j, t) for j, t in zip(jpegs, titles, strict=True)], dpi, info)
    check(pdf)
    ref = reference(jpegs, dpi)

    with pikepdf.open(io.BytesIO(pdf)) as doc:
        assert len(doc.pages) == len(jpegs)
        for page, jpeg in zip(doc.pages, jpegs, strict=True):
            assert page.Resources.XObject.Im0.read_raw_bytes() == jpeg
            w, h = jpeg_info(jpeg).width, jpeg_info(jpeg).height
            assert [float(v) for v in page.MediaBox] == pytest.approx([0, 0, w / 2, h / 2], abs=1e-4)
        assert [page.label for page in doc.pages] == ["1", "2", "3", "4"]
        assert doc.Root.PageMode == "/UseOutlines"

        outlines = doc.Root.Outlines
        assert int(outlines.Count) == len(jpegs)
        item, seen = outlines.First, []
        while True:
            assert item.Parent.objgen == outlines.objgen
            assert item.Dest[1] == "/Fit"
            seen.append((str(item.Title), item.Dest[0].objgen))
            if "/Next" not in item:
                break
            assert item.Next.Prev.objgen == item.objgen
            item = item.Next
        assert item.objgen == outlines.Last.objgen
        assert seen == [(t, p.objgen) for t, p in zip(titles, doc.pages, strict=True)]

        assert str(doc.docinfo.Title) == info["Title"]
        assert str(doc.docinfo.Author) == "An Author"
        assert str(doc.docinfo.Creator) == "Inst."
        assert "/Subject" not in doc.docinfo  # empty values are left out
        assert str(doc.docinfo.CreationDate) == "D:20240102030405Z"

    for i in range(len(jpegs)):
        size, got = render(pdf, i, 2)
        want_size, want = render(ref, i, 2)
        assert size == pytest.approx(want_size, abs=1e-3)
        assert ImageChops.difference(got, want).getbbox() is None, i


def test_each_page_is_written_before_the_next_is_read() -> None:
    first, second = encode("RGB", 32, 24), encode("L", 24, 32)
    emitted = bytearray()

    def pages() -> Iterator[Page]:
        yield Page(first, "one")
        assert first in emitted  # page 1's image is out before page 2 is asked for
        assert second not in emitted
        yield Page(second, "two")

    for chunk in PdfStream({}, 72, now=NOW).write(pages()):
        emitted += chunk
    assert emitted.index(first) < emitted.index(second)
    check(bytes(emitted))


def test_no_pages_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one page"):
        ours([], 150)


def test_fill_bytes_do_not_change_what_the_header_says() -> None:
    for plain in (encode("RGB"), encode("CMYK"), encode("L", progressive=True)):
        filled = with_fill_bytes(plain)
        assert filled != plain
        assert jpeg_info(filled) == jpeg_info(plain)
    # Fill bytes right after SOI, before the first marker.
    plain = encode("RGB", 33, 44)
    assert jpeg_info(plain[:2] + b"\xff" * 7 + plain[2:]) == JpegInfo(33, 44, 3, False)


def test_every_truncated_header_is_not_a_jpeg() -> None:
    for data in (encode("RGB"), with_fill_bytes(encode("CMYK"))):
        i = data.index(b"\xff\xc0")
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")  # the end of the frame header
        for cut in range(end):
            with pytest.raises(NotAJpeg):
                jpeg_info(data[:cut])
        assert jpeg_info(data[:end]).width == 97  # nothing past the frame header is needed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "no SOI"),
        (b"\xff\xd8" + b"\x00" * 32, "corrupt JPEG marker stream"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 32, "before the frame header"),  # a scan before any frame
        (b"\xff\xd8\xff\xd9", "before the frame header"),  # EOI
        (b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 32, "segment length"),
        (
            b"\xff\xd8\xff\xc0\x00\x05\x08\x00\x10" + b"\x00" * 32,
            "corrupt JPEG frame header",
        ),  # SOF too short for a size
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x02" + b"\x00" * 32, "2 components"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10\x01" + b"\x00" * 32, "unsupported JPEG frame"),
    ],
    ids=["png", "no-marker", "scan-first", "eoi-first", "short-segment", "short-frame", "2-components", "zero-height"],
)
def test_bad_headers_are_not_a_jpeg(data: bytes, message: str) -> None:
    with pytest.raises(NotAJpeg, match=message):
        jpeg_info(data)


def test_a_bad_page_fails_the_write_with_not_a_jpeg() -> None:
    good = encode("RGB", 16, 16)
    with pytest.raises(NotAJpeg):
        ours([Page(good, "ok"), Page(good[:40], "cut")], 150)


@pytest.mark.parametrize(
    ("sof", "precision"),
    [(0xC3, 8), (0xC9, 8), (0xC5, 8), (0xC1, 12), (0xC0, 12)],
    ids=["lossless", "arithmetic", "hierarchical", "extended-12-bit", "baseline-12-bit"],
)
def test_jpegs_a_pdf_page_cannot_show_are_refused(sof: int, precision: int) -> None:
    """DCTDecode pages are 8-bit Huffman: a frame of any other coding is refused by name, not embedded broken."""
    frame = bytes([precision]) + (16).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    header = b"\xff\xd8" + bytes([0xFF, sof]) + (len(frame) + 2).to_bytes(2, "big") + frame
    with pytest.raises(NotAJpeg, match="unsupported JPEG coding"):
        jpeg_info(header)
    baseline = b"\xff\xd8\xff\xc0" + (len(frame) + 2).to_bytes(2, "big") + bytes([8]) + frame[1:]
    assert jpeg_info(baseline) == JpegInfo(16, 16, 1, False)
