"""A streaming ZIP of JPEG members: STORED (JPEGs do not compress), Zip64 past 4 GiB.

zipstream-ng writes each member as its bytes arrive, with a data descriptor for the
CRC, so neither the archive nor a whole member needs to be held: memory is one chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import zipstream


def zip_stream(members: Iterable[tuple[str, Iterable[bytes]]], about: str, comment: str) -> Iterator[bytes]:
    """Chunks of a ZIP holding `members` (name, chunks) in order, then about.txt."""
    archive = zipstream.ZipStream(compress_type=zipstream.ZIP_STORED)
    archive.comment = comment.encode("utf-8")[:65535]
    members = iter(members)

    def feed() -> Iterator[bytes]:
        # Members are added lazily: only one member's source is open at a time.
        for name, chunks in members:
            archive.add(chunks, name)
            yield from archive.file()
        archive.add(about.encode("utf-8"), "about.txt")
        yield from archive.finalize()

    return feed()
