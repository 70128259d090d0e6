from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from allting.platform.db import Base, Entity
from allting.platform.tenancy import TenantScoped


class AuthSession(Entity, TenantScoped, Base):
    """A signed-in session; access tokens and the web cookie name it, so revoking it ends them."""

    __tablename__ = "auth_sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8), default="api")
    refresh_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class UserIdentity(Entity, TenantScoped, Base):
    """A person's account at an identity provider, bound to one user: (tenant, issuer, subject)."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(1000))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TenantFederation(Entity, TenantScoped, Base):
    """A tenant's own identity provider (federation mode); the client secret is stored encrypted."""

    __tablename__ = "tenant_federations"
    __table_args__ = (UniqueConstraint("tenant_id"),)

    provider: Mapped[str] = mapped_column(String(32))
    discovery_endpoint: Mapped[str] = mapped_column(String(1000))
    issuer: Mapped[str] = mapped_column(String(1000))
    client_id: Mapped[str] = mapped_column(String(500))
    encrypted_client_secret: Mapped[str] = mapped_column(Text)
    secret_hint: Mapped[str] = mapped_column(String(8), default="")
    allowed_domains: Mapped[list[str]] = mapped_column(ARRAY(String(253)), default=list)
    jit_provisioning: Mapped[bool] = mapped_column(Boolean, default=False)
    default_role_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("roles.id", ondelete="SET NULL"))
    configured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
