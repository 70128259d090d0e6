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
        for path in ("/admin/ai", "/admin/usage", "/admin/users", "/admin/audit?action=auth."):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:3000])
        assert (await client.get("/admin")).status_code == 303
    finally:
        await client.aclose()
