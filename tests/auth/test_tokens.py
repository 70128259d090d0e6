"""Access tokens, refresh, logout and what is not an access token."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import timedelta

import jwt
import pytest

from allting.auth import service as auth_service
from allting.deps import WEB_SESSION_COOKIE
from allting.platform.security import issue_token

ME = "/api/v1/users/me/"


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_like(token: str, settings, *, purpose: str = "access", lifetime: timedelta) -> str:
    """A token for the same person, organisation and session as `token`, signed with the real key."""
    claims = claims_of(token)
    issued, _ = issue_token(
        settings.jwt_secret,
        purpose=purpose,
        user_id=uuid.UUID(claims["sub"]),
        tenant_id=uuid.UUID(claims["tid"]),
        session_id=uuid.UUID(claims["sid"]),
        lifetime=lifetime,
    )
    return issued


async def as_bearer(client, token: str):
    return await client.get(ME, headers={"Authorization": f"Bearer {token}"})


# --- logout and refresh -----------------------------------------------------------------------


async def test_logout_revokes_the_token_and_its_refresh_token(organisation, client_at):
    person = await organisation.add("member")
    other_session = await organisation.add("member")
    response = await person.client.post("/api/v1/auth/logout")
    assert response.status_code == 204
    after = await person.client.get(ME)
    assert after.status_code == 401
    assert after.json()["code"] == "session_ended"
    refresh = await client_at().post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    assert refresh.status_code == 401
    assert (await person.client.post("/api/v1/auth/logout")).status_code == 401
    assert (await other_session.client.get(ME)).status_code == 200


async def test_logout_ends_only_that_session(organisation, client_at):
    person = await organisation.add("member")
    second = client_at()
    tokens = await second.post(
        "/api/v1/users/login/token/", data={"username": person.email, "password": person.password}
    )
    await person.client.post("/api/v1/auth/logout")
    assert (await as_bearer(second, tokens.json()["access_token"])).status_code == 200


async def test_logout_needs_a_signed_in_caller(anon):
    assert (await anon.post("/api/v1/auth/logout")).status_code == 401


async def test_refresh_rotates_the_refresh_token(organisation, client_at):
    person = await organisation.add("member")
    client = client_at()
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    assert first.status_code == 200
    body = first.json()
    assert body["token_type"] == "bearer"
    assert body["refresh_token"] != person.refresh_token
    assert claims_of(body["access_token"])["sid"] == claims_of(person.access_token)["sid"]
    assert (await as_bearer(client, body["access_token"])).status_code == 200

    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    assert reused.status_code == 401
    assert reused.json()["code"] == "invalid_token"
    second = await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert second.status_code == 200


async def test_logout_with_a_refreshed_token_ends_the_whole_session(organisation, client_at):
    person = await organisation.add("member")
    client = client_at()
    refreshed = (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    ).json()
    await client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {refreshed['access_token']}"})
    assert (await person.client.get(ME)).status_code == 401
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": refreshed["refresh_token"]})
    ).status_code == 401


@pytest.mark.parametrize(
    "token", ["", "garbage", f"{uuid.uuid4()}.secret", "not-a-uuid.secret", f"{uuid.uuid4()}", "." * 3]
)
async def test_refresh_with_a_made_up_token_is_refused(client_at, token):
    response = await client_at().post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_refresh_token_of_one_session_does_not_open_another(organisation, client_at):
    a, b = await organisation.add("member"), await organisation.add("member")
    session_a = a.refresh_token.split(".")[0]
    secret_b = b.refresh_token.split(".", 1)[1]
    response = await client_at().post(
        "/api/v1/auth/refresh", json={"refresh_token": f"{session_a}.{secret_b}"}
    )
    assert response.status_code == 401


async def test_refresh_without_a_token_names_the_field(client_at):
    response = await client_at().post("/api/v1/auth/refresh", json={})
    assert response.status_code == 422
    assert error_fields(response) == ["refresh_token"]


async def test_an_access_token_is_not_a_refresh_token(organisation, client_at):
    person = await organisation.add("member")
    response = await client_at().post("/api/v1/auth/refresh", json={"refresh_token": person.access_token})
    assert response.status_code == 401


# --- what is not an access token --------------------------------------------------------------


async def test_a_web_session_token_is_not_a_bearer_token(organisation, client_at):
    person = await organisation.add("member")
    web = await auth_service.login(
        person.email,
        person.password,
        tenant_slug=None,
        client_address=None,
        user_agent=None,
        correlation_id=None,
        kind="web",
    )
    client = client_at()
    assert (await client.get(ME, cookies={WEB_SESSION_COOKIE: web.access_token})).status_code == 200
    assert (await as_bearer(client, web.access_token)).status_code == 401


async def test_an_access_token_is_not_a_web_session_cookie(organisation, client_at):
    person = await organisation.add("member")
    response = await client_at().get(ME, cookies={WEB_SESSION_COOKIE: person.access_token})
    assert response.status_code == 401


async def test_an_invitation_token_is_not_a_bearer_token(organisation, client_at):
    invited = await organisation.owner.client.post(
        "/api/v1/users/invitations/",
        json={"email": f"inv-{uuid.uuid4().hex[:8]}@{organisation.slug}.example"},
    )
    token = invited.json()["invitation_token"]
    assert claims_of(token)["typ"] == "invite"
    assert (await as_bearer(client_at(), token)).status_code == 401


async def test_a_token_of_another_purpose_signed_with_the_real_key_is_refused(
    organisation, client_at, settings
):
    person = await organisation.add("member")
    for purpose in ("web", "invite", "refresh", "oidc_state"):
        token = token_like(person.access_token, settings, purpose=purpose, lifetime=timedelta(minutes=5))
        assert (await as_bearer(client_at(), token)).status_code == 401, purpose
    # the same claims as an access token do work: the purpose alone made the difference
    token = token_like(person.access_token, settings, lifetime=timedelta(minutes=5))
    assert (await as_bearer(client_at(), token)).status_code == 200


async def test_a_token_with_alg_none_is_refused(organisation, client_at):
    person = await organisation.add("member")
    claims = claims_of(person.access_token)
    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."
        response = await as_bearer(client_at(), unsigned)
        assert response.status_code == 401, alg
        assert response.json()["code"] == "invalid_token"


async def test_a_token_signed_with_another_key_or_algorithm_is_refused(organisation, client_at):
    person = await organisation.add("member")
    claims = claims_of(person.access_token)
    for key, algorithm in (("another-key-" * 4, "HS256"), ("another-key-" * 6, "HS512")):
        forged = jwt.encode(claims, key, algorithm=algorithm)
        assert (await as_bearer(client_at(), forged)).status_code == 401, algorithm


async def test_a_tampered_token_is_refused(organisation, client_at):
    person = await organisation.add("member")
    header, _payload, signature = person.access_token.split(".")
    claims = claims_of(person.access_token)
    claims["sub"] = str(organisation.owner.id)
    assert (await as_bearer(client_at(), f"{header}.{b64(claims)}.{signature}")).status_code == 401


async def test_an_expired_token_is_refused(organisation, client_at, settings):
    person = await organisation.add("member")
    token = token_like(person.access_token, settings, lifetime=timedelta(seconds=-120))
    response = await as_bearer(client_at(), token)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_a_token_accepted_before_is_refused_once_it_expires(organisation, client_at, settings):
    person = await organisation.add("member")
    token = token_like(person.access_token, settings, lifetime=timedelta(seconds=2))
    assert (await as_bearer(client_at(), token)).status_code == 200
    await asyncio.sleep(2.1)
    response = await as_bearer(client_at(), token)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_a_token_for_a_session_that_does_not_exist_is_refused(organisation, client_at, settings):
    token, _ = issue_token(
        settings.jwt_secret,
        purpose="access",
        user_id=organisation.owner.id,
        tenant_id=organisation.id,
        session_id=uuid.uuid4(),
        lifetime=timedelta(minutes=5),
    )
    assert (await as_bearer(client_at(), token)).status_code == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "bearer x.y.z"])
async def test_other_authorization_headers_are_refused(client_at, header):
    response = await client_at().get(ME, headers={"Authorization": header})
    assert response.status_code == 401
    assert set(response.json()) == {"code", "message", "details", "correlation_id"}
