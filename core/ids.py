"""Validation of identifiers that clients send."""

from __future__ import annotations

import re
import uuid

from core.errors import InvalidArgument

CALLER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DERIVATIVE_KEY = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
SHA512_HEX = re.compile(r"[0-9a-f]{128}")
# S3 bucket names (also what the filesystem backend accepts); core.config checks configured buckets with it.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_caller_id(value: str, field: str, violations: list[tuple[str, str]]) -> None:
    if not value:
        violations.append((field, "required"))
    elif not CALLER_ID.fullmatch(value):
        violations.append((field, f"must match {CALLER_ID.pattern}"))


def check_caller_ids(values: list[str], field: str, violations: list[tuple[str, str]], most: int = 20) -> None:
    """Each id of a list, `field[i]`; stops once `most` violations are listed (the reply stays small)."""
    for i, value in enumerate(values):
        check_caller_id(value, f"{field}[{i}]", violations)
        if len(violations) >= most:
            return


def check_key(value: str, field: str, violations: list[tuple[str, str]]) -> None:
    if not value:
        violations.append((field, "required"))
    elif not DERIVATIVE_KEY.fullmatch(value):
        violations.append((field, f"must match {DERIVATIVE_KEY.pattern}"))


def check_text(value: str, field: str, violations: list[tuple[str, str]], limit: int = 4096) -> None:
    """Free text the database stores: no NUL (Postgres text cannot hold it), bounded length."""
    if "\x00" in value:
        violations.append((field, "must not contain NUL characters"))
    elif len(value) > limit:
        violations.append((field, f"at most {limit} characters"))


def require_uuid(value: str, field: str) -> uuid.UUID:
    if not value:
        raise InvalidArgument.one(field, "required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.one(field, "must be a UUID") from None
