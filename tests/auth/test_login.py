"""Signing in with e-mail and password: POST /api/v1/users/login/token/."""

from __future__ import annotations

import uuid

import jwt
import pytest

LOGIN = "/api/v1/users/login/token/"
PASSWORD = "a-long-enough-password"


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def without_correlation_id(response) -> dict:
    body = response.json()
    assert body.pop("correlation_id")
    return body


async def test_login_answers_a_bearer_access_token(organisation, client_at, settings):
    person = await organisation.add("member")
    client = client_at()
    response = await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["refresh_token"]
    assert 0 < body["expires_in"] <= settings.access_token_minutes * 60
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(person.id)
    assert claims["tid"] == str(organisation.id)
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    me = await client.get("/api/v1/users/me/", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == person.email


async def test_login_email_ignores_case_and_surrounding_spaces(organisation, client_at):
    person = await organisation.add("member")
    response = await client_at().post(
        LOGIN, data={"username": f"  {person.email.upper()} ", "password": PASSWORD}
    )
    assert response.status_code == 200


async def test_each_login_starts_a_new_session_with_a_new_token(organisation, client_at):
    person = await organisation.add("member")
    client = client_at()
    first = (await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})).json()
    second = (await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})).json()
    assert first["access_token"] != second["access_token"]
    assert (
        jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
        != jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    )


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"username": "a@example.org"}, ["password"]),
        ({"password": "x"}, ["username"]),
        ({}, ["username", "password"]),
    ],
)
async def test_login_with_missing_fields_names_them(client_at, data, missing):
    response = await client_at().post(LOGIN, data=data)
    assert response.status_code == 422
    assert error_fields(response) == missing


async def test_login_takes_form_fields_not_json(organisation, client_at):
    response = await client_at().post(
        LOGIN, json={"username": organisation.owner.email, "password": PASSWORD}
    )
    assert response.status_code == 422
    assert set(error_fields(response)) == {"username", "password"}


async def test_unknown_user_and_wrong_password_look_identical(organisation, client_at):
    person = await organisation.add("member")
    client = client_at()
    unknown = await client.post(
        LOGIN, data={"username": f"nobody-{uuid.uuid4().hex}@x.example", "password": PASSWORD}
    )
    wrong = await client.post(LOGIN, data={"username": person.email, "password": PASSWORD + "!"})
    assert unknown.status_code == wrong.status_code == 401
    assert without_correlation_id(unknown) == without_correlation_id(wrong)
    assert without_correlation_id(wrong)["code"] == "login_failed"

    def headers(response):
        return {k: v for k, v in response.headers.items() if k not in ("x-correlation-id", "content-length")}

    assert headers(unknown) == headers(wrong)


async def test_login_is_throttled_per_account_and_the_right_password_does_not_get_through(
    organisation, client_at, settings
):
    person = await organisation.add("member")
    limit = settings.login_max_failures_per_account
    # spread over addresses, so only the per-account count can block
    for attempt in range(limit):
        failed = await client_at().post(
            LOGIN, data={"username": person.email, "password": f"wrong-{attempt}"}
        )
        assert failed.status_code == 401, attempt
    blocked = await client_at().post(LOGIN, data={"username": person.email.upper(), "password": PASSWORD})
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "login_throttled"
    assert 0 < int(blocked.headers["retry-after"]) <= settings.login_failure_window_seconds
    assert set(blocked.json()) == {"code", "message", "details", "correlation_id"}
    # the live session of the person is not affected, nor is anyone else's sign-in
    assert (await person.client.get("/api/v1/users/me/")).status_code == 200
    other = await organisation.add("member")
    assert (
        await client_at().post(LOGIN, data={"username": other.email, "password": PASSWORD})
    ).status_code == 200


async def test_a_successful_login_resets_the_account_count(organisation, client_at, settings, monkeypatch):
    monkeypatch.setattr(settings, "login_max_failures_per_account", 3)
    person = await organisation.add("member")
    client = client_at()
    for _ in range(2):
        for _ in range(2):
            assert (
                await client.post(LOGIN, data={"username": person.email, "password": "nope-nope"})
            ).status_code == 401
        assert (
            await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})
        ).status_code == 200
    for _ in range(3):
        await client.post(LOGIN, data={"username": person.email, "password": "nope-nope"})
    assert (
        await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})
    ).status_code == 429


async def test_login_is_throttled_per_client_address(organisation, client_at, settings, monkeypatch):
    monkeypatch.setattr(settings, "login_max_failures_per_address", 3)
    person = await organisation.add("member")
    client = client_at()
    for _ in range(3):
        response = await client.post(
            LOGIN, data={"username": f"guess-{uuid.uuid4().hex}@x.example", "password": "x" * 9}
        )
        assert response.status_code == 401
    blocked = await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert (
        await client_at().post(LOGIN, data={"username": person.email, "password": PASSWORD})
    ).status_code == 200


async def test_throttling_holds_while_redis_is_unreachable(organisation, client_at, settings, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from allting.platform import ratelimit

    def unreachable():
        raise RedisConnectionError("redis is down")

    monkeypatch.setattr(settings, "login_max_failures_per_account", 3)
    person = await organisation.add("member")
    monkeypatch.setattr(ratelimit, "get_redis", unreachable)
    client = client_at()
    for _ in range(3):
        assert (
            await client.post(LOGIN, data={"username": person.email, "password": "nope-nope"})
        ).status_code == 401
    blocked = await client.post(LOGIN, data={"username": person.email, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0


async def test_disabled_user_cannot_sign_in_and_their_live_token_stops_working(organisation, client_at):
    person = await organisation.add("member")
    assert (await person.client.get("/api/v1/users/me/")).status_code == 200
    disabled = await organisation.owner.client.patch(f"/api/v1/users/{person.id}", json={"state": "disabled"})
    assert disabled.status_code == 200
    live = await person.client.get("/api/v1/users/me/")
    assert live.status_code == 401
    login = await client_at().post(LOGIN, data={"username": person.email, "password": PASSWORD})
    assert login.status_code == 401
    refresh = await client_at().post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    assert refresh.status_code == 401


async def test_role_change_takes_effect_on_the_next_request_with_the_same_token(organisation):
    person = await organisation.add("member")
    roles = (await organisation.owner.client.get("/api/v1/roles/")).json()
    role = {r["key"]: r["id"] for r in roles}
    assert (await person.client.get("/api/v1/users/")).status_code == 403
    await organisation.owner.client.patch(f"/api/v1/users/{person.id}", json={"role_id": role["admin"]})
    assert (await person.client.get("/api/v1/users/")).status_code == 200
    await organisation.owner.client.patch(f"/api/v1/users/{person.id}", json={"role_id": role["member"]})
    assert (await person.client.get("/api/v1/users/")).status_code == 403
    me = await person.client.get("/api/v1/users/me/")
    assert "admin" not in me.json()["permissions"]


async def test_custom_role_permission_change_takes_effect_on_the_next_request(organisation):
    person = await organisation.add("member")
    owner = organisation.owner.client
    role = (await owner.post("/api/v1/roles/", json={"name": f"Readers {uuid.uuid4().hex[:6]}"})).json()
    await owner.patch(f"/api/v1/users/{person.id}", json={"role_id": role["id"]})
    assert (await person.client.get("/api/v1/audit/logs")).status_code == 403
    await owner.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["audit"]})
    assert (await person.client.get("/api/v1/audit/logs")).status_code == 200
    await owner.patch(f"/api/v1/roles/{role['id']}", json={"permissions": []})
    assert (await person.client.get("/api/v1/audit/logs")).status_code == 403


# --- password rules (ASVS 6.2) ----------------------------------------------------------------


async def create_with_password(organisation, password: str):
    return await organisation.sysadmin.post(
        "/api/v1/sysadmin/users/",
        json={
            "email": f"pw-{uuid.uuid4().hex[:8]}@{organisation.slug}.example",
            "password": password,
            "tenant_id": str(organisation.id),
        },
    )


@pytest.mark.parametrize("password", ["", "1234567", "seven77", " " * 12])
async def test_password_too_short_or_blank_is_refused(organisation, password):
    response = await create_with_password(organisation, password)
    assert response.status_code == 422
    assert error_fields(response) == ["password"]


async def test_eight_characters_are_enough(organisation):
    assert (await create_with_password(organisation, "12345678")).status_code == 201


async def test_long_passwords_work_in_full_and_are_not_truncated(organisation, client_at):
    client = client_at()
    for length in (64, 100):
        password = "".join(chr(ord("a") + i % 26) for i in range(length - 1)) + "Z"
        person = await organisation.add("member", password=password)
        assert (
            await client.post(LOGIN, data={"username": person.email, "password": password})
        ).status_code == 200
        for near_miss in {password[:-1] + "Y", password[:-1], password[:72], password[:64]} - {password}:
            response = await client.post(LOGIN, data={"username": person.email, "password": near_miss})
            assert response.status_code == 401, (length, len(near_miss))


async def test_unicode_password_works(organisation, client_at):
    password = "lösenord-åäö-密码-🔑"
    person = await organisation.add("member", password=password)
    response = await client_at().post(LOGIN, data={"username": person.email, "password": password})
    assert response.status_code == 200


def test_production_password_hashing_is_argon2id_with_owasp_parameters(cheap_password_hashing):
    import argon2

    stored = cheap_password_hashing.hash("a-long-enough-password")
    assert stored.startswith("$argon2id$")
    parameters = argon2.extract_parameters(stored)
    # OWASP Password Storage Cheat Sheet: argon2id with at least 19 MiB, 2 iterations, 1 lane
    assert parameters.memory_cost >= 19 * 1024
    assert parameters.time_cost >= 2
    assert cheap_password_hashing.verify(stored, "a-long-enough-password")


async def test_password_hashing_runs_off_the_event_loop(organisation, client_at, monkeypatch):
    """argon2 costs ~0.25 s of CPU: on the event loop it would stall every other request."""
    import threading

    from allting.platform import security

    loop_thread, used_threads = threading.current_thread(), []
    cheap = security._hasher

    class Recording:
        def hash(self, password):
            used_threads.append(threading.current_thread())
            return cheap.hash(password)

        def verify(self, stored, password):
            used_threads.append(threading.current_thread())
            return cheap.verify(stored, password)

    monkeypatch.setattr(security, "_hasher", Recording())
    person = await organisation.add("member")  # hashes, then signs in
    await client_at().post(LOGIN, data={"username": person.email, "password": "wrong-password"})
    await person.client.post(
        "/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": "another-password"}
    )
    assert len(used_threads) == 5
    assert loop_thread not in used_threads
