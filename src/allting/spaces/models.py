from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint, Uuid, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from allting.platform.db import Base, Entity
from allting.platform.tenancy import TenantScoped

SPACE_KINDS = ("personal", "shared", "organisation")
SPACE_ROLES = ("viewer", "editor", "admin")


class Space(Entity, TenantScoped, Base):
    """A place for assistants and knowledge: someone's personal space, a team's, or the organisation's."""

    __tablename__ = "spaces"
    __table_args__ = (
        Index(
            "uq_spaces_personal_owner",
            "tenant_id",
            "owner_user_id",
            unique=True,
            postgresql_where=text("kind = 'personal'"),
        ),
        Index(
            "uq_spaces_one_organisation",
            "tenant_id",
            unique=True,
            postgresql_where=text("kind = 'organisation'"),
        ),
    )

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    kind: Mapped[str] = mapped_column(String(16), default="shared")
    owner_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    security_level: Mapped[int] = mapped_column(Integer, default=0)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    allowed_model_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(Uuid))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class SpaceMember(Entity, TenantScoped, Base):
    """A user or a user group with a role in a shared space."""

    __tablename__ = "space_members"
    __table_args__ = (
        UniqueConstraint("space_id", "user_id"),
        UniqueConstraint("space_id", "group_id"),
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="user_or_group"),
    )

    space_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user_groups.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
