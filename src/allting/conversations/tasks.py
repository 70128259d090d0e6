"""Scheduled work of the conversations domain."""

from __future__ import annotations

from allting.conversations import service
from allting.platform.db import system_transaction


async def purge_expired_conversations(_ctx: dict | None = None) -> int:
    """Daily: delete conversations past their retention period (across tenants, each deletion audited)."""
    async with system_transaction() as db:
        return await service.purge_expired(db)
