"""A space's members page over HTTP: sharing the space with a group, changing its role, removing it."""

from __future__ import annotations

import re

from test_pages import _token, sign_in


async def test_a_space_admin_grants_the_space_to_a_group_changes_its_role_and_removes_it(app, chat_org):
    owner = chat_org.owner
    colleague = await chat_org.add_user("member")
    group = (await owner.client.post("/api/v1/groups/", json={"name": "Socialsekreterare"})).json()
    await owner.client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(colleague.id)})
    space = (await owner.client.post("/api/v1/spaces/", json={"name": "Försörjningsstöd"})).json()
    members_url = f"/spaces/{space['id']}/members"
    client = await sign_in(app, owner.email, owner.password)
    client.headers["accept-language"] = "en"
    try:
        page = await client.get(members_url)
        token = _token(page.text)
        assert 'action="/spaces/{}/members/groups"'.format(space["id"]) in page.text
        assert "Socialsekreterare" in page.text

        added = await client.post(
            f"{members_url}/groups", data={"group_id": group["id"], "role": "editor", "csrf_token": token}
        )
        assert added.status_code == 303
        page = await client.get(members_url)
        assert "The group is added." in page.text
        listed = (await owner.client.get(f"/api/v1/spaces/{space['id']}/members/")).json()
        granted = next(m for m in listed if m["group_id"] == group["id"])
        assert granted["role"] == "editor"
        # The group's members now see the space, as editors.
        seen = (await colleague.client.get(f"/api/v1/spaces/{space['id']}/")).json()
        assert seen["role"] == "editor"
        # The group is in the table with its badge, and no longer offered for adding.
        row = re.search(
            r'<tr>\s*<td>Socialsekreterare <span class="badge">Group</span>.*?</tr>', page.text, re.S
        )
        assert row and f'id="role-{granted["id"]}"' in row.group(0)
        assert f'<option value="{group["id"]}">' not in page.text

        again = await client.post(
            f"{members_url}/groups", data={"group_id": group["id"], "role": "viewer", "csrf_token": token}
        )
        assert again.status_code == 303
        assert "That group is already a member." in (await client.get(members_url)).text
        nothing = await client.post(f"{members_url}/groups", data={"group_id": "", "csrf_token": token})
        assert nothing.status_code == 303
        assert "Choose a group." in (await client.get(members_url)).text

        changed = await client.post(
            f"{members_url}/{granted['id']}", data={"role": "admin", "csrf_token": token}
        )
        assert changed.status_code == 303
        assert (await colleague.client.get(f"/api/v1/spaces/{space['id']}/")).json()["role"] == "admin"

        removed = await client.post(f"{members_url}/{granted['id']}/remove", data={"csrf_token": token})
        assert removed.status_code == 303
        assert (await colleague.client.get(f"/api/v1/spaces/{space['id']}/")).status_code == 404
        page = await client.get(members_url)
        assert "The member is removed." in page.text
        assert f'<option value="{group["id"]}">' in page.text  # offered again

        # In Swedish.
        page = await client.get(members_url, headers={"accept-language": "sv"})
        assert "Grupp att lägga till" in page.text and "Lägg till grupp" in page.text
    finally:
        await client.aclose()


async def test_a_space_editor_cannot_grant_the_space_to_a_group(app, chat_org):
    owner = chat_org.owner
    editor = await chat_org.add_user("member")
    group = (await owner.client.post("/api/v1/groups/", json={"name": "Alla"})).json()
    space = (await owner.client.post("/api/v1/spaces/", json={"name": "Stängt"})).json()
    await owner.client.post(
        f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(editor.id), "role": "editor"}
    )
    client = await sign_in(app, editor.email, editor.password)
    try:
        page = await client.get(f"/spaces/{space['id']}/members")
        assert 'action="/spaces/{}/members/groups"'.format(space["id"]) not in page.text
        refused = await client.post(
            f"/spaces/{space['id']}/members/groups",
            data={"group_id": group["id"], "role": "admin", "csrf_token": _token(page.text)},
        )
        assert refused.status_code == 303
        listed = (await owner.client.get(f"/api/v1/spaces/{space['id']}/members/")).json()
        assert all(m["group_id"] is None for m in listed)
    finally:
        await client.aclose()
