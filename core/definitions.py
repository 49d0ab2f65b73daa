"""Derivative definitions: which keys exist, which originals they apply to, how they are made.

Loaded from TOML (`core/definitions.toml` by default, or DERIVATIVES_DEFINITIONS),
and extensible from Python with `Registry.register`. Among the definitions of one
key, the most specific content-type match wins: `image/tiff` > `image` > none.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from core.errors import InvalidArgument, Reason, quote
from core.ids import BUCKET_NAME, DERIVATIVE_KEY

# Built-in transformers (worker/imaging.py); "none" deliberately makes no derivative.
BUILTIN_TRANSFORMERS = ("jpeg", "pdf_page_jpeg", "none")


@dataclass(frozen=True)
class Definition:
    key: str
    transformer: str = "jpeg"
    # Full types (`image/tiff`) or primary types (`image`); empty matches anything.
    content_types: tuple[str, ...] = ()
    default_create: bool = True
    # Bucket for the bytes; empty means the configured derivatives bucket.
    bucket: str = ""
    # 0 = full size. An original not wider than max_width gets no derivative of this key.
    max_width: int = 0
    thumbnail_mode: bool = False
    quality: int = 85
    options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def specificity(self, content_type: str) -> int | None:
        """2 for a full-type match, 1 for a primary-type match, 0 for no filter, None for no match."""
        if not self.content_types:
            return 0
        primary = content_type.split("/", 1)[0]
        if content_type in self.content_types:
            return 2
        if primary in self.content_types:
            return 1
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Definition:
        """A definition from a TOML table; a misspelt field or a value of the wrong type is a ValueError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {sorted(fields)}")
        if "key" not in data:
            raise ValueError("key is required")
        values = dict(data)
        content_types = values.get("content_types", [])
        if not isinstance(content_types, list) or not all(isinstance(t, str) for t in content_types):
            raise ValueError(f"content_types must be a list of strings, not {content_types!r}")
        values["content_types"] = tuple(content_types)
        options = values.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"options must be a table, not {options!r}")
        values["options"] = {str(k): str(v) for k, v in options.items()}
        expected = {
            "key": str,
            "transformer": str,
            "default_create": bool,
            "bucket": str,
            "max_width": int,
            "thumbnail_mode": bool,
            "quality": int,
        }
        for name, kind in expected.items():
            value = values.get(name)
            if name in values and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"{name} must be {kind.__name__}, not {value!r}")
        return cls(**values)


class Registry:
    def __init__(self, definitions: list[Definition] | None = None) -> None:
        self.definitions: list[Definition] = []
        for definition in definitions or []:
            self.register(definition)

    def register(self, definition: Definition) -> None:
        problems = validate(definition, set(BUILTIN_TRANSFORMERS))
        if problems:
            raise ValueError(f"definition {definition.key!r}: " + "; ".join(problems))
        self.definitions.append(definition)

    def keys(self) -> list[str]:
        return sorted({d.key for d in self.definitions})

    def default_keys(self) -> list[str]:
        return sorted({d.key for d in self.definitions if d.default_create})

    def resolve(self, key: str, content_type: str) -> Definition | None:
        """The most specific definition of `key` for `content_type`, or None."""
        best: tuple[int, Definition] | None = None
        for definition in self.definitions:
            if definition.key != key:
                continue
            score = definition.specificity(content_type)
            if score is not None and (best is None or score > best[0]):
                best = (score, definition)
        return best[1] if best else None

    def check_keys(self, only: list[str], exclude: list[str]) -> None:
        known = set(self.keys())
        violations = [
            (f"{name}[{i}]", f"unknown key {quote(key, 60)}")
            for name, keys in (("only", only), ("exclude", exclude))
            for i, key in enumerate(keys)
            if key not in known
        ]
        if violations:  # the valid keys once, on the first
            field, description = violations[0]
            violations[0] = (field, f"{description}; valid keys: {', '.join(sorted(known))}")
            raise InvalidArgument(violations, Reason.UNKNOWN_DERIVATIVE_KEY)

    def buckets(self) -> tuple[str, ...]:
        """Buckets definitions name beyond the default one (created at start-up)."""
        return tuple(sorted({d.bucket for d in self.definitions if d.bucket}))

    def sorted_definitions(self) -> list[Definition]:
        return sorted(self.definitions, key=lambda d: (d.key, -len(d.content_types), d.content_types))


def validate(definition: Definition, transformers: set[str]) -> list[str]:
    problems = []
    if not DERIVATIVE_KEY.fullmatch(definition.key):
        problems.append(f"key must match {DERIVATIVE_KEY.pattern}")
    if definition.transformer not in transformers:
        problems.append(f"unknown transformer {definition.transformer!r}")
    if definition.max_width < 0:
        problems.append("max_width must be >= 0")
    if not 1 <= definition.quality <= 100:
        problems.append("quality must be 1-100")
    if definition.bucket and not BUCKET_NAME.fullmatch(definition.bucket):
        problems.append("bucket must be a valid bucket name")
    return problems


def load_registry(path: str = "") -> Registry:
    """Definitions from a TOML file of `[[derivative]]` tables (the built-in set when empty)."""
    if path:
        text = Path(path).read_text()
    else:
        text = resources.files("core").joinpath("definitions.toml").read_text()
    data = tomllib.loads(text)
    unknown = set(data) - {"derivative"}
    if unknown:
        raise ValueError(f"definitions: unknown tables {sorted(unknown)}")
    registry = Registry()
    entries = data.get("derivative", [])
    if not isinstance(entries, list):
        raise ValueError("derivative must be an array of tables: write [[derivative]], not [derivative]")
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"[[derivative]] #{i}: a table, not {entry!r}")
        try:
            definition = Definition.from_dict(entry)
        except ValueError as exc:
            raise ValueError(f"[[derivative]] #{i} ({entry.get('key', 'no key')!r}): {exc}") from None
        registry.register(definition)
    return registry
