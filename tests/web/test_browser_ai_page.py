"""The AI models page in Swedish, in a real browser: provider types by name, why a model is locked, errors."""

from __future__ import annotations

import pytest
from web_helpers import serious_violations

pytestmark = pytest.mark.browser


@pytest.fixture
async def sv_page(browser):
    """A Swedish page on which axe-core may be injected (the site's CSP forbids inline scripts)."""
    context = await browser.new_context(
        locale="sv-SE", viewport={"width": 1280, "height": 860}, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    yield await context.new_page()
    await context.close()


async def test_a_new_organisation_sees_the_ai_page_in_swedish(sv_page, live_url, org, llm):
    page = sv_page
    await page.goto(f"{live_url}/login")
    await page.get_by_label("E-post").fill(org.owner.email)
    await page.get_by_label("Lösenord").fill(org.owner.password)
    await page.get_by_role("button", name="Logga in").click()
    await page.wait_for_url(f"{live_url}/")
    await page.get_by_role("link", name="Konfigurera AI-modeller").click()
    await page.get_by_role("heading", name="Leverantörer").wait_for()
    body = await page.locator("main").inner_text()
    # The catalogue's cloud models say in Swedish why they cannot be enabled yet.
    assert "is configured" not in body and "provider account" not in body
    assert "Ingen nyckel för openai är inlagd" in body
    # Provider types are named, not given as codes.
    options = await page.get_by_label("Typ", exact=True).locator("option").all_inner_texts()
    assert "OpenAI-kompatibel server" in options and "Azure OpenAI" in options
    assert "openai_compatible" not in options
    assert await serious_violations(page) == []

    # An Azure OpenAI account needs its API version, which the form asks for.
    await page.get_by_label("Leverantörens namn").fill("Azure i Sverige")
    await page.get_by_label("Typ", exact=True).select_option("azure")
    await page.get_by_label("Adress (egna servrar och kompatibla tjänster)").fill(
        "https://example.openai.azure.com"
    )
    await page.get_by_label("API-version (bara Azure OpenAI)").fill("2024-10-21")
    await page.get_by_label("API-nyckel").fill("azure-key-12345678")
    await page.get_by_role("button", name="Lägg till leverantör").click()
    await page.get_by_text("Leverantören är tillagd.").wait_for()
    row = page.locator("tbody tr", has_text="Azure i Sverige")
    assert "Azure OpenAI" in await row.inner_text()

    # A second provider with the same name is refused in Swedish.
    await page.get_by_label("Leverantörens namn").fill("Azure i Sverige")
    await page.get_by_label("Typ", exact=True).select_option("openai_compatible")
    await page.get_by_label("Adress (egna servrar och kompatibla tjänster)").fill(llm.url)
    await page.get_by_role("button", name="Lägg till leverantör").click()
    alert = page.locator(".flash-error")
    await alert.wait_for()
    assert await alert.inner_text() == "Det finns redan en leverantör med det namnet. Välj ett annat namn."
    assert await serious_violations(page) == []
