from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pikepdf
import pytest
import pyvips
from PIL import Image as PILImage

from core.definitions import Definition, load_registry
from core.plan import plan
from core.records import Location, Member
from tests import images
from worker.imaging import Failed, Rendered, configure_vips, render_all

MAX_PIXELS = 100_000_000
REGISTRY = load_registry()


def default_plan(content_type: str, width: int) -> list[Definition]:
    """The built-in definitions the plan makes for an original of this type and width."""
    original = Member(0, "a1", content_type, "0" * 128, width, Location("originals", "a1/x"))
    return list(plan(REGISTRY, original).make)


@pytest.fixture(scope="module", autouse=True)
def _vips() -> None:
    configure_vips()


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
        # new_from_file without access= reads the header only; pixels come with access="random" or thumbnail.
        return [name for name, kw in self.opens(path) if name == "thumbnail" or kw.get("access") == "random"]


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

    results = render_all(original, content_type, plan, out_dir, MAX_PIXELS)

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
        results = render_all(tmp_path / name, "image/tiff", definitions, out, MAX_PIXELS)
        means.append([reload(r).avg() for r in results if isinstance(r, Rendered)])
    assert len(means[0]) == len(means[1]) == 2
    for eight, sixteen in zip(means[0], means[1], strict=True):
        assert abs(eight - sixteen) < 2


def test_alpha_is_flattened_onto_white(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "a.png"
    png_rgba(original)
    [result] = render_all(
        original, "image/png", [Definition("t", max_width=300, thumbnail_mode=True)], out_dir, MAX_PIXELS
    )
    assert isinstance(result, Rendered)
    out = reload(result)
    assert out.bands == 3
    assert out(10, 10) == pytest.approx([255, 255, 255], abs=3)  # transparent half


def test_cmyk_becomes_srgb(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "cmyk.jpg"
    images.image(400, 300).colourspace("cmyk").jpegsave(str(original))  # with libvips' CMYK profile
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    for result in render_all(original, "image/jpeg", definitions, out_dir, MAX_PIXELS):
        assert isinstance(result, Rendered), result
        out = reload(result)
        assert (out.interpretation, out.bands) == ("srgb", 3)


def test_exif_orientation_is_applied(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "rotated.jpg"
    image = images.image(300, 200).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)  # displayed 200x300
    image.jpegsave(str(original))
    definitions = [Definition("thumb", max_width=100, thumbnail_mode=True), Definition("full")]
    thumb, full = render_all(original, "image/jpeg", definitions, out_dir, MAX_PIXELS)
    assert isinstance(thumb, Rendered) and isinstance(full, Rendered)
    assert (thumb.width, thumb.height) == (100, 150)
    assert (full.width, full.height) == (200, 300)
    assert reload(full).get("orientation") == 1  # not 6, or viewers would rotate it again


def test_max_pixels_guard_fails_before_decoding(tmp_path: Path, out_dir: Path, spy: OpenSpy) -> None:
    original = tmp_path / "big.jpg"
    original.write_bytes(images.jpeg(3000, 2000))
    plan = default_plan("image/jpeg", 3000)
    results = render_all(original, "image/jpeg", plan, out_dir, 5_999_999)
    assert results == [Failed(d.key, "original is 3000x2000 = 6000000 pixels, over the limit of 5999999") for d in plan]
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

    results = render_all(original, "image/tiff", plan, out_dir, MAX_PIXELS)

    assert [r.key for r in results] == [d.key for d in plan]
    for result in results:
        assert isinstance(result, Failed), result
        assert result.reason.startswith(reason), result.reason
        assert len(result.reason) <= 200 and "\n" not in result.reason
        assert str(tmp_path) not in result.reason
    assert list(out_dir.iterdir()) == []


def test_one_failing_size_keeps_the_others(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "o.jpg"
    original.write_bytes(images.jpeg(600, 400))
    (out_dir / "b.jpg").mkdir()  # the save of "b" cannot write its file
    definitions = [Definition("a", max_width=100), Definition("b", max_width=200), Definition("c", max_width=300)]
    a, b, c = render_all(original, "image/jpeg", definitions, out_dir, MAX_PIXELS)
    assert isinstance(a, Rendered) and isinstance(c, Rendered)
    assert b == Failed("b", "could not make b: b.jpg: unable to open for write: Is a directory")
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
    results = render_all(original, "image/png", definitions, out_dir, MAX_PIXELS)
    assert results[0] == Failed("none", "definition makes no derivative")
    check_rendered(results[1], definitions[1], 320, 200)
    assert results[2] == Failed("same", "original is 320 px wide, not wider than max_width 320")
    assert results[3] == Failed("wide", "original is 320 px wide, not wider than max_width 1000")
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

    results = render_all(original, "application/pdf", plan, out_dir, MAX_PIXELS)

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
    page, thumb = render_all(original, "application/pdf", definitions, out_dir, MAX_PIXELS)
    assert isinstance(page, Rendered) and (page.width, page.height) == (1275, 1650)
    assert isinstance(thumb, Rendered) and (thumb.width, thumb.height) == (54, 70)


def test_pdf_render_dpi_sets_the_full_size(tmp_path: Path, out_dir: Path) -> None:
    """DERIVATIVES_PDF_RENDER_DPI: a letter page (612 x 792 pt) at 300 dpi is 2550 px wide; thumbnails keep theirs."""
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    definitions = [Definition("page", transformer="pdf_page_jpeg"), Definition("thumb", "pdf_page_jpeg", max_width=54)]
    page, thumb = render_all(original, "application/pdf", definitions, out_dir, MAX_PIXELS, render_dpi=300)
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
    results = render_all(original, "application/pdf", plan, out_dir, MAX_PIXELS)
    assert [r.key for r in results] == [d.key for d in plan]
    for result in results:
        assert isinstance(result, Failed), result
        assert result.reason.startswith(reason), result.reason
        assert len(result.reason) <= 200 and "\n" not in result.reason
        assert str(tmp_path) not in result.reason


def test_pdf_page_over_max_pixels(tmp_path: Path, out_dir: Path) -> None:
    original = tmp_path / "doc.pdf"
    letter_pdf(original)
    [result] = render_all(
        original, "application/pdf", [Definition("p", "pdf_page_jpeg", max_width=1050)], out_dir, 1000
    )
    assert isinstance(result, Failed) and "over the limit of 1000" in result.reason
