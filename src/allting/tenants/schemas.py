from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from allting.tenants.models import DEFAULT_QUOTA_BYTES

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
TenantState = Literal["active", "suspended"]


class TenantCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    display_name: str | None = Field(default=None, max_length=200)
    slug: str | None = Field(default=None, pattern=SLUG_PATTERN)
    quota_limit: int = Field(default=DEFAULT_QUOTA_BYTES, ge=0)
    state: TenantState = "active"


class TenantUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    display_name: str | None = Field(default=None, max_length=200)
    quota_limit: int | None = Field(default=None, ge=0)
    state: TenantState | None = None


class TenantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    slug: str
    display_name: str | None
    state: str
    quota_limit: int
    created_at: datetime
    updated_at: datetime


class TenantList(BaseModel):
    items: list[TenantRead]
    count: int
