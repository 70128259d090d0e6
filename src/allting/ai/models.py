from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from allting.platform.db import Base, Entity, utcnow
from allting.platform.tenancy import TenantScoped

MODEL_KINDS = ("completion", "embedding", "transcription")


class ModelProvider(Entity, TenantScoped, Base):
    """A provider account of a tenant: where requests go and with which (encrypted) key."""

    __tablename__ = "model_providers"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(100))
    provider_type: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str | None] = mapped_column(String(500))
    api_version: Mapped[str | None] = mapped_column(String(50))
    deployment_name: Mapped[str | None] = mapped_column(String(200))
    encrypted_api_key: Mapped[str | None] = mapped_column(Text)
    key_last4: Mapped[str | None] = mapped_column(String(4))
    key_set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class AiModel(Entity, TenantScoped, Base):
    """A model in the tenant's catalogue (completion, embedding or transcription)."""

    __tablename__ = "ai_models"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "display_name"),
        Index(
            "uq_ai_models_one_default_per_kind",
            "tenant_id",
            "kind",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(1000))
    family: Mapped[str | None] = mapped_column(String(50))
    provider_type: Mapped[str] = mapped_column(String(32))
    provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_providers.id", ondelete="SET NULL"), index=True
    )
    context_window: Mapped[int | None] = mapped_column(Integer)
    max_output_tokens: Mapped[int | None] = mapped_column(Integer)
    vision: Mapped[bool] = mapped_column(Boolean, default=False)
    reasoning: Mapped[bool] = mapped_column(Boolean, default=False)
    tool_calling: Mapped[bool] = mapped_column(Boolean, default=False)
    dimensions: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    hosting: Mapped[str] = mapped_column(String(32), default="usa")
    security_level: Mapped[int] = mapped_column(Integer, default=0)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    input_price_per_million: Mapped[Decimal | None] = mapped_column(Numeric(12, 6))
    output_price_per_million: Mapped[Decimal | None] = mapped_column(Numeric(12, 6))
    fallback_model_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), default=list)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)

    provider: Mapped[ModelProvider | None] = relationship(lazy="raise")


class UsageRecord(TenantScoped, Base):
    """One model call: who, where, which model, how many tokens, what it cost, how long it took."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("now()")
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    space_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    assistant_id: Mapped[uuid.UUID | None]
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ai_models.id", ondelete="SET NULL"))
    model_name: Mapped[str] = mapped_column(String(200))
    provider_type: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16), default="success")


class Budget(Entity, TenantScoped, Base):
    """A monthly limit on tokens and/or cost for the tenant, a space or a user."""

    __tablename__ = "budgets"
    __table_args__ = (
        Index("uq_budgets_scope", "tenant_id", "scope", text("coalesce(scope_id::text, '')"), unique=True),
    )

    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[uuid.UUID | None]
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cost: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
