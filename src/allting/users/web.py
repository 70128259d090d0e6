"""Administration of people: list, create or invite with a role, disable and enable; groups and roles."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from allting.platform.db import DbSession
from allting.platform.errors import AppError
from allting.users import service
from allting.users.schemas import GroupCreate, RoleCreate, RoleUpdate, UserCreate, UserInvite, UserUpdate
from allting.web.rendering import gettext_for, parse_uuid, render
from allting.web.web import Csrf, SignedIn, done, error_text, form_change

router = APIRouter(include_in_schema=False)


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(request: Request, db: DbSession, page: SignedIn, q: str | None = None):
    page.ctx.require("admin")
    users, total = await service.list_users(
        db, page.ctx, limit=200, offset=0, search=(q or "").strip()[:200] or None
    )
    return render(
        request,
        "users/admin.html",
        {
            "nav": "admin",
            "admin_tab": "users",
            "users": users,
            "total": total,
            "search": q or "",
            "created": None,
            "invited": None,
            "roles": await service.list_roles(db, page.ctx),
        },
    )


@router.post("/admin/users", dependencies=[Csrf])
async def create_user_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    email: Annotated[str, Form(max_length=320)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form()] = "member",
):
    _ = gettext_for(page.language)
    try:
        data = UserCreate(email=email.strip(), name=name.strip() or None, role=role)
        async with db.begin_nested():
            user, password = await service.create_user(db, page.ctx, data)
    except AppError as exc:
        return done(request, "/admin/users", error_text(request, exc), "error")
    except ValueError:
        return done(request, "/admin/users", _("Check the e-mail address."), "error")
    users, total = await service.list_users(db, page.ctx, limit=200, offset=0)
    # The generated password is shown once, in this response only.
    return render(
        request,
        "users/admin.html",
        {
            "nav": "admin",
            "admin_tab": "users",
            "users": users,
            "total": total,
            "search": "",
            "created": {"email": user.email, "password": password},
            "invited": None,
            "roles": await service.list_roles(db, page.ctx),
        },
    )


@router.post("/admin/users/{user_id}/state", dependencies=[Csrf])
async def set_user_state_form(
    request: Request, db: DbSession, page: SignedIn, user_id: uuid.UUID, state: Annotated[str, Form()] = ""
):
    _ = gettext_for(page.language)
    if state not in ("active", "disabled"):
        return done(request, "/admin/users", _("Check the values and try again."), "error")
    message = _("The account is disabled.") if state == "disabled" else _("The account is enabled.")
    return await form_change(
        request,
        db,
        "/admin/users",
        lambda: service.update_user(db, page.ctx, user_id, UserUpdate(state=state)),
        message,
    )


@router.post("/admin/users/{user_id}/role", dependencies=[Csrf])
async def set_user_role_form(
    request: Request, db: DbSession, page: SignedIn, user_id: uuid.UUID, role_id: Annotated[str, Form()] = ""
):
    """Give a person another organisation role; the service keeps the last owner and refuses escalation."""
    _ = gettext_for(page.language)
    role = parse_uuid(role_id)
    if role is None:
        return done(request, "/admin/users", _("Choose a role."), "error")
    try:
        async with db.begin_nested():
            user = await service.update_user(db, page.ctx, user_id, UserUpdate(role_id=role))
    except AppError as exc:
        if exc.code == "owner_required":  # also refused when the person changed is an owner
            message = _("Only an owner can make someone an owner or change an owner's role.")
            return done(request, "/admin/users", message, "error")
        return done(request, "/admin/users", error_text(request, exc), "error")
    return done(request, "/admin/users", _("The role of %(email)s is changed.") % {"email": user.email})


# Invitations: an admin invites a person, who sets a password through the link shown once.


async def _users_context(db, page, *, invited: dict | None = None, created: dict | None = None) -> dict:
    users, total = await service.list_users(db, page.ctx, limit=200, offset=0)
    return {
        "nav": "admin",
        "admin_tab": "users",
        "users": users,
        "total": total,
        "search": "",
        "created": created,
        "invited": invited,
        "roles": await service.list_roles(db, page.ctx),
    }


@router.post("/admin/users/invite", dependencies=[Csrf])
async def invite_user_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    email: Annotated[str, Form(max_length=320)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    role_id: Annotated[str, Form()] = "",
):
    from allting.auth import service as auth_service
    from allting.platform.settings import get_settings

    _ = gettext_for(page.language)
    try:
        data = UserInvite(email=email.strip(), name=name.strip() or None, role_id=parse_uuid(role_id))
        async with db.begin_nested():
            user = await service.invite_user(db, page.ctx, data)
    except AppError as exc:
        return done(request, "/admin/users", error_text(request, exc), "error")
    except ValueError:
        return done(request, "/admin/users", _("Check the e-mail address."), "error")
    base = str(request.base_url).rstrip("/") or get_settings().public_url
    link = f"{base}/invitation?token={quote(auth_service.invitation_token(user))}"
    # The link is shown once, in this response only.
    return render(
        request,
        "users/admin.html",
        await _users_context(db, page, invited={"email": user.email, "link": link}),
    )


@router.get("/invitation", response_class=HTMLResponse)
async def invitation_page(request: Request, token: str = ""):
    return render(request, "users/invitation.html", {"token": token[:4000], "error": None})


@router.post("/invitation", dependencies=[Csrf])
async def accept_invitation_form(
    request: Request,
    db: DbSession,
    token: Annotated[str, Form(max_length=4000)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    password_again: Annotated[str, Form(max_length=1000)] = "",
):
    from allting.auth import service as auth_service
    from allting.web.rendering import page_for

    _ = gettext_for(page_for(request).language)
    if password != password_again:
        return render(
            request,
            "users/invitation.html",
            {"token": token, "error": _("The two passwords differ. Type the same password twice.")},
            status_code=400,
        )
    try:
        async with db.begin_nested():
            user_id = await auth_service.read_invitation(db, token)
            await service.accept_invitation(db, user_id, password)
    except AppError as exc:
        return render(
            request,
            "users/invitation.html",
            {"token": token, "error": error_text(request, exc)},
            status_code=400,
        )
    return done(request, "/login", _("Your password is set. Sign in with it."))


# Groups


@router.get("/admin/groups", response_class=HTMLResponse)
async def groups_page(request: Request, db: DbSession, page: SignedIn):
    page.ctx.require("admin")
    groups = await service.list_groups(db, page.ctx)
    members = await service.group_member_ids(db, [group.id for group in groups])
    users, _total = await service.list_users(db, page.ctx, limit=500, offset=0)
    by_id = {user.id: user for user in users}
    return render(
        request,
        "users/groups.html",
        {
            "nav": "admin",
            "admin_tab": "groups",
            "groups": groups,
            "members": {gid: [by_id[u] for u in ids if u in by_id] for gid, ids in members.items()},
            "users": users,
        },
    )


@router.post("/admin/groups", dependencies=[Csrf])
async def create_group_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    name: Annotated[str, Form(max_length=100)] = "",
    description: Annotated[str, Form(max_length=500)] = "",
):
    _ = gettext_for(page.language)

    async def create() -> None:
        data = GroupCreate(name=name.strip(), description=description.strip() or None)
        await service.create_group(db, page.ctx, data)

    invalid = _("Check the values and try again.")
    return await form_change(
        request, db, "/admin/groups", create, _("The group is created."), invalid=invalid
    )


@router.post("/admin/groups/{group_id}/members", dependencies=[Csrf])
async def add_group_member_form(
    request: Request, db: DbSession, page: SignedIn, group_id: uuid.UUID, user_id: Annotated[str, Form()] = ""
):
    _ = gettext_for(page.language)
    member = parse_uuid(user_id)
    if member is None:
        return done(request, "/admin/groups", _("Choose a person."), "error")
    return await form_change(
        request,
        db,
        "/admin/groups",
        lambda: service.add_group_member(db, page.ctx, group_id, member),
        _("The person is added to the group."),
    )


@router.post("/admin/groups/{group_id}/members/{user_id}/remove", dependencies=[Csrf])
async def remove_group_member_form(
    request: Request, db: DbSession, page: SignedIn, group_id: uuid.UUID, user_id: uuid.UUID
):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/admin/groups",
        lambda: service.remove_group_member(db, page.ctx, group_id, user_id),
        _("The person is removed from the group."),
    )


@router.post("/admin/groups/{group_id}/delete", dependencies=[Csrf])
async def delete_group_form(request: Request, db: DbSession, page: SignedIn, group_id: uuid.UUID):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/admin/groups",
        lambda: service.delete_group(db, page.ctx, group_id),
        _("The group is removed."),
    )


# Roles


def _permission_labels(_) -> dict[str, str]:
    return {
        "admin": _("Manage users, groups, roles and tenant settings"),
        "ai": _("Manage AI providers, models, credentials and budgets"),
        "audit": _("Read and export the audit log"),
        "spaces": _("Create shared spaces"),
        "assistants": _("Create and edit assistants"),
        "collections": _("Create collections and upload documents"),
        "websites": _("Add websites to crawl"),
    }


@router.get("/admin/roles", response_class=HTMLResponse)
async def roles_page(request: Request, db: DbSession, page: SignedIn):
    from allting.users.permissions import PERMISSIONS

    page.ctx.require("admin")
    labels = _permission_labels(gettext_for(page.language))
    return render(
        request,
        "users/roles.html",
        {
            "nav": "admin",
            "admin_tab": "roles",
            "roles": await service.list_roles(db, page.ctx),
            "permissions": [(key, labels.get(key, text)) for key, text in PERMISSIONS.items()],
        },
    )


def _chosen_permissions(form) -> list[str]:
    from allting.users.permissions import PERMISSIONS

    return [key for key in form.getlist("permissions") if key in PERMISSIONS]


@router.post("/admin/roles", dependencies=[Csrf])
async def create_role_form(request: Request, db: DbSession, page: SignedIn):
    _ = gettext_for(page.language)
    form = await request.form()

    async def create() -> None:
        data = RoleCreate(
            name=str(form.get("name", "")).strip()[:100],
            description=str(form.get("description", "")).strip()[:500] or None,
            permissions=_chosen_permissions(form),
        )
        await service.create_role(db, page.ctx, data)

    invalid = _("Check the values and try again.")
    return await form_change(request, db, "/admin/roles", create, _("The role is created."), invalid=invalid)


@router.post("/admin/roles/{role_id}", dependencies=[Csrf])
async def update_role_form(request: Request, db: DbSession, page: SignedIn, role_id: uuid.UUID):
    _ = gettext_for(page.language)
    form = await request.form()
    update = RoleUpdate(permissions=_chosen_permissions(form))
    return await form_change(
        request,
        db,
        "/admin/roles",
        lambda: service.update_role(db, page.ctx, role_id, update),
        _("The role is saved."),
    )


@router.post("/admin/roles/{role_id}/delete", dependencies=[Csrf])
async def delete_role_form(request: Request, db: DbSession, page: SignedIn, role_id: uuid.UUID):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/admin/roles",
        lambda: service.delete_role(db, page.ctx, role_id),
        _("The role is removed."),
    )
