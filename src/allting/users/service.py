"""People of a tenant: users, roles, groups and personal API keys."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from allting.audit import service as audit
from allting.auth.models import AuthSession
from allting.deps import Ctx
from allting.platform.db import utcnow
from allting.platform.errors import Conflict, Forbidden, Invalid, NotFound
from allting.platform.security import (
    generate_api_key,
    generate_password,
    hash_password_off_loop,
    password_problem,
    verify_password_off_loop,
)
from allting.users.models import ApiKey, Role, User, UserGroup, UserGroupMember
from allting.users.permissions import (
    DEFAULT_ROLE_KEY,
    OWNER_ROLE_KEY,
    PRIVILEGED_PERMISSIONS,
    unknown_permissions,
)
from allting.users.schemas import (
    ApiKeyCreate,
    GroupCreate,
    GroupUpdate,
    MeUpdate,
    RoleCreate,
    RoleUpdate,
    UserCreate,
    UserInvite,
    UserUpdate,
)


def _check_password(password: str, field: str = "password") -> None:
    if problem := password_problem(password):
        raise Invalid(f"The password {problem}", field=field, code="weak_password")


async def _role(db: AsyncSession, *, role_id: uuid.UUID | None = None, key: str | None = None) -> Role:
    if role_id is not None:
        role = await db.get(Role, role_id)
        if role is None:
            raise Invalid("No such role", field="role_id")
        return role
    role = await db.scalar(select(Role).where(Role.key == (key or DEFAULT_ROLE_KEY)))
    if role is None:
        raise Invalid(f"No predefined role '{key}'", field="role")
    return role


def _check_can_grant(ctx: Ctx, role: Role) -> None:
    if role.key == OWNER_ROLE_KEY and ctx.role_key != OWNER_ROLE_KEY and ctx.actor_type != "sysadmin":
        raise Forbidden("Only an owner can make someone an owner", code="owner_required")
    _check_within_own_permissions(ctx, role.permissions)


def _check_within_own_permissions(ctx: Ctx, permissions: list[str]) -> None:
    """Nobody but an owner or the operator hands out an administrative permission they lack."""
    if ctx.actor_type == "sysadmin" or ctx.role_key == OWNER_ROLE_KEY:
        return
    if missing := sorted((set(permissions) & PRIVILEGED_PERMISSIONS) - ctx.permissions):
        raise Forbidden(
            f"You cannot give permissions you do not have: {', '.join(missing)}",
            code="permission_escalation",
            details={"permissions": missing},
        )


async def _ensure_email_free(db: AsyncSession, email: str, *, except_id: uuid.UUID | None = None) -> None:
    query = select(User.id).where(func.lower(User.email) == email.lower(), User.deleted_at.is_(None))
    if except_id:
        query = query.where(User.id != except_id)
    if await db.scalar(query):
        raise Conflict(
            f"A user with e-mail {email} already exists",
            code="email_taken",
            details=[{"field": "email", "message": "already in use in this organisation"}],
        )


async def create_user(db: AsyncSession, ctx: Ctx, data: UserCreate) -> tuple[User, str | None]:
    """Create an active user; returns the generated password when none was given."""
    ctx.require("admin")
    await _ensure_email_free(db, data.email)
    role = await _role(db, role_id=data.role_id, key=data.role)
    _check_can_grant(ctx, role)
    generated = None
    if data.password is None:
        generated = generate_password()
    else:
        _check_password(data.password)
    user = User(
        email=data.email,
        name=data.name,
        role_id=role.id,
        state="active",
        preferences={},
        password_hash=await hash_password_off_loop(data.password or generated),
    )
    db.add(user)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "user.created",
        target_type="user",
        target_id=user.id,
        changes={"email": user.email, "role": role.name},
    )
    return await get_user(db, ctx, user.id), generated


async def invite_user(db: AsyncSession, ctx: Ctx, data: UserInvite) -> User:
    """Create an invited user who sets a password through the invitation link."""
    ctx.require("admin")
    await _ensure_email_free(db, data.email)
    role = await _role(db, role_id=data.role_id)
    _check_can_grant(ctx, role)
    user = User(email=data.email, name=data.name, role_id=role.id, state="invited", preferences={})
    db.add(user)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "user.invited",
        target_type="user",
        target_id=user.id,
        changes={"email": user.email, "role": role.name},
    )
    return await get_user(db, ctx, user.id)


async def accept_invitation(db: AsyncSession, user_id: uuid.UUID, password: str) -> User:
    """Set the password of an invited user (the tenant is already set from the signed invitation)."""
    _check_password(password)
    user = await db.scalar(_users().where(User.id == user_id))
    if user is None or user.state != "invited":
        raise Invalid("This invitation is no longer valid", field="token", code="invitation_invalid")
    user.password_hash = await hash_password_off_loop(password)
    user.state = "active"
    await db.flush()
    await audit.record_event(
        db,
        tenant_id=user.tenant_id,
        actor_type="user",
        actor_id=user.id,
        actor_label=user.email,
        action="user.invitation_accepted",
        target_type="user",
        target_id=user.id,
    )
    return user


def _users():
    return select(User).options(selectinload(User.role)).where(User.deleted_at.is_(None))


async def get_user(db: AsyncSession, ctx: Ctx, user_id: uuid.UUID) -> User:
    if user_id != ctx.user_id:
        ctx.require("admin")
    user = await db.scalar(_users().where(User.id == user_id))
    if user is None:
        raise NotFound("User not found")
    return user


async def list_users(
    db: AsyncSession,
    ctx: Ctx,
    *,
    limit: int,
    offset: int,
    search: str | None = None,
    state: str | None = None,
) -> tuple[list[User], int]:
    ctx.require("admin")
    query = _users()
    if search:
        # `%` and `_` are searched for as text, not as LIKE wildcards.
        needle = search.lower()
        query = query.where(
            func.lower(User.email).contains(needle, autoescape=True)
            | func.lower(User.name).contains(needle, autoescape=True)
        )
    if state:
        query = query.where(User.state == state)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    users = await db.scalars(query.order_by(func.lower(User.email)).limit(limit).offset(offset))
    return list(users), total or 0


async def _owner_count(db: AsyncSession) -> int:
    return (
        await db.scalar(
            select(func.count())
            .select_from(User)
            .join(Role, User.role_id == Role.id)
            .where(Role.key == OWNER_ROLE_KEY, User.deleted_at.is_(None), User.state == "active")
        )
        or 0
    )


async def _guard_last_owner(db: AsyncSession, user: User) -> None:
    if user.role.key == OWNER_ROLE_KEY and user.state == "active" and await _owner_count(db) <= 1:
        raise Conflict("The organisation must keep at least one active owner", code="last_owner")


async def revoke_sessions(
    db: AsyncSession, user_id: uuid.UUID, *, except_session: uuid.UUID | None = None
) -> None:
    query = update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if except_session:
        query = query.where(AuthSession.id != except_session)
    await db.execute(query.values(revoked_at=utcnow()))


async def update_user(db: AsyncSession, ctx: Ctx, user_id: uuid.UUID, data: UserUpdate) -> User:
    """Change a user's name, role or state; takes effect on their next request."""
    ctx.require("admin")
    user = await get_user(db, ctx, user_id)
    changes = {}
    if data.role_id is not None and data.role_id != user.role_id:
        role = await _role(db, role_id=data.role_id)
        _check_can_grant(ctx, role)
        if user.role.key == OWNER_ROLE_KEY:
            _check_can_grant(ctx, user.role)
            await _guard_last_owner(db, user)
        changes["role"] = {"from": user.role.name, "to": role.name}
        user.role_id = role.id
    if data.state is not None and data.state != user.state:
        if user.id == ctx.user_id and data.state == "disabled":
            raise Invalid("You cannot disable your own account", field="state")
        if user.role.key == OWNER_ROLE_KEY:
            # Only an owner disables or enables an owner, as only an owner deletes one.
            _check_can_grant(ctx, user.role)
        if data.state == "disabled":
            await _guard_last_owner(db, user)
            await revoke_sessions(db, user.id)
        changes["state"] = {"from": user.state, "to": data.state}
        user.state = data.state
    if data.name is not None and data.name != user.name:
        changes["name"] = {"from": user.name, "to": data.name}
        user.name = data.name
    await db.flush()
    if changes:
        await audit.record(db, ctx, "user.updated", target_type="user", target_id=user.id, changes=changes)
    # Reload with the new role; the id is taken before expiring (reading it after would lazy-load).
    db.expire(user)
    return await get_user(db, ctx, user_id)


async def delete_user(db: AsyncSession, ctx: Ctx, user_id: uuid.UUID) -> None:
    """Soft-delete a user: sign-in ends at once and the e-mail becomes free again."""
    ctx.require("admin")
    user = await get_user(db, ctx, user_id)
    if user.id == ctx.user_id:
        raise Invalid("You cannot delete your own account", field="user_id")
    if user.role.key == OWNER_ROLE_KEY:
        _check_can_grant(ctx, user.role)
        await _guard_last_owner(db, user)
    user.deleted_at = utcnow()
    user.state = "disabled"
    await revoke_sessions(db, user.id)
    await db.execute(delete(UserGroupMember).where(UserGroupMember.user_id == user.id))
    await db.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await audit.record(
        db, ctx, "user.deleted", target_type="user", target_id=user.id, changes={"email": user.email}
    )


async def update_me(db: AsyncSession, ctx: Ctx, data: MeUpdate) -> User:
    user = await get_user(db, ctx, ctx.user_id)
    if data.name is not None:
        user.name = data.name
    preferences = dict(user.preferences or {})
    for key in ("language", "theme"):
        if (value := getattr(data, key)) is not None:
            preferences[key] = value
    user.preferences = preferences
    await db.flush()
    return user


async def change_password(db: AsyncSession, ctx: Ctx, current: str, new: str) -> None:
    """Change one's own password; every other session of the user ends."""
    user = await get_user(db, ctx, ctx.user_id)
    if not await verify_password_off_loop(user.password_hash, current):
        raise Invalid("The current password is wrong", field="current_password", code="wrong_password")
    _check_password(new, "new_password")
    user.password_hash = await hash_password_off_loop(new)
    await revoke_sessions(db, user.id, except_session=ctx.session_id)
    await audit.record(db, ctx, "user.password_changed", target_type="user", target_id=user.id)


async def list_roles(db: AsyncSession, ctx: Ctx) -> list[Role]:
    return list(await db.scalars(select(Role).order_by(Role.key.is_(None), Role.name)))


def _check_permissions(permissions: list[str]) -> None:
    if unknown := unknown_permissions(permissions):
        raise Invalid(f"Unknown permissions: {', '.join(unknown)}", field="permissions")


async def _get_role(db: AsyncSession, role_id: uuid.UUID) -> Role:
    role = await db.get(Role, role_id)
    if role is None:
        raise NotFound("Role not found")
    return role


async def _ensure_name_free(
    db: AsyncSession, model: type[Role] | type[UserGroup], name: str, except_id: uuid.UUID | None = None
) -> None:
    """Role and group names are unique in a tenant, ignoring case."""
    query = select(model.id).where(func.lower(model.name) == name.lower())
    if except_id:
        query = query.where(model.id != except_id)
    if await db.scalar(query):
        what = "role" if model is Role else "group"
        raise Conflict(
            f"A {what} named '{name}' already exists",
            code=f"{what}_exists",
            details=[{"field": "name", "message": "already in use"}],
        )


async def create_role(db: AsyncSession, ctx: Ctx, data: RoleCreate) -> Role:
    ctx.require("admin")
    _check_permissions(data.permissions)
    _check_within_own_permissions(ctx, data.permissions)
    await _ensure_name_free(db, Role, data.name)
    role = Role(name=data.name, description=data.description, permissions=sorted(set(data.permissions)))
    db.add(role)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "role.created",
        target_type="role",
        target_id=role.id,
        changes={"name": role.name, "permissions": role.permissions},
    )
    return role


async def update_role(db: AsyncSession, ctx: Ctx, role_id: uuid.UUID, data: RoleUpdate) -> Role:
    ctx.require("admin")
    role = await _get_role(db, role_id)
    if role.predefined:
        raise Invalid("Predefined roles cannot be changed; create a custom role", field="role_id")
    changes = {}
    if data.name is not None and data.name != role.name:
        await _ensure_name_free(db, Role, data.name, except_id=role.id)
        changes["name"] = {"from": role.name, "to": data.name}
        role.name = data.name
    if data.description is not None:
        role.description = data.description
    if data.permissions is not None:
        _check_permissions(data.permissions)
        _check_within_own_permissions(ctx, data.permissions)
        changes["permissions"] = {"from": role.permissions, "to": sorted(set(data.permissions))}
        role.permissions = sorted(set(data.permissions))
    await db.flush()
    await audit.record(db, ctx, "role.updated", target_type="role", target_id=role.id, changes=changes)
    return role


async def delete_role(db: AsyncSession, ctx: Ctx, role_id: uuid.UUID) -> None:
    ctx.require("admin")
    role = await _get_role(db, role_id)
    if role.predefined:
        raise Invalid("Predefined roles cannot be deleted", field="role_id")
    if await db.scalar(
        select(func.count()).select_from(User).where(User.role_id == role.id, User.deleted_at.is_(None))
    ):
        raise Conflict(
            "The role is still assigned to users; give them another role first", code="role_in_use"
        )
    await db.delete(role)
    await audit.record(
        db, ctx, "role.deleted", target_type="role", target_id=role.id, changes={"name": role.name}
    )


async def _get_group(db: AsyncSession, group_id: uuid.UUID) -> UserGroup:
    group = await db.get(UserGroup, group_id)
    if group is None:
        raise NotFound("Group not found")
    return group


async def group_member_ids(db: AsyncSession, group_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    members: dict[uuid.UUID, list[uuid.UUID]] = {group_id: [] for group_id in group_ids}
    rows = await db.execute(
        select(UserGroupMember.group_id, UserGroupMember.user_id).where(
            UserGroupMember.group_id.in_(group_ids)
        )
    )
    for group_id, user_id in rows:
        members[group_id].append(user_id)
    return members


async def list_groups(db: AsyncSession, ctx: Ctx) -> list[UserGroup]:
    return list(await db.scalars(select(UserGroup).order_by(func.lower(UserGroup.name))))


async def get_group(db: AsyncSession, ctx: Ctx, group_id: uuid.UUID) -> UserGroup:
    return await _get_group(db, group_id)


async def create_group(db: AsyncSession, ctx: Ctx, data: GroupCreate) -> UserGroup:
    ctx.require("admin")
    await _ensure_name_free(db, UserGroup, data.name)
    group = UserGroup(name=data.name, description=data.description)
    db.add(group)
    await db.flush()
    await audit.record(
        db, ctx, "group.created", target_type="group", target_id=group.id, changes={"name": group.name}
    )
    return group


async def update_group(db: AsyncSession, ctx: Ctx, group_id: uuid.UUID, data: GroupUpdate) -> UserGroup:
    ctx.require("admin")
    group = await _get_group(db, group_id)
    if data.name is not None and data.name != group.name:
        await _ensure_name_free(db, UserGroup, data.name, except_id=group.id)
        group.name = data.name
    if data.description is not None:
        group.description = data.description
    await db.flush()
    await audit.record(
        db,
        ctx,
        "group.updated",
        target_type="group",
        target_id=group.id,
        changes=data.model_dump(exclude_unset=True),
    )
    return group


async def delete_group(db: AsyncSession, ctx: Ctx, group_id: uuid.UUID) -> None:
    ctx.require("admin")
    group = await _get_group(db, group_id)
    await db.delete(group)
    await audit.record(
        db, ctx, "group.deleted", target_type="group", target_id=group.id, changes={"name": group.name}
    )


async def add_group_member(db: AsyncSession, ctx: Ctx, group_id: uuid.UUID, user_id: uuid.UUID) -> None:
    ctx.require("admin")
    group = await _get_group(db, group_id)
    user = await db.scalar(_users().where(User.id == user_id))
    if user is None:
        raise Invalid("No such user", field="user_id")
    exists = await db.scalar(
        select(UserGroupMember.user_id).where(
            UserGroupMember.group_id == group.id, UserGroupMember.user_id == user.id
        )
    )
    if not exists:
        db.add(UserGroupMember(group_id=group.id, user_id=user.id))
        await db.flush()
        await audit.record(
            db,
            ctx,
            "group.member_added",
            target_type="group",
            target_id=group.id,
            changes={"user_id": str(user.id)},
        )


async def remove_group_member(db: AsyncSession, ctx: Ctx, group_id: uuid.UUID, user_id: uuid.UUID) -> None:
    ctx.require("admin")
    group = await _get_group(db, group_id)
    result = await db.execute(
        delete(UserGroupMember).where(
            UserGroupMember.group_id == group.id, UserGroupMember.user_id == user_id
        )
    )
    if not result.rowcount:
        raise NotFound("That user is not in this group")
    await audit.record(
        db,
        ctx,
        "group.member_removed",
        target_type="group",
        target_id=group.id,
        changes={"user_id": str(user_id)},
    )


async def create_api_key(db: AsyncSession, ctx: Ctx, data: ApiKeyCreate) -> tuple[ApiKey, str]:
    """Create a personal API key; the secret is returned once and stored only as a digest."""
    if ctx.user_id is None or ctx.actor_type != "user":
        raise Forbidden("API keys are created by signed-in users", code="user_required")
    new_key = generate_api_key()
    expires_at = utcnow() + timedelta(days=data.expires_in_days) if data.expires_in_days else None
    key = ApiKey(
        user_id=ctx.user_id,
        name=data.name,
        prefix=new_key.prefix,
        key_hash=new_key.key_hash,
        expires_at=expires_at,
    )
    db.add(key)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "api_key.created",
        target_type="api_key",
        target_id=key.id,
        changes={"name": key.name, "prefix": key.prefix},
    )
    return key, new_key.secret


async def list_api_keys(db: AsyncSession, ctx: Ctx) -> list[ApiKey]:
    return list(
        await db.scalars(
            select(ApiKey).where(ApiKey.user_id == ctx.user_id).order_by(ApiKey.created_at.desc())
        )
    )


async def revoke_api_key(db: AsyncSession, ctx: Ctx, key_id: uuid.UUID) -> ApiKey:
    key = await db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == ctx.user_id))
    if key is None:
        raise NotFound("API key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await db.flush()
        await audit.record(
            db,
            ctx,
            "api_key.revoked",
            target_type="api_key",
            target_id=key.id,
            changes={"prefix": key.prefix},
        )
    return key
