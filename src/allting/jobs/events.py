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

Watching a space: a page that shows a space's knowledge sends `{"type": "watch", "space_id": ...}`
and from then on also receives the events of every job that changes that space's collections,
documents and websites, whoever started it (`events:<tenant>:space:<space>`). Only a member whose
role lets them read the space's collections or websites may watch (`{"type": "watching", ...}`);
anyone else gets `{"type": "error"}`, the same for a space of another tenant as for one that does
not exist. Membership is read again before an event is passed on when the last check is older than
MEMBERSHIP_SECONDS, so a member who is removed (or whose role no longer reads knowledge) stops
receiving within that time and is told `{"type": "unwatched", ...}`. `{"type": "unwatch"}` stops.

Client messages: `{"type": "ping"}` → `{"type": "pong"}`; `watch` and `unwatch` as above. Server
messages: `{"type": "job", "data": {id, task, name, status, progress, error, result}}`, with
`space_id`, `collection_id`, `document_id` or `website_id` when the job works on one. An event
that reaches a socket through both channels (the uploader watching their own space) is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
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
MEMBERSHIP_SECONDS = 5.0
MAX_WATCHED_SPACES = 20
_TICKET_PREFIX = "ws_ticket:"
_KNOWLEDGE = ("collection", "website")


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


async def space_role(listener: Listener, space_id: uuid.UUID) -> str | None:
    """The listener's role in the space now, or None when they (or their session) have no access."""
    from allting.auth import service as auth_service
    from allting.platform.db import transaction
    from allting.platform.tenancy import set_tenant
    from allting.spaces import service as spaces_service

    try:
        async with transaction() as db:
            await set_tenant(db, listener.tenant_id)
            ctx = await auth_service.context_for(
                db, listener.user_id, session_id=listener.session_id, api_key_id=listener.api_key_id
            )
            _space, role = await spaces_service.get_space_for(db, ctx, space_id)
    except AppError:
        return None
    return role


def _reads_knowledge(role: str | None, resource: str | None = None) -> bool:
    from allting.spaces import permissions

    return any(permissions.allowed(role, name, "read") for name in ((resource,) if resource else _KNOWLEDGE))


@dataclass
class _Watched:
    role: str
    checked_at: float


@dataclass
class _Connection:
    """One socket: who is on it, the spaces it watches, and the last events it sent."""

    listener: Listener
    websocket: WebSocket
    pubsub: object
    watched: dict[str, _Watched] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=32))

    async def send(self, kind: str, data: dict) -> None:
        await self.websocket.send_text(json.dumps({"type": kind, "data": data}))

    async def watch(self, raw_space_id) -> None:
        try:
            space_id = uuid.UUID(str(raw_space_id))
        except ValueError:
            await self.send("error", {"code": "invalid", "message": "space_id must be a space's id"})
            return
        key = str(space_id)
        if key not in self.watched and len(self.watched) >= MAX_WATCHED_SPACES:
            await self.send("error", {"code": "too_many", "message": "Watch at most 20 spaces at once"})
            return
        role = await space_role(self.listener, space_id)
        if role is None:
            await self.send("error", {"code": "not_found", "message": "Space not found", "space_id": key})
            return
        if not _reads_knowledge(role):
            await self.send(
                "error",
                {
                    "code": "forbidden",
                    "message": "Your role cannot see this space's knowledge",
                    "space_id": key,
                },
            )
            return
        if key not in self.watched:
            await self.pubsub.subscribe(jobs_service.space_channel(self.listener.tenant_id, key))
        self.watched[key] = _Watched(role, time.monotonic())
        await self.send("watching", {"space_id": key})

    async def unwatch(self, key: str, *, reason: str | None = None) -> None:
        if self.watched.pop(key, None) is not None:
            await self.pubsub.unsubscribe(jobs_service.space_channel(self.listener.tenant_id, key))
        if reason:
            await self.send("unwatched", {"space_id": key, "reason": reason})

    async def may_pass(self, space_key: str, text: str) -> bool:
        """A space event goes out only while the listener may still read that space's knowledge."""
        watched = self.watched.get(space_key)
        if watched is None:
            return False
        if time.monotonic() - watched.checked_at >= MEMBERSHIP_SECONDS:
            role = await space_role(self.listener, uuid.UUID(space_key))
            if not _reads_knowledge(role):
                await self.unwatch(space_key, reason="access")
                return False
            watched.role, watched.checked_at = role, time.monotonic()
        try:
            data = json.loads(text).get("data") or {}
        except (ValueError, AttributeError):
            return False
        return _reads_knowledge(watched.role, "website" if data.get("website_id") else "collection")


async def serve(websocket: WebSocket) -> None:
    """Authenticate, then forward the listener's job events until either side goes away."""
    listener = await authenticate(websocket)
    if listener is None:
        await websocket.close(code=POLICY_VIOLATION)
        return
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(jobs_service.events_channel(listener.tenant_id, listener.user_id))
    await websocket.accept()
    connection = _Connection(listener, websocket, pubsub)
    tasks = [
        asyncio.create_task(_forward(connection)),
        asyncio.create_task(_answer(connection)),
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


async def _forward(connection: _Connection) -> str:
    space_prefix = jobs_service.space_channel(connection.listener.tenant_id, "")
    while True:
        message = await connection.pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        data, channel = message["data"], message.get("channel")
        text = data.decode() if isinstance(data, bytes) else str(data)
        channel = channel.decode() if isinstance(channel, bytes) else str(channel or "")
        if text in connection.recent:
            continue  # the same event through the person's own channel and the space's
        if channel.startswith(space_prefix) and not await connection.may_pass(
            channel[len(space_prefix) :], text
        ):
            continue
        connection.recent.append(text)
        await connection.websocket.send_text(text)


async def _answer(connection: _Connection) -> str:
    websocket = connection.websocket
    try:
        while True:
            raw = await websocket.receive_text()
            try:
                message = json.loads(raw)
                kind = message.get("type")
            except (ValueError, AttributeError):
                message, kind = {}, None
            if kind == "ping":
                await websocket.send_text(json.dumps({"type": "pong"}))
            elif kind == "watch":
                await connection.watch(message.get("space_id"))
            elif kind == "unwatch":
                await connection.unwatch(str(message.get("space_id")))
            else:
                await websocket.send_text(
                    json.dumps(
                        {
                            "type": "error",
                            "data": {"message": 'Send {"type": "ping"}, "watch" or "unwatch"'},
                        }
                    )
                )
    except WebSocketDisconnect:
        return "disconnected"


async def _watch(listener: Listener) -> str:
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        if not await still_valid(listener):
            return "revoked"
