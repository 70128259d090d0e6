from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from allting.platform.db import Base, Entity
from allting.platform.tenancy import TenantScoped


class Assistant(Entity, TenantScoped, Base):
    __tablename__ = "assistants"
    __table_args__ = (
        Index(
            "uq_assistants_one_default_per_space",
            "space_id",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    space_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    prompt: Mapped[str] = mapped_column(Text, default="")
    prompt_version: Mapped[int] = mapped_column(Integer, default=1)
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ai_models.id", ondelete="SET NULL"))
    model_params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    collection_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), default=list)
    website_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), default=list)
    allow_attachments: Mapped[bool] = mapped_column(Boolean, default=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class AssistantPromptVersion(Entity, TenantScoped, Base):
    """Every version of an assistant's system prompt: who wrote what, so older ones can be restored."""

    __tablename__ = "assistant_prompt_versions"
    __table_args__ = (UniqueConstraint("assistant_id", "version"),)

    assistant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("assistants.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class AssistantApiKey(Entity, TenantScoped, Base):
    """A key valid only for asking one assistant (the reference system's `ina_` keys)."""

    __tablename__ = "assistant_api_keys"

    assistant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("assistants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
