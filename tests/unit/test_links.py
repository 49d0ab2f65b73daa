"""Signed links: the reference signer sites use (client/links.py) and the service's verifier agree."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from client.links import sign_link as site_sign
from core.config import load_settings
from core.errors import PermissionDenied
from server.links import LinkKeys, sign_link


def _parts(link: str) -> tuple[str, str, dict[str, str]]:
    url = urllib.parse.urlsplit(link)
    _, _, _, work_id, _, kind = url.path.split("/")  # /v1/works/{work_id}/bundles/{kind}
    return urllib.parse.unquote(work_id), kind, dict(urllib.parse.parse_qsl(url.query))


def test_the_site_signer_and_the_service_agree() -> None:
    expires = int(time.time()) + 60
    for work_id in ("w1", "a.b-c_9", "x" * 128):
        assert site_sign("https://d.example/", work_id, "zip", "k1", "s" * 20, expires) == sign_link(
            "https://d.example", work_id, "zip", "k1", "s" * 20, expires
        )
    keys = LinkKeys.from_settings(load_settings({"DERIVATIVES_LINK_KEYS": "k1=" + "s" * 20}))
    work_id, kind, q = _parts(site_sign("https://d.example", "w1", "pdf", "k1", "s" * 20, expires))
    keys.verify(work_id, kind, q["expires"], q["kid"], q["sig"])
    with pytest.raises(PermissionDenied):
        keys.verify("w2", kind, q["expires"], q["kid"], q["sig"])
    with pytest.raises(PermissionDenied):
        keys.verify(work_id, kind, str(int(q["expires"]) + 1), q["kid"], q["sig"])


def test_without_configured_keys_a_demo_key_of_its_own() -> None:
    keys = LinkKeys.from_settings(load_settings({}))
    assert not keys.configured
    work_id, kind, q = _parts(keys.sign("http://127.0.0.1:8080", "w1", "pdf"))
    keys.verify(work_id, kind, q["expires"], q["kid"], q["sig"])
    with pytest.raises(ValueError, match="KEY_ID=SECRET"):
        load_settings({"DERIVATIVES_LINK_KEYS": "k1=short"})
