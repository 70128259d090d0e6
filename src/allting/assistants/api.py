from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from allting.assistants import service
from allting.assistants.models import Assistant
from allting.assistants.schemas import (
    AssistantCreate,
    AssistantKeyCreate,
    AssistantKeyCreated,
    AssistantKeyRead,
    AssistantList,
    AssistantMove,
    AssistantRead,
    AssistantUpdate,
    PromptVersionRead,
)
from allting.deps import CurrentCtx
from allting.platform.db import DbSession
from allting.spaces import permissions

router = APIRouter(tags=["assistants"])


def assistant_read(assistant: Assistant, role: str | None) -> AssistantRead:
    return AssistantRead.model_validate(assistant).model_copy(
        update={"permissions": permissions.actions(role, "assistant")}
    )


@router.get("/assistants/", response_model=AssistantList)
async def list_assistants(db: DbSession, ctx: CurrentCtx, space_id: uuid.UUID | None = None) -> AssistantList:
    items = [assistant_read(a, role) for a, role in await service.list_assistants(db, ctx, space_id=space_id)]
    return AssistantList(items=items, count=len(items))


@router.post("/assistants/", response_model=AssistantRead, status_code=201)
async def create_assistant(data: AssistantCreate, db: DbSession, ctx: CurrentCtx) -> AssistantRead:
    assistant = await service.create_assistant(db, ctx, data)
    _, _, role = await service.get_assistant_for(db, ctx, assistant.id)
    return assistant_read(assistant, role)


@router.get("/assistants/{assistant_id}/", response_model=AssistantRead)
async def get_assistant(assistant_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> AssistantRead:
    assistant, _, role = await service.get_assistant_for(db, ctx, assistant_id)
    return assistant_read(assistant, role)


@router.patch("/assistants/{assistant_id}/", response_model=AssistantRead)
async def update_assistant(
    assistant_id: uuid.UUID, data: AssistantUpdate, db: DbSession, ctx: CurrentCtx
) -> AssistantRead:
    await service.update_assistant(db, ctx, assistant_id, data)
    assistant, _, role = await service.get_assistant_for(db, ctx, assistant_id)
    return assistant_read(assistant, role)


@router.delete("/assistants/{assistant_id}/", status_code=204)
async def delete_assistant(assistant_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_assistant(db, ctx, assistant_id)
    return Response(status_code=204)


@router.post("/assistants/{assistant_id}/move", response_model=AssistantRead)
async def move_assistant(assistant_id: uuid.UUID, data: AssistantMove, db: DbSession, ctx: CurrentCtx):
    await service.move_assistant(db, ctx, assistant_id, data.space_id)
    assistant, _, role = await service.get_assistant_for(db, ctx, assistant_id)
    return assistant_read(assistant, role)


@router.get("/assistants/{assistant_id}/prompt-versions/", response_model=list[PromptVersionRead])
async def list_prompt_versions(assistant_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.list_prompt_versions(db, ctx, assistant_id)


@router.post("/assistants/{assistant_id}/prompt-versions/{version}/restore", response_model=AssistantRead)
async def restore_prompt_version(assistant_id: uuid.UUID, version: int, db: DbSession, ctx: CurrentCtx):
    await service.restore_prompt_version(db, ctx, assistant_id, version)
    assistant, _, role = await service.get_assistant_for(db, ctx, assistant_id)
    return assistant_read(assistant, role)


@router.get("/assistants/{assistant_id}/api-keys/", response_model=list[AssistantKeyRead])
async def list_keys(assistant_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.list_keys(db, ctx, assistant_id)


@router.post("/assistants/{assistant_id}/api-keys/", response_model=AssistantKeyCreated, status_code=201)
async def create_key(assistant_id: uuid.UUID, data: AssistantKeyCreate, db: DbSession, ctx: CurrentCtx):
    key, secret = await service.create_key(db, ctx, assistant_id, data.name)
    return AssistantKeyCreated(**AssistantKeyRead.model_validate(key).model_dump(), key=secret)


@router.delete("/assistants/{assistant_id}/api-keys/{key_id}", response_model=AssistantKeyRead)
async def revoke_key(assistant_id: uuid.UUID, key_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.revoke_key(db, ctx, assistant_id, key_id)
