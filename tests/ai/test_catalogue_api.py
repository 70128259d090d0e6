"""Provider accounts, keys, the model catalogue, usage and budgets over the HTTP API."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select, update

from allting.ai import gateway
from allting.ai import service as ai_service
from allting.ai.models import ModelProvider
from allting.audit.models import AuditLog
from allting.deps import Ctx
from allting.platform import crypto
from allting.platform.db import system_transaction, transaction
from allting.platform.errors import TooManyRequests
from allting.platform.tenancy import set_tenant

KEY = "sk-test-Secret-Key-0123456789abcdWXYZ"


@pytest.fixture
async def stub_provider(org, stub):
    response = await org.owner.client.post(
        "/api/v1/admin/model-providers/",
        json={"name": "Local vLLM", "provider_type": "vllm", "endpoint": stub.url, "api_key": KEY},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _add_model(org, provider, **extra) -> dict:
    response = await org.owner.client.post(
        "/api/v1/ai-models/",
        json={
            "kind": "completion",
            "name": "stub-chat",
            "display_name": "Stub chat",
            "provider_id": provider["id"],
            "context_window": 8192,
            "hosting": "on_premises",
            "security_level": 3,
            **extra,
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_new_tenant_has_a_catalogue_with_cloud_models_locked_and_local_embeddings_ready(org):
    completion = (await org.owner.client.get("/api/v1/completion-models/")).json()
    assert completion["count"] >= 5
    assert all(not item["can_access"] and not item["is_org_enabled"] for item in completion["items"])
    gpt = next(item for item in completion["items"] if item["name"] == "gpt-4o")
    assert gpt["is_locked"] and "No openai key" in gpt["lock_reason"]
    embedding = (await org.owner.client.get("/api/v1/embedding-models/")).json()["items"]
    local = next(item for item in embedding if item["provider_type"] == "local")
    assert local["is_org_default"] and local["can_access"] and local["dimensions"] == 384
    transcription = (await org.owner.client.get("/api/v1/transcription-models/")).json()
    assert [item["name"] for item in transcription["items"]] == ["whisper-1"]


async def test_provider_key_is_stored_encrypted_and_only_ever_shown_masked(org, stub_provider):
    assert stub_provider["masked_key"] == "…WXYZ"
    listed = await org.owner.client.get("/api/v1/admin/model-providers/")
    fetched = await org.owner.client.get(f"/api/v1/admin/model-providers/{stub_provider['id']}")
    for response in (listed, fetched):
        assert KEY not in response.text
    async with system_transaction() as db:
        stored = await db.scalar(
            select(ModelProvider.encrypted_api_key).where(ModelProvider.id == uuid.UUID(stub_provider["id"]))
        )
        audit_rows = list(await db.scalars(select(AuditLog).where(AuditLog.tenant_id == org.id)))
    assert KEY not in stored and stored.startswith("enc:")
    assert all(KEY not in json.dumps(row.changes) for row in audit_rows)


async def test_admin_adds_a_self_hosted_model_enables_it_and_makes_it_default(org, stub_provider):
    model = await _add_model(org, stub_provider, is_enabled=True, is_default=True)
    assert model["is_org_enabled"] and model["is_org_default"] and model["can_access"]
    assert model["litellm_model_name"] == "openai/stub-chat"
    member = await org.add_user("member")
    visible = (await member.client.get("/api/v1/completion-models/")).json()["items"]
    assert [item["id"] for item in visible] == [model["id"]]


async def test_only_one_default_per_kind(org, stub_provider):
    first = await _add_model(org, stub_provider, is_enabled=True, is_default=True)
    second = await _add_model(org, stub_provider, display_name="Stub chat 2", is_enabled=True)
    response = await org.owner.client.post(
        f"/api/v1/completion-models/{second['id']}/", json={"is_org_default": True}
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_org_default"]
    first_now = (await org.owner.client.get(f"/api/v1/ai-models/{first['id']}")).json()
    assert not first_now["is_org_default"]


async def test_enabling_a_model_without_any_key_is_refused_with_the_reason(org):
    gpt = next(
        item
        for item in (await org.owner.client.get("/api/v1/completion-models/")).json()["items"]
        if item["name"] == "gpt-4o"
    )
    response = await org.owner.client.patch(f"/api/v1/ai-models/{gpt['id']}", json={"is_enabled": True})
    assert response.status_code == 409
    assert "No openai key" in response.json()["message"]


async def test_members_cannot_manage_providers_or_models(org, stub_provider):
    member = await org.add_user("member")
    assert (
        await member.client.post(
            "/api/v1/admin/model-providers/",
            json={"name": "x", "provider_type": "openai", "api_key": "sk-aaaaaaaaaaaa"},
        )
    ).status_code == 403
    assert (await member.client.get("/api/v1/admin/model-providers/")).status_code == 403
    assert (
        await member.client.post(
            "/api/v1/ai-models/", json={"kind": "completion", "name": "x", "provider_type": "openai"}
        )
    ).status_code == 403


async def test_bad_provider_input_names_the_field(org):
    response = await org.owner.client.post(
        "/api/v1/admin/model-providers/", json={"name": "Self-hosted", "provider_type": "openai_compatible"}
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "endpoint"
    response = await org.owner.client.post(
        "/api/v1/admin/model-providers/",
        json={"name": "Azure", "provider_type": "azure", "endpoint": "https://x.openai.azure.com"},
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "api_version"
    response = await org.owner.client.post(
        "/api/v1/admin/model-providers/",
        json={"name": "Short", "provider_type": "openai", "api_key": "short"},
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "api_key"


async def test_connection_test_reports_success_and_a_bad_key_without_echoing_it(org, stub, stub_provider):
    await _add_model(org, stub_provider)
    ok = await org.owner.client.post(f"/api/v1/admin/model-providers/{stub_provider['id']}/test", json={})
    assert ok.status_code == 200 and ok.json()["ok"] is True
    assert stub.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    stub.script(error=401, echo_key_in_error=True)
    bad = await org.owner.client.post(f"/api/v1/admin/model-providers/{stub_provider['id']}/test", json={})
    assert bad.json()["ok"] is False and bad.json()["error_code"] == "provider_auth"
    assert KEY not in bad.text and "WXYZ" not in bad.text


async def test_ciphertext_copied_to_another_tenant_is_refused(org, other_org, stub):
    providers = []
    for owner_org in (org, other_org):
        response = await owner_org.owner.client.post(
            "/api/v1/admin/model-providers/",
            json={
                "name": "vLLM",
                "provider_type": "vllm",
                "endpoint": stub.url,
                "api_key": f"sk-{owner_org.slug}-key",
            },
        )
        providers.append(response.json())
    async with system_transaction() as db:
        stolen = await db.scalar(
            select(ModelProvider.encrypted_api_key).where(ModelProvider.id == uuid.UUID(providers[0]["id"]))
        )
        await db.execute(
            update(ModelProvider)
            .where(ModelProvider.id == uuid.UUID(providers[1]["id"]))
            .values(encrypted_api_key=stolen)
        )
    response = await other_org.owner.client.post(
        f"/api/v1/admin/model-providers/{providers[1]['id']}/test", json={"model": "stub-chat"}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "credential_unreadable"
    assert org.slug not in response.text


async def test_sysadmin_sets_lists_and_deletes_tenant_credentials_in_the_reference_shape(org, sysadmin):
    response = await sysadmin.put(
        f"/api/v1/sysadmin/tenants/{org.id}/credentials/openai", json={"api_key": "sk-proj-abcdefgh1234"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["tenant_id"] == str(org.id) and body["provider"] == "openai" and body["masked_key"] == "…1234"
    assert {"message", "set_at"} <= body.keys()
    listed = (await sysadmin.get(f"/api/v1/sysadmin/tenants/{org.id}/credentials")).json()
    assert listed["credentials"][0]["encryption_status"] == "encrypted"
    assert "abcdefgh" not in json.dumps(listed)
    models = (await org.owner.client.get("/api/v1/completion-models/")).json()["items"]
    assert not next(item for item in models if item["name"] == "gpt-4o")["is_locked"]
    assert (await sysadmin.delete(f"/api/v1/sysadmin/tenants/{org.id}/credentials/openai")).status_code == 204
    assert (await sysadmin.delete(f"/api/v1/sysadmin/tenants/{org.id}/credentials/openai")).status_code == 404
    missing = await sysadmin.get(f"/api/v1/sysadmin/tenants/{uuid.uuid4()}/credentials")
    assert missing.status_code == 404


async def test_shared_mode_falls_back_to_the_operator_key_and_strict_mode_does_not(
    org, settings, monkeypatch
):
    monkeypatch.setattr(settings, "openai_api_key", "sk-operator-global-key-0000")
    monkeypatch.setattr(settings, "tenant_credentials_enabled", False)
    shared = (await org.owner.client.get("/api/v1/completion-models/")).json()["items"]
    assert not next(item for item in shared if item["name"] == "gpt-4o")["is_locked"]
    monkeypatch.setattr(settings, "tenant_credentials_enabled", True)
    strict = (await org.owner.client.get("/api/v1/completion-models/")).json()["items"]
    gpt = next(item for item in strict if item["name"] == "gpt-4o")
    assert gpt["is_locked"] and "for this organisation" in gpt["lock_reason"]


def _ctx(org) -> Ctx:
    return Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user", permissions=frozenset({"ai"}))


async def test_budget_refuses_a_call_before_the_provider_is_contacted(org, stub, stub_provider):
    model = await _add_model(org, stub_provider, is_enabled=True)
    response = await org.owner.client.put("/api/v1/budgets/tenant", json={"monthly_tokens": 100})
    assert response.status_code == 200
    async with transaction() as db:
        await set_tenant(db, org.id)
        prepared = await ai_service.prepare_call(
            db, _ctx(org), uuid.UUID(model["id"]), kind="completion", estimated_tokens=10
        )
        result = await gateway.complete_chat(prepared.target, [{"role": "user", "content": "hello"}])
        await ai_service.record_usage(
            db, _ctx(org), prepared.model, gateway.Usage(60, 40), target=prepared.target, latency_ms=5
        )
    assert result.text
    requests_before = len(stub.requests)
    with pytest.raises(TooManyRequests) as refused:
        async with transaction() as db:
            await set_tenant(db, org.id)
            await ai_service.prepare_call(
                db, _ctx(org), uuid.UUID(model["id"]), kind="completion", estimated_tokens=1
            )
    assert "100 tokens for your organisation is used up" in refused.value.message
    assert refused.value.retry_after > 0
    assert len(stub.requests) == requests_before
    budgets = (await org.owner.client.get("/api/v1/budgets/")).json()
    assert budgets[0]["used_tokens"] == 100


async def test_token_usage_summarises_by_model_and_user(org, stub_provider):
    model = await _add_model(org, stub_provider, is_enabled=True)
    member = await org.add_user("member")
    async with transaction() as db:
        await set_tenant(db, org.id)
        prepared = await ai_service.prepare_call(db, _ctx(org), uuid.UUID(model["id"]), kind="completion")
        for user_id, usage in ((org.owner.id, gateway.Usage(10, 5)), (member.id, gateway.Usage(20, 10))):
            ctx = Ctx(tenant_id=org.id, user_id=user_id, actor_type="user")
            await ai_service.record_usage(
                db, ctx, prepared.model, usage, target=prepared.target, latency_ms=3
            )
    by_model = (await org.owner.client.get("/api/v1/token-usage/?group_by=model")).json()
    assert by_model["total"]["total_tokens"] == 45 and by_model["total"]["calls"] == 2
    assert by_model["items"][0]["key"] == "stub-chat"
    by_user = (await org.owner.client.get("/api/v1/token-usage/?group_by=user")).json()
    assert {row["label"] for row in by_user["items"]} == {org.owner.email, member.email}
    mine = (await member.client.get("/api/v1/token-usage/?group_by=user")).json()
    assert [row["label"] for row in mine["items"]] == [member.email]


async def test_rotation_leaves_every_key_readable_under_the_new_key_alone(
    org, stub_provider, settings, monkeypatch
):
    from cryptography.fernet import Fernet

    new_key = Fernet.generate_key().decode()
    old_key = settings.encryption_key
    monkeypatch.setattr(settings, "encryption_key", f"{new_key},{old_key}")
    async with system_transaction() as db:
        assert await ai_service.rotate_provider_keys(db) >= 1
    monkeypatch.setattr(settings, "encryption_key", new_key)
    async with system_transaction() as db:
        providers = list(
            await db.scalars(select(ModelProvider).where(ModelProvider.encrypted_api_key.is_not(None)))
        )
    assert all(
        crypto.decrypt_secret(
            provider.encrypted_api_key,
            tenant_id=provider.tenant_id,
            purpose=ai_service.KEY_PURPOSE,
            keys=[new_key],
        )
        is not None
        for provider in providers
        if provider.tenant_id == org.id
    )
    with pytest.raises(crypto.SecretUnreadableError):
        crypto.decrypt_secret(
            providers[0].encrypted_api_key,
            tenant_id=providers[0].tenant_id,
            purpose=ai_service.KEY_PURPOSE,
            keys=[old_key],
        )


async def test_the_first_enabled_model_of_a_kind_becomes_its_default(org, stub_provider):
    first = await _add_model(org, stub_provider, is_enabled=True)
    second = await _add_model(org, stub_provider, display_name="Stub chat 2", is_enabled=True)
    assert first["is_org_default"]
    assert not second["is_org_default"]
    third = await _add_model(org, stub_provider, display_name="Stub chat 3")
    enabled = await org.owner.client.post(
        f"/api/v1/completion-models/{third['id']}/", json={"is_org_enabled": True}
    )
    assert enabled.status_code == 200, enabled.text
    assert not enabled.json()["is_org_default"]
