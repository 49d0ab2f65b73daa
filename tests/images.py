"""Test originals made on the spot with libvips."""

from __future__ import annotations

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
