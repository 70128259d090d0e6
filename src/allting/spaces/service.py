"""Spaces: personal, shared and organisation spaces, their members and settings."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.audit import service as audit
from allting.deps import Ctx
from allting.platform.errors import Conflict, Forbidden, Invalid, NotFound
from allting.spaces import permissions
from allting.spaces.models import Space, SpaceMember
from allting.spaces.schemas import MemberAdd, MemberUpdate, SpaceCreate, SpaceUpdate
from allting.users.models import User, UserGroup


async def get_space_for(
    db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, resource: str = "space", action: str = "read"
) -> tuple[Space, str]:
    """The space and the caller's role, if they may take `action` on `resource` in it.

    Spaces the caller cannot see at all answer 404, exactly like ones that do not exist.
    """
    space = await db.get(Space, space_id)
    role = await permissions.space_role(db, ctx, space) if space is not None else None
    if space is None or role is None:
        raise NotFound("Space not found")
    if not permissions.allowed(role, resource, action):
        raise Forbidden(
            f"Your role in this space ({role}) does not allow this",
            code="space_permission_denied",
            details={"resource": resource, "action": action, "role": role},
        )
    return space, role


async def ensure_personal_space(db: AsyncSession, ctx: Ctx) -> Space:
    """The caller's personal space, created with a personal assistant on first use."""
    from allting.assistants import service as assistants_service

    if ctx.user_id is None:
        raise Forbidden("Only people have personal spaces", code="user_required")
    space = await db.scalar(select(Space).where(Space.kind == "personal", Space.owner_user_id == ctx.user_id))
    if space is not None:
        return space
    async with db.begin_nested():
        space = Space(
            name="Personal",
            kind="personal",
            owner_user_id=ctx.user_id,
            created_by=ctx.user_id,
            security_level=0,
        )
        db.add(space)
        await db.flush()
    await assistants_service.create_default_assistant(db, ctx, space, name="My assistant")
    return space


async def ensure_organisation_space(db: AsyncSession, ctx: Ctx) -> Space:
    space = await db.scalar(select(Space).where(Space.kind == "organisation"))
    if space is None:
        space = Space(
            name="Organisation",
            kind="organisation",
            description="Knowledge and assistants for everyone",
            security_level=0,
            created_by=ctx.user_id,
        )
        db.add(space)
        await db.flush()
    return space


async def list_spaces(db: AsyncSession, ctx: Ctx, *, search: str | None = None) -> list[tuple[Space, str]]:
    """Every space the caller can see, with their role in it."""
    if ctx.user_id is not None:
        await ensure_personal_space(db, ctx)
    await ensure_organisation_space(db, ctx)
    query = select(Space).where(Space.id.in_(await permissions.accessible_space_ids(db, ctx)))
    if search:
        query = query.where(func.lower(Space.name).contains(search.lower()))
    spaces = list(
        await db.scalars(
            query.order_by(Space.kind != "personal", Space.kind != "organisation", func.lower(Space.name))
        )
    )
    return [(space, await permissions.space_role(db, ctx, space)) for space in spaces]


async def create_space(db: AsyncSession, ctx: Ctx, data: SpaceCreate) -> Space:
    """Create a shared space; its creator becomes its admin."""
    ctx.require("spaces")
    space = Space(
        name=data.name,
        description=data.description,
        kind="shared",
        security_level=data.security_level,
        retention_days=data.retention_days,
        created_by=ctx.user_id,
    )
    db.add(space)
    await db.flush()
    if ctx.user_id is not None:
        db.add(SpaceMember(space_id=space.id, user_id=ctx.user_id, role="admin"))
        await db.flush()
    await audit.record(
        db, ctx, "space.created", target_type="space", target_id=space.id, changes={"name": space.name}
    )
    return space


async def _check_allowed_models(db: AsyncSession, space: Space, model_ids: list[uuid.UUID]) -> None:
    from allting.ai.models import AiModel

    for model_id in model_ids:
        model = await db.get(AiModel, model_id)
        if model is None or not model.is_enabled:
            raise Invalid("Only the organisation's enabled models can be allowed", field="allowed_model_ids")
        if model.security_level < space.security_level:
            raise Invalid(
                f"{model.display_name} does not meet this space's security classification",
                field="allowed_model_ids",
            )


async def update_space(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, data: SpaceUpdate) -> Space:
    space, _ = await get_space_for(db, ctx, space_id, "space", "edit")
    values = data.model_dump(exclude_unset=True)
    if "name" in values and values["name"] is None:
        raise Invalid("The name cannot be empty", field="name")
    if space.kind == "personal" and ("security_level" in values or "allowed_model_ids" in values):
        raise Invalid("A personal space follows the organisation's settings", field="security_level")
    changes = {}
    for name, value in values.items():
        if name == "allowed_model_ids":
            value = value or None
        if getattr(space, name) != value:
            changes[name] = {"from": _plain(getattr(space, name)), "to": _plain(value)}
            setattr(space, name, value)
    if space.allowed_model_ids:
        await _check_allowed_models(db, space, space.allowed_model_ids)
    await db.flush()
    await audit.record(db, ctx, "space.updated", target_type="space", target_id=space.id, changes=changes)
    return space


def _plain(value):
    return [str(item) for item in value] if isinstance(value, list) else value


async def delete_space(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID) -> None:
    space, _ = await get_space_for(db, ctx, space_id, "space", "delete")
    if space.kind != "shared":
        raise Invalid("Personal and organisation spaces cannot be deleted", field="space_id")
    await db.delete(space)
    await audit.record(
        db, ctx, "space.deleted", target_type="space", target_id=space.id, changes={"name": space.name}
    )


async def list_members(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID) -> list[dict]:
    space, _ = await get_space_for(db, ctx, space_id, "members", "read")
    rows = await db.execute(
        select(SpaceMember, User.email, User.name, UserGroup.name)
        .outerjoin(User, User.id == SpaceMember.user_id)
        .outerjoin(UserGroup, UserGroup.id == SpaceMember.group_id)
        .where(SpaceMember.space_id == space.id)
        .order_by(SpaceMember.created_at)
    )
    return [
        {
            "id": member.id,
            "user_id": member.user_id,
            "group_id": member.group_id,
            "name": group_name or user_name or email,
            "email": email,
            "role": member.role,
        }
        for member, email, user_name, group_name in rows
    ]


async def add_member(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, data: MemberAdd) -> SpaceMember:
    space, _ = await get_space_for(db, ctx, space_id, "members", "add")
    if space.kind != "shared":
        raise Invalid("Only shared spaces have members", field="space_id")
    if data.user_id is not None:
        user = await db.scalar(select(User).where(User.id == data.user_id, User.deleted_at.is_(None)))
        if user is None:
            raise Invalid("No such user", field="user_id")
        existing = await db.scalar(
            select(SpaceMember).where(SpaceMember.space_id == space.id, SpaceMember.user_id == data.user_id)
        )
    else:
        if await db.get(UserGroup, data.group_id) is None:
            raise Invalid("No such group", field="group_id")
        existing = await db.scalar(
            select(SpaceMember).where(SpaceMember.space_id == space.id, SpaceMember.group_id == data.group_id)
        )
    if existing is not None:
        raise Conflict("Already a member of this space; change the role instead", code="already_member")
    member = SpaceMember(space_id=space.id, user_id=data.user_id, group_id=data.group_id, role=data.role)
    db.add(member)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "space.member_added",
        target_type="space",
        target_id=space.id,
        changes={
            "user_id": data.user_id and str(data.user_id),
            "group_id": data.group_id and str(data.group_id),
            "role": data.role,
        },
    )
    return member


async def _member(db: AsyncSession, space: Space, member_id: uuid.UUID) -> SpaceMember:
    member = await db.scalar(
        select(SpaceMember).where(SpaceMember.id == member_id, SpaceMember.space_id == space.id)
    )
    if member is None:
        raise NotFound("Member not found")
    return member


async def _guard_last_admin(db: AsyncSession, space: Space, member: SpaceMember) -> None:
    if member.role != "admin":
        return
    admins = await db.scalar(
        select(func.count())
        .select_from(SpaceMember)
        .where(SpaceMember.space_id == space.id, SpaceMember.role == "admin")
    )
    if admins <= 1:
        raise Conflict("A space must keep at least one admin", code="last_space_admin")


async def update_member(
    db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, member_id: uuid.UUID, data: MemberUpdate
) -> SpaceMember:
    space, _ = await get_space_for(db, ctx, space_id, "members", "edit")
    member = await _member(db, space, member_id)
    if member.role != data.role:
        if data.role != "admin":
            await _guard_last_admin(db, space, member)
        await audit.record(
            db,
            ctx,
            "space.member_updated",
            target_type="space",
            target_id=space.id,
            changes={"member_id": str(member.id), "from": member.role, "to": data.role},
        )
        member.role = data.role
        await db.flush()
    return member


async def remove_member(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, member_id: uuid.UUID) -> None:
    space, _ = await get_space_for(db, ctx, space_id, "members", "remove")
    member = await _member(db, space, member_id)
    await _guard_last_admin(db, space, member)
    await db.delete(member)
    await audit.record(
        db,
        ctx,
        "space.member_removed",
        target_type="space",
        target_id=space.id,
        changes={
            "member_id": str(member.id),
            "user_id": member.user_id and str(member.user_id),
            "group_id": member.group_id and str(member.group_id),
        },
    )


async def allowed_models(db: AsyncSession, space: Space, kind: str | None = None) -> list:
    """The tenant's enabled models this space may use: its allow-list and security classification."""
    from allting.ai.models import AiModel

    query = select(AiModel).where(AiModel.is_enabled, AiModel.security_level >= space.security_level)
    if kind:
        query = query.where(AiModel.kind == kind)
    if space.allowed_model_ids:
        query = query.where(AiModel.id.in_(space.allowed_model_ids))
    return list(
        await db.scalars(query.order_by(AiModel.kind, AiModel.is_default.desc(), AiModel.display_name))
    )


async def check_model_allowed(db: AsyncSession, space: Space, model) -> None:
    if not model.is_enabled:
        raise Invalid(f"{model.display_name} is not enabled in this organisation", field="model_id")
    if space.allowed_model_ids and model.id not in space.allowed_model_ids:
        raise Invalid(f"{model.display_name} is not allowed in this space", field="model_id")
    if model.security_level < space.security_level:
        raise Invalid(
            f"{model.display_name} does not meet this space's security classification "
            f"(level {space.security_level} needed)",
            field="model_id",
        )


async def default_assistant(db: AsyncSession, space: Space):
    from allting.assistants.models import Assistant

    return await db.scalar(select(Assistant).where(Assistant.space_id == space.id, Assistant.is_default))
