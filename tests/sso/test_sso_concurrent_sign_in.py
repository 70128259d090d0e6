"""Two first sign-ins of the same person at the same moment (two tabs, a double click) both succeed,
as one user with one bound identity."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import func, select, text
from sso_helpers import audit_rows, begin, configure_federation, domain_of, finish, me

from allting.auth.models import UserIdentity
from allting.platform.db import system_transaction
from allting.users.models import User


async def _statements_waiting_for_locks() -> int:
    async with system_transaction() as db:
        return await db.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))


async def _callbacks_at_once(browsers, attempts) -> list[httpx.Response | BaseException]:
    """Run both callbacks concurrently through the API, holding back every write to the identity
    table until both are waiting: so each has looked the person up before either binds them, the
    race that makes the second insert collide. Exceptions are returned, not raised, to be shown."""
    async with system_transaction() as holder:
        await holder.execute(text("LOCK TABLE user_identities IN SHARE ROW EXCLUSIVE MODE"))
        callbacks = asyncio.gather(
            *(finish(browser, attempt) for browser, attempt in zip(browsers, attempts, strict=True)),
            return_exceptions=True,
        )
        deadline = time.monotonic() + 15
        while not callbacks.done() and await _statements_waiting_for_locks() < 2:
            assert time.monotonic() < deadline, "the callbacks never reached the identity table together"
            await asyncio.sleep(0.02)
    return await callbacks


@pytest.mark.parametrize("existing_account", [False, True], ids=["created_just_in_time", "linked_by_email"])
async def test_two_concurrent_first_sign_ins_of_one_person_sign_in_as_one_user(
    fed_a, idp_a, browser_factory, existing_account
):
    org = fed_a
    response = await configure_federation(org, idp_a, jit_provisioning=True)
    assert response.status_code == 200, response.text
    email = f"eva@{domain_of(org)}"
    if existing_account:
        await org.add_user("member", email=email)
    idp_a.next_user(sub="eva-1", email=email, name="Eva")
    browsers = [browser_factory(), browser_factory()]
    attempts = [await begin(browser, tenant=org.slug) for browser in browsers]

    results = await _callbacks_at_once(browsers, attempts)

    assert all(isinstance(result, httpx.Response) for result in results), results
    assert [result.status_code for result in results] == [303, 303], [result.text[:300] for result in results]
    signed_in = [(await me(browser)).json() for browser in browsers]
    assert signed_in[0]["id"] == signed_in[1]["id"]
    assert signed_in[0]["email"] == email
    async with system_transaction() as db:
        users = await db.scalar(
            select(func.count()).where(User.tenant_id == org.id, func.lower(User.email) == email)
        )
        identities = await db.scalar(
            select(func.count()).where(UserIdentity.tenant_id == org.id, UserIdentity.subject == "eva-1")
        )
    assert (users, identities) == (1, 1)
    logins = await audit_rows("auth.sso_login", tenant_id=org.id)
    assert [entry.outcome for entry in logins] == ["success", "success"]
    assert {str(entry.actor_id) for entry in logins} == {signed_in[0]["id"]}
    created = [
        entry for entry in await audit_rows("user.created", tenant_id=org.id) if entry.actor_label == "sso"
    ]
    assert len(created) == (0 if existing_account else 1)
