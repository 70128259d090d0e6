"""Start-up and shut-down of everything a process needs: servers, migrations, connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from allting.platform import db, embedded, queue, redis
from allting.platform.db import APP_ROLE, SYSTEM_ROLE, DatabaseUrls
from allting.platform.logging import get_logger
from allting.platform.settings import Settings

log = get_logger(__name__)

# The first pause before trying an unreachable PostgreSQL or Redis again; it doubles up to
# DEPENDENCY_WAIT_MAX_SECONDS.
FIRST_WAIT_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 5.0


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


# Lets row-level-security queries use the full-text GIN index. PostgreSQL evaluates a function that
# is not marked leakproof only after the policy, never inside an index scan, so `tsv @@ query`
# under RLS read every passage of a collection (11 ms per 10,000) instead of the index (about 1 ms).
# ts_match_vq (the `@@` of tsvector and tsquery) returns a boolean and raises no error that depends
# on the row, so evaluating it on rows the policy then discards reveals nothing. Only a superuser
# may mark it; with an external PostgreSQL, operations.md asks the operator to.
SUPERUSER_TUNING = ["ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF"]


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
    await _run_sql(in_database, ["CREATE EXTENSION IF NOT EXISTS vector", *SUPERUSER_TUNING])


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


# Failures that mean "not there yet" (refused, no such host or socket, starting up, full) rather than
# a configuration that waiting cannot fix, such as a wrong password or database name.
_POSTGRES_UNREACHABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
)


async def _postgres_unreachable(dsn: str) -> str | None:
    """Why PostgreSQL takes no connection now, or None when it does."""
    try:
        connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_SECONDS)
    except _POSTGRES_UNREACHABLE as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


async def _redis_unreachable(url: str) -> str | None:
    """Why Redis does not answer now, or None when it does."""
    client = Redis.from_url(
        url, socket_timeout=PROBE_TIMEOUT_SECONDS, socket_connect_timeout=PROBE_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
    except (redis_errors.AuthenticationError, redis_errors.AuthorizationError):
        raise
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


def _redis_address(url: str) -> str:
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


async def wait_for_services(settings: Settings) -> None:
    """Return once the external PostgreSQL and Redis answer, trying again with a growing pause.

    Containers and services of an installation start in any order: a process that exited because
    Redis came up a second after it would be restarted in a loop, with an error that hides the
    cause. So it waits, saying what it waits for and when it tries next. Embedded servers need no
    wait (this process starts them), and errors that waiting cannot fix still fail at once.
    Cancelling the task (SIGTERM, Ctrl-C) ends the wait at once.
    """
    checks: dict[str, tuple[str, Callable[[], Awaitable[str | None]]]] = {}
    if not settings.embedded_postgres:
        owner = _external_urls(settings).owner
        address = make_url(owner).render_as_string(hide_password=True)
        checks["postgres"] = (address, lambda: _postgres_unreachable(_asyncpg_dsn(owner)))
    if not settings.embedded_redis:
        url = settings.redis_url
        checks["redis"] = (_redis_address(url), lambda: _redis_unreachable(url))
    started = asyncio.get_running_loop().time()
    pause = FIRST_WAIT_SECONDS
    while True:
        unreachable = {}
        for name, (address, check) in checks.items():
            if (reason := await check()) is not None:
                unreachable[name] = (address, reason)
        if not unreachable:
            break
        next_try = datetime.now(UTC) + timedelta(seconds=pause)
        for name, (address, reason) in unreachable.items():
            log.warning(
                "runtime.waiting_for_dependency",
                dependency=name,
                address=address,
                error=reason,
                retry_in_seconds=round(pause, 1),
                next_try_at=next_try.isoformat(timespec="seconds"),
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, settings.dependency_wait_max_seconds)
    waited = asyncio.get_running_loop().time() - started
    if waited >= FIRST_WAIT_SECONDS:
        log.info(
            "runtime.dependencies_reachable", dependencies=sorted(checks), waited_seconds=round(waited, 1)
        )


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
    db.init_engines(
        runtime.urls,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )
    redis.init_redis(runtime.redis_url)
    queue.init_queue(runtime.redis_url)
    await queue.get_queue().connect()


async def close_connections() -> None:
    await queue.close_queue()
    await redis.close_redis()
    await db.dispose_engines()


async def stop(runtime: Runtime) -> None:
    await close_connections()
    runtime.stop_services()
