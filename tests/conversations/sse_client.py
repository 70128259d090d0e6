"""A small SSE client for the tests: named events with JSON data, in order."""

from __future__ import annotations

import json

import httpx


async def read_sse(response: httpx.Response) -> list[tuple[str | None, dict]]:
    events, name, data = [], None, []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events
