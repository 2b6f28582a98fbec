"""Browser fixtures: the end-to-end harness (real ``fleetwave serve`` and ``agent-sim`` over
mutual TLS on PostgreSQL) and Debian's chromium, driven headless by Playwright.

Playwright's sync API runs in one worker thread per test (``in_browser``), so the trio tests
keep their harness and the browser never shares trio's thread. No browser is downloaded:
``make test-browser`` installs Debian's chromium when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from tests.e2e.conftest import (
    _leftovers,
    certs,
    database_url,
    harness,
    postgres_server,
    pytest_runtest_makereport,
)
from tests.e2e.harness import REPO

__all__ = [
    "_leftovers",
    "certs",
    "database_url",
    "harness",
    "postgres_server",
    "pytest_runtest_makereport",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}

T = TypeVar("T")

UPDATE_SCREENSHOTS = "FLEETWAVE_UPDATE_SCREENSHOTS"
"""Set to 1 to write the screenshots to docs/images (the pictures docs/dashboard.md shows)."""
IMAGES = REPO / "docs" / "images"


@pytest.fixture(scope="session", autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run make test-browser (it installs Debian's chromium)")


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save their screenshots: a temporary directory of this run (pytest
    keeps the last few), or docs/images when FLEETWAVE_UPDATE_SCREENSHOTS=1."""
    if os.environ.get(UPDATE_SCREENSHOTS) == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        return IMAGES
    return tmp_path_factory.mktemp("screenshots")


async def in_browser(scenario: Callable[..., T], *args: object) -> T:
    """Run ``scenario(page, *args)`` in a worker thread with a fresh headless chromium page;
    every request the page makes is recorded in ``page.requested`` (a list of URLs)."""

    def run() -> T:
        from playwright.sync_api import sync_playwright

        # Playwright runs asyncio in this thread: a plain loop, not trio-asyncio's (which the
        # store's modules install as the default when imported; per thread, it can be set).
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport=VIEWPORT)
                page = context.new_page()
                page.set_default_timeout(30_000)
                requested: list[str] = []
                page.on("request", lambda request: requested.append(request.url))
                page.requested = requested  # type: ignore[attr-defined]
                return scenario(page, *args)
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)
