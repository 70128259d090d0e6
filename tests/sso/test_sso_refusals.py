"""Refused sign-ins create no session, show a correlation id and are audited with a reason code."""

from __future__ import annotations

import json
import time

import pytest
from sso_helpers import (
    audit_rows,
    begin,
    configure_federation,
    domain_of,
    finish,
    me,
    sessions_of,
    sign_in,
)

from allting.auth import oidc


async def _person(org, idp, local="anna"):
    person = await org.add_user("member", email=f"{local}@{domain_of(org)}")
    idp.next_user(sub=f"{local}-sub", email=person.email, email_verified=True)
    return person


async def _assert_refused(attempt, reason: str, person=None, tenant_id=None):
    response = attempt.response
    assert response.status_code == 401, response.text
    assert "set-cookie" not in response.headers or "allting_session=" not in response.headers["set-cookie"]
    assert response.headers["cache-control"] == "no-store"
    cid = attempt.correlation_id
    assert cid, response.text
    assert f'id="reason-code">{reason}<' in response.text
    rows = await audit_rows("auth.sso_login", cid)
    assert [(r.outcome, r.changes["reason_code"]) for r in rows] == [("failure", reason)]
    if tenant_id is not None:
        assert rows[0].tenant_id == tenant_id
    if person is not None:
        # The password login of `add_user` made one session; the refused sign-in made none.
        assert await sessions_of(person.id) == 1
    return cid


@pytest.mark.parametrize(
    ("switches", "reason"),
    [
        ({"wrong_nonce": True}, "nonce_mismatch"),
        ({"omit_nonce": True}, "nonce_mismatch"),
        ({"wrong_audience": True}, "audience_mismatch"),
        ({"wrong_token_issuer": True}, "issuer_mismatch"),
        ({"iss_param_mismatch": True}, "issuer_mismatch"),
        ({"omit_iss_param": True}, "issuer_mismatch"),
        ({"unknown_kid": True}, "unknown_kid"),
        ({"alg_none": True}, "alg_not_allowed"),
        ({"alg_hs256": True}, "alg_not_allowed"),
        ({"foreign_key": True}, "signature_invalid"),
        ({"expired_token": True}, "token_expired"),
        ({"token_error": "invalid_grant"}, "token_exchange_failed"),
    ],
)
async def test_protocol_refusals(single_mode, idp_a, browser, switches, reason):
    person = await _person(single_mode, idp_a)
    idp_a.misbehave(**switches)
    attempt = await sign_in(browser)
    await _assert_refused(attempt, reason, person, tenant_id=single_mode.id)
    assert (await me(browser)).status_code == 401


async def test_code_without_the_right_pkce_verifier(single_mode, idp_a, browser):
    """A code injected into another sign-in's callback is exchanged with that sign-in's verifier."""
    person = await _person(single_mode, idp_a)
    first = await begin(browser)
    second = await begin(browser)  # the browser's binding cookie is now the second one's
    await finish(browser, second, code=first.callback_params["code"])
    await _assert_refused(second, "token_exchange_failed", person)


async def test_missing_state(single_mode, idp_a, browser):
    person = await _person(single_mode, idp_a)
    attempt = await begin(browser)
    params = {k: v for k, v in attempt.callback_params.items() if k != "state"}
    attempt.callback_params = params
    await finish(browser, attempt)
    await _assert_refused(attempt, "state_missing", person)


async def test_reused_state(single_mode, idp_a, browser):
    person = await _person(single_mode, idp_a)
    attempt = await sign_in(browser)
    assert attempt.response.status_code == 303
    browser.cookies.delete("allting_session")
    await finish(browser, attempt)
    assert attempt.response.status_code == 401
    assert 'id="reason-code">state_reused<' in attempt.response.text
    assert await sessions_of(person.id) == 2  # the password login and the one good sign-in


async def test_expired_state(single_mode, idp_a, browser):
    person = await _person(single_mode, idp_a)
    attempt = await begin(browser)
    from allting.platform.redis import get_redis

    key = oidc.state_key(attempt.callback_params["state"])
    record = json.loads(await get_redis().get(key))
    record["expires_at"] = time.time() - 1
    await get_redis().set(key, json.dumps(record), keepttl=True)
    await finish(browser, attempt)
    await _assert_refused(attempt, "state_expired", person)


async def test_state_from_another_browser(single_mode, idp_a, browser, browser_factory):
    person = await _person(single_mode, idp_a)
    attempt = await begin(browser)
    other = browser_factory()
    await finish(other, attempt)
    await _assert_refused(attempt, "browser_mismatch", person)
    assert (await me(other)).status_code == 401


async def test_unverified_email_does_not_link(single_mode, idp_a, browser):
    person = await _person(single_mode, idp_a)
    idp_a.next_user(sub="someone-else", email=person.email, email_verified=False)
    attempt = await sign_in(browser)
    await _assert_refused(attempt, "email_not_linkable", person)


async def test_email_outside_the_allowed_domains_does_not_link(
    single_mode, idp_a, browser, monkeypatch, settings
):
    person = await _person(single_mode, idp_a)
    monkeypatch.setattr(settings, "oidc_allowed_domains", "another.example")
    attempt = await sign_in(browser)
    await _assert_refused(attempt, "email_not_linkable", person)


async def test_disabled_user_is_refused_whatever_the_provider_says(single_mode, idp_a, browser):
    org = single_mode
    person = await _person(org, idp_a)
    assert (await sign_in(browser)).response.status_code == 303
    disabled = await org.sysadmin.patch(f"/api/v1/sysadmin/users/{person.id}/", json={"state": "disabled"})
    assert disabled.status_code == 200, disabled.text
    before = await sessions_of(person.id)
    attempt = await sign_in(browser)
    assert attempt.response.status_code == 401
    assert 'id="reason-code">account_disabled<' in attempt.response.text
    assert await sessions_of(person.id) == before


async def test_account_bound_to_another_subject_is_not_taken_over(single_mode, idp_a, browser):
    person = await _person(single_mode, idp_a)
    assert (await sign_in(browser)).response.status_code == 303
    # The provider now gives the same verified e-mail to another subject (a recycled address).
    idp_a.next_user(sub="new-owner-of-the-address", email=person.email, email_verified=True)
    attempt = await sign_in(browser)
    assert attempt.response.status_code == 401
    assert 'id="reason-code">identity_conflict<' in attempt.response.text


async def test_jit_off_refuses_unknown_people(single_mode, idp_a, browser):
    idp_a.next_user(sub="new-1", email=f"new@{domain_of(single_mode)}")
    attempt = await sign_in(browser)
    await _assert_refused(attempt, "account_not_found")


async def test_jit_on_creates_with_the_default_role(fed_a, idp_a, browser):
    org = fed_a
    response = await configure_federation(org, idp_a, jit_provisioning=True, default_role="admin")
    assert response.status_code == 200, response.text
    assert response.json()["default_role"]["key"] == "admin"
    idp_a.next_user(sub="jit-1", email=f"Jit@{domain_of(org)}", name="Jit Person")
    attempt = await sign_in(browser, tenant=org.slug)
    assert attempt.response.status_code == 303, attempt.response.text
    mine = (await me(browser)).json()
    assert mine["email"] == f"jit@{domain_of(org)}"
    users = await org.sysadmin.get("/api/v1/sysadmin/users/", params={"tenant_id": str(org.id)})
    (created,) = [u for u in users.json()["items"] if u["email"] == mine["email"]]
    assert "admin" in json.dumps(created).lower()
    # An unverified e-mail is not enough for just-in-time creation either.
    idp_a.next_user(sub="jit-2", email=f"other@{domain_of(org)}", email_verified=False)
    refused = await sign_in(browser, tenant=org.slug)
    assert 'id="reason-code">email_not_linkable<' in refused.response.text


async def test_owner_cannot_be_the_default_role(fed_a, idp_a):
    response = await configure_federation(fed_a, idp_a, jit_provisioning=True, default_role="owner")
    assert response.status_code == 422


async def test_hostile_provider_of_tenant_b_signs_no_one_into_a(
    fed_a, fed_b, idp_a, idp_b, browser, browser_factory
):
    a, b = fed_a, fed_b
    victim = await _person(a, idp_a, "victim")

    # 1. B's provider asserts the verified e-mail of A's user at B: no link into A, no account in B.
    idp_b.next_user(sub="attacker", email=victim.email, email_verified=True)
    attempt = await sign_in(browser, tenant=b.slug)
    await _assert_refused(attempt, "email_not_linkable", victim, tenant_id=b.id)

    # 2. B's code and issuer delivered to A's sign-in (same browser): the issuer does not match.
    at_a = await begin(browser, tenant=a.slug)
    attacker = browser_factory()
    at_b = await begin(attacker, tenant=b.slug)
    await finish(browser, at_a, code=at_b.callback_params["code"], iss=at_b.callback_params["iss"])
    await _assert_refused(at_a, "issuer_mismatch", victim, tenant_id=a.id)

    # 3. A's state delivered to B's callback URI: another redirect URI than the sign-in started for.
    at_a = await begin(browser, tenant=a.slug)
    at_a.callback_path = f"/api/v1/auth/oidc/callback/{b.id}"
    await finish(browser, at_a)
    await _assert_refused(at_a, "redirect_mismatch", victim)
    assert (await me(browser)).status_code == 401


async def test_federation_start_for_unknown_or_unconfigured_tenants(federation_mode, org, browser):
    for slug in (org.slug, "no-such-tenant"):
        response = await browser.get("/api/v1/auth/oidc/start", params={"tenant": slug})
        assert response.status_code == 404
        assert "no-store" in response.headers["cache-control"]
