"""Chunking throughput: `split_sections` on about 1 MB of text vs tokenizing the same text once.

The reference is one call of the Rust tokenizer over the whole text (what any token-aware
splitter must at least pay). Cold runs start with an empty word cache; warm runs reuse it, as a
worker that has ingested documents before does. Prose and spreadsheet rows are measured apart:
rows hold many distinct words (numbers, names), which the cache helps less with.

    .venv/bin/python bench/bench_chunking.py [--megabytes 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from allting.knowledge import chunking

_SAMPLE = (
    "kommunen beslutar om bygglov för altaner och plank inom tre veckor efter att ansökan är komplett "
    "skolskjuts beviljas elever som bor längre bort än två kilometer från skolan förskolan öppnar "
    "the council decides on permits within three weeks after a complete application arrives fees are "
    "charged per hour and the decision can be appealed to the county administrative board"
)
VOCABULARY = _SAMPLE.split()


@dataclass(frozen=True)
class Section:
    text: str
    heading: str | None = None
    page: int | None = None


def prose(size: int, rng: random.Random) -> list[Section]:
    sections: list[Section] = []
    total = 0
    while total < size:
        paragraphs = []
        for _ in range(rng.randint(3, 12)):
            sentences = []
            for _ in range(rng.randint(1, 6)):
                words = [rng.choice(VOCABULARY) for _ in range(rng.randint(6, 30))]
                sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
            paragraphs.append(" ".join(sentences))
        text = "\n\n".join(paragraphs)
        sections.append(Section(text, heading=f"Avsnitt {len(sections) + 1}", page=len(sections) // 3 + 1))
        total += len(text.encode())
    return sections


def rows(size: int, rng: random.Random) -> list[Section]:
    lines = []
    total = 0
    while total < size:
        line = (
            f"Sheet: Budget | Enhet: Enhet {rng.randint(1, 5000)} | Konto: {rng.randint(1000, 9999)} | "
            f"Belopp: {rng.randint(1, 10**6) / 100} | Kommentar: {rng.choice(VOCABULARY)}"
        )
        lines.append(line)
        total += len(line.encode()) + 1
    return [Section("\n".join(lines), heading="Budget")]


def run(label: str, sections: list[Section], repeats: int) -> None:
    text = "\n\n".join(section.text for section in sections)
    size = len(text.encode())
    tokenizer = chunking._get_tokenizer()
    reference = []
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
        reference.append(time.perf_counter() - started)
    cold, warm = [], []
    for _ in range(repeats):
        chunking._word_tokens.clear()
        started = time.perf_counter()
        chunks = chunking.split_sections(sections)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        again = chunking.split_sections(sections)
        warm.append(time.perf_counter() - started)
        assert again == chunks
    sizes = [chunk.token_count for chunk in chunks]
    print(
        f"{label}: {size / 1e6:.2f} MB, {tokens:,} tokens -> {len(chunks):,} chunks "
        f"(mean {statistics.mean(sizes):.0f}, max {max(sizes)} tokens)"
    )
    for name, times in (("tokenizer once", reference), ("split cold", cold), ("split warm", warm)):
        median = statistics.median(times)
        rate = f"{size / median / 1e6:6.2f} MB/s  {tokens / median:10,.0f} tokens/s"
        print(f"  {name:15s} {median * 1000:7.0f} ms  {rate}")
    print(
        f"  ratio split cold / tokenizer once: {statistics.median(cold) / statistics.median(reference):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size = int(args.megabytes * 1_000_000)
    rng = random.Random(42)
    run("prose", prose(size, rng), args.repeats)
    run("rows", rows(size, rng), args.repeats)


if __name__ == "__main__":
    main()
