"""Changing a person's organisation role on the users page, with its guards shown in the page."""

from __future__ import annotations

import html

from test_pages import _token, sign_in


async def _roles(person) -> dict[str, str]:
    return {
        role["key"]: role["id"] for role in (await person.client.get("/api/v1/roles/")).json() if role["key"]
    }


async def _role_of(owner, user_id) -> str:
    return (await owner.client.get(f"/api/v1/users/{user_id}")).json()["role"]["key"]


async def test_an_owner_changes_a_role_and_cannot_demote_the_last_owner(app, chat_org):
    owner = chat_org.owner
    colleague = await chat_org.add_user("member")
    roles = await _roles(owner)
    client = await sign_in(app, owner.email, owner.password)
    client.headers["accept-language"] = "en"
    try:
        page = await client.get("/admin/users")
        token = _token(page.text)
        assert f'action="/admin/users/{colleague.id}/role"' in page.text
        assert (
            f'<label class="visually-hidden" for="role-{colleague.id}">Role of {colleague.email}</label>'
            in page.text
        )

        made = await client.post(
            f"/admin/users/{colleague.id}/role", data={"role_id": roles["admin"], "csrf_token": token}
        )
        assert made.status_code == 303
        page = await client.get("/admin/users")
        assert f"The role of {colleague.email} is changed." in html.unescape(page.text)
        assert await _role_of(owner, colleague.id) == "admin"
        assert f'<option value="{roles["admin"]}" selected>Admin</option>' in page.text

        # The only owner cannot demote themselves: the page says why, and nothing changes.
        refused = await client.post(
            f"/admin/users/{owner.id}/role", data={"role_id": roles["member"], "csrf_token": token}
        )
        assert refused.status_code == 303
        page = await client.get("/admin/users")
        assert "The organisation must keep at least one active owner" in page.text
        assert "flash-error" in page.text
        assert await _role_of(owner, owner.id) == "owner"

        refused = await client.post(
            f"/admin/users/{owner.id}/role",
            data={"role_id": roles["member"], "csrf_token": token},
            headers={"accept-language": "sv"},
        )
        page = await client.get("/admin/users", headers={"accept-language": "sv"})
        assert "Den sista ägaren kan inte tas bort eller degraderas." in page.text

        nothing = await client.post(
            f"/admin/users/{colleague.id}/role", data={"role_id": "", "csrf_token": token}
        )
        assert nothing.status_code == 303
        assert "Choose a role." in (await client.get("/admin/users")).text

        # With a second owner, the first may step down.
        await client.post(
            f"/admin/users/{colleague.id}/role", data={"role_id": roles["owner"], "csrf_token": token}
        )
        assert await _role_of(owner, colleague.id) == "owner"
        stepped = await client.post(
            f"/admin/users/{owner.id}/role", data={"role_id": roles["admin"], "csrf_token": token}
        )
        assert stepped.status_code == 303
        assert await _role_of(chat_org.owner, owner.id) == "admin"
    finally:
        await client.aclose()


async def test_an_admin_cannot_make_an_owner_or_change_an_owner(app, chat_org):
    owner = chat_org.owner
    admin = await chat_org.add_user("admin")
    member = await chat_org.add_user("member")
    roles = await _roles(owner)
    client = await sign_in(app, admin.email, admin.password)
    client.headers["accept-language"] = "en"
    try:
        token = _token((await client.get("/admin/users")).text)
        for user_id, role in ((member.id, "owner"), (owner.id, "member")):
            refused = await client.post(
                f"/admin/users/{user_id}/role", data={"role_id": roles[role], "csrf_token": token}
            )
            assert refused.status_code == 303
            page = await client.get("/admin/users")
            assert "Only an owner can make someone an owner or change an owner&#39;s role." in page.text
        assert await _role_of(owner, member.id) == "member"
        assert await _role_of(owner, owner.id) == "owner"
        page = await client.get("/admin/users", headers={"accept-language": "sv"})
        refused = await client.post(
            f"/admin/users/{member.id}/role",
            data={"role_id": roles["owner"], "csrf_token": token},
            headers={"accept-language": "sv"},
        )
        page = await client.get("/admin/users", headers={"accept-language": "sv"})
        assert "Bara en ägare kan göra någon till ägare" in page.text
    finally:
        await client.aclose()
