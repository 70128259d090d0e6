"""The operator's API: /api/v1/sysadmin/tenants/ and /api/v1/sysadmin/users/ with the sysadmin key."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import select

from allting.audit.models import AuditLog
from allting.platform.db import system_transaction

TENANTS = "/api/v1/sysadmin/tenants/"
USERS = "/api/v1/sysadmin/users/"
PASSWORD = "a-long-enough-password"


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def unique_name(label: str = "Tenant") -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


async def sign_in(anon, email: str, password: str = PASSWORD, **extra):
    return await anon.post(
        "/api/v1/users/login/token/", data={"username": email, "password": password, **extra}
    )


# --- the operator key -------------------------------------------------------------------------


def sysadmin_calls(app) -> list[tuple[str, str]]:
    calls = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and (context.path or "").startswith(
            "/api/v1/sysadmin"
        ):
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), context.path)
            calls += [(method, path) for method in sorted(context.methods)]
    return calls


async def test_every_sysadmin_route_needs_the_operator_key(app, anon, org, settings):
    user_key = (await org.owner.client.post("/api/v1/users/me/api-keys/", json={"name": "k"})).json()["key"]
    key = settings.sysadmin_api_key
    refusals = {
        "no key": {},
        # The last character changed; a key that happened to end in "x" once made "wrong" the real key.
        "wrong key": {"X-API-Key": key[:-1] + ("y" if key.endswith("x") else "x")},
        "key prefix": {"X-API-Key": settings.sysadmin_api_key[:8]},
        "owner's token": {"Authorization": org.owner.client.headers["Authorization"]},
        "owner's API key": {"X-API-Key": user_key},
        "key as bearer": {"Authorization": f"Bearer {settings.sysadmin_api_key}"},
    }
    calls = sysadmin_calls(app)
    assert len(calls) >= 12
    for method, path in calls:
        for label, headers in refusals.items():
            response = await anon.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (label, method, path, response.text)
            assert response.json()["code"] == "sysadmin_required"


# --- tenants ----------------------------------------------------------------------------------


async def test_create_tenant_derives_a_slug_and_the_predefined_roles(sysadmin, anon):
    name = unique_name("Göteborgs Stad")
    response = await sysadmin.post(
        TENANTS, json={"name": name, "display_name": "Göteborg", "quota_limit": 1024}
    )
    assert response.status_code == 201, response.text
    tenant = response.json()
    assert tenant["slug"] == name.lower().replace(" ", "-").replace("ö", "o")
    assert (tenant["display_name"], tenant["state"], tenant["quota_limit"]) == ("Göteborg", "active", 1024)

    owner = await sysadmin.post(
        USERS,
        json={
            "email": f"owner@{tenant['slug']}.example",
            "password": PASSWORD,
            "tenant_id": tenant["id"],
            "role": "owner",
        },
    )
    token = (await sign_in(anon, f"owner@{tenant['slug']}.example")).json()["access_token"]
    roles = (await anon.get("/api/v1/roles/", headers={"Authorization": f"Bearer {token}"})).json()
    assert {role["key"] for role in roles} == {"owner", "admin", "member"}
    assert owner.json()["role"]["key"] == "owner"


async def test_same_derived_slug_gets_a_suffix_and_an_explicit_slug_is_kept(sysadmin):
    base = uuid.uuid4().hex[:8]
    first = (await sysadmin.post(TENANTS, json={"name": f"Town {base}!"})).json()
    second = (await sysadmin.post(TENANTS, json={"name": f"Town {base}?"})).json()
    assert first["slug"] == f"town-{base}"
    assert second["slug"] == f"town-{base}-2"
    explicit = await sysadmin.post(TENANTS, json={"name": unique_name(), "slug": f"chosen-{base}"})
    assert explicit.json()["slug"] == f"chosen-{base}"


async def test_tenant_names_and_slugs_are_unique(sysadmin):
    name = unique_name()
    created = (await sysadmin.post(TENANTS, json={"name": name})).json()
    same_name = await sysadmin.post(TENANTS, json={"name": name.upper()})
    assert same_name.status_code == 409
    assert same_name.json()["code"] == "tenant_exists"
    same_slug = await sysadmin.post(TENANTS, json={"name": unique_name(), "slug": created["slug"]})
    assert same_slug.status_code == 409
    assert same_slug.json()["code"] == "slug_taken"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"name": "Ok", "slug": "Not A Slug"}, "slug"),
        ({"name": "Ok", "slug": "-edge-"}, "slug"),
        ({"name": "Ok", "quota_limit": -1}, "quota_limit"),
        ({"name": "Ok", "state": "deleted"}, "state"),
    ],
)
async def test_create_tenant_with_bad_input_names_the_field(sysadmin, payload, field):
    response = await sysadmin.post(TENANTS, json=payload)
    assert response.status_code == 422
    assert error_fields(response) == [field]


async def test_tenants_are_listed_and_read(sysadmin, org, other_org):
    listed = (await sysadmin.get(TENANTS)).json()
    ids = [tenant["id"] for tenant in listed["items"]]
    assert {str(org.id), str(other_org.id)} <= set(ids)
    assert listed["count"] == len(ids)
    one = await sysadmin.get(f"{TENANTS}{org.id}/")
    assert one.status_code == 200
    assert one.json()["slug"] == org.slug


async def test_unknown_or_malformed_tenant_id(sysadmin):
    assert (await sysadmin.get(f"{TENANTS}{uuid.uuid4()}/")).status_code == 404
    assert (await sysadmin.patch(f"{TENANTS}{uuid.uuid4()}/", json={"name": "x"})).status_code == 404
    assert (await sysadmin.delete(f"{TENANTS}{uuid.uuid4()}/")).status_code == 404
    malformed = await sysadmin.get(f"{TENANTS}nope/")
    assert malformed.status_code == 422
    assert error_fields(malformed) == ["tenant_id"]


async def test_tenant_is_updated_with_patch_or_post(sysadmin, org, other_org):
    patched = await sysadmin.patch(f"{TENANTS}{org.id}/", json={"display_name": "Shown", "quota_limit": 5})
    assert patched.status_code == 200
    assert (patched.json()["display_name"], patched.json()["quota_limit"]) == ("Shown", 5)
    posted = await sysadmin.post(f"{TENANTS}{org.id}/", json={"display_name": "Posted"})
    assert posted.json()["display_name"] == "Posted"
    me = await org.owner.client.get("/api/v1/users/me/")
    assert me.json()["tenant_name"] == "Posted"

    taken = await sysadmin.patch(
        f"{TENANTS}{org.id}/", json={"name": (await sysadmin.get(f"{TENANTS}{other_org.id}/")).json()["name"]}
    )
    assert taken.status_code == 409
    bad = await sysadmin.patch(f"{TENANTS}{org.id}/", json={"state": "gone"})
    assert bad.status_code == 422
    assert error_fields(bad) == ["state"]


async def test_suspended_tenant_is_locked_out_until_reactivated(sysadmin, org, anon):
    key = (await org.owner.client.post("/api/v1/users/me/api-keys/", json={"name": "k"})).json()["key"]
    suspended = await sysadmin.patch(f"{TENANTS}{org.id}/", json={"state": "suspended"})
    assert suspended.json()["state"] == "suspended"

    live = await org.owner.client.get("/api/v1/users/me/")
    assert live.status_code == 403
    assert live.json()["code"] == "tenant_suspended"
    assert (await anon.get("/api/v1/users/me/", headers={"X-API-Key": key})).status_code == 403
    login = await sign_in(anon, org.owner.email, org.owner.password)
    assert login.status_code == 401
    assert login.json()["code"] == "login_failed"

    await sysadmin.patch(f"{TENANTS}{org.id}/", json={"state": "active"})
    assert (await org.owner.client.get("/api/v1/users/me/")).status_code == 200
    assert (await sign_in(anon, org.owner.email, org.owner.password)).status_code == 200
    actions = [
        row["action"]
        for row in (await org.owner.client.get("/api/v1/audit/logs", params={"action": "tenant."})).json()[
            "items"
        ]
    ]
    assert actions[:2] == ["tenant.updated", "tenant.suspended"]


async def test_deleted_tenant_and_its_people_are_gone(sysadmin, org_factory, anon):
    org = await org_factory()
    response = await sysadmin.delete(f"{TENANTS}{org.id}/")
    assert response.status_code == 204
    assert (await sysadmin.get(f"{TENANTS}{org.id}/")).status_code == 404
    assert (await org.owner.client.get("/api/v1/users/me/")).status_code == 401
    assert (await sign_in(anon, org.owner.email, org.owner.password)).status_code == 401
    assert (await sysadmin.get(USERS, params={"tenant_id": str(org.id)})).json()["items"] == []
    async with system_transaction() as db:
        row = await db.scalar(
            select(AuditLog).where(AuditLog.action == "tenant.deleted", AuditLog.target_id == str(org.id))
        )
    assert row is not None
    assert (row.actor_type, row.tenant_id, row.client_address) == ("sysadmin", None, "203.0.113.7")


# --- users ------------------------------------------------------------------------------------


async def test_operator_creates_reads_updates_and_deletes_a_user(sysadmin, org, anon):
    email = f"made-{uuid.uuid4().hex[:6]}@{org.slug}.example"
    created = await sysadmin.post(
        USERS, json={"email": email, "username": "Made", "tenant_id": str(org.id), "role": "admin"}
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["name"], user["role"]["key"], user["tenant_id"]) == ("Made", "admin", str(org.id))
    generated = user["password"]
    assert generated
    assert (await sign_in(anon, email, generated)).status_code == 200

    got = await sysadmin.get(f"{USERS}{user['id']}/")
    assert got.status_code == 200
    assert "password" not in got.json()

    member_role = next(
        r["id"] for r in (await org.owner.client.get("/api/v1/roles/")).json() if r["key"] == "member"
    )
    updated = await sysadmin.patch(
        f"{USERS}{user['id']}/", json={"username": "Renamed", "role_id": member_role, "state": "disabled"}
    )
    assert updated.status_code == 200
    assert (updated.json()["name"], updated.json()["role"]["key"], updated.json()["state"]) == (
        "Renamed",
        "member",
        "disabled",
    )
    assert (await sign_in(anon, email, generated)).status_code == 401
    posted = await sysadmin.post(f"{USERS}{user['id']}/", json={"state": "active"})
    assert posted.json()["state"] == "active"

    assert (await sysadmin.delete(f"{USERS}{user['id']}/")).status_code == 204
    assert (await sysadmin.get(f"{USERS}{user['id']}/")).status_code == 404
    assert (await sysadmin.delete(f"{USERS}{user['id']}/")).status_code == 404


async def test_reference_style_role_list_picks_the_role(sysadmin, org):
    admin_role = next(
        r["id"] for r in (await org.owner.client.get("/api/v1/roles/")).json() if r["key"] == "admin"
    )
    created = await sysadmin.post(
        USERS,
        json={
            "email": f"ref-{uuid.uuid4().hex[:6]}@{org.slug}.example",
            "tenant_id": str(org.id),
            "predefined_roles": [{"id": admin_role}],
        },
    )
    assert created.status_code == 201
    assert created.json()["role"]["key"] == "admin"


async def test_users_are_listed_per_tenant_or_across_tenants(sysadmin, org, other_org):
    only_org = (await sysadmin.get(USERS, params={"tenant_id": str(org.id)})).json()
    assert [user["id"] for user in only_org["items"]] == [str(org.owner.id)]
    assert only_org["count"] == 1
    everyone = {user["id"] for user in (await sysadmin.get(USERS)).json()["items"]}
    assert {str(org.owner.id), str(other_org.owner.id)} <= everyone
    bad = await sysadmin.get(USERS, params={"tenant_id": "nope"})
    assert bad.status_code == 422
    assert error_fields(bad) == ["tenant_id"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "nope"}, "email"),
        ({"password": "short"}, "password"),
        ({"role": "emperor"}, "role"),
        ({"roles": [{"id": "x"}]}, "roles.0.id"),
        ({"tenant_id": None}, "tenant_id"),
    ],
)
async def test_create_user_with_bad_input_names_the_field(sysadmin, org, payload, field):
    body = {"email": f"bad-{uuid.uuid4().hex[:6]}@{org.slug}.example", "tenant_id": str(org.id), **payload}
    response = await sysadmin.post(USERS, json=body)
    assert response.status_code == 422, response.text
    assert error_fields(response) == [field]


async def test_create_user_in_an_unknown_tenant_is_404(sysadmin):
    response = await sysadmin.post(USERS, json={"email": "x@example.org", "tenant_id": str(uuid.uuid4())})
    assert response.status_code == 404


async def test_update_user_with_bad_input_names_the_field(sysadmin, org):
    for payload, field in (({"state": "invited"}, "state"), ({"role_id": "x"}, "role_id")):
        response = await sysadmin.patch(f"{USERS}{org.owner.id}/", json=payload)
        assert response.status_code == 422
        assert error_fields(response) == [field]
    assert (await sysadmin.patch(f"{USERS}{uuid.uuid4()}/", json={})).status_code == 404


async def test_a_role_of_another_tenant_cannot_be_given(sysadmin, org, other_org):
    foreign_role = next(
        r["id"] for r in (await other_org.owner.client.get("/api/v1/roles/")).json() if r["key"] == "admin"
    )
    person = await org.add_user("member")
    update = await sysadmin.patch(f"{USERS}{person.id}/", json={"role_id": foreign_role})
    assert update.status_code == 422
    assert error_fields(update) == ["role_id"]
    create = await sysadmin.post(
        USERS,
        json={
            "email": f"x-{uuid.uuid4().hex[:6]}@{org.slug}.example",
            "tenant_id": str(org.id),
            "roles": [{"id": foreign_role}],
        },
    )
    assert create.status_code == 422
    assert error_fields(create) == ["role_id"]


async def test_one_email_may_exist_in_two_tenants_and_tenant_picks_on_sign_in(sysadmin, org, other_org, anon):
    email = f"shared-{uuid.uuid4().hex[:6]}@example.org"
    in_org = await sysadmin.post(
        USERS, json={"email": email, "password": "password-one", "tenant_id": str(org.id)}
    )
    in_other = await sysadmin.post(
        USERS, json={"email": email, "password": "password-two", "tenant_id": str(other_org.id)}
    )
    assert in_org.status_code == in_other.status_code == 201
    again = await sysadmin.post(USERS, json={"email": email.upper(), "tenant_id": str(org.id)})
    assert again.status_code == 409

    async def tenant_of(password: str, **extra) -> str | None:
        response = await sign_in(anon, email, password, **extra)
        if response.status_code != 200:
            return None
        me = await anon.get(
            "/api/v1/users/me/", headers={"Authorization": f"Bearer {response.json()['access_token']}"}
        )
        return me.json()["tenant_id"]

    assert await tenant_of("password-one") == str(org.id)
    assert await tenant_of("password-two") == str(other_org.id)
    assert await tenant_of("password-two", tenant=org.slug) is None
    assert await tenant_of("password-two", tenant=other_org.slug) == str(other_org.id)
