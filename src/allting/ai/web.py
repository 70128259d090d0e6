"""Administration of AI: providers with their keys, models, and usage; /admin picks the first tab."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from allting.ai import service
from allting.ai.schemas import ModelCreate, ModelUpdate, ProviderCreate
from allting.platform.db import DbSession
from allting.platform.errors import AppError
from allting.web.rendering import gettext_for, parse_uuid, redirect, render
from allting.web.web import Csrf, SignedIn, done, error_text

router = APIRouter(include_in_schema=False)
PROVIDER_TYPES = ("openai", "azure", "anthropic", "mistral", "openai_compatible", "vllm", "berget", "ollama")


@router.get("/admin")
async def admin_page(request: Request, page: SignedIn):
    for permission, url in (("ai", "/admin/ai"), ("admin", "/admin/users"), ("audit", "/admin/audit")):
        if page.can(permission):
            return redirect(request, url)
    page.ctx.require("admin")


@router.get("/admin/ai", response_class=HTMLResponse)
async def ai_page(request: Request, db: DbSession, page: SignedIn):
    page.ctx.require("ai")
    providers = await service.list_providers(db, page.ctx)
    models = await service.list_models(db, page.ctx)
    return render(
        request,
        "ai/admin.html",
        {
            "nav": "admin",
            "admin_tab": "ai",
            "providers": providers,
            "masked": {p.id: service.masked_key(p) for p in providers},
            "models": models,
            "provider_types": PROVIDER_TYPES,
            "test_result": None,
        },
    )


@router.post("/admin/ai/providers", dependencies=[Csrf])
async def create_provider_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    name: Annotated[str, Form(max_length=100)] = "",
    provider_type: Annotated[str, Form()] = "openai",
    endpoint: Annotated[str, Form(max_length=500)] = "",
    api_key: Annotated[str, Form(max_length=4000)] = "",
):
    _ = gettext_for(page.language)
    try:
        data = ProviderCreate(
            name=name.strip(),
            provider_type=provider_type,
            endpoint=endpoint.strip() or None,
            api_key=api_key.strip() or None,
        )
        async with db.begin_nested():
            await service.create_provider(db, page.ctx, data)
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    except ValueError:
        return done(
            request, "/admin/ai", _("Check the values: the key needs at least 8 characters."), "error"
        )
    return done(request, "/admin/ai", _("The provider is added."))


@router.post("/admin/ai/providers/{provider_id}/test", dependencies=[Csrf])
async def test_provider_form(request: Request, db: DbSession, page: SignedIn, provider_id: uuid.UUID):
    _ = gettext_for(page.language)
    try:
        result = await service.test_provider(db, page.ctx, provider_id, None)
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    if result.get("ok"):
        return done(request, "/admin/ai", _("The connection works.") + f" ({result.get('latency_ms')} ms)")
    return done(request, "/admin/ai", _("The connection failed:") + " " + str(result.get("message")), "error")


@router.post("/admin/ai/providers/{provider_id}/delete", dependencies=[Csrf])
async def delete_provider_form(request: Request, db: DbSession, page: SignedIn, provider_id: uuid.UUID):
    _ = gettext_for(page.language)
    try:
        async with db.begin_nested():
            await service.delete_provider(db, page.ctx, provider_id)
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    return done(request, "/admin/ai", _("The provider is removed."))


@router.post("/admin/ai/models", dependencies=[Csrf])
async def create_model_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    name: Annotated[str, Form(max_length=200)] = "",
    display_name: Annotated[str, Form(max_length=200)] = "",
    kind: Annotated[str, Form()] = "completion",
    provider_id: Annotated[str, Form()] = "",
    enabled: Annotated[str | None, Form()] = None,
):
    _ = gettext_for(page.language)
    try:
        data = ModelCreate(
            kind=kind,
            name=name.strip(),
            display_name=display_name.strip() or None,
            provider_id=parse_uuid(provider_id),
            is_enabled=enabled is not None,
        )
        async with db.begin_nested():
            await service.create_model(db, page.ctx, data)
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    except ValueError:
        return done(request, "/admin/ai", _("Check the values and try again."), "error")
    return done(request, "/admin/ai", _("The model is added."))


@router.post("/admin/ai/models/{model_id}", dependencies=[Csrf])
async def update_model_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    model_id: uuid.UUID,
    action: Annotated[str, Form()] = "",
):
    _ = gettext_for(page.language)
    changes = {
        "enable": ModelUpdate(is_enabled=True),
        "disable": ModelUpdate(is_enabled=False),
        "default": ModelUpdate(is_enabled=True, is_default=True),
    }
    if action not in changes:
        return done(request, "/admin/ai", _("Check the values and try again."), "error")
    try:
        async with db.begin_nested():
            await service.update_model(db, page.ctx, model_id, changes[action])
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    return done(request, "/admin/ai", _("The model is saved."))


@router.get("/admin/usage", response_class=HTMLResponse)
async def usage_page(
    request: Request, db: DbSession, page: SignedIn, group_by: str = "model", days: int = 30
):
    page.ctx.require("ai")
    group_by = group_by if group_by in ("model", "user", "space", "day", "provider") else "model"
    days = max(1, min(days, 366))
    end = datetime.now(UTC)
    total, items = await service.usage_summary(
        db, page.ctx, start=end - timedelta(days=days), end=end, group_by=group_by
    )
    top = max((item["total_tokens"] for item in items), default=0) or 1
    return render(
        request,
        "ai/usage.html",
        {
            "nav": "admin",
            "admin_tab": "usage",
            "total": total,
            "items": items,
            "top": top,
            "group_by": group_by,
            "days": days,
        },
    )
