"""The delta format (``docs/delta-format.md``): produce, apply, and refuse what is not the base."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bareos_hyperv.storage.delta import (
    HEADER_SIZE,
    MIN_CHUNK_SIZE,
    TRAILER_SIZE,
    ChunkHasher,
    DeltaApplier,
    DeltaBaseMismatch,
    DeltaError,
    DeltaFormatError,
    DeltaHeader,
    DeltaReader,
    DeltaResultMismatch,
    FilePatchTarget,
    ImageHashes,
    chunk_size_for,
    delta_size,
    merge_ranges,
)

MiB = 1024 * 1024
CHUNK = 64 * 1024  # the smallest chunk the format allows: keeps the tests small


def _hashes(data: bytes, chunk: int = CHUNK) -> ImageHashes:
    hasher = ChunkHasher(chunk)
    hasher.update(data)
    return hasher.finish()


def _delta(base: bytes, result: bytes, ranges: List[Tuple[int, int]], *, job: int = 2, base_job: int = 1,
           chunk: int = CHUNK, with_sha: bool = True) -> bytes:
    ranges = merge_ranges(ranges, limit=len(result))
    header = DeltaHeader(job_id=job, base_job_id=base_job, base_size=len(base),
                         base_digest=_hashes(base, chunk).digest(), result_size=len(result),
                         result_digest=_hashes(result, chunk).digest(), chunk_size=chunk,
                         record_count=len(ranges), payload_bytes=sum(n for _o, n in ranges),
                         result_sha256=hashlib.sha256(result).hexdigest() if with_sha else None)
    reader = DeltaReader(header, ranges, lambda o, n: result[o:o + n], name="test delta")
    out = bytearray()
    buf = bytearray(7777)  # an odd size: pieces never line up with records
    while True:
        n = reader.readinto(buf)
        if not n:
            break
        out += buf[:n]
    assert len(out) == reader.size == delta_size(ranges)
    return bytes(out)


def _apply(path: Path, delta: bytes, *, piece: int = 5000, base: ImageHashes | None = None,
           expect_base_job: int | None = None) -> ImageHashes:
    applier = DeltaApplier(FilePatchTarget(str(path)), name=path.name, base=base, expect_base_job=expect_base_job)
    for pos in range(0, len(delta), piece):
        applier.write(delta[pos:pos + piece])
    applier.close()
    assert applier.result is not None
    return applier.result


def test_chunk_size_keeps_the_digest_list_bounded() -> None:
    assert chunk_size_for(0) == MIN_CHUNK_SIZE
    assert chunk_size_for(4 << 30) == MIN_CHUNK_SIZE
    assert chunk_size_for(127 << 30) == 8 * MiB
    assert -(-(16 << 40) // chunk_size_for(16 << 40)) <= 16384


def test_image_digest_depends_on_every_byte_and_the_length() -> None:
    data = bytes(range(256)) * 1000
    assert _hashes(data).digest() == _hashes(data).digest()
    assert _hashes(data).digest() != _hashes(data[:-1]).digest()
    assert _hashes(data).digest() != _hashes(data + b"\0").digest()
    changed = bytearray(data)
    changed[123456] ^= 1
    assert _hashes(data).digest() != _hashes(bytes(changed)).digest()
    assert _hashes(b"").digest() == ImageHashes(CHUNK, 0, []).digest()
    again = ImageHashes.from_bytes(CHUNK, len(data), _hashes(data).to_bytes())
    assert again.digest() == _hashes(data).digest()


def test_header_round_trip_and_damage() -> None:
    header = DeltaHeader(job_id=7, base_job_id=5, base_size=10, base_digest="ab" * 32, result_size=20,
                         result_digest="cd" * 32, chunk_size=MiB, record_count=3, payload_bytes=99,
                         result_sha256="ef" * 32)
    raw = header.pack()
    assert len(raw) == HEADER_SIZE and DeltaHeader.unpack(raw) == header
    for at in (0, 9, 17, 100, 200, 250):
        bad = bytearray(raw)
        bad[at] ^= 0x40
        with pytest.raises(DeltaFormatError):
            DeltaHeader.unpack(bytes(bad))


@pytest.mark.parametrize("grow", [0, 300_000, -200_000])
def test_apply_turns_the_base_into_the_result(tmp_path: Path, grow: int) -> None:
    rnd = random.Random(grow)
    base = rnd.randbytes(1_000_000)
    result = bytearray(base[: len(base) + grow] if grow < 0 else base + rnd.randbytes(grow))
    ranges = []
    for _ in range(20):
        at = rnd.randrange(0, len(result) - 5000)
        result[at:at + 4096] = rnd.randbytes(4096)
        ranges.append((at, 4096))
    if grow > 0:
        ranges.append((len(base), grow))
    path = tmp_path / "disk.vhdx"
    path.write_bytes(base)
    hashes = _apply(path, _delta(base, bytes(result), ranges))
    assert path.read_bytes() == bytes(result)
    assert hashes.digest() == _hashes(bytes(result)).digest()


def test_an_empty_delta_keeps_the_file(tmp_path: Path) -> None:
    base = random.Random(1).randbytes(200_000)
    path = tmp_path / "disk.vhdx"
    path.write_bytes(base)
    delta = _delta(base, base, [])
    assert len(delta) == HEADER_SIZE + TRAILER_SIZE
    _apply(path, delta, base=_hashes(base))
    assert path.read_bytes() == base


def test_a_chain_applies_in_order_and_refuses_any_other_order(tmp_path: Path) -> None:
    rnd = random.Random(3)
    images = [rnd.randbytes(300_000)]
    deltas = []
    for job in (2, 3, 4):
        nxt = bytearray(images[-1])
        at = rnd.randrange(0, len(nxt) - 100)
        nxt[at:at + 100] = rnd.randbytes(100)
        deltas.append(_delta(images[-1], bytes(nxt), [(at, 100)], job=job, base_job=job - 1))
        images.append(bytes(nxt))
    path = tmp_path / "disk.vhdx"
    path.write_bytes(images[0])
    # Missing the second delta: the third is refused before it writes anything.
    _apply(path, deltas[0], expect_base_job=1)
    with pytest.raises(DeltaBaseMismatch, match="missing, repeated or out of order"):
        _apply(path, deltas[2])
    assert path.read_bytes() == images[1]
    # The same delta twice is refused too.
    with pytest.raises(DeltaBaseMismatch):
        _apply(path, deltas[0])
    with pytest.raises(DeltaBaseMismatch, match="image of job 1"):
        _apply(path, deltas[1], expect_base_job=1)
    _apply(path, deltas[1])
    _apply(path, deltas[2])
    assert path.read_bytes() == images[3]


def test_damaged_or_cut_deltas_are_errors(tmp_path: Path) -> None:
    rnd = random.Random(4)
    base = rnd.randbytes(150_000)
    result = bytearray(base)
    result[1000:2000] = rnd.randbytes(1000)
    delta = _delta(base, bytes(result), [(1000, 1000)])
    path = tmp_path / "disk.vhdx"
    for cut in (10, HEADER_SIZE + 5, len(delta) - 1):
        path.write_bytes(base)
        applier = DeltaApplier(FilePatchTarget(str(path)), name="d")
        applier.write(delta[:cut])
        with pytest.raises(DeltaFormatError, match="cut short"):
            applier.close()
    # A flipped data byte: the trailer's digest catches it.
    bad = bytearray(delta)
    bad[HEADER_SIZE + 16 + 10] ^= 1
    path.write_bytes(base)
    with pytest.raises(DeltaFormatError, match="trailer"):
        _apply(path, bytes(bad))
    # Bytes after the trailer.
    path.write_bytes(base)
    with pytest.raises(DeltaFormatError, match="after"):
        _apply(path, delta + b"x")


def test_a_result_that_does_not_match_is_refused(tmp_path: Path) -> None:
    rnd = random.Random(5)
    base = rnd.randbytes(150_000)
    result = bytearray(base)
    result[5000:6000] = rnd.randbytes(1000)
    # The delta forgets a change the result digest covers (as a lying change tracker would).
    result[90_000] ^= 1
    delta = _delta(base, bytes(result), [(5000, 1000)])
    path = tmp_path / "disk.vhdx"
    path.write_bytes(base)
    with pytest.raises(DeltaResultMismatch):
        _apply(path, delta)


def test_not_a_delta(tmp_path: Path) -> None:
    path = tmp_path / "disk.vhdx"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(DeltaFormatError, match="not a bareos-hyperv delta"):
        _apply(path, b"conectix" + bytes(300))
    with pytest.raises(DeltaError):
        DeltaApplier(FilePatchTarget(str(tmp_path / "missing")), name="m")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_changes_round_trip(tmp_path: Path, data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 400_000))
    base = bytes(data.draw(st.binary(min_size=0, max_size=64))) * (size // 64 + 1)
    base = base[:size]
    new_size = data.draw(st.integers(0, 450_000))
    result = bytearray(base[:new_size]) + bytearray(max(0, new_size - len(base)))
    ranges = []
    if new_size > len(base):
        ranges.append((len(base), new_size - len(base)))
    for _ in range(data.draw(st.integers(0, 6))):
        if not new_size:
            break
        at = data.draw(st.integers(0, new_size - 1))
        n = data.draw(st.integers(1, min(70_000, new_size - at)))
        result[at:at + n] = bytes([data.draw(st.integers(0, 255))]) * n
        ranges.append((at, n))
    path = tmp_path / "d.vhdx"
    path.write_bytes(base)
    _apply(path, _delta(base, bytes(result), ranges), piece=data.draw(st.integers(1, 70_000)))
    assert path.read_bytes() == bytes(result)


def test_hashing_reader_digests_what_the_core_reads(tmp_path: Path) -> None:
    from bareos_hyperv.storage.delta import HashingReader
    from bareos_hyperv.storage.local import LocalReader

    data = random.Random(9).randbytes(3 * MiB + 12345)
    path = tmp_path / "disk.vhdx"
    path.write_bytes(data)
    hasher = ChunkHasher(CHUNK)
    reader = HashingReader(LocalReader(str(path)), hasher)
    buf = bytearray(100_000)
    got = bytearray()
    while True:
        n = reader.readinto(buf)
        if not n:
            break
        got += buf[:n]
    reader.close()
    assert bytes(got) == data
    assert hasher.finish().digest() == _hashes(data).digest()
    with HashingReader(LocalReader(str(path)), ChunkHasher(CHUNK)) as other, \
            pytest.raises(DeltaError, match="sequentially"):
        other.read_at(0, 1)
