"""Roles with permission sets and user groups: /api/v1/roles/ and /api/v1/groups/."""

from __future__ import annotations

import uuid

import pytest


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


# --- roles ------------------------------------------------------------------------------------


async def test_every_organisation_starts_with_owner_admin_and_member(team):
    response = await team.member.client.get("/api/v1/roles/")
    assert response.status_code == 200
    predefined = {role["key"]: role for role in response.json() if role["predefined"]}
    assert set(predefined) == {"owner", "admin", "member"}
    assert "admin" in predefined["owner"]["permissions"]
    assert "admin" not in predefined["member"]["permissions"]


async def test_custom_role_grants_exactly_its_permissions(team):
    created = await team.admin.client.post(
        "/api/v1/roles/",
        json={"name": unique("Auditor"), "description": "Reads the log", "permissions": ["audit"]},
    )
    assert created.status_code == 201, created.text
    role = created.json()
    assert role["predefined"] is False
    assert role["key"] is None
    assert role["permissions"] == ["audit"]

    person = await team.add("member")
    await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"role_id": role["id"]})
    assert (await person.client.get("/api/v1/audit/logs")).status_code == 200
    assert (await person.client.get("/api/v1/users/")).status_code == 403
    me = (await person.client.get("/api/v1/users/me/")).json()
    assert me["permissions"] == ["audit"]
    assert me["role"]["id"] == role["id"]


async def test_custom_role_is_listed_after_the_predefined_ones(team):
    name = unique("Zeta")
    await team.admin.client.post("/api/v1/roles/", json={"name": name})
    roles = (await team.admin.client.get("/api/v1/roles/")).json()
    assert [role["key"] for role in roles[:3]] and all(role["predefined"] for role in roles[:3])
    assert name in [role["name"] for role in roles[3:]]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": "Ok", "permissions": ["admin", "root"]}, "permissions"),
        ({"name": "Ok", "permissions": "admin"}, "permissions"),
        ({"name": "Ok", "description": "d" * 501}, "description"),
    ],
)
async def test_create_role_with_bad_input_names_the_field(team, payload, field):
    response = await team.admin.client.post("/api/v1/roles/", json=payload)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)


async def test_role_names_are_unique_regardless_of_case(team):
    name = unique("Editors")
    assert (await team.admin.client.post("/api/v1/roles/", json={"name": name})).status_code == 201
    response = await team.admin.client.post("/api/v1/roles/", json={"name": name.upper()})
    assert response.status_code == 409
    assert error_fields(response) == ["name"]
    predefined = await team.admin.client.post("/api/v1/roles/", json={"name": "owner"})
    assert predefined.status_code == 409


async def test_admin_updates_a_custom_role(team):
    role = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("Builders")})).json()
    response = await team.admin.client.patch(
        f"/api/v1/roles/{role['id']}",
        json={"name": unique("Makers"), "permissions": ["assistants", "spaces"]},
    )
    assert response.status_code == 200
    assert response.json()["permissions"] == ["assistants", "spaces"]
    bad = await team.admin.client.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["everything"]})
    assert bad.status_code == 422
    assert error_fields(bad) == ["permissions"]


async def test_custom_role_cannot_take_a_taken_name(team):
    first = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("One")})).json()
    second = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("Two")})).json()
    response = await team.admin.client.patch(f"/api/v1/roles/{second['id']}", json={"name": first["name"]})
    assert response.status_code == 409


async def test_predefined_roles_cannot_be_changed_or_deleted(team):
    owner_role = await team.role_id("owner")
    patch = await team.owner.client.patch(f"/api/v1/roles/{owner_role}", json={"permissions": []})
    assert patch.status_code == 422
    assert error_fields(patch) == ["role_id"]
    delete = await team.owner.client.delete(f"/api/v1/roles/{owner_role}")
    assert delete.status_code == 422
    roles = (await team.owner.client.get("/api/v1/roles/")).json()
    assert "admin" in next(role for role in roles if role["id"] == owner_role)["permissions"]


async def test_role_in_use_cannot_be_deleted(team):
    role = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("Busy")})).json()
    person = await team.add("member")
    await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"role_id": role["id"]})
    response = await team.admin.client.delete(f"/api/v1/roles/{role['id']}")
    assert response.status_code == 409
    assert response.json()["code"] == "role_in_use"


async def test_unused_role_is_deleted(team):
    role = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("Spare")})).json()
    assert (await team.admin.client.delete(f"/api/v1/roles/{role['id']}")).status_code == 204
    assert role["id"] not in {r["id"] for r in (await team.admin.client.get("/api/v1/roles/")).json()}
    assert (await team.admin.client.delete(f"/api/v1/roles/{role['id']}")).status_code == 404
    assert (await team.admin.client.patch(f"/api/v1/roles/{role['id']}", json={})).status_code == 404


async def test_member_cannot_create_change_or_delete_roles(team):
    role = (await team.admin.client.post("/api/v1/roles/", json={"name": unique("Guarded")})).json()
    create = await team.member.client.post(
        "/api/v1/roles/", json={"name": unique("Mine"), "permissions": ["admin"]}
    )
    assert create.status_code == 403
    patch = await team.member.client.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["admin"]})
    assert patch.status_code == 403
    delete = await team.member.client.delete(f"/api/v1/roles/{role['id']}")
    assert delete.status_code == 403


# --- groups -----------------------------------------------------------------------------------


async def test_admin_creates_reads_renames_and_deletes_a_group(team):
    created = await team.admin.client.post(
        "/api/v1/groups/", json={"name": unique("Finance"), "description": "€"}
    )
    assert created.status_code == 201, created.text
    group = created.json()
    assert group["member_ids"] == []
    assert group["description"] == "€"

    got = await team.member.client.get(f"/api/v1/groups/{group['id']}")
    assert got.status_code == 200
    assert got.json()["name"] == group["name"]

    new_name = unique("Economy")
    renamed = await team.admin.client.patch(f"/api/v1/groups/{group['id']}", json={"name": new_name})
    assert renamed.status_code == 200
    assert renamed.json()["name"] == new_name
    assert renamed.json()["description"] == "€"

    listed = await team.member.client.get("/api/v1/groups/")
    assert new_name in {g["name"] for g in listed.json()}

    assert (await team.admin.client.delete(f"/api/v1/groups/{group['id']}")).status_code == 204
    assert (await team.admin.client.get(f"/api/v1/groups/{group['id']}")).status_code == 404
    assert (await team.admin.client.delete(f"/api/v1/groups/{group['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "g" * 101}, "name"),
        ({"name": "Ok", "description": 5}, "description"),
    ],
)
async def test_create_group_with_bad_input_names_the_field(team, payload, field):
    response = await team.admin.client.post("/api/v1/groups/", json=payload)
    assert response.status_code == 422
    assert error_fields(response) == [field]


async def test_group_names_are_unique_regardless_of_case(team):
    name = unique("Legal")
    other = (await team.admin.client.post("/api/v1/groups/", json={"name": unique("Other")})).json()
    assert (await team.admin.client.post("/api/v1/groups/", json={"name": name})).status_code == 201
    response = await team.admin.client.post("/api/v1/groups/", json={"name": name.lower()})
    assert response.status_code == 409
    assert error_fields(response) == ["name"]
    rename = await team.admin.client.patch(f"/api/v1/groups/{other['id']}", json={"name": name})
    assert rename.status_code == 409


async def test_group_members_are_added_and_removed(team):
    group = (await team.admin.client.post("/api/v1/groups/", json={"name": unique("Team")})).json()
    url = f"/api/v1/groups/{group['id']}/members/"
    added = await team.admin.client.post(url, json={"user_id": str(team.member.id)})
    assert added.status_code == 201
    assert added.json()["member_ids"] == [str(team.member.id)]
    twice = await team.admin.client.post(url, json={"user_id": str(team.member.id)})
    assert twice.json()["member_ids"] == [str(team.member.id)]
    await team.admin.client.post(url, json={"user_id": str(team.admin.id)})
    listed = {g["id"]: g for g in (await team.admin.client.get("/api/v1/groups/")).json()}
    assert set(listed[group["id"]]["member_ids"]) == {str(team.member.id), str(team.admin.id)}

    removed = await team.admin.client.delete(f"{url}{team.member.id}")
    assert removed.status_code == 204
    assert (await team.admin.client.get(f"/api/v1/groups/{group['id']}")).json()["member_ids"] == [
        str(team.admin.id)
    ]
    again = await team.admin.client.delete(f"{url}{team.member.id}")
    assert again.status_code == 404


@pytest.mark.parametrize("user_id", ["not-a-uuid", None, str(uuid.UUID(int=0))])
async def test_adding_an_unknown_person_to_a_group_names_user_id(team, user_id):
    group = (await team.admin.client.post("/api/v1/groups/", json={"name": unique("Closed")})).json()
    response = await team.admin.client.post(
        f"/api/v1/groups/{group['id']}/members/", json={"user_id": user_id}
    )
    assert response.status_code == 422
    assert error_fields(response) == ["user_id"]


async def test_deleted_user_leaves_their_groups(team):
    group = (await team.admin.client.post("/api/v1/groups/", json={"name": unique("Leavers")})).json()
    person = await team.add("member")
    await team.admin.client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(person.id)})
    await team.admin.client.delete(f"/api/v1/users/{person.id}")
    assert (await team.admin.client.get(f"/api/v1/groups/{group['id']}")).json()["member_ids"] == []


async def test_member_reads_groups_but_cannot_change_them(team):
    group = (await team.admin.client.post("/api/v1/groups/", json={"name": unique("Readonly")})).json()
    client = team.member.client
    assert (await client.get("/api/v1/groups/")).status_code == 200
    assert (await client.post("/api/v1/groups/", json={"name": unique("Mine")})).status_code == 403
    assert (
        await client.patch(f"/api/v1/groups/{group['id']}", json={"name": "Taken over"})
    ).status_code == 403
    add_self = await client.post(
        f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(team.member.id)}
    )
    assert add_self.status_code == 403
    assert (await client.delete(f"/api/v1/groups/{group['id']}/members/{team.admin.id}")).status_code == 403
    assert (await client.delete(f"/api/v1/groups/{group['id']}")).status_code == 403
    assert (await client.get(f"/api/v1/groups/{group['id']}")).json()["name"] == group["name"]


async def test_nobody_hands_out_an_administrative_permission_they_lack(team):
    """A user administrator (a role with only `admin`) cannot give anyone, or themselves, `ai` or `audit`."""
    managers = (
        await team.owner.client.post(
            "/api/v1/roles/", json={"name": unique("User admins"), "permissions": ["admin"]}
        )
    ).json()
    manager = await team.add("member")
    await team.owner.client.patch(f"/api/v1/users/{manager.id}", json={"role_id": managers["id"]})
    client = manager.client

    wider = await client.post(
        "/api/v1/roles/", json={"name": unique("Wider"), "permissions": ["admin", "audit"]}
    )
    assert wider.status_code == 403
    assert wider.json()["code"] == "permission_escalation"
    assert wider.json()["details"] == {"permissions": ["audit"]}
    widen_own = await client.patch(f"/api/v1/roles/{managers['id']}", json={"permissions": ["admin", "ai"]})
    assert widen_own.status_code == 403
    to_admin = await client.patch(
        f"/api/v1/users/{manager.id}", json={"role_id": await team.role_id("admin")}
    )
    assert to_admin.status_code == 403
    new_admin = await client.post(
        "/api/v1/users/", json={"email": f"a-{uuid.uuid4().hex[:6]}@x.example", "role": "admin"}
    )
    assert new_admin.status_code == 403
    assert (await client.get("/api/v1/audit/logs")).status_code == 403

    # within their own permissions they administer as usual, members included
    same = await client.post(
        "/api/v1/roles/", json={"name": unique("Same"), "permissions": ["admin", "spaces"]}
    )
    assert same.status_code == 201
    member = await client.post("/api/v1/users/", json={"email": f"m-{uuid.uuid4().hex[:6]}@x.example"})
    assert member.status_code == 201
    # and an owner may grant anything
    auditors = await team.owner.client.post(
        "/api/v1/roles/", json={"name": unique("Auditors"), "permissions": ["audit"]}
    )
    assert auditors.status_code == 201
