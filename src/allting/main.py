"""The ASGI application: middleware, error handlers, routers and the process lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from allting import __version__
from allting.platform import runtime as runtime_module
from allting.platform.db import system_transaction
from allting.platform.http import RequestContextMiddleware, install_error_handlers
from allting.platform.logging import configure_logging, get_logger
from allting.platform.runtime import Runtime
from allting.platform.settings import Settings, get_settings
from allting.routes import API_PREFIX, HEALTH_PREFIX, api_routers, health_router
from allting.web.web import install_web

log = get_logger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"


async def first_run(settings: Settings) -> None:
    """Create the default tenant and its owner on an empty installation; print a generated password once."""
    from allting.tenants import service as tenants_service

    async with system_transaction() as db:
        created = await tenants_service.ensure_first_tenant(
            db,
            name=settings.default_tenant_name,
            owner_email=settings.admin_email,
            owner_password=settings.admin_password,
        )
    if created is None:
        return
    tenant, owner, password = created
    log.info("first_run.tenant_created", tenant=tenant.slug, owner=owner.email)
    if password:
        # Printed, never logged: it is shown once and logs are kept.
        print(
            f"\n  Allting is ready. Sign in as {owner.email} with the password: {password}\n"
            f"  (shown only now; change it after signing in)\n",
            flush=True,
        )


async def _export_local_embeddings() -> None:
    """Export the local embedding model now if this installation has not yet (see local_embeddings)."""
    from allting.ai import local_embeddings

    try:
        await asyncio.to_thread(local_embeddings.ensure_exported)
    except Exception:  # the first question that needs the model tries again and reports it
        log.exception("local_embeddings.export_failed")


# Allocations between young-generation collections (CPython's default is 700). A question
# allocates tens of thousands of short-lived objects; at the default the collector ran so often
# that, with 50 questions at once, it took over a quarter of the API's CPU.
YOUNG_COLLECTION_THRESHOLD = 20_000


async def _settle_heap(*started: asyncio.Task) -> None:
    """Once start-up work has finished, move everything it created (modules, LiteLLM, compiled
    statements) out of the collector's sight: those objects live as long as the process, and
    every full collection would otherwise walk all of them again."""
    await asyncio.gather(*started, return_exceptions=True)
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


# Set by `allting serve --processes N` for the processes it starts: whether each runs a worker.
IN_PROCESS_WORKER_VARIABLE = "ALLTING_SERVE_IN_PROCESS_WORKER"


def create_served_app() -> FastAPI:
    """The application in one of the API processes `allting serve --processes N` starts. The first
    process started the embedded servers and prepared the database; these find them running and
    leave them to it."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(in_process_worker=os.environ.get(IN_PROCESS_WORKER_VARIABLE) != "0")


def create_app(*, runtime: Runtime | None = None, in_process_worker: bool = True) -> FastAPI:
    """The application. With `runtime` given (tests) the caller owns servers and connections."""
    settings = runtime.settings if runtime is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_runtime = runtime is None
        active = runtime or await runtime_module.start(settings)
        app.state.runtime = active
        worker_task = None
        try:
            if own_runtime:
                await first_run(settings)
                from allting.ai import gateway

                app.state.litellm_warm_up = asyncio.create_task(gateway.warm_up())
                app.state.embedding_export = asyncio.create_task(_export_local_embeddings())
                app.state.heap_settled = asyncio.create_task(
                    _settle_heap(app.state.litellm_warm_up, app.state.embedding_export)
                )
            if in_process_worker:
                from allting.worker import build_worker

                worker = build_worker(in_process=True)
                worker_task = asyncio.create_task(worker.start())
            yield
        finally:
            if worker_task is not None:
                worker.event.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
            from allting.ai import gateway

            await gateway.close_clients()
            if own_runtime:
                await runtime_module.stop(active)

    app = FastAPI(
        title="Allting",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Correlation-ID"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        trusted_proxies=settings.trusted_proxy_list,
    )
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        """Swagger UI served from this server (front-end packages from npm), so the CSP stays strict."""
        return FileResponse(PACKAGE_DIR / "templates" / "api_docs.html")

    app.include_router(health_router, prefix=HEALTH_PREFIX)
    for router in api_routers:
        app.include_router(router, prefix=API_PREFIX)
    install_web(app)
    return app
