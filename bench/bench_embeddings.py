"""Local embedding throughput: the gateway's `local` provider (the model on ONNX Runtime) vs the
same weights run by sentence-transformers on torch, the way the provider ran them before.

Both sides encode the same texts with the same batch size on the same number of threads
(LOCAL_EMBEDDING_THREADS); the gateway adds its async wrapper and the hop to a worker thread.
Each configuration runs several times, alternating sides, and the median is reported; the last
line is the time one question takes on each side.

    .venv/bin/python bench/bench_embeddings.py [--texts 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time

from allting.ai import local_embeddings
from allting.ai.gateway import ModelTarget, embed

LOCAL = ModelTarget(litellm_model=local_embeddings.MODEL_NAME, provider_type="local")
BATCH_SIZES = (16, 64, 128)
TOPICS = ("bygglov", "skolskjuts", "parkering", "äldreomsorg", "avfall", "detaljplan", "bibliotek", "vatten")


def _texts(count: int) -> list[str]:
    return [
        f"Ärende {n}: frågor om {TOPICS[n % len(TOPICS)]} i kommunen, "
        f"med hänvisning till beslut {n * 7 % 113} och riktlinje {n % 17}."
        for n in range(count)
    ]


@functools.cache
def _torch_model():
    import torch
    from sentence_transformers import SentenceTransformer

    from allting.platform.settings import get_settings

    torch.set_num_threads(get_settings().local_embedding_threads)
    return SentenceTransformer(str(local_embeddings._weights_path()), device="cpu", local_files_only=True)


def _direct(texts: list[str], batch_size: int) -> float:
    model = _torch_model()
    started = time.perf_counter()
    model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return len(texts) / (time.perf_counter() - started)


async def _gateway(texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    await embed(LOCAL, texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - started)


async def run(count: int, repeats: int) -> None:
    texts = _texts(count)
    local_embeddings.get_model()
    _direct(texts[:64], 32)
    await _gateway(texts[:64], 32)
    print(f"{count} texts per run, median of {repeats} runs, CPU, texts/second")
    header = f"{'batch':>5} | {'torch':>8} | {'gateway':>8} | {'ratio':>5}"
    print(header)
    print("-" * len(header))
    for batch_size in BATCH_SIZES:
        direct_runs, gateway_runs = [], []
        for repeat in range(repeats):
            if repeat % 2 == 0:
                direct_runs.append(_direct(texts, batch_size))
                gateway_runs.append(await _gateway(texts, batch_size))
            else:
                gateway_runs.append(await _gateway(texts, batch_size))
                direct_runs.append(_direct(texts, batch_size))
        direct, gateway = statistics.median(direct_runs), statistics.median(gateway_runs)
        print(f"{batch_size:>5} | {direct:>8.1f} | {gateway:>8.1f} | {gateway / direct:>5.3f}")
    questions = [f"Hur ansöker jag om {TOPICS[n % len(TOPICS)]} nummer {n}?" for n in range(60)]
    torch_ms = statistics.median(1000 / _direct([question], 1) for question in questions)
    gateway_ms = []
    for question in questions:
        started = time.perf_counter()
        await embed(LOCAL, [question], batch_size=1)
        gateway_ms.append((time.perf_counter() - started) * 1000)
    print(f"one question: torch {torch_ms:.1f} ms, gateway {statistics.median(gateway_ms):.1f} ms (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.texts, args.repeats))


if __name__ == "__main__":
    main()
