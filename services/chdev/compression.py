"""HTTP body compression: request Content-Encoding and response encoding.

clickhouse-connect 1.12 compresses each insert block as its own LZ4 frame, so
an lz4 request body is a series of frames. The ClickHouse block format
selected by the ``compress=1`` and ``decompress=1`` URL parameters is not
supported (the server rejects those requests).
"""

from __future__ import annotations

import gzip
import io
import zlib

import lz4.frame
import zstandard

from services.chdev.errors import (
    CANNOT_DECOMPRESS,
    UNKNOWN_COMPRESSION_METHOD,
    ClickHouseError,
)

# Response encodings, each picked only when the client lists it in
# Accept-Encoding and sets enable_http_compression=1, as ClickHouse requires.
RESPONSE_ENCODINGS = ("lz4", "zstd", "gzip", "deflate")


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Decompress a request body by its Content-Encoding header."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    try:
        return _decode(body, encoding)
    except ClickHouseError:
        raise
    except (RuntimeError, ValueError, OSError, EOFError, zlib.error) as error:
        raise ClickHouseError.from_code(
            CANNOT_DECOMPRESS,
            f"Cannot decompress the {encoding} request body: {error}",
        ) from error


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "lz4":
        return _decode_lz4_frames(body)
    if encoding == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        )
        return reader.read()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ClickHouseError.from_code(
        UNKNOWN_COMPRESSION_METHOD,
        f"Unknown Content-Encoding {encoding!r}: use lz4, zstd, gzip or deflate",
    )


def _decode_lz4_frames(body: bytes) -> bytes:
    output = bytearray()
    remaining = body
    while remaining:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        output += decompressor.decompress(remaining)
        if not decompressor.eof:
            raise ValueError("the last LZ4 frame is truncated")
        remaining = decompressor.unused_data
    return bytes(output)


def choose_response_encoding(accept_encoding: str | None) -> str | None:
    """Return the first encoding in Accept-Encoding that the server supports."""
    for item in (accept_encoding or "").split(","):
        name = item.split(";", 1)[0].strip().lower()
        if name in RESPONSE_ENCODINGS:
            return name
    return None


def encode_body(body: bytes, encoding: str) -> bytes:
    """Compress a response body with one of RESPONSE_ENCODINGS."""
    if encoding == "lz4":
        return lz4.frame.compress(body)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    if encoding == "gzip":
        return gzip.compress(body)
    return zlib.compress(body)
