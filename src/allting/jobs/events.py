"""Live job status over a WebSocket, fanned out through Redis pub/sub to every API process.

A worker (or any API process) publishes a job's state on `events:<tenant>:<user>`
(`jobs.service.publish`). Each WebSocket subscribes to its own user's channel in its own tenant,
so a person receives events of their own jobs only, whichever process serves them.

Authentication, checked before the connection is accepted:
- the web session cookie (`allting_session`), from a page of this site: a browser sends the
  cookie with cross-site WebSocket handshakes too, so the `Origin` must be this site's (or a
  configured CORS origin);
- or a ticket from `POST /api/v1/ws/ticket`: random, stored in Redis for 30 seconds, good for one
  connection. Scripts and apps that hold a bearer token or an API key get a ticket with it; the
  long-lived credential itself never goes into a URL.
While the socket is open the session (or API key) behind it is checked again every minute; a
revoked one closes the socket (1008).

Client messages: `{"type": "ping"}` → `{"type": "pong"}`. Server messages: `{"type": "job",
"data": {id, task, name, status, progress, error, result}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from allting.deps import WEB_SESSION_COOKIE, Ctx
from allting.jobs import service as jobs_service
from allting.platform.db import utcnow
from allting.platform.errors import AppError, Unauthorized
from allting.platform.logging import get_logger
from allting.platform.redis import get_redis
from allting.platform.settings import get_settings

log = get_logger(__name__)

TICKET_SECONDS = 30
RECHECK_SECONDS = 60.0
POLICY_VIOLATION = 1008
_TICKET_PREFIX = "ws_ticket:"


@dataclass(frozen=True)
class Listener:
    """Who is on the other end of a socket, and what vouches for them."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    def as_json(self) -> str:
        return json.dumps({key: str(value) if value else None for key, value in self.__dict__.items()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Listener:
        data = json.loads(raw)
        return cls(**{key: uuid.UUID(value) if value else None for key, value in data.items()})


def _ticket_key(ticket: str) -> str:
    return _TICKET_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


async def issue_ticket(ctx: Ctx) -> tuple[str, int]:
    """A single-use ticket for one WebSocket connection of the caller, valid for TICKET_SECONDS."""
    if ctx.user_id is None:
        raise Unauthorized("Only a person can open the live status connection")
    listener = Listener(ctx.tenant_id, ctx.user_id, ctx.session_id, ctx.api_key_id)
    ticket = secrets.token_urlsafe(32)
    await get_redis().set(_ticket_key(ticket), listener.as_json(), ex=TICKET_SECONDS)
    return ticket, TICKET_SECONDS


async def _redeem(ticket: str) -> Listener | None:
    raw = await get_redis().getdel(_ticket_key(ticket))
    return Listener.from_json(raw) if raw else None


def _origin_allowed(websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: no ambient cookie to abuse
    settings = get_settings()
    allowed = {_origin(settings.public_url), *(_origin(o) for o in settings.cors_origin_list)}
    host = websocket.headers.get("host")
    if host:
        allowed |= {f"http://{host}", f"https://{host}"}
    return _origin(origin) in allowed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


async def authenticate(websocket: WebSocket) -> Listener | None:
    """The listener of a handshake, or None when it must be refused."""
    from allting.auth import service as auth_service
    from allting.platform.db import transaction

    ticket = websocket.query_params.get("ticket")
    if ticket:
        return await _redeem(ticket)
    cookie = websocket.cookies.get(WEB_SESSION_COOKIE)
    if not cookie or not _origin_allowed(websocket):
        return None
    try:
        async with transaction() as db:
            ctx = await auth_service.authenticate_token(db, cookie, purpose="web")
    except AppError:
        return None
    if ctx.user_id is None:
        return None
    return Listener(ctx.tenant_id, ctx.user_id, ctx.session_id, None)


async def still_valid(listener: Listener) -> bool:
    """The session or API key behind a socket is still live and its user still active."""
    from allting.auth.models import AuthSession
    from allting.platform.db import transaction
    from allting.platform.tenancy import set_tenant
    from allting.users.models import ApiKey, User

    async with transaction() as db:
        await set_tenant(db, listener.tenant_id)
        user = await db.get(User, listener.user_id)
        if user is None or user.deleted_at is not None or user.state != "active":
            return False
        if listener.session_id is not None:
            session = await db.scalar(select(AuthSession).where(AuthSession.id == listener.session_id))
            return session is not None and session.revoked_at is None and session.expires_at > utcnow()
        if listener.api_key_id is not None:
            key = await db.scalar(select(ApiKey).where(ApiKey.id == listener.api_key_id))
            return (
                key is not None
                and key.revoked_at is None
                and (key.expires_at is None or key.expires_at > utcnow())
            )
    return False


async def serve(websocket: WebSocket) -> None:
    """Authenticate, then forward the listener's job events until either side goes away."""
    listener = await authenticate(websocket)
    if listener is None:
        await websocket.close(code=POLICY_VIOLATION)
        return
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(jobs_service.events_channel(listener.tenant_id, listener.user_id))
    await websocket.accept()
    tasks = [
        asyncio.create_task(_forward(pubsub, websocket)),
        asyncio.create_task(_answer(websocket)),
        asyncio.create_task(_watch(listener)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        reason = next(iter(done)).result() if done else None
    except Exception as exc:  # a broken Redis or socket ends this connection only
        log.info("ws.closed", error=type(exc).__name__)
        reason = None
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await pubsub.unsubscribe()
            await pubsub.aclose()
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=POLICY_VIOLATION if reason == "revoked" else 1000)


async def _forward(pubsub, websocket: WebSocket) -> str:
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        data = message["data"]
        await websocket.send_text(data.decode() if isinstance(data, bytes) else str(data))


async def _answer(websocket: WebSocket) -> str:
    try:
        while True:
            raw = await websocket.receive_text()
            try:
                kind = json.loads(raw).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "ping":
                await websocket.send_text(json.dumps({"type": "pong"}))
            else:
                await websocket.send_text(
                    json.dumps({"type": "error", "data": {"message": 'Send {"type": "ping"}'}})
                )
    except WebSocketDisconnect:
        return "disconnected"


async def _watch(listener: Listener) -> str:
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        if not await still_valid(listener):
            return "revoked"
