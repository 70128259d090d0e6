"""Who may do what in a space: the one policy module (the reference system's matrix, §5).

A person's role in a space is worked out on every request from the database, so removing a
member or changing a role takes effect at once.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.deps import Ctx
from allting.spaces.models import Space, SpaceMember
from allting.users.models import UserGroupMember

ROLE_RANK = {"viewer": 1, "editor": 2, "admin": 3, "owner": 4}

# resource -> role -> actions. "owner" is the owner of a personal space.
MATRIX: dict[str, dict[str, frozenset[str]]] = {
    "space": {
        "viewer": frozenset({"read"}),
        "editor": frozenset({"read"}),
        "admin": frozenset({"read", "edit", "delete"}),
        "owner": frozenset({"read", "edit"}),
    },
    "members": {
        "admin": frozenset({"read", "add", "edit", "remove"}),
    },
    "assistant": {
        "viewer": frozenset({"read"}),
        "editor": frozenset({"read", "create", "edit", "delete", "publish"}),
        "admin": frozenset({"read", "create", "edit", "delete", "publish"}),
        "owner": frozenset({"read", "create", "edit", "delete", "publish"}),
    },
    "collection": {
        "editor": frozenset({"read", "create", "edit", "delete"}),
        "admin": frozenset({"read", "create", "edit", "delete"}),
        "owner": frozenset({"read", "create", "edit", "delete"}),
    },
    "website": {
        "editor": frozenset({"read", "create", "edit", "delete"}),
        "admin": frozenset({"read", "create", "edit", "delete"}),
        "owner": frozenset({"read", "create", "edit", "delete"}),
    },
}


async def space_role(db: AsyncSession, ctx: Ctx, space: Space) -> str | None:
    """The caller's role in the space, or None when they have no access."""
    if space.kind != "shared" or ctx.actor_type == "sysadmin" or ctx.user_id is None:
        return role_in(ctx, space, [])
    roles = await db.scalars(member_roles(ctx.user_id).where(SpaceMember.space_id == space.id))
    return role_in(ctx, space, list(roles))


def member_roles(user_id: uuid.UUID | ColumnElement):
    """The roles a person holds in spaces, directly or through a group; filter by space."""
    group_ids = select(UserGroupMember.group_id).where(UserGroupMember.user_id == user_id)
    return select(SpaceMember.role).where(
        (SpaceMember.user_id == user_id) | SpaceMember.group_id.in_(group_ids)
    )


def role_in(ctx: Ctx, space: Space, roles: list[str]) -> str | None:
    """The caller's role in the space given the roles they hold there as a member (directly or
    through groups; only shared spaces have members)."""
    if space.kind == "personal":
        return "owner" if ctx.user_id is not None and space.owner_user_id == ctx.user_id else None
    if space.kind == "organisation":
        return "admin" if ctx.has("admin") else "viewer"
    if ctx.actor_type == "sysadmin":
        return "admin"
    if ctx.user_id is None:
        return None
    return max(roles, key=ROLE_RANK.__getitem__, default=None)


def allowed(role: str | None, resource: str, action: str) -> bool:
    return role is not None and action in MATRIX[resource].get(role, frozenset())


def actions(role: str | None, resource: str) -> list[str]:
    """The actions a role may take on a resource, for the `permissions` list of API objects."""
    return sorted(MATRIX[resource].get(role, frozenset())) if role else []


async def accessible_space_ids(db: AsyncSession, ctx: Ctx) -> list[uuid.UUID]:
    """Every space the caller can see: their personal space, the organisation space, and memberships."""
    group_ids = select(UserGroupMember.group_id).where(UserGroupMember.user_id == ctx.user_id)
    member_of = select(SpaceMember.space_id).where(
        (SpaceMember.user_id == ctx.user_id) | SpaceMember.group_id.in_(group_ids)
    )
    query = select(Space.id).where(
        (Space.kind == "organisation")
        | ((Space.kind == "personal") & (Space.owner_user_id == ctx.user_id))
        | ((Space.kind == "shared") & Space.id.in_(member_of))
    )
    return list(await db.scalars(query))
