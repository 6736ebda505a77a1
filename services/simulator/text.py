"""Deterministic completion text, the token-count rule and embedding vectors.

Token rule: a string of ``n`` characters is ``ceil(n / 4)`` tokens. Generated
text is made of 4-character pieces (a 3-letter word plus a space, or a period
after the last word), so a completion of ``k`` pieces is exactly ``k`` tokens.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import orjson

CHARS_PER_TOKEN = 4

WORDS = (
    "ant", "bay", "cab", "dew", "elk", "fig", "gum", "hat",
    "ink", "jam", "kit", "log", "map", "net", "oak", "pen",
    "quo", "ram", "sun", "tea", "urn", "van", "wax", "yak",
    "zip", "arc", "bud", "cog", "dot", "eel", "fog", "gem",
    "hub", "ice", "jet", "key", "lid", "mud", "nut", "orb",
    "pod", "rim", "sap", "tin", "use", "vow", "web", "yew",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Completion:
    """Generated output of one request, after ``max_tokens`` and stop sequences."""

    text: str
    output_tokens: int
    # "end", "max_tokens" or "stop_sequence"; each provider maps it to its own name.
    stop: str
    stop_sequence: str | None = None


def count_tokens(text: str) -> int:
    """Return the token count of ``text`` under the 4-characters-per-token rule."""
    return -(-len(text) // CHARS_PER_TOKEN)


def count_json_tokens(value: object) -> int:
    """Count the tokens of the compact JSON serialization of ``value``."""
    return count_tokens(orjson.dumps(value).decode())


def request_seed(fields: object) -> int:
    """Hash the JSON of ``fields`` (keys sorted) into a 64-bit seed."""
    data = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def generate(
    seed: int,
    requested_tokens: int,
    max_tokens: int | None = None,
    stop_sequences: list[str] | None = None,
) -> Completion:
    """Generate ``requested_tokens`` tokens of text from ``seed``.

    A limit of ``max_tokens`` keeps a prefix of the same text, because the
    words are drawn in sequence from one generator.
    """
    count = requested_tokens
    if max_tokens is not None:
        count = min(count, max_tokens)
    truncated = count < requested_tokens
    text = _join_words(random.Random(seed).choices(WORDS, k=count), truncated)
    stop = "max_tokens" if truncated else "end"
    return _apply_stop_sequences(text, stop, stop_sequences or [])


def _join_words(words: list[str], truncated: bool) -> str:
    if not words:
        return ""
    words[0] = words[0].capitalize()
    text = " ".join(words)
    return text if truncated else text + "."


def _apply_stop_sequences(text: str, stop: str, sequences: list[str]) -> Completion:
    best_index = -1
    best_sequence = None
    for sequence in sequences:
        if not sequence:
            continue
        index = text.find(sequence)
        if index >= 0 and (best_index < 0 or index < best_index):
            best_index, best_sequence = index, sequence
    if best_sequence is None:
        return Completion(text, count_tokens(text), stop)
    text = text[:best_index]
    return Completion(text, count_tokens(text), "stop_sequence", best_sequence)


def split_chunks(text: str, tokens_per_chunk: int, chunks: int | None) -> list[str]:
    """Split ``text`` into stream deltas of ``tokens_per_chunk`` tokens each.

    A ``chunks`` count overrides the size and splits the text into that many
    deltas of near-equal length (fewer when the text is shorter).
    """
    if not text:
        return []
    size = tokens_per_chunk * CHARS_PER_TOKEN
    if chunks is not None and chunks > 0:
        size = max(1, math.ceil(len(text) / chunks))
    return [text[i : i + size] for i in range(0, len(text), size)]


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """Return a unit-length vector derived from ``text`` only."""
    rng = random.Random(request_seed(text))
    values = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
