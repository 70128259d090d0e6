from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelParams(BaseModel):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class AssistantCreate(BaseModel):
    space_id: uuid.UUID
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    prompt: str = Field(default="", max_length=100_000)
    model_id: uuid.UUID | None = None
    model_params: ModelParams = Field(default_factory=ModelParams)
    collection_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    website_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    allow_attachments: bool = True
    published: bool = False
    retention_days: int | None = Field(default=None, ge=1, le=3650)


class AssistantUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    prompt: str | None = Field(default=None, max_length=100_000)
    prompt_note: str | None = Field(default=None, max_length=500, description="What changed in the prompt")
    model_id: uuid.UUID | None = None
    model_params: ModelParams | None = None
    collection_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)
    website_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)
    allow_attachments: bool | None = None
    published: bool | None = None
    is_default: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=3650)


class AssistantMove(BaseModel):
    space_id: uuid.UUID


class AssistantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    space_id: uuid.UUID
    name: str
    description: str | None
    prompt: str
    prompt_version: int
    model_id: uuid.UUID | None
    model_params: dict
    collection_ids: list[uuid.UUID]
    website_ids: list[uuid.UUID]
    allow_attachments: bool
    published: bool
    is_default: bool
    retention_days: int | None
    created_at: datetime
    updated_at: datetime
    permissions: list[str] = Field(default_factory=list)


class AssistantList(BaseModel):
    items: list[AssistantRead]
    count: int


class PromptVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    version: int
    text: str
    note: str | None
    created_by: uuid.UUID | None
    created_at: datetime


class AssistantKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class AssistantKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class AssistantKeyCreated(AssistantKeyRead):
    key: str
