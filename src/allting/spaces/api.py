from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from allting.deps import CurrentCtx
from allting.platform.db import DbSession
from allting.spaces import permissions, service
from allting.spaces.models import Space
from allting.spaces.schemas import (
    AssistantSummary,
    MemberAdd,
    MemberRead,
    MemberUpdate,
    SpaceCreate,
    SpaceList,
    SpaceModelRead,
    SpaceRead,
    SpaceUpdate,
)

router = APIRouter(tags=["spaces"])


async def space_read(db: DbSession, space: Space, role: str) -> SpaceRead:
    assistant = await service.default_assistant(db, space)
    return SpaceRead(
        id=space.id,
        name=space.name,
        description=space.description,
        kind=space.kind,
        personal=space.kind == "personal",
        security_level=space.security_level,
        retention_days=space.retention_days,
        allowed_model_ids=space.allowed_model_ids,
        role=role,
        permissions=permissions.actions(role, "space"),
        created_at=space.created_at,
        updated_at=space.updated_at,
        default_assistant=AssistantSummary.model_validate(assistant) if assistant else None,
    )


@router.get("/spaces/", response_model=SpaceList)
async def list_spaces(db: DbSession, ctx: CurrentCtx, search: str | None = None) -> SpaceList:
    items = [
        await space_read(db, space, role) for space, role in await service.list_spaces(db, ctx, search=search)
    ]
    return SpaceList(items=items, count=len(items))


@router.get("/spaces/type/personal/", response_model=SpaceRead)
async def get_personal_space(db: DbSession, ctx: CurrentCtx) -> SpaceRead:
    """The caller's personal space with its `default_assistant`; created on first use."""
    space = await service.ensure_personal_space(db, ctx)
    return await space_read(db, space, "owner")


@router.post("/spaces/", response_model=SpaceRead, status_code=201)
async def create_space(data: SpaceCreate, db: DbSession, ctx: CurrentCtx) -> SpaceRead:
    return await space_read(db, await service.create_space(db, ctx, data), "admin")


@router.get("/spaces/{space_id}/", response_model=SpaceRead)
async def get_space(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> SpaceRead:
    return await space_read(db, *await service.get_space_for(db, ctx, space_id))


@router.patch("/spaces/{space_id}/", response_model=SpaceRead)
async def update_space(space_id: uuid.UUID, data: SpaceUpdate, db: DbSession, ctx: CurrentCtx) -> SpaceRead:
    await service.update_space(db, ctx, space_id, data)
    return await space_read(db, *await service.get_space_for(db, ctx, space_id))


@router.delete("/spaces/{space_id}/", status_code=204)
async def delete_space(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_space(db, ctx, space_id)
    return Response(status_code=204)


@router.get("/spaces/{space_id}/models/", response_model=list[SpaceModelRead])
async def list_space_models(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> list[SpaceModelRead]:
    """The models that may be used in this space (enabled, allowed here, meeting its classification)."""
    space, _ = await service.get_space_for(db, ctx, space_id)
    return [
        SpaceModelRead(
            id=model.id,
            kind=model.kind,
            name=model.name,
            display_name=model.display_name,
            security_level=model.security_level,
            hosting=model.hosting,
            vision=model.vision,
            is_default=model.is_default,
        )
        for model in await service.allowed_models(db, space)
    ]


@router.get("/spaces/{space_id}/members/", response_model=list[MemberRead])
async def list_members(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.list_members(db, ctx, space_id)


@router.post("/spaces/{space_id}/members/", response_model=list[MemberRead], status_code=201)
async def add_member(space_id: uuid.UUID, data: MemberAdd, db: DbSession, ctx: CurrentCtx):
    await service.add_member(db, ctx, space_id, data)
    return await service.list_members(db, ctx, space_id)


@router.patch("/spaces/{space_id}/members/{member_id}", response_model=list[MemberRead])
async def update_member(
    space_id: uuid.UUID, member_id: uuid.UUID, data: MemberUpdate, db: DbSession, ctx: CurrentCtx
):
    await service.update_member(db, ctx, space_id, member_id, data)
    return await service.list_members(db, ctx, space_id)


@router.delete("/spaces/{space_id}/members/{member_id}", status_code=204)
async def remove_member(
    space_id: uuid.UUID, member_id: uuid.UUID, db: DbSession, ctx: CurrentCtx
) -> Response:
    await service.remove_member(db, ctx, space_id, member_id)
    return Response(status_code=204)
