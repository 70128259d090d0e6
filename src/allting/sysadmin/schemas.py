from __future__ import annotations

import uuid

from pydantic import BaseModel, EmailStr, Field

from allting.users.schemas import UserRead


class IdRef(BaseModel):
    id: uuid.UUID


class SysadminUserCreate(BaseModel):
    """The reference system's UserAddSuperAdmin, with our single role."""

    email: EmailStr
    username: str | None = Field(default=None, max_length=200, description="Display name")
    password: str | None = None
    tenant_id: uuid.UUID
    role: str | None = Field(default=None, description="owner, admin or member")
    roles: list[IdRef] = Field(default_factory=list, description="Reference-compatible; the first is used")
    predefined_roles: list[IdRef] = Field(default_factory=list, description="Reference-compatible")


class SysadminUserUpdate(BaseModel):
    username: str | None = Field(default=None, max_length=200)
    state: str | None = Field(default=None, pattern="^(active|disabled)$")
    role_id: uuid.UUID | None = None


class SysadminUserCreated(UserRead):
    password: str | None = None


class SysadminUserList(BaseModel):
    items: list[UserRead]
    count: int
