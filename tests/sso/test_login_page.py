"""The sign-in page offers one button per configured identity provider."""

from __future__ import annotations


async def test_login_page_shows_a_button_for_the_configured_provider(anon, single_mode):
    page = await anon.get("/login", params={"next": "/spaces"})
    assert page.status_code == 200
    assert 'href="/api/v1/auth/oidc/start?next=/spaces"' in page.text


async def test_login_page_without_single_sign_on_shows_no_provider_buttons(anon, settings, monkeypatch):
    monkeypatch.setattr(settings, "oidc_discovery_endpoint", None)
    page = await anon.get("/login")
    assert page.status_code == 200
    assert "/api/v1/auth/oidc/start" not in page.text
