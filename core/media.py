"""What an original is: its media type from magic bytes, its pixel size from the header."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import InvalidArgument, Reason, quote

log = logging.getLogger("derivatives.media")

MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Names clients use for the same thing.
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/tif": "image/tiff",
    "image/x-tiff": "image/tiff",
    "image/x-png": "image/png",
    "image/heif": "image/heic",
    "image/heic-sequence": "image/heic",
    "image/heif-sequence": "image/heic",
    "image/jpx": "image/jp2",
    "application/x-pdf": "application/pdf",
}
# File extensions for download names and object keys.
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/tiff": "tif",
    "image/webp": "webp",
    "image/gif": "gif",
    "application/pdf": "pdf",
    "image/avif": "avif",
    "image/heic": "heic",
}
# Types we recognize from bytes: a declaration of one of them must match the bytes.
SNIFFABLE = {
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/gif",
    "image/webp",
    "image/heic",
    "image/avif",
    "image/jp2",
    "application/pdf",
}


def normalize_media_type(value: str) -> str:
    base = value.split(";", 1)[0].strip().lower()
    return ALIASES.get(base, base)


def sniff(head: bytes) -> str | None:
    """The media type the first bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "image/jp2"
    if head[4:8] == b"ftyp":
        brands = {head[i : i + 4] for i in range(8, min(len(head), 64), 4)}
        if brands & {b"avif", b"avis"}:
            return "image/avif"
        if brands & {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}:
            return "image/heic"
    return None


@dataclass(frozen=True)
class Spooled:
    """An original written to a local temporary file, hashed on the way."""

    path: Path
    size: int
    sha512: str
    head: bytes


@dataclass(frozen=True)
class SizeLimit:
    """The most bytes a stream may carry, and how to say it carried more."""

    max_bytes: int
    field: str
    reason: Reason

    def error(self) -> InvalidArgument:
        return InvalidArgument.one(self.field, f"larger than the limit of {self.max_bytes:,} bytes", self.reason)


class Spooler:
    """Writes chunks to a file while hashing them: one pass, constant memory.

    With a limit, the chunk that passes it raises (nothing more is written, the file is deleted).
    """

    def __init__(self, path: Path, limit: SizeLimit | None = None) -> None:
        self.path = path
        self.limit = limit
        self._fh: BinaryIO = open(path, "wb")
        self._hash = hashlib.sha512()
        self._size = 0
        self._head = b""

    def write(self, chunk: bytes) -> None:
        if self.limit is not None and self._size + len(chunk) > self.limit.max_bytes:
            raise self.limit.error()
        self._size += len(chunk)
        if len(self._head) < 64:
            self._head += chunk[: 64 - len(self._head)]
        self._hash.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> Spooled:
        self._fh.close()
        return Spooled(self.path, self._size, self._hash.hexdigest(), self._head)

    def abort(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def spool_stream(
    stream: BinaryIO | Iterable[bytes], path: Path, limit: SizeLimit | None = None, chunk: int = 1024 * 1024
) -> Spooled:
    spooler = Spooler(path, limit)
    try:
        if isinstance(stream, Iterable) and not hasattr(stream, "read"):
            for part in stream:
                spooler.write(part)
        else:
            while data := stream.read(chunk):
                spooler.write(data)
    except BaseException:
        spooler.abort()
        raise
    return spooler.finish()


async def spool_async(chunks: AsyncIterable[bytes], path: Path, limit: SizeLimit | None = None) -> Spooled:
    spooler = Spooler(path, limit)
    try:
        async for part in chunks:
            if len(part) >= 64 * 1024:  # hashing and writing a big chunk would stall the event loop
                await asyncio.to_thread(spooler.write, part)
            else:
                spooler.write(part)
    except BaseException:
        spooler.abort()
        raise
    return spooler.finish()


# Types whose header this process reads with libvips: recognized from the bytes (so the bytes are of that type and
# libvips picks that loader), and among the loaders the pool allows (worker/imaging.py). Anything else (an SVG, a
# type declared but not recognized) is never handed to libvips here: its XML and includes are not parsed in the
# server, and its derivatives fail in the pool with a reason.
HEADER_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/tiff", "image/webp", "image/gif", "image/heic", "image/avif"}
)


def pixel_size(path: Path, media_type: str) -> tuple[int, int]:
    """(width, height) from the header only, or (0, 0) when it cannot be read (or is not read: HEADER_TYPES)."""
    if media_type != "application/pdf" and media_type not in HEADER_TYPES:
        return (0, 0)
    try:
        if media_type == "application/pdf":
            import pypdfium2

            pdf = pypdfium2.PdfDocument(str(path))
            try:
                if len(pdf) == 0:
                    return (0, 0)
                width, height = pdf[0].get_size()  # points (1/72 inch)
                return (round(width), round(height))
            finally:
                pdf.close()
        import pyvips

        # As displayed: EXIF orientation applied (derivatives are rotated too). No pixels are decoded.
        image = pyvips.Image.new_from_file(str(path), access="sequential").autorot()
        return (int(image.width), int(image.height))
    except Exception as exc:  # any unreadable header: the asset is still stored, derivatives will say why
        log.info("no pixel size for %s (%s): %s", path.name, media_type, str(exc).splitlines()[0][:200])
        return (0, 0)


def resolve_media_type(declared: str, head: bytes) -> str:
    """The asset's media type: the sniffed one, which a declaration (`content_type`) must not contradict."""
    field = "content_type"
    normalized = normalize_media_type(declared) if declared else ""
    if normalized and not MEDIA_TYPE.fullmatch(normalized):
        raise InvalidArgument.one(field, f"{quote(declared)} is not a media type (type/subtype)")
    sniffed = sniff(head)
    if sniffed is not None:
        if normalized and normalized != sniffed:
            raise InvalidArgument.one(
                field, f"declared {normalized} but the bytes are {sniffed}", Reason.CONTENT_TYPE_MISMATCH
            )
        return sniffed
    if not normalized:
        raise InvalidArgument.one(field, "the bytes are of no recognized type; declare the content type")
    if normalized in SNIFFABLE:
        raise InvalidArgument.one(
            field, f"declared {normalized} but the bytes are not {normalized}", Reason.CONTENT_TYPE_MISMATCH
        )
    return normalized
