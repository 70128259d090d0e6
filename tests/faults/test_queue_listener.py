"""The queue's job-update listener across a Redis restart: it waits, reconnects and hears again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from redis.asyncio import Redis

from allting.platform import embedded
from allting.platform.queue import QUEUE_NAME, ResilientPubSub

pytestmark = pytest.mark.slow


async def _listen(multiplexer, channel: str, heard: list) -> None:
    async for message in multiplexer.listen(channel):
        heard.append(json.loads(message["data"]))


async def test_listener_survives_a_redis_restart_without_spinning(tmp_path):
    services = embedded.start(tmp_path, postgres=False, redis=True)
    url = embedded.redis_url(services)
    client = Redis.from_url(url)
    multiplexer = ResilientPubSub(client, prefix=f"saq:job:{QUEUE_NAME}")
    channel = f"saq:job:{QUEUE_NAME}:probe"
    heard: list = []
    listener = asyncio.create_task(_listen(multiplexer, channel, heard))
    publisher = Redis.from_url(url)
    try:
        deadline = time.monotonic() + 5
        while not heard:
            await publisher.publish(channel, json.dumps({"n": 1}))
            await asyncio.sleep(0.1)
            assert time.monotonic() < deadline
        await publisher.aclose()

        os.kill(services.redis_process.pid, signal.SIGKILL)
        services.redis_process.wait(5)
        cpu_before = time.process_time()
        await asyncio.sleep(3)
        outage_cpu = time.process_time() - cpu_before
        assert not listener.done()

        services.stopped = False
        embedded.start_redis(services)
        publisher = Redis.from_url(url)
        deadline = time.monotonic() + 15
        while {"n": 2} not in heard:
            await publisher.publish(channel, json.dumps({"n": 2}))
            await asyncio.sleep(0.2)
            assert time.monotonic() < deadline, "the listener did not hear messages after Redis came back"
        cpu_before = time.process_time()
        await asyncio.sleep(1)
        idle_cpu = time.process_time() - cpu_before
        print(f"CPU seconds in a 3 s Redis outage: {outage_cpu:.2f}; in 1 s after it: {idle_cpu:.2f}")
        # SAQ's own listener spent the whole outage (and every second after it) retrying in a loop.
        assert outage_cpu < 1.0
        assert idle_cpu < 0.3
    finally:
        listener.cancel()
        await multiplexer.close()
        await publisher.aclose()
        await client.aclose()
        services.stop()
