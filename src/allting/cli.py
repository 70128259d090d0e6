"""The `allting` command: serve, worker, migrate, doctor and scripted administration."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

from allting.platform.settings import ConfigError, get_settings

app = typer.Typer(
    help="Allting: AI assistants for the public sector.", no_args_is_help=True, add_completion=False
)
tenant_app = typer.Typer(help="Tenants (organisations).", no_args_is_help=True)
user_app = typer.Typer(help="Users of a tenant.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")


def _settings():
    try:
        settings = get_settings()
    except ConfigError as exc:
        typer.secho(f"Configuration error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    from allting.platform.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run background workers in this process")] = True,
) -> None:
    """Start the web app and API (and a worker), with embedded PostgreSQL and Redis unless URLs are set."""
    import uvicorn

    from allting.main import create_app

    settings = _settings()
    if settings.embedded:
        typer.echo(f"Data directory: {settings.data_dir}", err=True)
    uvicorn.run(
        create_app(in_process_worker=worker),
        host=host,
        port=port,
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


@app.command("worker")
def run_worker() -> None:
    """Run background workers only (against the same PostgreSQL and Redis as the API)."""
    from allting.platform import runtime
    from allting.worker import build_worker

    settings = _settings()

    async def main() -> None:
        active = await runtime.start(settings)
        try:
            await build_worker(in_process=False).start()
        finally:
            await runtime.stop(active)

    asyncio.run(main())


@app.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    from allting.platform import runtime

    settings = _settings()

    async def main() -> None:
        active = await runtime.start(settings)
        await runtime.stop(active)

    asyncio.run(main())
    typer.echo("Migrations are at head.")


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Check every component; exits non-zero when something is wrong."""
    from allting.doctor import run_checks

    settings = _settings()
    checks = asyncio.run(run_checks(settings))
    if as_json:
        typer.echo(json.dumps([check.as_dict() for check in checks], indent=2))
    else:
        for check in checks:
            mark = (
                typer.style("ok  ", fg=typer.colors.GREEN)
                if check.ok
                else typer.style("FAIL", fg=typer.colors.RED)
            )
            typer.echo(f"{mark} {check.name}: {check.detail}")
    raise typer.Exit(0 if all(check.ok for check in checks) else 1)


def _run_admin(action):
    from allting.platform import runtime

    settings = _settings()

    async def main():
        active = await runtime.start(settings)
        try:
            return await action()
        finally:
            await runtime.stop(active)

    return asyncio.run(main())


@tenant_app.command("create")
def tenant_create(
    name: str,
    slug: Annotated[str | None, typer.Option(help="URL name")] = None,
    display_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a tenant with its predefined roles."""
    from allting.platform.db import system_transaction
    from allting.platform.errors import AppError
    from allting.sysadmin import service as sysadmin_service
    from allting.tenants.schemas import TenantCreate

    async def action():
        async with system_transaction() as db:
            tenant = await sysadmin_service.create_tenant(
                db,
                TenantCreate(name=name, slug=slug, display_name=display_name),
                client_address="cli",
                correlation_id=None,
            )
            return {"id": str(tenant.id), "name": tenant.name, "slug": tenant.slug}

    try:
        typer.echo(json.dumps(_run_admin(action)))
    except AppError as exc:
        typer.secho(f"Error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


@user_app.command("create")
def user_create(
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    email: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option(help="owner, admin or member")] = "member",
    name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a user; the password is read from stdin if piped, else generated and printed once."""
    from pydantic import ValidationError

    from allting.platform.db import system_transaction
    from allting.platform.errors import AppError
    from allting.sysadmin import service as sysadmin_service
    from allting.tenants import service as tenants_service
    from allting.users import service as users_service
    from allting.users.schemas import UserCreate

    password = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read().rstrip("\n") or None

    async def action():
        async with system_transaction() as db:
            found = await tenants_service.get_tenant_by_slug(db, tenant)
            await sysadmin_service.enter_tenant(db, found.id)
            ctx = sysadmin_service.sysadmin_ctx(found.id, client_address="cli", correlation_id=None)
            user, generated = await users_service.create_user(
                db, ctx, UserCreate(email=email, name=name, password=password, role=role)
            )
            return {
                "id": str(user.id),
                "email": user.email,
                "role": user.role.name,
                **({"password": generated} if generated else {}),
            }

    try:
        typer.echo(json.dumps(_run_admin(action)))
    except AppError as exc:
        typer.secho(f"Error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    except ValidationError as exc:
        typer.secho(
            f"Error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1) from exc
