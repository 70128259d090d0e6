"""A module-wide organisation for the tenant-admin API tests.

Signing someone in costs an argon2 hash (about 0.25 s), so people whose state a test does not
change are shared by the tests of a module; a test that disables, demotes or deletes someone
makes its own person with `team.add(role)`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import httpx
import pytest

PASSWORD = "a-long-enough-password"


def client_for(app, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
        base_url="http://testserver",
        headers=headers,
    )


@dataclass
class Member:
    id: uuid.UUID
    email: str
    client: httpx.AsyncClient


@dataclass
class Team:
    """An organisation with an owner, an admin and a member, each signed in with their own client."""

    app: object
    sysadmin: httpx.AsyncClient
    id: uuid.UUID = None
    slug: str = ""
    owner: Member = None
    admin: Member = None
    member: Member = None
    clients: list = field(default_factory=list)

    async def add(self, role: str = "member", email: str | None = None) -> Member:
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@{self.slug}.example"
        response = await self.sysadmin.post(
            "/api/v1/sysadmin/users/",
            json={"email": email, "password": PASSWORD, "tenant_id": str(self.id), "role": role},
        )
        assert response.status_code == 201, response.text
        return Member(
            id=uuid.UUID(response.json()["id"]), email=email, client=await self.sign_in(email, PASSWORD)
        )

    async def sign_in(self, email: str, password: str) -> httpx.AsyncClient:
        client = client_for(self.app)
        self.clients.append(client)
        response = await client.post(
            "/api/v1/users/login/token/", data={"username": email, "password": password}
        )
        assert response.status_code == 200, response.text
        client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return client

    async def try_login(self, email: str, password: str) -> httpx.Response:
        async with client_for(self.app) as client:
            return await client.post(
                "/api/v1/users/login/token/", data={"username": email, "password": password}
            )

    async def role_id(self, key: str) -> str:
        roles = (await self.owner.client.get("/api/v1/roles/")).json()
        return next(role["id"] for role in roles if role["key"] == key)


@pytest.fixture(scope="module")
async def team(app, settings):
    async with client_for(app, **{"X-API-Key": settings.sysadmin_api_key}) as sysadmin:
        response = await sysadmin.post("/api/v1/sysadmin/tenants/", json={"name": f"Team {uuid.uuid4().hex}"})
        assert response.status_code == 201, response.text
        team = Team(
            app=app, sysadmin=sysadmin, id=uuid.UUID(response.json()["id"]), slug=response.json()["slug"]
        )
        team.owner = await team.add("owner")
        team.admin = await team.add("admin")
        team.member = await team.add("member")
        yield team
        for client in team.clients:
            await client.aclose()
