"""The migrations and the ORM models describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import allting.all_models
from allting.platform.tenancy import tenant_tables


async def test_migrations_and_models_agree(runtime):
    engine = create_async_engine(runtime.urls.owner)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync), allting.all_models.Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_every_tenant_table_is_registered(runtime):
    """A model missing from allting.all_models would be invisible to doctor's and the tests' RLS checks."""
    engine = create_async_engine(runtime.urls.owner)
    try:
        async with engine.connect() as connection:
            rows = await connection.exec_driver_sql(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND column_name = 'tenant_id'"
            )
            in_database = sorted({row[0] for row in rows})
    finally:
        await engine.dispose()
    assert in_database == tenant_tables()
