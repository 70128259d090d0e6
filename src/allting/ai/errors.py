"""Typed errors for model calls. Every message is scrubbed of credentials before it is stored.

Providers sometimes echo the API key they received ("Incorrect API key provided: sk-..."); the
gateway passes the key it used to `scrub`, and the pattern list catches keys it did not know about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
# Shortest key we replace literally; shorter strings would also match ordinary words.
_MIN_LITERAL_KEY_LENGTH = 6
_SECRET_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/\-]{6,}=*"),
    re.compile(
        r"(?i)(api[_-]?key|x-api-key|api-key|access[_-]?token)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}&]{6,}"
    ),
)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove the given secrets and anything that looks like an API key or bearer token."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_LITERAL_KEY_LENGTH:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class ProviderError(Exception):
    """A model call failed. `message` is safe to show to the user; `detail` is the scrubbed provider text."""

    code = "provider_error"
    default_message = "The AI provider could not process the request."

    def __init__(
        self, message: str | None = None, *, detail: str = "", code: str | None = None, model: str = ""
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.model = model
        if code:
            self.code = code
        super().__init__(f"{self.message} ({detail})" if detail else self.message)


class ProviderAuthError(ProviderError):
    code = "provider_auth"
    default_message = "The AI provider refused the API key. An administrator must check the key."


class ProviderQuotaError(ProviderError):
    code = "provider_quota"
    default_message = "The quota or credit at the AI provider is used up."


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    default_message = "The AI provider is rate limiting requests. Try again shortly."

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ModelNotFound(ProviderError):
    code = "model_not_found"
    default_message = "The AI provider does not know this model, or the key has no access to it."


class ContextTooLong(ProviderError):
    code = "context_too_long"
    default_message = "The conversation is too long for this model."


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    default_message = "The AI provider is unreachable or failing. Try again later."


class ProviderEndpointBlocked(ProviderError):
    code = "endpoint_blocked"
    default_message = "The model endpoint's address is not allowed by the outbound network policy."
