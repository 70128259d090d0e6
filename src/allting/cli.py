"""The `allting` command: serve, worker, migrate, doctor and scripted administration."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Annotated

import typer

from allting.platform.settings import ConfigError, get_settings

app = typer.Typer(
    help="Allting: AI assistants for the public sector.", no_args_is_help=True, add_completion=False
)
tenant_app = typer.Typer(help="Tenants (organisations).", no_args_is_help=True)
user_app = typer.Typer(help="Users of a tenant.", no_args_is_help=True)
provider_app = typer.Typer(help="AI provider accounts of a tenant.", no_args_is_help=True)
model_app = typer.Typer(help="The AI model catalogue of a tenant.", no_args_is_help=True)
secrets_app = typer.Typer(help="Stored secrets.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(provider_app, name="provider")
app.add_typer(model_app, name="model")
app.add_typer(secrets_app, name="secrets")


def _settings():
    try:
        settings = get_settings()
    except ConfigError as exc:
        typer.secho(f"Configuration error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    from allting.platform.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


def _wait_for_services(settings) -> bool:
    """Wait until an external PostgreSQL and Redis answer; False when SIGTERM or Ctrl-C came first.

    Before the process starts its real work, a stop request during the wait needs no clean-up:
    it cancels the wait and the command ends with success, as a stop asked for should.
    """
    from allting.platform import runtime

    async def wait() -> bool:
        loop = asyncio.get_running_loop()
        waiting = asyncio.current_task()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, waiting.cancel)
        try:
            await runtime.wait_for_services(settings)
        except asyncio.CancelledError:
            return False
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return True

    if asyncio.run(wait()):
        return True
    typer.echo("Stopped while waiting for PostgreSQL and Redis.", err=True)
    return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run background workers in this process")] = True,
    processes: Annotated[
        int, typer.Option(min=1, help="API processes sharing the port; one per CPU core uses them all")
    ] = 1,
) -> None:
    """Start the web app and API (and a worker), with embedded PostgreSQL and Redis unless URLs are set."""
    import uvicorn

    from allting.main import create_app

    settings = _settings()
    if settings.embedded:
        typer.echo(f"Data directory: {settings.data_dir}", err=True)
    if not _wait_for_services(settings):
        return
    server_options = {
        "host": host,
        "port": port,
        "log_config": None,
        "proxy_headers": False,
        "timeout_graceful_shutdown": 10,
    }
    if processes == 1:
        uvicorn.run(create_app(in_process_worker=worker), **server_options)
        return
    _serve_processes(settings, processes, worker, server_options)


def _serve_processes(settings, processes: int, worker: bool, server_options: dict) -> None:
    """Start the embedded servers and prepare the database here, once; then let uvicorn run the
    API in `processes` processes that share the port, and stop the servers after they have ended."""
    import os

    import uvicorn

    from allting.main import IN_PROCESS_WORKER_VARIABLE, first_run
    from allting.platform import runtime

    async def prepare() -> runtime.Runtime:
        active = await runtime.start(settings)
        try:
            await first_run(settings)
        except BaseException:
            await runtime.stop(active)
            raise
        await runtime.close_connections()
        return active

    prepared = asyncio.run(prepare())
    os.environ[IN_PROCESS_WORKER_VARIABLE] = "1" if worker else "0"
    try:
        uvicorn.run("allting.main:create_served_app", factory=True, workers=processes, **server_options)
    finally:
        prepared.stop_services()


@app.command("worker")
def run_worker() -> None:
    """Run background workers only (against the same PostgreSQL and Redis as the API)."""
    from allting.ai import gateway
    from allting.platform import runtime
    from allting.worker import build_worker

    settings = _settings()
    if not _wait_for_services(settings):
        return

    async def main() -> None:
        active = await runtime.start(settings)
        try:
            await build_worker(in_process=False).start()
        finally:
            await gateway.close_clients()
            await runtime.stop(active)

    asyncio.run(main())


@app.command()
def migrate() -> None:
    """Apply database migrations (and create the first tenant on an empty installation), then exit."""
    from allting.main import first_run
    from allting.platform import runtime

    settings = _settings()

    async def main() -> None:
        active = await runtime.start(settings)
        try:
            await first_run(settings)
        finally:
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
    from allting.main import first_run
    from allting.platform import runtime

    settings = _settings()

    async def main():
        active = await runtime.start(settings)
        try:
            await first_run(settings)
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


def _in_tenant(slug: str, action):
    """Run `action(db, ctx)` as the sysadmin inside one tenant, printing its result as JSON."""
    from pydantic import ValidationError

    from allting.platform.db import system_transaction
    from allting.platform.errors import AppError
    from allting.sysadmin import service as sysadmin_service
    from allting.tenants import service as tenants_service

    async def run():
        async with system_transaction() as db:
            tenant = await tenants_service.get_tenant_by_slug(db, slug)
            await sysadmin_service.enter_tenant(db, tenant.id)
            ctx = sysadmin_service.sysadmin_ctx(tenant.id, client_address="cli", correlation_id=None)
            return await action(db, ctx)

    try:
        typer.echo(json.dumps(_run_admin(run)))
    except AppError as exc:
        typer.secho(f"Error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        typer.secho(
            f"Error: {'.'.join(map(str, error['loc']))}: {error['msg']}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1) from exc


@provider_app.command("add")
def provider_add(
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    provider_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="openai, azure, anthropic, mistral, openai_compatible, vllm, berget, ollama, llamacpp",
        ),
    ],
    name: Annotated[str, typer.Option(help="Account name, unique in the tenant")],
    endpoint: Annotated[str | None, typer.Option(help="Base URL (self-hosted and Azure)")] = None,
    api_version: Annotated[str | None, typer.Option(help="Azure API version")] = None,
    api_key_stdin: Annotated[
        bool, typer.Option("--api-key-stdin", help="Read the API key from stdin")
    ] = False,
) -> None:
    """Add a provider account; the key is read from stdin so it never appears in shell history."""
    from allting.ai import service as ai_service
    from allting.ai.schemas import ProviderCreate

    api_key = sys.stdin.read().strip() or None if api_key_stdin else None

    async def action(db, ctx):
        provider = await ai_service.create_provider(
            db,
            ctx,
            ProviderCreate(
                name=name,
                provider_type=provider_type,
                endpoint=endpoint,
                api_version=api_version,
                api_key=api_key,
            ),
        )
        return {
            "id": str(provider.id),
            "name": provider.name,
            "provider_type": provider.provider_type,
            "masked_key": ai_service.masked_key(provider),
        }

    _in_tenant(tenant, action)


@model_app.command("add")
def model_add(
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    provider: Annotated[str, typer.Option(help="Provider account name")],
    kind: Annotated[str, typer.Option(help="completion, embedding or transcription")],
    name: Annotated[str, typer.Option(help="The provider's model name")],
    display_name: Annotated[str | None, typer.Option()] = None,
    dimensions: Annotated[int | None, typer.Option(help="Embedding dimensions")] = None,
    context_window: Annotated[int | None, typer.Option()] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the default of its kind")] = False,
) -> None:
    """Add an enabled model to the tenant's catalogue."""
    from sqlalchemy import select

    from allting.ai import service as ai_service
    from allting.ai.models import ModelProvider
    from allting.ai.schemas import ModelCreate
    from allting.platform.errors import NotFound

    async def action(db, ctx):
        account = await db.scalar(select(ModelProvider).where(ModelProvider.name == provider))
        if account is None:
            raise NotFound(f"No provider account named '{provider}' in this tenant")
        model = await ai_service.create_model(
            db,
            ctx,
            ModelCreate(
                kind=kind,
                name=name,
                display_name=display_name,
                provider_id=account.id,
                dimensions=dimensions,
                context_window=context_window,
                is_enabled=True,
                is_default=default,
            ),
        )
        return {"id": str(model.id), "kind": model.kind, "name": model.name, "is_default": model.is_default}

    _in_tenant(tenant, action)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under the first key of ENCRYPTION_KEY."""
    from allting.ai import service as ai_service
    from allting.platform.db import system_transaction

    async def action():
        async with system_transaction() as db:
            return {"provider_keys": await ai_service.rotate_provider_keys(db)}

    typer.echo(json.dumps(_run_admin(action)))
