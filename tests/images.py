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
