from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Response

from allting.auth import service as auth_service
from allting.deps import CurrentCtx
from allting.platform.db import DbSession
from allting.platform.pagination import Limit, Offset
from allting.tenants.models import Tenant
from allting.users import service
from allting.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    GroupCreate,
    GroupMemberAdd,
    GroupRead,
    GroupUpdate,
    InvitationAccept,
    MeRead,
    MeUpdate,
    PasswordChange,
    RoleCreate,
    RoleRead,
    RoleUpdate,
    UserCreate,
    UserCreated,
    UserInvite,
    UserList,
    UserRead,
    UserUpdate,
)

router = APIRouter(tags=["users"])


async def _me(db: DbSession, ctx: CurrentCtx) -> MeRead:
    user = await service.get_user(db, ctx, ctx.user_id)
    tenant = await db.get(Tenant, ctx.tenant_id)
    return MeRead(
        **UserRead.model_validate(user).model_dump(),
        permissions=sorted(ctx.permissions),
        preferences=user.preferences or {},
        tenant_name=tenant.display_name or tenant.name,
        tenant_slug=tenant.slug,
    )


@router.get("/users/me/", response_model=MeRead)
async def get_me(db: DbSession, ctx: CurrentCtx) -> MeRead:
    return await _me(db, ctx)


@router.patch("/users/me/", response_model=MeRead)
async def update_me(data: MeUpdate, db: DbSession, ctx: CurrentCtx) -> MeRead:
    await service.update_me(db, ctx, data)
    return await _me(db, ctx)


@router.post("/users/me/password", status_code=204)
async def change_password(data: PasswordChange, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.change_password(db, ctx, data.current_password, data.new_password)
    return Response(status_code=204)


@router.get("/users/me/api-keys/", response_model=list[ApiKeyRead])
async def list_api_keys(db: DbSession, ctx: CurrentCtx):
    return await service.list_api_keys(db, ctx)


@router.post("/users/me/api-keys/", response_model=ApiKeyCreated, status_code=201)
async def create_api_key(data: ApiKeyCreate, db: DbSession, ctx: CurrentCtx) -> ApiKeyCreated:
    key, secret = await service.create_api_key(db, ctx, data)
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), key=secret)


@router.delete("/users/me/api-keys/{key_id}", response_model=ApiKeyRead)
async def revoke_api_key(key_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.revoke_api_key(db, ctx, key_id)


@router.get("/users/", response_model=UserList)
async def list_users(
    db: DbSession,
    ctx: CurrentCtx,
    limit: Limit = 50,
    offset: Offset = 0,
    search: str | None = None,
    state: Literal["invited", "active", "disabled"] | None = None,
) -> UserList:
    users, total = await service.list_users(db, ctx, limit=limit, offset=offset, search=search, state=state)
    return UserList(items=users, total=total, limit=limit, offset=offset)


@router.post("/users/", response_model=UserCreated, status_code=201)
async def create_user(data: UserCreate, db: DbSession, ctx: CurrentCtx) -> UserCreated:
    user, password = await service.create_user(db, ctx, data)
    return UserCreated.model_validate(user, from_attributes=True).model_copy(update={"password": password})


@router.post("/users/invitations/", response_model=UserCreated, status_code=201)
async def invite_user(data: UserInvite, db: DbSession, ctx: CurrentCtx) -> UserCreated:
    user = await service.invite_user(db, ctx, data)
    return UserCreated.model_validate(user, from_attributes=True).model_copy(
        update={"invitation_token": auth_service.invitation_token(user)}
    )


@router.post("/users/invitations/accept", response_model=UserRead)
async def accept_invitation(data: InvitationAccept, db: DbSession):
    user_id = await auth_service.read_invitation(db, data.token)
    return await service.accept_invitation(db, user_id, data.password)


@router.get("/users/{user_id}", response_model=UserRead)
async def get_user(user_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.get_user(db, ctx, user_id)


@router.patch("/users/{user_id}", response_model=UserRead)
async def update_user(user_id: uuid.UUID, data: UserUpdate, db: DbSession, ctx: CurrentCtx):
    return await service.update_user(db, ctx, user_id, data)


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_user(db, ctx, user_id)
    return Response(status_code=204)


@router.get("/roles/", response_model=list[RoleRead])
async def list_roles(db: DbSession, ctx: CurrentCtx):
    return await service.list_roles(db, ctx)


@router.post("/roles/", response_model=RoleRead, status_code=201)
async def create_role(data: RoleCreate, db: DbSession, ctx: CurrentCtx):
    return await service.create_role(db, ctx, data)


@router.patch("/roles/{role_id}", response_model=RoleRead)
async def update_role(role_id: uuid.UUID, data: RoleUpdate, db: DbSession, ctx: CurrentCtx):
    return await service.update_role(db, ctx, role_id, data)


@router.delete("/roles/{role_id}", status_code=204)
async def delete_role(role_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_role(db, ctx, role_id)
    return Response(status_code=204)


async def _group_read(db: DbSession, group) -> GroupRead:
    members = await service.group_member_ids(db, [group.id])
    return GroupRead.model_validate(group, from_attributes=True).model_copy(
        update={"member_ids": members[group.id]}
    )


@router.get("/groups/", response_model=list[GroupRead])
async def list_groups(db: DbSession, ctx: CurrentCtx) -> list[GroupRead]:
    groups = await service.list_groups(db, ctx)
    members = await service.group_member_ids(db, [group.id for group in groups])
    return [
        GroupRead.model_validate(group, from_attributes=True).model_copy(
            update={"member_ids": members[group.id]}
        )
        for group in groups
    ]


@router.post("/groups/", response_model=GroupRead, status_code=201)
async def create_group(data: GroupCreate, db: DbSession, ctx: CurrentCtx) -> GroupRead:
    return await _group_read(db, await service.create_group(db, ctx, data))


@router.get("/groups/{group_id}", response_model=GroupRead)
async def get_group(group_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> GroupRead:
    return await _group_read(db, await service.get_group(db, ctx, group_id))


@router.patch("/groups/{group_id}", response_model=GroupRead)
async def update_group(group_id: uuid.UUID, data: GroupUpdate, db: DbSession, ctx: CurrentCtx) -> GroupRead:
    return await _group_read(db, await service.update_group(db, ctx, group_id, data))


@router.delete("/groups/{group_id}", status_code=204)
async def delete_group(group_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_group(db, ctx, group_id)
    return Response(status_code=204)


@router.post("/groups/{group_id}/members/", response_model=GroupRead, status_code=201)
async def add_group_member(
    group_id: uuid.UUID, data: GroupMemberAdd, db: DbSession, ctx: CurrentCtx
) -> GroupRead:
    await service.add_group_member(db, ctx, group_id, data.user_id)
    return await _group_read(db, await service.get_group(db, ctx, group_id))


@router.delete("/groups/{group_id}/members/{user_id}", status_code=204)
async def remove_group_member(
    group_id: uuid.UUID, user_id: uuid.UUID, db: DbSession, ctx: CurrentCtx
) -> Response:
    await service.remove_group_member(db, ctx, group_id, user_id)
    return Response(status_code=204)
