"""`make screenshot`: docs/download-dialog.png, the demo page's download dialog while a PDF is built.

Starts its own Postgres and server (like tests/browser), adds a work of 80 PNG pages (each needs its JPEG made
during the build, so the build lasts long enough to be seen), opens the demo page in headless Chromium, clicks
PDF, and saves the page once the progress bar has moved.

    .venv/bin/python -m tests.browser.screenshot [OUTPUT.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub
from tests.browser.support import RECORDER, TIMEOUT_MS, launch, make_work, start_server
from tests.harness import ROOT, Postgres

PAGES = 80
TITLE = "Letters from the Front, 1916"


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp:
        postgres = Postgres(Path(tmp) / "pg")
        try:
            server = start_server(postgres, Path(tmp))
            try:
                with server.process.channel() as channel:
                    stub = DerivativeServiceStub(channel)
                    make_work(stub, 3, title="A Herbal of 1597, volume 1")
                    make_work(stub, PAGES, title=TITLE)
                with sync_playwright() as playwright:
                    browser = launch(playwright)
                    page = browser.new_page(viewport={"width": 960, "height": 600}, device_scale_factor=1)
                    page.add_init_script(RECORDER)
                    page.goto(f"{server.base_url}/")
                    row = page.locator("li").filter(has=page.locator(".title", has_text=TITLE))
                    row.get_by_role("link", name="PDF", exact=True).click()
                    dialog = page.get_by_role("dialog", name="Preparing your PDF")
                    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
                    page.wait_for_function(
                        "() => Number(document.querySelector('[role=progressbar]')"
                        "?.getAttribute('aria-valuenow') || 0) >= 8",
                        timeout=TIMEOUT_MS,
                    )
                    page.wait_for_timeout(400)  # the bar's width transition
                    if not dialog.is_visible():
                        raise RuntimeError("the build ended before the screenshot: try again on a busier machine")
                    output.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(output))
                    browser.close()
            finally:
                server.process.stop()
        finally:
            postgres.stop()
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "download-dialog.png")
