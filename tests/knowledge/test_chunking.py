"""Token-aware splitting: sizes, boundaries, overlap, headings and pages, determinism."""

from __future__ import annotations

import itertools
import random
import re
import time
from dataclasses import dataclass

import pytest

from allting.knowledge.chunking import _get_tokenizer, count_tokens, split_sections


@dataclass(frozen=True)
class Section:
    text: str
    heading: str | None = None
    page: int | None = None


WORDS = [
    "kommunen", "beslutar", "om", "bygglov", "skolskjuts", "förskola", "avgift", "ansökan", "handläggning",
    "vecka", "the", "council", "decides", "permits", "within", "three", "weeks", "after", "a", "complete",
    "application", "arrives",
]  # fmt: skip


def sentence(rng: random.Random, words: int = 12) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return body[0].upper() + body[1:] + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def real_count(text: str) -> int:
    return len(_get_tokenizer().encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize(
    "text",
    [
        "Kommunens förskolor öppnar 06:30, stänger 18:00 (måndag–fredag).",
        "The U.S.-based vendor's API costs $1,200/month; e-mail: info@example.org!",
        "Ärende #4711: överklagande enligt 10 kap. 2 § PBL.  \n\n\tNästa rad\u00a0här",
        "中文文本没有空格 and emoji 🎉🎉 and a_very_long_identifier_with_underscores_1234567890",
        "x" * 150 + " " + "word " * 10,
        "",
    ],
)
def test_count_tokens_equals_the_tokenizer(text):
    assert count_tokens(text) == real_count(text)


def test_chunks_respect_the_size_and_count_exactly():
    rng = random.Random(1)
    text = "\n\n".join(paragraph(rng, rng.randint(1, 12)) for _ in range(60))
    chunks = split_sections([Section(text)], chunk_tokens=120, overlap_tokens=20)
    assert len(chunks) > 10
    for chunk in chunks:
        assert chunk.token_count == count_tokens(chunk.text) == real_count(chunk.text)
        assert chunk.token_count <= 120
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))


def test_nothing_is_lost():
    rng = random.Random(2)
    sentences = [f"Mening nummer {n} {sentence(rng)}" for n in range(300)]
    text = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 300, 5))
    joined = " ".join(chunk.text for chunk in split_sections([Section(text)]))
    for n in range(300):
        assert f"Mening nummer {n} " in joined


def test_chunks_end_at_paragraphs_when_they_can():
    rng = random.Random(3)
    paragraphs = [paragraph(rng, 2) for _ in range(30)]  # about 50 tokens each
    chunks = split_sections([Section("\n\n".join(paragraphs))], chunk_tokens=200, overlap_tokens=0)
    ends = {p[-40:] for p in paragraphs}
    assert all(chunk.text[-40:] in ends for chunk in chunks)
    assert all("\n\n" in chunk.text for chunk in chunks[:-1])  # several paragraphs per chunk


def test_chunks_end_at_sentences_inside_a_long_paragraph():
    rng = random.Random(4)
    chunks = split_sections([Section(paragraph(rng, 80))], chunk_tokens=100, overlap_tokens=20)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.endswith(".")
        assert chunk.token_count >= 50  # cut in the second half, not at the first sentence end


def test_overlap_repeats_the_end_of_the_previous_chunk():
    rng = random.Random(5)
    chunks = split_sections([Section(paragraph(rng, 60))], chunk_tokens=100, overlap_tokens=30)
    for previous, current in itertools.pairwise(chunks):
        shared = _shared(previous.text, current.text)
        assert shared, "consecutive chunks of one section overlap"
        assert 0 < count_tokens(shared) <= 30
    no_overlap = split_sections([Section(paragraph(rng, 60))], chunk_tokens=100, overlap_tokens=0)
    for previous, current in itertools.pairwise(no_overlap):
        assert not _shared(previous.text, current.text)


def _shared(previous: str, current: str) -> str:
    """The longest start of `current` that `previous` ends with."""
    for length in range(min(len(previous), len(current)), 0, -1):
        if previous.endswith(current[:length]):
            return current[:length]
    return ""


def test_overlap_takes_the_last_words_when_a_sentence_is_longer_than_the_overlap():
    rng = random.Random(6)
    long_sentences = " ".join(sentence(rng, 40) for _ in range(10))  # about 50 tokens each
    chunks = split_sections([Section(long_sentences)], chunk_tokens=120, overlap_tokens=20)
    for previous, current in itertools.pairwise(chunks):
        shared = _shared(previous.text, current.text)
        assert shared and 0 < count_tokens(shared) <= 20


def test_sections_keep_their_heading_and_page_and_never_mix():
    rng = random.Random(7)
    sections = [
        Section(f"Alfa {paragraph(rng, 12)}", heading="Alfa", page=1),
        Section(f"Beta {paragraph(rng, 12)}", heading="Beta", page=1),
        Section(f"Gamma {paragraph(rng, 3)}", heading="Gamma", page=2),
    ]
    chunks = split_sections(sections, chunk_tokens=100, overlap_tokens=20)
    by_heading: dict[str, list] = {}
    for chunk in chunks:
        by_heading.setdefault(chunk.heading, []).append(chunk)
    assert list(by_heading) == ["Alfa", "Beta", "Gamma"]
    assert by_heading["Alfa"][0].text.startswith("Alfa ") and by_heading["Beta"][0].text.startswith("Beta ")
    assert {chunk.page for chunk in by_heading["Gamma"]} == {2}
    for chunk in chunks:
        other = {"Alfa", "Beta", "Gamma"} - {chunk.heading}
        assert not any(re.search(rf"\b{name}\b", chunk.text) for name in other)


def test_a_heading_alone_joins_the_next_section_but_later_chunks_name_their_own():
    rng = random.Random(8)
    sections = [
        Section("Kapitel 1", heading="Kapitel 1"),
        Section(f"Bakgrund\n\n{paragraph(rng, 30)}", heading="Bakgrund"),
    ]
    chunks = split_sections(sections, chunk_tokens=100, overlap_tokens=20)
    assert chunks[0].heading == "Kapitel 1"
    assert chunks[0].text.startswith("Kapitel 1\n\nBakgrund\n\n")
    assert len(chunks) > 2 and all(chunk.heading == "Bakgrund" for chunk in chunks[1:])


def test_tiny_pages_are_not_merged():
    sections = [Section("Sida ett.", page=1), Section("Sida två.", page=2), Section("Sida tre.", page=3)]
    chunks = split_sections(sections)
    assert [(chunk.text, chunk.page) for chunk in chunks] == [
        ("Sida ett.", 1),
        ("Sida två.", 2),
        ("Sida tre.", 3),
    ]


def test_rows_split_at_line_ends():
    rows = "\n".join(f"Sheet: Budget | Enhet: Skola {n} | Belopp: {n * 100}" for n in range(200))
    chunks = split_sections([Section(rows, heading="Budget")], chunk_tokens=100, overlap_tokens=20)
    lines = set(rows.split("\n"))
    for chunk in chunks:
        assert chunk.token_count <= 100
        assert all(line in lines for line in chunk.text.split("\n"))  # no row is cut in two


def test_text_without_spaces_or_punctuation_is_still_cut_to_size():
    chinese = "漢字文本" * 200  # one "word" of 800 tokens
    run_on = " ".join(["ord"] * 700)  # a sentence with no end
    for text in (chinese, run_on):
        chunks = split_sections([Section(text)], chunk_tokens=100, overlap_tokens=20)
        assert len(chunks) >= 7
        assert all(chunk.token_count <= 104 for chunk in chunks)
        assert "".join(chunk.text for chunk in chunks).replace(" ", "").count("漢") >= text.count("漢")


def test_empty_and_blank_sections_give_no_chunks():
    assert split_sections([]) == []
    assert split_sections([Section(""), Section("  \n\n ")]) == []


def test_deterministic():
    rng = random.Random(9)
    sections = [Section(paragraph(rng, 40), heading=f"H{n}", page=n) for n in range(5)]
    assert split_sections(sections) == split_sections(list(sections))


def test_invalid_sizes():
    with pytest.raises(ValueError):
        split_sections([Section("x")], chunk_tokens=4)
    with pytest.raises(ValueError):
        split_sections([Section("x")], chunk_tokens=100, overlap_tokens=60)


def test_fast_enough_for_a_large_document():
    rng = random.Random(10)
    text = "\n\n".join(paragraph(rng, rng.randint(2, 8)) for _ in range(1500))  # about 500 kB
    started = time.perf_counter()
    chunks = split_sections([Section(text)])
    elapsed = time.perf_counter() - started
    assert len(chunks) > 500
    assert elapsed < 5, f"{len(text) / elapsed / 1e6:.2f} MB/s"


def test_token_counts_are_exact_for_mixed_text():
    rng = random.Random(11)
    pieces = [
        "Ärende #4711: överklagande enligt 10 kap. 2 § PBL.",
        "The U.S.-based vendor's API costs $1,200/month; e-mail info@example.org!",
        "中文文本没有空格",
        "emoji 🎉🎉",
        "https://example.org/a/very/long/path?with=query&and=more#fragment",
        "a_very_long_identifier_with_underscores_" + "x" * 120,
    ]
    text = "\n\n".join(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(80))
    for chunk in split_sections([Section(text)], chunk_tokens=90, overlap_tokens=15):
        assert chunk.token_count == real_count(chunk.text)
