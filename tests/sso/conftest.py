"""Fixtures for single sign-on through the app: test providers on loopback, both modes, a browser."""

from __future__ import annotations

import httpx
import pytest
from sso_helpers import CLIENT_ADDRESS, configure_federation, domain_of, make_client

from allting.auth import oidc
from allting.platform import ratelimit
from allting.testing.oidc_provider import OidcProvider


@pytest.fixture(scope="session")
def idp_a():
    with OidcProvider(path="/realms/tenant-a") as provider:
        yield provider


@pytest.fixture(scope="session")
def idp_b():
    """Registered for tenant B; tests make it hostile towards tenant A."""
    with OidcProvider(path="/realms/tenant-b") as provider:
        yield provider


@pytest.fixture(autouse=True)
async def _fresh(request, runtime):
    for name in ("idp_a", "idp_b"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()
    oidc.clear_caches()
    await ratelimit.clear(f"throttle:oidc-start:{CLIENT_ADDRESS}")
    yield
    oidc.clear_caches()


@pytest.fixture
async def browser(app):
    async with make_client(app) as client:
        yield client


@pytest.fixture
async def browser_factory(app):
    clients: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        client = make_client(app)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
def single_mode(monkeypatch, settings, idp_a, org):
    """Single-tenant mode: OIDC_* settings point at idp_a, signing into `org`."""
    for name, value in {
        "federation_per_tenant_enabled": False,
        "oidc_discovery_endpoint": idp_a.discovery_url,
        "oidc_client_id": idp_a.client_id,
        "oidc_client_secret": idp_a.client_secret,
        "oidc_tenant": org.slug,
        "oidc_allowed_domains": domain_of(org),
        "oidc_jit_provisioning": False,
        "oidc_default_role": "member",
    }.items():
        monkeypatch.setattr(settings, name, value)
    return org


@pytest.fixture
def federation_mode(monkeypatch, settings):
    monkeypatch.setattr(settings, "federation_per_tenant_enabled", True)
    monkeypatch.setattr(settings, "oidc_discovery_endpoint", None)


@pytest.fixture
async def fed_a(federation_mode, org, idp_a):
    response = await configure_federation(org, idp_a)
    assert response.status_code == 200, response.text
    return org


@pytest.fixture
async def fed_b(federation_mode, other_org, idp_b):
    response = await configure_federation(other_org, idp_b)
    assert response.status_code == 200, response.text
    return other_org
