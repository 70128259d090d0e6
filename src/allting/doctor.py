"""`allting doctor`: one check per component, each with a verdict and a detail."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import text

from allting.platform import runtime
from allting.platform.db import APP_ROLE, app_engine
from allting.platform.redis import get_redis
from allting.platform.settings import SECRET_NAMES, ConfigError, Settings, check_secret_strength

MIN_POSTGRES = 16
MIN_PGVECTOR = (0, 8)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


async def _database_checks(active: runtime.Runtime) -> list[Check]:
    import allting.all_models  # noqa: F401  (tenant_tables reads every model's metadata)
    from allting.platform.tenancy import tenant_tables

    checks = []
    async with app_engine().connect() as connection:
        version = await connection.scalar(text("SHOW server_version_num"))
        major = int(version) // 10000
        checks.append(Check("postgres", major >= MIN_POSTGRES, f"PostgreSQL {major} (need {MIN_POSTGRES}+)"))
        vector = await connection.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
        parsed = tuple(int(part) for part in (vector or "0.0").split(".")[:2])
        checks.append(Check("pgvector", parsed >= MIN_PGVECTOR, f"pgvector {vector or 'missing'}"))
        role = (
            await connection.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            )
        ).one()
        owned = await connection.scalar(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user")
        )
        checks.append(
            Check(
                "database role",
                not role.rolsuper and not role.rolbypassrls and owned == 0,
                f"{APP_ROLE}: superuser={role.rolsuper}, bypassrls={role.rolbypassrls}, owns {owned} tables",
            )
        )
        rows = (
            await connection.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
                )
            )
        ).all()
    security = {row.relname: row.relrowsecurity and row.relforcerowsecurity for row in rows}
    expected = [*tenant_tables(), "tenants"]
    missing = [name for name in expected if not security.get(name)]
    checks.append(
        Check(
            "row-level security",
            not missing,
            f"enabled and forced on {len(expected) - len(missing)}/{len(expected)} tenant tables"
            + (f"; missing: {', '.join(missing)}" if missing else ""),
        )
    )
    current, head = await runtime.migration_state(active.urls)
    checks.append(Check("migrations", current == head, f"at {current}, head is {head}"))
    return checks


async def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    for name in SECRET_NAMES:
        try:
            check_secret_strength(name, getattr(settings, name.lower()))
            checks.append(Check(f"secret {name}", True, "present and strong"))
        except ConfigError as exc:
            checks.append(Check(f"secret {name}", False, str(exc)))
    try:
        active = await runtime.start(settings, run_migrations=False)
    except Exception as exc:
        checks.append(Check("services", False, f"cannot start or reach PostgreSQL/Redis: {exc}"))
        return checks
    try:
        checks.extend(await _database_checks(active))
        info = await get_redis().info("server")
        checks.append(Check("redis", True, f"Redis {info.get('redis_version')}"))
        from allting.worker import workers_alive

        alive = await workers_alive()
        checks.append(
            Check(
                "workers",
                alive > 0,
                f"{alive} worker(s) alive"
                if alive
                else "no worker is running: start `allting serve` or `allting worker`",
            )
        )
    finally:
        await runtime.stop(active)
    return checks
