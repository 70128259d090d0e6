"""The pages in a real browser: Swedish, a viewer's view, model administration, accessibility, screenshots."""

from __future__ import annotations

import pytest
from web_helpers import SCREENSHOTS, serious_violations, sign_in

pytestmark = pytest.mark.browser


async def test_switch_to_swedish_and_see_the_page_translated(page, live_url, chat_org):
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.get_by_role("button", name="Svenska").click()
    await page.get_by_role("button", name="Skicka").wait_for()
    assert await page.locator("html").get_attribute("lang") == "sv"
    body = await page.locator("body").inner_text()
    for english in ("Send", "Conversations", "New conversation", "Sign out", "Account"):
        assert english not in body.split(), english
    for swedish in ("Konversationer", "Ny konversation", "Logga ut", "Konto", "Utrymmen"):
        assert swedish in body, swedish
    await page.goto(f"{live_url}/spaces")
    assert "Skapa ett utrymme" in await page.locator("body").inner_text()


async def test_a_viewer_sees_no_edit_controls_in_a_shared_space(page, live_url, chat_org):
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Shared team"})).json()
    viewer = await chat_org.add_user("member")
    await owner.post(
        f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(viewer.id), "role": "viewer"}
    )
    await owner.post(
        "/api/v1/assistants/", json={"space_id": space["id"], "name": "Helpdesk", "published": True}
    )
    await sign_in(page, live_url, viewer.email, viewer.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/assistants")
    await page.get_by_role("heading", name="Helpdesk").wait_for()
    assert await page.get_by_role("button", name="Create assistant").count() == 0
    assert await page.get_by_role("link", name="Settings").count() == 0
    assert await page.locator("main form[method=post]").count() == 0
    await page.goto(f"{live_url}/spaces/{space['id']}/members")
    assert await page.get_by_role("button", name="Add member").count() == 0
    response = await page.goto(f"{live_url}/spaces/{space['id']}/settings")
    assert response.status == 403


async def test_a_space_admin_shares_the_space_with_a_group_in_the_page(browser, live_url, chat_org):
    owner = chat_org.owner.client
    await owner.post("/api/v1/groups/", json={"name": "Skolsköterskor"})
    space = (await owner.post("/api/v1/spaces/", json={"name": "Elevhälsa"})).json()
    context = await browser.new_context(
        locale="en-GB", viewport={"width": 1280, "height": 860}, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/members")
    await page.get_by_label("Group to add").select_option(label="Skolsköterskor")
    await page.locator("#add-group").get_by_label("Role").select_option("editor")
    await page.get_by_role("button", name="Add group").click()
    await page.get_by_text("The group is added.").wait_for()
    row = page.locator("tbody tr", has_text="Skolsköterskor")
    assert await row.get_by_label("Role of Skolsköterskor").input_value() == "editor"
    assert await serious_violations(page) == []
    await row.get_by_label("Role of Skolsköterskor").select_option("viewer")
    await row.get_by_role("button", name="Change").click()
    await page.get_by_text("The role is changed.").wait_for()
    row = page.locator("tbody tr", has_text="Skolsköterskor")
    assert await row.get_by_label("Role of Skolsköterskor").input_value() == "viewer"
    page.on("dialog", lambda dialog: dialog.accept())
    await row.get_by_role("button", name="Remove Skolsköterskor").click()
    await page.get_by_text("The member is removed.").wait_for()
    assert await page.locator("tbody tr", has_text="Skolsköterskor").count() == 0
    assert await serious_violations(page) == []
    await context.close()


async def test_an_admin_adds_a_provider_and_enables_a_model(page, live_url, org, llm):
    llm.script(answer="Hej från den nya modellen", delay_per_token=0.0)
    await sign_in(page, live_url, org.owner.email, org.owner.password)
    await page.get_by_role("link", name="Set up AI models").click()
    await page.get_by_label("Provider name").fill("Our server")
    await page.get_by_label("Type", exact=True).select_option("vllm")
    await page.get_by_label("Endpoint URL (own servers and compatible services)").fill(llm.url)
    await page.get_by_label("API key").fill("sk-secret-key-12345")
    await page.get_by_role("button", name="Add provider").click()
    await page.get_by_text("The provider is added.").wait_for()
    body = await page.locator("body").inner_text()
    assert "sk-secret-key-12345" not in body
    await page.get_by_label("Model name at the provider").fill("stub-chat")
    await page.get_by_label("Display name").fill("Stub chat")
    await page.get_by_role("button", name="Add model").click()
    await page.get_by_text("The model is added.").wait_for()
    # The organisation's first chat model becomes its default: people can chat at once.
    await page.locator("tr", has_text="Stub chat").get_by_text("Default", exact=True).wait_for()
    assert await page.get_by_role("button", name="Make default Stub chat").count() == 0
    await page.goto(f"{live_url}/")
    await page.get_by_label("Your question").fill("Hello?")
    await page.keyboard.press("Enter")
    await page.locator(".bubble.answer .markdown", has_text="Hej från den nya modellen").wait_for()
    # The answer names the model as the administrator named it, live and after a reload.
    await page.locator(".model-used", has_text="Answered by Stub chat").wait_for()
    await page.wait_for_url("**/?c=*")
    await page.reload()
    await page.locator(".model-used", has_text="Answered by Stub chat").wait_for()


MAIN_PAGES = (
    "/",
    "/spaces",
    "{space}/assistants",
    "{space}/members",
    "{space}/settings",
    "{space}/knowledge",
    "/account",
    "/admin/ai",
    "/admin/users",
    "/admin/audit",
    "/admin/usage",
    "/admin/budgets",
    "/admin/groups",
    "/admin/roles",
    "/invitation?token=x",
)


async def test_main_pages_have_no_serious_accessibility_violations_and_screenshots(
    browser, live_url, chat_org, llm
):
    llm.script(
        answer="Här är ett svar med **fetstil**, en lista:\n\n- ett\n- två\n\n"
        "| A | B |\n|---|---|\n| 1 | 2 |\n"
    )
    space = (await chat_org.owner.client.post("/api/v1/spaces/", json={"name": "Socialtjänsten"})).json()
    await chat_org.owner.client.post(
        "/api/v1/groups/", json={"name": "Socialsekreterare"}
    )  # offered on members
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = {}
    for theme in ("light", "dark"):
        context = await browser.new_context(
            locale="sv-SE", viewport={"width": 1280, "height": 860}, color_scheme=theme, bypass_csp=True
        )
        page = await context.new_page()
        page.set_default_timeout(10_000)
        await page.goto(f"{live_url}/login")
        await page.screenshot(path=str(SCREENSHOTS / f"login-{theme}.png"))
        if found := await serious_violations(page):
            problems[f"/login {theme}"] = found
        await page.get_by_label("E-post").fill(chat_org.owner.email)
        await page.get_by_label("Lösenord").fill(chat_org.owner.password)
        await page.get_by_role("button", name="Logga in").click()
        await page.wait_for_url(f"{live_url}/")
        await page.get_by_label("Din fråga").fill("Vad gäller för ekonomiskt bistånd?")
        await page.keyboard.press("Enter")
        await page.locator(".bubble.answer .model-used").wait_for()
        for path in MAIN_PAGES:
            url = path.format(space=f"/spaces/{space['id']}")
            if path != "/":
                await page.goto(f"{live_url}{url}")
            await page.wait_for_load_state("networkidle")
            if found := await serious_violations(page):
                problems[f"{url} {theme}"] = found
            name = (
                url.split("?")[0].strip("/").replace(f"spaces/{space['id']}", "space").replace("/", "-")
                or "chat"
            )
            await page.screenshot(path=str(SCREENSHOTS / f"{name}-{theme}.png"), full_page=True)
        await context.close()
    # A phone-width chat page.
    context = await browser.new_context(locale="sv-SE", viewport={"width": 390, "height": 800})
    page = await context.new_page()
    await sign_in_sv(page, live_url, chat_org)
    await page.screenshot(path=str(SCREENSHOTS / "chat-phone.png"))
    await context.close()
    assert problems == {}


async def sign_in_sv(page, live_url, org):
    await page.goto(f"{live_url}/login")
    await page.get_by_label("E-post").fill(org.owner.email)
    await page.get_by_label("Lösenord").fill(org.owner.password)
    await page.get_by_role("button", name="Logga in").click()
    await page.wait_for_url(f"{live_url}/")


async def test_the_theme_button_offers_the_theme_the_device_is_not_showing(browser, live_url, chat_org):
    for scheme, offered, other in (
        ("dark", "Light theme", "Dark theme"),
        ("light", "Dark theme", "Light theme"),
    ):
        context = await browser.new_context(locale="en-GB", color_scheme=scheme)
        context.set_default_timeout(10_000)
        page = await context.new_page()
        await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
        assert await page.get_by_role("button", name=offered).is_visible()
        assert await page.get_by_role("button", name=other).count() == 0
        await page.get_by_role("button", name=offered).click()
        await page.get_by_role("button", name=other).wait_for()
        assert await page.locator("html").get_attribute("data-theme") == offered.split()[0].lower()
        # Back to following the device is the account page's choice; leave the next run where it started.
        await page.goto(f"{live_url}/account")
        await page.get_by_label("Theme").select_option("system")
        await page.get_by_role("button", name="Save", exact=True).click()
        await page.wait_for_load_state()
        await context.close()
