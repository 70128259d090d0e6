"""The shell of the web app: sign-in and sign-out, account, language and theme, HTML error pages."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from allting.auth import service as auth_service
from allting.deps import WEB_SESSION_COOKIE
from allting.platform.db import DbSession, utcnow
from allting.platform.errors import AppError, Forbidden, TooManyRequests, Unauthorized
from allting.platform.logging import get_logger
from allting.users import service as users_service
from allting.users.models import User
from allting.users.schemas import ApiKeyCreate, MeUpdate
from allting.web.rendering import (
    LANG_COOKIE,
    LANGUAGES,
    THEME_COOKIE,
    THEMES,
    CsrfFailed,
    LoginRequired,
    Page,
    check_csrf,
    flash,
    gettext_for,
    page_for,
    pick_language,
    redirect,
    render,
    set_cookie,
)

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)
Csrf = Depends(check_csrf)


async def signed_in(request: Request, db: DbSession) -> Page:
    """The signed-in person of a page request (web session cookie), else a redirect to /login."""
    token = request.cookies.get(WEB_SESSION_COOKIE)
    if not token:
        raise LoginRequired()
    try:
        ctx = await auth_service.authenticate_token(db, token, purpose="web")
    except (Unauthorized, Forbidden) as exc:
        raise LoginRequired() from exc
    ctx.client_address = getattr(request.state, "client_address", None)
    ctx.correlation_id = getattr(request.state, "correlation_id", None)
    request.state.ctx = ctx
    user = await db.get(User, ctx.user_id)
    preferences = (user.preferences or {}) if user else {}
    theme = preferences.get("theme") or request.cookies.get(THEME_COOKIE)
    page = Page(
        ctx=ctx,
        language=pick_language(request, preferences.get("language")),
        theme=theme if theme in THEMES else "system",
        user_name=user.name if user else None,
        user_email=user.email if user else None,
    )
    request.state.page = page
    return page


SignedIn = Annotated[Page, Depends(signed_in)]


def done(request: Request, url: str, text: str | None = None, kind: str = "ok") -> Response:
    response = redirect(request, url)
    if text:
        flash(response, request, text, kind)
    return response


# Service errors with a known code have a message in the catalog (see allting.web.errors).


def _(message: str) -> str:  # marks the service error messages for extraction; translated when shown
    return message


ERROR_MESSAGES: dict[str, str] = {
    "model_unavailable": _("The AI model is not available right now. Try again later or pick another model."),
    "no_model": _("No AI model is available here. Ask an administrator to add and enable one."),
    "no_embedding_model": _("No embedding model is enabled, so documents cannot be indexed yet."),
    "budget_exceeded": _("The token budget for this month is used up. Ask an administrator to raise it."),
    "quota_exceeded": _("The storage quota is used up."),
    "login_throttled": _("Too many sign-in attempts. Wait a moment and try again."),
    "login_failed": _("Wrong e-mail address or password."),
    "account_disabled": _("This account is disabled."),
    "csrf_failed": _("The page had expired. Reload it and try again."),
    "document_unreadable": _("The document could not be read. It may be damaged, empty or protected."),
    "unsupported_media_type": _("This file type is not supported."),
    "payload_too_large": _("The file is too large."),
    "duplicate_document": _("This document is already in the collection."),
    "permission_denied": _("You do not have permission to do that."),
    "space_permission_denied": _("You do not have permission to do that in this space."),
    "forbidden": _("You do not have permission to do that."),
    "not_found": _("It was not found. It may have been removed."),
    "rate_limited": _("Too many requests. Wait a moment and try again."),
    "provider_auth": _("The AI provider refused the key. Check the key in the provider settings."),
    "provider_unavailable": _("The AI provider could not be reached. Try again later."),
    "provider_rate_limited": _("The AI provider is busy. Try again in a moment."),
    "provider_quota": _("The account at the AI provider has run out of quota."),
    "provider_error": _("The AI provider could not answer. Try again later."),
    "model_not_found": _(
        "The AI provider does not know this model. An administrator must check the model name."
    ),
    "endpoint_blocked": _(
        "The model's address is not allowed by the network policy. An administrator must check it."
    ),
    "context_too_long": _("The conversation is too long for the model. Start a new conversation."),
    "weak_password": _("The password is too weak. Choose a longer one."),
    "wrong_password": _("The current password is wrong."),
    "invitation_invalid": _("The invitation link is invalid or has expired."),
    "email_taken": _("That e-mail address is already in use."),
    "group_exists": _("A group with that name already exists."),
    "role_exists": _("A role with that name already exists."),
    "role_in_use": _("The role is in use and cannot be removed."),
    "permission_escalation": _("You cannot hand out permissions you do not hold yourself."),
    "last_owner": _("The last owner cannot be removed or demoted."),
    "owner_required": _("Only an owner can make someone an owner or change an owner's role."),
    "last_space_admin": _("A space needs at least one administrator."),
    "already_member": _("That person is already a member."),
    "egress_blocked": _("The address is not allowed."),
    "crawl_running": _("A crawl of this website is already running. Wait for it to finish."),
    "session_ended": _("Your session has ended. Sign in again."),
    "provider_exists": _("A provider with that name already exists. Choose another name."),
    "model_exists": _("A model with that display name already exists. Choose another name."),
    "credential_unreadable": _("The stored key of the provider cannot be read. Enter the key again."),
}
# Why a document or a crawl failed, as the worker records it (fixed sentences only).
DOCUMENT_ERRORS: tuple[str, ...] = (
    _("The file is damaged or incomplete and could not be read."),
    _("The file is password-protected. Remove the password and upload it again."),
    _("The PDF is password-protected; remove the password and upload it again."),
    _("The document contains no readable text."),
    _("The document is nested too deeply to be read."),
    _("The document is too large to process. Split it into smaller files."),
    _("The file contains two parts with the same name, so it was not opened."),
    _("The CSV file could not be read: a field is too long or its quoting is broken."),
    _("The recording contains no speech that could be transcribed."),
    _("The original file is missing from storage; upload it again"),
    _("The collection has no embedding model; choose one and process the document again"),
    _("The website has no embedding model; add it again to choose one"),
    _("The stored password of the website cannot be read; enter it again"),
)
# Messages with values, as services and the worker write them: "%(name)s" stands for a value. A
# message that matches one is shown translated with its values (allting.web.errors).
PARAMETERIZED_MESSAGES: tuple[str, ...] = (
    _("The file is %(size)s MB; the limit is %(limit)s MB. Split it into smaller files."),
    _(
        "Your organisation's storage quota of %(quota)s MB is used up (%(used)s MB in use; this file "
        "needs %(needed)s MB). Delete documents you no longer need, or ask the operator to raise the quota."
    ),
    _("Attachments can be at most %(limit)s MB"),
    _("Images can be at most %(limit)s MB"),
    _("The request body is larger than %(limit)s bytes"),
    _("The monthly budget of %(tokens)s tokens for your organisation is used up; it resets on %(date)s"),
    _("The monthly budget of %(tokens)s tokens for this space is used up; it resets on %(date)s"),
    _("The monthly budget of %(tokens)s tokens for your account is used up; it resets on %(date)s"),
    _("The monthly budget of %(cost)s USD for your organisation is used up; it resets on %(date)s"),
    _("The monthly budget of %(cost)s USD for this space is used up; it resets on %(date)s"),
    _("The monthly budget of %(cost)s USD for your account is used up; it resets on %(date)s"),
    _(
        "Reading the document took longer than %(seconds)s seconds, the limit for one document. Split it "
        "into smaller files or save it in a simpler format."
    ),
    _("The file contains %(parts)s parts, more than the limit of %(limit)s, which looks like a zip bomb."),
    _(
        "A part of the file expands %(ratio)s times when unpacked (the limit is %(limit)s), which looks "
        "like a zip bomb."
    ),
    _("The file expands to more than %(limit)s MB when unpacked (%(size)s MB), which looks like a zip bomb."),
    # Why a model cannot be used yet (allting.ai.service.lock_reason), on the AI models page.
    _("The provider account '%(name)s' has no API key"),
    _("Its provider account is deactivated"),
    _("No %(type)s key is configured for this organisation"),
    _("No %(type)s key is configured: add a provider account under AI providers"),
)
# A rate limit's wait is in the error (Retry-After), not in its sentence.
WAIT_MESSAGE = _("Too many attempts. Try again in %(seconds)s seconds.")
del _


def error_text(request: Request, exc: AppError) -> str:
    from allting.web.errors import error_message

    return error_message(page_for(request).language, exc)


async def form_change(
    request: Request,
    db: AsyncSession,
    back: str,
    change: Callable[[], Awaitable[object]],
    success: str,
    *,
    invalid: str | None = None,
) -> Response:
    """Make a form's change and go back to `back`, saying `success`, or why the change was refused,
    or `invalid` when the form's values make no valid request (`change` raised ValueError, as
    pydantic's validation does). The change runs in a savepoint, so a refused one leaves nothing
    half done in the request's transaction."""
    try:
        async with db.begin_nested():
            await change()
    except AppError as exc:
        return done(request, back, error_text(request, exc), "error")
    except ValueError:
        if invalid is None:
            raise
        return done(request, back, invalid, "error")
    return done(request, back, success)


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


# Sign-in and sign-out


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None, tenant: str | None = None):
    return render(
        request,
        "web/login.html",
        {
            "next": _safe_next(next),
            "error": None,
            "email": "",
            "identity_providers": await _identity_providers(tenant, next),
        },
    )


async def _identity_providers(tenant: str | None, next_path: str | None) -> list[dict]:
    """One button per configured single sign-on provider, each returning to `next` after sign-in."""
    from urllib.parse import quote

    from allting.auth import sso

    buttons = (await sso.list_providers(tenant[:63] if tenant else None))["providers"]
    back = quote(_safe_next(next_path))
    return [
        {
            "name": button["label"],
            "url": button["start_url"] + ("&" if "?" in button["start_url"] else "?") + f"next={back}",
        }
        for button in buttons
    ]


@router.post("/login", dependencies=[Csrf])
async def login_form(
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
):
    _ = gettext_for(page_for(request).language)
    try:
        issued = await auth_service.login(
            email.strip(),
            password,
            tenant_slug=None,
            client_address=getattr(request.state, "client_address", None),
            user_agent=request.headers.get("user-agent"),
            correlation_id=getattr(request.state, "correlation_id", None),
            kind="web",
        )
    except TooManyRequests as exc:
        retry = int((exc.headers or {}).get("Retry-After", "60") or 60)
        minutes = max(1, (retry + 59) // 60)
        message = _("Too many attempts. Try again in %(minutes)d minutes.") % {"minutes": minutes}
        return _login_again(request, email, next, message, 429)
    except Unauthorized as exc:
        if exc.code == "account_disabled":
            message = _("This account is disabled. Contact your administrator.")
        else:
            message = _("Wrong e-mail or password.")
        return _login_again(request, email, next, message, 401)
    response = redirect(request, _safe_next(next))
    lifetime = int((issued.access_expires_at - utcnow()).total_seconds())
    set_cookie(response, request, WEB_SESSION_COOKIE, issued.access_token, max_age=max(lifetime, 60))
    # A fresh seed for the signed-in session's CSRF tokens.
    request.state.csrf_seed = None
    return response


def _login_again(request: Request, email: str, next: str, message: str, status: int) -> HTMLResponse:
    return render(
        request,
        "web/login.html",
        {"next": _safe_next(next), "error": message, "email": email},
        status_code=status,
    )


@router.post("/logout", dependencies=[Csrf])
async def logout_form(request: Request, db: DbSession):
    token = request.cookies.get(WEB_SESSION_COOKIE)
    if token:
        try:
            ctx = await auth_service.authenticate_token(db, token, purpose="web")
            await auth_service.logout(db, ctx)
        except (Unauthorized, Forbidden):
            pass
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(WEB_SESSION_COOKIE, path="/")
    return response


# Language and theme (signed in: stored in preferences; otherwise in a cookie)


async def _optional_page(request: Request, db) -> Page | None:
    try:
        return await signed_in(request, db)
    except LoginRequired:
        return None


@router.post("/preferences", dependencies=[Csrf])
async def preferences_form(
    request: Request,
    db: DbSession,
    language: Annotated[str | None, Form()] = None,
    theme: Annotated[str | None, Form()] = None,
    back: Annotated[str, Form(max_length=2000)] = "/",
):
    language = language if language in LANGUAGES else None
    theme = theme if theme in THEMES else None
    page = await _optional_page(request, db)
    if page is not None and (language or theme):
        await users_service.update_me(db, page.ctx, MeUpdate(language=language, theme=theme))
    response = redirect(request, _safe_next(back))
    if language:
        set_cookie(response, request, LANG_COOKIE, language, max_age=60 * 60 * 24 * 365)
    if theme:
        set_cookie(response, request, THEME_COOKIE, theme, max_age=60 * 60 * 24 * 365)
    return response


# Account


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, db: DbSession, page: SignedIn):
    keys = await users_service.list_api_keys(db, page.ctx)
    return render(
        request,
        "web/account.html",
        {"keys": keys, "new_key": None},
    )


@router.post("/account", dependencies=[Csrf])
async def update_account_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    name: Annotated[str, Form(max_length=200)] = "",
    language: Annotated[str, Form()] = "sv",
    theme: Annotated[str, Form()] = "system",
):
    _ = gettext_for(page.language)
    data = MeUpdate(
        name=name.strip() or None,
        language=language if language in LANGUAGES else None,
        theme=theme if theme in THEMES else None,
    )
    await users_service.update_me(db, page.ctx, data)
    response = done(request, "/account", _("Your account is saved."))
    if data.language:
        set_cookie(response, request, LANG_COOKIE, data.language, max_age=60 * 60 * 24 * 365)
    return response


@router.post("/account/keys", dependencies=[Csrf])
async def create_api_key_form(
    request: Request, db: DbSession, page: SignedIn, name: Annotated[str, Form(max_length=100)] = ""
):
    _ = gettext_for(page.language)
    try:
        async with db.begin_nested():
            _key, secret = await users_service.create_api_key(
                db, page.ctx, ApiKeyCreate(name=name.strip() or "API key")
            )
    except AppError as exc:
        return done(request, "/account", error_text(request, exc), "error")
    keys = await users_service.list_api_keys(db, page.ctx)
    # Shown once, in this response only; a reload does not show it again.
    return render(request, "web/account.html", {"keys": keys, "new_key": secret})


@router.post("/account/keys/{key_id}/revoke", dependencies=[Csrf])
async def revoke_api_key_form(request: Request, db: DbSession, page: SignedIn, key_id: uuid.UUID):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/account",
        lambda: users_service.revoke_api_key(db, page.ctx, key_id),
        _("The key is revoked."),
    )


# HTML error pages for everything outside /api, and the redirects pages need.


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api") or path.startswith("/static") or path == "/docs")


def _error_page(request: Request, status: int, message: str | None = None) -> HTMLResponse:
    return render(request, "web/error.html", {"status": status, "message": message}, status_code=status)


def install_web(app: FastAPI) -> None:
    """Include the page routers and render errors as pages outside /api (the API keeps its JSON)."""
    from allting.web.routers import page_routers

    for page_router in page_routers():
        app.include_router(page_router)
    handlers = app.exception_handlers
    api_app_error = handlers[AppError]
    api_http_error = handlers[StarletteHTTPException]
    api_unexpected = handlers[Exception]

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        response = RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
        response.delete_cookie(WEB_SESSION_COOKIE, path="/")
        return response

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        if not _wants_html(request):
            return JSONResponse({"code": "csrf_failed", "message": "Missing or wrong CSRF token"}, 403)
        _ = gettext_for(page_for(request).language)
        return _error_page(request, 403, _("The form had expired. Go back, reload the page and try again."))

    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> Response:
        if not _wants_html(request):
            return await api_app_error(request, exc)
        if exc.status_code == 401:
            return await login_required(request, LoginRequired())
        return _error_page(request, exc.status_code, error_text(request, exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not _wants_html(request):
            return await api_http_error(request, exc)
        return _error_page(request, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        if not _wants_html(request):
            return await api_unexpected(request, exc)
        log.exception("page.failed", path=request.url.path)
        return _error_page(request, 500)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")
