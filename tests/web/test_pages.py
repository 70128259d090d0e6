"""The pages over HTTP (no browser): sign-in, CSRF, cookies, error pages, the chat page."""

from __future__ import annotations

import re

import httpx
import pytest


def make_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)), base_url="http://testserver"
    )


def _token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def sign_in(app, email: str, password: str) -> httpx.AsyncClient:
    client = make_client(app)
    page = await client.get("/login")
    response = await client.post(
        "/login", data={"email": email, "password": password, "next": "/", "csrf_token": _token(page.text)}
    )
    assert response.status_code == 303, response.text
    return client


async def test_pages_need_sign_in_and_login_sets_a_safe_cookie(app, org):
    async with make_client(app) as client:
        response = await client.get("/")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        page = await client.get("/login")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        response = await client.post(
            "/login",
            data={
                "email": org.owner.email,
                "password": org.owner.password,
                "next": "/",
                "csrf_token": _token(page.text),
            },
        )
        assert response.status_code == 303
        cookie = next(
            v for k, v in response.headers.multi_items() if k == "set-cookie" and "allting_session" in v
        )
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        chat = await client.get("/")
        assert chat.status_code == 200
        assert 'id="composer"' in chat.text


async def test_a_post_without_the_csrf_token_is_refused(app, org):
    async with make_client(app) as client:
        await client.get("/login")
        response = await client.post(
            "/login", data={"email": org.owner.email, "password": org.owner.password}
        )
        assert response.status_code == 403
        assert "<html" in response.text


async def test_wrong_password_says_so(app, org):
    async with make_client(app) as client:
        page = await client.get("/login", headers={"accept-language": "en"})
        response = await client.post(
            "/login",
            data={"email": org.owner.email, "password": "wrong-password", "csrf_token": _token(page.text)},
            headers={"accept-language": "en"},
        )
        assert response.status_code == 401
        assert "Wrong e-mail or password" in response.text


async def test_unknown_pages_are_html_and_api_stays_json(app):
    async with make_client(app) as client:
        page = await client.get("/no-such-page")
        assert page.status_code == 404 and "text/html" in page.headers["content-type"]
        api = await client.get("/api/v1/no-such-thing")
        assert api.status_code == 404 and api.json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/", "/account"])
async def test_signed_in_pages_render(app, chat_org, path):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        response = await client.get(path)
        assert response.status_code == 200, response.text
    finally:
        await client.aclose()


async def test_space_pages_render_for_owner_and_viewer(app, chat_org):
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Team"})).json()
    viewer = await chat_org.add_user("member")
    added = await owner.post(
        f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(viewer.id), "role": "viewer"}
    )
    assert added.status_code == 201, added.text
    assistant = await owner.post(
        "/api/v1/assistants/", json={"space_id": space["id"], "name": "Helper", "published": True}
    )
    assert assistant.status_code == 201, assistant.text
    aid = assistant.json()["id"]
    for person in (chat_org.owner, viewer):
        client = await sign_in(app, person.email, person.password)
        try:
            for tab in ("assistants", "knowledge", "members", "settings", f"assistants/{aid}"):
                response = await client.get(f"/spaces/{space['id']}/{tab}")
                assert response.status_code in (200, 403), (tab, response.text[:2000])
            listing = await client.get("/spaces")
            assert listing.status_code == 200
        finally:
            await client.aclose()


async def test_admin_pages_render(app, chat_org):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        for path in (
            "/admin/ai",
            "/admin/usage",
            "/admin/budgets",
            "/admin/users",
            "/admin/groups",
            "/admin/roles",
            "/admin/audit?action=auth.",
        ):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:3000])
        assert (await client.get("/admin")).status_code == 303
    finally:
        await client.aclose()


async def test_invite_a_person_who_sets_a_password_through_the_link(app, chat_org):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        users = await client.get("/admin/users")
        member_role = re.search(r'<option value="([0-9a-f-]{36})" selected>', users.text).group(1)
        invited = await client.post(
            "/admin/users/invite",
            data={
                "email": "ny@example.org",
                "name": "Ny",
                "role_id": member_role,
                "csrf_token": _token(users.text),
            },
        )
        assert invited.status_code == 200, invited.text[:2000]
        link = re.search(r'id="invitation-link">([^<]+)<', invited.text).group(1).replace("&amp;", "&")
    finally:
        await client.aclose()
    guest = make_client(app)
    try:
        path = link.split("testserver", 1)[1]
        form = await guest.get(path)
        assert form.status_code == 200 and 'name="token"' in form.text
        token = re.search(r'name="token" value="([^"]+)"', form.text).group(1)
        differ = await guest.post(
            "/invitation",
            data={"token": token, "password": "a", "password_again": "b", "csrf_token": _token(form.text)},
        )
        assert differ.status_code == 400
        accepted = await guest.post(
            "/invitation",
            data={
                "token": token,
                "password": "ett långt lösenord 42",
                "password_again": "ett långt lösenord 42",
                "csrf_token": _token(form.text),
            },
        )
        assert accepted.status_code == 303, accepted.text[:2000]
        again = await guest.post(
            "/invitation",
            data={
                "token": token,
                "password": "ett långt lösenord 42",
                "password_again": "ett långt lösenord 42",
                "csrf_token": _token(form.text),
            },
        )
        assert again.status_code == 400
    finally:
        await guest.aclose()
    person = await sign_in(app, "ny@example.org", "ett långt lösenord 42")
    await person.aclose()


async def test_groups_roles_and_budgets_from_the_pages(app, chat_org):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        page = await client.get("/admin/groups")
        token = _token(page.text)
        created = await client.post("/admin/groups", data={"name": "Handläggare", "csrf_token": token})
        assert created.status_code == 303
        page = await client.get("/admin/groups")
        assert "Handläggare" in page.text
        group_id = re.search(r'action="/admin/groups/([0-9a-f-]{36})/members"', page.text).group(1)
        added = await client.post(
            f"/admin/groups/{group_id}/members", data={"user_id": str(chat_org.owner.id), "csrf_token": token}
        )
        assert added.status_code == 303
        page = await client.get("/admin/groups")
        assert f"/admin/groups/{group_id}/members/{chat_org.owner.id}/remove" in page.text

        made = await client.post(
            "/admin/roles",
            data={"name": "Redaktör", "permissions": ["assistants", "collections"], "csrf_token": token},
        )
        assert made.status_code == 303
        roles = (await client.get("/api/v1/roles/")).json()
        role = next(r for r in roles if r["name"] == "Redaktör")
        assert sorted(role["permissions"]) == ["assistants", "collections"]
        saved = await client.post(
            f"/admin/roles/{role['id']}", data={"permissions": ["spaces"], "csrf_token": token}
        )
        assert saved.status_code == 303
        page = await client.get("/admin/roles")
        assert page.status_code == 200 and "Redaktör" in page.text

        budget = await client.post(
            "/admin/budgets",
            data={"scope": "tenant", "monthly_tokens": "100000", "monthly_cost": "", "csrf_token": token},
        )
        assert budget.status_code == 303
        page = await client.get("/admin/budgets")
        assert "100 000" in page.text and 'id="budgets"' in page.text
        missing = await client.post(
            "/admin/budgets", data={"scope": "space", "monthly_tokens": "5", "csrf_token": token}
        )
        assert missing.status_code == 303
    finally:
        await client.aclose()


async def test_a_refused_or_invalid_form_says_why_and_changes_nothing(app, chat_org):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        token = _token((await client.get("/admin/groups")).text)
        for _ in range(2):
            await client.post("/admin/groups", data={"name": "Nämndsekreterare", "csrf_token": token})
        page = await client.get("/admin/groups")
        assert 'class="flash flash-error" role="alert"' in page.text  # the second has the same name
        assert page.text.count(">Nämndsekreterare<") == 1

        invalid = await client.post(
            "/admin/budgets",
            data={"scope": "tenant", "monthly_tokens": "many", "monthly_cost": "", "csrf_token": token},
        )
        assert invalid.status_code == 303 and invalid.headers["location"] == "/admin/budgets"
        page = await client.get("/admin/budgets")
        assert "Ange ett heltal för token och en positiv kostnad." in page.text  # the page is in Swedish
        assert (await client.get("/api/v1/budgets/")).json() == []
    finally:
        await client.aclose()


async def test_service_errors_are_translated_on_swedish_pages():
    from allting.web.errors import client_messages, translate_error

    assert translate_error("sv", "budget_exceeded", "Monthly budget of the tenant is used up").startswith(
        "Månadens tokenbudget"
    )
    assert translate_error("en", "budget_exceeded", "Monthly budget used up") == "Monthly budget used up"
    assert translate_error("sv", "some_new_code", "Something odd") == "Something odd"
    assert client_messages("sv")["unsupported_media_type"] == "Filtypen stöds inte."
    from allting.web.errors import document_error_texts

    damaged = "The file is damaged or incomplete and could not be read."
    assert document_error_texts("sv")[damaged].startswith("Filen är skadad")
    assert document_error_texts("en") == {}


async def test_a_connection_test_is_shown_in_the_providers_row(app, chat_org):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        page = await client.get("/admin/ai")
        provider_id = re.search(r'action="/admin/ai/providers/([0-9a-f-]{36})/test"', page.text).group(1)
        tested = await client.post(
            f"/admin/ai/providers/{provider_id}/test", data={"csrf_token": _token(page.text)}
        )
        assert tested.status_code == 200
        row = re.search(rf'id="test-{provider_id}">([^<]+)<', tested.text)
        assert row and row.group(1).startswith("Anslutningen fungerar."), tested.text[
            :500
        ]  # Swedish by default
    finally:
        await client.aclose()


async def test_the_prompt_history_is_in_swedish_with_an_empty_first_prompt(app, chat_org):
    owner = chat_org.owner.client
    space = (await owner.post("/api/v1/spaces/", json={"name": "Bygglov"})).json()
    assistant = (
        await owner.post("/api/v1/assistants/", json={"space_id": space["id"], "name": "Guiden"})
    ).json()
    changed = await owner.patch(f"/api/v1/assistants/{assistant['id']}/", json={"prompt": "Svara kort."})
    assert changed.status_code == 200, changed.text
    restored = await owner.post(f"/api/v1/assistants/{assistant['id']}/prompt-versions/1/restore")
    assert restored.status_code == 200, restored.text
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    try:
        page = await client.get(
            f"/spaces/{space['id']}/assistants/{assistant['id']}", headers={"accept-language": "sv"}
        )
        history = page.text.split('id="versions-h"')[1]
        assert "<td>Skapad</td>" in history
        assert "<td>Återställd från version 1</td>" in history
        assert "(tom)" in history
        assert "Created" not in history and "Restored" not in history
    finally:
        await client.aclose()


async def test_the_audit_log_and_budgets_name_actions_outcomes_actors_targets_and_spaces_in_swedish(
    app, chat_org
):
    client = await sign_in(app, chat_org.owner.email, chat_org.owner.password)
    sv = {"accept-language": "sv"}
    try:
        await client.get("/", headers=sv)  # creates the personal space
        audit = (await client.get("/admin/audit", headers=sv)).text
        rows = audit.split("<tbody>")[1]
        assert "<td>Lyckades</td>" in rows
        assert "<td>success</td>" not in rows and "<td>system</td>" not in rows
        assert "<td>Inloggning</td>" in rows and "<td>session</td>" not in rows
        assert "<td>Inloggning <code>auth.login</code></td>" in rows  # the action, with its key to filter by
        budgets = (await client.get("/admin/budgets", headers=sv)).text
        options = re.findall(r'<option value="[0-9a-f-]{36}">([^<]*)</option>', budgets)
        assert "Personligt" in options and "Organisation" in options
        assert "Personal" not in options
    finally:
        await client.aclose()
