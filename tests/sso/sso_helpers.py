"""Helpers for the single sign-on tests: play the browser through start, provider and callback."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import httpx

from allting.testing.oidc_provider import OidcProvider, follow_authorization

CLIENT_ADDRESS = "203.0.113.7"


def make_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(CLIENT_ADDRESS, 40000)), base_url="http://testserver"
    )


def domain_of(org) -> str:
    return f"{org.slug}.example"


async def configure_federation(org, idp: OidcProvider, **fields) -> httpx.Response:
    body = {
        "provider": "generic",
        "discovery_endpoint": idp.discovery_url,
        "client_id": idp.client_id,
        "client_secret": idp.client_secret,
        "allowed_domains": [domain_of(org)],
        **fields,
    }
    return await org.sysadmin.put(f"/api/v1/sysadmin/tenants/{org.id}/federation", json=body)


@dataclass
class Attempt:
    """One sign-in through the app: start → provider → callback."""

    start: httpx.Response
    callback_params: dict[str, str]
    callback_path: str
    response: httpx.Response | None = None

    @property
    def correlation_id(self) -> str | None:
        if self.response is None:
            return None
        if self.response.headers.get("content-type", "").startswith("application/json"):
            return self.response.json().get("correlation_id")
        text = self.response.text
        marker = 'id="correlation-id">'
        if marker not in text:
            return None
        return text.split(marker, 1)[1].split("<", 1)[0]


async def begin(client: httpx.AsyncClient, tenant: str | None = None, next: str = "/") -> Attempt:
    params = {"next": next}
    if tenant:
        params["tenant"] = tenant
    start = await client.get("/api/v1/auth/oidc/start", params=params)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    redirect_uri = dict(parse_qsl(urlsplit(location).query))["redirect_uri"]
    callback = await follow_authorization(location)
    return Attempt(start=start, callback_params=callback, callback_path=urlsplit(redirect_uri).path)


async def finish(client: httpx.AsyncClient, attempt: Attempt, **override: str) -> httpx.Response:
    params = {**attempt.callback_params, **override}
    attempt.response = await client.get(attempt.callback_path, params=params)
    return attempt.response


async def sign_in(client: httpx.AsyncClient, tenant: str | None = None, next: str = "/") -> Attempt:
    attempt = await begin(client, tenant, next)
    await finish(client, attempt)
    return attempt


async def me(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/api/v1/users/me/")


async def sessions_of(user_id: uuid.UUID) -> int:
    from sqlalchemy import func, select

    from allting.auth.models import AuthSession
    from allting.platform.db import system_transaction

    async with system_transaction() as db:
        return await db.scalar(select(func.count()).where(AuthSession.user_id == user_id))


async def audit_rows(action: str, correlation_id: str | None = None, tenant_id=None) -> list:
    from sqlalchemy import select

    from allting.audit.models import AuditLog
    from allting.platform.db import system_transaction

    async with system_transaction() as db:
        query = select(AuditLog).where(AuditLog.action == action)
        if correlation_id:
            query = query.where(AuditLog.correlation_id == correlation_id)
        if tenant_id:
            query = query.where(AuditLog.tenant_id == tenant_id)
        return list(await db.scalars(query.order_by(AuditLog.created_at)))
