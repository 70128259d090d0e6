"""Finding, renaming and deleting conversations in a real browser; deleting asks first."""

from __future__ import annotations

import pytest
from web_helpers import serious_violations, sign_in

pytestmark = pytest.mark.browser


@pytest.fixture
async def axe_page(browser):
    """A page on which axe-core may be injected (the site's CSP forbids inline scripts)."""
    context = await browser.new_context(
        locale="en-GB", viewport={"width": 1280, "height": 860}, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    yield await context.new_page()
    await context.close()


async def test_rename_search_and_delete_a_conversation(axe_page, live_url, chat_org, llm):
    page = axe_page
    llm.script(answer="The application is due on 1 March.", delay_per_token=0.0)
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.get_by_label("Your question").fill("When is the application due?")
    await page.keyboard.press("Enter")
    await page.locator(".bubble.answer .model-used").wait_for()
    await page.wait_for_url("**/?c=*")
    # The new conversation's title and its actions are there at once, without a reload.
    assert await page.locator("#chat-h").inner_text() == "My assistant · When is the application due?"

    await page.get_by_text("Rename or delete").click()
    await page.get_by_label("New name").fill("Building permit dates")
    await page.get_by_role("button", name="Rename", exact=True).click()
    await page.get_by_text("The conversation is renamed.").wait_for()
    assert await page.locator("#conversation-items a", has_text="Building permit dates").count() == 1
    assert await serious_violations(page) == []

    await page.get_by_label("Search conversations").fill("permit")
    await page.get_by_role("button", name="Search", exact=True).click()
    await page.locator("#conversation-items a", has_text="Building permit dates").wait_for()
    await page.get_by_label("Search conversations").fill("nothing like this")
    await page.get_by_role("button", name="Search", exact=True).click()
    await page.get_by_text("No conversations match.").wait_for()

    await page.goto(f"{live_url}/")
    await page.locator("#conversation-items a", has_text="Building permit dates").click()
    await page.get_by_text("Rename or delete").click()
    # Deleting asks first; saying no keeps the conversation.
    questions = []

    async def answer(dialog, accept):
        questions.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda dialog: answer(dialog, False))
    await page.get_by_role("button", name="Delete conversation").click()
    assert questions and "cannot be undone" in questions[0]
    assert "/?c=" in page.url
    page.once("dialog", lambda dialog: answer(dialog, True))
    await page.get_by_role("button", name="Delete conversation").click()
    await page.get_by_text("The conversation is deleted.").wait_for()
    assert await page.locator("#conversation-items a", has_text="Building permit dates").count() == 0
