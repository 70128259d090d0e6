"""Rendering pages: one Jinja environment per language, CSRF tokens, the signed-in page context.

Templates live next to their domain (`src/allting/<domain>/templates/<domain>/...`) and are
addressed as "<domain>/<page>.html". Messages are English in the templates and translated with
Babel catalogs under `src/allting/locale`, compiled in memory at start-up (no build step).
"""

from __future__ import annotations

import gettext
import hashlib
import hmac
import io
import json
import secrets
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape

from allting.deps import WEB_SESSION_COOKIE, Ctx
from allting.platform.settings import get_settings

PACKAGE_DIR = Path(__file__).resolve().parent.parent
LOCALE_DIR = PACKAGE_DIR / "locale"
LANGUAGES = ("sv", "en")
DEFAULT_LANGUAGE = "sv"
CSRF_COOKIE = "allting_csrf"
LANG_COOKIE = "allting_lang"
THEME_COOKIE = "allting_theme"
THEMES = ("system", "light", "dark")
CSRF_FIELD = "csrf_token"
FLASH_COOKIE = "allting_flash"
CSRF_HEADER = "x-csrf-token"


class LoginRequired(Exception):
    """A page needs a signed-in person; rendered as a redirect to /login."""


class CsrfFailed(Exception):
    """A form arrived without the token of this browser's session."""


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog for a language, compiled from its .po file in memory."""
    if language == "en":
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    po_path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def _template_loader() -> ChoiceLoader:
    """ "spaces/list.html" is src/allting/spaces/templates/list.html; "web/base.html" the shell's."""
    domains = {path.parent.name: FileSystemLoader(path) for path in sorted(PACKAGE_DIR.glob("*/templates"))}
    return ChoiceLoader([PrefixLoader(domains), FileSystemLoader(PACKAGE_DIR / "templates")])


@cache
def environment(language: str) -> Environment:
    env = Environment(
        loader=_template_loader(),
        autoescape=select_autoescape(["html", "xml"], default_for_string=True),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language), newstyle=True)
    env.globals["LANGUAGES"] = LANGUAGES
    env.filters["datetime"] = _format_datetime
    return env


def _format_datetime(value) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M")


def gettext_for(language: str):
    return translations(language).gettext


def pick_language(request: Request, preferred: str | None = None) -> str:
    """The user's choice, else the language cookie, else the browser's Accept-Language."""
    for choice in (preferred, request.cookies.get(LANG_COOKIE)):
        if choice in LANGUAGES:
            return choice
    header = request.headers.get("accept-language", "")
    ranked = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower()[:2]))
    for _, _, tag in sorted(ranked):
        if tag in LANGUAGES:
            return tag
    return DEFAULT_LANGUAGE


# CSRF: a double-submit token. A random seed lives in an HttpOnly cookie; the token in every form
# is an HMAC of that seed and the session cookie, so it is useless without both cookies and changes
# when the session changes (sign-in, sign-out).


def _csrf_seed(request: Request) -> str:
    seed = getattr(request.state, "csrf_seed", None) or request.cookies.get(CSRF_COOKIE)
    if not seed or len(seed) < 20:
        seed = secrets.token_urlsafe(32)
    request.state.csrf_seed = seed
    return seed


def csrf_token(request: Request, session_token: str | None = None) -> str:
    if session_token is None:
        session_token = getattr(request.state, "web_session", None) or request.cookies.get(
            WEB_SESSION_COOKIE, ""
        )
    key = hashlib.sha256(b"allting-csrf|" + get_settings().jwt_secret.encode()).digest()
    message = f"{_csrf_seed(request)}|{session_token}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def check_csrf(request: Request) -> None:
    """Refuse a POST whose form field (or X-CSRF-Token header) is not this session's token."""
    if not request.cookies.get(CSRF_COOKIE):
        raise CsrfFailed()
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    expected = csrf_token(request)
    if not sent or not hmac.compare_digest(sent, expected):
        raise CsrfFailed()


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=is_secure(request),
        path="/",
    )


def _ensure_csrf_cookie(request: Request, response) -> None:
    seed = getattr(request.state, "csrf_seed", None)
    if seed and seed != request.cookies.get(CSRF_COOKIE):
        set_cookie(response, request, CSRF_COOKIE, seed, max_age=60 * 60 * 24 * 30)


@dataclass
class Page:
    """Who is looking at a page, in which language and theme."""

    ctx: Ctx | None
    language: str
    theme: str
    user_name: str | None = None
    user_email: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def signed_in(self) -> bool:
        return self.ctx is not None

    def can(self, permission: str) -> bool:
        return self.ctx is not None and self.ctx.has(permission)


def page_for(request: Request) -> Page:
    page = getattr(request.state, "page", None)
    if page is None:
        theme = request.cookies.get(THEME_COOKIE)
        page = Page(
            ctx=None,
            language=pick_language(request),
            theme=theme if theme in THEMES else "system",
        )
        request.state.page = page
    return page


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    page = page_for(request)
    env = environment(page.language)
    values = {
        "request": request,
        "page": page,
        "csrf_token": csrf_token(request),
        "flash": take_flash(request),
        "error_messages": _client_error_messages(page.language),
        "error_templates": _client_error_templates(page.language),
        **(context or {}),
    }
    html = env.get_template(template).render(values)
    response = HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})
    _ensure_csrf_cookie(request, response)
    if getattr(request.state, "clear_flash", False):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def _client_error_messages(language: str) -> dict[str, str]:
    from allting.web.errors import client_messages

    return client_messages(language)


def _client_error_templates(language: str) -> list[dict]:
    from allting.web.errors import client_templates

    return client_templates(language)


def take_flash(request: Request) -> dict | None:
    """The one-time message a redirect left in a cookie (so no message text travels in URLs)."""
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    request.state.clear_flash = True
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("text"), str) else None


def flash(response, request: Request, text: str, kind: str = "ok") -> None:
    value = json.dumps({"kind": kind, "text": text[:500]}, ensure_ascii=True)
    set_cookie(response, request, FLASH_COOKIE, value, max_age=60)


def redirect(request: Request, url: str) -> RedirectResponse:
    """POST → 303 to the page that shows the result."""
    response = RedirectResponse(url, status_code=303)
    _ensure_csrf_cookie(request, response)
    return response


def parse_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
