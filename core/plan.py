"""The derivative plan: which derivatives should exist for an original. Decided here only.

GetAsset's `derivatives_created`, the job runner and the bundle builder all ask `plan`;
the pool's imaging code asks `would_upscale` with the width it reads from the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from core.definitions import Definition, Registry
from core.records import AssetFailure, FailureClass


class Original(Protocol):
    """What the plan needs to know of an original (an Asset or a work Member)."""

    @property
    def asset_id(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def width(self) -> int: ...


def would_upscale(definition: Definition, width: int) -> bool:
    """We never upscale: a raster original not wider than a size gets no derivative of it.

    A width of 0 (unknown until the file is decoded) is not ruled out here; the pool asks
    again with the decoded width. PDF pages are vector and render at any width.
    """
    return definition.transformer == "jpeg" and 0 < width <= definition.max_width


@dataclass(frozen=True)
class Plan:
    # Definitions to render, sorted by key.
    make: tuple[Definition, ...]
    # Keys asked for by name that no definition covers for this original's type.
    failures: tuple[AssetFailure, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(d.key for d in self.make)


def plan(
    registry: Registry,
    original: Original,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
    have: Iterable[str] = (),
) -> Plan:
    """What to make for one original.

    `only` names keys (default: every key with default_create); `exclude` drops keys;
    `have` lists keys that already exist for the current original (a lazy run skips them).
    Each key resolves to its most specific definition; "none" and sizes the original is
    too narrow for are dropped.
    """
    only, exclude, have = list(only), set(exclude), set(have)
    make = []
    for key in sorted(set(only or registry.default_keys()) - exclude - have):
        definition = registry.resolve(key, original.content_type)
        if definition and definition.transformer != "none" and not would_upscale(definition, original.width):
            make.append(definition)
    failures = tuple(
        AssetFailure(
            original.asset_id,
            key,
            f"no definition of {key!r} applies to {original.content_type}",
            FailureClass.NO_DEFINITION,
        )
        for key in only
        if key not in exclude and registry.resolve(key, original.content_type) is None
    )
    return Plan(tuple(make), failures)


def derivatives_created(registry: Registry, original: Original, existing: Iterable[str]) -> bool:
    """True when every derivative the default plan expects exists (GetAsset)."""
    return not plan(registry, original, have=existing).make


def makes(registry: Registry, original: Original, key: str) -> bool:
    """True when a derivative `key` can be made of this original (bundles choose their sources so)."""
    return bool(plan(registry, original, only=[key]).make)
