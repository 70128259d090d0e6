"""Space pages: the list, and a space's assistants, knowledge, members and settings tabs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from allting.assistants import service as assistants_service
from allting.assistants.schemas import AssistantCreate, AssistantUpdate, ModelParams
from allting.platform.db import DbSession
from allting.platform.errors import AppError
from allting.spaces import permissions
from allting.spaces import service as spaces_service
from allting.spaces.schemas import MemberAdd, MemberUpdate, SpaceCreate, SpaceUpdate
from allting.users.models import User
from allting.web.errors import document_error_texts
from allting.web.rendering import gettext_for, parse_uuid, redirect, render
from allting.web.web import Csrf, SignedIn, done, error_text, form_change

router = APIRouter(include_in_schema=False)


def _can(role: str | None, resource: str, action: str) -> bool:
    return permissions.allowed(role, resource, action)


async def _collections(db, space_id: uuid.UUID) -> list:
    """The space's document collections, when the knowledge domain is installed."""
    try:
        from allting.knowledge.models import Collection
    except ImportError:
        return []
    return list(
        await db.scalars(
            select(Collection).where(Collection.space_id == space_id).order_by(func.lower(Collection.name))
        )
    )


async def _space_context(db, page, space_id: uuid.UUID, tab: str) -> dict:
    space, role = await spaces_service.get_space_for(db, page.ctx, space_id)
    return {
        "nav": "spaces",
        "space": space,
        "role": role,
        "tab": tab,
        "can_edit_space": _can(role, "space", "edit"),
        "can_members": _can(role, "members", "read"),
        "can_create_assistant": _can(role, "assistant", "create"),
        "can_edit_assistant": _can(role, "assistant", "edit"),
        "can_knowledge": _can(role, "collection", "read"),
        "can_edit_knowledge": _can(role, "collection", "create"),
        "can_websites": _can(role, "website", "read"),
        "can_edit_websites": _can(role, "website", "create"),
    }


@router.get("/spaces", response_class=HTMLResponse)
async def spaces_page(request: Request, db: DbSession, page: SignedIn, q: str | None = None):
    spaces = await spaces_service.list_spaces(db, page.ctx, search=(q or "").strip()[:200] or None)
    return render(
        request,
        "spaces/list.html",
        {"nav": "spaces", "spaces": spaces, "search": q or "", "can_create": page.can("spaces")},
    )


@router.post("/spaces", dependencies=[Csrf])
async def create_space_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    name: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
):
    _ = gettext_for(page.language)
    try:
        async with db.begin_nested():
            space = await spaces_service.create_space(
                db,
                page.ctx,
                SpaceCreate(name=name.strip() or _("New space"), description=description or None),
            )
    except AppError as exc:
        return done(request, "/spaces", error_text(request, exc), "error")
    return done(request, f"/spaces/{space.id}/assistants", _("The space is created."))


@router.get("/spaces/{space_id}")
async def space_page(request: Request, space_id: uuid.UUID, page: SignedIn):
    return redirect(request, f"/spaces/{space_id}/assistants")


# Assistants


@router.get("/spaces/{space_id}/assistants", response_class=HTMLResponse)
async def space_assistants_page(request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID):
    values = await _space_context(db, page, space_id, "assistants")
    assistants = await assistants_service.list_assistants(db, page.ctx, space_id=space_id)
    values["assistants"] = assistants
    return render(request, "spaces/assistants.html", values)


@router.post("/spaces/{space_id}/assistants", dependencies=[Csrf])
async def create_assistant_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    name: Annotated[str, Form(max_length=200)] = "",
):
    _ = gettext_for(page.language)
    try:
        async with db.begin_nested():
            assistant = await assistants_service.create_assistant(
                db,
                page.ctx,
                AssistantCreate(space_id=space_id, name=name.strip() or _("New assistant"), published=True),
            )
    except AppError as exc:
        return done(request, f"/spaces/{space_id}/assistants", error_text(request, exc), "error")
    return done(request, f"/spaces/{space_id}/assistants/{assistant.id}", _("The assistant is created."))


@router.get("/spaces/{space_id}/assistants/{assistant_id}", response_class=HTMLResponse)
async def assistant_page(
    request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID, assistant_id: uuid.UUID
):
    values = await _space_context(db, page, space_id, "assistants")
    assistant, space, role = await assistants_service.get_assistant_for(db, page.ctx, assistant_id)
    if space.id != space_id:
        return redirect(request, f"/spaces/{space.id}/assistants/{assistant.id}")
    can_edit = _can(role, "assistant", "edit")
    values.update(
        {
            "assistant": assistant,
            "can_edit": can_edit,
            "models": await spaces_service.allowed_models(db, space, kind="completion"),
            "collections": await _collections(db, space.id),
            "versions": await assistants_service.list_prompt_versions(db, page.ctx, assistant.id)
            if can_edit
            else [],
        }
    )
    return render(request, "spaces/assistant.html", values)


def _float(value: str) -> float | None:
    try:
        return float(value) if value.strip() else None
    except ValueError:
        return None


@router.post("/spaces/{space_id}/assistants/{assistant_id}", dependencies=[Csrf])
async def update_assistant_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    assistant_id: uuid.UUID,
    name: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    prompt: Annotated[str, Form(max_length=100_000)] = "",
    prompt_note: Annotated[str, Form(max_length=500)] = "",
    model_id: Annotated[str, Form()] = "",
    temperature: Annotated[str, Form(max_length=10)] = "",
    collection_ids: Annotated[list[str] | None, Form()] = None,
    published: Annotated[str | None, Form()] = None,
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/assistants/{assistant_id}"

    async def save() -> None:
        params = ModelParams(temperature=_float(temperature))
        assistant, _space, _role = await assistants_service.get_assistant_for(db, page.ctx, assistant_id)
        await assistants_service.update_assistant(
            db,
            page.ctx,
            assistant_id,
            AssistantUpdate(
                name=name.strip() or None,
                description=description.strip() or None,
                prompt=prompt if prompt != assistant.prompt else None,
                prompt_note=prompt_note.strip() or None,
                model_id=parse_uuid(model_id),
                model_params=params,
                collection_ids=[cid for cid in (parse_uuid(c) for c in collection_ids or []) if cid],
                published=published is not None if not assistant.is_default else None,
            ),
        )

    invalid = _("Check the values and try again.")
    return await form_change(request, db, url, save, _("The assistant is saved."), invalid=invalid)


@router.post("/spaces/{space_id}/assistants/{assistant_id}/restore", dependencies=[Csrf])
async def restore_prompt_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    assistant_id: uuid.UUID,
    version: Annotated[int, Form(ge=1)],
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/assistants/{assistant_id}"
    return await form_change(
        request,
        db,
        url,
        lambda: assistants_service.restore_prompt_version(db, page.ctx, assistant_id, version),
        _("The prompt version is restored."),
    )


@router.post("/spaces/{space_id}/assistants/{assistant_id}/delete", dependencies=[Csrf])
async def delete_assistant_form(
    request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID, assistant_id: uuid.UUID
):
    _ = gettext_for(page.language)
    try:
        async with db.begin_nested():
            await assistants_service.delete_assistant(db, page.ctx, assistant_id)
    except AppError as exc:
        return done(
            request, f"/spaces/{space_id}/assistants/{assistant_id}", error_text(request, exc), "error"
        )
    return done(request, f"/spaces/{space_id}/assistants", _("The assistant is deleted."))


# Knowledge: the page lists collections; documents, uploads and progress use the JSON API from JS.


@router.get("/spaces/{space_id}/knowledge", response_class=HTMLResponse)
async def space_knowledge_page(request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID):
    values = await _space_context(db, page, space_id, "knowledge")
    values["collections"] = await _collections(db, space_id) if values["can_knowledge"] else []
    values["error_texts"] = document_error_texts(page.language)
    return render(request, "spaces/knowledge.html", values)


# Members


@router.get("/spaces/{space_id}/members", response_class=HTMLResponse)
async def space_members_page(request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID):
    from allting.users import service as users_service

    values = await _space_context(db, page, space_id, "members")
    members = await spaces_service.list_members(db, page.ctx, space_id) if values["can_members"] else []
    values["members"] = members
    groups = await users_service.list_groups(db, page.ctx) if values["can_members"] else []
    granted = {member["group_id"] for member in members if member["group_id"]}
    values["groups"] = [group for group in groups if group.id not in granted]
    values["has_groups"] = bool(groups)
    return render(request, "spaces/members.html", values)


@router.post("/spaces/{space_id}/members", dependencies=[Csrf])
async def add_member_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form()] = "viewer",
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/members"
    user = await db.scalar(
        select(User).where(func.lower(User.email) == email.strip().lower(), User.deleted_at.is_(None))
    )
    if user is None:
        return done(request, url, _("No one in your organisation has that e-mail address."), "error")
    member = MemberAdd(user_id=user.id, role=role if role in _ROLES else "viewer")
    return await form_change(
        request,
        db,
        url,
        lambda: spaces_service.add_member(db, page.ctx, space_id, member),
        _("The member is added."),
    )


_ROLES = ("viewer", "editor", "admin")


@router.post("/spaces/{space_id}/members/groups", dependencies=[Csrf])
async def add_group_member_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    group_id: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "viewer",
):
    """Share the space with every member of a group, in one role."""
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/members"
    group = parse_uuid(group_id)
    if group is None:
        return done(request, url, _("Choose a group."), "error")
    try:
        async with db.begin_nested():
            await spaces_service.add_member(
                db, page.ctx, space_id, MemberAdd(group_id=group, role=role if role in _ROLES else "viewer")
            )
    except AppError as exc:
        if exc.code == "already_member":
            return done(request, url, _("That group is already a member."), "error")
        return done(request, url, error_text(request, exc), "error")
    return done(request, url, _("The group is added."))


@router.post("/spaces/{space_id}/members/{member_id}", dependencies=[Csrf])
async def update_member_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    member_id: uuid.UUID,
    role: Annotated[str, Form()] = "viewer",
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/members"
    update = MemberUpdate(role=role if role in _ROLES else "viewer")
    return await form_change(
        request,
        db,
        url,
        lambda: spaces_service.update_member(db, page.ctx, space_id, member_id, update),
        _("The role is changed."),
    )


@router.post("/spaces/{space_id}/members/{member_id}/remove", dependencies=[Csrf])
async def remove_member_form(
    request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID, member_id: uuid.UUID
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/members"
    return await form_change(
        request,
        db,
        url,
        lambda: spaces_service.remove_member(db, page.ctx, space_id, member_id),
        _("The member is removed."),
    )


# Settings


@router.get("/spaces/{space_id}/settings", response_class=HTMLResponse)
async def space_settings_page(request: Request, db: DbSession, page: SignedIn, space_id: uuid.UUID):
    from allting.ai import service as ai_service

    await spaces_service.get_space_for(db, page.ctx, space_id, "space", "edit")
    values = await _space_context(db, page, space_id, "settings")
    enabled = [model for model, _reason in await ai_service.list_models(db, page.ctx) if model.is_enabled]
    values["models"] = enabled
    return render(request, "spaces/settings.html", values)


@router.post("/spaces/{space_id}/settings", dependencies=[Csrf])
async def update_space_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    space_id: uuid.UUID,
    name: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    security_level: Annotated[int, Form(ge=0, le=10)] = 0,
    retention_days: Annotated[str, Form(max_length=5)] = "",
    allowed_model_ids: Annotated[list[str] | None, Form()] = None,
):
    _ = gettext_for(page.language)
    url = f"/spaces/{space_id}/settings"

    async def save() -> None:
        await spaces_service.update_space(
            db,
            page.ctx,
            space_id,
            SpaceUpdate(
                name=name.strip() or None,
                description=description.strip() or None,
                security_level=security_level,
                retention_days=int(retention_days) if retention_days.strip().isdigit() else None,
                allowed_model_ids=[m for m in (parse_uuid(v) for v in allowed_model_ids or []) if m],
            ),
        )

    invalid = _("Check the values and try again.")
    return await form_change(request, db, url, save, _("The settings are saved."), invalid=invalid)
