"""A local append-only spool of records, kept until their owner releases them.

The ingress spools call events and the analytics service spools batches that
ClickHouse did not take. Both use this one format.

On disk a spool is a directory of segment files ``<id:020d>.spool``. A segment
starts with the 8-byte magic ``TGSPOOL1``; each record that follows is a
little-endian header of two uint32 (payload length, CRC-32 of the payload) and
the payload. Records are appended with one ``write`` each, so a record that
``append`` returned is in the kernel page cache and survives a SIGKILL of the
process. ``sync`` fsyncs what was written since the previous sync; only that
protects against a power loss or a kernel crash, and its caller decides how
often it runs.

Ids of records are positions ``(segment, offset)``. The owner counts records
as delivered with ``release(segment, count)``; a segment whose records are all
released is deleted once a newer segment exists, and the last segment is
truncated back to its magic when every record of the spool is released.
On open, a torn record at the end of a segment (a crash during the write) and
everything after it are cut off and logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAGIC = b"TGSPOOL1"
HEADER = struct.Struct("<II")
SUFFIX = ".spool"
# Records larger than this are refused: a length beyond it in a header means
# the header itself is damaged.
MAX_RECORD_BYTES = 64 << 20


class SpoolError(OSError):
    """A spool file could not be written or read."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Place of a record in the spool: segment id and byte offset."""

    segment: int
    offset: int


def encode_record(payload: bytes) -> bytes:
    """Frame one payload as a spool record."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes, start: int = 0) -> tuple[list[bytes], int]:
    """Decode whole, intact records from ``data[start:]``.

    Returns the payloads and the offset after the last intact record; a short
    or damaged record ends the scan there.
    """
    payloads: list[bytes] = []
    offset = start
    while offset + HEADER.size <= len(data):
        length, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[offset + HEADER.size : end]
        if zlib.crc32(payload) != checksum:
            break
        payloads.append(payload)
        offset = end
    return payloads, offset


def segment_max_bytes_for(max_bytes: int) -> int:
    """Size at which a segment is closed: an eighth of the limit, 64 KiB-16 MiB."""
    return min(16 << 20, max(64 << 10, max_bytes // 8))


class Spool:
    """Segments of records in ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes_for(max_bytes)
        # Unreleased records per segment, oldest segment first.
        self._unreleased: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._current = 0
        self._fd = -1
        self._dirty_fds: list[int] = []
        self._closing_fds: list[int] = []
        self.dropped = 0

    # ------------------------------------------------------------ lifecycle

    def open(self) -> Position | None:
        """Recover the segments on disk and open a new one for writing.

        Returns the position of the oldest recovered record, or None when the
        spool was empty.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            message = f"cannot create spool directory {self.directory}: {exc}"
            raise SpoolError(message) from exc
        first: Position | None = None
        for segment in self._segment_ids():
            count = self._recover(segment)
            if count == 0:
                self._path(segment).unlink(missing_ok=True)
                continue
            self._unreleased[segment] = count
            if first is None:
                first = Position(segment, len(MAGIC))
        existing = self._segment_ids()
        self._open_segment(existing[-1] + 1 if existing else 1)
        if first is not None:
            logger.info(
                "spool %s holds %d records from a previous run in %d segments",
                self.directory,
                sum(self._unreleased.values()),
                len(self._unreleased) - 1,
            )
        return first

    def close(self) -> None:
        """Fsync and close the open files; unreleased records stay on disk."""
        self.sync_now()
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        if self._unreleased.get(self._current, 0) == 0 and len(self._unreleased) == 1:
            self._path(self._current).unlink(missing_ok=True)

    # ------------------------------------------------------------ writing

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def unreleased(self) -> int:
        return sum(self._unreleased.values())

    def end(self) -> Position:
        """Position after the last record written."""
        return Position(self._current, self._sizes[self._current])

    def append(self, payload: bytes) -> Position | None:
        """Write one record and return its position, or None if the spool is full."""
        record = encode_record(payload)
        if self.size_bytes + len(record) > self.max_bytes:
            self.dropped += 1
            return None
        if self._sizes[self._current] + len(record) > self.segment_max_bytes:
            self._rotate()
        position = self.end()
        try:
            os.write(self._fd, record)
        except OSError as exc:
            raise SpoolError(f"cannot write to spool {self.directory}: {exc}") from exc
        self._sizes[self._current] += len(record)
        self._unreleased[self._current] += 1
        if self._fd not in self._dirty_fds:
            self._dirty_fds.append(self._fd)
        return position

    def sync_now(self) -> None:
        """Fsync every segment written since the last sync (blocks on the disk)."""
        dirty, self._dirty_fds = self._dirty_fds, []
        closing, self._closing_fds = self._closing_fds, []
        _fdatasync_all(dirty)
        _close_all(closing)

    async def sync(self) -> None:
        """Fsync like :meth:`sync_now`, in a worker thread."""
        dirty, self._dirty_fds = self._dirty_fds, []
        # Rotated files are closed only after their own fsync.
        closing, self._closing_fds = self._closing_fds, []
        if dirty:
            await asyncio.to_thread(_fdatasync_all, dirty)
        _close_all(closing)

    def release(self, segment: int, count: int) -> None:
        """Count ``count`` records of ``segment`` as delivered."""
        left = self._unreleased.get(segment, 0) - count
        if left < 0:
            raise ValueError(
                f"released {count} records of spool segment {segment}, "
                f"which has only {left + count} unreleased"
            )
        self._unreleased[segment] = left
        if left == 0 and segment != self._current:
            del self._unreleased[segment]
            self._sizes.pop(segment, None)
            self._path(segment).unlink(missing_ok=True)
        if self.unreleased == 0 and self._sizes[self._current] > len(MAGIC):
            os.ftruncate(self._fd, len(MAGIC))
            os.lseek(self._fd, len(MAGIC), os.SEEK_SET)
            self._sizes[self._current] = len(MAGIC)

    # ------------------------------------------------------------ reading

    def read(
        self, start: Position, max_records: int
    ) -> tuple[list[tuple[int, bytes]], Position]:
        """Read up to ``max_records`` records from ``start``.

        Returns ``(segment, payload)`` pairs and the position after the last.
        """
        position = start
        payloads: list[tuple[int, bytes]] = []
        while len(payloads) < max_records and position < self.end():
            if position.segment not in self._sizes:
                position = self._next_segment(position.segment)
                continue
            size = self._sizes[position.segment]
            if position.offset >= size:
                position = self._next_segment(position.segment)
                continue
            data = self._read_bytes(position, size)
            found, _ = decode_records(data)
            if not found:
                raise SpoolError(
                    f"damaged record in spool segment {position.segment} at byte "
                    f"{position.offset}"
                )
            taken = found[: max_records - len(payloads)]
            payloads.extend((position.segment, payload) for payload in taken)
            used = sum(HEADER.size + len(p) for p in taken)
            position = Position(position.segment, position.offset + used)
        return payloads, position

    # ------------------------------------------------------------ internals

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:020d}{SUFFIX}"

    def _segment_ids(self) -> list[int]:
        ids = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            stem = path.name[: -len(SUFFIX)]
            if stem.isdigit():
                ids.append(int(stem))
        return sorted(ids)

    def _next_segment(self, segment: int) -> Position:
        later = [s for s in self._sizes if s > segment]
        if not later:
            return self.end()
        return Position(min(later), len(MAGIC))

    def _read_bytes(self, position: Position, size: int) -> bytes:
        with self._path(position.segment).open("rb") as file:
            file.seek(position.offset)
            # Read at most a few MiB at a time; whole records are decoded.
            return file.read(min(size - position.offset, 4 << 20))

    def _recover(self, segment: int) -> int:
        path = self._path(segment)
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            logger.error("spool segment %s has no valid header; removing it", path)
            return 0
        payloads, end = decode_records(data, len(MAGIC))
        if end < len(data):
            logger.warning(
                "spool segment %s ends with %d bytes of a torn or damaged record; "
                "cutting them off",
                path,
                len(data) - end,
            )
            with path.open("r+b") as file:
                file.truncate(end)
        self._sizes[segment] = end
        return len(payloads)

    def _open_segment(self, segment: int) -> None:
        path = self._path(segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, MAGIC)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
        self._fd = fd
        self._current = segment
        self._sizes[segment] = len(MAGIC)
        self._unreleased[segment] = 0

    def _rotate(self) -> None:
        old = self._fd
        old_segment = self._current
        self._open_segment(old_segment + 1)
        # The old file is fsynced and closed by the next sync.
        if old not in self._dirty_fds:
            self._dirty_fds.append(old)
        self._closing_fds.append(old)
        if self._unreleased.get(old_segment, 0) == 0:
            del self._unreleased[old_segment]
            self._sizes.pop(old_segment, None)
            self._path(old_segment).unlink(missing_ok=True)


def _fdatasync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
