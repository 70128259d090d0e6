import asyncio
import fcntl
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

from allting.ai import local_embeddings
from allting.ai.gateway import ModelTarget, embed

LOCAL = ModelTarget(litellm_model="all-MiniLM-L6-v2", provider_type="local")


def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_384_dimensional_and_normalised():
    vectors = await local_embeddings.embed_texts(["Bygglov för altan", "Parkeringstillstånd"])
    assert [len(vector) for vector in vectors] == [384, 384]
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-5)


async def test_similar_sentences_score_higher_than_unrelated_ones():
    cat, kitten, budget = await embed(
        LOCAL,
        [
            "The cat sits on the mat.",
            "A kitten is resting on a rug.",
            "The municipal budget grew by four percent.",
        ],
        batch_size=2,
    )
    assert _cosine(cat, kitten) > 0.5
    assert _cosine(cat, kitten) > _cosine(cat, budget) + 0.3


async def test_batching_does_not_change_the_vectors():
    texts = [f"Document number {n} about school meals" for n in range(7)]
    one_batch = await embed(LOCAL, texts, batch_size=64)
    small_batches = await embed(LOCAL, texts, batch_size=3)
    for a, b in zip(one_batch, small_batches, strict=True):
        assert _cosine(a, b) > 0.9999


async def test_empty_input_gives_no_vectors():
    assert await embed(LOCAL, [], batch_size=8) == []


def test_model_is_loaded_once_even_under_concurrent_first_use():
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(local_embeddings.get_model())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model) for model in seen}) == 1
    assert seen[0].session.get_providers() == ["CPUExecutionProvider"]


def test_the_exported_model_gives_the_vectors_of_the_original_weights():
    # The reference: the bundled weights run by transformers with sentence-transformers' mean
    # pooling and normalisation. Long texts are truncated at 256 tokens in both.
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["Hur ansöker jag om bygglov för en altan?", "Parkering", "ord " * 400]
    weights = str(local_embeddings._weights_path())
    tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
    model = AutoModel.from_pretrained(weights, local_files_only=True).eval()
    with torch.no_grad():
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).tolist()
    for vector, reference in zip(local_embeddings.encode(texts, batch_size=2), expected, strict=True):
        assert max(abs(a - b) for a, b in zip(vector, reference, strict=True)) < 1e-5


def test_the_exported_model_is_kept_in_the_cache_directory_and_reused(monkeypatch):
    loaded = local_embeddings.get_model()
    path = local_embeddings.onnx_path()
    assert path.is_file() and path.stat().st_size > 50 * 2**20
    assert not list(path.parent.glob("*.partial"))

    def no_export(*args, **kwargs):
        raise AssertionError("the model was exported again")

    monkeypatch.setattr(local_embeddings.subprocess, "run", no_export)
    monkeypatch.setattr(local_embeddings, "_model", None)
    reloaded = local_embeddings.get_model()
    assert reloaded is not loaded
    assert local_embeddings.encode(["Parkering"]) == loaded.encode(["Parkering"], 1).tolist()


def test_a_process_finding_another_exporting_waits_for_that_model_instead_of_exporting_again(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = local_embeddings.onnx_path()
    path.parent.mkdir(parents=True)
    show = "from allting.ai import local_embeddings as m; print(m.ensure_exported().read_text())"
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test plays the process already exporting
        starting = subprocess.Popen([sys.executable, "-c", show], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while "->" not in Path("/proc/locks").read_text():  # the newcomer waits on the lock
            assert starting.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        path.write_text("the model the other process exported")
    output, _ = starting.communicate(timeout=60)
    assert starting.returncode == 0
    assert output.strip() == "the model the other process exported" == path.read_text()


async def test_concurrent_questions_are_encoded_together_and_each_gets_its_own_vector(monkeypatch):
    questions = [f"Hur ansöker jag om bygglov nummer {n}?" for n in range(20)]
    alone = [local_embeddings.encode([question])[0] for question in questions]
    batches = []
    encode = local_embeddings.encode

    def recording(texts, batch_size=local_embeddings.DEFAULT_BATCH_SIZE):
        batches.append(len(texts))
        return encode(texts, batch_size)

    monkeypatch.setattr(local_embeddings, "encode", recording)
    together = await asyncio.gather(*(local_embeddings.embed_texts([question]) for question in questions))
    assert sum(batches) == len(questions)
    assert len(batches) < len(questions)  # the ones that waited went in one batch
    for (vector,), expected in zip(together, alone, strict=True):
        assert _cosine(vector, expected) > 0.9999


async def test_a_failed_batch_fails_only_its_own_questions(monkeypatch):
    def broken(texts, batch_size=local_embeddings.DEFAULT_BATCH_SIZE):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(local_embeddings, "encode", broken)
    results = await asyncio.gather(
        *(local_embeddings.embed_texts([f"fråga {n}"]) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, RuntimeError) for result in results)
    monkeypatch.undo()
    assert len((await local_embeddings.embed_texts(["efteråt"]))[0]) == 384
