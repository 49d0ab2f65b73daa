"""Fixtures of the browser tests: one server with its HTTP face and one Chromium per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub
from tests.browser.support import RECORDER, TIMEOUT_MS, HttpServer, Site, launch, start_server
from tests.harness import Postgres


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope, not session: while Playwright's sync API runs, its event loop is the main thread's, and
    # every later test's asyncio.run() would fail ("cannot be called from a running event loop").
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    pages = Site()
    yield pages
    pages.stop()


@pytest.fixture(scope="module")
def http_server(postgres: Postgres, site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_server(postgres, tmp_path_factory.mktemp("browser"), cors_origins=site.origin)
    yield server
    assert server.process.stop() == 0, server.process.tail()


@pytest.fixture(scope="module")
def stub(http_server: HttpServer) -> Iterator[DerivativeServiceStub]:
    with http_server.process.channel() as channel:
        yield DerivativeServiceStub(channel)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(accept_downloads=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(RECORDER)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
