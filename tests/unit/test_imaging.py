from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pikepdf
import pytest
import pyvips
from PIL import Image as PILImage

from core.config import Settings
from core.definitions import Definition, load_registry
from core.plan import plan
from core.records import FailureClass, Location, Member
from tests import images
from worker import imaging
from worker.imaging import OUT_OF_MEMORY, Failed, Limits, Rendered, configure_vips, render_all

MAX_PIXELS = 100_000_000
# Every test original is far under these: one decode held in memory, unless a test says otherwise.
LIMITS = Limits(max_pixels=MAX_PIXELS, max_decoded_bytes=1024**3, stream_above_bytes=256 * 1024**2)
STREAMED = dataclasses.replace(LIMITS, stream_above_bytes=0)
REGISTRY = load_registry()


def default_plan(content_type: str, width: int) -> list[Definition]:
    """The built-in definitions the plan makes for an original of this type and width."""
    original = Member(0, "a1", content_type, "0" * 128, width, Location("originals", "a1/x"))
    return list(plan(REGISTRY, original).make)


@pytest.fixture(scope="module", autouse=True)
def _vips() -> Iterator[None]:
    configure_vips()
    yield
    pyvips.operation_block_set("VipsForeignLoad", False)  # other tests in this process load what they like


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def grey_profile(gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 grey profile (desc, wtpt, kTRC, cprt), like a scanner's "Gray Gamma 2.2"."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"Grey test\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 78),
        (b"wtpt", b"XYZ \0\0\0\0" + d50),
        (b"kTRC", b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))),
        (b"cprt", b"text\0\0\0\0none\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"mntrGRAYXYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28
        + d50
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def with_blob(image: pyvips.Image, name: str, value: bytes) -> pyvips.Image:
    image = image.copy()
    image.set_type(pyvips.GValue.blob_type, name, value)
    return image


# Originals: (content type, writer). Each writer saves a 3000x2000 image, wide enough for every default size.
def jpeg_with_metadata(path: Path) -> None:
    image = images.image(3000, 2000).icc_transform("srgb").copy()  # attaches libvips' sRGB profile
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-ImageDescription", "private note")
    image.jpegsave(str(path), Q=85)


def tiff_16bit(path: Path) -> None:
    (images.image(3000, 2000).cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16").tiffsave(str(path))


def png_rgba(path: Path) -> None:
    rgb = images.image(3000, 2000)
    alpha = (pyvips.Image.xyz(3000, 2000)[0] > 1500).ifthenelse(255, 0).cast("uchar")  # left half transparent
    rgb.bandjoin(alpha).copy(interpretation="srgb").pngsave(str(path), compression=1)


def tiff_grey_icc(path: Path) -> None:
    with_blob(images.image(3000, 2000, bands=1), "icc-profile-data", grey_profile()).tiffsave(str(path))


ORIGINALS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "jpeg": ("image/jpeg", jpeg_with_metadata),
    "tiff16": ("image/tiff", tiff_16bit),
    "png_rgba": ("image/png", png_rgba),
    "tiff_grey_icc": ("image/tiff", tiff_grey_icc),
}


def make(tmp_path: Path, kind: str) -> tuple[Path, str]:
    content_type, writer = ORIGINALS[kind]
    path = tmp_path / f"original-{kind}"
    writer(path)
    return path, content_type


class OpenSpy:
    """Records how libvips is asked to open files (header read or decode), per file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        new_from_file, thumbnail = pyvips.Image.new_from_file, pyvips.Image.thumbnail

        def spy_new_from_file(filename: str, **kwargs: Any) -> pyvips.Image:
            self.calls.append(("new_from_file", str(filename), kwargs))
            return new_from_file(filename, **kwargs)

        def spy_thumbnail(filename: str, width: int, **kwargs: Any) -> pyvips.Image:
            self.calls.append(("thumbnail", str(filename), kwargs))
            return thumbnail(filename, width, **kwargs)

        monkeypatch.setattr(pyvips.Image, "new_from_file", staticmethod(spy_new_from_file))
        monkeypatch.setattr(pyvips.Image, "thumbnail", staticmethod(spy_thumbnail))

    def opens(self, path: Path) -> list[tuple[str, dict[str, Any]]]:
        return [(name, kwargs) for name, filename, kwargs in self.calls if filename == str(path)]

    def decodes(self, path: Path) -> list[str]:
        # new_from_file without access= reads the header only; pixels come with access= or thumbnail.
        return [name for name, kw in self.opens(path) if name == "thumbnail" or "access" in kw]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> OpenSpy:
    return OpenSpy(monkeypatch)


def reload(rendered: Rendered) -> pyvips.Image:
    return pyvips.Image.new_from_file(str(rendered.path))


def check_rendered(result: Rendered | Failed, definition: Definition, width: int, height: int) -> Rendered:
    assert isinstance(result, Rendered), result
    assert result.key == definition.key
    assert result.path.name == f"{definition.key}.jpg"
    assert result.content_type == "image/jpeg"
    data = result.path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert result.size_bytes == len(data)
    assert result.sha512 == hashlib.sha512(data).hexdigest()
    expected_width = definition.max_width or width
    assert result.width == expected_width
    assert abs(result.height - expected_width * height / width) <= 1
    out = reload(result)
    assert (out.width, out.height) == (result.width, result.height)
    assert out.format == "uchar"
    assert out.get("interlaced") == 1
    return result


@pytest.mark.parametrize("kind", list(ORIGINALS))
def test_default_set_makes_every_key_from_one_decode(kind: str, tmp_path: Path, out_dir: Path, spy: OpenSpy) -> None:
    original, content_type = make(tmp_path, kind)
    plan = default_plan(content_type, 3000)
    assert len(plan) == (8 if content_type == "image/jpeg" else 9)  # JPEGs get no download_full

    results = render_all(original, content_type, plan, out_dir, LIMITS)

    assert [r.key for r in results] == [d.key for d in plan]
    for definition, result in zip(plan, results, strict=True):
        rendered = check_rendered(result, definition, 3000, 2000)
        out = reload(rendered)
        fields = out.get_fields()
        if definition.thumbnail_mode:
            assert "exif-data" not in fields and "icc-profile-data" not in fields, fields
            assert out.interpretation == "srgb" and out.bands == 3
        elif kind == "tiff_grey_icc":
            assert out.bands == 1 and "icc-profile-data" in fields  # grey stays grey, with its profile
        elif kind == "jpeg":
            assert "exif-data" in fields and "icc-profile-data" in fields  # downloads keep metadata
        else:
            assert out.bands == 3

    # One decode: the header read plus a single pixel load, however many sizes.
    assert len(spy.opens(original)) == 2, spy.opens(original)
    # Without a full-size key the decode shrinks on load; with one it is the full decode.
    assert spy.decodes(original) == (["thumbnail"] if content_type == "image/jpeg" else ["new_from_file"])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path, out_dir: Path) -> None:
    small = images.image(600, 400)
    (tmp_path / "8.png").write_bytes(bytes(small.pngsave_buffer()))
    (small.cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16").tiffsave(str(tmp_path / "16.tif"))
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    means = []
    for name in ("8.png", "16.tif"):
        out = out_dir / name
        out.mkdir()
        results = render_all(tmp_path / name, "image/tiff", definitions, out, LIMITS)
        means.append([reload(r).avg() for r in results if isinstance(r, Rendered)])
    assert len(means[0]) == len(means[1]) == 2
    for eight, sixteen in zip(means[0], means[1], strict=True):
        assert abs(eight - sixteen) < 2


def test_alpha_is_flattened_onto_white(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "a.png"
    png_rgba(original)
    [result] = render_all(original, "image/png", [Definition("t", max_width=300, thumbnail_mode=True)], out_dir, LIMITS)
    assert isinstance(result, Rendered)
    out = reload(result)
    assert out.bands == 3
    assert out(10, 10) == pytest.approx([255, 255, 255], abs=3)  # transparent half


def test_cmyk_becomes_srgb(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "cmyk.jpg"
    images.image(400, 300).colourspace("cmyk").jpegsave(str(original))  # with libvips' CMYK profile
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    for result in render_all(original, "image/jpeg", definitions, out_dir, LIMITS):
        assert isinstance(result, Rendered), result
        out = reload(result)
        assert (out.interpretation, out.bands) == ("srgb", 3)


def test_exif_orientation_is_applied(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "rotated.jpg"
    image = images.image(300, 200).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # displayed 200x300
    image.jpegsave(str(original))
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    thumb, full = render_all(original, "image/jpeg", definitions, out_dir, LIMITS)
    assert isinstance(thumb, Rendered) and isinstance(full, Rendered)
    assert (thumb.width, thumb.height) == (100, 150)
    assert (full.width, full.height) == (200, 300)
    assert reload(full).get("orientation") == 1  # not 6, or viewers would rotate it again


def test_max_pixels_guard_fails_before_decoding(tmp_path: Path, out_dir: Path, spy: OpenSpy) -> None:
    original = tmp_path / "big.jpg"
    original.write_bytes(images.jpeg(3000, 2000))
    plan = default_plan("image/jpeg", 3000)
    results = render_all(original, "image/jpeg", plan, out_dir, dataclasses.replace(LIMITS, max_pixels=5_999_999))
    reason = "original is 3000x2000 = 6000000 pixels, over the limit of 5999999"
    assert results == [Failed(d.key, reason, FailureClass.TOO_LARGE) for d in plan]
    assert len(spy.opens(original)) == 1 and spy.decodes(original) == []
    assert list(out_dir.iterdir()) == []


def truncated_tiff(path: Path) -> None:
    # Pillow writes the IFD first, so the header reads and the strips are missing.
    PILImage.new("RGB", (600, 400), "red").save(path, "TIFF")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_ORIGINALS: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated_jpeg": (
        lambda p: p.write_bytes(images.jpeg(600, 400)[:5000]),
        "not a decodable image: VipsJpeg: premature end of JPEG image",
    ),
    "truncated_tiff": (truncated_tiff, "not a decodable image: tiff2vips: Read error at scanline"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "not a decodable image: VipsForeignLoad: original is not a known"),
    "random_bytes": (
        lambda p: p.write_bytes(os.urandom(4096)),
        "not a decodable image: VipsForeignLoad: original is not a known file format",
    ),
    "text": (lambda p: p.write_bytes(b"hello\n" * 100), "not a decodable image: VipsForeignLoad: original is not"),
    "missing": (lambda p: None, "not a decodable image: VipsForeignLoad: file original does not exist"),
}


@pytest.mark.parametrize("kind", list(BAD_ORIGINALS))
def test_bad_originals_fail_every_key_briefly(kind: str, tmp_path: Path, out_dir: Path) -> None:
    writer, reason = BAD_ORIGINALS[kind]
    original = tmp_path / "original"
    writer(original)
    plan = default_plan("image/tiff", 600)
    assert len(plan) >= 3

    results = render_all(original, "image/tiff", plan, out_dir, LIMITS)

    assert [r.key for r in results] == [d.key for d in plan]
    for result in results:
        assert isinstance(result, Failed), result
        assert result.reason.startswith(reason), result.reason
        assert result.failure_class is FailureClass.UNDECODABLE, result
        assert len(result.reason) <= 200 and "\n" not in result.reason
        assert str(tmp_path) not in result.reason
    assert list(out_dir.iterdir()) == []


def test_one_failing_size_keeps_the_others(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "o.jpg"
    original.write_bytes(images.jpeg(600, 400))
    (out_dir / "b.jpg").mkdir()  # the save of "b" cannot write its file
    definitions = [Definition("a", max_width=100), Definition("b", max_width=200), Definition("c", max_width=300)]
    a, b, c = render_all(original, "image/jpeg", definitions, out_dir, LIMITS)
    assert isinstance(a, Rendered) and isinstance(c, Rendered)
    assert b == Failed(
        "b", "could not make b: b.jpg: unable to open for write: Is a directory", FailureClass.ENCODE_FAILED
    )
    assert len(b.reason) <= 200 and "\n" not in b.reason


def test_none_and_too_narrow_definitions_fail_in_place(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "o.png"
    original.write_bytes(images.png(320, 200))
    definitions = [
        Definition("none", transformer="none"),
        Definition("small", max_width=100),
        Definition("same", max_width=320),
        Definition("wide", max_width=1000),
        Definition("full"),
    ]
    results = render_all(original, "image/png", definitions, out_dir, LIMITS)
    assert results[0] == Failed("none", "definition makes no derivative", FailureClass.NO_DEFINITION)
    check_rendered(results[1], definitions[1], 320, 200)
    assert results[2] == Failed(
        "same", "original is 320 px wide, not wider than max_width 320", FailureClass.TOO_NARROW
    )
    assert results[3] == Failed(
        "wide", "original is 320 px wide, not wider than max_width 1000", FailureClass.TOO_NARROW
    )
    check_rendered(results[4], definitions[4], 320, 200)


def letter_pdf(path: Path) -> None:
    page = PILImage.new("RGB", (612, 792), (255, 0, 0))
    page.paste((0, 0, 255), (0, 0, 100, 100))  # a blue top-left corner, to check the byte order
    page.save(path, "PDF")


def test_pdf_first_page_thumbnails(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    plan = default_plan("application/pdf", 0)
    assert len(plan) == 6 and {d.transformer for d in plan} == {"pdf_page_jpeg"}

    results = render_all(original, "application/pdf", plan, out_dir, LIMITS)

    for definition, result in zip(plan, results, strict=True):
        rendered = check_rendered(result, definition, 612, 792)
        out = reload(rendered)
        assert "icc-profile-data" not in out.get_fields() and out.interpretation == "srgb"
        red, blue = out(out.width - 2, out.height - 2), out(1, 1)
        assert red[0] > 200 and red[2] < 60, red  # RGB, not pdfium's native BGR
        assert blue[2] > 200 and blue[0] < 60, blue


def test_pdf_full_size_is_150_dpi(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    definitions = [Definition("page", transformer="pdf_page_jpeg"), Definition("thumb", "pdf_page_jpeg", max_width=54)]
    page, thumb = render_all(original, "application/pdf", definitions, out_dir, LIMITS)
    assert isinstance(page, Rendered) and (page.width, page.height) == (1275, 1650)
    assert isinstance(thumb, Rendered) and (thumb.width, thumb.height) == (54, 70)


def test_pdf_render_dpi_sets_the_full_size(tmp_path: Path, out_dir: Path) -> None:
    """DERIVATIVES_PDF_RENDER_DPI: a letter page (612 x 792 pt) at 300 dpi is 2550 px wide; thumbnails keep theirs."""
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    definitions = [Definition("page", transformer="pdf_page_jpeg"), Definition("thumb", "pdf_page_jpeg", max_width=54)]
    page, thumb = render_all(original, "application/pdf", definitions, out_dir, LIMITS, render_dpi=300)
    assert isinstance(page, Rendered) and (page.width, page.height) == (2550, 3300)
    assert isinstance(thumb, Rendered) and (thumb.width, thumb.height) == (54, 70)


def truncated_pdf(path: Path) -> None:
    letter_pdf(path)
    path.write_bytes(path.read_bytes()[:300])


def encrypted_pdf(path: Path) -> None:
    letter_pdf(path.with_suffix(".plain"))
    with pikepdf.open(path.with_suffix(".plain")) as pdf:
        pdf.save(path, encryption=pikepdf.Encryption(user="secret", owner="secret"))


def no_pages_pdf(path: Path) -> None:
    pdf = pikepdf.new()
    pdf.save(path)


BAD_PDFS: dict[str, tuple[Callable[[Path], object], str]] = {
    "corrupt": (lambda p: p.write_bytes(b"%PDF-1.4\nnot really\n"), "not a readable PDF: "),
    "truncated": (truncated_pdf, "not a readable PDF: "),
    "encrypted": (encrypted_pdf, "PDF is password-protected"),
    "no_pages": (no_pages_pdf, "PDF has no pages"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "not a readable PDF: "),
    "missing": (lambda p: None, "original could not be read: FileNotFoundError"),
}


@pytest.mark.parametrize("kind", list(BAD_PDFS))
def test_bad_pdfs_fail(kind: str, tmp_path: Path, out_dir: Path) -> None:
    writer, reason = BAD_PDFS[kind]
    original = tmp_path / "doc.pdf"
    writer(original)
    plan = default_plan("application/pdf", 0)
    results = render_all(original, "application/pdf", plan, out_dir, LIMITS)
    assert [r.key for r in results] == [d.key for d in plan]
    for result in results:
        assert isinstance(result, Failed), result
        assert result.reason.startswith(reason), result.reason
        assert result.failure_class is FailureClass.UNDECODABLE, result
        assert len(result.reason) <= 200 and "\n" not in result.reason
        assert str(tmp_path) not in result.reason


def test_pdf_page_over_max_pixels(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    limits = dataclasses.replace(LIMITS, max_pixels=1000)
    [result] = render_all(
        original, "application/pdf", [Definition("p", "pdf_page_jpeg", max_width=1050)], out_dir, limits
    )
    assert isinstance(result, Failed) and "over the limit of 1000" in result.reason
    assert result.failure_class is FailureClass.TOO_LARGE


# --- limits (issue 9): decoded bytes, streaming of large originals, allocation failures, loaders ---------------


def test_limits_from_settings_stream_above_an_eighth_of_the_worker_ceiling() -> None:
    settings = Settings(max_pixels=7, max_decoded_bytes=8, worker_memory_bytes=2 * 1024**3)
    assert Limits.from_settings(settings) == Limits(7, 8, 256 * 1024**2)
    # No ceiling (0): stream as under the default one.
    assert Limits.from_settings(dataclasses.replace(settings, worker_memory_bytes=0)).stream_above_bytes == (
        Settings().worker_memory_bytes // 8
    )


def test_decoded_bytes_guard_fails_before_decoding(tmp_path: Path, out_dir: Path, spy: OpenSpy) -> None:
    original, content_type = make(tmp_path, "tiff16")  # 3000 x 2000 x 3 bands x 2 bytes = 36,000,000 bytes
    plan = default_plan(content_type, 3000)
    results = render_all(original, content_type, plan, out_dir, dataclasses.replace(LIMITS, max_decoded_bytes=32 << 20))
    reason = "original decodes to 34 MiB (3000x2000, 3 bands of 16 bits), over the limit of 32 MiB"
    assert results == [Failed(d.key, reason, FailureClass.TOO_LARGE) for d in plan]
    assert len(spy.opens(original)) == 1 and spy.decodes(original) == []
    assert list(out_dir.iterdir()) == []
    # Rounded alike, the two are given in bytes rather than as "34 MiB, over the limit of 34 MiB".
    [result] = render_all(
        original, content_type, plan[:1], out_dir, dataclasses.replace(LIMITS, max_decoded_bytes=35_999_999)
    )
    assert isinstance(result, Failed) and "decodes to 36000000 bytes" in result.reason
    assert result.reason.endswith("over the limit of 35999999 bytes")


def test_decoded_bytes_count_bands_and_depth(tmp_path: Path, out_dir: Path) -> None:
    """The same pixels, four times the bytes: 16-bit RGBA is refused where 8-bit grey passes."""
    grey, rgba = tmp_path / "grey.png", tmp_path / "rgba.png"
    grey.write_bytes(images.png_zeros(1000, 1000, bit_depth=8, color_type=0))  # 1 MB decoded
    rgba.write_bytes(images.png_zeros(1000, 1000, bit_depth=16, color_type=6))  # 8 MB decoded
    limits = dataclasses.replace(LIMITS, max_decoded_bytes=4 << 20)
    [ok] = render_all(grey, "image/png", [Definition("t", max_width=100)], out_dir, limits)
    [refused] = render_all(rgba, "image/png", [Definition("t", max_width=100)], out_dir, limits)
    assert isinstance(ok, Rendered)
    reason = "original decodes to 8 MiB (1000x1000, 4 bands of 16 bits), over the limit of 4 MiB"
    assert refused == Failed("t", reason, FailureClass.TOO_LARGE)


def test_pdf_page_over_max_decoded_bytes(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    limits = dataclasses.replace(LIMITS, max_decoded_bytes=1 << 20)
    [result] = render_all(original, "application/pdf", [Definition("p", "pdf_page_jpeg")], out_dir, limits)
    reason = "PDF page renders to 6 MiB (1275x1650), over the limit of 1 MiB"
    assert result == Failed("p", reason, FailureClass.TOO_LARGE)


def test_large_original_is_streamed_with_the_same_results(tmp_path: Path, spy: OpenSpy) -> None:
    """Over stream_above_bytes: smaller sizes from one shrink-on-load decode, full size from a sequential one."""
    original, content_type = make(tmp_path, "tiff16")
    plan = default_plan(content_type, 3000)
    outputs = {}
    for name, limits in (("memory", LIMITS), ("streamed", STREAMED)):
        out = tmp_path / name
        out.mkdir()
        outputs[name] = render_all(original, content_type, plan, out, limits)
    assert spy.decodes(original) == ["new_from_file", "thumbnail", "new_from_file"]  # memory; streamed: 2
    assert [kw.get("access") for name, kw in spy.opens(original) if name == "new_from_file" and kw.get("access")] == [
        "sequential",
        "sequential",
    ]
    for definition, memory, streamed in zip(plan, outputs["memory"], outputs["streamed"], strict=True):
        check_rendered(streamed, definition, 3000, 2000)
        assert isinstance(memory, Rendered) and isinstance(streamed, Rendered)
        assert (memory.width, memory.height) == (streamed.width, streamed.height)
        assert reload(memory).avg() == pytest.approx(reload(streamed).avg(), abs=1.5), definition.key


def test_streamed_original_turned_by_exif_orientation(tmp_path: Path, out_dir: Path, spy: OpenSpy) -> None:
    original = tmp_path / "rotated.jpg"
    image = images.image(300, 200).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # displayed 200x300: needs random access
    image.jpegsave(str(original))
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    thumb, full = render_all(original, "image/jpeg", definitions, out_dir, STREAMED)
    assert isinstance(thumb, Rendered) and (thumb.width, thumb.height) == (100, 150)
    assert isinstance(full, Rendered) and (full.width, full.height) == (200, 300)
    assert reload(full).get("orientation") == 1
    assert [kw.get("access") for _, kw in spy.opens(original) if kw.get("access")] == ["random"]


def test_streamed_corrupt_original_fails_every_key_alike(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "cut.png"
    original.write_bytes(images.png(600, 400)[:3000])
    plan = default_plan("image/png", 600)
    results = render_all(original, "image/png", plan, out_dir, STREAMED)
    reasons = {r.reason for r in results if isinstance(r, Failed)}
    assert len(results) == len(plan) and all(isinstance(r, Failed) for r in results)
    assert len(reasons) == 1 and next(iter(reasons)).startswith("not a decodable image: "), reasons
    assert list(out_dir.iterdir()) == []


def test_multi_page_tiff_gives_page_zero(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "pages.tif"
    images.tiff_pages(str(original), 50)
    definitions = [Definition("thumb", max_width=54), Definition("full")]
    thumb, full = render_all(original, "image/tiff", definitions, out_dir, STREAMED)
    assert isinstance(thumb, Rendered) and (thumb.width, thumb.height) == (54, 36)
    assert isinstance(full, Rendered) and (full.width, full.height) == (120, 80)


def vips_error(detail: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise pyvips.Error("unable to call something", detail)

    return fail


@pytest.mark.parametrize(
    "detail",
    [
        "vips_tracked: out of memory -- size == 1495MB\n",
        "VipsJpeg: Insufficient memory (case 4)\n",
        "vips_mapfile: unable to mmap\nsystem error: Cannot allocate memory\n",
    ],
)
def test_allocation_failure_of_a_decode_fails_every_key_with_the_memory_reason(
    detail: str, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, content_type = make(tmp_path, "png_rgba")
    plan = default_plan(content_type, 3000)
    monkeypatch.setattr(pyvips.Image, "copy_memory", vips_error(detail))
    for limits in (LIMITS, STREAMED):
        assert render_all(original, content_type, plan, out_dir, limits) == [
            Failed(d.key, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY) for d in plan
        ]


def test_allocation_failure_of_one_size_keeps_the_others(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, content_type = make(tmp_path, "png_rgba")
    save = pyvips.Image.jpegsave

    def jpegsave(image: pyvips.Image, filename: str, **options: Any) -> None:
        if image.width == 3000:  # the full-size encode (progressive: it holds the whole image's coefficients)
            raise pyvips.Error("unable to call jpegsave", "VipsJpeg: Insufficient memory (case 4)\n")
        save(image, filename, **options)

    monkeypatch.setattr(pyvips.Image, "jpegsave", jpegsave)
    definitions = [Definition("thumb", max_width=100), Definition("full")]
    for limits in (LIMITS, STREAMED):
        thumb, full = render_all(original, content_type, definitions, out_dir, limits)
        assert isinstance(thumb, Rendered) and full == Failed("full", OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY)


def test_python_memory_error_fails_with_the_memory_reason(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)

    def bitmap_to_vips(bitmap: Any) -> pyvips.Image:
        raise MemoryError

    monkeypatch.setattr(imaging, "_bitmap_to_vips", bitmap_to_vips)
    plan = default_plan("application/pdf", 0)
    assert render_all(original, "application/pdf", plan, out_dir, LIMITS) == [
        Failed(d.key, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY) for d in plan
    ]


SECRET = "SECRET-7f3a"


def hostile_svg(directory: Path, entity: bool = True) -> Path:
    """An SVG that pulls in files stored next to it (xi:include of a text, <image> of a picture) and, with
    `entity`, /etc/passwd through an external entity (which libxml2 refuses: the parse fails)."""
    (directory / "secret.txt").write_text(SECRET * 20)
    (directory / "neighbour.png").write_bytes(images.png(80, 80))
    svg = directory / "drawing.svg"
    svg.write_text(
        '<?xml version="1.0"?>\n'
        + ('<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n' if entity else "")
        + '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" width="800" height="200">'
        '<rect width="800" height="200" fill="white"/>'
        '<text x="100" y="60" font-size="40"><xi:include href="secret.txt" parse="text"/></text>'
        '<image x="0" y="0" width="80" height="80" href="neighbour.png" xlink:href="neighbour.png"/>'
        + ('<text x="100" y="160" font-size="40">&x;</text>' if entity else "")
        + "</svg>"
    )
    return svg


def test_svg_is_refused_not_rendered_with_local_files(tmp_path: Path, out_dir: Path) -> None:
    svg = hostile_svg(tmp_path)
    plan = default_plan("image/svg+xml", 800)
    assert len(plan) >= 5  # "image" definitions apply to image/svg+xml
    results = render_all(svg, "image/svg+xml", plan, out_dir, LIMITS)
    reason = "not a decodable image: VipsForeignLoad: original is not a known file format"
    assert results == [Failed(d.key, reason, FailureClass.UNDECODABLE) for d in plan]
    assert list(out_dir.iterdir()) == []


def test_svg_include_is_a_real_leak_when_the_loader_is_allowed(tmp_path: Path) -> None:
    """The control for the test above: librsvg, given the file, draws its neighbours into the pixels."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_neighbours = hostile_svg(tmp_path / "a", entity=False)
    alone = hostile_svg(tmp_path / "b", entity=False)
    (tmp_path / "b" / "secret.txt").unlink()
    (tmp_path / "b" / "neighbour.png").unlink()
    pyvips.operation_block_set("VipsForeignLoadSvg", False)
    try:
        leaked = pyvips.Image.new_from_file(str(with_neighbours)).flatten(background=255)
        clean = pyvips.Image.new_from_file(str(alone)).flatten(background=255)
    finally:
        pyvips.operation_block_set("VipsForeignLoadSvg", True)
    assert clean.crop(0, 0, 80, 80).min() == 255  # white where the neighbour would be
    assert leaked.crop(0, 0, 80, 80).min() < 200  # the neighbour picture, drawn
