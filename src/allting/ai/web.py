"""Administration of AI: providers with their keys, models, usage and budgets; /admin picks the first tab."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from allting.ai import service
from allting.ai.schemas import BudgetSet, ModelCreate, ModelUpdate, ProviderCreate
from allting.platform.db import DbSession
from allting.platform.errors import AppError
from allting.web.errors import translate_error
from allting.web.rendering import gettext_for, parse_uuid, redirect, render
from allting.web.web import Csrf, SignedIn, done, error_text, form_change

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
    return await _ai_page(request, db, page)


async def _ai_page(request: Request, db, page, test_result: dict | None = None):
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
            # Why a model cannot be enabled yet, in the page's language.
            "reasons": {
                reason: translate_error(page.language, None, reason) for _, reason in models if reason
            },
            "provider_types": PROVIDER_TYPES,
            "test_result": test_result,
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
    api_version: Annotated[str, Form(max_length=50)] = "",
    api_key: Annotated[str, Form(max_length=4000)] = "",
):
    _ = gettext_for(page.language)

    async def create() -> None:
        data = ProviderCreate(
            name=name.strip(),
            provider_type=provider_type,
            endpoint=endpoint.strip() or None,
            api_version=api_version.strip() or None,
            api_key=api_key.strip() or None,
        )
        await service.create_provider(db, page.ctx, data)

    invalid = _("Check the values: the key needs at least 8 characters.")
    return await form_change(request, db, "/admin/ai", create, _("The provider is added."), invalid=invalid)


@router.post("/admin/ai/providers/{provider_id}/test", dependencies=[Csrf])
async def test_provider_form(request: Request, db: DbSession, page: SignedIn, provider_id: uuid.UUID):
    _ = gettext_for(page.language)
    try:
        result = await service.test_provider(db, page.ctx, provider_id, None)
    except AppError as exc:
        return done(request, "/admin/ai", error_text(request, exc), "error")
    # The result is shown in the provider's own row, on the page this request answers.
    if result.get("ok"):
        text = _("The connection works.") + f" ({result.get('latency_ms')} ms)"
    else:
        message = str(result.get("message") or "")
        text = (
            _("The connection failed:")
            + " "
            + translate_error(page.language, result.get("error_code"), message)
        )
    return await _ai_page(
        request, db, page, {"provider_id": provider_id, "ok": bool(result.get("ok")), "text": text}
    )


@router.post("/admin/ai/providers/{provider_id}/delete", dependencies=[Csrf])
async def delete_provider_form(request: Request, db: DbSession, page: SignedIn, provider_id: uuid.UUID):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/admin/ai",
        lambda: service.delete_provider(db, page.ctx, provider_id),
        _("The provider is removed."),
    )


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

    async def create() -> None:
        data = ModelCreate(
            kind=kind,
            name=name.strip(),
            display_name=display_name.strip() or None,
            provider_id=parse_uuid(provider_id),
            is_enabled=enabled is not None,
        )
        await service.create_model(db, page.ctx, data)

    invalid = _("Check the values and try again.")
    return await form_change(request, db, "/admin/ai", create, _("The model is added."), invalid=invalid)


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
    return await form_change(
        request,
        db,
        "/admin/ai",
        lambda: service.update_model(db, page.ctx, model_id, changes[action]),
        _("The model is saved."),
    )


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


# Budgets: monthly token or cost limits for the tenant, a space or a person, with what is used.


@router.get("/admin/budgets", response_class=HTMLResponse)
async def budgets_page(request: Request, db: DbSession, page: SignedIn):
    from allting.spaces import service as spaces_service
    from allting.users import service as users_service

    page.ctx.require("ai")
    _, resets_at = service.month_window()
    budgets = await service.list_budgets(db, page.ctx)
    spaces = [space for space, _role in await spaces_service.list_spaces(db, page.ctx)]
    users, _total = await users_service.list_users(db, page.ctx, limit=500, offset=0)
    gettext = gettext_for(page.language)
    # The personal and the organisation space are named by kind, as the spaces pages name them.
    kinds = {"personal": gettext("Personal"), "organisation": gettext("Organisation")}
    space_names = {space.id: kinds.get(space.kind, space.name) for space in spaces}
    names = space_names | {user.id: user.name or user.email for user in users}
    rows = []
    for budget, tokens, cost in budgets:
        rows.append(
            {
                "budget": budget,
                "target": names.get(budget.scope_id, "") if budget.scope_id else "",
                "used_tokens": tokens,
                "used_cost": cost,
                "left_tokens": max(budget.monthly_tokens - tokens, 0) if budget.monthly_tokens else None,
                "left_cost": max(budget.monthly_cost - cost, 0) if budget.monthly_cost else None,
                "share": _share(budget, tokens, cost),
            }
        )
    return render(
        request,
        "ai/budgets.html",
        {
            "nav": "admin",
            "admin_tab": "budgets",
            "rows": rows,
            "spaces": spaces,
            "space_names": space_names,
            "users": users,
            "resets_at": resets_at,
        },
    )


def _share(budget, tokens: int, cost) -> int:
    """The larger used share of the limits, in percent (0–100) for the meter."""
    shares = []
    if budget.monthly_tokens:
        shares.append(tokens / budget.monthly_tokens)
    if budget.monthly_cost:
        shares.append(float(cost / budget.monthly_cost))
    return min(100, round(100 * max(shares))) if shares else 0


@router.post("/admin/budgets", dependencies=[Csrf])
async def set_budget_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    scope: Annotated[str, Form()] = "tenant",
    space_id: Annotated[str, Form()] = "",
    user_id: Annotated[str, Form()] = "",
    monthly_tokens: Annotated[str, Form(max_length=20)] = "",
    monthly_cost: Annotated[str, Form(max_length=20)] = "",
):
    _ = gettext_for(page.language)
    scope_id = {"space": parse_uuid(space_id), "user": parse_uuid(user_id)}.get(scope)
    if scope not in ("tenant", "space", "user") or (scope != "tenant" and scope_id is None):
        return done(request, "/admin/budgets", _("Choose what the budget is for."), "error")

    async def save() -> None:
        data = BudgetSet(
            monthly_tokens=int(monthly_tokens) if monthly_tokens.strip() else None,
            monthly_cost=monthly_cost.strip().replace(",", ".") or None,
        )
        await service.set_budget(db, page.ctx, scope, scope_id, data)

    invalid = _("Give a whole number of tokens and a positive cost.")
    return await form_change(request, db, "/admin/budgets", save, _("The budget is saved."), invalid=invalid)


@router.post("/admin/budgets/{budget_id}/delete", dependencies=[Csrf])
async def delete_budget_form(request: Request, db: DbSession, page: SignedIn, budget_id: uuid.UUID):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/admin/budgets",
        lambda: service.delete_budget(db, page.ctx, budget_id),
        _("The budget is removed."),
    )
