"""Tests of the spool file format, recovery and release."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.spool import (
    MAGIC,
    Position,
    Spool,
    decode_records,
    encode_record,
)


def test_records_round_trip() -> None:
    data = encode_record(b"one") + encode_record(b"") + encode_record(b"three")
    payloads, end = decode_records(data)
    assert payloads == [b"one", b"", b"three"]
    assert end == len(data)


def test_decode_stops_at_torn_record() -> None:
    whole = encode_record(b"kept")
    torn = encode_record(b"lost in the crash")[:-3]
    payloads, end = decode_records(whole + torn)
    assert payloads == [b"kept"]
    assert end == len(whole)


def test_decode_stops_at_bad_checksum() -> None:
    damaged = bytearray(encode_record(b"abcdef"))
    damaged[-1] ^= 0xFF
    payloads, end = decode_records(encode_record(b"ok") + bytes(damaged))
    assert payloads == [b"ok"]
    assert end == len(encode_record(b"ok"))


def test_spool_reopen_replays_unreleased(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.open() is None
    first = spool.append(b"a")
    spool.append(b"b")
    assert first is not None
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20)
    start = again.open()
    assert start == Position(first.segment, len(MAGIC))
    records, after = again.read(start, 10)
    assert [payload for _, payload in records] == [b"a", b"b"]
    assert after == again.end()
    again.release(first.segment, 2)
    again.close()
    assert list(tmp_path.iterdir()) == []


def test_spool_cuts_torn_tail_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    spool.append(b"whole")
    spool.close()
    segment = next(tmp_path.iterdir())
    with segment.open("ab") as file:
        file.write(encode_record(b"torn record")[:7])

    again = Spool(tmp_path, max_bytes=1 << 20)
    start = again.open()
    assert start is not None
    records, _ = again.read(start, 10)
    assert [payload for _, payload in records] == [b"whole"]
    assert segment.stat().st_size == len(MAGIC) + len(encode_record(b"whole"))
    again.close()


def test_spool_full_returns_none(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 16)
    spool.open()
    payload = b"x" * 1000
    written = 0
    while spool.append(payload) is not None:
        written += 1
    assert written == (spool.max_bytes - len(MAGIC)) // len(encode_record(payload))
    assert spool.dropped == 1
    spool.close()


def test_spool_rotates_and_deletes_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    payload = b"y" * 10_000
    positions = [spool.append(payload) for _ in range(30)]
    segments = sorted({p.segment for p in positions if p is not None})
    assert len(segments) > 1
    spool.sync_now()
    records, _ = spool.read(Position(segments[0], len(MAGIC)), 100)
    assert len(records) == 30
    first_count = sum(
        1 for p in positions if p is not None and p.segment == segments[0]
    )
    spool.release(segments[0], first_count)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert f"{segments[0]:020d}.spool" not in names
    with pytest.raises(ValueError):
        spool.release(segments[-1], 10_000)
    spool.close()


def test_release_all_truncates_current(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    position = spool.append(b"event")
    assert position is not None
    spool.release(position.segment, 1)
    assert spool.size_bytes == len(MAGIC)
    after = spool.append(b"next")
    assert after == Position(position.segment, len(MAGIC))
    spool.close()
