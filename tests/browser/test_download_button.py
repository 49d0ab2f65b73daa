"""The download button (server/static/downloader.js) in headless Chromium, against a real server's HTTP face.

Every page is the demo page (GET /), served through page.route with `Content-Security-Policy: default-src 'self'`
added; a console CSP message, a `securitypolicyviolation` event or an uncaught error fails the test.
"""

from __future__ import annotations

import html.parser
import io
import json
import re
import string
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pypdf
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Download, Locator, Page, Route, expect

from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub
from tests.browser.support import TIMEOUT_MS, HttpServer, Site, make_work, signed_link

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"
CSP = "default-src 'self'"


@dataclass
class Demo:
    """The demo page under a strict CSP, and what went wrong on it."""

    page: Page
    base_url: str
    problems: list[str] = field(default_factory=list)

    def row(self, title: str) -> Locator:
        return self.page.locator("li").filter(has=self.page.locator(".title", has_text=title))

    def link(self, title: str, kind: str) -> Locator:
        return self.row(title).get_by_role("link", name=kind, exact=True)

    def dialog(self) -> Locator:
        return self.page.locator("dialog.derivatives-dialog")

    def seen(self) -> dict[str, Any]:
        recorded: dict[str, Any] = self.page.evaluate("window.__derivativesTest")
        return recorded

    def violations(self) -> list[str]:
        return [*self.problems, *self.seen()["violations"]]


def open_demo(page: Page, base_url: str) -> Demo:
    demo = Demo(page, base_url)

    def with_csp(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            demo.problems.append(f"console: {message.text}")

    page.route(f"{base_url}/", with_csp)
    page.on("console", console)
    page.on("pageerror", lambda error: demo.problems.append(f"uncaught: {error}"))
    response = page.goto(f"{base_url}/")
    assert response is not None and response.ok, response and response.status
    assert CSP in (response.headers.get("content-security-policy") or "")
    expect(page.locator("html")).to_have_attribute("data-derivatives-downloader", "ready")
    return demo


@pytest.fixture
def demo(page: Page, http_server: HttpServer) -> Iterator[Demo]:
    demo = open_demo(page, http_server.base_url)
    yield demo
    assert demo.violations() == []


def pdf_pages(download: Download) -> int:
    return len(pypdf.PdfReader(io.BytesIO(Path(download.path()).read_bytes())).pages)


# --- the button ----------------------------------------------------------------------------------


def test_pdf_of_30_pages_shows_progress_then_downloads_then_downloads_at_once(
    stub: DerivativeServiceStub, http_server: HttpServer, demo: Demo
) -> None:
    _, title, _ = make_work(stub, 30)
    demo.page.reload()  # the page lists the works there are when it is served
    link = demo.link(title, "PDF")
    with demo.page.expect_download(timeout=TIMEOUT_MS) as first:
        link.click()
        dialog = demo.page.get_by_role("dialog", name="Preparing your PDF")
        expect(dialog).to_be_visible()
        progressbar = dialog.get_by_role("progressbar")
        expect(progressbar).to_have_attribute("aria-valuemin", "0")
        expect(progressbar).to_have_attribute("aria-valuemax", "30")
    download = first.value
    assert download.suggested_filename.endswith(".pdf")
    assert pdf_pages(download) == 30
    expect(demo.dialog()).to_be_hidden()

    seen = demo.seen()
    values = seen["values"]
    assert values == sorted(values), f"aria-valuenow went down: {values}"
    assert len(set(values)) >= 3, f"aria-valuenow took fewer than 3 values: {values}"
    assert values[-1] == 30, values
    assert any(re.fullmatch(r"Preparing \d+ of 30 pages", text) for text in seen["texts"]), seen["texts"]
    assert seen["dialogOpens"] == 1

    with demo.page.expect_download(timeout=TIMEOUT_MS) as again:  # built: at once, no dialog
        link.click()
    assert pdf_pages(again.value) == 30
    assert demo.seen()["dialogOpens"] == 1
    expect(demo.dialog()).to_be_hidden()


def test_an_unrenderable_member_shows_the_reason_and_retry(stub: DerivativeServiceStub, demo: Demo) -> None:
    _, title, ids = make_work(stub, 3, broken=1)
    demo.page.reload()
    demo.link(title, "PDF").click()
    dialog = demo.page.get_by_role("dialog", name="Your PDF could not be prepared")
    expect(dialog).to_be_visible()
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text(f"member 2 (asset {ids[1]})")
    retry = dialog.get_by_role("button", name="Retry")
    expect(retry).to_be_focused()
    with demo.page.expect_request(lambda r: r.method == "POST" and "/bundles/pdf" in r.url):
        retry.click()
    expect(alert).to_contain_text(f"member 2 (asset {ids[1]})")  # not rebuilt before the retry delay
    dialog.get_by_role("button", name="Close").click()
    expect(demo.dialog()).to_be_hidden()
    expect(demo.link(title, "PDF")).to_be_focused()


def test_zip_with_polling_when_eventsource_is_missing(stub: DerivativeServiceStub, demo: Demo) -> None:
    _, title, _ = make_work(stub, 6)
    demo.page.add_init_script("delete window.EventSource;")
    demo.page.reload()
    assert demo.page.evaluate("typeof EventSource") == "undefined"
    polled: list[str] = []
    demo.page.on("request", lambda r: polled.append(r.url) if re.search(r"/v1/bundles/[^/?]+$", r.url) else None)
    with demo.page.expect_download(timeout=TIMEOUT_MS) as info:
        demo.link(title, "ZIP").click()
        expect(demo.page.get_by_role("dialog", name="Preparing your ZIP")).to_be_visible()
    archive = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert len([n for n in archive.namelist() if n.endswith(".jpg")]) == 6
    assert polled, "the bundle was never polled"
    expect(demo.dialog()).to_be_hidden()


def test_a_site_of_another_origin_needs_only_the_two_lines(
    stub: DerivativeServiceStub, http_server: HttpServer, site: Site, page: Page
) -> None:
    """The real use: a site's page (another origin, allowed by DERIVATIVES_HTTP_CORS_ORIGINS, under a CSP that
    allows the service) with the script tag and one signed link made by the site; the download crosses origins."""
    work_id, _, _ = make_work(stub, 4)
    service = http_server.base_url
    site.pages[f"/works/{work_id}"] = (
        f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>A work</title>
<script type="module" src="{service}/downloader.js"></script></head><body>
<a data-derivatives-download href="{signed_link(service, work_id, "pdf")}">Download PDF</a></body></html>""",
        {"content-security-policy": f"default-src 'self' {service}"},
    )
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "status of" not in m.text else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.route(f"{site.origin}/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{site.origin}/works/{work_id}")
    expect(page.locator("html")).to_have_attribute("data-derivatives-downloader", "ready")
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        page.get_by_role("link", name="Download PDF").click()
        expect(page.get_by_role("dialog", name="Preparing your PDF")).to_be_visible()
    assert pdf_pages(info.value) == 4
    expect(page.locator("dialog.derivatives-dialog")).to_be_hidden()
    assert problems == [] and page.evaluate("window.__derivativesTest.violations") == []


def test_the_page_is_under_a_strict_csp_and_violations_would_be_seen(demo: Demo) -> None:
    # The policy is in force: a style attribute (which downloader.js never sets) is refused and reported.
    demo.page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">x</p>')")
    deadline = time.monotonic() + 60
    while not (demo.problems and demo.seen()["violations"]) and time.monotonic() < deadline:
        demo.page.wait_for_timeout(100)
    assert any("style" in v for v in demo.problems), demo.problems  # the console message
    assert any("style" in v for v in demo.seen()["violations"]), demo.seen()  # the event
    demo.problems.clear()
    demo.page.evaluate("window.__derivativesTest.violations.length = 0")


def test_without_javascript_the_link_waits_then_downloads(
    stub: DerivativeServiceStub, http_server: HttpServer, browser: Browser
) -> None:
    _, title, _ = make_work(stub, 5)
    context = browser.new_context(java_script_enabled=False, accept_downloads=True)
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(f"{http_server.base_url}/")
        link = page.locator("li").filter(has=page.locator(".title", has_text=title)).get_by_role("link", name="PDF")
        with page.expect_download(timeout=TIMEOUT_MS) as info:
            link.click()
        assert pdf_pages(info.value) == 5
    finally:
        context.close()


# --- plain HTTP ----------------------------------------------------------------------------------


def post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_a_link_signed_here_works_and_a_tampered_or_expired_one_is_403(
    stub: DerivativeServiceStub, http_server: HttpServer
) -> None:
    work_id, _, _ = make_work(stub, 1)
    base = http_server.base_url
    good = signed_link(base, work_id, "zip")
    status, bundle = post(good)
    assert status == 200, bundle
    assert bundle["workId"] == work_id and bundle["kind"] == "BUNDLE_KIND_ZIP" and bundle["bundleId"]

    sig = re.search(r"sig=([^&]+)", good)
    assert sig is not None
    flipped = sig[1][:-1] + ("A" if sig[1][-1] != "A" else "B")
    tampered = {
        "signature": good.replace(sig[1], flipped),
        "kind": good.replace("/bundles/zip?", "/bundles/pdf?"),
        "work": signed_link(base, work_id, "zip").replace(f"/works/{work_id}/", f"/works/{work_id}x/"),
        "expiry": re.sub(r"expires=(\d+)", lambda m: f"expires={int(m[1]) + 1}", good),
        "key id": signed_link(base, work_id, "zip", key_id="k9"),
        "unsigned": f"{base}/v1/works/{work_id}/bundles/zip",
    }
    for what, url in tampered.items():
        status, body = post(url)
        assert status == 403, (what, status, body)
        assert body["error"]["status"] == 403 and body["error"]["reason"] == "LINK_INVALID", (what, body)
        assert "Traceback" not in json.dumps(body)

    status, body = post(signed_link(base, work_id, "zip", expires=int(time.time()) - 60))
    assert status == 403 and body["error"]["reason"] == "LINK_EXPIRED", body


def test_downloader_js_is_served_for_any_origin(http_server: HttpServer) -> None:
    with urllib.request.urlopen(f"{http_server.base_url}/downloader.js", timeout=60) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers.get_content_type() == "text/javascript"
        assert response.read() == (STATIC / "downloader.js").read_bytes()


# --- the templates (no browser) ------------------------------------------------------------------


class _Checker(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.lang = ""
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "html":
            self.lang = named.get("lang") or ""
        if tag == "script":
            self.scripts.append(named)
            if not named.get("src"):
                self.problems.append("an inline script")
        if tag == "style":
            self.problems.append("a <style> element")
        for name in named:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"a {name} attribute on <{tag}>")

    def handle_decl(self, decl: str) -> None:
        if decl.lower() != "doctype html":
            self.problems.append(f"doctype {decl}")


@pytest.mark.parametrize(
    ("name", "fields"),
    [("demo.html", {"works"}), ("wait.html", {"title", "message", "refresh", "refresh_url", "file_url"})],
)
def test_templates_are_strict_csp_html5_with_documented_fields(name: str, fields: set[str]) -> None:
    text = (STATIC / name).read_text()
    assert {f for _, f, _, _ in string.Formatter().parse(text) if f is not None} == fields
    rendered = text.format(**{f: "x" for f in fields})
    assert "<!DOCTYPE html>" in rendered
    checker = _Checker()
    checker.feed(rendered)
    assert checker.problems == []
    assert checker.lang == "en"
    if name == "demo.html":
        assert checker.scripts == [{"type": "module", "src": "/downloader.js"}]
    else:
        assert checker.scripts == []
