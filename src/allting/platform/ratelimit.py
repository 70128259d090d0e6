"""Counters in Redis for throttling; during a Redis outage a local bound keeps failing closed."""

from __future__ import annotations

import contextlib
import time

from redis.exceptions import RedisError

from allting.platform.logging import get_logger
from allting.platform.redis import get_redis

log = get_logger(__name__)

# While Redis is unreachable each process keeps its own counters, so limits still hold per process.
_local: dict[str, tuple[int, float]] = {}
_LOCAL_MAX_KEYS = 10_000


def _local_count(key: str) -> tuple[int, int]:
    count, reset_at = _local.get(key, (0, 0.0))
    now = time.monotonic()
    if reset_at <= now:
        return 0, 0
    return count, int(reset_at - now) + 1


async def blocked_for(key: str, limit: int) -> int:
    """Seconds until `key` may try again, or 0 when it is under its limit.

    Counts kept locally while Redis was unreachable still apply after it is back.
    """
    count, retry_after = _local_count(key)
    local = retry_after if count >= limit else 0
    try:
        redis = get_redis()
        count = await redis.get(key)
        if count is not None and int(count) >= limit:
            return max(1, await redis.ttl(key), local)
        return local
    except RedisError as exc:
        log.warning("ratelimit.redis_unavailable", error=type(exc).__name__)
        return local


async def hit(key: str, window_seconds: int) -> int:
    """Count one event against `key` in a fixed window; returns the count."""
    try:
        redis = get_redis()
        # SET NX EX starts the window; INCR keeps its expiry. (EXPIRE NX needs Redis 7; the
        # embedded Redis is 6.2, where it failed and silently disabled every limit.)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window_seconds, nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count)
    except RedisError as exc:
        log.warning("ratelimit.redis_unavailable", error=type(exc).__name__)
        count, _ = _local_count(key)
        now = time.monotonic()
        if len(_local) > _LOCAL_MAX_KEYS:
            for stale in [name for name, (_, reset_at) in _local.items() if reset_at <= now]:
                del _local[stale]
        reset_at = _local.get(key, (0, now + window_seconds))[1] if count else now + window_seconds
        _local[key] = (count + 1, reset_at)
        return count + 1


async def clear(key: str) -> None:
    _local.pop(key, None)
    with contextlib.suppress(RedisError):
        await get_redis().delete(key)
