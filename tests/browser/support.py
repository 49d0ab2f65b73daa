"""What the browser tests and `make screenshot` share: the server with its HTTP face, works, Chromium, the recorder.

Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`): Playwright's own browser download cannot be
reached everywhere the tests run. Playwright drives it headless over CDP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, Playwright

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub
from tests import images
from tests.harness import Postgres, ServerProcess, free_port, server_env

CHROMIUM = Path("/usr/bin/chromium")
LINK_KEY_ID = "k1"
LINK_SECRET = "test-secret-of-the-browser-tests"  # DERIVATIVES_LINK_KEYS wants at least 16 characters
TIMEOUT_MS = 120_000  # a 2-core machine running the whole suite: generous, never a measure of speed


def launch(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])


class Site:
    """Another site's pages, on a loopback port of their own: another origin than the service's.

    A real server rather than page.route: Chromium lets a page reach a loopback address only from a loopback
    origin (Local Network Access), and a routed page has none.
    """

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, dict[str, str]]] = {}  # path: (HTML, extra headers)
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, headers = pages.get(self.path, ("not found", {}))
                data = body.encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="site", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class HttpServer:
    process: ServerProcess
    base_url: str  # http://127.0.0.1:PORT, the HTTP face


def start_server(postgres: Postgres, directory: Path, cors_origins: str = "") -> HttpServer:
    """`python -m server` with filesystem storage, the HTTP face on a free loopback port and one link key."""
    port = free_port()
    env = server_env(
        "file",
        postgres.new_database("browser"),
        directory / "data",
        None,
        DERIVATIVES_HTTP_LISTEN=f"127.0.0.1:{port}",
        DERIVATIVES_LINK_KEYS=f"{LINK_KEY_ID}={LINK_SECRET}",
        DERIVATIVES_HTTP_CORS_ORIGINS=cors_origins,
    )
    process = ServerProcess(env, directory / "server.log").start()  # waits for the HTTP port too
    return HttpServer(process, f"http://127.0.0.1:{port}")


def signed_link(
    base_url: str,
    work_id: str,
    kind: str,
    expires: int | None = None,
    key_id: str = LINK_KEY_ID,
    secret: str = LINK_SECRET,
) -> str:
    """A signed link computed here with hmac, independently of server.links (docs/browser.md)."""
    expires = int(time.time()) + 3600 if expires is None else expires
    message = f"derivatives-link-v1\n{work_id}\n{kind}\n{expires}\n{key_id}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).rstrip(b"=").decode()
    query = urllib.parse.urlencode({"expires": expires, "kid": key_id, "sig": sig})
    return f"{base_url}/v1/works/{urllib.parse.quote(work_id, safe='')}/bundles/{kind}?{query}"


def make_work(
    stub: DerivativeServiceStub, pages: int, *, broken: int | None = None, title: str = ""
) -> tuple[str, str, list[str]]:
    """A work of `pages` PNG members, uploaded without derivatives: the build makes every page's JPEG.

    PNG originals wider than 1200 px: each page needs a download_medium JPEG, made during the build, so the
    build takes a while and reports progress. `broken` (0-based): that member is a truncated PNG, whose
    header reads but whose pixels cannot be decoded. Returns (work_id, title, asset ids).
    """
    page = images.png(1800, 1350)
    tag = uuid.uuid4().hex[:8]
    ids = [f"br-{tag}-{i + 1}" for i in range(pages)]
    for i, asset_id in enumerate(ids):
        data = page[:400] if i == broken else page
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
    work_id, title = f"w-{tag}", title or f"Browser test work {tag}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title=title, member_asset_ids=ids))
    return work_id, title, ids


# Installed with page.add_init_script, before any script of the page: records what the page shows, for
# assertions after the fact (a progress value may last a few milliseconds: polling the DOM could miss it).
RECORDER = """
(() => {
  const seen = { values: [], texts: [], dialogOpens: 0, violations: [] };
  window.__derivativesTest = seen;
  document.addEventListener("securitypolicyviolation", (event) => {
    seen.violations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sample || ""}`.trim());
  });
  const record = () => {
    const bar = document.querySelector("[role=progressbar]");
    const now = bar && bar.getAttribute("aria-valuenow");
    if (now !== null && now !== undefined && seen.values[seen.values.length - 1] !== Number(now)) {
      seen.values.push(Number(now));
    }
    const status = document.querySelector(".derivatives-status");
    const text = status ? status.textContent : "";
    if (text && seen.texts[seen.texts.length - 1] !== text) seen.texts.push(text);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes" && r.attributeName === "open" && r.target.hasAttribute("open")) {
        seen.dialogOpens += 1;
      }
    }
    record();
  }).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ["aria-valuenow", "open"],
  });
})();
"""
