"""Server-wide settings of the provider simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

CACHE_MODES = ("write", "read", "auto", "none")


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Defaults that every request uses unless an ``x-sim-*`` header overrides them.

    Times are in milliseconds unless the name ends in ``_s``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    ttfb_ms: float = 20.0
    chunk_ms: float = 5.0
    output_tokens: int = 32
    tokens_per_chunk: int = 4
    slow_ms: float = 3000.0
    hang_s: float = 600.0
    retry_after_s: int = 1
    cache_mode: str = "write"
    # None accepts any non-empty key. A set accepts only its members.
    api_keys: frozenset[str] | None = None
    rejected_keys: frozenset[str] = field(default_factory=frozenset)
    history_size: int = 200
    embedding_dimensions: int = 16

    def __post_init__(self) -> None:
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(
                f"invalid cache_mode {self.cache_mode!r}: expected one of {CACHE_MODES}"
            )
        if self.tokens_per_chunk < 1:
            raise ValueError(
                f"invalid tokens_per_chunk {self.tokens_per_chunk}: must be at least 1"
            )
        if self.output_tokens < 0:
            raise ValueError(
                f"invalid output_tokens {self.output_tokens}: must not be negative"
            )
