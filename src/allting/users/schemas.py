from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

UserState = Literal["invited", "active", "disabled"]


class RoleRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    key: str | None


class RoleRead(RoleRef):
    description: str | None
    permissions: list[str]
    predefined: bool


class RoleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    permissions: list[str] = Field(default_factory=list)


class RoleUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    permissions: list[str] | None = None


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    name: str | None
    state: str
    role: RoleRef
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class MeRead(UserRead):
    permissions: list[str]
    preferences: dict[str, Any]
    tenant_name: str
    tenant_slug: str


class UserCreate(BaseModel):
    email: EmailStr
    name: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, description="Omit to generate one (returned once)")
    role_id: uuid.UUID | None = None
    role: str | None = Field(default=None, description="Predefined role key: owner, admin or member")


class UserInvite(BaseModel):
    email: EmailStr
    name: str | None = Field(default=None, max_length=200)
    role_id: uuid.UUID | None = None


class UserCreated(UserRead):
    password: str | None = Field(default=None, description="Shown once when generated")
    invitation_token: str | None = Field(
        default=None, description="Shown once; lets the person set a password"
    )


class UserUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    role_id: uuid.UUID | None = None
    state: Literal["active", "disabled"] | None = None


class MeUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    language: Literal["sv", "en"] | None = None
    theme: Literal["light", "dark", "system"] | None = None


class PasswordChange(BaseModel):
    current_password: str
    new_password: str


class InvitationAccept(BaseModel):
    token: str
    password: str


class UserList(BaseModel):
    items: list[UserRead]
    total: int
    limit: int
    offset: int


class GroupCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class GroupUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class GroupRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    member_ids: list[uuid.UUID] = Field(default_factory=list)


class GroupMemberAdd(BaseModel):
    user_id: uuid.UUID


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=90, ge=1, le=730)


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret key; shown only now")
