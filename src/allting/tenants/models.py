from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from allting.platform.db import Base, Entity

DEFAULT_QUOTA_BYTES = 10 * 1024**3


class Tenant(Entity, Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="active")
    quota_limit: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_QUOTA_BYTES)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
