"""Counters in Redis for throttling; during a Redis outage a local bound keeps failing closed."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from allting.platform.logging import get_logger
from allting.platform.redis import get_redis

log = get_logger(__name__)

# While Redis is unreachable each process keeps its own counters, so limits still hold per process.
_local: dict[str, tuple[int, float]] = {}


def _local_count(key: str) -> tuple[int, int]:
    count, reset_at = _local.get(key, (0, 0.0))
    now = time.monotonic()
    if reset_at <= now:
        return 0, 0
    return count, int(reset_at - now) + 1


async def blocked_for(key: str, limit: int) -> int:
    """Seconds until `key` may try again, or 0 when it is under its limit."""
    try:
        redis = get_redis()
        count = await redis.get(key)
        if count is not None and int(count) >= limit:
            return max(1, await redis.ttl(key))
        return 0
    except RedisError as exc:
        log.warning("ratelimit.redis_unavailable", error=type(exc).__name__)
        count, retry_after = _local_count(key)
        return retry_after if count >= limit else 0


async def hit(key: str, window_seconds: int) -> int:
    """Count one event against `key` in a fixed window; returns the count."""
    try:
        redis = get_redis()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_seconds, nx=True)
            count, _ = await pipe.execute()
        return int(count)
    except RedisError:
        count, _ = _local_count(key)
        now = time.monotonic()
        reset_at = _local.get(key, (0, now + window_seconds))[1] if count else now + window_seconds
        _local[key] = (count + 1, reset_at)
        return count + 1


async def clear(key: str) -> None:
    _local.pop(key, None)
    try:
        await get_redis().delete(key)
    except RedisError:
        pass
