"""Sign-in through the app in both modes ends in a working session; identities bind safely."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from sso_helpers import audit_rows, begin, domain_of, me, sign_in

from allting.auth import sso


async def test_single_tenant_sign_in_links_the_existing_account(single_mode, idp_a, browser):
    org = single_mode
    person = await org.add_user("member", email=f"anna@{domain_of(org)}")
    idp_a.next_user(sub="anna-1", email=person.email.upper(), email_verified=True, name="Anna")

    providers = await browser.get("/api/v1/auth/oidc/providers")
    assert providers.json()["providers"] == [
        {"id": "default", "label": "Single sign-on", "tenant": None, "start_url": "/api/v1/auth/oidc/start"}
    ]
    attempt = await sign_in(browser, next="/spaces/x?tab=1")

    assert attempt.response.status_code == 303, attempt.response.text
    assert attempt.response.headers["location"] == "/spaces/x?tab=1"
    cookie = attempt.response.headers["set-cookie"]
    assert "allting_session=" in cookie and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    start_cookie = attempt.start.headers["set-cookie"].lower()
    assert (
        "allting_oidc=" in start_cookie
        and "httponly" in start_cookie
        and "path=/api/v1/auth/oidc" in start_cookie
    )
    response = await me(browser)
    assert response.status_code == 200, response.text
    assert response.json()["email"] == person.email
    (entry,) = await audit_rows("auth.sso_login", tenant_id=org.id)
    assert entry.outcome == "success" and entry.actor_id == person.id
    assert entry.changes["method"] == "linked_by_email"

    # The second time the identity (issuer, subject) finds the account, whatever the e-mail says now.
    idp_a.next_user(sub="anna-1", email="renamed@elsewhere.example", email_verified=False)
    other = await sign_in(browser)
    assert other.response.status_code == 303
    assert (await me(browser)).json()["email"] == person.email


async def test_authorization_request_uses_the_single_tenant_callback(single_mode, idp_a, browser):
    attempt = await begin(browser)
    query = dict(parse_qsl(urlsplit(attempt.start.headers["location"]).query))
    assert query["redirect_uri"] == sso.public_base() + "/api/v1/auth/oidc/callback"
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]


async def test_json_variant_for_api_clients(single_mode, idp_a, browser):
    org = single_mode
    await org.add_user("member", email=f"api@{domain_of(org)}")
    idp_a.next_user(sub="api-1", email=f"api@{domain_of(org)}")
    start = await browser.get("/api/v1/auth/oidc/start", params={"format": "json"})
    assert start.status_code == 200
    from allting.testing.oidc_provider import follow_authorization

    callback = await follow_authorization(start.json()["authorization_url"])
    tokens = await browser.get(
        "/api/v1/auth/oidc/callback", params=callback, headers={"accept": "application/json"}
    )
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["access_token"] and body["refresh_token"]
    assert "allting_session" not in tokens.headers.get("set-cookie", "")
    browser.cookies.clear()
    response = await browser.get(
        "/api/v1/users/me/", headers={"authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status_code == 200


async def test_federation_sign_in(fed_a, idp_a, browser):
    org = fed_a
    person = await org.add_user("member", email=f"bo@{domain_of(org)}")
    idp_a.next_user(sub="bo-1", email=person.email)

    found = await browser.get("/api/v1/auth/oidc/discover", params={"email": f"someone@{domain_of(org)}"})
    assert found.status_code == 200 and found.json()["tenant"] == org.slug
    buttons = await browser.get("/api/v1/auth/oidc/providers", params={"tenant": org.slug})
    assert [b["id"] for b in buttons.json()["providers"]] == [org.slug]

    attempt = await sign_in(browser, tenant=org.slug)
    assert attempt.callback_path == f"/api/v1/auth/oidc/callback/{org.id}"
    assert attempt.response.status_code == 303, attempt.response.text
    assert (await me(browser)).json()["email"] == person.email


async def test_next_must_be_a_same_origin_path(single_mode, idp_a, browser):
    org = single_mode
    await org.add_user("member", email=f"nx@{domain_of(org)}")
    idp_a.next_user(sub="nx", email=f"nx@{domain_of(org)}")
    for hostile in ("https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)"):
        attempt = await sign_in(browser, next=hostile)
        assert attempt.response.headers["location"] == "/", hostile
