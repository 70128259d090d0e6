"""Start-up and shut-down of everything a process needs: servers, migrations, connections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from allting.platform import db, embedded, queue, redis
from allting.platform.db import APP_ROLE, SYSTEM_ROLE, DatabaseUrls
from allting.platform.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    urls: DatabaseUrls
    redis_url: str
    services: embedded.EmbeddedServices | None

    def stop_services(self) -> None:
        if self.services is not None:
            self.services.stop()


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _external_urls(settings: Settings) -> DatabaseUrls:
    owner = make_url(settings.database_url).set(drivername="postgresql+asyncpg")
    app = owner.set(username=APP_ROLE, password=settings.database_app_password)
    system = owner.set(username=SYSTEM_ROLE, password=settings.database_system_password)
    render = lambda url: url.render_as_string(hide_password=False)  # noqa: E731
    return DatabaseUrls(owner=render(owner), app=render(app), system=render(system))


async def _run_sql(dsn: str, statements: list[str]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _bootstrap_embedded_database(services: embedded.EmbeddedServices) -> None:
    superuser = f"postgresql://postgres@/postgres?host={services.postgres_socket_dir}"
    connection = await asyncpg.connect(superuser)
    try:
        if not await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", embedded.DATABASE_NAME
        ):
            await connection.execute(
                f"CREATE ROLE {embedded.OWNER_ROLE} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS"
            )
            await connection.execute(f"CREATE DATABASE {embedded.DATABASE_NAME} OWNER {embedded.OWNER_ROLE}")
    finally:
        await connection.close()
    in_database = superuser.replace("/postgres?", f"/{embedded.DATABASE_NAME}?")
    await _run_sql(in_database, ["CREATE EXTENSION IF NOT EXISTS vector"])


async def _ensure_roles(owner_dsn: str, settings: Settings, database: str) -> None:
    statements = []
    for role, password in (
        (APP_ROLE, settings.database_app_password),
        (SYSTEM_ROLE, settings.database_system_password),
    ):
        quoted = password.replace("'", "''")
        # Role names are constants and the password is quoted: DDL takes no bind parameters.
        statements.append(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "  # noqa: S608
            f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{quoted}'; "
            f"ELSE ALTER ROLE {role} PASSWORD '{quoted}'; END IF; END $$;"
        )
    statements.append(f'GRANT CONNECT ON DATABASE "{database}" TO {APP_ROLE}, {SYSTEM_ROLE}')
    statements.append(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {SYSTEM_ROLE}")
    await _run_sql(owner_dsn, statements)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    return config


GRANTS = [
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}, {SYSTEM_ROLE}",
    f"REVOKE ALL ON alembic_version FROM {APP_ROLE}",
    f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {SYSTEM_ROLE}",
]


async def migrate(urls: DatabaseUrls) -> None:
    """Apply migrations as the owner, then grant the runtime roles what they need."""
    engine = create_async_engine(urls.owner)
    try:
        async with engine.begin() as connection:

            def upgrade(sync_connection) -> None:
                config = _alembic_config()
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")

            await connection.run_sync(upgrade)
        await _run_sql(_asyncpg_dsn(urls.owner), GRANTS)
    finally:
        await engine.dispose()


async def migration_state(urls: DatabaseUrls) -> tuple[str | None, str | None]:
    """(current revision, head revision)."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    engine = create_async_engine(urls.system)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
    return current, head


async def start(settings: Settings, *, run_migrations: bool = True) -> Runtime:
    """Start embedded servers if no URLs are configured, prepare the database, open connections."""
    services = None
    if settings.embedded_postgres or settings.embedded_redis:
        services = embedded.start(
            settings.data_dir, postgres=settings.embedded_postgres, redis=settings.embedded_redis
        )
    try:
        if settings.embedded_postgres:
            await _bootstrap_embedded_database(services)
            urls = embedded.database_urls(services)
            database = embedded.DATABASE_NAME
        else:
            urls = _external_urls(settings)
            database = make_url(settings.database_url).database
        redis_url = settings.redis_url or embedded.redis_url(services)
        if run_migrations:
            await _ensure_roles(_asyncpg_dsn(urls.owner), settings, database)
            await migrate(urls)
        runtime = Runtime(settings=settings, urls=urls, redis_url=redis_url, services=services)
        await open_connections(runtime)
        return runtime
    except BaseException:
        if services is not None:
            services.stop()
        raise


async def open_connections(runtime: Runtime) -> None:
    settings = runtime.settings
    db.init_engines(runtime.urls, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    redis.init_redis(runtime.redis_url)
    queue.init_queue(runtime.redis_url)
    await queue.get_queue().connect()


async def stop(runtime: Runtime) -> None:
    await queue.close_queue()
    await redis.close_redis()
    await db.dispose_engines()
    runtime.stop_services()
