"""Personal API keys: /api/v1/users/me/api-keys/ and the `X-API-Key` header."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from allting.platform.db import system_transaction
from allting.users.models import ApiKey


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


async def new_key(person, name: str = "integration", **extra) -> dict:
    response = await person.client.post("/api/v1/users/me/api-keys/", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def me_with_key(app_client, secret: str):
    return await app_client.get("/api/v1/users/me/", headers={"X-API-Key": secret})


async def test_key_is_shown_once_and_signs_in_as_its_owner(team, anon):
    key = await new_key(team.member)
    assert key["key"].startswith("alt_")
    assert key["key"].startswith(key["prefix"])
    assert len(key["key"]) > 40
    assert key["revoked_at"] is None
    expires = datetime.fromisoformat(key["expires_at"])
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)

    response = await me_with_key(anon, key["key"])
    assert response.status_code == 200
    assert response.json()["id"] == str(team.member.id)

    listed = await team.member.client.get("/api/v1/users/me/api-keys/")
    assert listed.status_code == 200
    assert key["key"] not in listed.text
    entry = next(item for item in listed.json() if item["id"] == key["id"])
    assert "key" not in entry
    assert entry["prefix"] == key["prefix"]
    assert entry["last_used_at"] is not None


async def test_key_without_expiry_and_with_a_chosen_one(team):
    forever = await new_key(team.member, expires_in_days=None)
    assert forever["expires_at"] is None
    week = await new_key(team.member, expires_in_days=7)
    assert datetime.fromisoformat(week["expires_at"]) - datetime.now(UTC) <= timedelta(days=7)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "k" * 101}, "name"),
        ({"name": "k", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "k", "expires_in_days": 731}, "expires_in_days"),
        ({"name": "k", "expires_in_days": "soon"}, "expires_in_days"),
    ],
)
async def test_create_key_with_bad_input_names_the_field(team, payload, field):
    response = await team.member.client.post("/api/v1/users/me/api-keys/", json=payload)
    assert response.status_code == 422
    assert error_fields(response) == [field]


async def test_revoked_key_stops_working(team, anon):
    key = await new_key(team.member)
    assert (await me_with_key(anon, key["key"])).status_code == 200
    revoked = await team.member.client.delete(f"/api/v1/users/me/api-keys/{key['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert "key" not in revoked.json()
    response = await me_with_key(anon, key["key"])
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"
    again = await team.member.client.delete(f"/api/v1/users/me/api-keys/{key['id']}")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_expired_key_is_refused(team, anon):
    key = await new_key(team.member)
    async with system_transaction() as db:
        await db.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(key["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await me_with_key(anon, key["key"])
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


@pytest.mark.parametrize("secret", ["alt_made-up", "", "x" * 5000])
async def test_unknown_key_is_refused(anon, secret):
    response = await anon.get("/api/v1/users/me/", headers={"X-API-Key": secret})
    assert response.status_code == 401


async def test_key_is_not_accepted_as_a_bearer_token(team, anon):
    key = await new_key(team.member)
    response = await anon.get("/api/v1/users/me/", headers={"Authorization": f"Bearer {key['key']}"})
    assert response.status_code == 401


async def test_key_carries_its_owners_permissions(team, anon):
    member_key = await new_key(team.member)
    admin_key = await new_key(team.admin)
    assert (await anon.get("/api/v1/users/", headers={"X-API-Key": member_key["key"]})).status_code == 403
    assert (await anon.get("/api/v1/users/", headers={"X-API-Key": admin_key["key"]})).status_code == 200


async def test_a_key_cannot_mint_more_keys(team, anon):
    key = await new_key(team.member)
    response = await anon.post(
        "/api/v1/users/me/api-keys/", json={"name": "child"}, headers={"X-API-Key": key["key"]}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "user_required"


async def test_nobody_revokes_or_lists_another_persons_keys(team, anon):
    key = await new_key(team.member)
    response = await team.owner.client.delete(f"/api/v1/users/me/api-keys/{key['id']}")
    assert response.status_code == 404
    assert key["id"] not in (await team.owner.client.get("/api/v1/users/me/api-keys/")).text
    assert (await me_with_key(anon, key["key"])).status_code == 200


async def test_keys_of_a_disabled_or_deleted_person_stop_working(team, anon):
    disabled, deleted = await team.add("member"), await team.add("member")
    disabled_key, deleted_key = await new_key(disabled), await new_key(deleted)
    await team.admin.client.patch(f"/api/v1/users/{disabled.id}", json={"state": "disabled"})
    await team.admin.client.delete(f"/api/v1/users/{deleted.id}")
    assert (await me_with_key(anon, disabled_key["key"])).status_code == 401
    assert (await me_with_key(anon, deleted_key["key"])).status_code == 401
    await team.admin.client.patch(f"/api/v1/users/{disabled.id}", json={"state": "active"})
    assert (await me_with_key(anon, disabled_key["key"])).status_code == 200


async def test_revoking_an_unknown_key_is_404(team):
    response = await team.member.client.delete(f"/api/v1/users/me/api-keys/{uuid.uuid4()}")
    assert response.status_code == 404
    malformed = await team.member.client.delete("/api/v1/users/me/api-keys/123")
    assert malformed.status_code == 422
    assert error_fields(malformed) == ["key_id"]
