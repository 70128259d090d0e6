"""Spaces: personal, shared and organisation spaces, their members and settings."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from allting.deps import Ctx
from allting.platform.errors import Forbidden, NotFound
from allting.spaces import permissions
from allting.spaces.models import Space


async def get_space_for(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, resource: str = "space",
                        action: str = "read") -> tuple[Space, str]:
    """The space and the caller's role, if they may take `action` on `resource` in it.

    Spaces the caller cannot see at all answer 404, exactly like ones that do not exist.
    """
    space = await db.get(Space, space_id)
    role = await permissions.space_role(db, ctx, space) if space is not None else None
    if space is None or role is None:
        raise NotFound("Space not found")
    if not permissions.allowed(role, resource, action):
        raise Forbidden(f"Your role in this space ({role}) does not allow this", code="space_permission_denied",
                        details={"resource": resource, "action": action, "role": role})
    return space, role
