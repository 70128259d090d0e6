"""What every HTTP answer has in common: error shape, correlation id, size limit, headers, probes."""

from __future__ import annotations

import dataclasses
import re
import uuid

import asyncpg
import httpx
import pytest
from fastapi import Request
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from allting.main import create_app
from allting.platform.db import (
    DbSession,
    DriverStatement,
    SettingsOnBeginConnection,
    get_db,
    transaction_driver_connection,
)

ERROR_KEYS = {"code", "message", "details", "correlation_id"}


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


def fresh_app(runtime, **settings):
    """The application on the shared servers, with some settings changed."""
    changed = dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=settings))
    return create_app(runtime=changed, in_process_worker=False)


def client_of(app, address: str = "203.0.113.7", **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 40000), **kwargs),
        base_url="http://testserver",
    )


# --- one error shape --------------------------------------------------------------------------


async def test_every_kind_of_error_has_the_same_shape(anon, org):
    member = await org.add_user("member")
    cases = [
        (401, await anon.get("/api/v1/users/me/")),
        (403, await member.client.get("/api/v1/users/")),
        (404, await anon.get("/api/v1/no-such-route")),
        (404, await anon.get("/api/nowhere")),
        (404, await org.owner.client.get(f"/api/v1/users/{uuid.uuid4()}")),
        (405, await anon.delete("/api/v1/users/login/token/")),
        (409, await org.owner.client.post("/api/v1/users/", json={"email": org.owner.email})),
        (422, await org.owner.client.post("/api/v1/groups/", json={"name": ""})),
        (
            422,
            await org.owner.client.post(
                "/api/v1/groups/", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
        ),
    ]
    for status, response in cases:
        assert response.status_code == status, (status, response.text)
        assert response.headers["content-type"] == "application/json"
        error_of(response)
    assert error_of(cases[2][1])["code"] == "not_found"
    assert error_of(cases[5][1])["code"] == "method_not_allowed"


async def test_validation_errors_name_each_bad_field(org):
    response = await org.owner.client.post(
        "/api/v1/users/", json={"email": "not-an-address", "name": "n" * 201, "role_id": "x"}
    )
    assert response.status_code == 422
    body = error_of(response)
    assert body["code"] == "validation_error"
    assert {detail["field"] for detail in body["details"]} == {"email", "name", "role_id"}
    assert all(detail["message"] for detail in body["details"])
    assert "email" in body["message"]


async def test_an_unexpected_error_is_a_500_in_the_same_shape_without_internals(runtime):
    app = fresh_app(runtime)

    async def explode() -> dict:
        raise RuntimeError("secret internal detail sk-live-0123456789abcdef")

    app.add_api_route("/api/v1/test-explode", explode)
    async with client_of(app, raise_app_exceptions=False) as client:
        response = await client.get("/api/v1/test-explode", headers={"X-Correlation-ID": "trace-500-abcdef"})
    assert response.status_code == 500
    body = error_of(response)
    assert body["code"] == "internal_error"
    assert body["correlation_id"] == "trace-500-abcdef"
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_a_database_connection_lost_under_a_driver_statement_is_a_503(runtime):
    app = fresh_app(runtime)
    statement = DriverStatement(text("SELECT 1"))

    async def lose_the_connection(db: DbSession) -> dict:
        connection = await transaction_driver_connection(db)
        superuser = await asyncpg.connect(
            f"postgresql://postgres@/allting?host={runtime.services.postgres_socket_dir}"
        )
        try:
            await superuser.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        finally:
            await superuser.close()
        await statement.fetch(db)
        return {}

    app.add_api_route("/api/v1/test-lost-connection", lose_the_connection)
    async with client_of(app, raise_app_exceptions=False) as client:
        response = await client.get("/api/v1/test-lost-connection")
        assert response.status_code == 503
        assert error_of(response)["code"] == "service_unavailable"
        assert response.headers["retry-after"]
        assert (await client.get("/api/readyz")).status_code == 200


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ],
)
async def test_asyncpg_errors_of_a_lost_database_are_a_503(runtime, error):
    # A driver statement raises asyncpg's errors, not SQLAlchemy's; when nothing else fails
    # after it (here: no transaction to roll back), they must still read as an outage.
    app = fresh_app(runtime)

    async def lost() -> dict:
        raise error

    app.add_api_route("/api/v1/test-asyncpg-outage", lost)
    async with client_of(app, raise_app_exceptions=False) as client:
        response = await client.get("/api/v1/test-asyncpg-outage")
    assert response.status_code == 503
    assert error_of(response)["details"] == {"dependency": "postgres"}


async def test_a_request_finding_every_pooled_connection_busy_gets_a_503_and_the_pool_recovers(runtime):
    app = fresh_app(runtime)
    engine = create_async_engine(
        runtime.urls.app,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
        connect_args={"connection_class": SettingsOnBeginConnection},
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def pooled_db():
        async with sessions() as db, db.begin():
            yield db

    async def count(db: DbSession) -> dict:
        return {"one": (await db.execute(text("SELECT 1"))).scalar_one()}

    app.dependency_overrides[get_db] = pooled_db
    app.add_api_route("/api/v1/test-pool", count)
    try:
        async with client_of(app, raise_app_exceptions=False) as client:
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))  # the pool's only connection, kept busy
                response = await client.get("/api/v1/test-pool")
                assert response.status_code == 503
                assert error_of(response)["details"] == {"dependency": "postgres"}
                assert response.headers["retry-after"]
            response = await client.get("/api/v1/test-pool")
            assert response.status_code == 200 and response.json() == {"one": 1}
    finally:
        await engine.dispose()


# --- correlation id ---------------------------------------------------------------------------


async def test_a_valid_correlation_id_is_echoed(anon):
    for path in ("/api/healthz", "/api/v1/users/me/"):
        response = await anon.get(path, headers={"X-Correlation-ID": "client-trace-0001"})
        assert response.headers["x-correlation-id"] == "client-trace-0001"
    assert response.json()["correlation_id"] == "client-trace-0001"


@pytest.mark.parametrize(
    "incoming", ["short", "has spaces in it", "x" * 65, "semi;colon;id", "ünïcode-trace"]
)
async def test_an_invalid_correlation_id_is_replaced(anon, incoming):
    response = await anon.get("/api/v1/users/me/", headers={"X-Correlation-ID": incoming.encode()})
    generated = response.headers["x-correlation-id"]
    assert generated != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json()["correlation_id"] == generated


async def test_every_answer_gets_its_own_correlation_id(anon):
    ids = {(await anon.get("/api/healthz")).headers["x-correlation-id"] for _ in range(3)}
    assert len(ids) == 3


# --- request size -----------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_refused_with_413(anon, settings):
    too_big = b'{"refresh_token": "' + b"x" * settings.max_request_bytes + b'"}'
    response = await anon.post(
        "/api/v1/auth/refresh", content=too_big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_streamed_body_over_the_limit_is_refused_with_413(anon, settings):
    async def chunks():
        yield b'{"refresh_token": "'
        for _ in range(settings.max_request_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = await anon.post(
        "/api/v1/auth/refresh", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


async def test_a_body_within_the_limit_is_read(anon, settings):
    token = "x" * (settings.max_request_bytes - 100)
    response = await anon.post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert response.status_code == 401


# --- headers ----------------------------------------------------------------------------------


async def test_api_answers_carry_the_security_headers(anon, org):
    responses = [
        await anon.get("/api/healthz"),
        await org.owner.client.get("/api/v1/users/me/"),
        await anon.get("/api/v1/users/me/"),
        await anon.get("/api/v1/missing"),
        await anon.get("/api/openapi.json"),
    ]
    for response in responses:
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff", response.url
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["cache-control"] == "no-store"


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(runtime, anon):
    app = fresh_app(runtime, trusted_proxies="10.0.0.0/8")

    async def where(request: Request) -> dict:
        return {"client": request.state.client_address}

    app.add_api_route("/api/v1/test-where", where)
    spoof = {"X-Forwarded-For": "198.51.100.1, 192.0.2.9"}
    async with client_of(app, address="203.0.113.7") as direct, client_of(app, address="10.1.2.3") as proxied:
        assert (await direct.get("/api/v1/test-where", headers=spoof)).json() == {"client": "203.0.113.7"}
        assert (await proxied.get("/api/v1/test-where", headers=spoof)).json() == {"client": "192.0.2.9"}
        chain = {"X-Forwarded-For": "198.51.100.1, 10.9.9.9"}
        assert (await proxied.get("/api/v1/test-where", headers=chain)).json() == {"client": "198.51.100.1"}
        assert (await proxied.get("/api/v1/test-where")).json() == {"client": "10.1.2.3"}


async def test_cors_answers_only_the_allowed_origins(runtime, anon):
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    response = await anon.options(
        "/api/v1/users/me/", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in response.headers
    app = fresh_app(runtime, cors_origins="https://app.example")
    async with client_of(app) as client:
        allowed = await client.options(
            "/api/v1/users/me/", headers={"Origin": "https://app.example", **preflight}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.get("/api/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- probes and documentation -----------------------------------------------------------------


async def test_health_and_readiness(anon):
    health = await anon.get("/api/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await anon.get("/api/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_openapi_lists_every_api_route(anon, app):
    response = await anon.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "Allting"
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    expected = {
        (context.path, method)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        and context.include_in_schema
        and (context.path or "").startswith("/api/")
        for method in context.methods
    }
    assert len(expected) > 40
    assert expected - documented == set()
    assert "/api/v1/users/login/token/" in document["paths"]
    operation_ids = [
        operation["operationId"] for item in document["paths"].values() for operation in item.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))
    docs = await anon.get("/docs")
    assert docs.status_code == 200
    assert "/api/openapi.json" in docs.text
