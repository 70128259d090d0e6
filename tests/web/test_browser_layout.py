"""Layout in a real browser: nothing wider than a phone, and focus visible where a control is drawn by a label."""

from __future__ import annotations

import pytest
from web_helpers import SCREENSHOTS, sign_in

pytestmark = pytest.mark.browser

PHONE_PAGES = (
    "/",
    "/spaces",
    "{space}/assistants",
    "{space}/knowledge",
    "{space}/members",
    "{space}/settings",
    "/account",
    "/admin/ai",
    "/admin/users",
    "/admin/usage",
    "/admin/budgets",
    "/admin/audit",
    "/admin/groups",
    "/admin/roles",
)


async def test_no_page_is_wider_than_a_phone(browser, live_url, chat_org):
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Bygglov"})).json()
    await owner.post("/api/v1/collections/", json={"space_id": space["id"], "name": "Riktlinjer"})
    context = await browser.new_context(locale="sv-SE", viewport={"width": 390, "height": 844})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await sign_in_sv(page, live_url, chat_org)
    # A new chat's hint is above the composer, which sticks to the bottom of the screen, not under it.
    intro = await page.locator("#chat-intro").bounding_box()
    composer = await page.locator("#composer").bounding_box()
    assert intro["y"] + intro["height"] <= composer["y"]
    wider = {}
    for path in PHONE_PAGES:
        await page.goto(f"{live_url}{path.format(space='/spaces/' + space['id'])}")
        await page.wait_for_load_state("networkidle")
        # Tables scroll inside themselves; the page itself must not scroll sideways.
        width = await page.evaluate("document.documentElement.scrollWidth")
        if width > 390:
            wider[path] = width
    await page.goto(f"{live_url}/admin/ai")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "admin-ai-phone.png"), full_page=True)
    await context.close()
    assert wider == {}


async def test_choosing_files_with_the_keyboard_shows_where_the_focus_is(page, live_url, chat_org):
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Kultur"})).json()
    await owner.post("/api/v1/collections/", json={"space_id": space["id"], "name": "Library"})
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    section = page.locator(".collection", has_text="Library")
    await section.wait_for()
    # The file input is hidden; its label is the button seen, and it must show the keyboard focus.
    await page.get_by_label("Name of a new collection").focus()
    for _ in range(3):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.type") == "file":
            break
    assert await page.evaluate("document.activeElement.type") == "file"
    label = section.locator("input[type=file] + label")
    assert await label.evaluate("label => getComputedStyle(label).outlineStyle") == "solid"
    # So does the chat's "Attach files".
    await page.goto(f"{live_url}/")
    await page.get_by_label("Your question").focus()
    while await page.evaluate("document.activeElement.id") != "attach":
        await page.keyboard.press("Tab")
    attach = page.locator("#attach + label")
    assert await attach.evaluate("label => getComputedStyle(label).outlineStyle") == "solid"


async def sign_in_sv(page, live_url, org):
    await page.goto(f"{live_url}/login")
    await page.get_by_label("E-post").fill(org.owner.email)
    await page.get_by_label("Lösenord").fill(org.owner.password)
    await page.get_by_role("button", name="Logga in").click()
    await page.wait_for_url(f"{live_url}/")
