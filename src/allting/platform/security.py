"""Passwords, signed tokens, API keys and constant-time comparison."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
TOKEN_ALGORITHM = "HS256"
TOKEN_ISSUER = "allting"
API_KEY_PREFIX = "alt_"

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def password_problem(password: str) -> str | None:
    """Why a new password is not acceptable (ASVS 6.2), or None."""
    if len(password) < PASSWORD_MIN_LENGTH:
        return f"must be at least {PASSWORD_MIN_LENGTH} characters"
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"must be at most {PASSWORD_MAX_LENGTH} characters"
    if not password.strip():
        return "must not be only spaces"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password; unknown users are checked against a dummy hash so timing matches."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password_off_loop(password: str) -> str:
    """hash_password in a worker thread: argon2 takes about 0.25 s of CPU, which on the event loop
    would stall every other request of the process (argon2-cffi releases the GIL meanwhile)."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    """verify_password in a worker thread, for the same reason."""
    return await asyncio.to_thread(verify_password, password_hash, password)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equals(left: str | None, right: str | None) -> bool:
    if not left or not right:
        return False
    return hmac.compare_digest(left.encode(), right.encode())


@dataclass(frozen=True)
class NewApiKey:
    secret: str
    prefix: str
    key_hash: str


def generate_api_key() -> NewApiKey:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return NewApiKey(secret=secret, prefix=secret[:10], key_hash=digest(secret))


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenClaims:
    purpose: str
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    session_id: uuid.UUID
    token_id: str
    expires_at: datetime


class InvalidToken(Exception):
    pass


def issue_token(
    key: str,
    *,
    purpose: str,
    user_id: uuid.UUID,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    lifetime: timedelta,
) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    expires_at = now + lifetime
    claims = {
        "iss": TOKEN_ISSUER,
        "aud": f"allting:{purpose}",
        "typ": purpose,
        "sub": str(user_id),
        "tid": str(tenant_id),
        "sid": str(session_id),
        "jti": secrets.token_hex(12),
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    return jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM), expires_at


def read_token(key: str, token: str, *, purpose: str) -> TokenClaims:
    """Decode a token of one purpose; any other purpose, algorithm or issuer is refused."""
    claims = _verified_claims(key, token, purpose)
    if claims.expires_at <= datetime.now(UTC):
        raise InvalidToken("Signature has expired")
    return claims


@lru_cache(maxsize=4096)
def _verified_claims(key: str, token: str, purpose: str) -> TokenClaims:
    """The claims of a token whose signature and fixed claims were checked; remembered because a
    client sends the same token with every request, and checking it again costs a fraction of a
    millisecond each time. Expiry changes with the clock, so `read_token` checks it on every use;
    a refused token raises and is not remembered."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            audience=f"allting:{purpose}",
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "typ", "tid", "sid", "jti"]},
        )
        if claims["typ"] != purpose:
            raise InvalidToken("wrong token purpose")
        return TokenClaims(
            purpose=purpose,
            user_id=uuid.UUID(claims["sub"]),
            tenant_id=uuid.UUID(claims["tid"]),
            session_id=uuid.UUID(claims["sid"]),
            token_id=claims["jti"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise InvalidToken(str(exc)) from exc
