"""The shared Redis client (cache, rate limits, pub/sub) for this process."""

from __future__ import annotations

from redis.asyncio import Redis

_client: Redis | None = None


def init_redis(url: str) -> Redis:
    global _client
    _client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
    return _client


def get_redis() -> Redis:
    assert _client is not None, "Redis is not initialised"
    return _client


async def close_redis() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
    _client = None
