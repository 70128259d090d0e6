"""The chat in a real browser: sign in, streamed answers, stopping, keyboard use and hostile output."""

from __future__ import annotations

import asyncio

import pytest
from web_helpers import sign_in

pytestmark = pytest.mark.browser


async def test_sign_in_and_a_streamed_answer(page, live_url, chat_org, llm):
    llm.script(answer="Hello **there**, here is a list:\n\n- one\n- two\n", delay_per_token=0.01)
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.get_by_label("Your question").fill("Say hello")
    await page.get_by_role("button", name="Send").click()
    answer = page.locator(".bubble.answer .markdown").last
    await answer.locator("strong", has_text="there").wait_for()
    await page.locator(".bubble.answer .model-used").last.wait_for()
    assert await answer.locator("li").count() == 2
    assert "/?c=" in page.url
    # The conversation is in the list and survives a reload.
    await page.reload()
    assert await page.locator(".bubble.answer .markdown strong").count() == 1


async def test_stop_a_streaming_answer(page, live_url, chat_org, llm):
    llm.script(answer=" ".join(["word"] * 400), delay_per_token=0.05)
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.get_by_label("Your question").fill("Talk for a long time")
    await page.get_by_role("button", name="Send").click()
    stop = page.get_by_role("button", name="Stop")
    await stop.wait_for()
    await page.locator(".bubble.answer .markdown").last.filter(has_text="word").wait_for()
    await stop.click()
    await page.locator(".bubble.answer .hint", has_text="Stopped").wait_for()
    assert await stop.is_hidden()
    for _ in range(50):
        if llm.state.cancelled_streams:
            break
        await asyncio.sleep(0.1)
    assert llm.state.cancelled_streams >= 1


async def test_the_chat_with_the_keyboard_only(page, live_url, chat_org, llm):
    llm.script(answer="Keyboard answer", delay_per_token=0.01)
    await page.goto(f"{live_url}/login")
    # The e-mail field has focus on arrival.
    assert await page.evaluate("document.activeElement.id") == "email"
    await page.keyboard.type(chat_org.owner.email)
    await page.keyboard.press("Tab")
    await page.keyboard.type(chat_org.owner.password)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{live_url}/")
    # The first Tab reaches the skip link, which leads to the content.
    first = await page.evaluate(
        "document.querySelector('a[href], button, input, textarea, select').className"
    )
    assert first == "skip-link"
    assert await page.evaluate("document.activeElement.id") == "question"
    await page.keyboard.type("Hello from the keyboard")
    await page.keyboard.press("Enter")
    await page.locator(".bubble.answer .markdown", has_text="Keyboard answer").wait_for()
    await page.locator(".bubble.answer .model-used").wait_for()
    # Feedback is reachable with Tab and works with Enter.
    thumbs = page.get_by_role("button", name="Good answer")
    await thumbs.focus()
    await page.keyboard.press("Enter")
    await page.locator('[data-feedback="1"][aria-pressed="true"]').wait_for()


async def test_model_output_cannot_run_scripts_or_load_external_images(page, live_url, chat_org, llm):
    hostile = (
        "Look: <script>window.__pwned = 1</script> "
        '<img src="http://evil.example/x.png" onerror="window.__pwned = 2"> '
        "![tracker](http://evil.example/y.png) "
        '<a href="javascript:window.__pwned=3">click</a> '
        '[link](javascript:alert(1)) <iframe src="http://evil.example/"></iframe> done'
    )
    llm.script(answer=hostile, delay_per_token=0.0)
    outside = []
    page.on("request", lambda request: outside.append(request.url) if live_url not in request.url else None)
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.get_by_label("Your question").fill("Be hostile")
    await page.get_by_role("button", name="Send").click()
    await page.locator(".bubble.answer .markdown", has_text="done").wait_for()
    await page.locator(".bubble.answer .model-used").wait_for()
    await page.reload()
    await page.locator(".bubble.answer .markdown", has_text="done").wait_for()
    # Whatever the rendered answer made the page fetch (an image, a frame) has been asked for by now.
    await page.wait_for_load_state("networkidle")
    assert await page.evaluate("window.__pwned") is None
    answer = page.locator(".bubble.answer .markdown").last
    assert await answer.locator("img, iframe, script").count() == 0
    assert await answer.locator("[onerror]").count() == 0
    hrefs = await answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert all(href is None or href.startswith(("http", "mailto", "#")) for href in hrefs)
    assert outside == []


async def test_after_a_wrong_password_the_keyboard_is_in_the_password_field(page, live_url, chat_org):
    await page.goto(f"{live_url}/login")
    await page.keyboard.type(chat_org.owner.email)
    await page.keyboard.press("Tab")
    await page.keyboard.type("not the password")
    await page.keyboard.press("Enter")
    await page.get_by_role("alert").wait_for()
    assert await page.evaluate("document.activeElement.id") == "password"
    assert await page.get_by_label("E-mail").input_value() == chat_org.owner.email
    await page.keyboard.type(chat_org.owner.password)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{live_url}/")
