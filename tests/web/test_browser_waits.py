"""Refused and failed requests in a real browser: a rate limit says how long to wait, in Swedish and English,
and a provider's error in a streamed answer is shown in the page's language, also after a reload."""

from __future__ import annotations

import json

import pytest
from web_helpers import serious_violations, sign_in

pytestmark = pytest.mark.browser


def _refuse(status: int, body: dict, headers: dict | None = None):
    async def handler(route):
        if route.request.method != "POST":
            await route.continue_()
            return
        await route.fulfill(
            status=status,
            content_type="application/json",
            headers=headers or {},
            body=json.dumps({"details": None, "correlation_id": "test", **body}),
        )

    return handler


async def _to_swedish(page) -> None:
    """Switch the page to Swedish and wait until its scripts run (an early Enter would not send)."""
    async with page.expect_navigation(wait_until="load"):
        await page.get_by_role("button", name="Svenska").click()


RATE_LIMITED = {"code": "rate_limited", "message": "Too many requests; slow down"}


async def _failed_answer_in_swedish(page, live_url: str, org) -> str:
    """Ask a question on a Swedish chat page whose answer the stub fails; the error the page shows."""
    await sign_in(page, live_url, org.owner.email, org.owner.password)
    await _to_swedish(page)
    await page.get_by_label("Din fråga").fill("Hej?")
    await page.keyboard.press("Enter")
    failure = page.locator(".bubble.answer .error-text").last
    await failure.wait_for()
    return await failure.inner_text()


@pytest.fixture
async def axe_page(browser):
    """A page on which axe-core may be injected (the site's CSP forbids inline scripts)."""
    context = await browser.new_context(
        locale="en-GB", viewport={"width": 1280, "height": 860}, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    yield await context.new_page()
    await context.close()


async def test_a_rate_limited_question_says_how_many_seconds_to_wait(axe_page, live_url, chat_org):
    page = axe_page
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.route("**/api/v1/conversations/", _refuse(429, RATE_LIMITED, {"Retry-After": "30"}))
    await page.get_by_label("Your question").fill("Hello?")
    await page.keyboard.press("Enter")
    failure = page.locator(".bubble.answer .error-text").last
    await failure.wait_for()
    assert "Too many requests. Try again in 30 seconds." in await failure.inner_text()
    assert await page.get_by_role("button", name="Send").is_enabled()
    assert await serious_violations(page) == []

    await _to_swedish(page)
    await page.get_by_label("Din fråga").fill("Hej?")
    await page.keyboard.press("Enter")
    failure = page.locator(".bubble.answer .error-text").last
    await failure.wait_for()
    text = await failure.inner_text()
    assert "För många förfrågningar. Försök igen om 30 sekunder." in text, text
    # The status line for screen readers says the same.
    await page.locator("#chat-status", has_text="30 sekunder").wait_for(state="attached")


async def test_a_budget_that_resets_next_month_gives_its_date_not_a_count_of_seconds(
    page, live_url, chat_org
):
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await _to_swedish(page)
    budget = {
        "code": "budget_exceeded",
        "message": "The monthly budget of 1,000 tokens for your account is used up; it resets on 2026-12-01",
    }
    await page.route("**/api/v1/conversations/", _refuse(429, budget, {"Retry-After": "250000"}))
    await page.get_by_label("Din fråga").fill("Hej?")
    await page.keyboard.press("Enter")
    failure = page.locator(".bubble.answer .error-text").last
    await failure.wait_for()
    text = await failure.inner_text()
    assert "2026-12-01" in text and "token" in text, text
    assert "Försök igen om" not in text


async def test_a_rate_limited_attachment_says_how_long_to_wait(page, live_url, chat_org):
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await _to_swedish(page)
    await page.get_by_label("Din fråga").wait_for()
    # The wait can come in the error's details instead of the header.
    await page.route("**/api/v1/files/", _refuse(429, {**RATE_LIMITED, "details": {"retry_after": 12}}))
    await page.locator("#attach").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Some notes"}
    )
    item = page.locator("#attachments .error-text")
    await item.wait_for()
    text = await item.inner_text()
    assert "notes.txt" in text and "Försök igen om 12 sekunder." in text, text
    # Long waits are said in minutes.
    await page.unroute("**/api/v1/files/")
    await page.route(
        "**/api/v1/files/",
        _refuse(503, {"code": "service_unavailable", "message": "Down"}, {"Retry-After": "150"}),
    )
    await page.locator("#attach").set_input_files(
        {"name": "more.txt", "mimeType": "text/plain", "buffer": b"More notes"}
    )
    item = page.locator("#attachments .error-text", has_text="more.txt")
    await item.wait_for()
    assert "Försök igen om 3 minuter." in await item.inner_text()


async def test_a_rate_limited_upload_to_a_collection_says_how_long_to_wait(axe_page, live_url, chat_org):
    page = axe_page
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Bygglov"})).json()
    collection = await owner.post(
        "/api/v1/collections/", json={"space_id": space["id"], "name": "Riktlinjer"}
    )
    assert collection.status_code in (200, 201), collection.text
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    await _to_swedish(page)
    section = page.locator(".collection", has_text="Riktlinjer")
    await section.wait_for()
    await page.route("**/documents/", _refuse(429, RATE_LIMITED, {"Retry-After": "1"}))
    await section.locator("input[type=file]").set_input_files(
        {"name": "riktlinje.md", "mimeType": "text/markdown", "buffer": b"# Riktlinje\n\nText."}
    )
    alert = section.locator("[role=alert]", has_text="riktlinje.md")
    await alert.wait_for()
    text = await alert.inner_text()
    assert "För många förfrågningar. Försök igen om 1 sekund." in text, text
    assert await serious_violations(page) == []


async def test_a_rate_limited_provider_in_a_streamed_answer_says_how_long_it_asked_to_wait(
    axe_page, live_url, chat_org, llm
):
    llm.script(error=429, retry_after=120)
    text = await _failed_answer_in_swedish(axe_page, live_url, chat_org)
    assert "AI-leverantören är upptagen. Försök igen om 2 minuter." in text, text
    assert await axe_page.get_by_role("button", name="Skicka").is_enabled()


async def test_a_provider_error_in_a_streamed_answer_is_shown_in_swedish_also_after_a_reload(
    axe_page, live_url, chat_org, llm
):
    page = axe_page
    llm.script(error="model_not_found")
    live_text = await _failed_answer_in_swedish(page, live_url, chat_org)
    assert "känner inte till den här modellen" in live_text, live_text
    await page.wait_for_url("**/?c=*")
    await page.reload()
    failure = page.locator(".bubble.answer .error-text").last
    await failure.wait_for()
    assert "känner inte till den här modellen" in await failure.inner_text()
    assert await page.locator(".bubble.answer .hint", has_text="Stoppad").count() == 0
    assert await serious_violations(page) == []
