from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response

from allting.ai import gateway, service
from allting.ai.models import AiModel, ModelProvider
from allting.ai.schemas import (
    BudgetRead,
    BudgetScope,
    BudgetSet,
    ConnectionTest,
    ConnectionTestResult,
    CredentialInfo,
    CredentialList,
    CredentialSet,
    CredentialSetResponse,
    ModelCreate,
    ModelEnablement,
    ModelKind,
    ModelList,
    ModelRead,
    ModelUpdate,
    ProviderCreate,
    ProviderRead,
    ProviderTypeIn,
    ProviderUpdate,
    UsageSummary,
)
from allting.deps import Ctx, CurrentCtx
from allting.platform.db import DbSession
from allting.sysadmin import service as sysadmin_service
from allting.sysadmin.api import SystemDb, require_sysadmin

router = APIRouter(tags=["ai"])
sysadmin_router = APIRouter(prefix="/sysadmin", tags=["sysadmin"], dependencies=[Depends(require_sysadmin)])


def provider_read(provider: ModelProvider) -> ProviderRead:
    return ProviderRead.model_validate(provider).model_copy(
        update={"masked_key": service.masked_key(provider)}
    )


def model_read(model: AiModel, reason: str | None) -> ModelRead:
    return ModelRead(
        id=model.id,
        kind=model.kind,
        name=model.name,
        nickname=model.display_name,
        display_name=model.display_name,
        description=model.description,
        family=model.family,
        litellm_model_name=gateway.litellm_model_name(
            gateway.ModelTarget(litellm_model=model.name, provider_type=model.provider_type)
        ),
        token_limit=model.context_window,
        max_output_tokens=model.max_output_tokens,
        vision=model.vision,
        reasoning=model.reasoning,
        supports_tool_calling=model.tool_calling,
        dimensions=model.dimensions,
        batch_size=model.batch_size,
        hosting=model.hosting,
        security_level=model.security_level,
        is_org_enabled=model.is_enabled,
        is_org_default=model.is_default,
        can_access=model.is_enabled and reason is None,
        is_locked=reason is not None,
        lock_reason=reason,
        provider_id=model.provider_id,
        provider_name=model.provider.name if model.provider else None,
        provider_type=model.provider_type,
        input_price_per_million=model.input_price_per_million,
        output_price_per_million=model.output_price_per_million,
        fallback_model_ids=model.fallback_model_ids or [],
        created_at=model.created_at,
    )


# Provider accounts (tenant admins with the "ai" permission)


@router.get("/admin/model-providers/", response_model=list[ProviderRead])
async def list_providers(db: DbSession, ctx: CurrentCtx) -> list[ProviderRead]:
    return [provider_read(provider) for provider in await service.list_providers(db, ctx)]


@router.post("/admin/model-providers/", response_model=ProviderRead, status_code=201)
async def create_provider(data: ProviderCreate, db: DbSession, ctx: CurrentCtx) -> ProviderRead:
    return provider_read(await service.create_provider(db, ctx, data))


@router.get("/admin/model-providers/{provider_id}", response_model=ProviderRead)
async def get_provider(provider_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> ProviderRead:
    return provider_read(await service.get_provider(db, ctx, provider_id))


@router.patch("/admin/model-providers/{provider_id}", response_model=ProviderRead)
async def update_provider(
    provider_id: uuid.UUID, data: ProviderUpdate, db: DbSession, ctx: CurrentCtx
) -> ProviderRead:
    return provider_read(await service.update_provider(db, ctx, provider_id, data))


@router.delete("/admin/model-providers/{provider_id}", status_code=204)
async def delete_provider(provider_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_provider(db, ctx, provider_id)
    return Response(status_code=204)


@router.post("/admin/model-providers/{provider_id}/test", response_model=ConnectionTestResult)
async def test_provider(
    provider_id: uuid.UUID, db: DbSession, ctx: CurrentCtx, data: ConnectionTest | None = None
) -> ConnectionTestResult:
    """Try the account with a one-token request; the answer says what the provider replied."""
    return ConnectionTestResult(
        **await service.test_provider(db, ctx, provider_id, data.model if data else None)
    )


# Credentials in the reference system's shape, for tenant admins and (below) sysadmins


def _credential_list(providers: list[ModelProvider]) -> CredentialList:
    return CredentialList(
        credentials=[
            CredentialInfo(
                provider=provider.name,
                masked_key=service.masked_key(provider),
                configured_at=provider.key_set_at,
                encryption_status="encrypted",
                config={
                    "provider_type": provider.provider_type,
                    "endpoint": provider.endpoint,
                    "api_version": provider.api_version,
                    "deployment_name": provider.deployment_name,
                },
            )
            for provider in providers
        ]
    )


def _credential_set(ctx: Ctx, provider: str, account: ModelProvider) -> CredentialSetResponse:
    return CredentialSetResponse(
        tenant_id=ctx.tenant_id,
        provider=provider,
        masked_key=service.masked_key(account),
        message=f"The {provider} key is stored encrypted",
        set_at=account.key_set_at,
    )


@router.get("/admin/credentials", response_model=CredentialList)
async def list_credentials(db: DbSession, ctx: CurrentCtx) -> CredentialList:
    return _credential_list(await service.list_credentials(db, ctx))


@router.put("/admin/credentials/{provider}", response_model=CredentialSetResponse)
async def set_credential(
    provider: ProviderTypeIn, data: CredentialSet, db: DbSession, ctx: CurrentCtx
) -> CredentialSetResponse:
    return _credential_set(ctx, provider, await service.set_credential(db, ctx, provider, data))


@router.delete("/admin/credentials/{provider}", status_code=204)
async def delete_credential(provider: ProviderTypeIn, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_credential(db, ctx, provider)
    return Response(status_code=204)


def _sysadmin_ctx(request: Request, tenant_id: uuid.UUID) -> Ctx:
    return sysadmin_service.sysadmin_ctx(
        tenant_id,
        client_address=getattr(request.state, "client_address", None),
        correlation_id=getattr(request.state, "correlation_id", None),
    )


@sysadmin_router.get("/tenants/{tenant_id}/credentials", response_model=CredentialList)
async def sysadmin_list_credentials(tenant_id: uuid.UUID, request: Request, db: SystemDb) -> CredentialList:
    await sysadmin_service.enter_tenant(db, tenant_id)
    return _credential_list(await service.list_credentials(db, _sysadmin_ctx(request, tenant_id)))


@sysadmin_router.put("/tenants/{tenant_id}/credentials/{provider}", response_model=CredentialSetResponse)
async def sysadmin_set_credential(
    tenant_id: uuid.UUID, provider: ProviderTypeIn, data: CredentialSet, request: Request, db: SystemDb
) -> CredentialSetResponse:
    await sysadmin_service.enter_tenant(db, tenant_id)
    ctx = _sysadmin_ctx(request, tenant_id)
    return _credential_set(ctx, provider, await service.set_credential(db, ctx, provider, data))


@sysadmin_router.delete("/tenants/{tenant_id}/credentials/{provider}", status_code=204)
async def sysadmin_delete_credential(
    tenant_id: uuid.UUID, provider: ProviderTypeIn, request: Request, db: SystemDb
) -> Response:
    await sysadmin_service.enter_tenant(db, tenant_id)
    await service.delete_credential(db, _sysadmin_ctx(request, tenant_id), provider)
    return Response(status_code=204)


# The model catalogue


async def _list(db: DbSession, ctx: Ctx, kind: str | None) -> ModelList:
    items = [model_read(model, reason) for model, reason in await service.list_models(db, ctx, kind)]
    return ModelList(items=items, count=len(items))


@router.get("/completion-models/", response_model=ModelList)
async def list_completion_models(db: DbSession, ctx: CurrentCtx) -> ModelList:
    return await _list(db, ctx, "completion")


@router.get("/embedding-models/", response_model=ModelList)
async def list_embedding_models(db: DbSession, ctx: CurrentCtx) -> ModelList:
    return await _list(db, ctx, "embedding")


@router.get("/transcription-models/", response_model=ModelList)
async def list_transcription_models(db: DbSession, ctx: CurrentCtx) -> ModelList:
    return await _list(db, ctx, "transcription")


@router.get("/ai-models/", response_model=ModelList)
async def list_models(db: DbSession, ctx: CurrentCtx, kind: ModelKind | None = None) -> ModelList:
    return await _list(db, ctx, kind)


@router.post("/ai-models/", response_model=ModelRead, status_code=201)
async def create_model(data: ModelCreate, db: DbSession, ctx: CurrentCtx) -> ModelRead:
    model = await service.create_model(db, ctx, data)
    return model_read(*await service.get_model(db, ctx, model.id))


@router.get("/ai-models/{model_id}", response_model=ModelRead)
async def get_model(model_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> ModelRead:
    return model_read(*await service.get_model(db, ctx, model_id))


@router.patch("/ai-models/{model_id}", response_model=ModelRead)
async def update_model(model_id: uuid.UUID, data: ModelUpdate, db: DbSession, ctx: CurrentCtx) -> ModelRead:
    await service.update_model(db, ctx, model_id, data)
    return model_read(*await service.get_model(db, ctx, model_id))


@router.delete("/ai-models/{model_id}", status_code=204)
async def delete_model(model_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_model(db, ctx, model_id)
    return Response(status_code=204)


async def _enable(model_id: uuid.UUID, data: ModelEnablement, db: DbSession, ctx: CurrentCtx) -> ModelRead:
    changes = {
        "is_enabled": data.is_org_enabled,
        "is_default": data.is_org_default,
        "security_level": data.security_level,
    }
    await service.update_model(
        db, ctx, model_id, ModelUpdate(**{key: value for key, value in changes.items() if value is not None})
    )
    return model_read(*await service.get_model(db, ctx, model_id))


for _kind in ("completion", "embedding", "transcription"):
    router.add_api_route(
        f"/{_kind}-models/{{model_id}}/",
        _enable,
        methods=["POST"],
        response_model=ModelRead,
        summary=f"Enable, disable or make default a {_kind} model (reference-compatible)",
    )


# Usage and budgets


@router.get("/token-usage/", response_model=UsageSummary)
async def token_usage(
    db: DbSession,
    ctx: CurrentCtx,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: Literal["model", "user", "space", "day", "provider"] = "model",
) -> UsageSummary:
    """Token use and cost over a period (default: the last 30 days)."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=30)
    total, items = await service.usage_summary(db, ctx, start=start, end=end, group_by=group_by)
    return UsageSummary(start=start, end=end, group_by=group_by, total=total, items=items)


@router.get("/budgets/", response_model=list[BudgetRead])
async def list_budgets(db: DbSession, ctx: CurrentCtx) -> list[BudgetRead]:
    _, resets_at = service.month_window()
    return [
        BudgetRead.model_validate(budget).model_copy(
            update={"used_tokens": tokens, "used_cost": cost, "resets_at": resets_at}
        )
        for budget, tokens, cost in await service.list_budgets(db, ctx)
    ]


@router.put("/budgets/{scope}", response_model=BudgetRead)
async def set_tenant_budget(scope: Literal["tenant"], data: BudgetSet, db: DbSession, ctx: CurrentCtx):
    return await service.set_budget(db, ctx, scope, None, data)


@router.put("/budgets/{scope}/{scope_id}", response_model=BudgetRead)
async def set_budget(
    scope: BudgetScope, scope_id: uuid.UUID, data: BudgetSet, db: DbSession, ctx: CurrentCtx
):
    return await service.set_budget(db, ctx, scope, scope_id, data)


@router.delete("/budgets/{budget_id}", status_code=204)
async def delete_budget(budget_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_budget(db, ctx, budget_id)
    return Response(status_code=204)
