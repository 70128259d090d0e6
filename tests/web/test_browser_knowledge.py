"""Knowledge in a real browser: live document progress over the WebSocket, search, citations, reconnects."""

from __future__ import annotations

import asyncio

import pytest
from web_helpers import SCREENSHOTS, serious_violations, sign_in, wait_for_ready_document

from allting.worker import build_worker

pytestmark = pytest.mark.browser

DOCUMENT = (
    "# Library services\n\n"
    "The city library on Stortorget opens at nine in the morning on weekdays and at ten on Saturdays.\n\n"
    "## Borrowing\n\nA library card is free for everyone who lives in the municipality. "
    "Books may be borrowed for four weeks and renewed twice.\n"
)


@pytest.fixture
async def worker(runtime):
    running = build_worker(in_process=True)
    task = asyncio.create_task(running.start())
    yield running
    running.event.set()
    await task


@pytest.fixture
async def axe_page(browser):
    """A page on which axe-core may be injected (the site's CSP forbids inline scripts)."""
    context = await browser.new_context(
        locale="en-GB", viewport={"width": 1280, "height": 860}, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    yield await context.new_page()
    await context.close()


async def test_upload_becomes_ready_live_and_an_assistant_cites_it(
    axe_page, live_url, chat_org, llm, worker, local_model
):
    page = axe_page
    space = (await chat_org.owner.client.post("/api/v1/spaces/", json={"name": "Kultur"})).json()
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    await page.get_by_label("Name of a new collection").fill("Library")
    await page.get_by_role("button", name="Create collection").click()
    section = page.locator(".collection", has_text="Library")
    await section.wait_for()
    await page.locator('#knowledge[data-live="open"]').wait_for()

    # From here on the page must not reload, and must not poll: only the socket tells it what happens.
    await page.evaluate("() => { window.__samePage = true; }")
    list_requests = []
    page.on("request", lambda r: list_requests.append(r.url) if "/documents/?limit" in r.url else None)
    await section.locator("input[type=file]").set_input_files(
        {"name": "library.md", "mimeType": "text/markdown", "buffer": DOCUMENT.encode()}
    )
    await wait_for_ready_document(
        section.locator('tr[data-status="ready"]', has_text="library"), chat_org.owner.client
    )
    assert await page.evaluate("() => window.__samePage === true")
    assert len(list_requests) <= 3, list_requests  # after the upload, and when the job has finished

    # Search the collection: passages with their document title.
    await section.get_by_label("Search the collection").fill("library card")
    await section.get_by_role("button", name="Search").click()
    passage = section.locator(".passage").first
    await passage.wait_for()
    assert "Library services" in await passage.locator(".passage-source").inner_text()
    assert await serious_violations(page) == []

    # An assistant over the collection answers with a numbered citation chip.
    await page.goto(f"{live_url}/spaces/{space['id']}/assistants")
    await page.get_by_label("Name of a new assistant").fill("Library helper")
    await page.get_by_role("button", name="Create assistant").click()
    await page.get_by_label("Library", exact=True).check()
    await page.get_by_role("button", name="Save assistant").click()
    await page.get_by_text("The assistant is saved.").wait_for()
    llm.script(answer="The library opens at nine on weekdays [1].")
    await page.get_by_role("link", name="Try it out").click()
    await page.get_by_label("Your question").fill("When does the library open?")
    await page.get_by_role("button", name="Send").click()
    chip = page.locator(".bubble.answer .citations .chip").first
    await chip.wait_for()
    await chip.click()
    await page.get_by_text("opens at nine in the morning").first.wait_for()


async def test_a_colleague_with_the_page_open_sees_the_upload_become_ready_live(
    browser, live_url, chat_org, worker, local_model
):
    owner = chat_org.owner
    colleague = await chat_org.add_user("member")
    space = (await owner.client.post("/api/v1/spaces/", json={"name": "Samhällsbyggnad"})).json()
    await owner.client.post(
        f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(colleague.id), "role": "editor"}
    )
    collection = (
        await owner.client.post("/api/v1/collections/", json={"space_id": space["id"], "name": "Planer"})
    ).json()
    pages = []
    for person in (owner, colleague):
        context = await browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 860})
        context.set_default_timeout(10_000)
        page = await context.new_page()
        await sign_in(page, live_url, person.email, person.password)
        await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
        await page.locator('#knowledge[data-watching="true"]').wait_for()
        await page.evaluate("() => { window.__samePage = true; }")
        pages.append(page)
    uploader, watcher = pages
    section = f'.collection[data-collection-id="{collection["id"]}"]'
    await (
        uploader.locator(section)
        .locator("input[type=file]")
        .set_input_files({"name": "plan.md", "mimeType": "text/markdown", "buffer": DOCUMENT.encode()})
    )
    # The colleague never reloads: the row appears and turns ready from the space's live events.
    await wait_for_ready_document(
        watcher.locator(section).locator('tr[data-status="ready"]', has_text="Library services"), owner.client
    )
    assert await watcher.evaluate("() => window.__samePage === true")
    for page in pages:
        await page.context.close()


async def _collection_on_a_live_knowledge_page(page, live_url, owner, space_name, collection_name):
    """A new space with one collection, its knowledge page open and live: the collection's section."""
    space = (await owner.client.post("/api/v1/spaces/", json={"name": space_name})).json()
    collection = (
        await owner.client.post(
            "/api/v1/collections/", json={"space_id": space["id"], "name": collection_name}
        )
    ).json()
    await sign_in(page, live_url, owner.email, owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    await page.locator('#knowledge[data-live="open"]').wait_for()
    return page.locator(f'.collection[data-collection-id="{collection["id"]}"]')


async def test_a_failed_document_says_why(page, live_url, chat_org, worker):
    section = await _collection_on_a_live_knowledge_page(page, live_url, chat_org.owner, "Fel", "Trasigt")
    # A PDF that is not one: accepted by its name and magic bytes, unreadable when parsed.
    await section.locator("input[type=file]").set_input_files(
        {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4\n%broken\n" + b"x" * 200}
    )
    outcome = section.locator(
        'tr[data-status="failed"] [data-role="reason"], .error-text[role="alert"]'
    ).first
    await outcome.wait_for(timeout=30_000)
    text = await outcome.inner_text()
    print("OUTCOME:", text)
    assert text.strip(), text


async def test_document_lists_answering_out_of_order_show_the_newest_and_never_go_back(
    page, live_url, chat_org
):
    section = await _collection_on_a_live_knowledge_page(
        page, live_url, chat_org.owner, "Ordning", "Protokoll"
    )

    # Each list the page asks for after an upload is fetched at once, then held until released.
    held = []

    async def hold(route):
        held.append((route, await route.fetch()))

    await page.route("**/documents/?limit=200", hold)

    async def upload_and_hold_its_list(name):
        count = len(held)
        await section.locator("input[type=file]").set_input_files(
            {"name": name, "mimeType": "text/plain", "buffer": f"Protokoll {name}".encode()}
        )
        for _ in range(200):
            if len(held) > count:
                return held[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no document list was asked for after uploading {name}")

    rows = section.locator("tbody tr")
    first = await upload_and_hold_its_list("alfa.txt")
    second = await upload_and_hold_its_list("bravo.txt")
    # The older list comes back alone: it is drawn rather than thrown away for a newer one still out.
    await first[0].fulfill(response=first[1])
    await section.locator("tr", has_text="alfa").wait_for()
    await second[0].fulfill(response=second[1])
    await section.locator("tr", has_text="bravo").wait_for()

    third = await upload_and_hold_its_list("charlie.txt")
    fourth = await upload_and_hold_its_list("delta.txt")
    # The newer list comes back first: the older one arriving after it must not take delta away.
    await fourth[0].fulfill(response=fourth[1])
    await section.locator("tr", has_text="delta").wait_for()
    await third[0].fulfill(response=third[1])
    await page.evaluate("() => new Promise((done) => setTimeout(done, 300))")
    assert await rows.count() == 4
    assert await section.locator("tr", has_text="delta").count() == 1


async def test_a_lost_live_connection_reconnects(page, live_url, chat_org):
    space = (await chat_org.owner.client.post("/api/v1/spaces/", json={"name": "Nät"})).json()
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    await page.locator('#knowledge[data-live="open"]').wait_for()
    await page.evaluate("() => window.AlltingKnowledgeSocket().close()")
    line = page.locator("#knowledge-connection")
    await line.get_by_text("The live connection was lost").wait_for()
    await page.locator('#knowledge[data-live="open"]').wait_for()
    await line.get_by_text("Connected again").wait_for()


@pytest.fixture
def site():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "knowledge"))
    from site_server import SiteServer

    with SiteServer() as server:
        yield server


async def test_add_a_website_see_its_crawl_then_crawl_now_and_read_the_history(
    axe_page, live_url, chat_org, worker, site
):
    page = axe_page
    space = (await chat_org.owner.client.post("/api/v1/spaces/", json={"name": "Webb"})).json()
    await sign_in(page, live_url, chat_org.owner.email, chat_org.owner.password)
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    await page.locator('#knowledge[data-live="open"]').wait_for()
    await page.get_by_label("Address (URL)").fill(site.url + "/")
    await page.get_by_label("Name (optional)").fill("Testkommunen")
    await page.get_by_role("button", name="Add website").click()
    card = page.locator(".website", has_text="Testkommunen")
    await card.locator('.website-latest [data-role="run-status"]', has_text="Done").wait_for(timeout=60_000)
    assert "new or changed" in await card.locator(".website-latest").inner_text()

    await card.locator("summary", has_text="Run history").click()
    await card.locator(".run-history tbody tr").first.wait_for()
    await card.get_by_role("button", name="Crawl now").click()
    await card.get_by_role("button", name="Crawl now").and_(page.locator("[disabled]")).wait_for()
    await card.locator('.website-latest [data-role="run-status"]', has_text="Done").wait_for(timeout=60_000)
    await card.locator(".run-history tbody tr").nth(1).wait_for()
    assert await card.locator(".run-history tbody tr").count() == 2
    assert await serious_violations(page) == []


async def test_a_too_large_upload_says_both_sizes_in_swedish(browser, live_url, chat_org, monkeypatch):
    from allting.platform.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1024 * 1024)
    space = (await chat_org.owner.client.post("/api/v1/spaces/", json={"name": "Arkiv"})).json()
    collection = (
        await chat_org.owner.client.post(
            "/api/v1/collections/", json={"space_id": space["id"], "name": "Stort"}
        )
    ).json()
    context = await browser.new_context(locale="sv-SE", viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await page.goto(f"{live_url}/login")
    await page.get_by_label("E-post").fill(chat_org.owner.email)
    await page.get_by_label("Lösenord").fill(chat_org.owner.password)
    await page.get_by_role("button", name="Logga in").click()
    await page.wait_for_url(f"{live_url}/")
    await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
    section = page.locator(f'.collection[data-collection-id="{collection["id"]}"]')
    await section.locator("input[type=file]").set_input_files(
        {"name": "stor.txt", "mimeType": "text/plain", "buffer": b"a" * (3 * 512 * 1024)}
    )
    alert = section.locator('.error-text[role="alert"]')
    await alert.wait_for()
    assert (
        "stor.txt: Filen är 1,5 MB; gränsen är 1 MB. Dela upp den i mindre filer." in await alert.inner_text()
    )
    await context.close()


SWEDISH_DOCUMENT = (
    "# Bibliotekets tjänster\n\n"
    "Stadsbiblioteket vid Stortorget öppnar klockan nio på vardagar och klockan tio på lördagar.\n\n"
    "## Lån\n\nLånekortet är gratis för alla som bor i kommunen. "
    "Böcker lånas i fyra veckor och kan förnyas två gånger.\n"
)


async def _until(read, done, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, value
        await asyncio.sleep(0.1)


async def test_the_knowledge_page_in_swedish_light_and_dark(
    browser, live_url, chat_org, worker, local_model, site
):
    """Documents (one ready, one failed with its reason), a search, and a crawled website with its
    run history, in Swedish; no serious accessibility violations; the screenshots in docs/."""
    client = chat_org.owner.client
    space = (await client.post("/api/v1/spaces/", json={"name": "Kultur och fritid"})).json()
    collection = (
        await client.post("/api/v1/collections/", json={"space_id": space["id"], "name": "Bibliotek"})
    ).json()
    documents = []
    for name, data in (
        ("bibliotek.md", SWEDISH_DOCUMENT.encode()),
        ("protokoll.pdf", b"%PDF-1.4\n%broken\n" + b"x" * 200),
    ):
        uploaded = await client.post(
            f"/api/v1/collections/{collection['id']}/documents/", files={"file": (name, data)}
        )
        assert uploaded.status_code == 202, uploaded.text
        documents.append(uploaded.json()["id"])
    for document_id in documents:
        await _until(
            lambda document_id=document_id: client.get(f"/api/v1/documents/{document_id}"),
            lambda response: response.json()["status"] in ("ready", "failed"),
        )
    website = (
        await client.post(
            f"/api/v1/spaces/{space['id']}/websites/", json={"url": site.url + "/", "name": "Testkommunen"}
        )
    ).json()

    async def runs():
        return (await client.get(f"/api/v1/websites/{website['id']}/runs/")).json()["items"]

    def finished(items):
        return items and all(run["status"] in ("succeeded", "failed") for run in items)

    await _until(runs, finished)
    assert (await client.post(f"/api/v1/websites/{website['id']}/run/")).status_code in (200, 201, 202)
    await _until(runs, lambda items: len(items) == 2 and finished(items))

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for theme in ("light", "dark"):
        context = await browser.new_context(
            locale="sv-SE", viewport={"width": 1280, "height": 860}, color_scheme=theme, bypass_csp=True
        )
        context.set_default_timeout(10_000)
        page = await context.new_page()
        await page.goto(f"{live_url}/login")
        await page.get_by_label("E-post").fill(chat_org.owner.email)
        await page.get_by_label("Lösenord").fill(chat_org.owner.password)
        await page.get_by_role("button", name="Logga in").click()
        await page.wait_for_url(f"{live_url}/")
        await page.goto(f"{live_url}/spaces/{space['id']}/knowledge")
        await page.locator('#knowledge[data-watching="true"]').wait_for()
        section = page.locator(f'.collection[data-collection-id="{collection["id"]}"]')
        await section.locator('tr[data-status="ready"]', has_text="Bibliotekets tjänster").wait_for()
        reason = section.locator('tr[data-status="failed"] [data-role="reason"]')
        assert (await reason.inner_text()).startswith("Orsak:"), await reason.inner_text()
        await section.get_by_label("Sök i samlingen").fill("lånekort")
        await section.get_by_role("button", name="Sök").click()
        await section.locator(".passage").first.wait_for()
        card = page.locator(".website", has_text="Testkommunen")
        await card.locator("summary").click()
        await card.locator(".run-history tbody tr").nth(1).wait_for()
        body = await page.locator("main").inner_text()
        for english in ("Ready", "Failed", "Search", "Run history", "Crawl now", "Latest crawl"):
            assert english not in body.split("\n"), english
        assert await serious_violations(page) == [], theme
        await page.screenshot(
            path=str(SCREENSHOTS / f"space-knowledge-documents-{theme}.png"), full_page=True
        )
        await page.locator("#websites").screenshot(
            path=str(SCREENSHOTS / f"space-knowledge-websites-{theme}.png")
        )
        await context.close()
