"""The row-level security backstop, tested in the database as the application's own role.

Whatever the application code does, PostgreSQL must not let the application role read or write
another tenant's rows: with no tenant set it sees nothing, with a tenant set it sees only that
tenant's rows and cannot write a row for another, and the role has no way around the policies.
"""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest
from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.exc import DBAPIError

from allting.jobs.models import Job
from allting.platform.db import (
    APP_ROLE,
    DriverStatement,
    app_engine,
    new_session,
    system_transaction,
    transaction,
)
from allting.platform.tenancy import CrossTenantWrite, set_tenant, tenant_tables
from allting.users.models import User, UserGroup

PASSWORD = "a-long-enough-password"
# Tables the fixture below fills for both tenants; every other tenant table is checked whenever
# some test has left rows in it, and all of them by their policies.
FILLED = {
    "tenants",
    "users",
    "roles",
    "user_groups",
    "user_group_members",
    "api_keys",
    "auth_sessions",
    "jobs",
    "audit_logs",
}


async def _fill_tenant(app, sysadmin: httpx.AsyncClient) -> uuid.UUID:
    tenant = (
        await sysadmin.post("/api/v1/sysadmin/tenants/", json={"name": f"RLS {uuid.uuid4().hex}"})
    ).json()
    email = f"owner@{tenant['slug']}.example"
    user = await sysadmin.post(
        "/api/v1/sysadmin/users/",
        json={"email": email, "password": PASSWORD, "tenant_id": tenant["id"], "role": "owner"},
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        token = (
            await client.post("/api/v1/users/login/token/", data={"username": email, "password": PASSWORD})
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        group = (await client.post("/api/v1/groups/", json={"name": "G"})).json()
        await client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": user.json()["id"]})
        await client.post("/api/v1/users/me/api-keys/", json={"name": "k"})
    async with transaction() as db:
        await set_tenant(db, uuid.UUID(tenant["id"]))
        db.add(Job(user_id=uuid.UUID(user.json()["id"]), task="test.noop", payload={}))
    return uuid.UUID(tenant["id"])


@pytest.fixture(scope="module")
async def tenants(app, settings):
    headers = {"X-API-Key": settings.sysadmin_api_key}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    ) as sysadmin:
        return await _fill_tenant(app, sysadmin), await _fill_tenant(app, sysadmin)


def _all_tables() -> list[str]:
    return sorted({*tenant_tables(), "tenants"})


def _key(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


async def _system_count(table: str, tenant_id: uuid.UUID | None = None) -> int:
    async with system_transaction() as db:
        if tenant_id is None:
            return await db.scalar(text(f"SELECT count(*) FROM {table}"))
        return await db.scalar(
            text(f"SELECT count(*) FROM {table} WHERE {_key(table)} = :t"),
            {"t": tenant_id},
        )


def _refused_by_rls(error: DBAPIError) -> bool:
    cause = error.orig.__cause__ if error.orig is not None else None
    return isinstance(cause, asyncpg.InsufficientPrivilegeError) and "row-level security" in str(cause)


# --- reading ----------------------------------------------------------------------------------


async def test_the_fixture_filled_every_listed_table_for_both_tenants(tenants):
    for tenant_id in tenants:
        for table in FILLED:
            assert await _system_count(table, tenant_id) > 0, table
    assert set(_all_tables()) >= FILLED


async def test_with_no_tenant_set_every_tenant_table_is_empty(tenants):
    checked = []
    async with new_session() as db:  # the application's role; the session sets an empty tenant
        for table in _all_tables():
            if await _system_count(table):
                assert await db.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table
                checked.append(table)
    assert set(checked) >= FILLED


async def test_a_fresh_connection_that_never_set_a_tenant_sees_nothing(runtime, tenants):
    dsn = runtime.urls.app.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT current_setting('app.tenant_id', true)") is None
        for table in _all_tables():
            assert await connection.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await connection.close()


async def test_with_a_tenant_set_only_its_rows_are_visible(tenants):
    a, _ = tenants
    async with new_session() as db:
        await set_tenant(db, a)
        for table in _all_tables():
            key = _key(table)
            visible_a = await db.scalar(text(f"SELECT count(*) FROM {table} WHERE {key} = :t"), {"t": a})
            others = await db.scalar(text(f"SELECT count(*) FROM {table} WHERE {key} <> :t"), {"t": a})
            assert visible_a == await _system_count(table, a), table
            assert others == 0, table


async def test_the_tenant_lasts_one_transaction_not_the_connection(tenants):
    a, _ = tenants
    async with app_engine().connect() as connection:
        async with connection.begin():
            await connection.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(a)})
            assert await connection.scalar(text("SELECT count(*) FROM users")) > 0
        async with connection.begin():
            assert await connection.scalar(text("SELECT count(*) FROM users")) == 0
            assert await connection.scalar(text("SELECT current_setting('app.tenant_id', true)")) == ""


async def test_the_tenant_goes_with_begin_in_the_same_round_trip(tenants, monkeypatch):
    a, _ = tenants
    sent = []
    execute = asyncpg.Connection.execute

    async def recording(self, query, *args, **kwargs):
        sent.append(query)
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "execute", recording)
    async with transaction() as db:
        await set_tenant(db, a)
        assert await db.scalar(text("SELECT current_setting('app.tenant_id', true)")) == str(a)
        assert await db.scalar(text("SELECT count(*) FROM users")) > 0
    (begin,) = [query for query in sent if query.startswith("BEGIN")]
    assert f"set_config('app.tenant_id', '{a}', true)" in begin
    assert not any("set_config" in query for query in sent if not query.startswith("BEGIN"))


async def test_a_tenant_set_for_a_transaction_that_never_ran_is_not_left_on_the_connection(tenants):
    a, _ = tenants
    async with new_session() as db:
        await set_tenant(db, a)
        await db.connection()  # the session begins, but no statement reaches the database
    for _ in range(5):  # whichever pooled connection comes next
        async with app_engine().connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM users")) == 0


_USERS_OF = DriverStatement(
    select(func.count()).select_from(User).where(User.tenant_id == bindparam("tenant_id"))
)
_NEW_GROUP = DriverStatement(
    insert(UserGroup.__table__).values(
        id=bindparam("id"),
        tenant_id=bindparam("tenant_id"),
        name=bindparam("name"),
        created_at=func.now(),
        updated_at=func.now(),
    )
)


async def test_driver_statements_see_only_the_sessions_tenant(tenants):
    a, b = tenants
    async with transaction() as db:
        await set_tenant(db, a)
        assert (await _USERS_OF.fetchrow(db, tenant_id=a))[0] == await _system_count("users", a) > 0
        assert (await _USERS_OF.fetchrow(db, tenant_id=b))[0] == 0


async def test_driver_statements_belong_to_the_sessions_transaction(tenants):
    a, _ = tenants
    group_id = uuid.uuid4()
    async with new_session() as db:
        await set_tenant(db, a)
        await _NEW_GROUP.execute(db, id=group_id, tenant_id=a, name="Rolled back")
        assert await db.get(UserGroup, group_id) is not None  # the ORM sees it: same transaction
        await db.rollback()
    async with system_transaction() as db:
        assert await db.get(UserGroup, group_id) is None


async def test_a_driver_statement_cannot_write_for_another_tenant(tenants):
    a, b = tenants
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with transaction() as db:
            await set_tenant(db, a)
            await _NEW_GROUP.execute(db, id=uuid.uuid4(), tenant_id=b, name="Elsewhere")


async def test_a_driver_statement_takes_values_written_into_it_and_requires_the_others(tenants):
    a, _ = tenants
    active_users = DriverStatement(
        select(func.count())
        .select_from(User)
        .where(User.state == "active", User.tenant_id == bindparam("tenant_id"))
    )
    async with transaction() as db:
        await set_tenant(db, a)
        assert (await active_users.fetchrow(db, tenant_id=a))[0] == await _system_count("users", a)
        with pytest.raises(KeyError, match="tenant_id"):
            await active_users.fetchrow(db)


def test_a_driver_statement_refuses_columns_left_to_python_side_defaults():
    with pytest.raises(ValueError, match="created_at"):
        DriverStatement(insert(UserGroup.__table__).values(id=bindparam("id"), name=bindparam("name")))


# --- writing ----------------------------------------------------------------------------------


async def test_inserting_a_row_for_another_tenant_is_refused_by_the_database(tenants):
    a, b = tenants
    statements = {
        "user_groups": "INSERT INTO user_groups (id, tenant_id, name, created_at, updated_at) "
        "VALUES (gen_random_uuid(), :b, 'planted', now(), now())",
        "roles": "INSERT INTO roles (id, tenant_id, name, permissions, created_at, updated_at) "
        "VALUES (gen_random_uuid(), :b, 'planted', ARRAY['admin'], now(), now())",
        "audit_logs": "INSERT INTO audit_logs (id, tenant_id, actor_type, action, changes, outcome, "
        "created_at, updated_at) "
        "VALUES (gen_random_uuid(), :b, 'user', 'planted', '{}', 'success', now(), now())",
        "tenants": "INSERT INTO tenants (id, name, slug, state, quota_limit, settings, "
        "created_at, updated_at) VALUES (:b, 'planted', 'planted', 'active', 0, '{}', now(), now())",
    }
    for table, statement in statements.items():
        async with new_session() as db:
            await set_tenant(db, a)
            with pytest.raises(DBAPIError) as refused:
                await db.execute(text(statement), {"b": uuid.uuid4() if table == "tenants" else b})
            assert _refused_by_rls(refused.value), (table, refused.value)
    assert await _system_count("user_groups", b) == 1


async def test_every_tenant_table_refuses_a_copy_of_a_row_made_out_to_another_tenant(tenants):
    """A generic INSERT for each table: one of A's rows, copied with B's tenant id."""
    a, b = tenants
    checked = []
    for table in _all_tables():
        if table == "tenants" or not await _system_count(table, a):
            continue
        async with new_session() as db:
            await set_tenant(db, a)
            await db.execute(
                text(f"CREATE TEMP TABLE planted ON COMMIT DROP AS SELECT * FROM {table} LIMIT 1")
            )
            await db.execute(text("UPDATE planted SET tenant_id = :b"), {"b": b})
            columns = ", ".join(
                await db.scalars(
                    text(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = :t AND is_generated = 'NEVER' ORDER BY ordinal_position"
                    ),
                    {"t": table},
                )
            )
            with pytest.raises(DBAPIError) as refused:
                await db.execute(text(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM planted"))
            assert _refused_by_rls(refused.value), (table, refused.value)
            checked.append(table)
    assert set(checked) >= FILLED - {"tenants"}


async def test_an_update_cannot_move_a_row_to_another_tenant(tenants):
    a, b = tenants
    checked = []
    for table in _all_tables():
        if not await _system_count(table, a):
            continue
        key = _key(table)
        async with new_session() as db:
            await set_tenant(db, a)
            with pytest.raises(DBAPIError) as refused:
                await db.execute(text(f"UPDATE {table} SET {key} = :b WHERE {key} = :a"), {"a": a, "b": b})
            assert _refused_by_rls(refused.value), (table, refused.value)
            checked.append(table)
    assert set(checked) >= FILLED
    assert await _system_count("users", a) > 0


async def test_another_tenants_rows_cannot_be_updated_or_deleted(tenants):
    a, b = tenants
    before = {table: await _system_count(table, b) for table in FILLED}
    async with new_session() as db:
        await set_tenant(db, a)
        for table in FILLED:
            key = _key(table)
            deleted = await db.execute(text(f"DELETE FROM {table} WHERE {key} = :b"), {"b": b})
            assert deleted.rowcount == 0, table
        renamed = await db.execute(
            text("UPDATE users SET name = 'taken over' WHERE tenant_id = :b"), {"b": b}
        )
        assert renamed.rowcount == 0
        await db.commit()
    assert {table: await _system_count(table, b) for table in FILLED} == before


async def test_the_orm_refuses_an_object_of_another_tenant_before_the_database_does(tenants):
    a, b = tenants
    async with new_session() as db:
        await set_tenant(db, a)
        db.add(UserGroup(tenant_id=b, name="planted"))
        with pytest.raises(CrossTenantWrite):
            await db.flush()


# --- no way around the policies ---------------------------------------------------------------


async def test_the_application_role_is_no_superuser_bypasses_nothing_and_owns_nothing(tenants):
    async with new_session() as db:
        assert await db.scalar(text("SELECT current_user")) == APP_ROLE
        role = (
            await db.execute(
                text(
                    "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
        assert tuple(role) == (False, False, False, False)
        owned = await db.scalars(
            text(
                "SELECT relname FROM pg_class WHERE relowner = "
                "(SELECT oid FROM pg_roles WHERE rolname = current_user)"
            )
        )
        assert list(owned) == []
        schemas = await db.scalars(
            text(
                "SELECT nspname FROM pg_namespace "
                "WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
            )
        )
        assert list(schemas) == []
        memberships = await db.scalars(
            text(
                "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
            )
        )
        assert list(memberships) == []


async def test_every_tenant_table_forces_row_level_security_with_read_and_write_policies(tenants):
    async with new_session() as db:
        for table in _all_tables():
            enabled, forced = (
                await db.execute(
                    text("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = :t"),
                    {"t": table},
                )
            ).one()
            assert (enabled, forced) == (True, True), table
            policies = (
                await db.execute(
                    text(
                        "SELECT qual, with_check FROM pg_policies WHERE tablename = :t AND :role = ANY(roles)"
                    ),
                    {"t": table, "role": APP_ROLE},
                )
            ).all()
            assert len(policies) == 1, (table, policies)
            qual, with_check = policies[0]
            for expression in (qual, with_check):
                assert expression and "current_setting('app.tenant_id'" in expression, (table, expression)


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE users CASCADE",
        "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE users NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON users",
        "SET ROLE allting_system",
        "CREATE TABLE sneaky (id int)",
    ],
)
async def test_the_application_role_cannot_switch_the_policies_off(tenants, statement):
    async with new_session() as db:
        with pytest.raises(DBAPIError) as refused:
            await db.execute(text(statement))
        assert isinstance(refused.value.orig.__cause__, asyncpg.InsufficientPrivilegeError), refused.value


async def test_turning_row_security_off_makes_queries_fail_not_leak(tenants):
    async with new_session() as db:
        await db.execute(text("SET LOCAL row_security = off"))
        with pytest.raises(DBAPIError) as refused:
            await db.execute(text("SELECT count(*) FROM users"))
        assert "row-level security" in str(refused.value)
