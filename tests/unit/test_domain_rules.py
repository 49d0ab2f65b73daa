"""The rules decided in core: which definition applies (Registry.resolve), what to make (plan), and what a
bundle is made of (member_source) and keyed by (checksum, fingerprint, filename)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from pathlib import Path

import pytest

from core.bundles import checksum, filename, fingerprint, member_source, title_words
from core.config import Settings
from core.definitions import Definition, Registry, load_registry
from core.plan import derivatives_created, makes, plan, would_upscale
from core.records import AssetFailure, BundleKind, FailureClass, Location, Member, Work

BUILTIN = load_registry()
SETTINGS = Settings()
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def member(asset_id: str = "a1", content_type: str = "image/jpeg", width: int = 2000, position: int = 0) -> Member:
    return Member(position, asset_id, content_type, asset_id * 64, width, Location("originals", f"{asset_id}/x"))


# --- Registry.resolve --------------------------------------------------------------------------------------------

ANY = Definition("k", quality=10)
IMAGE = Definition("k", quality=20, content_types=("image",))
TIFF = Definition("k", quality=30, content_types=("image/tiff", "image/x-tiff"))


def test_specificity() -> None:
    assert ANY.specificity("image/tiff") == 0
    assert IMAGE.specificity("image/tiff") == 1
    assert TIFF.specificity("image/tiff") == 2
    assert TIFF.specificity("image/x-tiff") == 2
    assert TIFF.specificity("image/png") is None
    assert IMAGE.specificity("application/pdf") is None
    assert IMAGE.specificity("imagex/foo") is None  # a primary type matches whole, not as a prefix


@pytest.mark.parametrize("order", list(itertools.permutations([ANY, IMAGE, TIFF])))
def test_full_type_beats_primary_type_beats_no_filter_in_any_order(order: tuple[Definition, ...]) -> None:
    registry = Registry(list(order))
    assert registry.resolve("k", "image/tiff") is TIFF
    assert registry.resolve("k", "image/png") is IMAGE
    assert registry.resolve("k", "application/pdf") is ANY
    assert registry.resolve("other", "image/tiff") is None


def test_no_match_is_none() -> None:
    registry = Registry([IMAGE, TIFF])
    assert registry.resolve("k", "application/pdf") is None  # no unfiltered fallback
    assert Registry([TIFF]).resolve("k", "image/png") is None  # another subtype of the same primary type
    assert registry.resolve("missing", "image/png") is None


def test_builtin_definitions() -> None:
    assert BUILTIN.resolve("download_full", "image/jpeg").transformer == "none"  # type: ignore[union-attr]
    assert BUILTIN.resolve("download_full", "image/tiff").transformer == "jpeg"  # type: ignore[union-attr]
    assert BUILTIN.resolve("thumb_mini", "application/pdf").transformer == "pdf_page_jpeg"  # type: ignore[union-attr]
    assert BUILTIN.resolve("thumb_mini", "image/png").transformer == "jpeg"  # type: ignore[union-attr]
    assert BUILTIN.resolve("download_medium", "application/pdf") is None
    assert BUILTIN.resolve("download_medium", "image/webp").max_width == 1200  # type: ignore[union-attr]
    assert "download_medium" in BUILTIN.default_keys()


def test_load_registry_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "defs.toml"
    path.write_text(
        '[[derivative]]\nkey = "small"\nmax_width = 100\ncontent_types = ["image"]\n'
        '[[derivative]]\nkey = "small"\ntransformer = "none"\ncontent_types = ["image/gif"]\n'
        '[[derivative]]\nkey = "extra"\ndefault_create = false\nquality = 70\noptions = { strip = 1 }\n'
    )
    registry = load_registry(str(path))
    assert registry.keys() == ["extra", "small"]
    assert registry.default_keys() == ["small"]
    assert registry.resolve("small", "image/gif").transformer == "none"  # type: ignore[union-attr]
    assert registry.resolve("small", "image/png").max_width == 100  # type: ignore[union-attr]
    extra = registry.resolve("extra", "application/pdf")
    assert extra is not None and extra.quality == 70 and extra.options == {"strip": "1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[derivate]]\nkey = "k"\n', "unknown tables"),
        ('[[derivative]]\nkey = "K!"\n', "key must match"),
        ('[[derivative]]\nkey = "k"\ntransformer = "magic"\n', "unknown transformer"),
        ('[[derivative]]\nkey = "k"\nquality = 0\n', "quality must be 1-100"),
        ('[[derivative]]\nkey = "k"\nmax_width = -1\n', "max_width must be >= 0"),
        ("[[derivative]\n", "line 1"),  # not TOML
    ],
)
def test_bad_definition_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "defs.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_registry(str(path))


def test_a_misspelt_field_is_refused_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "defs.toml"
    path.write_text('[[derivative]]\nkey = "k"\nmaxwidth = 100\n')
    with pytest.raises(ValueError, match="maxwidth"):
        load_registry(str(path))


def test_content_types_must_be_a_list(tmp_path: Path) -> None:
    path = tmp_path / "defs.toml"
    path.write_text('[[derivative]]\nkey = "k"\ncontent_types = "image"\n')
    with pytest.raises(ValueError, match="content_types"):
        load_registry(str(path))


# --- plan ----------------------------------------------------------------------------------------------------------

REGISTRY = Registry(
    [
        Definition("small", max_width=100),
        Definition("big", max_width=1000),
        Definition("full"),
        Definition("full", transformer="none", content_types=("image/jpeg",)),
        Definition("opt", default_create=False, max_width=50),
        Definition("pages", transformer="pdf_page_jpeg", content_types=("application/pdf",), max_width=500),
        Definition("tiffonly", content_types=("image/tiff",)),
    ]
)


def keys(original: Member, **kwargs: list[str]) -> list[str]:
    return [d.key for d in plan(REGISTRY, original, **kwargs).make]


def test_default_plan_is_default_keys_that_apply_sorted() -> None:
    tiff = member(content_type="image/tiff", width=500)
    result = plan(REGISTRY, tiff)
    # big: 500 px is not wider than 1000 (never upscale); pages: no definition for a TIFF, not asked by name.
    assert [d.key for d in result.make] == ["full", "small", "tiffonly"]
    assert result.failures == ()
    assert result.keys == frozenset({"full", "small", "tiffonly"})
    assert result.make[0] is REGISTRY.resolve("full", "image/tiff")


def test_only_exclude_and_have() -> None:
    tiff = member(content_type="image/tiff", width=5000)
    assert keys(tiff, only=["opt"]) == ["opt"]  # not a default key, but asked for
    assert keys(tiff, only=["big", "small", "opt"], exclude=["small"]) == ["big", "opt"]
    assert keys(tiff, exclude=["full", "tiffonly"]) == ["big", "small"]
    assert keys(tiff, have=["small", "big"]) == ["full", "tiffonly"]
    assert keys(tiff, only=["small"], have=["small"]) == []


def test_none_transformer_is_dropped_without_a_failure() -> None:
    jpeg = member(content_type="image/jpeg", width=5000)
    assert keys(jpeg) == ["big", "small"]
    result = plan(REGISTRY, jpeg, only=["full"])
    assert result.make == () and result.failures == ()


def test_never_upscale_unless_the_width_is_unknown() -> None:
    assert keys(member(content_type="image/png", width=0)) == ["big", "full", "small"]  # unknown: decided later
    assert keys(member(content_type="image/png", width=100)) == ["full"]  # not wider than 100: no "small"
    assert keys(member(content_type="image/png", width=101)) == ["full", "small"]
    assert keys(member(content_type="image/png", width=1001)) == ["big", "full", "small"]
    assert keys(member(content_type="image/png", width=1)) == ["full"]  # full size (max_width 0) always
    assert keys(member(content_type="application/pdf", width=10)) == ["full", "pages"]  # PDF pages are vector


def test_would_upscale() -> None:
    small = Definition("small", max_width=100)
    assert [would_upscale(small, w) for w in (0, 1, 100, 101)] == [False, True, True, False]
    assert not would_upscale(Definition("full"), 1)
    assert not would_upscale(Definition("p", transformer="pdf_page_jpeg", max_width=100), 50)


def test_keys_asked_by_name_that_nothing_covers_are_failures() -> None:
    tiff = member("t1", content_type="image/tiff", width=500)
    result = plan(REGISTRY, tiff, only=["pages", "small", "unknown"])
    assert [d.key for d in result.make] == ["small"]
    assert result.failures == (
        AssetFailure("t1", "pages", "no definition of 'pages' applies to image/tiff", FailureClass.NO_DEFINITION),
        AssetFailure("t1", "unknown", "no definition of 'unknown' applies to image/tiff", FailureClass.NO_DEFINITION),
    )
    assert plan(REGISTRY, tiff, only=["pages"], exclude=["pages"]).failures == ()
    assert plan(REGISTRY, tiff, only=["big"]).failures == ()  # too narrow is not a failure
    assert plan(REGISTRY, tiff).failures == ()  # default keys that do not apply are not failures


def test_derivatives_created_and_makes() -> None:
    tiff = member(content_type="image/tiff", width=500)
    assert derivatives_created(REGISTRY, tiff, ["full", "small", "tiffonly"])
    assert not derivatives_created(REGISTRY, tiff, ["full", "small"])
    assert makes(REGISTRY, tiff, "full")
    assert not makes(REGISTRY, tiff, "big")
    assert not makes(REGISTRY, member(content_type="image/jpeg"), "full")


# --- bundles: member_source, checksum, fingerprint, filename ------------------------------------------------------


def source(original: Member, kind: BundleKind, settings: Settings = SETTINGS) -> str | None:
    found = member_source(original, kind, BUILTIN, settings)
    return found.label if found else None


@pytest.mark.parametrize(
    ("content_type", "width", "pdf", "zip_"),
    [
        ("image/jpeg", 2000, "download_medium", "original"),
        ("image/jpeg", 1200, "original", "original"),  # not wider than download_medium: the JPEG as it is
        ("image/jpeg", 0, "download_medium", "original"),  # width unknown: assumed wide enough
        ("image/tiff", 3000, "download_medium", "download_full"),
        ("image/tiff", 800, "download_full", "download_full"),  # too narrow for download_medium
        ("image/png", 1201, "download_medium", "download_full"),
        ("application/pdf", 2000, None, None),  # no JPEG of a PDF's pages in the built-in definitions
    ],
)
def test_member_source(content_type: str, width: int, pdf: str | None, zip_: str | None) -> None:
    original = member(content_type=content_type, width=width)
    assert source(original, BundleKind.PDF) == pdf
    assert source(original, BundleKind.ZIP) == zip_


def test_member_source_follows_the_settings() -> None:
    settings = dataclasses.replace(SETTINGS, pdf_derivative_key="download_large", zip_derivative_key="download_medium")
    assert source(member(width=2000), BundleKind.PDF, settings) == "original"  # not wider than 2880
    assert source(member(width=3000), BundleKind.PDF, settings) == "download_large"
    assert source(member(content_type="image/tiff", width=3000), BundleKind.ZIP, settings) == "download_medium"
    assert source(member(content_type="image/tiff", width=1000), BundleKind.ZIP, settings) is None


WORK = Work("w1", "A Title", "A Creator", "https://example.org/w1", ("a1", "a2"), T0, T0)
MEMBERS = (member("a1", "image/jpeg", 2000, 0), member("a2", "image/tiff", 3000, 1))


def digest(
    work: Work = WORK,
    members: tuple[Member, ...] = MEMBERS,
    kind: BundleKind = BundleKind.PDF,
    settings: Settings = SETTINGS,
) -> str:
    return checksum(work, members, kind, BUILTIN, settings)


def test_checksum_is_stable() -> None:
    first = digest()
    assert len(first) == 32 and int(first, 16) >= 0
    assert digest() == first
    copies = tuple(dataclasses.replace(m) for m in MEMBERS)
    assert digest(dataclasses.replace(WORK), copies) == first
    assert checksum(WORK, MEMBERS, BundleKind.PDF, load_registry(), Settings()) == first


def test_checksum_changes_with_what_shapes_the_file() -> None:
    a1, a2 = MEMBERS
    variants = {
        "base": digest(),
        "title": digest(dataclasses.replace(WORK, title="Another Title")),
        "creator": digest(dataclasses.replace(WORK, creator="Someone")),
        "url": digest(dataclasses.replace(WORK, url="https://example.org/other")),
        "work_id": digest(dataclasses.replace(WORK, work_id="w2")),
        "sha512": digest(members=(dataclasses.replace(a1, sha512="f" * 128), a2)),
        "order": digest(members=(a2, a1)),
        "asset": digest(members=(dataclasses.replace(a1, asset_id="a9"), a2)),
        "fewer": digest(members=(a1,)),
        "source": digest(members=(dataclasses.replace(a1, width=1000), a2)),  # download_medium -> original
        "kind": digest(kind=BundleKind.ZIP),
        "institution": digest(settings=dataclasses.replace(SETTINGS, institution="A Library")),
        "pdf_dpi": digest(settings=dataclasses.replace(SETTINGS, pdf_dpi=300)),
    }
    assert len(set(variants.values())) == len(variants), variants


def test_checksum_ignores_what_does_not_shape_the_file() -> None:
    a1, a2 = MEMBERS
    base = digest()
    assert digest(dataclasses.replace(WORK, created_at=T0 + dt.timedelta(days=1), updated_at=T0)) == base
    moved = dataclasses.replace(a1, original=Location("elsewhere", "a1/y"), position=7)
    assert digest(members=(moved, a2)) == base
    assert digest(members=(a1, dataclasses.replace(a2, width=4000))) == base  # same source either way
    # The PDF page size is not in a ZIP, nor does a JPEG original's width change what a ZIP holds.
    zip_base = digest(kind=BundleKind.ZIP)
    assert digest(kind=BundleKind.ZIP, settings=dataclasses.replace(SETTINGS, pdf_dpi=300)) == zip_base
    assert digest(members=(dataclasses.replace(a1, width=1000), a2), kind=BundleKind.ZIP) == zip_base


def test_fingerprint_changes_with_the_configuration() -> None:
    base = fingerprint(BUILTIN, SETTINGS)
    assert fingerprint(load_registry(), Settings()) == base
    more = load_registry()
    more.register(Definition("extra"))
    variants = [
        base,
        fingerprint(more, SETTINGS),
        fingerprint(BUILTIN, dataclasses.replace(SETTINGS, pdf_dpi=300)),
        fingerprint(BUILTIN, dataclasses.replace(SETTINGS, institution="A Library")),
        fingerprint(BUILTIN, dataclasses.replace(SETTINGS, pdf_derivative_key="download_large")),
        fingerprint(BUILTIN, dataclasses.replace(SETTINGS, zip_derivative_key="download_large")),
    ]
    assert len(set(variants)) == len(variants)
    assert fingerprint(BUILTIN, dataclasses.replace(SETTINGS, workers=7)) == base  # not a bundle setting


def test_title_words_and_filename() -> None:
    assert title_words("The Quick, Brown Fox jumps") == "the_quick_brown"
    assert title_words("  ") == "work"
    assert title_words("!!! ???") == "work"
    assert title_words("Vol. 2: 1850-1860") == "vol_2_1850"
    assert title_words("a" * 24 + " bb") == "a" * 24  # cut at 25 characters, no trailing underscore
    assert title_words("x" * 40) == "x" * 25
    assert filename(WORK, BundleKind.PDF) == "a_title_w1_pdf.pdf"
    assert filename(dataclasses.replace(WORK, title=""), BundleKind.ZIP) == "work_w1_zip.zip"


def test_a_single_derivative_table_is_refused_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "defs.toml"
    path.write_text('[derivative]\nkey = "k"\n')  # [derivative], not [[derivative]]
    with pytest.raises(ValueError, match=r"write \[\[derivative\]\]"):
        load_registry(str(path))
