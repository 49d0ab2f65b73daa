"""Signing a browser download link, as a site does it (docs/browser.md has the format and a test vector).

    link = sign_link("https://derivatives.example.org", "w1", "pdf", "k1", SECRET, expires=int(time.time()) + 3600)

The service verifies links with the same format (server/links.py); this is the reference for sites,
and what `derivatives sign-link` runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse

VERSION = "derivatives-link-v1"


def sign_link(base_url: str, work_id: str, kind: str, key_id: str, secret: str, expires: int) -> str:
    """The link for one work's `kind` ("pdf" or "zip") bundle, valid until `expires` (Unix seconds)."""
    message = f"{VERSION}\n{work_id}\n{kind}\n{expires}\n{key_id}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).rstrip(b"=").decode()
    query = urllib.parse.urlencode({"expires": expires, "kid": key_id, "sig": sig})
    return f"{base_url.rstrip('/')}/v1/works/{urllib.parse.quote(work_id, safe='')}/bundles/{kind}?{query}"
