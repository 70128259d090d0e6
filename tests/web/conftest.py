"""Browser fixtures: Playwright's async API driving Debian's Chromium, in the test event loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ALLTING_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@pytest.fixture(scope="session")
async def browser():
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser):
    made = await browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 860})
    made.set_default_timeout(10_000)
    yield made
    await made.close()


@pytest.fixture
async def page(context):
    return await context.new_page()
