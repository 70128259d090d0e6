from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SpaceRole = Literal["viewer", "editor", "admin"]


class SpaceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    security_level: int = Field(default=0, ge=0, le=10)
    retention_days: int | None = Field(default=None, ge=1, le=3650)


class SpaceUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    security_level: int | None = Field(default=None, ge=0, le=10)
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    allowed_model_ids: list[uuid.UUID] | None = Field(
        default=None, description="Empty list: every enabled model"
    )


class AssistantSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    model_id: uuid.UUID | None
    published: bool
    is_default: bool


class SpaceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    kind: str
    personal: bool
    security_level: int
    retention_days: int | None
    allowed_model_ids: list[uuid.UUID] | None
    role: str
    permissions: list[str]
    created_at: datetime
    updated_at: datetime
    default_assistant: AssistantSummary | None = None


class SpaceList(BaseModel):
    items: list[SpaceRead]
    count: int


class MemberAdd(BaseModel):
    user_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    role: SpaceRole = "viewer"

    @model_validator(mode="after")
    def _one_of(self) -> MemberAdd:
        if (self.user_id is None) == (self.group_id is None):
            raise ValueError("give exactly one of user_id and group_id")
        return self


class MemberUpdate(BaseModel):
    role: SpaceRole


class MemberRead(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID | None
    group_id: uuid.UUID | None
    name: str
    email: str | None
    role: str


class SpaceModelRead(BaseModel):
    id: uuid.UUID
    kind: str
    name: str
    display_name: str
    security_level: int
    hosting: str
    vision: bool
    is_default: bool
