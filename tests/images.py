"""Test originals made on the spot with libvips."""

from __future__ import annotations

import struct
import zlib

import pyvips


def image(width: int, height: int, bands: int = 3) -> pyvips.Image:
    # A gradient with some structure, so encoders do real work.
    xy = pyvips.Image.xyz(width, height)
    base = (xy[0] * 255 / max(width, 1) + xy[1] * 255 / max(height, 1)) / 2
    planes = [base, (xy[0] * 7 % 256), (xy[1] * 3 % 256)][:bands] if bands >= 3 else [base] * bands
    out = planes[0].bandjoin(planes[1:]) if len(planes) > 1 else planes[0]
    return out.cast("uchar").copy(interpretation="srgb" if bands >= 3 else "b-w")


def jpeg(width: int = 640, height: int = 480, **options: object) -> bytes:
    return bytes(image(width, height).jpegsave_buffer(Q=85, **options))


def png(width: int = 320, height: int = 200) -> bytes:
    return bytes(image(width, height).pngsave_buffer())


def tiff(width: int = 320, height: int = 200, bands: int = 3) -> bytes:
    return bytes(image(width, height, bands).tiffsave_buffer())


def webp(width: int = 320, height: int = 200) -> bytes:
    return bytes(image(width, height).webpsave_buffer())


def pdf(pages: int = 1, width_pt: int = 612, height_pt: int = 792) -> bytes:
    """A PDF of `pages` JPEG pages (via img2pdf, as a scanner workflow would make)."""
    import img2pdf

    page = jpeg(width_pt * 2, height_pt * 2)
    layout = img2pdf.get_fixed_dpi_layout_fun((144, 144))
    return bytes(img2pdf.convert([page] * pages, layout_fun=layout))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose header claims another size: a decompression bomb's header."""
    data = bytearray(jpeg(16, 16))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # SOF: precision(1) height(2) width(2)
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def tiff16(width: int, height: int) -> bytes:
    return bytes(
        (image(width, height).cast("ushort") * 256).cast("ushort").copy(interpretation="rgb16").tiffsave_buffer()
    )


def png_rgba(width: int, height: int) -> bytes:
    img = image(width, height)
    return bytes(img.bandjoin(255).copy(interpretation="srgb").pngsave_buffer())


# --- Hostile originals (tests/unit/test_hostile.py): small files that claim or decode to a lot ---------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of the filtered scanlines (a filter byte per row) the IDAT stream inflates to."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    total = 0
    for x0, y0, dx, dy in passes if interlaced else [(0, 0, 1, 1)]:
        pass_width, pass_height = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_width > 0 and pass_height > 0:
            total += pass_height * (1 + -(-pass_width * bits_per_pixel // 8))
    return total


def _zlib_zeros(count: int, block: int = 1 << 20) -> bytes:
    """A zlib stream of `count` zero bytes, built from one compressed block repeated (fast for gigabytes).

    Each block is an independent raw deflate ending in a full flush (no back-references across blocks),
    so the blocks concatenate; Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    """

    def deflate(n: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)

    full, rest = divmod(count, block)
    body = deflate(block) * full + (deflate(rest) if rest else b"")
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    return b"\x78\xda" + body + final + struct.pack(">I", (count % 65521) << 16 | 1)


def png_zeros(
    width: int, height: int, *, bit_depth: int = 8, color_type: int = 6, interlaced: bool = False, data: bool = True
) -> bytes:
    """A PNG of all-zero samples (transparent black for RGBA, black for grey), crafted byte by byte.

    14000 x 14000 16-bit RGBA is 1.57 GB decoded and about 1.5 MB here. `data=False` gives a valid header
    and a few bytes of pixel data: a decompression bomb's header (any size up to 2**31 - 1).
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 1 if interlaced else 0)
    if data:
        stream = _zlib_zeros(_png_raw_size(width, height, channels * bit_depth, interlaced))
    else:
        stream = zlib.compress(bytes(64))
    idat = b"".join(_png_chunk(b"IDAT", stream[i : i + (1 << 20)]) for i in range(0, len(stream), 1 << 20))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")


def tiff16_master(path: str, width: int = 12000, height: int = 8400) -> None:
    """A large 16-bit RGB master (12000 x 8400 = 100 MP, 605 MB decoded), deflate with a predictor: ~4 MB.

    Each row is the same two opposite ramps and a flat band, so it compresses well yet JPEG has edges to encode.
    """
    row = (pyvips.Image.xyz(width, 1)[0] * 65535 / width).cast("ushort")
    image = row.bandjoin([row.flip("horizontal"), (row * 0 + 30000).cast("ushort")])
    image = image.embed(0, 0, width, height, extend="copy").copy(interpretation="rgb16")
    image.tiffsave(path, compression="deflate", predictor="horizontal")


def tiff_pages(path: str, pages: int, width: int = 120, height: int = 80) -> None:
    """A multi-page TIFF: `pages` copies of one small page (only page 0 is ever rendered)."""
    page = image(width, height)
    page.replicate(1, pages).copy().tiffsave(path, compression="deflate", page_height=height)
