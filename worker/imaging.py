"""Make JPEG derivatives of one original: every size from a single decode.

libvips does the image work; pypdfium2 renders a PDF's first page (the PyPI libvips
has no PDF loader). pyvips is imported inside the functions so that a worker can set
VIPS_CONCURRENCY before libvips starts.

Before any pixel is decoded, the header is checked against `Limits`: pixels, and the
bytes the decoded image takes (width x height x bands x bytes per band). An original
that decodes to more than `Limits.stream_above_bytes` and wants a full-size output is
not held in memory: each full-size output streams from its own sequential decode, and
the smaller sizes come from a second, shrink-on-load decode (docs/limits-measured.md).

Every failure becomes a `Failed` per definition with a one-line reason and its class:
`render_all` never raises. An allocation refused under the pool process's memory ceiling (RLIMIT_AS)
fails that original with `OUT_OF_MEMORY`, and the process goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.definitions import Definition
from core.derivatives import Failed
from core.plan import would_upscale
from core.records import FailureClass

if TYPE_CHECKING:
    import pyvips

log = logging.getLogger("derivatives.imaging")

# Width and a height no image reaches: thumbnail to a width, whatever the aspect ratio.
_ANY_HEIGHT = 10_000_000
_POINTS_PER_INCH = 72
_MAX_REASON = 200
# Bytes a sample of each libvips band format takes once decoded.
_BYTES_PER_BAND = {
    "uchar": 1,
    "char": 1,
    "ushort": 2,
    "short": 2,
    "uint": 4,
    "int": 4,
    "float": 4,
    "complex": 8,
    "double": 8,
    "dpcomplex": 16,
}
# pdfium renders an opaque page as 8-bit RGB.
_PDF_BYTES_PER_PIXEL = 3
# The only libvips loaders a worker uses (configure_vips blocks the others): the documented image
# types. Blocked, for instance: SVG (librsvg resolves xi:include and <image href> against the file's
# own directory), the vips format (an mmapped raw header), CSV and matrix text, raw.
_LOADERS = (
    "VipsForeignLoadJpeg",
    "VipsForeignLoadPng",
    "VipsForeignLoadTiff",
    "VipsForeignLoadWebp",
    "VipsForeignLoadHeif",
    "VipsForeignLoadNsgif",
)
# An original whose decoded size is over this fraction of the process's memory ceiling (256 MiB of the
# default 2 GiB), and that wants a full-size output, is streamed instead of held in memory. Measured
# (docs/limits-measured.md): from there up streaming took less time and 26-59% less peak memory (a
# turned original aside); below, the two are alike, and one decode is kept.
_STREAM_FRACTION = 8
OUT_OF_MEMORY = "needs more memory than the worker's limit"
# How libvips, libjpeg, libspng, libtiff, glib and pdfium say an allocation failed.
_ALLOCATION_FAILED = re.compile(
    r"out of memory|insufficient memory|cannot allocate|unable to allocate|failed to allocate|"
    r"memory allocation|not enough memory|unable to create thread|bad_alloc",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Limits:
    """What an original may cost, checked from its header before any pixel is decoded."""

    max_pixels: int
    # width x height x bands x bytes per band of the decoded original (or of a PDF page's bitmap).
    max_decoded_bytes: int
    # Decoded size above which full-size outputs stream and smaller sizes come from a second decode.
    stream_above_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """DERIVATIVES_MAX_PIXELS and _MAX_DECODED_BYTES; streaming above an eighth of DERIVATIVES_WORKER_MEMORY."""
        ceiling = settings.worker_memory_bytes or Settings.worker_memory_bytes  # no ceiling: as under the default
        return cls(settings.max_pixels, settings.max_decoded_bytes, ceiling // _STREAM_FRACTION)


@dataclass(frozen=True)
class Rendered:
    key: str
    path: Path
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha512: str


def configure_vips() -> None:
    """Call once per worker process: turn the libvips operation cache off.

    Each original is opened once and never again, so the cache only holds memory and
    file descriptors (and could hand back a stale image for a reused temp path).
    """
    import pyvips

    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    # Loaders are picked by sniffing the bytes, not by the declared type: allow only the image types
    # the service documents (an SVG declared as image/svg+xml would otherwise render, includes and all).
    pyvips.operation_block_set("VipsForeignLoad", True)
    for loader in _LOADERS:
        pyvips.operation_block_set(loader, False)


def render_all(
    original: Path,
    content_type: str,
    definitions: list[Definition],
    out_dir: Path,
    limits: Limits,
    render_dpi: float = 150.0,
) -> list[Rendered | Failed]:
    """Make every definition's derivative from ONE decode of the original (two for a streamed one).

    `limits` is checked against the header first. `render_dpi` is the resolution a PDF
    original's page is rasterized at for a full-size derivative (DERIVATIVES_PDF_RENDER_DPI).
    Returns one entry per definition, in order.
    """
    results: dict[int, Rendered | Failed] = {}
    groups: dict[str, list[tuple[int, Definition]]] = {"jpeg": [], "pdf_page_jpeg": []}
    for i, definition in enumerate(definitions):
        if definition.transformer in groups:
            groups[definition.transformer].append((i, definition))
        elif definition.transformer == "none":
            results[i] = Failed(definition.key, "definition makes no derivative", FailureClass.NO_DEFINITION)
        else:
            reason = _short(f"unknown transformer {definition.transformer!r}")
            results[i] = Failed(definition.key, reason, FailureClass.NO_DEFINITION)

    makers: dict[str, Callable[[Path, list[Definition], Path, Limits, float], list[Rendered | Failed]]] = {
        "jpeg": _render_image,
        "pdf_page_jpeg": _render_pdf,
    }
    for transformer, group in groups.items():
        if not group:
            continue
        defs = [d for _, d in group]
        try:
            made = makers[transformer](original, defs, out_dir, limits, render_dpi)
        except MemoryError:  # Python's own allocation, under the process's ceiling
            made = _all_failed(defs, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY)
        except Exception as exc:  # a bug or an unexpected library error: still no raise
            log.exception("%s of %s (%s) failed", transformer, original, content_type)
            reason = f"internal error: {type(exc).__name__}: {exc}".replace(str(original), "original")
            made = _all_failed(defs, reason, FailureClass.INTERNAL)
        for (i, _), result in zip(group, made, strict=True):
            results[i] = result
    return [results[i] for i in range(len(definitions))]


def _render_image(
    original: Path, defs: list[Definition], out_dir: Path, limits: Limits, render_dpi: float
) -> list[Rendered | Failed]:
    import pyvips

    path = str(original)
    # fail_on="error" on every load: by default a truncated JPEG decodes with a grey
    # lower part, and a truncated TIFF (IFD at the front) with black strips, even with
    # fail_on="truncated" for the TIFF; with "error" both raise ("VipsJpeg: premature end
    # of JPEG image", "tiff2vips: Read error at scanline N"). A TIFF cut before its IFD
    # (libvips writes it at the end) is "not a known file format" at the header read.
    try:
        # Header only, no pixels (of page 0: a multi-page original gives page 0's derivatives).
        # autorot is lazy too: it gives the displayed size, the one thumbnail() below produces.
        header = pyvips.Image.new_from_file(path, fail_on="error")
        shown = header.autorot()
        width, height, bands, band_format = shown.width, shown.height, header.bands, header.format
        orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    except pyvips.Error as exc:
        return _all_failed(defs, *_decode_failure(exc, path))
    del header, shown  # no pixels, but open files
    if width * height > limits.max_pixels:
        return _all_failed(
            defs,
            f"original is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}",
            FailureClass.TOO_LARGE,
        )
    sample = _BYTES_PER_BAND.get(band_format, 8)
    decoded = width * height * bands * sample
    if decoded > limits.max_decoded_bytes:
        size, limit = _sizes(decoded, limits.max_decoded_bytes)
        shape = f"{width}x{height}, {bands} bands of {8 * sample} bits"
        return _all_failed(
            defs, f"original decodes to {size} ({shape}), over the limit of {limit}", FailureClass.TOO_LARGE
        )

    # Never upscale (the rule is core.plan's; the plan asked with the stored width, this asks with
    # the decoded one): such a size fails, the others go on.
    plan: list[int | Failed] = [
        Failed(d.key, f"original is {width} px wide, not wider than max_width {d.max_width}", FailureClass.TOO_NARROW)
        if would_upscale(d, width)
        else d.max_width or width
        for d in defs
    ]
    widths = [w for w in plan if isinstance(w, int)]
    if not widths:
        return [f for f in plan if isinstance(f, Failed)]
    if max(widths) >= width and decoded > limits.stream_above_bytes:
        return _render_streamed(path, defs, plan, width, orientation, out_dir)

    # The one decode. Below full size thumbnail() shrinks on load (JPEG DCT scaling,
    # pyramid levels), far cheaper than a full decode. copy_memory() runs the decode
    # once, here, instead of once per size through libvips' lazy pipeline. It reads top
    # to bottom: with access="random" libvips would first decode a PNG, a JPEG or a strip
    # TIFF to a buffer of its own (a temporary file above 100 MB), then copy it: twice the
    # memory. A turned original is turned once, from that copy into another.
    try:
        if max(widths) >= width:
            base = pyvips.Image.new_from_file(path, access="sequential", fail_on="error").copy_memory()
            if orientation not in (1, 2):
                base = base.autorot().copy_memory()
            base = base.autorot()  # a mirror (2) is read in place; otherwise a no-op
        else:
            base = _shrunk(path, max(widths))
    except pyvips.Error as exc:
        return _all_failed(defs, *_decode_failure(exc, path))
    return _derive(base, defs, plan, out_dir)


def _render_streamed(
    path: str, defs: list[Definition], plan: list[int | Failed], width: int, orientation: int, out_dir: Path
) -> list[Rendered | Failed]:
    """A large original, never held decoded: smaller sizes from a shrink-on-load decode, then each
    full-size output from a sequential decode of its own, streamed through the JPEG encoder."""
    import pyvips

    results: list[Rendered | Failed | None] = [step if isinstance(step, Failed) else None for step in plan]
    small = {i: step for i, step in enumerate(plan) if isinstance(step, int) and step < width}
    full = {i: step for i, step in enumerate(plan) if isinstance(step, int) and step >= width}
    if small:
        # First, so that a corrupt original fails every key alike, before the long full-size encodes.
        try:
            base = _shrunk(path, max(small.values()))
        except pyvips.Error as exc:
            return _all_failed(defs, *_decode_failure(exc, path))
        for i, step in small.items():
            results[i] = _derive_one(base, defs[i], step, out_dir)
        del base  # freed before the full-size decode
    # Rows arrive top to bottom: fine for orientation 1 and a mirror (2); turning or flipping the
    # image upside down needs random access (libvips then decodes to a temporary file, not to memory).
    access = "sequential" if orientation in (1, 2) else "random"
    for i, step in full.items():
        try:
            image = pyvips.Image.new_from_file(path, access=access, fail_on="error").autorot()
        except pyvips.Error as exc:
            reason, failure_class = _decode_failure(exc, path)
            results[i] = Failed(defs[i].key, _short(reason), failure_class)
            continue
        results[i] = _derive_one(image, defs[i], step, out_dir)
        del image
    done = [r for r in results if r is not None]
    assert len(done) == len(defs), "every definition is failed, small or full size"
    return done


def _shrunk(path: str, width: int) -> pyvips.Image:
    """The original decoded at `width`, shrinking on load where the format allows, in memory."""
    import pyvips

    return pyvips.Image.thumbnail(path, width, height=_ANY_HEIGHT, size="down", fail_on="error").copy_memory()


def _render_pdf(
    original: Path, defs: list[Definition], out_dir: Path, limits: Limits, render_dpi: float
) -> list[Rendered | Failed]:
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(str(original))
    except pdfium.PdfiumError:
        return _all_failed(defs, _pdf_load_failure(original), FailureClass.UNDECODABLE)
    except OSError as exc:  # pypdfium2 checks the path itself
        return _all_failed(defs, f"original could not be read: {type(exc).__name__}", FailureClass.UNDECODABLE)
    try:
        if len(doc) == 0:  # pdfium refuses to open these (above), but be safe
            return _all_failed(defs, "PDF has no pages", FailureClass.UNDECODABLE)
        page = doc[0]
        try:
            # Points, with the page's /Rotate applied (as render() applies it).
            page_width, page_height = page.get_width(), page.get_height()
            if page_width <= 0 or page_height <= 0:
                return _all_failed(defs, "PDF page has no size", FailureClass.UNDECODABLE)
            # A page is vector: any width renders, none is "too narrow"; full size is render_dpi.
            full_width = math.ceil(page_width * render_dpi / _POINTS_PER_INCH)
            plan: list[int | Failed] = [d.max_width or full_width for d in defs]
            # render() sizes the bitmap with ceil(): aim a hair under the width, or float
            # error adds a row or column (612 pt at 150 dpi would be 1275x1651, not 1650).
            scale = (max(w for w in plan if isinstance(w, int)) - 0.01) / page_width
            width, height = math.ceil(page_width * scale), math.ceil(page_height * scale)
            if width * height > limits.max_pixels:
                reason = (
                    f"PDF page renders at {width}x{height} = {width * height} pixels,"
                    f" over the limit of {limits.max_pixels}"
                )
                return _all_failed(defs, reason, FailureClass.TOO_LARGE)
            decoded = width * height * _PDF_BYTES_PER_PIXEL
            if decoded > limits.max_decoded_bytes:
                size, limit = _sizes(decoded, limits.max_decoded_bytes)
                reason = f"PDF page renders to {size} ({width}x{height}), over the limit of {limit}"
                return _all_failed(defs, reason, FailureClass.TOO_LARGE)
            # Opaque white background by default, so no alpha; rev_byteorder gives RGB
            # rather than pdfium's native BGR (checked: a blue corner reads 00 00 fe).
            bitmap = page.render(scale=scale, rev_byteorder=True)
            try:
                base = _bitmap_to_vips(bitmap)
            finally:
                bitmap.close()
        finally:
            page.close()
    except pdfium.PdfiumError as exc:
        reason = _pdfium_reason(exc)
        if _ALLOCATION_FAILED.search(reason):
            return _all_failed(defs, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY)
        return _all_failed(defs, "PDF page did not render: " + reason, FailureClass.UNDECODABLE)
    finally:
        doc.close()
    return _derive(base, defs, plan, out_dir)


def _pdf_load_failure(original: Path) -> str:
    """Why pdfium could not open a PDF, asked of qpdf (pikepdf).

    pdfium's error code is not reset by a load, and a PDF without pages fails without
    setting one: the message would be "Success" or the previous document's error.
    """
    import pikepdf

    try:
        with pikepdf.open(original) as pdf:
            return "PDF has no pages" if len(pdf.pages) == 0 else "not a readable PDF: pdfium could not open it"
    except pikepdf.PasswordError:
        return "PDF is password-protected"
    except Exception as exc:  # pikepdf.PdfError and friends: "<path>: <what>"
        return "not a readable PDF: " + str(exc).replace(str(original), "").lstrip(": ").split("\n")[0]


def _bitmap_to_vips(bitmap: Any) -> pyvips.Image:
    import pyvips

    width, height, stride, bands = bitmap.width, bitmap.height, bitmap.stride, bitmap.n_channels
    raw = memoryview(bitmap.buffer).cast("B")
    row = width * bands
    # bytes() copies out of pdfium's buffer (freed on close); rows may carry padding.
    if stride == row:
        data = bytes(raw[: row * height])
    else:
        data = b"".join(raw[y * stride : y * stride + row] for y in range(height))
    image = pyvips.Image.new_from_memory(data, width, height, bands, "uchar")
    if bitmap.mode == "RGBX":  # the 4th byte is padding, not alpha
        image = image.extract_band(0, n=3)
    return image.copy(interpretation="b-w" if bands == 1 else "srgb")


def _derive(
    base: pyvips.Image, defs: list[Definition], plan: list[int | Failed], out_dir: Path
) -> list[Rendered | Failed]:
    """Each planned width from the in-memory base; a size that fails does not take the others with it."""
    return [
        step if isinstance(step, Failed) else _derive_one(base, d, step, out_dir)
        for d, step in zip(defs, plan, strict=True)
    ]


def _derive_one(base: pyvips.Image, d: Definition, width: int, out_dir: Path) -> Rendered | Failed:
    import pyvips

    try:
        return _save(base, d, width, out_dir)
    except MemoryError:
        return Failed(d.key, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY)
    except (pyvips.Error, OSError) as exc:
        if isinstance(exc, pyvips.Error) and _out_of_memory(exc):
            return Failed(d.key, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY)
        name = f"{d.key}.jpg"
        detail = _vips_reason(exc, str(out_dir / name), name) if isinstance(exc, pyvips.Error) else str(exc)
        return Failed(d.key, _short(f"could not make {d.key}: {detail}"), FailureClass.ENCODE_FAILED)


def _save(base: pyvips.Image, d: Definition, width: int, out_dir: Path) -> Rendered:
    # thumbnail_image: box shrink then lanczos3, alpha premultiplied; size="down" never upscales.
    image = base if width >= base.width else base.thumbnail_image(width, height=_ANY_HEIGHT, size="down")
    image = _jpeg_compatible(image, d.thumbnail_mode)
    path = out_dir / f"{d.key}.jpg"
    options: dict[str, object] = {"Q": d.quality, "interlace": True, "optimize_coding": True}
    if d.thumbnail_mode:
        options["keep"] = "none"  # no EXIF, XMP, IPTC or ICC: small files, nothing private
    try:
        image.jpegsave(str(path), **options)
        digest, size = _sha512(path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the save's own error
            path.unlink(missing_ok=True)  # no half-written file for a caller to pick up
        raise
    return Rendered(d.key, path, "image/jpeg", image.width, image.height, size, digest)


def _jpeg_compatible(image: pyvips.Image, thumbnail_mode: bool) -> pyvips.Image:
    """8-bit sRGB (or 8-bit grey outside thumbnail mode), no alpha.

    Thumbnails are always sRGB, colour-managed with the embedded profile when there is
    one, because their profile is stripped and browsers then assume sRGB. Elsewhere the
    pixels keep their colour space and profile where JPEG can hold them (RGB, grey).
    """
    has_profile = image.get_typeof("icc-profile-data") != 0
    grey = image.interpretation in ("b-w", "grey16")
    if has_profile and (thumbnail_mode or image.interpretation not in ("srgb", "rgb16", "b-w", "grey16")):
        # A grey or CMYK profile converts to 3-band sRGB; libvips falls back to its own
        # profile for the image type when the embedded one does not fit the pixels.
        image = image.icc_transform("srgb", embedded=True)
    target = "b-w" if grey and not thumbnail_mode else "srgb"
    if image.interpretation != target:
        image = image.colourspace(target)  # also rgb16/grey16 -> 8 bit, CMYK/LAB without a profile -> sRGB
    if image.hasalpha():
        # After the conversion, so 255 is opaque white whatever the original depth was.
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.format != "uchar":
        image = image.cast("uchar")  # e.g. icc_transform of a 16-bit image with alpha gives 0-255 ushort
    return image


def _sha512(path: Path) -> tuple[str, int]:
    digest = hashlib.sha512()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _all_failed(defs: list[Definition], reason: str, failure_class: FailureClass) -> list[Rendered | Failed]:
    return [Failed(d.key, _short(reason), failure_class) for d in defs]


def _decode_failure(exc: pyvips.Error, path: str) -> tuple[str, FailureClass]:
    if _out_of_memory(exc):
        return OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY
    return "not a decodable image: " + _vips_reason(exc, path), FailureClass.UNDECODABLE


def _out_of_memory(exc: pyvips.Error) -> bool:
    """An allocation refused (the process's RLIMIT_AS): "vips_tracked: out of memory -- size == 1495MB",
    libjpeg's "Insufficient memory (case 4)", a thread that could not get its stack."""
    return bool(_ALLOCATION_FAILED.search(f"{exc.message}\n{exc.detail}"))


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """Both in GiB or MiB ("1.46 GiB", "1.00 GiB"), or in bytes when rounding would show them equal."""
    unit, name, digits = (2**30, "GiB", 2) if limit >= 2**30 else (2**20, "MiB", 0)
    shown = f"{size / unit:.{digits}f} {name}", f"{limit / unit:.{digits}f} {name}"
    return shown if shown[0] != shown[1] else (f"{size} bytes", f"{limit} bytes")


def _vips_reason(exc: pyvips.Error, path: str, name: str = "original") -> str:
    """The first line of libvips' own message (and its OS error, if any), the file's path replaced by `name`."""
    lines = [line.strip() for line in (exc.detail or exc.message or "").splitlines() if line.strip()]
    text = lines[0] if lines else "unknown libvips error"
    if len(lines) > 1 and lines[1].startswith("system error:"):
        text += ": " + lines[1].removeprefix("system error:").strip()
    return text.replace(f'"{path}"', name).replace(path, name)


def _pdfium_reason(exc: Exception) -> str:
    # "Failed to load document (PDFium: Data format error)." -> "Data format error"
    match = re.search(r"\(PDFium: ([^)]*)\)", str(exc))
    return match.group(1) if match else str(exc)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
