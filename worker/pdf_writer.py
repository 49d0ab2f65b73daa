"""A streaming PDF writer for JPEG pages.

Each page's JPEG bytes are embedded as they are (DCTDecode, no re-encoding) and
written out before the next page is read, so memory holds one page and a list of
byte offsets: it does not grow with the page count (img2pdf keeps every page until
the end). Adds document info, one bookmark and a page label per page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class NotAJpeg(ValueError):
    pass


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    adobe: bool  # an Adobe APP14 marker: CMYK data is stored inverted


# Start-of-frame markers (every SOFn but DHT 0xC4, JPG 0xC8 and DAC 0xCC).
SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_info(data: bytes) -> JpegInfo:
    """Dimensions and components from the SOF marker."""
    if not data.startswith(b"\xff\xd8"):
        raise NotAJpeg("not a JPEG (no SOI marker)")
    i, adobe = 2, False
    while i < len(data):
        if data[i] != 0xFF:
            raise NotAJpeg("corrupt JPEG marker stream")
        # Any number of 0xFF fill bytes may precede a marker (ITU-T T.81 B.1.1.2).
        while i + 1 < len(data) and data[i + 1] == 0xFF:
            i += 1
        if i + 1 >= len(data):
            break
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0x00, 0xD9, 0xDA):  # a stuffed byte, EOI or a scan before any frame header
            raise NotAJpeg(f"corrupt JPEG: marker 0x{marker:02X} before the frame header")
        if i + 4 > len(data):
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            raise NotAJpeg("corrupt JPEG segment length")
        if i + 2 + length > len(data):
            break  # the segment runs past the end
        segment = data[i + 4 : i + 2 + length]
        if marker == 0xEE and segment.startswith(b"Adobe"):
            adobe = True
        if marker in SOF_MARKERS:
            if len(segment) < 6:
                raise NotAJpeg("corrupt JPEG frame header")
            # The page embeds the stream as 8-bit DCTDecode: baseline, extended or progressive Huffman only.
            if marker not in (0xC0, 0xC1, 0xC2) or segment[0] != 8:
                raise NotAJpeg(
                    f"unsupported JPEG coding (SOF{marker - 0xC0}, {segment[0]}-bit): a PDF page needs 8-bit DCT"
                )
            height = int.from_bytes(segment[1:3], "big")
            width = int.from_bytes(segment[3:5], "big")
            components = segment[5]
            if not width or not height or components not in (1, 3, 4):
                raise NotAJpeg(f"unsupported JPEG frame ({width}x{height}, {components} components)")
            return JpegInfo(width, height, components, adobe)
        i += 2 + length
    raise NotAJpeg("no frame header found (truncated JPEG?)")


@dataclass(frozen=True)
class Page:
    jpeg: bytes
    bookmark: str


def _text(value: str) -> bytes:
    """A PDF text string: UTF-16BE with BOM, so any title survives."""
    return b"<FEFF" + value.encode("utf-16-be").hex().upper().encode() + b">"


def _date(when: dt.datetime) -> bytes:
    return b"(D:" + when.strftime("%Y%m%d%H%M%SZ").encode() + b")"


class PdfStream:
    """Emit a PDF as chunks: `for chunk in PdfStream(info, dpi).write(pages)`."""

    def __init__(self, info: dict[str, str], dpi: float, now: dt.datetime | None = None) -> None:
        self.info = info
        self.dpi = dpi
        self.now = now or dt.datetime.now(dt.UTC)
        self._offsets: dict[int, int] = {}
        self._pos = 0
        self._next_id = 3  # 1: catalog, 2: page tree, both written last

    def _obj(self, num: int, body: bytes, stream: bytes | None = None) -> Iterator[bytes]:
        self._offsets[num] = self._pos
        head = b"%d 0 obj\n" % num + body
        if stream is None:
            chunks = [head + b"\nendobj\n"]
        else:
            chunks = [head + b"\nstream\n", stream, b"\nendstream\nendobj\n"]
        for chunk in chunks:
            self._pos += len(chunk)
            yield chunk

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def write(self, pages: Iterable[Page]) -> Iterator[bytes]:
        header = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
        self._pos = len(header)
        yield header
        page_ids: list[int] = []
        bookmarks: list[str] = []
        for page in pages:
            meta = jpeg_info(page.jpeg)
            colour = {1: b"/DeviceGray", 3: b"/DeviceRGB", 4: b"/DeviceCMYK"}[meta.components]
            decode = b" /Decode [1 0 1 0 1 0 1 0]" if meta.components == 4 and meta.adobe else b""
            image, content, page_id = self._new_id(), self._new_id(), self._new_id()
            yield from self._obj(
                image,
                b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace %s /BitsPerComponent 8"
                b" /Filter /DCTDecode%s /Length %d >>" % (meta.width, meta.height, colour, decode, len(page.jpeg)),
                page.jpeg,
            )
            w, h = meta.width * 72 / self.dpi, meta.height * 72 / self.dpi
            drawing = b"q %.4f 0 0 %.4f 0 0 cm /Im0 Do Q" % (w, h)
            yield from self._obj(content, b"<< /Length %d >>" % len(drawing), drawing)
            yield from self._obj(
                page_id,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.4f %.4f] /Resources << /XObject << /Im0 %d 0 R >> >>"
                b" /Contents %d 0 R >>" % (w, h, image, content),
            )
            page_ids.append(page_id)
            bookmarks.append(page.bookmark)
        if not page_ids:
            raise ValueError("a PDF needs at least one page")
        yield from self._obj(
            2, b"<< /Type /Pages /Count %d /Kids [%s] >>" % (len(page_ids), b" ".join(b"%d 0 R" % p for p in page_ids))
        )
        outlines = self._new_id()
        items = [self._new_id() for _ in page_ids]
        for i, (item, page_id, title) in enumerate(zip(items, page_ids, bookmarks, strict=True)):
            links = b"".join(
                [
                    b" /Prev %d 0 R" % items[i - 1] if i else b"",
                    b" /Next %d 0 R" % items[i + 1] if i + 1 < len(items) else b"",
                ]
            )
            yield from self._obj(
                item, b"<< /Title %s /Parent %d 0 R%s /Dest [%d 0 R /Fit] >>" % (_text(title), outlines, links, page_id)
            )
        yield from self._obj(
            outlines, b"<< /Type /Outlines /First %d 0 R /Last %d 0 R /Count %d >>" % (items[0], items[-1], len(items))
        )
        info = self._new_id()
        fields = b"".join(b" /%s %s" % (k.encode(), _text(v)) for k, v in self.info.items() if v)
        yield from self._obj(info, b"<<%s /CreationDate %s >>" % (fields, _date(self.now)))
        yield from self._obj(
            1,
            b"<< /Type /Catalog /Pages 2 0 R /Outlines %d 0 R /PageMode /UseOutlines"
            b" /PageLabels << /Nums [0 << /S /D >>] >> >>" % outlines,
        )
        xref = self._pos
        count = self._next_id
        lines = [b"xref\n0 %d\n" % count, b"0000000000 65535 f \n"]
        lines += [b"%010d 00000 n \n" % self._offsets[n] for n in range(1, count)]
        lines.append(
            b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (count, info, xref)
        )
        yield b"".join(lines)
