"""Sign-in tests: a module-wide organisation and clients that each come from their own address.

Failed sign-ins count against the client address (settings.login_max_failures_per_address), and
the root fixtures all share one address; tests that fail on purpose use `client_at()` so they
neither trip nor depend on the throttling of other tests. Each sign-in costs an argon2 hash, so
the organisation is shared by the tests of a module and each test makes the people it changes.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

PASSWORD = "a-long-enough-password"


def new_address() -> str:
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


def client_for(app, address: str | None = None, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address or new_address(), 40000)),
        base_url="http://testserver",
        headers=headers,
    )


@dataclass
class Person:
    id: uuid.UUID
    email: str
    password: str
    client: httpx.AsyncClient
    access_token: str
    refresh_token: str


@dataclass
class Organisation:
    app: object
    sysadmin: httpx.AsyncClient
    id: uuid.UUID
    slug: str
    clients: list = field(default_factory=list)
    owner: Person | None = None

    def client(self, address: str | None = None, **headers) -> httpx.AsyncClient:
        client = client_for(self.app, address, **headers)
        self.clients.append(client)
        return client

    async def add(self, role: str = "member", password: str = PASSWORD, email: str | None = None) -> Person:
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@{self.slug}.example"
        response = await self.sysadmin.post(
            "/api/v1/sysadmin/users/",
            json={"email": email, "password": password, "tenant_id": str(self.id), "role": role},
        )
        assert response.status_code == 201, response.text
        client = self.client()
        tokens = await client.post(
            "/api/v1/users/login/token/", data={"username": email, "password": password}
        )
        assert tokens.status_code == 200, tokens.text
        client.headers["Authorization"] = f"Bearer {tokens.json()['access_token']}"
        return Person(
            id=uuid.UUID(response.json()["id"]),
            email=email,
            password=password,
            client=client,
            access_token=tokens.json()["access_token"],
            refresh_token=tokens.json()["refresh_token"],
        )


@pytest.fixture(scope="module")
async def organisation(app, settings):
    async with client_for(app, **{"X-API-Key": settings.sysadmin_api_key}) as sysadmin:
        response = await sysadmin.post("/api/v1/sysadmin/tenants/", json={"name": f"Auth {uuid.uuid4().hex}"})
        assert response.status_code == 201, response.text
        tenant = response.json()
        organisation = Organisation(
            app=app, sysadmin=sysadmin, id=uuid.UUID(tenant["id"]), slug=tenant["slug"]
        )
        organisation.owner = await organisation.add("owner")
        yield organisation
        for client in organisation.clients:
            await client.aclose()


@pytest.fixture
def client_at(organisation):
    """A client from a fresh address (or the one given), closed with the module."""
    return organisation.client
