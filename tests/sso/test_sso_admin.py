"""Sysadmin federation settings, the OIDC debug switch and sign-out."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging

import structlog
from sso_helpers import audit_rows, configure_federation, domain_of, me, sign_in

from allting.auth import sso
from allting.platform.redis import get_redis
from allting.web.rendering import CSRF_COOKIE, CSRF_HEADER


async def test_federation_settings_round_trip_without_the_secret(federation_mode, org, idp_a, sysadmin):
    secret = idp_a.client_secret
    put = await configure_federation(org, idp_a, provider="entra_id")
    assert put.status_code == 200, put.text
    got = await sysadmin.get(f"/api/v1/sysadmin/tenants/{org.id}/federation")
    assert got.status_code == 200
    body = got.json()
    assert body["provider"] == "entra_id"
    assert body["issuer"] == idp_a.issuer
    assert body["client_id"] == idp_a.client_id
    assert body["masked_secret"] == "…" + secret[-4:]
    assert body["encryption_status"] == "encrypted"
    assert body["redirect_uri"].endswith(f"/api/v1/auth/oidc/callback/{org.id}")
    assert body["allowed_domains"] == [domain_of(org)]
    for response in (put, got):
        assert secret not in response.text
    # A later PUT without the secret keeps the stored one.
    again = await sysadmin.put(
        f"/api/v1/sysadmin/tenants/{org.id}/federation",
        json={
            "provider": "generic",
            "discovery_endpoint": idp_a.discovery_url,
            "client_id": idp_a.client_id,
            "allowed_domains": ["Example.ORG", "@" + domain_of(org)],
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["masked_secret"] == body["masked_secret"]
    assert again.json()["allowed_domains"] == ["example.org", domain_of(org)]
    tested = await sysadmin.post(f"/api/v1/sysadmin/tenants/{org.id}/federation/test")
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.text
    assert tested.json()["signing_keys"] >= 1
    assert secret not in tested.text
    actions = [r.action for r in await audit_rows("tenant.federation_created", tenant_id=org.id)]
    assert actions == ["tenant.federation_created"]
    for row in await audit_rows("tenant.federation_updated", tenant_id=org.id):
        assert secret not in str(row.changes)
    deleted = await sysadmin.delete(f"/api/v1/sysadmin/tenants/{org.id}/federation")
    assert deleted.status_code == 204
    assert (await sysadmin.get(f"/api/v1/sysadmin/tenants/{org.id}/federation")).status_code == 404


async def test_sysadmin_key_is_required(org, anon):
    for method in ("get", "delete"):
        response = await getattr(anon, method)(f"/api/v1/sysadmin/tenants/{org.id}/federation")
        assert response.status_code == 401
    response = await org.owner.client.get(f"/api/v1/sysadmin/tenants/{org.id}/federation")
    assert response.status_code == 401


async def test_private_discovery_addresses_are_refused(
    federation_mode, org, idp_a, sysadmin, monkeypatch, settings
):
    for url in (
        "http://10.0.0.5/.well-known/openid-configuration",
        "http://169.254.169.254/latest/.well-known/openid-configuration",
        "http://[::1]:8080/.well-known/openid-configuration",
        "http://0x7f000001/.well-known/openid-configuration",
    ):
        response = await configure_federation(org, idp_a, discovery_endpoint=url)
        assert response.status_code == 422, (url, response.text)
    # Stored while loopback was allowed, then the operator narrows the guard: the test action refuses.
    assert (await configure_federation(org, idp_a)).status_code == 200
    monkeypatch.setattr(settings, "outbound_allowed_networks", "")
    tested = await sysadmin.post(f"/api/v1/sysadmin/tenants/{org.id}/federation/test")
    assert tested.status_code == 200
    assert tested.json()["ok"] is False and tested.json()["reason_code"] == "egress_blocked"


async def test_tenant_b_settings_never_appear_in_tenant_a_responses(
    fed_a, fed_b, idp_a, idp_b, sysadmin, browser
):
    a, b = fed_a, fed_b
    responses = [
        await sysadmin.get(f"/api/v1/sysadmin/tenants/{a.id}/federation"),
        await sysadmin.post(f"/api/v1/sysadmin/tenants/{a.id}/federation/test"),
        await browser.get("/api/v1/auth/oidc/providers", params={"tenant": a.slug}),
        await browser.get("/api/v1/auth/oidc/discover", params={"email": f"x@{domain_of(a)}"}),
        await a.owner.client.get(f"/api/v1/sysadmin/tenants/{a.id}/federation"),
    ]
    for response in responses:
        for leaked in (idp_b.issuer, idp_b.client_secret, str(b.id), b.slug, idp_a.client_secret):
            assert leaked not in response.text, (response.request.url, leaked)
    # The organisation list is not public unless the operator says so.
    assert (await browser.get("/api/v1/auth/tenants")).status_code == 404


async def test_public_tenant_list_when_allowed(fed_a, browser, monkeypatch, settings):
    monkeypatch.setattr(settings, "oidc_public_tenant_list", True)
    listed = await browser.get("/api/v1/auth/tenants")
    assert listed.status_code == 200
    assert fed_a.slug in [t["slug"] for t in listed.json()["tenants"]]
    assert set(listed.json()["tenants"][0]) == {"slug", "name"}


async def test_debug_switch_expires_and_is_audited(sysadmin, runtime):
    bad = await sysadmin.post(
        "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": True, "duration_minutes": 0}
    )
    assert bad.status_code == 422
    bad = await sysadmin.post(
        "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": True, "duration_minutes": 1441}
    )
    assert bad.status_code == 422
    on = await sysadmin.post(
        "/api/v1/sysadmin/observability/oidc-debug/",
        json={"enabled": True, "duration_minutes": 10, "reason": "Login issue #452"},
    )
    assert on.status_code == 200, on.text
    state = on.json()
    assert (
        state["enabled"] is True
        and state["reason"] == "Login issue #452"
        and state["enabled_by"] == "sysadmin"
    )
    assert 590_000 < await get_redis().pttl(sso.DEBUG_KEY) <= 600_000
    assert await sso.debug_enabled() is True
    row = (await audit_rows("observability.oidc_debug_enabled"))[-1]
    assert row.changes["reason"] == "Login issue #452" and row.changes["duration_minutes"] == 10

    # Time runs out: the key's TTL switches debugging off without anyone calling.
    await get_redis().pexpire(sso.DEBUG_KEY, 50)
    await asyncio.sleep(0.2)
    got = await sysadmin.get("/api/v1/sysadmin/observability/oidc-debug/")
    assert got.json()["enabled"] is False
    assert await sso.debug_enabled() is False

    await sysadmin.post(
        "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": True, "reason": "again"}
    )
    off = await sysadmin.post(
        "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": False, "reason": "found it"}
    )
    assert off.json()["enabled"] is False
    rows = await audit_rows("observability.oidc_debug_disabled")
    assert rows[-1].changes["reason"] == "found it"


async def test_debug_logs_each_step_with_the_correlation_id_and_no_secrets(
    single_mode, idp_a, browser, sysadmin, caplog
):
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.INFO)
    # The test's own clients (browser, provider visit) log the callback URL with its code and state;
    # they are not our server, so their request logging stays out of the captured lines.
    httpx_logger = logging.getLogger("httpx")
    httpx_level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)
    try:
        await sysadmin.post(
            "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": True, "reason": "t"}
        )
        idp_a.misbehave(wrong_nonce=True)
        attempt = await sign_in(browser)
        cid = attempt.correlation_id
        assert cid
    finally:
        httpx_logger.setLevel(httpx_level)
        structlog.configure(**previous)
        await sysadmin.post(
            "/api/v1/sysadmin/observability/oidc-debug/", json={"enabled": False, "reason": "t"}
        )
    lines = [r.getMessage() for r in caplog.records if "oidc_debug" in r.getMessage()]
    steps = [line for line in lines if cid in line]
    assert any('"begin"' in line for line in steps) and any('"refused"' in line for line in steps), lines
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in [
        idp_a.client_secret,
        *idp_a.issued_tokens,
        *idp_a.issued_codes,
        attempt.callback_params["state"],
    ]:
        assert secret not in everything


async def test_sign_out_ends_the_session_and_offers_the_provider_logout(
    single_mode, idp_a, browser, settings
):
    org = single_mode
    await org.add_user("member", email=f"out@{domain_of(org)}")
    idp_a.next_user(sub="out-1", email=f"out@{domain_of(org)}")
    assert (await sign_in(browser)).response.status_code == 303
    # A cookie session changes nothing without the page's CSRF token.
    assert (await browser.post("/api/v1/auth/oidc/logout")).status_code == 403
    seed = "a-csrf-seed-of-sufficient-length"
    browser.cookies.set(CSRF_COOKIE, seed)
    key = hashlib.sha256(b"allting-csrf|" + settings.jwt_secret.encode()).digest()
    message = f"{seed}|{browser.cookies.get('allting_session')}".encode()
    token = hmac.new(key, message, hashlib.sha256).hexdigest()
    response = await browser.post("/api/v1/auth/oidc/logout", headers={CSRF_HEADER: token})
    assert response.status_code == 200, response.text
    url = response.json()["logout_url"]
    assert url.startswith(idp_a.issuer + "/logout?") and "client_id=" in url
    assert (await me(browser)).status_code == 401


async def test_sign_out_of_a_password_session_offers_no_provider_logout(single_mode, org):
    response = await org.owner.client.post("/api/v1/auth/oidc/logout")
    assert response.status_code == 200
    assert response.json()["logout_url"] is None
    assert (await org.owner.client.get("/api/v1/users/me/")).status_code == 401
