"""How one disk file is saved by a job: a full copy, or a delta against its base, and why.

For each file of a VM's disk chains the backup asks :func:`plan_file` what to store:

* **full** - no base for the file (the first backup, a disk added, a base that could not be
  read): the whole file, hashed on the way (:class:`~bareos_hyperv.storage.delta.HashingReader`)
  so that the next job has a base;
* **sparse full** - the same for a dynamic or differencing VHD/VHDX whose file holds at least
  :data:`SPARSE_MIN_SAVING` bytes its tables do not reference (trimmed or unmapped blocks, free
  space): only the referenced ranges (:meth:`~bareos_hyperv.storage.vhd.VirtualDisk.referenced_ranges`)
  are read and sent, as a delta whose base is the empty file; the image it restores has zeros
  where the file was not read (the *normalised image*), and that image is the chain's base.
  Those zero ranges travel with the base (:attr:`FilePlan.zeros`): where the image holds zeros
  but the file still has the old bytes of a trimmed block, the digests of an rct delta are taken
  of the file with those ranges read as zeros, so they describe what a restore rebuilds;
* **unchanged** (VHDX) - the header section is byte-identical to the base's and so is the
  size: a VHDX gets a new ``FileWriteGuid`` in its header before the first write of every
  session ([MS-VHDX] 2.2.2), so nothing was written since the base;
* **rct** - the changed virtual ranges Hyper-V's change tracking reports
  (``GetVirtualDiskChanges``), mapped through the frozen file's block table to the file ranges
  that hold them, plus the file's metadata (headers, log, BAT, metadata region), every block
  whose BAT entry changed (old and new place) and the growth of the file;
* **hash** - the whole file read and compared chunk by chunk with the base's digests, sending
  only the chunks that differ (VHD files, configuration version 5.0, change tracking lost, the
  reference point gone, a replaced disk, ...).

Every delta's result digest is known before it is streamed (its header carries it): the chunks
an RCT delta touches are read and hashed here, the unchanged ones keep the base's digests.

Reads go through the :class:`~bareos_hyperv.storage.base.Storage` (SMB or local) and the VHD/VHDX
reader; nothing here talks to Hyper-V (the changed ranges arrive as a callable).
"""

from __future__ import annotations

import bisect
import logging
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Set, Tuple

from bareos_hyperv.backup.base import DiskBase
from bareos_hyperv.errors import BareosHyperVError, StorageError
from bareos_hyperv.model.backup import DeltaMethod
from bareos_hyperv.storage.base import FileReader, Storage
from bareos_hyperv.storage.delta import (
    MIN_CHUNK_SIZE,
    READ_SIZE,
    ChunkHasher,
    DeltaHeader,
    ImageHashes,
    chunk_size_for,
    delta_size,
    hash_file,
    merge_ranges,
)
from bareos_hyperv.storage.locations import Location
from bareos_hyperv.storage.vhd import BlockKind, DiskType, ExtentKind, VhdError, VirtualDisk, open_disk
from bareos_hyperv.storage.vhd import DiskFormat as VhdFormat

__all__ = ["SPARSE_MIN_SAVING", "FilePlan", "RctRanges", "ReaderSource", "complement_ranges", "plan_file",
           "sparse_ranges", "subtract_ranges", "zeroed_read_at"]

log = logging.getLogger("bareos_hyperv.backup.incremental")

MiB = 1024 * 1024
BAT_WHAT = "VHDX BAT region"
# Beyond this the BAT is not kept in the base (it would not fit a restore object next to the
# digests); the next job then compares digests instead of using change tracking.
MAX_BAT_BYTES = 8 * MiB
SECTOR_BITMAP_BLOCK = 1 * MiB
# VHDX BAT entry ([MS-VHDX] 2.5.1): state in bits 0-2, file offset in MiB from bit 20.
_STATE_MASK = 0x7
_OFFSET_MASK = 0xFFFFFFFFFFF00000
_PRESENT_PAYLOAD = (6, 7)  # PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT
_PRESENT_BITMAP = 6  # SB_BLOCK_PRESENT
#: A full copy of a dynamic or differencing disk becomes a sparse full when the file holds at least
#: this many bytes its tables do not reference; below it the plain copy costs about the same and
#: keeps the saved item byte-identical to the file.
SPARSE_MIN_SAVING = MIN_CHUNK_SIZE

# The changed virtual ranges of the file since the base (GetVirtualDiskChanges), or None.
RctRanges = Callable[[], List[Tuple[int, int]]]


class ReaderSource:
    """A :class:`~bareos_hyperv.storage.base.FileReader` seen as the VHD reader's random-access source."""

    def __init__(self, reader: FileReader, name: str) -> None:
        self.reader = reader
        self.name = name

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` (short at the end of the file)."""
        return self.reader.read_at(offset, length)

    def size(self) -> int:
        """File size."""
        return self.reader.size


class _NoRct(Exception):
    """Change tracking cannot be used for this file; the message says why."""


@dataclass
class FilePlan:
    """What a job stores for one disk file (see module docstring).

    ``method`` is None for a full copy.  For a delta, ``header`` and ``ranges`` describe it,
    ``result`` (the file's chunk digests) and ``sha256`` (plain, when the whole file was read)
    are known now; for a full copy ``result`` is filled from ``hasher`` once it was streamed.
    ``bat``/``bat_offset`` are the frozen file's VHDX block table (empty for VHD).  ``reason``
    says why this way was chosen, for the job log.
    """

    size: int  # of the file
    chunk_size: int
    method: Optional[DeltaMethod] = None
    reason: str = ""
    header: Optional[DeltaHeader] = None
    ranges: List[Tuple[int, int]] = field(default_factory=list)
    result: Optional[ImageHashes] = None
    sha256: Optional[str] = None
    hasher: Optional[ChunkHasher] = None
    bat_offset: int = 0
    bat: bytes = b""
    bytes_read: int = 0  # read while planning (for the log)
    sparse: bool = False  # a full copy of the referenced ranges only (``ranges``, ``header``)
    # Ranges where the image this job leaves holds zeros although the file may not: what a sparse
    # full did not read and no later delta of the chain overwrote (the next job's base).
    zeros: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def item_size(self) -> int:
        """Bytes the item puts into the save set."""
        if self.method is None and not self.sparse:
            return self.size
        return delta_size(self.ranges, sparse=self.sparse)


def _open_layout(reader: FileReader, name: str) -> Optional[VirtualDisk]:
    """The file as a virtual disk, None (with a debug line) when the reader refuses it."""
    try:
        return open_disk(ReaderSource(reader, name), name)
    except VhdError as exc:
        log.debug("%s cannot be parsed as a virtual disk: %s", name, exc)
        return None


def _bat(disk: Optional[VirtualDisk], reader: FileReader) -> Tuple[int, bytes]:
    """Offset and bytes of a VHDX's BAT region ((0, b"") for VHD or when too large to keep)."""
    if disk is None or disk.layout.format is not VhdFormat.VHDX:
        return 0, b""
    region = next((r for r in disk.layout.metadata_ranges if r.what == BAT_WHAT), None)
    if region is None or region.length > MAX_BAT_BYTES:
        return 0, b""
    data = reader.read_at(region.offset, region.length)
    if len(data) != region.length:
        raise StorageError(f"{disk.name}: short read of the BAT region",
                           what_to_do="the file changed size while it was read; run the job again")
    return region.offset, data


def sparse_ranges(disk: Optional[VirtualDisk], size: int) -> Optional[List[Tuple[int, int]]]:
    """The ranges a sparse full of the file sends, None when it is sent whole.

    Whole: a fixed disk, a file the reader cannot parse, or one whose tables reference all but
    less than :data:`SPARSE_MIN_SAVING` bytes.
    """
    if disk is None or disk.layout.disk_type is DiskType.FIXED:
        return None
    try:
        referenced = disk.referenced_ranges()
    except VhdError as exc:
        log.warning("%s: its block table cannot be walked (%s); it is copied whole", disk.name, exc)
        return None
    ranges = merge_ranges(((r.offset, r.length) for r in referenced), limit=size)
    if size - sum(n for _o, n in ranges) < SPARSE_MIN_SAVING:
        return None
    return ranges


def zeroed_read_at(read_at: Callable[[int, int], bytes],
                   zeros: Sequence[Tuple[int, int]]) -> Callable[[int, int], bytes]:
    """``read_at`` that returns zeros in the ``zeros`` ranges (sorted, disjoint) without reading them."""
    if not zeros:
        return read_at
    starts = [o for o, _n in zeros]

    def read(offset: int, length: int) -> bytes:
        data = bytearray(read_at(offset, length))
        end = offset + len(data)
        index = max(bisect.bisect_right(starts, offset) - 1, 0)
        while index < len(zeros):
            start, n = zeros[index]
            if start >= end:
                break
            a, b = max(start, offset), min(start + n, end)
            if b > a:
                data[a - offset:b - offset] = bytes(b - a)
            index += 1
        return bytes(data)

    return read


def subtract_ranges(ranges: Sequence[Tuple[int, int]], remove: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``ranges`` minus ``remove`` (both sorted and disjoint), sorted and disjoint."""
    out: List[Tuple[int, int]] = []
    j = 0
    for offset, length in ranges:
        pos, end = offset, offset + length
        while j < len(remove) and remove[j][0] + remove[j][1] <= pos:
            j += 1
        k = j
        while pos < end and k < len(remove) and remove[k][0] < end:
            r_start, r_end = remove[k][0], remove[k][0] + remove[k][1]
            if r_start > pos:
                out.append((pos, r_start - pos))
            pos = max(pos, r_end)
            k += 1
        if pos < end:
            out.append((pos, end - pos))
    return out


def complement_ranges(ranges: Sequence[Tuple[int, int]], size: int) -> List[Tuple[int, int]]:
    """What of ``[0, size)`` the sorted, disjoint ``ranges`` do not cover."""
    return subtract_ranges([(0, size)] if size > 0 else [], ranges)


def plan_file(storage: Storage, location: Location, name: str, *, job_id: int, base: Optional[DiskBase],
              rct: Optional[RctRanges], no_rct_reason: str, virtual_size: int,
              why_full: str = "", tick: Callable[[], None] = lambda: None) -> FilePlan:
    """Decide how to save the file at ``location`` (``name`` in messages) and prepare it.

    ``base`` is the file's image in the job this one builds on (None: a full copy, because
    ``why_full``).  ``rct`` returns the changed virtual ranges since that image, when change
    tracking can be asked at all; otherwise ``no_rct_reason`` says why not.  Any failure of
    change tracking falls back to comparing digests, with the reason in :attr:`FilePlan.reason`.
    ``tick`` is called while files are read (the agent tells the fd it is alive).
    """
    reader = storage.open_read(location)
    try:
        size = reader.size
        disk = _open_layout(reader, name)
        bat_offset, bat = _bat(disk, reader)
        if base is None:
            chunk = chunk_size_for(max(size, virtual_size) + 64 * MiB)
            plan = FilePlan(size=size, chunk_size=chunk, reason=why_full or "no earlier backup of this file",
                            hasher=ChunkHasher(chunk), bat_offset=bat_offset, bat=bat)
            ranges = sparse_ranges(disk, size)
            if ranges is not None:
                plan.sparse = True
                plan.hasher = None  # the digests come from the ranges as they stream
                plan.ranges = ranges
                plan.header = DeltaHeader.sparse_full(job_id=job_id, size=size, chunk_size=chunk, ranges=ranges)
                plan.zeros = complement_ranges(ranges, size)
            return plan
        plan = FilePlan(size=size, chunk_size=base.hashes.chunk_size, bat_offset=bat_offset, bat=bat)
        return _Planner(plan, storage, location, name, job_id, base, tick).delta(reader, disk, rct, no_rct_reason)
    finally:
        reader.close()


@dataclass
class _Planner:
    """Works out the delta of one file against its base (the steps of :func:`plan_file`)."""

    plan: FilePlan
    storage: Storage
    location: Location
    name: str
    job_id: int
    base: DiskBase
    tick: Callable[[], None]

    def delta(self, reader: FileReader, disk: Optional[VirtualDisk], rct: Optional[RctRanges],
              reason: str) -> FilePlan:
        plan, base = self.plan, self.base
        is_vhdx = disk is not None and disk.layout.format is VhdFormat.VHDX
        if is_vhdx and plan.size == base.hashes.size and base.hashes.hashes:
            # As the base image holds it: zeros where a sparse full did not read the file.
            ((_i, first),) = hash_file(zeroed_read_at(reader.read_at, base.zeros), plan.size, plan.chunk_size,
                                       chunks=[0], what=self.name)
            plan.bytes_read += min(plan.chunk_size, plan.size)
            if first == base.hashes.hashes[0]:
                return self.finish(DeltaMethod.UNCHANGED, [], base.hashes, base.sha256,
                                   "the VHDX header is unchanged since the base, so no data was written")
        if rct is not None and reason == "":
            try:
                return self.by_rct(reader, disk, rct)
            except _NoRct as exc:
                reason = str(exc)
            except BareosHyperVError as exc:
                reason = f"change tracking could not be used ({exc.message})"
        return self.by_hashes(reason)

    def finish(self, method: DeltaMethod, ranges: List[Tuple[int, int]], result: ImageHashes,
               sha256: Optional[str], reason: str) -> FilePlan:
        plan, base = self.plan, self.base
        plan.method = method
        plan.reason = reason
        plan.ranges = ranges
        # The image keeps zeros where the base had them and this delta writes nothing (the hash
        # method replaces every chunk that differs from the file: the image is the file then).
        plan.zeros = [] if method is DeltaMethod.HASH else subtract_ranges(
            merge_ranges(base.zeros, limit=result.size), ranges)
        plan.result = result
        plan.sha256 = sha256
        plan.header = DeltaHeader(job_id=self.job_id, base_job_id=base.job_id, base_size=base.hashes.size,
                                  base_digest=base.digest, result_size=result.size, result_digest=result.digest(),
                                  chunk_size=result.chunk_size, record_count=len(ranges),
                                  payload_bytes=sum(n for _o, n in ranges), result_sha256=sha256)
        return plan

    def by_hashes(self, reason: str) -> FilePlan:
        """Read the whole file, keep the chunks whose digest differs from the base's."""
        plan = self.plan
        hasher = ChunkHasher(plan.chunk_size, plain=True)
        buf = bytearray(READ_SIZE)
        with self.storage.open_read(self.location) as reader, memoryview(buf) as view:
            while True:
                n = reader.readinto(view)
                if n == 0:
                    break
                hasher.update(view[:n])
                self.tick()
        if hasher.size != plan.size:
            raise StorageError(f"{self.name} changed size while it was read ({plan.size} -> {hasher.size} bytes)",
                               what_to_do="make sure nothing writes to the file during the backup and run the job "
                                          "again")
        plan.bytes_read += hasher.size
        result = hasher.finish()
        old = self.base.hashes.hashes
        chunk = plan.chunk_size
        dirty = [i for i, d in enumerate(result.hashes) if i >= len(old) or old[i] != d]
        ranges = merge_ranges(((i * chunk, chunk) for i in dirty), limit=plan.size)
        assert hasher.sha256 is not None
        return self.finish(DeltaMethod.HASH, ranges, result, hasher.sha256.hexdigest(), reason)

    def by_rct(self, reader: FileReader, disk: Optional[VirtualDisk], rct: RctRanges) -> FilePlan:
        """The delta from change tracking (see module docstring)."""
        plan, base = self.plan, self.base
        if disk is None or disk.layout.format is not VhdFormat.VHDX:
            raise _NoRct("the file cannot be parsed as a VHDX")
        layout = disk.layout
        if layout.virtual_size != base.virtual_size or layout.block_size != base.block_size:
            raise _NoRct("the disk was resized or converted since the base")
        if not base.bat or not plan.bat or plan.bat_offset != base.bat_offset or layout.chunk_ratio is None:
            raise _NoRct("the base has no block table to compare with")
        changed = merge_ranges(rct(), limit=layout.virtual_size)
        ranges: List[Tuple[int, int]] = [(r.offset, r.length) for r in layout.metadata_ranges]
        ranges += _moved_blocks(base.bat, plan.bat, layout.chunk_ratio, layout.block_size)
        for offset, length in changed:
            for ext in disk.extents(offset, length):
                if ext.kind is ExtentKind.DATA and ext.file_offset is not None:
                    ranges.append((ext.file_offset, ext.length))
        for block in disk.map_virtual_ranges(changed):
            if block.kind is BlockKind.PARTIAL:
                ranges += [(r.offset, r.length) for r in block.file_ranges if r.what == "sector bitmap"]
        if plan.size > base.hashes.size:
            ranges.append((base.hashes.size, plan.size - base.hashes.size))
        ranges = merge_ranges(ranges, limit=plan.size)
        chunk = plan.chunk_size
        dirty: Set[int] = set()
        for offset, length in ranges:
            dirty.update(range(offset // chunk, (offset + length - 1) // chunk + 1))
        if plan.size != base.hashes.size:
            dirty.update(range(min(plan.size, base.hashes.size) // chunk, -(-plan.size // chunk)))
        count = -(-plan.size // chunk)
        hashes = list(base.hashes.hashes[:count]) + [b""] * max(0, count - len(base.hashes.hashes))
        # A touched chunk after the delta: the file's bytes where the delta writes, the base image
        # elsewhere; that is the file itself except where the base image holds zeros the file does
        # not (what a sparse full left out and nothing has overwritten since).
        keep = subtract_ranges(merge_ranges(base.zeros, limit=plan.size), ranges)
        for index, digest in hash_file(zeroed_read_at(reader.read_at, keep), plan.size, chunk, chunks=dirty,
                                       what=self.name):
            hashes[index] = digest
            plan.bytes_read += min(chunk, plan.size - index * chunk)
            self.tick()
        result = ImageHashes(chunk, plan.size, hashes)
        # A chunk whose digest equals the base's holds the same bytes: what the ranges cover of it
        # (metadata regions rewritten with the same content, over-reported changes) is left out.
        same = {i for i in dirty if i < len(base.hashes.hashes) and hashes[i] == base.hashes.hashes[i]}
        ranges = _without_chunks(ranges, same, chunk)
        changed_bytes = sum(n for _o, n in changed)
        return self.finish(DeltaMethod.RCT, ranges, result, None,
                           f"change tracking reports {changed_bytes} changed bytes in {len(changed)} range(s)")


def _without_chunks(ranges: Sequence[Tuple[int, int]], chunks: Set[int], chunk: int) -> List[Tuple[int, int]]:
    """``ranges`` minus the bytes of the given chunks."""
    if not chunks:
        return list(ranges)
    out: List[Tuple[int, int]] = []
    for offset, length in ranges:
        pos, end = offset, offset + length
        while pos < end:
            index = pos // chunk
            stop = min(end, (index + 1) * chunk)
            if index not in chunks:
                out.append((pos, stop - pos))
            pos = stop
    return merge_ranges(out)


def _entries(bat: bytes) -> List[int]:
    return list(struct.unpack(f"<{len(bat) // 8}Q", bat[: len(bat) // 8 * 8]))


def _moved_blocks(old_bat: bytes, new_bat: bytes, chunk_ratio: int, block_size: int) -> List[Tuple[int, int]]:
    """File ranges of every BAT entry that changed: its old place and its new place.

    A block that moved, appeared or vanished changes bytes of the file that change tracking does
    not report (a new block is written whole, a freed place may be reused); taking both places
    whole keeps the delta exact.
    """
    out: List[Tuple[int, int]] = []
    old = _entries(old_bat)
    new = _entries(new_bat)
    for index in range(max(len(old), len(new))):
        a = old[index] if index < len(old) else 0
        b = new[index] if index < len(new) else 0
        if a == b:
            continue
        bitmap = index % (chunk_ratio + 1) == chunk_ratio
        unit = SECTOR_BITMAP_BLOCK if bitmap else block_size
        for entry in (a, b):
            state = entry & _STATE_MASK
            if (state == _PRESENT_BITMAP) if bitmap else (state in _PRESENT_PAYLOAD):
                out.append((entry & _OFFSET_MASK, unit))
    return out


def dirty_count(ranges: Iterable[Tuple[int, int]], chunk: int) -> int:
    """Number of chunks the ranges touch (for messages and tests)."""
    seen: Set[int] = set()
    for offset, length in ranges:
        seen.update(range(offset // chunk, (offset + length - 1) // chunk + 1))
    return len(seen)


def summarize(plans: Sequence[FilePlan]) -> str:
    """One line: how many files went which way (for the VM's log line)."""
    counts: dict[str, int] = {}
    for p in plans:
        key = "full" if p.method is None else p.method.value
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
