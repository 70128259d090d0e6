"""An OpenAI-compatible stub server for tests and benchmarks.

It speaks the real wire format (JSON bodies, SSE chunks, OpenAI's error shape), so the code under
test runs its genuine provider path over loopback. Tests steer it with `StubLLM.script(...)` and
read back what it received from `StubLLM.requests`.

    with StubLLM() as stub:
        stub.script(answer="Hej!", delay_per_token=0.01)
        ...  # point a client at stub.url

or from a shell: python -m allting.testing.stub_llm --port 8100 --delay-per-token 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from allting.testing.background_server import BackgroundServer

DEFAULT_ANSWER = "Hello from the Allting stub model."
DEFAULT_EMBEDDING_DIMENSIONS = 384
DEFAULT_MODELS = ("stub-chat", "stub-embed", "stub-whisper")
NAMED_ERRORS = (
    "insufficient_quota",
    "context_length_exceeded",
    "model_not_found",
    "disconnect_mid_stream",
    "error_event_mid_stream",
)
MID_STREAM_ERRORS = ("disconnect_mid_stream", "error_event_mid_stream")


@dataclass
class Script:
    """What the stub answers next. `error_times` limits the error to that many requests (None: all)."""

    answer: str = DEFAULT_ANSWER
    chunks: list[str] | None = None
    delay_per_token: float = 0.0
    error: int | str | None = None
    error_times: int | None = None
    retry_after: float | None = None
    echo_key_in_error: bool = False
    transcript: str = "This is the stub transcript."
    embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS
    embeddings_missing: int = 0  # vectors left out of an embeddings answer, as a broken server might
    embedding_delay: float = 0.0  # seconds each embeddings request takes, as a remote model's would

    def stream_chunks(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        # Word-sized pieces with their trailing space, as real tokenisers roughly produce.
        return re.findall(r"\S+\s*|\s+", self.answer)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)


class _ScriptedDisconnect(Exception):
    """Raised inside a streaming body: the server then drops the connection without a clean end."""


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return _count_words(value.get("content") or value.get("text") or "")
    return 0


def deterministic_embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from SHA-256 of the text: same text, same vector, in every process."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class StubState:
    """Shared between the HTTP handlers (server thread) and the test's control calls."""

    def __init__(self, script: Script | None = None) -> None:
        self._lock = threading.Lock()
        self._script = script or Script()
        self.requests: list[RecordedRequest] = []
        self.active_streams = 0
        self.cancelled_streams = 0
        self.completed_streams = 0
        self.active_embeddings = 0
        self.most_embeddings_at_once = 0
        self._ids = 0

    @property
    def current_script(self) -> Script:
        return self._script

    def set_script(self, script: Script) -> None:
        with self._lock:
            self._script = script

    def reset(self) -> None:
        with self._lock:
            self._script = Script()
            self.requests.clear()
            self.active_streams = self.cancelled_streams = self.completed_streams = 0
            self.active_embeddings = self.most_embeddings_at_once = 0

    def next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def take_error(self) -> int | str | None:
        """The scripted error for this request, counting it against `error_times`."""
        with self._lock:
            script = self._script
            if script.error is None:
                return None
            if script.error_times is not None:
                if script.error_times <= 0:
                    return None
                script.error_times -= 1
            return script.error


def _error_response(error: int | str, script: Script, request: Request, model: str) -> Response:
    headers: dict[str, str] = {}
    if error == 401:
        received = request.headers.get("authorization", "").removeprefix("Bearer ")
        shown = received if script.echo_key_in_error else "sk-...****"
        status, kind, code = 401, "invalid_request_error", "invalid_api_key"
        message = f"Incorrect API key provided: {shown}. You can find your API key in your account settings."
    elif error == 429:
        status, kind, code = 429, "requests", "rate_limit_exceeded"
        message = f"Rate limit reached for {model} on requests per min. Please try again later."
        if script.retry_after is not None:
            headers["retry-after"] = f"{script.retry_after:g}"
    elif error == "insufficient_quota":
        status, kind, code = 429, "insufficient_quota", "insufficient_quota"
        message = "You exceeded your current quota, please check your plan and billing details."
    elif error in (404, "model_not_found"):
        status, kind, code = 404, "invalid_request_error", "model_not_found"
        message = f"The model `{model}` does not exist or you do not have access to it."
    elif error == "context_length_exceeded":
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages resulted in "
            "9100 tokens. Please reduce the length of the messages."
        )
    elif isinstance(error, int):
        status, kind, code = error, "server_error", None
        message = "The server had an error while processing your request. Sorry about that!"
    else:
        raise ValueError(f"unknown scripted error {error!r}")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(state: StubState) -> Starlette:
    async def record(request: Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method, path=request.url.path, headers=dict(request.headers)
        )
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            for name, value in form.multi_items():
                if hasattr(value, "read"):
                    data = await value.read()
                    recorded.form[name] = {"filename": value.filename, "size": len(data)}
                else:
                    recorded.form[name] = value
        elif request.method == "POST":
            recorded.json = json.loads(await request.body() or b"null")
        state.requests.append(recorded)
        return recorded

    async def models(request: Request) -> Response:
        await record(request)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "allting-stub"}
            for name in DEFAULT_MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        recorded = await record(request)
        body = recorded.json or {}
        model = body.get("model", "stub-chat")
        script = state.current_script
        error = state.take_error()
        if error is not None and error not in MID_STREAM_ERRORS:
            return _error_response(error, script, request, model)
        completion_id = f"chatcmpl-stub-{state.next_id()}"
        prompt_tokens = _count_words(body.get("messages", []))
        chunks = script.stream_chunks()
        if not body.get("stream"):
            if error in MID_STREAM_ERRORS:
                raise _ScriptedDisconnect
            if script.delay_per_token:
                await asyncio.sleep(script.delay_per_token * len(chunks))
            return JSONResponse(
                _completion(completion_id, model, "".join(chunks), prompt_tokens, len(chunks))
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _stream_events(
            state, script, completion_id, model, chunks, prompt_tokens, include_usage, error
        )
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    async def embeddings(request: Request) -> Response:
        recorded = await record(request)
        body = recorded.json or {}
        model = body.get("model", "stub-embed")
        script = state.current_script
        error = state.take_error()
        if error is not None:
            return _error_response(error, script, request, model)
        if script.embedding_delay:
            state.active_embeddings += 1
            state.most_embeddings_at_once = max(state.most_embeddings_at_once, state.active_embeddings)
            try:
                await asyncio.sleep(script.embedding_delay)
            finally:
                state.active_embeddings -= 1
        texts = body.get("input", [])
        texts = [texts] if isinstance(texts, str) else texts
        dimensions = int(body.get("dimensions") or script.embedding_dimensions)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = deterministic_embedding(str(text), dimensions)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        if script.embeddings_missing:
            data = data[: max(0, len(data) - script.embeddings_missing)]
        tokens = _count_words(texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    async def transcriptions(request: Request) -> Response:
        recorded = await record(request)
        model = str(recorded.form.get("model", "stub-whisper"))
        script = state.current_script
        error = state.take_error()
        if error is not None:
            return _error_response(error, script, request, model)
        if recorded.form.get("response_format") == "text":
            return PlainTextResponse(script.transcript)
        return JSONResponse({"text": script.transcript})

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        ]
    )


def _completion(
    completion_id: str, model: str, text: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunk(completion_id: str, model: str, created: int, delta: dict, finish_reason: str | None) -> bytes:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _stream_events(
    state: StubState,
    script: Script,
    completion_id: str,
    model: str,
    chunks: list[str],
    prompt_tokens: int,
    include_usage: bool,
    midway_error: str | None,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    state.active_streams += 1
    finished = False
    try:
        yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""}, None)
        for index, piece in enumerate(chunks):
            if midway_error == "disconnect_mid_stream" and index == len(chunks) // 2:
                raise _ScriptedDisconnect
            if midway_error == "error_event_mid_stream" and index == len(chunks) // 2:
                # As vLLM reports a failure after the response has started: an error event, then the end.
                error = {
                    "message": "The context length was exceeded while generating",
                    "code": "context_length_exceeded",
                }
                yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                return
            if script.delay_per_token:
                await asyncio.sleep(script.delay_per_token)
            yield _chunk(completion_id, model, created, {"content": piece}, None)
        yield _chunk(completion_id, model, created, {}, "stop")
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(chunks),
                "total_tokens": prompt_tokens + len(chunks),
            }
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + json.dumps(payload).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        state.active_streams -= 1
        if finished:
            state.completed_streams += 1
        elif midway_error is None:
            # The client went away before the end: the server cancelled this generator.
            state.cancelled_streams += 1


class StubLLM(BackgroundServer):
    """The stub served by uvicorn on 127.0.0.1 in a background thread, on a free port by default."""

    label = "stub LLM server"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, script: Script | None = None) -> None:
        self.state = StubState(script)
        super().__init__(host=host, port=port)
        self._serve(create_app(self.state))

    @property
    def url(self) -> str:
        """Base URL as OpenAI clients expect it, ending in /v1."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    @property
    def active_streams(self) -> int:
        return self.state.active_streams

    @property
    def cancelled_streams(self) -> int:
        return self.state.cancelled_streams

    @property
    def completed_streams(self) -> int:
        return self.state.completed_streams

    @property
    def most_embeddings_at_once(self) -> int:
        """How many embeddings requests were in progress together at most (with `embedding_delay`)."""
        return self.state.most_embeddings_at_once

    def script(self, **fields: Any) -> Script:
        """Replace the script; fields not given take their defaults. See `Script` and NAMED_ERRORS."""
        error = fields.get("error")
        if error is not None and not isinstance(error, int) and error not in NAMED_ERRORS:
            raise ValueError(f"unknown scripted error {error!r}; use a status code or one of {NAMED_ERRORS}")
        script = Script(**fields)
        self.state.set_script(script)
        return script

    def reset(self) -> None:
        self.state.reset()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stub LLM server for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--answer", default=DEFAULT_ANSWER)
    parser.add_argument("--delay-per-token", type=float, default=0.0)
    parser.add_argument("--embedding-dimensions", type=int, default=DEFAULT_EMBEDDING_DIMENSIONS)
    args = parser.parse_args(argv)
    script = Script(
        answer=args.answer,
        delay_per_token=args.delay_per_token,
        embedding_dimensions=args.embedding_dimensions,
    )
    state = StubState(script)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
