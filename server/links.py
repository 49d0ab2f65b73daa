"""Signed download links: how a site lets an anonymous browser start and fetch one work's bundle.

The site and the service share a key (DERIVATIVES_LINK_KEYS: `KEY_ID=SECRET`, several for rotation).
A link names a work, a kind, an expiry and the key id, and carries

    sig = base64url_nopad(HMAC-SHA256(secret, "derivatives-link-v1\\n{work_id}\\n{kind}\\n{expires}\\n{kid}"))

as `/v1/works/{work_id}/bundles/{kind}?expires={unix seconds}&kid={kid}&sig={sig}`. docs/browser.md
specifies it with a test vector, which the tests check against this verifier and against the reference
signer sites use (client/links.py, also `derivatives sign-link`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from dataclasses import dataclass

from core.config import Settings, split_list
from core.errors import PermissionDenied, Reason

VERSION = "derivatives-link-v1"
KINDS = ("pdf", "zip")
DEMO_KEY_ID = "demo"  # a key made at start-up when none is configured: the demo page's links only


def signed_string(work_id: str, kind: str, expires: int, key_id: str) -> str:
    return f"{VERSION}\n{work_id}\n{kind}\n{expires}\n{key_id}"


def signature(secret: str, work_id: str, kind: str, expires: int, key_id: str) -> str:
    mac = hmac.new(secret.encode(), signed_string(work_id, kind, expires, key_id).encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def sign_link(base_url: str, work_id: str, kind: str, key_id: str, secret: str, expires: int) -> str:
    """The link a site puts in its page (`base_url`: where the service's HTTP face is, no trailing slash)."""
    query = urllib.parse.urlencode(
        {"expires": expires, "kid": key_id, "sig": signature(secret, work_id, kind, expires, key_id)}
    )
    return f"{base_url.rstrip('/')}/v1/works/{urllib.parse.quote(work_id, safe='')}/bundles/{kind}?{query}"


def new_secret() -> str:
    """A fresh link key secret (256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass
class LinkKeys:
    keys: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkKeys:
        keys = dict(entry.partition("=")[::2] for entry in split_list(settings.link_keys))
        if not keys:  # zero configuration: a key of this process's own, for the demo page's links
            keys[DEMO_KEY_ID] = new_secret()
        return cls(keys)

    @property
    def configured(self) -> bool:
        return DEMO_KEY_ID not in self.keys

    def sign(self, base_url: str, work_id: str, kind: str, ttl_seconds: int = 86400) -> str:
        key_id, secret = next(iter(self.keys.items()))
        return sign_link(base_url, work_id, kind, key_id, secret, int(time.time()) + ttl_seconds)

    def verify(self, work_id: str, kind: str, expires: str, key_id: str, sig: str) -> None:
        """PermissionDenied unless the link is signed by a known key, untampered and not expired."""
        secret = self.keys.get(key_id)
        if secret is None or not expires.isdigit() or not sig:
            raise PermissionDenied("not a signed download link (or an unknown key id)", Reason.LINK_INVALID)
        expected = signature(secret, work_id, kind, int(expires), key_id)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise PermissionDenied("the download link's signature does not match", Reason.LINK_INVALID)
        if int(expires) < time.time():
            raise PermissionDenied("the download link has expired", Reason.LINK_EXPIRED)
