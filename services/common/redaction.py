"""The one redaction list: secret headers and key patterns, scrubbed everywhere.

Text that leaves a service for a person or a database goes through this
module first. That covers call events (request and response bodies, error
messages, metadata), log lines and error messages sent to clients. The
dashboard shows only stored events, so it receives redacted text too.

What is removed:

- the values of the headers in :data:`SECRET_HEADERS`, where they appear as
  ``name: value``, ``name=value`` or a JSON ``"name": "value"`` pair;
- bearer tokens (``Bearer <token>``);
- strings shaped like gateway keys (``tg_...``) and provider keys
  (``sk-ant-...``, ``sk-...``);
- exact values the caller knows are secret (the presented provider key, the
  gateway key, an injected stored key), given as ``known``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import AnyStr

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "cf-aig-authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    }
)

# Known secrets shorter than this are not replaced as plain substrings: a
# one-letter "key" would otherwise blank out every occurrence of that letter.
MIN_KNOWN_SECRET_CHARS = 8

_HEADER_ALTERNATION = "|".join(
    re.escape(name) for name in sorted(SECRET_HEADERS, key=len, reverse=True)
)
_TOKEN = r"[A-Za-z0-9._~+/=-]"
_TEXT_PATTERN = re.compile(
    # A JSON pair such as "x-api-key": "value", whose value may contain escapes.
    rf'(?P<jname>"(?:{_HEADER_ALTERNATION})"\s*:\s*)"(?:[^"\\]|\\.)*"'
    # A header or setting such as "authorization: Bearer x" or "x-api-key=x":
    # everything to the end of the line, a quote or a comma. A placeholder
    # such as "Bearer <key>" in a help message is kept.
    rf"|(?P<hname>\b(?:{_HEADER_ALTERNATION})\s*[:=]\s*)"
    r"(?!(?:[Bb]earer\s+)?<)[^\s\",][^\r\n\",]*"
    rf"|(?P<bearer>\b[Bb]earer\s+){_TOKEN}{{8,}}"
    r"|\btg_[A-Za-z0-9_-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{16,}",
    re.IGNORECASE,
)
_BYTES_PATTERN = re.compile(_TEXT_PATTERN.pattern.encode(), re.IGNORECASE)
# Substrings one of which every match contains, at most one character after
# the start of the match. Scanning the lowercased text for them costs about
# 4 ms per MiB, against about 65 ms for the full pattern (measured on a 2-core
# 2026 VM), so the pattern runs only where a marker is (see _sub_at_markers).
_MARKERS = (*sorted(SECRET_HEADERS), "bearer", "tg_", "sk-")
_BYTE_MARKERS = tuple(marker.encode() for marker in _MARKERS)


def _replace_text(match: re.Match[str]) -> str:
    prefix = match.group("jname") or ""
    if prefix:
        return f'{prefix}"{REDACTED}"'
    prefix = match.group("hname") or match.group("bearer") or ""
    return prefix + REDACTED


def _replace_bytes(match: re.Match[bytes]) -> bytes:
    prefix = match.group("jname") or b""
    if prefix:
        return prefix + b'"' + REDACTED.encode() + b'"'
    prefix = match.group("hname") or match.group("bearer") or b""
    return prefix + REDACTED.encode()


def _usable(known: Iterable[str]) -> list[str]:
    values = {value for value in known if len(value) >= MIN_KNOWN_SECRET_CHARS}
    # Longest first, so a secret that contains another is removed whole.
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """Return ``text`` with every secret replaced by ``[REDACTED]``."""
    for value in _usable(known):
        text = text.replace(value, REDACTED)
    return _sub_at_markers(_TEXT_PATTERN, _replace_text, text, _MARKERS)


def redact_bytes(data: bytes, known: Iterable[str] = ()) -> bytes:
    """Return ``data`` with every secret replaced; bytes need not be UTF-8."""
    for value in _usable(known):
        data = data.replace(value.encode(), REDACTED.encode())
    return _sub_at_markers(_BYTES_PATTERN, _replace_bytes, data, _BYTE_MARKERS)


def _sub_at_markers(
    pattern: re.Pattern[AnyStr],
    replace: Callable[[re.Match[AnyStr]], AnyStr],
    data: AnyStr,
    markers: tuple[AnyStr, ...],
) -> AnyStr:
    """``pattern.sub(replace, data)``, trying the pattern only next to a marker.

    Every match starts at a marker or one character before it (the quote of
    a JSON pair), so matching at those positions, left to right and never
    inside an earlier match, gives what ``sub`` gives, without running the
    pattern over a large body that mentions a marker word once.
    """
    lowered = data.lower()
    starts: set[int] = set()
    for marker in markers:
        at = lowered.find(marker)
        while at >= 0:
            starts.update((at - 1, at) if at else (at,))
            at = lowered.find(marker, at + 1)
    if not starts:
        return data
    pieces: list[AnyStr] = []
    done = 0
    for start in sorted(starts):
        if start < done:
            continue
        match = pattern.match(data, start)
        if match is None:
            continue
        pieces.append(data[done : match.start()])
        pieces.append(replace(match))
        done = match.end()
    if not pieces:
        return data
    pieces.append(data[done:])
    return data[:0].join(pieces)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``headers`` with the values of secret headers replaced."""
    return {
        name: REDACTED if name.lower() in SECRET_HEADERS else redact_text(value)
        for name, value in headers.items()
    }
