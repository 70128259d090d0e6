"""Service errors in the page's language: known codes have a catalog message (allting.web.web.ERROR_MESSAGES), others keep theirs.

Messages that carry values (a size limit, a quota, a date, seconds to wait) are translated through
templates with named placeholders (allting.web.web.PARAMETERIZED_MESSAGES): the English message is
matched against the English template, and the values found are put into the translated template,
numbers written the way the language writes them ("2,5", "1 000" in Swedish). Pages do this in
Python; scripts get the same templates (`client_templates`) and do it in app.js.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache

from allting.platform.errors import AppError, TooManyRequests
from allting.web.rendering import gettext_for

_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_WAIT_CODES = ("rate_limited", "login_throttled")


def _messages() -> dict[str, str]:
    from allting.web.web import ERROR_MESSAGES

    return ERROR_MESSAGES


@dataclass(frozen=True)
class _Template:
    text: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]


def _compile(text: str) -> _Template:
    parts, names, position = [], [], 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[position : match.start()]))
        parts.append("(.+?)")
        names.append(match.group(1))
        position = match.end()
    parts.append(re.escape(text[position:]))
    return _Template(text, re.compile("".join(parts), re.DOTALL), tuple(names))


@cache
def _templates() -> tuple[_Template, ...]:
    from allting.web.web import PARAMETERIZED_MESSAGES

    return tuple(_compile(text) for text in PARAMETERIZED_MESSAGES)


def localize_number(language: str, value: str) -> str:
    """A number as the service wrote it ("1,000", "2.5") as the language writes it; other text as it is."""
    if not _NUMBER.fullmatch(value):
        return value
    from babel.numbers import format_decimal

    try:
        return format_decimal(Decimal(value.replace(",", "")), locale=language)
    except (InvalidOperation, ValueError):
        return value


def fill(template: str, values: dict[str, object]) -> str:
    """Put values into `%(name)s` / `%(name)d` placeholders; a missing one stays as it is."""
    return _PLACEHOLDER.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )


def translate_parameterized(language: str, message: str) -> str | None:
    """The message in the language when it is one of the templates and the catalog translates it."""
    if language == "en" or not message:
        return None
    gettext = gettext_for(language)
    for template in _templates():
        match = template.pattern.fullmatch(message)
        if match is None:
            continue
        translated = gettext(template.text)
        if translated == template.text:
            return None
        values = {
            name: localize_number(language, value)
            for name, value in zip(template.names, match.groups(), strict=True)
        }
        return fill(translated, values)
    return None


def translate_error(language: str, code: str | None, message: str) -> str:
    """The message in the page's language: its own translation, its template's, else the code's, else as it came."""
    gettext = gettext_for(language)
    translated = gettext(message) if message else message
    if translated != message or language == "en":
        return translated or message
    if (filled := translate_parameterized(language, message)) is not None:
        return filled
    if code in _messages():
        return gettext(_messages()[code])
    return message


def error_message(language: str, exc: AppError) -> str:
    if isinstance(exc, TooManyRequests) and exc.code in _WAIT_CODES:
        # How long to wait is in the error, not in its sentence: say it.
        from allting.web.web import WAIT_MESSAGE

        seconds = max(1, int(exc.retry_after))
        return fill(gettext_for(language)(WAIT_MESSAGE), {"seconds": localize_number(language, str(seconds))})
    return translate_error(language, exc.code, exc.message)


def client_messages(language: str) -> dict[str, str]:
    """Code → message in the page's language, for scripts that show JSON API errors."""
    if language == "en":
        return {}
    gettext = gettext_for(language)
    return {code: gettext(text) for code, text in _messages().items()}


def client_templates(language: str) -> list[dict]:
    """The message templates a script needs to translate errors with values: a JavaScript regular
    expression for the English message, the names of its groups in order, and the translation."""
    if language == "en":
        return []
    gettext = gettext_for(language)
    found = []
    for template in _templates():
        translated = gettext(template.text)
        if translated != template.text:
            found.append(
                {"pattern": _js_pattern(template.text), "names": list(template.names), "text": translated}
            )
    return found


_JS_SPECIAL = re.compile(r"[.*+?^${}()|[\]\\/]")


def _js_pattern(text: str) -> str:
    parts, position = [], 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(_JS_SPECIAL.sub(lambda m: "\\" + m.group(0), text[position : match.start()]))
        parts.append("([\\s\\S]+?)")
        position = match.end()
    parts.append(_JS_SPECIAL.sub(lambda m: "\\" + m.group(0), text[position:]))
    return "^" + "".join(parts) + "$"


def document_error_texts(language: str) -> dict[str, str]:
    """English failure reason → the page's language, for the knowledge tab's script."""
    from allting.web.web import DOCUMENT_ERRORS

    if language == "en":
        return {}
    gettext = gettext_for(language)
    return {text: gettext(text) for text in DOCUMENT_ERRORS if gettext(text) != text}
