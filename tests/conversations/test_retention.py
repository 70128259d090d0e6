"""Retention: conversations past their assistant's, space's or tenant's period are deleted and audited."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from allting.audit.models import AuditLog
from allting.conversations.models import Conversation
from allting.conversations.tasks import purge_expired_conversations
from allting.platform.db import system_transaction, utcnow
from allting.tenants.models import Tenant


async def _conversation(org, assistant_id: str) -> uuid.UUID:
    response = await org.owner.client.post(
        "/api/v1/conversations/", json={"question": "hello", "assistant_id": assistant_id}
    )
    assert response.status_code == 200, response.text
    return uuid.UUID(response.json()["conversation_id"])


async def _age(conversation_id: uuid.UUID, days: int) -> None:
    async with system_transaction() as db:
        await db.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=utcnow() - timedelta(days=days))
        )


async def _exists(conversation_id: uuid.UUID) -> bool:
    async with system_transaction() as db:
        return await db.get(Conversation, conversation_id) is not None


async def test_retention_deletes_exactly_what_has_expired_by_the_most_specific_period(chat_org):
    client = chat_org.owner.client
    space = (await client.post("/api/v1/spaces/", json={"name": "Case work", "retention_days": 30})).json()
    strict = (
        await client.post(
            "/api/v1/assistants/",
            json={"space_id": space["id"], "name": "Strict", "published": True, "retention_days": 7},
        )
    ).json()
    lenient = (
        await client.post(
            "/api/v1/assistants/", json={"space_id": space["id"], "name": "Space default", "published": True}
        )
    ).json()
    personal = (await client.get("/api/v1/spaces/type/personal/")).json()["default_assistant"]["id"]
    async with system_transaction() as db:
        await db.execute(
            update(Tenant).where(Tenant.id == chat_org.id).values(settings={"retention_days": 90})
        )

    strict_old = await _conversation(chat_org, strict["id"])
    strict_new = await _conversation(chat_org, strict["id"])
    space_old = await _conversation(chat_org, lenient["id"])
    space_new = await _conversation(chat_org, lenient["id"])
    tenant_old = await _conversation(chat_org, personal)
    tenant_new = await _conversation(chat_org, personal)
    await _age(strict_old, 8)
    await _age(strict_new, 6)
    await _age(space_old, 31)
    await _age(space_new, 20)
    await _age(tenant_old, 91)
    await _age(tenant_new, 60)

    assert await purge_expired_conversations() >= 3
    assert [await _exists(c) for c in (strict_old, space_old, tenant_old)] == [False, False, False]
    assert [await _exists(c) for c in (strict_new, space_new, tenant_new)] == [True, True, True]
    async with system_transaction() as db:
        audited = set(
            await db.scalars(
                select(AuditLog.target_id).where(
                    AuditLog.tenant_id == chat_org.id, AuditLog.action == "conversation.expired"
                )
            )
        )
    assert audited == {str(strict_old), str(space_old), str(tenant_old)}
