"""Building the model request: system prompt, sources, attachments and history within the context window.

Token counts here are estimates (about three characters a token, which over-counts for both Swedish
and English), so trimming errs on the safe side without running a tokenizer on every request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant for the staff of a public organisation. Answer accurately and concisely, "
    "in the language of the question."
)
CITATION_INSTRUCTIONS = (
    "Answer from the numbered sources below when they are relevant. Cite a source by its number in square "
    "brackets, like [1], right after the statement it supports. If the sources do not contain the answer, "
    "say so instead of guessing."
)
DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_ANSWER_RESERVE = 1024
_CITATION = re.compile(r"\[(\d{1,2})\]")


def estimate_tokens(text: str) -> int:
    return len(text) // 3 + 4


@dataclass(frozen=True)
class Source:
    number: int
    title: str
    location: str | None
    text: str


@dataclass(frozen=True)
class Attachment:
    name: str
    text: str


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


def system_prompt(
    assistant_prompt: str, sources: list[Source], attachments: list[Attachment], budget_tokens: int
) -> tuple[str, list[Source]]:
    """The system message, with as many sources and attachments as fit; returns the sources used."""
    parts = [assistant_prompt.strip() or DEFAULT_SYSTEM_PROMPT]
    remaining = budget_tokens - estimate_tokens(parts[0])
    used: list[Source] = []
    if sources:
        header = f"\n\n{CITATION_INSTRUCTIONS}\n\nSources:"
        remaining -= estimate_tokens(header)
        blocks = []
        for source in sources:
            block = f"\n\n[{source.number}] {source.title}" + (
                f" ({source.location})" if source.location else ""
            )
            block += f"\n{source.text}"
            cost = estimate_tokens(block)
            if cost > remaining:
                break
            blocks.append(block)
            used.append(source)
            remaining -= cost
        if blocks:
            parts.append(header + "".join(blocks))
    for attachment in attachments:
        header = f'\n\nThe user attached the file "{attachment.name}":\n'
        allowed_chars = max(0, (remaining - estimate_tokens(header)) * 3)
        if allowed_chars <= 0:
            break
        text = attachment.text[:allowed_chars]
        if len(text) < len(attachment.text):
            text += "\n[… the rest of the file did not fit]"
        parts.append(header + text)
        remaining -= estimate_tokens(header + text)
    return "".join(parts), used


def trimmed_history(turns_newest_first: list[Turn], budget_tokens: int) -> list[Turn]:
    """The most recent turns that fit, oldest first."""
    kept: list[Turn] = []
    for turn in turns_newest_first:
        cost = estimate_tokens(turn.question) + estimate_tokens(turn.answer)
        if cost > budget_tokens:
            break
        kept.append(turn)
        budget_tokens -= cost
    return list(reversed(kept))


def build_messages(
    *, system: str, history: list[Turn], question: str, image_parts: list[dict] | None = None
) -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": system}]
    for turn in history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    if image_parts:
        messages.append({"role": "user", "content": [{"type": "text", "text": question}, *image_parts]})
    else:
        messages.append({"role": "user", "content": question})
    return messages


def cited_numbers(answer: str, available: int) -> list[int]:
    """Source numbers the answer cites, in order of first mention."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= available and number not in seen:
            seen.append(number)
    return seen


def automatic_title(question: str, limit: int = 80) -> str:
    line = " ".join(question.split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return (cut or line[:limit]) + "…"
