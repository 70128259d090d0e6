"""Tenant administration of people: /api/v1/users/, /users/me/ and invitations."""

from __future__ import annotations

import uuid

import pytest

PASSWORD = "a-long-enough-password"


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def new_email(team, label: str = "person") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@{team.slug}.example"


async def login_status(team, email: str, password: str) -> int:
    return (await team.try_login(email, password)).status_code


# --- creating people -------------------------------------------------------------------------


async def test_admin_creates_user_who_can_sign_in(team):
    email = new_email(team)
    response = await team.admin.client.post(
        "/api/v1/users/", json={"email": email, "name": "Ada", "password": PASSWORD, "role": "member"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == email
    assert body["name"] == "Ada"
    assert body["state"] == "active"
    assert body["role"]["key"] == "member"
    assert body["tenant_id"] == str(team.id)
    assert body["password"] is None
    assert "password_hash" not in response.text
    assert await login_status(team, email, PASSWORD) == 200


async def test_user_created_without_password_gets_a_generated_one_shown_once(team):
    email = new_email(team)
    response = await team.admin.client.post("/api/v1/users/", json={"email": email})
    assert response.status_code == 201
    generated = response.json()["password"]
    assert generated and len(generated) >= 16
    assert response.json()["role"]["key"] == "member"
    again = await team.admin.client.get(f"/api/v1/users/{response.json()['id']}")
    assert again.status_code == 200
    assert "password" not in again.json()
    assert await login_status(team, email, generated) == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({}, "email"),
        ({"email": "x@example.org", "password": "short"}, "password"),
        ({"email": "x@example.org", "password": "        "}, "password"),
        ({"email": "x@example.org", "password": "p" * 129}, "password"),
        ({"email": "x@example.org", "role": "superuser"}, "role"),
        ({"email": "x@example.org", "role_id": "not-a-uuid"}, "role_id"),
        ({"email": "x@example.org", "role_id": str(uuid.uuid4())}, "role_id"),
        ({"email": "x@example.org", "name": "n" * 201}, "name"),
    ],
)
async def test_create_user_with_bad_input_names_the_field(team, payload, field):
    response = await team.admin.client.post("/api/v1/users/", json=payload)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)


async def test_create_user_with_taken_email_conflicts_regardless_of_case(team):
    response = await team.admin.client.post("/api/v1/users/", json={"email": team.member.email.upper()})
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert error_fields(response) == ["email"]


async def test_member_cannot_create_users(team):
    response = await team.member.client.post("/api/v1/users/", json={"email": new_email(team)})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


async def test_admin_cannot_create_an_owner_but_an_owner_can(team):
    denied = await team.admin.client.post("/api/v1/users/", json={"email": new_email(team), "role": "owner"})
    assert denied.status_code == 403
    assert denied.json()["code"] == "owner_required"
    allowed = await team.owner.client.post("/api/v1/users/", json={"email": new_email(team), "role": "owner"})
    assert allowed.status_code == 201
    assert allowed.json()["role"]["key"] == "owner"


# --- reading people ---------------------------------------------------------------------------


async def test_admin_lists_users_of_the_organisation(team):
    response = await team.admin.client.get("/api/v1/users/", params={"limit": 200})
    assert response.status_code == 200
    body = response.json()
    emails = {user["email"] for user in body["items"]}
    assert {team.owner.email, team.admin.email, team.member.email} <= emails
    assert body["total"] == len(body["items"])
    assert {user["tenant_id"] for user in body["items"]} == {str(team.id)}


async def test_user_list_pages_with_limit_and_offset(team):
    first = (await team.admin.client.get("/api/v1/users/", params={"limit": 2})).json()
    second = (await team.admin.client.get("/api/v1/users/", params={"limit": 2, "offset": 2})).json()
    assert first["limit"] == 2 and len(first["items"]) == 2
    assert first["total"] == second["total"] >= 3
    assert not {u["id"] for u in first["items"]} & {u["id"] for u in second["items"]}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"offset": -1}, "offset"),
        ({"state": "gone"}, "state"),
    ],
)
async def test_user_list_with_bad_query_names_the_parameter(team, params, field):
    response = await team.admin.client.get("/api/v1/users/", params=params)
    assert response.status_code == 422
    assert error_fields(response) == [field]


async def test_user_list_searches_email_and_name(team):
    marker = uuid.uuid4().hex[:8]
    await team.admin.client.post("/api/v1/users/", json={"email": new_email(team), "name": f"Zed {marker}"})
    response = await team.admin.client.get("/api/v1/users/", params={"search": marker.upper()})
    assert [user["name"] for user in response.json()["items"]] == [f"Zed {marker}"]
    by_email = await team.admin.client.get("/api/v1/users/", params={"search": team.member.email})
    assert [user["id"] for user in by_email.json()["items"]] == [str(team.member.id)]


async def test_user_search_treats_wildcards_as_text(team):
    for pattern in ("%", "_"):
        response = await team.admin.client.get("/api/v1/users/", params={"search": pattern})
        assert response.status_code == 200
        assert response.json()["items"] == [], pattern


async def test_user_list_filters_by_state(team):
    invited = await team.admin.client.post("/api/v1/users/invitations/", json={"email": new_email(team)})
    response = await team.admin.client.get("/api/v1/users/", params={"state": "invited", "limit": 200})
    states = {user["state"] for user in response.json()["items"]}
    assert states == {"invited"}
    assert invited.json()["id"] in {user["id"] for user in response.json()["items"]}


async def test_member_cannot_list_or_read_other_users_but_reads_self(team):
    assert (await team.member.client.get("/api/v1/users/")).status_code == 403
    assert (await team.member.client.get(f"/api/v1/users/{team.admin.id}")).status_code == 403
    own = await team.member.client.get(f"/api/v1/users/{team.member.id}")
    assert own.status_code == 200
    assert own.json()["email"] == team.member.email


async def test_unknown_user_is_404(team):
    response = await team.admin.client.get(f"/api/v1/users/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_malformed_user_id_names_the_parameter(team):
    response = await team.admin.client.get("/api/v1/users/not-a-uuid")
    assert response.status_code == 422
    assert error_fields(response) == ["user_id"]


# --- changing people --------------------------------------------------------------------------


async def test_admin_renames_and_changes_role_of_a_member(team):
    person = await team.add("member")
    admin_role = await team.role_id("admin")
    response = await team.admin.client.patch(
        f"/api/v1/users/{person.id}", json={"name": "Renamed", "role_id": admin_role}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Renamed"
    assert response.json()["role"]["key"] == "admin"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"state": "invited"}, "state"),
        ({"state": "deleted"}, "state"),
        ({"role_id": "admin"}, "role_id"),
        ({"role_id": str(uuid.uuid4())}, "role_id"),
        ({"name": "n" * 201}, "name"),
    ],
)
async def test_update_user_with_bad_input_names_the_field(team, payload, field):
    response = await team.admin.client.patch(f"/api/v1/users/{team.member.id}", json=payload)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)


async def test_member_cannot_change_or_delete_users(team):
    patch = await team.member.client.patch(f"/api/v1/users/{team.admin.id}", json={"state": "disabled"})
    assert patch.status_code == 403
    delete = await team.member.client.delete(f"/api/v1/users/{team.admin.id}")
    assert delete.status_code == 403
    # and cannot promote themselves
    own = await team.member.client.patch(
        f"/api/v1/users/{team.member.id}", json={"role_id": await team.role_id("admin")}
    )
    assert own.status_code == 403
    me = await team.member.client.get("/api/v1/users/me/")
    assert me.json()["role"]["key"] == "member"


async def test_only_an_owner_grants_or_removes_the_owner_role(team):
    owner_role, member_role = await team.role_id("owner"), await team.role_id("member")
    person = await team.add("member")
    denied = await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"role_id": owner_role})
    assert denied.status_code == 403
    assert denied.json()["code"] == "owner_required"
    own = await team.admin.client.patch(f"/api/v1/users/{team.admin.id}", json={"role_id": owner_role})
    assert own.status_code == 403

    granted = await team.owner.client.patch(f"/api/v1/users/{person.id}", json={"role_id": owner_role})
    assert granted.json()["role"]["key"] == "owner"
    demote = await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"role_id": member_role})
    assert demote.status_code == 403
    removed = await team.owner.client.patch(f"/api/v1/users/{person.id}", json={"role_id": member_role})
    assert removed.status_code == 200
    assert removed.json()["role"]["key"] == "member"


async def test_admin_cannot_disable_or_delete_an_owner(team):
    extra_owner = await team.add("owner")
    disable = await team.admin.client.patch(f"/api/v1/users/{extra_owner.id}", json={"state": "disabled"})
    assert disable.status_code == 403
    assert disable.json()["code"] == "owner_required"
    delete = await team.admin.client.delete(f"/api/v1/users/{extra_owner.id}")
    assert delete.status_code == 403
    assert (await extra_owner.client.get("/api/v1/users/me/")).status_code == 200


async def test_last_owner_cannot_be_demoted_disabled_or_deleted(org_factory, sysadmin):
    org = await org_factory()
    owner = org.owner
    roles = (await owner.client.get("/api/v1/roles/")).json()
    member_role = next(role["id"] for role in roles if role["key"] == "member")

    demote = await owner.client.patch(f"/api/v1/users/{owner.id}", json={"role_id": member_role})
    assert demote.status_code == 409
    assert demote.json()["code"] == "last_owner"
    # the operator is held to the same rule
    disable = await sysadmin.patch(f"/api/v1/sysadmin/users/{owner.id}/", json={"state": "disabled"})
    assert disable.status_code == 409
    delete = await sysadmin.delete(f"/api/v1/sysadmin/users/{owner.id}/")
    assert delete.status_code == 409

    # with a second owner the first may step down
    second = await org.add_user("owner")
    stepped_down = await owner.client.patch(f"/api/v1/users/{owner.id}", json={"role_id": member_role})
    assert stepped_down.status_code == 200
    last = await second.client.patch(f"/api/v1/users/{second.id}", json={"role_id": member_role})
    assert last.status_code == 409


async def test_nobody_disables_or_deletes_their_own_account(team):
    disable = await team.admin.client.patch(f"/api/v1/users/{team.admin.id}", json={"state": "disabled"})
    assert disable.status_code == 422
    assert error_fields(disable) == ["state"]
    delete = await team.admin.client.delete(f"/api/v1/users/{team.admin.id}")
    assert delete.status_code == 422
    assert error_fields(delete) == ["user_id"]


async def test_disabled_user_can_be_enabled_again(team):
    person = await team.add("member")
    disabled = await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"state": "disabled"})
    assert disabled.json()["state"] == "disabled"
    assert await login_status(team, person.email, PASSWORD) == 401
    enabled = await team.admin.client.patch(f"/api/v1/users/{person.id}", json={"state": "active"})
    assert enabled.json()["state"] == "active"
    assert await login_status(team, person.email, PASSWORD) == 200


async def test_deleted_user_is_gone_and_their_email_is_free_again(team):
    person = await team.add("member")
    response = await team.admin.client.delete(f"/api/v1/users/{person.id}")
    assert response.status_code == 204
    assert (await team.admin.client.get(f"/api/v1/users/{person.id}")).status_code == 404
    assert (await team.admin.client.delete(f"/api/v1/users/{person.id}")).status_code == 404
    listed = (await team.admin.client.get("/api/v1/users/", params={"limit": 200})).json()["items"]
    assert str(person.id) not in {user["id"] for user in listed}
    assert (await person.client.get("/api/v1/users/me/")).status_code == 401
    assert await login_status(team, person.email, PASSWORD) == 401
    again = await team.admin.client.post("/api/v1/users/", json={"email": person.email})
    assert again.status_code == 201
    assert again.json()["id"] != str(person.id)


# --- /users/me/ -------------------------------------------------------------------------------


async def test_me_shows_the_role_permissions_and_organisation(team):
    response = await team.member.client.get("/api/v1/users/me/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(team.member.id)
    assert body["role"]["key"] == "member"
    assert "admin" not in body["permissions"]
    assert "assistants" in body["permissions"]
    assert body["tenant_slug"] == team.slug


async def test_me_requires_authentication(anon):
    response = await anon.get("/api/v1/users/me/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_member_updates_own_name_and_preferences(team):
    response = await team.member.client.patch(
        "/api/v1/users/me/", json={"name": "Mia", "language": "sv", "theme": "dark"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Mia"
    assert body["preferences"] == {"language": "sv", "theme": "dark"}
    partial = await team.member.client.patch("/api/v1/users/me/", json={"theme": "light"})
    assert partial.json()["preferences"] == {"language": "sv", "theme": "light"}
    assert partial.json()["name"] == "Mia"


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"language": "de"}, "language"), ({"theme": "neon"}, "theme"), ({"name": "x" * 201}, "name")],
)
async def test_update_me_with_bad_input_names_the_field(team, payload, field):
    response = await team.member.client.patch("/api/v1/users/me/", json=payload)
    assert response.status_code == 422
    assert error_fields(response) == [field]


async def test_me_cannot_change_own_role_or_state(team):
    response = await team.member.client.patch(
        "/api/v1/users/me/", json={"role_id": await team.role_id("owner"), "state": "disabled"}
    )
    assert response.status_code == 200
    assert response.json()["role"]["key"] == "member"
    assert response.json()["state"] == "active"


# --- passwords --------------------------------------------------------------------------------


async def test_password_change_needs_the_current_password(team):
    person = await team.add("member")
    wrong = await person.client.post(
        "/api/v1/users/me/password", json={"current_password": "not-my-password", "new_password": "x" * 20}
    )
    assert wrong.status_code == 422
    assert error_fields(wrong) == ["current_password"]
    weak = await person.client.post(
        "/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": "short"}
    )
    assert weak.status_code == 422
    assert error_fields(weak) == ["new_password"]
    missing = await person.client.post("/api/v1/users/me/password", json={"current_password": PASSWORD})
    assert missing.status_code == 422
    assert error_fields(missing) == ["new_password"]
    assert await login_status(team, person.email, PASSWORD) == 200


async def test_password_change_ends_other_sessions_but_keeps_this_one(team):
    person = await team.add("member")
    other_session = await team.sign_in(person.email, PASSWORD)
    new_password = "a brand new passphrase"
    response = await person.client.post(
        "/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": new_password}
    )
    assert response.status_code == 204
    assert (await person.client.get("/api/v1/users/me/")).status_code == 200
    assert (await other_session.get("/api/v1/users/me/")).status_code == 401
    assert await login_status(team, person.email, PASSWORD) == 401
    assert await login_status(team, person.email, new_password) == 200


# --- invitations ------------------------------------------------------------------------------


async def test_invited_person_sets_a_password_once_and_signs_in(team, anon):
    email = new_email(team, "invitee")
    invited = await team.admin.client.post("/api/v1/users/invitations/", json={"email": email, "name": "Ivy"})
    assert invited.status_code == 201
    body = invited.json()
    assert body["state"] == "invited"
    assert body["role"]["key"] == "member"
    token = body["invitation_token"]
    assert await login_status(team, email, PASSWORD) == 401

    accepted = await anon.post(
        "/api/v1/users/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "active"
    assert await login_status(team, email, PASSWORD) == 200

    again = await anon.post(
        "/api/v1/users/invitations/accept", json={"token": token, "password": "another-password"}
    )
    assert again.status_code == 422
    assert error_fields(again) == ["token"]
    assert await login_status(team, email, PASSWORD) == 200


async def test_invitation_with_a_weak_password_is_refused(team, anon):
    invited = await team.admin.client.post("/api/v1/users/invitations/", json={"email": new_email(team)})
    response = await anon.post(
        "/api/v1/users/invitations/accept",
        json={"token": invited.json()["invitation_token"], "password": "short"},
    )
    assert response.status_code == 422
    assert error_fields(response) == ["password"]


@pytest.mark.parametrize("token", ["garbage", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."])
async def test_forged_invitation_is_refused(anon, token):
    response = await anon.post(
        "/api/v1/users/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert response.status_code == 422
    assert error_fields(response) == ["token"]


async def test_an_access_token_is_not_an_invitation(team, anon):
    access = team.member.client.headers["Authorization"].removeprefix("Bearer ")
    response = await anon.post(
        "/api/v1/users/invitations/accept", json={"token": access, "password": "x" * 12}
    )
    assert response.status_code == 422
    assert error_fields(response) == ["token"]


async def test_invitation_with_bad_input_names_the_field(team, anon):
    bad_email = await team.admin.client.post("/api/v1/users/invitations/", json={"email": "nope"})
    assert bad_email.status_code == 422
    assert error_fields(bad_email) == ["email"]
    missing = await anon.post("/api/v1/users/invitations/accept", json={"password": PASSWORD})
    assert missing.status_code == 422
    assert error_fields(missing) == ["token"]


async def test_invitation_rules_follow_user_creation(team):
    taken = await team.admin.client.post("/api/v1/users/invitations/", json={"email": team.member.email})
    assert taken.status_code == 409
    by_member = await team.member.client.post("/api/v1/users/invitations/", json={"email": new_email(team)})
    assert by_member.status_code == 403
    as_owner = await team.admin.client.post(
        "/api/v1/users/invitations/", json={"email": new_email(team), "role_id": await team.role_id("owner")}
    )
    assert as_owner.status_code == 403
    assert as_owner.json()["code"] == "owner_required"


async def test_member_gets_403_on_every_admin_endpoint(team):
    group = (
        await team.admin.client.post("/api/v1/groups/", json={"name": f"Admins {uuid.uuid4().hex[:6]}"})
    ).json()
    role = (
        await team.admin.client.post("/api/v1/roles/", json={"name": f"Custom {uuid.uuid4().hex[:6]}"})
    ).json()
    other = team.admin.id
    calls = [
        ("GET", "/api/v1/users/", None),
        ("POST", "/api/v1/users/", {"email": new_email(team)}),
        ("POST", "/api/v1/users/invitations/", {"email": new_email(team)}),
        ("GET", f"/api/v1/users/{other}", None),
        ("PATCH", f"/api/v1/users/{other}", {"name": "x"}),
        ("DELETE", f"/api/v1/users/{other}", None),
        ("POST", "/api/v1/roles/", {"name": "Mine"}),
        ("PATCH", f"/api/v1/roles/{role['id']}", {"name": "Mine"}),
        ("DELETE", f"/api/v1/roles/{role['id']}", None),
        ("POST", "/api/v1/groups/", {"name": "Mine"}),
        ("PATCH", f"/api/v1/groups/{group['id']}", {"name": "Mine"}),
        ("DELETE", f"/api/v1/groups/{group['id']}", None),
        ("POST", f"/api/v1/groups/{group['id']}/members/", {"user_id": str(team.member.id)}),
        ("DELETE", f"/api/v1/groups/{group['id']}/members/{other}", None),
        ("GET", "/api/v1/audit/logs", None),
        ("GET", "/api/v1/audit/logs/export", None),
    ]
    for method, url, body in calls:
        response = await team.member.client.request(method, url, json=body)
        assert response.status_code == 403, (method, url, response.text)
        assert response.json()["code"] == "permission_denied"
    # nothing changed
    assert (await team.admin.client.get(f"/api/v1/groups/{group['id']}")).json()["name"] == group["name"]
    assert (await team.admin.client.get(f"/api/v1/users/{other}")).json()["name"] is None
