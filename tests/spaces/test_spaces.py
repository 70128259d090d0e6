"""Shared spaces, members and the permission matrix, over the HTTP API."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
async def team(chat_org):
    """A shared space with an admin (the owner), an editor and a viewer, and a published assistant."""
    client = chat_org.owner.client
    space = (
        await client.post("/api/v1/spaces/", json={"name": "Social services", "description": "Team space"})
    ).json()
    editor = await chat_org.add_user("member")
    viewer = await chat_org.add_user("member")
    for person, role in ((editor, "editor"), (viewer, "viewer")):
        response = await client.post(
            f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(person.id), "role": role}
        )
        assert response.status_code == 201, response.text
    published = (
        await client.post(
            "/api/v1/assistants/",
            json={
                "space_id": space["id"],
                "name": "Benefits helper",
                "prompt": "Help with benefits.",
                "published": True,
            },
        )
    ).json()
    draft = (
        await client.post(
            "/api/v1/assistants/", json={"space_id": space["id"], "name": "Draft", "published": False}
        )
    ).json()
    return {
        "org": chat_org,
        "space": space,
        "editor": editor,
        "viewer": viewer,
        "published": published,
        "draft": draft,
    }


async def test_space_lists_show_each_persons_role_and_permissions(team):
    spaces = (await team["viewer"].client.get("/api/v1/spaces/")).json()["items"]
    kinds = [space["kind"] for space in spaces]
    assert kinds[:2] == ["personal", "organisation"]
    shared = next(space for space in spaces if space["id"] == team["space"]["id"])
    assert shared["role"] == "viewer" and shared["permissions"] == ["read"]
    admin_view = (await team["org"].owner.client.get(f"/api/v1/spaces/{team['space']['id']}/")).json()
    assert admin_view["permissions"] == ["delete", "edit", "read"]


async def test_viewer_sees_published_assistants_only_and_cannot_edit(team):
    viewer = team["viewer"].client
    listed = (await viewer.get("/api/v1/assistants/", params={"space_id": team["space"]["id"]})).json()
    assert [item["name"] for item in listed["items"]] == ["Benefits helper"]
    assert listed["items"][0]["permissions"] == ["read"]
    assert (await viewer.get(f"/api/v1/assistants/{team['draft']['id']}/")).status_code == 404
    edit = await viewer.patch(f"/api/v1/assistants/{team['published']['id']}/", json={"name": "Mine"})
    assert edit.status_code == 403
    create = await viewer.post("/api/v1/assistants/", json={"space_id": team["space"]["id"], "name": "x"})
    assert create.status_code == 403
    assert (await viewer.get(f"/api/v1/spaces/{team['space']['id']}/members/")).status_code == 403


async def test_viewer_can_chat_with_a_published_assistant(team):
    response = await team["viewer"].client.post(
        "/api/v1/conversations/",
        json={"question": "How do I apply?", "assistant_id": team["published"]["id"]},
    )
    assert response.status_code == 200, response.text


async def test_editor_builds_assistants_but_cannot_manage_members_or_the_space(team):
    editor = team["editor"].client
    created = await editor.post(
        "/api/v1/assistants/", json={"space_id": team["space"]["id"], "name": "Intake"}
    )
    assert created.status_code == 201
    assert (
        await editor.patch(f"/api/v1/assistants/{team['draft']['id']}/", json={"published": True})
    ).status_code == 200
    assert (
        await editor.patch(f"/api/v1/spaces/{team['space']['id']}/", json={"name": "x"})
    ).status_code == 403
    assert (
        await editor.post(
            f"/api/v1/spaces/{team['space']['id']}/members/",
            json={"user_id": str(team["viewer"].id), "role": "admin"},
        )
    ).status_code == 403
    assert (await editor.delete(f"/api/v1/spaces/{team['space']['id']}/")).status_code == 403


async def test_removed_member_loses_access_on_the_next_request(team):
    client = team["org"].owner.client
    members = (await client.get(f"/api/v1/spaces/{team['space']['id']}/members/")).json()
    viewer_member = next(m for m in members if m["user_id"] == str(team["viewer"].id))
    assert (await team["viewer"].client.get(f"/api/v1/spaces/{team['space']['id']}/")).status_code == 200
    removed = await client.delete(f"/api/v1/spaces/{team['space']['id']}/members/{viewer_member['id']}")
    assert removed.status_code == 204
    assert (await team["viewer"].client.get(f"/api/v1/spaces/{team['space']['id']}/")).status_code == 404
    assert (
        await team["viewer"].client.post(
            "/api/v1/conversations/",
            json={"question": "still there?", "assistant_id": team["published"]["id"]},
        )
    ).status_code == 404


async def test_group_membership_grants_the_groups_role(team):
    client = team["org"].owner.client
    outsider = await team["org"].add_user("member")
    group = (
        await client.post("/api/v1/groups/", json={"name": f"Caseworkers {uuid.uuid4().hex[:4]}"})
    ).json()
    await client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(outsider.id)})
    assert (await outsider.client.get(f"/api/v1/spaces/{team['space']['id']}/")).status_code == 404
    await client.post(
        f"/api/v1/spaces/{team['space']['id']}/members/", json={"group_id": group["id"], "role": "editor"}
    )
    space = (await outsider.client.get(f"/api/v1/spaces/{team['space']['id']}/")).json()
    assert space["role"] == "editor"


async def test_the_last_space_admin_cannot_be_removed(team):
    client = team["org"].owner.client
    members = (await client.get(f"/api/v1/spaces/{team['space']['id']}/members/")).json()
    admin = next(m for m in members if m["role"] == "admin")
    response = await client.patch(
        f"/api/v1/spaces/{team['space']['id']}/members/{admin['id']}", json={"role": "viewer"}
    )
    assert response.status_code == 409


async def test_space_settings_restrict_models_by_classification_and_allow_list(team):
    client = team["org"].owner.client
    space_id = team["space"]["id"]
    model_id = team["org"].model["id"]
    too_strict = await client.patch(f"/api/v1/spaces/{space_id}/", json={"security_level": 5})
    assert too_strict.status_code == 200
    refused = await client.post(
        "/api/v1/conversations/", json={"question": "q", "assistant_id": team["published"]["id"]}
    )
    assert refused.status_code == 422
    assert "security classification" in refused.json()["message"]
    assert (await client.get(f"/api/v1/spaces/{space_id}/models/")).json() == []
    await client.patch(
        f"/api/v1/spaces/{space_id}/", json={"security_level": 1, "allowed_model_ids": [model_id]}
    )
    models = (await client.get(f"/api/v1/spaces/{space_id}/models/")).json()
    assert [model["id"] for model in models] == [model_id]
    bad = await client.patch(f"/api/v1/spaces/{space_id}/", json={"allowed_model_ids": [str(uuid.uuid4())]})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "allowed_model_ids"


async def test_members_cannot_create_spaces_without_the_permission(team):
    client = team["org"].owner.client
    role = (
        await client.post(
            "/api/v1/roles/", json={"name": f"Reader {uuid.uuid4().hex[:4]}", "permissions": []}
        )
    ).json()
    reader = await team["org"].add_user("member")
    await client.patch(f"/api/v1/users/{reader.id}", json={"role_id": role["id"]})
    assert (await reader.client.post("/api/v1/spaces/", json={"name": "Mine"})).status_code == 403


async def test_prompt_history_records_versions_and_restores_an_old_one(team):
    client = team["org"].owner.client
    assistant_id = team["published"]["id"]
    await client.patch(
        f"/api/v1/assistants/{assistant_id}/", json={"prompt": "Version two.", "prompt_note": "Shorter"}
    )
    await client.patch(f"/api/v1/assistants/{assistant_id}/", json={"prompt": "Version three."})
    versions = (await client.get(f"/api/v1/assistants/{assistant_id}/prompt-versions/")).json()
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert versions[1]["note"] == "Shorter" and versions[1]["created_by"] == str(team["org"].owner.id)
    restored = (await client.post(f"/api/v1/assistants/{assistant_id}/prompt-versions/1/restore")).json()
    assert restored["prompt"] == "Help with benefits." and restored["prompt_version"] == 4


async def test_assistant_moves_to_another_space_the_person_can_build_in(team):
    client = team["org"].owner.client
    other = (await client.post("/api/v1/spaces/", json={"name": "Other team"})).json()
    moved = await client.post(
        f"/api/v1/assistants/{team['draft']['id']}/move", json={"space_id": other["id"]}
    )
    assert moved.status_code == 200 and moved.json()["space_id"] == other["id"]
    editor_move = await team["editor"].client.post(
        f"/api/v1/assistants/{team['published']['id']}/move", json={"space_id": other["id"]}
    )
    assert editor_move.status_code == 404


async def test_one_default_assistant_per_space(team):
    client = team["org"].owner.client
    for assistant in (team["published"], team["draft"]):
        await client.patch(f"/api/v1/assistants/{assistant['id']}/", json={"is_default": True})
    space = (await client.get(f"/api/v1/spaces/{team['space']['id']}/")).json()
    assert space["default_assistant"]["id"] == team["draft"]["id"]


async def test_model_parameters_are_validated_and_sent(team, llm):
    client = team["org"].owner.client
    bad = await client.patch(
        f"/api/v1/assistants/{team['published']['id']}/", json={"model_params": {"temperature": 5}}
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "model_params.temperature"
    no_reasoning = await client.patch(
        f"/api/v1/assistants/{team['published']['id']}/", json={"model_params": {"reasoning_effort": "high"}}
    )
    assert no_reasoning.status_code == 422
    await client.patch(
        f"/api/v1/assistants/{team['published']['id']}/",
        json={"model_params": {"temperature": 0.2, "max_tokens": 300}},
    )
    await client.post(
        "/api/v1/conversations/", json={"question": "q", "assistant_id": team["published"]["id"]}
    )
    sent = llm.requests[-1].json
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 300
