"""Service errors in the page's language: known codes have a catalog message (allting.web.web.ERROR_MESSAGES), others keep theirs."""

from __future__ import annotations

from allting.platform.errors import AppError
from allting.web.rendering import gettext_for


def _messages() -> dict[str, str]:
    from allting.web.web import ERROR_MESSAGES

    return ERROR_MESSAGES


def translate_error(language: str, code: str | None, message: str) -> str:
    """The message in the page's language: its own translation, else the code's, else as it came."""
    gettext = gettext_for(language)
    translated = gettext(message) if message else message
    if translated != message or language == "en":
        return translated or message
    if code in _messages():
        return gettext(_messages()[code])
    return message


def error_message(language: str, exc: AppError) -> str:
    return translate_error(language, exc.code, exc.message)


def client_messages(language: str) -> dict[str, str]:
    """Code → message in the page's language, for scripts that show JSON API errors."""
    if language == "en":
        return {}
    gettext = gettext_for(language)
    return {code: gettext(text) for code, text in _messages().items()}


def document_error_texts(language: str) -> dict[str, str]:
    """English failure reason → the page's language, for the knowledge tab's script."""
    from allting.web.web import DOCUMENT_ERRORS

    if language == "en":
        return {}
    gettext = gettext_for(language)
    return {text: gettext(text) for text in DOCUMENT_ERRORS if gettext(text) != text}
