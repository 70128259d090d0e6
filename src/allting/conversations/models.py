from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, SmallInteger, String, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from allting.platform.db import Base, Entity
from allting.platform.tenancy import TenantScoped


class Conversation(Entity, TenantScoped, Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_updated", "tenant_id", "user_id", "updated_at"),)

    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    assistant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("assistants.id", ondelete="CASCADE"), index=True
    )
    space_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("assistant_api_keys.id", ondelete="SET NULL")
    )
    title: Mapped[str | None] = mapped_column(String(200))


class Message(Entity, TenantScoped, Base):
    """One question and its answer, with what produced the answer (EU AI Act transparency)."""

    __tablename__ = "messages"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="streaming")
    error: Mapped[str | None] = mapped_column(String(1000))
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ai_models.id", ondelete="SET NULL"))
    model_name: Mapped[str | None] = mapped_column(String(200))
    provider_type: Mapped[str | None] = mapped_column(String(32))
    fallback_used: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_version: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    file_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), default=list)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    feedback_value: Mapped[int | None] = mapped_column(SmallInteger)
    feedback_comment: Mapped[str | None] = mapped_column(String(2000))


class Citation(Entity, TenantScoped, Base):
    """A passage the answer cited, kept as it was when the answer was given."""

    __tablename__ = "citations"

    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    ref: Mapped[int] = mapped_column(SmallInteger)
    chunk_id: Mapped[uuid.UUID | None]
    document_id: Mapped[uuid.UUID | None]
    title: Mapped[str | None] = mapped_column(String(500))
    url: Mapped[str | None] = mapped_column(String(2000))
    location: Mapped[str | None] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
