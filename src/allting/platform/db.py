"""Database engines, the declarative base and the per-request transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends
from sqlalchemy import DateTime, Executable, MetaData, bindparam, event, exc, func
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

APP_ROLE = "allting_app"
SYSTEM_ROLE = "allting_system"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Entity:
    """Primary key and timestamps shared by every table."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


@dataclass
class DatabaseUrls:
    owner: str
    app: str
    system: str


class _Engines:
    app: AsyncEngine | None = None
    system: AsyncEngine | None = None
    app_sessions: async_sessionmaker[AsyncSession] | None = None
    system_sessions: async_sessionmaker[AsyncSession] | None = None


_engines = _Engines()


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """A pooled connection whose socket has closed (database restarted) is replaced on checkout.

    This replaces `pool_pre_ping`, which costs three round trips per checkout on asyncpg (begin,
    `;`, rollback) — two checkouts per question. A closed socket is what a restart leaves behind;
    any other broken connection is invalidated by SQLAlchemy on its first error, and connections
    are recycled every half hour.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _check(dbapi_connection, _record, _proxy) -> None:
        raw = getattr(dbapi_connection, "_connection", None)
        if raw is not None and raw.is_closed():
            raise exc.DisconnectionError("connection closed")


class SettingsOnBeginConnection(asyncpg.Connection):
    """An asyncpg connection that can apply transaction-local settings together with its next BEGIN.

    `set_config(name, value, true)` after BEGIN is its own round trip, and every transaction of
    the application role needs one (the tenant, see platform/tenancy.py). Sent in the same simple
    query as BEGIN it costs nothing extra: one round trip per transaction instead of two. The
    settings are used once, by the next BEGIN, and dropped when the connection goes back to the
    pool, so they never outlive the transaction they were set for.
    """

    _settings_on_begin: dict[str, str] | None = None

    def set_on_next_begin(self, settings: dict[str, str] | None) -> None:
        self._settings_on_begin = settings

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        if self._settings_on_begin and not args and query.startswith("BEGIN"):
            settings, self._settings_on_begin = self._settings_on_begin, None
            query += "".join(
                f" SELECT set_config({_literal(name)}, {_literal(value)}, true);"
                for name, value in settings.items()
            )
        return await super().execute(query, *args, timeout=timeout)


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported PostgreSQL)."""
    if "\x00" in value:
        raise ValueError("a setting may not contain NUL")
    return "'" + value.replace("'", "''") + "'"


def driver_connection(connection: Any) -> Any:
    """The asyncpg connection under a SQLAlchemy (sync-facing) Connection."""
    return connection.connection.driver_connection


async def transaction_driver_connection(db: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection of the session's transaction, its BEGIN sent (with the tenant, see
    platform/tenancy.py), so statements run on it belong to the same transaction."""
    connection = await db.connection()
    adapted = connection.sync_connection.connection.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement it runs itself.
    if adapted._transaction is None:
        await adapted._start_transaction()
    return adapted.driver_connection


_ASYNCPG_DIALECT = asyncpg_dialect()


def column_parameters(table: Any, names: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Bound parameters for the named columns of a table, typed as the columns, named `prefix` +
    the column's name: the values of a statement built once and run many times."""
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in names}


class DriverStatement:
    """A Core statement compiled once, run on the asyncpg connection of a session's transaction.

    For the few statements every question runs: SQLAlchemy's work per execution (cache key,
    parameter and result processing, ORM loading) costs several times their round trip to the
    database. Rows come back as asyncpg records, read by column name. Row-level security applies
    as to any statement of the transaction; the ORM's tenant criteria do not, so a statement that
    wants an index on tenant_id says so itself."""

    def __init__(self, statement: Executable) -> None:
        compiled = statement.compile(dialect=_ASYNCPG_DIALECT)
        defaulted = [column.name for column in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        if defaulted:
            raise ValueError(
                f"Python-side defaults are not applied on the driver; give values for {defaulted}"
            )
        self.sql = compiled.string
        self._parameters = [
            (name, compiled.binds[name].type.dialect_impl(_ASYNCPG_DIALECT).bind_processor(_ASYNCPG_DIALECT))
            for name in compiled.positiontup or ()
        ]
        # Values written into the statement (`kind == "completion"`) become parameters too.
        self._fixed = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}

    def _arguments(self, values: dict[str, Any]) -> list[Any]:
        arguments = []
        for name, process in self._parameters:
            value = values[name] if name in values else self._fixed[name]
            arguments.append(value if process is None else process(value))
        return arguments

    async def fetch(self, db: AsyncSession, **values: Any) -> list[asyncpg.Record]:
        connection = await transaction_driver_connection(db)
        return await connection.fetch(self.sql, *self._arguments(values))

    async def fetchrow(self, db: AsyncSession, **values: Any) -> asyncpg.Record | None:
        connection = await transaction_driver_connection(db)
        return await connection.fetchrow(self.sql, *self._arguments(values))

    async def execute(self, db: AsyncSession, **values: Any) -> None:
        connection = await transaction_driver_connection(db)
        await connection.execute(self.sql, *self._arguments(values))


def init_engines(urls: DatabaseUrls, *, pool_size: int, max_overflow: int, pool_timeout: float) -> None:
    """Create the application and system engines; the owner URL is only used by migrations."""
    _engines.app = create_async_engine(
        urls.app,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args={"connection_class": SettingsOnBeginConnection},
    )
    _drop_closed_connections(_engines.app)

    @event.listens_for(_engines.app.sync_engine, "checkin")
    def _forget_settings(dbapi_connection, _record) -> None:
        raw = getattr(dbapi_connection, "_connection", None)
        if isinstance(raw, SettingsOnBeginConnection):
            raw.set_on_next_begin(None)

    _engines.system = create_async_engine(urls.system, pool_size=2, max_overflow=4, pool_pre_ping=True)
    _engines.app_sessions = async_sessionmaker(_engines.app, expire_on_commit=False)
    _engines.system_sessions = async_sessionmaker(_engines.system, expire_on_commit=False)


async def dispose_engines() -> None:
    for engine in (_engines.app, _engines.system):
        if engine is not None:
            await engine.dispose()
    _engines.app = _engines.system = None
    _engines.app_sessions = _engines.system_sessions = None


def app_engine() -> AsyncEngine:
    assert _engines.app is not None, "database engines are not initialised"
    return _engines.app


def new_session() -> AsyncSession:
    """A session as the application role: it sees only the tenant set on it."""
    assert _engines.app_sessions is not None, "database engines are not initialised"
    return _engines.app_sessions()


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncSession]:
    """One unit of work as the application role: commit on success, roll back on error."""
    from allting.platform import queue as jobs_queue

    async with new_session() as db:
        try:
            yield db
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
    await jobs_queue.send_after_commit(db)


@asynccontextmanager
async def system_transaction() -> AsyncIterator[AsyncSession]:
    """A unit of work across tenants, as the system role.

    Only for what happens before a tenant is known (sign-in, API-key lookup), the sysadmin API
    and scheduled maintenance. Every caller is listed by grepping for this name.
    """
    from allting.platform import queue as jobs_queue

    assert _engines.system_sessions is not None, "database engines are not initialised"
    async with _engines.system_sessions() as db:
        db.info["system"] = True
        try:
            yield db
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
    await jobs_queue.send_after_commit(db)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with transaction() as db:
        yield db


DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]
