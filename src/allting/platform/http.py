"""HTTP middleware: correlation id, client address, body size limit, security headers; error rendering."""

from __future__ import annotations

import ipaddress
import re
import uuid
from contextvars import ContextVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allting.platform.errors import AppError
from allting.platform.logging import correlation_id, get_logger

log = get_logger(__name__)
# The caller's address for code that runs before a request context exists (e.g. authentication).
request_client_address: ContextVar[str | None] = ContextVar("request_client_address", default=None)
_VALID_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

API_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(self), geolocation=()",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


def _client_address(scope: Scope, headers: dict[bytes, bytes], trusted_proxies: list) -> str | None:
    peer = scope.get("client")
    address = peer[0] if peer else None
    if not trusted_proxies or address is None or not _in_networks(address, trusted_proxies):
        return address
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        if not _in_networks(hop, trusted_proxies):
            return hop
    return address


def _in_networks(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class RequestContextMiddleware:
    """Correlation id, client address, request body limit and security headers for every request."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, trusted_proxies: list[str]
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.trusted_proxies = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-correlation-id", b"").decode("latin-1")
        cid = incoming if _VALID_CORRELATION_ID.match(incoming) else uuid.uuid4().hex
        token = correlation_id.set(cid)
        state = scope.setdefault("state", {})
        state["correlation_id"] = cid
        state["client_address"] = _client_address(scope, headers, self.trusted_proxies)
        address_token = request_client_address.set(state["client_address"])
        response_started = False
        add_headers = _with_headers(send, scope, cid)

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await add_headers(message)

        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            is_multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
            limit = self.max_upload_bytes if is_multipart else self.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _send_error(tracked_send, 413, "payload_too_large", _too_large(limit))
                return
            await self.app(scope, _limited(receive, limit), tracked_send)
        except _BodyTooLarge:
            if not response_started:
                await _send_error(tracked_send, 413, "payload_too_large", _too_large(limit))
        except Exception as exc:
            # Unhandled errors are logged by the application's handler further out; the answer is
            # given here so that it too carries the correlation id and the security headers.
            if not response_started:
                if (dependency := dependency_outage(exc)) is not None:
                    log.warning(
                        "request.dependency_unavailable", dependency=dependency, error=type(exc).__name__
                    )
                    response = JSONResponse(
                        _unavailable_body(dependency),
                        status_code=503,
                        headers={"Retry-After": UNAVAILABLE_RETRY_AFTER, "connection": "close"},
                    )
                    await response({"type": "http"}, _no_receive, tracked_send)
                    return
                await _send_error(tracked_send, 500, "internal_error", INTERNAL_ERROR_MESSAGE)
            raise
        finally:
            request_client_address.reset(address_token)
            correlation_id.reset(token)


INTERNAL_ERROR_MESSAGE = "Something went wrong on our side; quote the correlation id to support"
UNAVAILABLE_MESSAGE = "A service this request needs is briefly unavailable; try again shortly"
UNAVAILABLE_RETRY_AFTER = "5"


def dependency_outage(exc: BaseException) -> str | None:
    """Which dependency (postgres, redis) an exception shows to be unreachable, or None.

    A PostgreSQL or Redis restart is not a bug: the request gets 503 with Retry-After, not 500.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RedisConnectionError | RedisTimeoutError):
            return "redis"
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return "postgres"
        if isinstance(current, PoolTimeoutError):  # every pooled connection stayed busy
            return "postgres"
        sqlstate = getattr(current, "sqlstate", None)
        # Class 08: connection exceptions; 57P01-57P03: shutdown, crash shutdown, cannot connect now.
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")
        ):
            return "postgres"
        if type(current).__name__ in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return "postgres"
        # A refused, reset or timed-out connection, or a Unix socket that is gone (no file name:
        # not a missing file the request asked for).
        if isinstance(current, ConnectionError | TimeoutError) or (
            isinstance(current, FileNotFoundError) and current.filename is None
        ):
            return "service"
        current = current.__cause__ or current.__context__
    return None


def _unavailable_body(code_source: str) -> dict:
    return {
        "code": "service_unavailable",
        "message": UNAVAILABLE_MESSAGE,
        "details": {"dependency": code_source},
        "correlation_id": correlation_id.get(),
    }


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes"


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI passes it on instead of a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(limit)
        return message

    return wrapped


def _with_headers(send: Send, scope: Scope, cid: str) -> Send:
    is_api = scope["path"].startswith("/api") and not scope["path"].startswith("/api/docs")

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {name.lower() for name, _ in headers}
            for name, value in API_SECURITY_HEADERS.items():
                if name.lower().encode() not in names:
                    headers.append((name.encode(), value.encode()))
            if b"content-security-policy" not in names:
                headers.append((b"content-security-policy", (API_CSP if is_api else PAGE_CSP).encode()))
            if is_api and b"cache-control" not in names:
                headers.append((b"cache-control", b"no-store"))
            headers.append((b"x-correlation-id", cid.encode()))
            message["headers"] = headers
        await send(message)

    return wrapped


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    """An error answer from the middleware itself; `send` adds the correlation id and headers."""
    response = JSONResponse(
        {"code": code, "message": message, "details": None, "correlation_id": correlation_id.get()},
        status_code=status,
        headers={"connection": "close"},
    )
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def error_body(request: Request, code: str, message: str, details=None) -> dict:
    return {
        "code": code,
        "message": message,
        "details": details,
        "correlation_id": getattr(request.state, "correlation_id", None),
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> JSONResponse:
        if exc.status_code == 403:
            await _audit_denied(request, exc)
        return JSONResponse(
            error_body(request, exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
            details.append(
                {"field": ".".join(location) or None, "message": error.get("msg"), "type": error.get("type")}
            )
        summary = "; ".join(f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in details)
        return JSONResponse(
            error_body(request, "validation_error", f"Invalid request: {summary}", details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            403: "forbidden",
            413: "payload_too_large",
        }
        message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        return JSONResponse(
            error_body(request, codes.get(exc.status_code, "http_error"), message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def maybe_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """Connection failures to PostgreSQL or Redis answer 503; anything else is a 500."""
        if (dependency := dependency_outage(exc)) is None:
            return await unexpected_error(request, exc)
        log.warning(
            "request.dependency_unavailable",
            path=request.url.path,
            dependency=dependency,
            error=type(exc).__name__,
        )
        body = _unavailable_body(dependency)
        body["correlation_id"] = getattr(request.state, "correlation_id", None)
        return JSONResponse(body, status_code=503, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER})

    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    # Handled inside the exception middleware (not re-raised to the server, unlike `Exception`).
    for outage_type in (OSError, DBAPIError, RedisError, PoolTimeoutError):
        app.add_exception_handler(outage_type, maybe_unavailable)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.failed", path=request.url.path)
        return JSONResponse(
            error_body(request, "internal_error", INTERNAL_ERROR_MESSAGE),
            status_code=500,
        )


async def _audit_denied(request: Request, exc: AppError) -> None:
    """Record a permission denial in its own transaction (the request's was rolled back)."""
    from allting.audit import service as audit
    from allting.platform.db import transaction
    from allting.platform.tenancy import set_tenant

    ctx = getattr(request.state, "ctx", None)
    if ctx is None:
        return
    try:
        async with transaction() as db:
            await set_tenant(db, ctx.tenant_id)
            await audit.record(
                db,
                ctx,
                "permission.denied",
                outcome="denied",
                changes={"path": request.url.path, "method": request.method, "code": exc.code},
            )
    except Exception as audit_error:
        log.warning("audit.denied_not_recorded", error=type(audit_error).__name__)
