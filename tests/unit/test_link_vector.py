"""The signed-link test vector of docs/browser.md, computed here with hmac alone (and by server.links)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from server import links

BASE_URL = "https://derivatives.example.org"
KEY, KEY_ID, WORK_ID, KIND, EXPIRES = "test-secret", "k1", "w1", "pdf", 1893456000
SIGNED = "derivatives-link-v1\nw1\npdf\n1893456000\nk1"
SIG = "XMJ2_bhJXGxEOnodJ3jgEgexm8h6toJTUW1ZcrQjd7M"
LINK = f"{BASE_URL}/v1/works/w1/bundles/pdf?expires=1893456000&kid=k1&sig={SIG}"
DOC = Path(__file__).resolve().parents[2] / "docs" / "browser.md"


def test_the_vector_is_hmac_sha256_base64url_without_padding() -> None:
    message = f"derivatives-link-v1\n{WORK_ID}\n{KIND}\n{EXPIRES}\n{KEY_ID}"
    assert message == SIGNED
    digest = hmac.new(KEY.encode(), message.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == SIG
    assert len(SIG) == 43 and "=" not in SIG


def test_the_doc_states_the_vector() -> None:
    text = DOC.read_text()
    assert LINK in text and SIG in text


def test_server_links_signs_the_vector() -> None:
    assert links.sign_link(BASE_URL, WORK_ID, KIND, KEY_ID, KEY, EXPIRES) == LINK
