"""Test fixtures: one embedded PostgreSQL and Redis per run, started by the real launcher.

Set ALLTING_TEST_DATABASE_URL / ALLTING_TEST_REDIS_URL to run against external servers instead.
Tests are isolated by fresh tenants: every `tenant` fixture creates a new organisation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# A data directory made here is removed when the run ends (about 50 MB of PostgreSQL files per run);
# one named by ALLTING_TEST_DATA_DIR is kept for inspection.
_CHOSEN_DATA_DIR = os.environ.get("ALLTING_TEST_DATA_DIR")
_DATA_DIR = Path(_CHOSEN_DATA_DIR or tempfile.mkdtemp(prefix="allting-test-"))
os.environ["ALLTING_DATA_DIR"] = str(_DATA_DIR)
os.environ.setdefault("LOG_FORMAT", "json")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# The stub LLM, the test OpenID provider and the test website listen on loopback, which the
# outbound guard refuses unless the operator lists it: the tests list it explicitly.
os.environ["OUTBOUND_ALLOWED_NETWORKS"] = "127.0.0.1/32"
for name in ("DATABASE_URL", "REDIS_URL"):
    if test_url := os.environ.get(f"ALLTING_TEST_{name}"):
        os.environ[name] = test_url
    else:
        os.environ.pop(name, None)

from allting.platform.logging import configure_logging  # noqa: E402
from allting.platform.settings import get_settings  # noqa: E402

get_settings.cache_clear()
# The application's own log set-up, so the secret scrubbing runs in tests too.
configure_logging(os.environ["LOG_LEVEL"], os.environ["LOG_FORMAT"])


def pytest_sessionfinish(session, exitstatus):
    """Runs after the session's fixtures are torn down, so the embedded servers have stopped."""
    if not _CHOSEN_DATA_DIR:
        shutil.rmtree(_DATA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    return get_settings()


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing():
    """argon2id at minimal cost while the tests run (as Django's tests swap in a fast hasher): the
    production parameters cost about 0.25 s per hash. Yields the production hasher, whose parameters
    tests/auth checks on their own."""
    from argon2 import PasswordHasher

    from allting.platform import security

    production = security._hasher, security._DUMMY_HASH
    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    security._DUMMY_HASH = security._hasher.hash("not a password of anyone")
    yield production[0]
    security._hasher, security._DUMMY_HASH = production


@pytest.fixture(scope="session")
async def runtime(settings):
    from allting.ai import gateway
    from allting.platform import runtime as runtime_module

    active = await runtime_module.start(settings)
    yield active
    await gateway.close_clients()
    await runtime_module.stop(active)


@pytest.fixture(scope="session")
def app(runtime):
    from allting.main import create_app

    return create_app(runtime=runtime, in_process_worker=False)


def make_client(app, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
        base_url="http://testserver",
        headers=headers,
    )


@pytest.fixture
async def anon(app) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app) as client:
        yield client


@pytest.fixture
async def sysadmin(app, settings) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app, **{"X-API-Key": settings.sysadmin_api_key}) as client:
        yield client


@dataclass
class Person:
    id: uuid.UUID
    email: str
    password: str
    client: httpx.AsyncClient


@dataclass
class Org:
    """A fresh tenant with an owner; `add_user` creates more people with their own signed-in clients."""

    id: uuid.UUID
    slug: str
    owner: Person
    app: object
    sysadmin: httpx.AsyncClient
    clients: list

    async def add_user(
        self, role: str = "member", email: str | None = None, password: str = "a-long-enough-password"
    ) -> Person:
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@{self.slug}.example"
        response = await self.sysadmin.post(
            "/api/v1/sysadmin/users/",
            json={"email": email, "password": password, "tenant_id": str(self.id), "role": role},
        )
        assert response.status_code == 201, response.text
        client = await login_client(self.app, email, password, self.clients)
        return Person(id=uuid.UUID(response.json()["id"]), email=email, password=password, client=client)


async def login_client(app, email: str, password: str, registry: list) -> httpx.AsyncClient:
    client = make_client(app)
    registry.append(client)
    response = await client.post("/api/v1/users/login/token/", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return client


async def create_org(app, sysadmin: httpx.AsyncClient, clients: list, name: str | None = None) -> Org:
    name = name or f"Org {uuid.uuid4().hex[:10]}"
    response = await sysadmin.post("/api/v1/sysadmin/tenants/", json={"name": name})
    assert response.status_code == 201, response.text
    tenant = response.json()
    org = Org(
        id=uuid.UUID(tenant["id"]),
        slug=tenant["slug"],
        owner=None,
        app=app,
        sysadmin=sysadmin,
        clients=clients,
    )
    org.owner = await org.add_user("owner")
    return org


@pytest.fixture
async def org_factory(app, sysadmin):
    clients: list[httpx.AsyncClient] = []

    async def factory(name: str | None = None) -> Org:
        return await create_org(app, sysadmin, clients, name)

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def org(org_factory) -> Org:
    return await org_factory()


@pytest.fixture
async def other_org(org_factory) -> Org:
    return await org_factory()


@pytest.fixture(scope="session")
def stub_llm():
    """The project's OpenAI-compatible stub server, reached through the real gateway."""
    from allting.testing.stub_llm import StubLLM

    with StubLLM() as server:
        yield server


@pytest.fixture
def llm(stub_llm):
    stub_llm.reset()
    return stub_llm


async def enable_stub_model(org: Org, stub, *, name: str = "stub-chat", **fields) -> dict:
    """Give an org a provider account on the stub and an enabled default completion model."""
    provider = await org.owner.client.post(
        "/api/v1/admin/model-providers/",
        json={
            "name": f"stub-{uuid.uuid4().hex[:6]}",
            "provider_type": "vllm",
            "endpoint": stub.url,
            "api_key": "sk-stub-key-for-tests",
        },
    )
    assert provider.status_code == 201, provider.text
    model = await org.owner.client.post(
        "/api/v1/ai-models/",
        json={
            "kind": "completion",
            "name": name,
            "display_name": f"{name} {uuid.uuid4().hex[:4]}",
            "provider_id": provider.json()["id"],
            "context_window": 8192,
            "hosting": "on_premises",
            "security_level": 3,
            "is_enabled": True,
            "is_default": True,
            **fields,
        },
    )
    assert model.status_code == 201, model.text
    return model.json()


@pytest.fixture
async def chat_org(org, llm) -> Org:
    """An org whose default completion model is the stub."""
    org.model = await enable_stub_model(org, llm)
    return org


@pytest.fixture(scope="session")
async def live_url(app):
    """The app served by uvicorn on a loopback port, in the test loop: for real disconnects and WebSockets."""
    import asyncio
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


@pytest.fixture(scope="session")
def local_model():
    """The local embedding model, loaded once before the tests that time their jobs."""
    from allting.ai import local_embeddings

    return local_embeddings.get_model()
