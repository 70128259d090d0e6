"""Tenant-bound secret encryption (provider keys, client secrets) with MultiFernet rotation.

Fernet has no associated data, so the binding (tenant and purpose) travels inside the encrypted
envelope and is checked on every decrypt: a ciphertext copied into another tenant's row, or from
one purpose to another, is refused instead of silently decrypting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from uuid import UUID

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from allting.platform.settings import get_settings

TOKEN_PREFIX = "enc:v1:"
ENVELOPE_VERSION = 1
_MASK = "…"
# Below this length, showing four characters would reveal too large a share of the secret.
_MIN_LENGTH_TO_SHOW_TAIL = 12


class SecretError(Exception):
    """Base for secret-handling failures. Messages never contain the secret or the ciphertext."""


class SecretUnreadableError(SecretError):
    """The token cannot be decrypted with any configured key, or its envelope is malformed."""


class SecretBindingError(SecretError):
    """The token decrypts, but was issued for another tenant or another purpose."""


KeyList = Sequence[str | bytes]


@lru_cache(maxsize=8)
def _multifernet(keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _configured_keys() -> tuple[bytes, ...]:
    raw = get_settings().secret("ENCRYPTION_KEY")
    return tuple(part.strip().encode() for part in raw.split(",") if part.strip())


def _fernet(keys: KeyList | None) -> MultiFernet:
    """MultiFernet over explicit keys (newest first) or ENCRYPTION_KEY from the settings."""
    if keys is None:
        normalised = _configured_keys()
    else:
        normalised = tuple(key.encode() if isinstance(key, str) else key for key in keys)
    if not normalised:
        raise SecretUnreadableError("no encryption key is configured (ENCRYPTION_KEY)")
    return _multifernet(normalised)


def _binding(tenant_id: UUID | None) -> str | None:
    return None if tenant_id is None else str(tenant_id)


def encrypt_secret(
    plaintext: str, *, tenant_id: UUID | None, purpose: str, keys: KeyList | None = None
) -> str:
    """Encrypt `plaintext` under the newest key, bound to `tenant_id` (None: platform-wide) and `purpose`."""
    envelope = {"v": ENVELOPE_VERSION, "t": _binding(tenant_id), "p": purpose, "s": plaintext}
    token = _fernet(keys).encrypt(json.dumps(envelope, separators=(",", ":")).encode())
    return TOKEN_PREFIX + token.decode("ascii")


def _strip_prefix(token: str) -> bytes:
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        raise SecretUnreadableError("stored secret is not an Allting encrypted value; re-enter it")
    return token[len(TOKEN_PREFIX) :].encode("ascii", errors="replace")


def decrypt_secret(token: str, *, tenant_id: UUID | None, purpose: str, keys: KeyList | None = None) -> str:
    """Return the plaintext, refusing tokens bound to another tenant or purpose."""
    try:
        raw = _fernet(keys).decrypt(_strip_prefix(token))
    except InvalidToken:
        raise SecretUnreadableError(
            "stored secret cannot be decrypted with the configured ENCRYPTION_KEY; re-enter it"
        ) from None
    try:
        envelope = json.loads(raw)
        version, bound_tenant, bound_purpose, secret = (envelope[k] for k in ("v", "t", "p", "s"))
    except (ValueError, TypeError, KeyError):
        raise SecretUnreadableError("stored secret has a malformed envelope; re-enter it") from None
    if version != ENVELOPE_VERSION or not isinstance(secret, str):
        raise SecretUnreadableError("stored secret has an unsupported envelope version; re-enter it")
    # The other tenant's id is deliberately not named: it would leak across the tenant boundary.
    if bound_tenant != _binding(tenant_id):
        raise SecretBindingError("stored secret belongs to a different tenant and was refused")
    if bound_purpose != purpose:
        raise SecretBindingError(f"stored secret was issued for another purpose than {purpose!r}")
    return secret


def rotate_secret(token: str, *, keys: KeyList | None = None) -> str:
    """Re-encrypt under the newest key; the binding inside the envelope is kept unchanged."""
    try:
        rotated = _fernet(keys).rotate(_strip_prefix(token))
    except InvalidToken:
        raise SecretUnreadableError(
            "stored secret cannot be decrypted with the configured ENCRYPTION_KEY; it cannot be rotated"
        ) from None
    return TOKEN_PREFIX + rotated.decode("ascii")


def mask_secret(value: str | None) -> str:
    """Display form of a secret: "…" and the last four characters, or only "…" for short values."""
    if not value:
        return ""
    if len(value) < _MIN_LENGTH_TO_SHOW_TAIL:
        return _MASK
    return _MASK + value[-4:]
