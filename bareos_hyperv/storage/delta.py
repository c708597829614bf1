"""Image digests and disk-file deltas: what an incremental backup stores and how a restore applies it.

The format is specified in ``docs/delta-format.md``; this module is its only implementation.
It knows files and byte ranges, nothing of Hyper-V or WS-Management.

*Image digest.*  A file of ``N`` bytes is cut into chunks of ``chunk_size`` bytes (the last one
may be short); each chunk gets its SHA-256, and the image digest is the SHA-256 of a fixed
prefix, the chunk size, ``N`` and the chunk digests in order (:class:`ImageHashes`).  It is a
one-level hash tree: an incremental backup that read only the changed chunks can still state the
digest of the whole file, and a restore proves the rebuilt file with it.

*Sparse full.*  A delta whose base is the empty file (flag bit 1, no base job): the full image of a
dynamic or differencing VHD/VHDX made of the ranges its tables reference; the rest of the file is
zeros in the result (the *normalised image*).  Its digests are known only once every range was
read, so they travel in the trailer (:class:`DeltaReader` with ``sparse`` headers computes them on
a thread of its own; :class:`DeltaApplier` recomputes them while it writes, without reading back).

*Delta.*  A header naming the base (the job whose image it applies to, that image's size and
digest) and the result (size, digest), then records ``(offset, length, bytes)`` in ascending
order, then a trailer with the record count and the SHA-256 of everything before it
(:class:`DeltaReader` writes one, :class:`DeltaApplier` applies one).  Applying a delta to any
file other than its base is refused before a byte is written, and the result is checked against
the digest in the header, so a missing, repeated or out-of-order delta is an error, never a
silently wrong disk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Callable, Iterable, List, Optional, Protocol, Sequence, Set, Tuple, Type, Union

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.base import Buffer, FileReader

__all__ = [
    "DELTA_MAGIC",
    "EMPTY_BASE_JOB",
    "HEADER_SIZE",
    "MAX_CHUNKS",
    "MIN_CHUNK_SIZE",
    "RECORD_HEAD_SIZE",
    "TRAILER_SIZE",
    "ChunkHasher",
    "DeltaApplier",
    "DeltaBaseMismatch",
    "DeltaError",
    "DeltaFormatError",
    "DeltaHeader",
    "DeltaReader",
    "DeltaResultMismatch",
    "FilePatchTarget",
    "HashingReader",
    "ImageHashes",
    "PatchTarget",
    "chunk_size_for",
    "delta_size",
    "empty_image_digest",
    "hash_file",
    "merge_ranges",
]

KiB = 1024
MiB = 1024 * KiB

#: Smallest chunk of the image digest: VHDX structures are 1 MiB aligned, so a chunk never mixes
#: the header section with payload.
MIN_CHUNK_SIZE = 1 * MiB
MAX_CHUNK_SIZE = 1024 * MiB
#: Chunks per file at most: the chunk digests travel in a Bareos restore object (< 1 MB each).
MAX_CHUNKS = 16384
READ_SIZE = 4 * MiB  # bytes read at once when hashing or copying ranges

DELTA_MAGIC = b"BHVDELTA"
TRAILER_MAGIC = b"BHVDEND\0"
DELTA_VERSION = 1
HEADER_SIZE = 256
RECORD_HEAD_SIZE = 16
TRAILER_SIZE = 48
FLAG_RESULT_SHA256 = 1  # the header carries the plain SHA-256 of the result
# A sparse full: the base is the empty file, and the result's image digest and plain SHA-256 are in
# the trailer (between the record count and the trailer's own digest), not in the header.
FLAG_SPARSE = 2
SPARSE_TRAILER_SIZE = TRAILER_SIZE + 64
#: The "base job" of a sparse full: none (its base is the empty file).
EMPTY_BASE_JOB = 0
_ZEROS = bytes(READ_SIZE)
_ZERO_CHUNK_DIGESTS: dict[int, bytes] = {}
_DIGEST_PREFIX = b"bareos-hyperv image digest 1\0"
_NO_DIGEST = bytes(32)

# magic, version, header length, flags, job, base job, base size, base digest, result size,
# result digest, result sha256, chunk size, reserved, records, payload bytes; then reserved space
# up to the header's own SHA-256 in its last 32 bytes.
_HEADER = struct.Struct("<8sHHIQQQ32sQ32s32sIIQQ")
_HEADER_CHECKED = HEADER_SIZE - 32
_RECORD = struct.Struct("<QQ")
_TRAILER = struct.Struct("<8sQ32s")
_SPARSE_TRAILER = struct.Struct("<8sQ32s32s32s")
assert _HEADER.size <= _HEADER_CHECKED and _RECORD.size == RECORD_HEAD_SIZE and _TRAILER.size == TRAILER_SIZE
assert _SPARSE_TRAILER.size == SPARSE_TRAILER_SIZE


class DeltaError(StorageError):
    """A delta cannot be read or applied."""


class DeltaFormatError(DeltaError):
    """The bytes are not a delta this version understands (damaged, truncated or not a delta)."""


class DeltaBaseMismatch(DeltaError):
    """The file a delta is applied to is not the image the delta was made against."""


class DeltaResultMismatch(DeltaError):
    """After applying a delta the file's digest differs from the one the backup recorded."""


def chunk_size_for(size: int) -> int:
    """The chunk size for a file that may grow to about ``size`` bytes (a power of two).

    At least :data:`MIN_CHUNK_SIZE`, and large enough that a file of ``size`` bytes has at most
    :data:`MAX_CHUNKS` chunks.  The chunk size is fixed when a file's first image is saved and
    kept for every delta of the chain.
    """
    chunk = MIN_CHUNK_SIZE
    while chunk < MAX_CHUNK_SIZE and -(-max(size, 0) // chunk) > MAX_CHUNKS:
        chunk *= 2
    return chunk


@dataclass
class ImageHashes:
    """The chunk digests of one file image and its image digest (see module docstring)."""

    chunk_size: int
    size: int
    hashes: List[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.chunk_size < MIN_CHUNK_SIZE // 16 or self.chunk_size & (self.chunk_size - 1):
            raise DeltaFormatError(f"chunk size {self.chunk_size} is not a power of two of at least 64 KiB",
                                   what_to_do="the backup's records are damaged; run a full backup")
        if len(self.hashes) != self.count(self.size):
            raise DeltaFormatError(
                f"{len(self.hashes)} chunk digests for a file of {self.size} bytes in chunks of {self.chunk_size}",
                what_to_do="the backup's records are damaged; run a full backup")

    def count(self, size: int) -> int:
        """Number of chunks of a file of ``size`` bytes."""
        return -(-size // self.chunk_size)

    def digest(self) -> str:
        """The image digest (hex)."""
        h = hashlib.sha256(_DIGEST_PREFIX)
        h.update(struct.pack("<QQ", self.chunk_size, self.size))
        for d in self.hashes:
            h.update(d)
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The chunk digests, concatenated."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, chunk_size: int, size: int, data: bytes) -> ImageHashes:
        """Inverse of :meth:`to_bytes`."""
        if len(data) % 32:
            raise DeltaFormatError(f"{len(data)} bytes of chunk digests is not a multiple of 32",
                                   what_to_do="the backup's records are damaged; run a full backup")
        return cls(chunk_size, size, [data[i:i + 32] for i in range(0, len(data), 32)])


class ChunkHasher:
    """Chunk digests of bytes fed in order (a file being read or written sequentially).

    With ``plain=True`` the SHA-256 of the whole stream is computed too (:attr:`sha256`); callers
    that already have it (the agent hashes every item it moves) leave it off to save the CPU.
    """

    def __init__(self, chunk_size: int, *, plain: bool = False) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self.hashes: List[bytes] = []
        self.sha256 = hashlib.sha256() if plain else None
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: Union[bytes, Buffer]) -> None:
        """Feed the next bytes."""
        view = memoryview(data).cast("B")
        if self.sha256 is not None:
            self.sha256.update(view)
        self.size += len(view)
        while view:
            take = min(len(view), self.chunk_size - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self.hashes.append(self._current.digest())
                self._current = hashlib.sha256()
                self._filled = 0

    def update_zeros(self, count: int) -> None:
        """Feed ``count`` zero bytes (a hole of a sparse image) without allocating them.

        Whole chunks of zeros take a digest computed once per chunk size; the plain SHA-256, when
        kept, still has to see every zero byte.
        """
        if count <= 0:
            return
        if self.sha256 is not None:
            left = count
            while left:
                n = min(left, len(_ZEROS))
                self.sha256.update(memoryview(_ZEROS)[:n])
                left -= n
        self.size += count
        if self._filled:
            take = min(count, self.chunk_size - self._filled)
            self._feed_zeros(take)
            count -= take
        whole, rest = divmod(count, self.chunk_size)
        if whole:
            self.hashes.extend([_zero_chunk_digest(self.chunk_size)] * whole)
        self._feed_zeros(rest)

    def _feed_zeros(self, count: int) -> None:
        """Zeros into the current chunk (never past its end)."""
        while count:
            n = min(count, len(_ZEROS))
            self._current.update(memoryview(_ZEROS)[:n])
            self._filled += n
            count -= n
        if self._filled == self.chunk_size:
            self.hashes.append(self._current.digest())
            self._current = hashlib.sha256()
            self._filled = 0

    def finish(self) -> ImageHashes:
        """The hashes of everything fed (call once, after the last byte)."""
        if self._filled:
            self.hashes.append(self._current.digest())
            self._current = hashlib.sha256()
            self._filled = 0
        return ImageHashes(self.chunk_size, self.size, list(self.hashes))


ReadAt = Callable[[int, int], bytes]


def _zero_chunk_digest(chunk_size: int) -> bytes:
    digest = _ZERO_CHUNK_DIGESTS.get(chunk_size)
    if digest is None:
        h = hashlib.sha256()
        left = chunk_size
        while left:
            n = min(left, len(_ZEROS))
            h.update(memoryview(_ZEROS)[:n])
            left -= n
        digest = _ZERO_CHUNK_DIGESTS[chunk_size] = h.digest()
    return digest


def empty_image_digest(chunk_size: int) -> str:
    """The image digest of the empty file (the base of a sparse full)."""
    return ImageHashes(chunk_size, 0, []).digest()


def _read_exact(read_at: ReadAt, offset: int, length: int, what: str) -> bytes:
    data = read_at(offset, length)
    if len(data) != length:
        raise DeltaError(f"{what}: short read at offset {offset}: {len(data)} of {length} bytes",
                         what_to_do="the file changed size while it was read; run the job again")
    return data


def hash_file(read_at: ReadAt, size: int, chunk_size: int, *,
              chunks: Optional[Iterable[int]] = None, what: str = "file") -> List[Tuple[int, bytes]]:
    """``(index, digest)`` of the chunks ``chunks`` (all when None) of a file of ``size`` bytes."""
    count = -(-size // chunk_size)
    wanted = range(count) if chunks is None else sorted(set(chunks))
    out = []
    for index in wanted:
        if not 0 <= index < count:
            continue
        start = index * chunk_size
        length = min(chunk_size, size - start)
        h = hashlib.sha256()
        pos = start
        while pos < start + length:
            n = min(READ_SIZE, start + length - pos)
            h.update(_read_exact(read_at, pos, n, what))
            pos += n
        out.append((index, h.digest()))
    return out


def merge_ranges(ranges: Iterable[Tuple[int, int]], *, limit: Optional[int] = None) -> List[Tuple[int, int]]:
    """``(offset, length)`` ranges sorted, overlapping and adjacent ones merged, clipped to ``limit``."""
    out: List[Tuple[int, int]] = []
    for offset, length in sorted((int(o), int(n)) for o, n in ranges):
        end = offset + length
        if limit is not None:
            end = min(end, limit)
        if end <= offset:
            continue
        if out and offset <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_off + last_len, end) - last_off)
        else:
            out.append((offset, end - offset))
    return out


def delta_size(ranges: Sequence[Tuple[int, int]], *, sparse: bool = False) -> int:
    """Bytes of a delta with these records (header, record heads and data, trailer)."""
    trailer = SPARSE_TRAILER_SIZE if sparse else TRAILER_SIZE
    return HEADER_SIZE + sum(RECORD_HEAD_SIZE + n for _o, n in ranges) + trailer


@dataclass(frozen=True)
class DeltaHeader:
    """The fixed header of a delta (``docs/delta-format.md``).

    ``job_id`` wrote the delta; ``base_job_id`` is the job whose image of the file it applies to
    (``base_size``/``base_digest`` describe that image); ``result_*`` the image after applying.
    ``result_sha256`` is the plain SHA-256 of the result when the backup read the whole file.
    ``sparse``: a sparse full (base job :data:`EMPTY_BASE_JOB`, base size 0); its result digests are
    in the trailer, so ``result_digest`` is empty and ``result_sha256`` None here.
    """

    job_id: int
    base_job_id: int
    base_size: int
    base_digest: str
    result_size: int
    result_digest: str
    chunk_size: int
    record_count: int
    payload_bytes: int
    result_sha256: Optional[str] = None
    sparse: bool = False

    @classmethod
    def sparse_full(cls, *, job_id: int, size: int, chunk_size: int, ranges: Sequence[Tuple[int, int]]) -> DeltaHeader:
        """The header of a sparse full of a file of ``size`` bytes made of ``ranges``."""
        return cls(job_id=job_id, base_job_id=EMPTY_BASE_JOB, base_size=0, base_digest=empty_image_digest(chunk_size),
                   result_size=size, result_digest="", chunk_size=chunk_size, record_count=len(ranges),
                   payload_bytes=sum(n for _o, n in ranges), sparse=True)

    @property
    def trailer_size(self) -> int:
        """Bytes of this delta's trailer."""
        return SPARSE_TRAILER_SIZE if self.sparse else TRAILER_SIZE

    def pack(self) -> bytes:
        """The 256 header bytes."""
        flags = FLAG_RESULT_SHA256 if self.result_sha256 and not self.sparse else 0
        if self.sparse:
            flags |= FLAG_SPARSE
        body = _HEADER.pack(DELTA_MAGIC, DELTA_VERSION, HEADER_SIZE, flags, self.job_id, self.base_job_id,
                            self.base_size, bytes.fromhex(self.base_digest), self.result_size,
                            bytes.fromhex(self.result_digest) if not self.sparse else _NO_DIGEST,
                            bytes.fromhex(self.result_sha256) if self.result_sha256 else _NO_DIGEST,
                            self.chunk_size, 0, self.record_count, self.payload_bytes)
        body = body.ljust(_HEADER_CHECKED, b"\0")
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, data: bytes, *, name: str = "delta") -> DeltaHeader:
        """Parse and check the header bytes.

        :raises DeltaFormatError: not a delta, another version, or damaged.
        """
        hint = "the delta is damaged or is not a bareos-hyperv delta; restore another backup of this disk"
        if len(data) < HEADER_SIZE:
            raise DeltaFormatError(f"{name}: {len(data)} bytes is shorter than a delta header", what_to_do=hint)
        (magic, version, length, flags, job, base_job, base_size, base_digest, result_size, result_digest,
         result_sha, chunk, _reserved, records, payload) = _HEADER.unpack_from(data)
        if magic != DELTA_MAGIC:
            raise DeltaFormatError(f"{name} is not a bareos-hyperv delta (signature {magic!r})", what_to_do=hint)
        if version != DELTA_VERSION or length != HEADER_SIZE:
            raise DeltaFormatError(
                f"{name} is delta version {version} (header {length} bytes); this bareos-hyperv reads version "
                f"{DELTA_VERSION}", what_to_do="restore with a bareos-hyperv at least as new as the one that made "
                "the backup")
        if hashlib.sha256(data[:_HEADER_CHECKED]).digest() != data[_HEADER_CHECKED:HEADER_SIZE]:
            raise DeltaFormatError(f"{name}: the header's checksum does not match", what_to_do=hint)
        if chunk < MIN_CHUNK_SIZE // 16 or chunk & (chunk - 1):
            raise DeltaFormatError(f"{name}: chunk size {chunk} is not valid", what_to_do=hint)
        sparse = bool(flags & FLAG_SPARSE)
        if flags & ~(FLAG_RESULT_SHA256 | FLAG_SPARSE) or (sparse and (flags & FLAG_RESULT_SHA256
                                                                       or base_job != EMPTY_BASE_JOB or base_size)):
            raise DeltaFormatError(f"{name}: flags {flags:#x} do not fit the header (a sparse full has no base)",
                                   what_to_do=hint)
        return cls(job_id=job, base_job_id=base_job, base_size=base_size, base_digest=base_digest.hex(),
                   result_size=result_size, result_digest="" if sparse else result_digest.hex(), chunk_size=chunk,
                   record_count=records, payload_bytes=payload,
                   result_sha256=result_sha.hex() if flags & FLAG_RESULT_SHA256 else None, sparse=sparse)


class _GapHasher:
    """Feeds the bytes of ranges (and the zeros between them) to a digest on a thread of its own.

    The reader hands over copies of each range's bytes with their offset; the gaps between them
    (and up to the end) are zeros.  Hashing in the reading thread would halve the throughput of
    the stream (see :class:`HashingReader`); hashlib releases the GIL on large updates.
    """

    BUFFERS = 4

    def __init__(self, name: str, update: Callable[[memoryview], None], zeros: Callable[[int], None]) -> None:
        self.position = 0
        self._update = update
        self._zeros = zeros
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._pooled = 0
        self._work: queue.SimpleQueue[Optional[Tuple[int, Optional[bytearray], int]]] = queue.SimpleQueue()
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            offset, buf, n = item
            try:
                if self.error is None:
                    self._zeros(offset - self.position)
                    self.position = offset
                    if buf is not None:
                        with memoryview(buf) as view:
                            self._update(view[:n])
                        self.position += n
            except BaseException as exc:  # reported by the owner; the reading thread must not block
                self.error = exc
            if buf is not None:
                self._free.put(buf)

    def submit(self, offset: int, data: Optional[memoryview]) -> None:
        """Hash a copy of ``data`` at ``offset`` (None: only the zeros up to ``offset``)."""
        if data is None:
            self._work.put((offset, None, 0))
            return
        n = len(data)
        if self._pooled < self.BUFFERS:
            self._pooled += 1
            buf = bytearray(max(n, READ_SIZE))
        else:
            buf = self._free.get()
            if len(buf) < n:
                buf = bytearray(n)
        buf[:n] = data
        self._work.put((offset, buf, n))

    def stop(self) -> None:
        """Wait for what was submitted, then end the thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._work.put(None)
            thread.join()


class _ImageHasher:
    """Chunk digests and plain SHA-256 of a sparse image, from its ranges, on two threads.

    The two digests are independent, so each has a thread (and a copy of the bytes): with the
    zeros of the holes the plain SHA-256 is the larger part of the work.
    """

    def __init__(self, chunk_size: int) -> None:
        self.chunks = ChunkHasher(chunk_size)
        self.plain = hashlib.sha256()
        self._workers = (_GapHasher("image-chunks", self.chunks.update, self.chunks.update_zeros),
                         _GapHasher("image-sha256", self.plain.update, self._plain_zeros))

    def _plain_zeros(self, count: int) -> None:
        while count > 0:
            n = min(count, len(_ZEROS))
            self.plain.update(memoryview(_ZEROS)[:n])
            count -= n

    def submit(self, offset: int, data: memoryview) -> None:
        """Hash ``data``, the image's bytes at ``offset`` (after every earlier submission)."""
        for worker in self._workers:
            worker.submit(offset, data)

    def finish(self, size: int) -> Tuple[ImageHashes, str]:
        """Zeros up to ``size``, then the image's chunk digests and plain SHA-256 (hex)."""
        for worker in self._workers:
            worker.submit(size, None)
        self.stop()
        for worker in self._workers:
            if worker.error is not None:
                raise DeltaError(f"computing the image digests failed: {worker.error}")
        return self.chunks.finish(), self.plain.hexdigest()

    def stop(self) -> None:
        """End the threads (idempotent)."""
        for worker in self._workers:
            worker.stop()


class DeltaReader:
    """A delta produced on the fly from a source file: header, then each range's bytes, then the trailer.

    Reads ``ranges`` from ``read_at`` (the frozen disk file), or, when ``source`` is given, from
    that reader's own stream (seek to each range, read ahead no further than its end when the
    reader can be told so: ``set_limit``), which keeps large reads in flight over SMB.  Nothing
    but one :data:`READ_SIZE` piece is held; ``close`` is called when the reader is closed (to
    release the source).  For a sparse full (``header.sparse``) the image's digests are computed
    while the ranges stream and written into the trailer; :attr:`result` and :attr:`sha256` hold
    them once the trailer was produced.  Implements :class:`~bareos_hyperv.storage.base.FileReader`
    (sequential use).
    """

    def __init__(self, header: DeltaHeader, ranges: Sequence[Tuple[int, int]], read_at: Optional[ReadAt] = None, *,
                 name: str = "delta", close: Optional[Callable[[], None]] = None,
                 source: Optional[FileReader] = None) -> None:
        if header.record_count != len(ranges) or header.payload_bytes != sum(n for _o, n in ranges):
            raise ValueError("the header does not count the ranges given")
        if read_at is None and source is None:
            raise ValueError("a delta needs read_at or source")
        end = 0
        for offset, length in ranges:
            if length <= 0 or offset < end or offset + length > header.result_size:
                raise ValueError(f"range {offset}+{length} is empty, out of order or beyond the result")
            end = offset + length
        self.header = header
        self.name = name
        self._ranges = list(ranges)
        self._read_at = read_at
        self._source = source
        self._close = close
        self._size = delta_size(self._ranges, sparse=header.sparse)
        self._pos = 0
        self._sha = hashlib.sha256()
        self._pending = memoryview(b"")
        self._next_range = 0
        self._range_pos = 0  # bytes of the current range already produced
        self._in_range = False
        self._stage = 0  # 0 header, 1 records, 2 trailer, 3 done
        self._buffer: Optional[bytearray] = None
        self._image: Optional[_ImageHasher] = _ImageHasher(header.chunk_size) if header.sparse else None
        self.result: Optional[ImageHashes] = None
        self.sha256: Optional[str] = None
        self.bytes_read = 0  # of the source file

    @property
    def size(self) -> int:
        """Length of the whole delta."""
        return self._size

    def _produce(self) -> memoryview:
        """The next piece of the stream (empty at the end); all but the trailer go into its digest."""
        piece = self._piece()
        if self._stage != 3:
            self._sha.update(piece)
        return piece

    def _read_range(self, into: memoryview) -> int:
        """Read the current range's next bytes into ``into`` (at most what is left of the range)."""
        offset, length = self._ranges[self._next_range]
        at = offset + self._range_pos
        n = min(len(into), length - self._range_pos)
        if self._source is None:
            assert self._read_at is not None
            data = _read_exact(self._read_at, at, n, self.name)
            into[:n] = data
        else:
            if self._range_pos == 0:
                self._source.seek(at)
                set_limit = getattr(self._source, "set_limit", None)
                if set_limit is not None:
                    set_limit(offset + length)
            n = self._source.readinto(into[:n])
            if n <= 0:
                raise DeltaError(f"{self.name}: short read at offset {at}",
                                 what_to_do="the file changed size while it was read; run the job again")
        if self._image is not None:
            self._image.submit(at, into[:n])
        self.bytes_read += n
        self._range_pos += n
        if self._range_pos == length:
            self._in_range = False
            self._next_range += 1
        return n

    def _piece(self) -> memoryview:
        if self._stage == 0:
            self._stage = 1
            return memoryview(self.header.pack())
        if self._stage == 1:
            if self._in_range:
                if self._buffer is None:
                    self._buffer = bytearray(READ_SIZE)
                view = memoryview(self._buffer)
                n = self._read_range(view)
                return view[:n]
            if self._next_range < len(self._ranges):
                offset, length = self._ranges[self._next_range]
                self._in_range = True
                self._range_pos = 0
                return memoryview(_RECORD.pack(offset, length))
            self._stage = 2
        if self._stage == 2:
            self._stage = 3
            if self._image is None:
                return memoryview(_TRAILER.pack(TRAILER_MAGIC, len(self._ranges), self._sha.copy().digest()))
            image, self._image = self._image, None
            self.result, self.sha256 = image.finish(self.header.result_size)
            return memoryview(_SPARSE_TRAILER.pack(TRAILER_MAGIC, len(self._ranges),
                                                   bytes.fromhex(self.result.digest()), bytes.fromhex(self.sha256),
                                                   self._sha.copy().digest()))
        return memoryview(b"")

    def readinto(self, buf: Buffer) -> int:
        """Fill ``buf`` with the next bytes of the delta; 0 at the end."""
        out = memoryview(buf).cast("B")
        if not self._pending and self._stage == 1 and self._in_range and len(out) >= RECORD_HEAD_SIZE:
            # A range's bytes straight into the caller's buffer: no copy on the hot path.
            n = self._read_range(out)
            self._sha.update(out[:n])
            self._pos += n
            return n
        while not self._pending:
            if self._stage == 3:
                return 0
            self._pending = self._produce()
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (the rest when negative)."""
        want = self._size - self._pos if size < 0 else size
        out = bytearray(want)
        got = 0
        while got < want:
            n = self.readinto(memoryview(out)[got:])
            if n == 0:
                break
            got += n
        return bytes(out[:got])

    def read_at(self, offset: int, length: int) -> bytes:
        """Not supported: a delta is produced in order."""
        raise DeltaError(f"{self.name} can only be read sequentially")

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only a no-op seek is supported."""
        target = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        if target != self._pos:
            raise DeltaError(f"{self.name} can only be read sequentially")
        return self._pos

    def tell(self) -> int:
        """Bytes produced so far."""
        return self._pos

    def close(self) -> None:
        """Release the source (and the hashing thread of an unfinished sparse full)."""
        image, self._image = self._image, None
        if image is not None:
            image.stop()
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> DeltaReader:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


class HashingReader:
    """A :class:`~bareos_hyperv.storage.base.FileReader` that feeds what it reads to a :class:`ChunkHasher`.

    A full copy of a disk file is read once; its chunk digests (the base of the next incremental)
    come from that same read.  The digests are computed on a thread of its own over a copy of each
    piece (a few buffers in flight), because hashing in the reading thread halves the throughput
    of a full backup (measured: 924 -> 447 MB/s on 2 cores); hashlib releases the GIL on large
    updates.  :meth:`close` waits for the thread, so the digests are complete once the reader is
    closed.  Only sequential reading is allowed.
    """

    BUFFERS = 4

    def __init__(self, reader: FileReader, hasher: ChunkHasher) -> None:
        self.reader = reader
        self.hasher = hasher
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._pooled = 0
        self._work: queue.SimpleQueue[Optional[Tuple[bytearray, int]]] = queue.SimpleQueue()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._run, name="chunk-sha256",
                                                                    daemon=True)
        self._thread.start()

    @property
    def size(self) -> int:
        """Size of the file."""
        return self.reader.size

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            buf, n = item
            try:
                with memoryview(buf) as view:
                    self.hasher.update(view[:n])
            except BaseException as exc:  # reported by close(); the reading thread must not block
                self._error = exc
            self._free.put(buf)

    def _submit(self, data: memoryview) -> None:
        n = len(data)
        if self._pooled < self.BUFFERS:
            self._pooled += 1
            buf = bytearray(n)
        else:
            buf = self._free.get()
            if len(buf) < n:
                buf = bytearray(n)
        buf[:n] = data
        self._work.put((buf, n))

    def readinto(self, buf: Buffer) -> int:
        """Read the next bytes; their digest is computed on the hashing thread."""
        n = self.reader.readinto(buf)
        if n:
            with memoryview(buf) as view:
                self._submit(view[:n].cast("B"))
        return n

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (hashed too)."""
        data = self.reader.read(size)
        if data:
            self._submit(memoryview(data))
        return data

    def read_at(self, offset: int, length: int) -> bytes:
        """Not counted: random reads would break the chunk digests."""
        raise DeltaError("a hashed full copy can only be read sequentially")

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only a no-op seek is allowed."""
        if (offset, whence) not in ((0, 1), (self.reader.tell(), 0)):
            raise DeltaError("a hashed full copy can only be read sequentially")
        return self.reader.tell()

    def tell(self) -> int:
        """Position in the file."""
        return self.reader.tell()

    def close(self) -> None:
        """Close the file and wait until every byte read is hashed (idempotent)."""
        thread, self._thread = self._thread, None
        try:
            self.reader.close()
        finally:
            if thread is not None:
                self._work.put(None)
                thread.join()
        if self._error is not None:
            raise DeltaError(f"computing the chunk digests failed: {self._error}")

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


class PatchTarget(Protocol):
    """A file a delta is applied to in place: random reads and writes, truncation."""

    @property
    def size(self) -> int:
        """Current length."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` (short only at the end of the file)."""

    def write_at(self, offset: int, data: Union[bytes, Buffer]) -> None:
        """Write all of ``data`` at ``offset``."""

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) to ``size`` bytes."""

    def close(self) -> None:
        """Make the changes durable and close."""


class FilePatchTarget:
    """A local file opened for update (:class:`PatchTarget`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DeltaError(f"cannot open {path} to apply a delta: {exc.strerror}",
                             what_to_do="restore the disk's full backup into the same directory first") from None

    @property
    def size(self) -> int:
        """Current length."""
        return os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset``."""
        out = bytearray()
        while len(out) < length:
            data = os.pread(self._fd, length - len(out), offset + len(out))
            if not data:
                break
            out += data
        return bytes(out)

    def write_at(self, offset: int, data: Union[bytes, Buffer]) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise DeltaError(f"writing {self.path} failed: {exc.strerror}",
                             what_to_do="check the free space and permissions of the restore directory") from None

    def truncate(self, size: int) -> None:
        """Cut or extend the file."""
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise DeltaError(f"resizing {self.path} failed: {exc.strerror}",
                             what_to_do="check the free space of the restore directory") from None

    def close(self) -> None:
        """fsync and close (idempotent)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DeltaApplier:
    """Applies a delta streamed in with :meth:`write` to ``target``, checking base and result.

    ``base`` are the target's chunk digests when the caller knows them (it wrote the file in this
    job); otherwise they are computed from the target when the header arrives (one read of the
    file).  ``expect_base_job`` (when given) must be the header's base job.  Nothing is written
    before the header proved that the target is the delta's base; :meth:`close` checks the
    trailer and the result digest and returns the new chunk digests via :attr:`result`.  After a
    failure the target holds a partial result: the caller removes it (:meth:`discard` only marks
    the applier failed).  A sparse full (``header.sparse``) is applied to an empty file: the file is
    set to its final length (a hole where the storage allows) and the result's digests are computed
    from the records as they are written (zeros between them), so nothing is read back;
    :attr:`result_sha256` is then the image's plain SHA-256 from the trailer.
    Implements :class:`~bareos_hyperv.storage.base.FileWriter`.
    """

    def __init__(self, target: PatchTarget, *, name: str, base: Optional[ImageHashes] = None,
                 expect_base_job: Optional[int] = None) -> None:
        self.target = target
        self.name = name
        self.base = base
        self.expect_base_job = expect_base_job
        self.header: Optional[DeltaHeader] = None
        self.result: Optional[ImageHashes] = None
        self._written = 0
        self._sha = hashlib.sha256()
        self._buf = bytearray()
        self._stage = 0  # 0 header, 1 record head, 2 record data, 3 trailer, 4 done
        self._records = 0
        self._payload = 0
        self._offset = 0  # record being written: where the next data byte goes
        self._left = 0  # record being written: data bytes still to come
        self._last_end = 0
        self._dirty: Set[int] = set()
        self._failed = False
        self._image: Optional[ChunkHasher] = None  # a sparse full: the result's digests, as written
        self._trailer_result: Optional[Tuple[str, str]] = None  # a sparse full: (image digest, SHA-256)
        self.result_sha256: Optional[str] = None

    @property
    def written(self) -> int:
        """Delta bytes consumed so far."""
        return self._written

    def _fail(self, cls: Type[DeltaError], message: str, what_to_do: str) -> DeltaError:
        self._failed = True
        return cls(f"{self.name}: {message}", what_to_do=what_to_do)

    def _format_error(self, message: str) -> DeltaError:
        return self._fail(DeltaFormatError, message, "the delta is damaged; restore another backup of this disk")

    def write(self, data: Union[bytes, Buffer]) -> int:
        """Consume the next bytes of the delta."""
        if self._failed:
            raise DeltaError(f"{self.name}: the delta could not be applied (see the earlier error)")
        view = memoryview(data).cast("B")
        n = len(view)
        self._written += n
        while view:
            if self._stage == 2:
                take = min(len(view), self._left)
                self._sha.update(view[:take])
                if self._image is not None:
                    self._image.update_zeros(self._offset - self._image.size)
                    self._image.update(view[:take])
                self.target.write_at(self._offset, view[:take])
                self._offset += take
                self._left -= take
                view = view[take:]
                if self._left == 0:
                    assert self.header is not None
                    self._stage = 1 if self._records < self.header.record_count else 3
                continue
            if self._stage == 4:
                raise self._format_error("there are bytes after the delta's trailer")
            trailer = self.header.trailer_size if self.header is not None else TRAILER_SIZE
            need = {0: HEADER_SIZE, 1: RECORD_HEAD_SIZE, 3: trailer}[self._stage]
            take = min(len(view), need - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < need:
                continue
            piece, self._buf = bytes(self._buf), bytearray()
            if self._stage == 0:
                self._sha.update(piece)
                self._start(piece)
            elif self._stage == 1:
                self._record(piece)
            else:
                self._trailer(piece)
        return n

    def _start(self, raw: bytes) -> None:
        try:
            header = DeltaHeader.unpack(raw, name=self.name)
        except DeltaFormatError:
            self._failed = True
            raise
        self.header = header
        if self.expect_base_job is not None and header.base_job_id != self.expect_base_job:
            raise self._fail(DeltaBaseMismatch,
                             f"the delta of job {header.job_id} applies to the image of job {header.base_job_id}, "
                             f"but the file holds the image of job {self.expect_base_job}",
                             "restore the whole chain (the full and every later incremental or differential job "
                             "up to the point wanted) in one restore job")
        base = self.base
        size = self.target.size
        if header.sparse:
            if size:
                raise self._fail(DeltaBaseMismatch,
                                 f"the sparse full of job {header.job_id} is written into an empty file, but the "
                                 f"file already holds {size} bytes",
                                 "restore into a directory or volume without a file of that name")
            self._image = ChunkHasher(header.chunk_size)
            base = ImageHashes(header.chunk_size, 0, [])
        if base is None or base.chunk_size != header.chunk_size or base.size != size:
            base = _hash_target(self.target, size, header.chunk_size, self.name)
        if base.size != header.base_size or base.digest() != header.base_digest:
            raise self._fail(DeltaBaseMismatch,
                             f"the delta of job {header.job_id} applies to the image of job {header.base_job_id} "
                             f"({header.base_size} bytes, digest {header.base_digest[:16]}...), but the file holds "
                             f"another image ({base.size} bytes, digest {base.digest()[:16]}...): a delta of the "
                             "chain is missing, repeated or out of order",
                             "restore the whole chain (the full and every later incremental or differential job "
                             "up to the point wanted) in one restore job")
        self.base = base
        if header.result_size != size:
            self.target.truncate(header.result_size)
            # The chunk holding the old end and every chunk of the new length beyond it change.
            first = min(size, header.result_size) // header.chunk_size
            self._dirty.update(range(first, -(-header.result_size // header.chunk_size)))
        self._stage = 1 if header.record_count else 3

    def _record(self, raw: bytes) -> None:
        assert self.header is not None
        self._sha.update(raw)
        offset, length = _RECORD.unpack(raw)
        if length == 0 or offset < self._last_end or offset + length > self.header.result_size:
            raise self._format_error(f"record {self._records} ({offset}+{length}) is empty, out of order or "
                                     f"beyond the result's {self.header.result_size} bytes")
        self._records += 1
        self._payload += length
        if self._records > self.header.record_count or self._payload > self.header.payload_bytes:
            raise self._format_error("it holds more records or bytes than its header says")
        chunk = self.header.chunk_size
        self._dirty.update(range(offset // chunk, (offset + length - 1) // chunk + 1))
        self._offset, self._left, self._last_end = offset, length, offset + length
        self._stage = 2

    def _trailer(self, raw: bytes) -> None:
        assert self.header is not None
        if self.header.sparse:
            magic, count, result, result_sha, digest = _SPARSE_TRAILER.unpack(raw)
            self._trailer_result = (result.hex(), result_sha.hex())
        else:
            magic, count, digest = _TRAILER.unpack(raw)
        if magic != TRAILER_MAGIC or count != self._records or digest != self._sha.digest():
            raise self._format_error("its trailer does not match its content (damaged in the save set)")
        self._stage = 4

    def close(self) -> None:
        """Check that the whole delta arrived and that the file is now the result; keep the new digests."""
        if self._failed:
            raise DeltaError(f"{self.name}: the delta could not be applied (see the earlier error)")
        if self._stage != 4 or self.header is None or self.base is None:
            raise self._format_error(f"it ended after {self._written} bytes, before its trailer (cut short)")
        header = self.header
        expected = header.result_digest
        if self._image is not None:
            assert self._trailer_result is not None
            self._image.update_zeros(header.result_size - self._image.size)
            result = self._image.finish()
            expected, self.result_sha256 = self._trailer_result
        else:
            hashes = list(self.base.hashes[: -(-header.result_size // header.chunk_size)])
            count = -(-header.result_size // header.chunk_size)
            hashes += [b""] * (count - len(hashes))
            for index, digest in hash_file(self.target.read_at, header.result_size, header.chunk_size,
                                           chunks=self._dirty, what=self.name):
                hashes[index] = digest
            result = ImageHashes(header.chunk_size, header.result_size, hashes)
        if result.digest() != expected:
            raise self._fail(DeltaResultMismatch,
                             f"after applying the delta of job {header.job_id} the file's digest is "
                             f"{result.digest()[:16]}..., the backup recorded {expected[:16]}...",
                             "the restored file is not the backed-up disk; check the restore directory's "
                             "storage and restore again")
        self.result = result
        self.target.close()

    def discard(self) -> None:
        """Mark the application failed (the caller removes the partial file)."""
        self._failed = True

    def __enter__(self) -> DeltaApplier:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def _hash_target(target: PatchTarget, size: int, chunk_size: int, name: str) -> ImageHashes:
    digests = hash_file(target.read_at, size, chunk_size, what=name)
    return ImageHashes(chunk_size, size, [d for _i, d in digests])
