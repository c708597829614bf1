"""Read VHD and VHDX files through a random-access source, without ever loading a whole file.

:func:`open_disk` validates the file's headers and tables and returns a :class:`VirtualDisk`:
static facts in :attr:`VirtualDisk.layout` (:class:`DiskLayout`), and the map from virtual byte
ranges to file ranges (:meth:`VirtualDisk.extents`, :meth:`VirtualDisk.map_virtual_ranges`,
:meth:`VirtualDisk.file_ranges_for`, :meth:`VirtualDisk.read_virtual`).  Differencing disks are
read through a :class:`DiskChain` built by :func:`resolve_chain`.

Hostile input: every read is bounded by spec limits and the file size, the BAT is read in
bounded chunks and walked lazily, and every problem is a :class:`VhdError` (a ``StorageError``)
naming the file and saying what to do.  Layout reference: ``shared/reference/hyperv-wmi.md``
sections 8.3 and 8.4; [MS-VHDX] v1; "Virtual Hard Disk Image Format Specification" v1.0.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import ntpath
import os
import posixpath
import re
import struct
import threading
import uuid
from collections import OrderedDict
from typing import (
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Protocol,
    Sequence,
    Set,
    Tuple,
    Type,
    Union,
)

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.vhd.structures import (
    BAT_FILE_OFFSET_MASK,
    BAT_REGION_GUID,
    BAT_STATE_MASK,
    FILE_PARAMETERS_GUID,
    LOGICAL_SECTOR_SIZE_GUID,
    METADATA_REGION_GUID,
    NIL_GUID,
    PARENT_LOCATOR_GUID,
    PHYSICAL_SECTOR_SIZE_GUID,
    VHDX_PARENT_LOCATOR_TYPE_GUID,
    VIRTUAL_DISK_ID_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    FileParameters,
    FileParametersFlags,
    KiB,
    MetadataTableEntry,
    MetadataTableEntryFlags,
    MetadataTableHeader,
    MiB,
    ParentLocatorEntry,
    ParentLocatorHeader,
    PayloadBlockState,
    RegionTableEntry,
    RegionTableEntryFlags,
    RegionTableHeader,
    SectorBitmapState,
    SectorSizeItem,
    VhdDiskType,
    VhdDynamicHeader,
    VhdFooter,
    VhdxFileIdentifier,
    VhdxHeader,
    VirtualDiskIdItem,
    VirtualDiskSizeItem,
    vhd_checksum,
    vhdx_checksum,
)

__all__ = [
    "MAX_CHAIN_DEPTH",
    "MAX_READ_LENGTH",
    "BlockKind",
    "BytesSource",
    "DiskChain",
    "DiskFormat",
    "DiskLayout",
    "DiskType",
    "Extent",
    "ExtentKind",
    "FileRange",
    "FileSource",
    "MappedBlock",
    "ParentLocator",
    "RandomAccessSource",
    "VhdChainError",
    "VhdCorruptError",
    "VhdError",
    "VhdFormatError",
    "VhdLimitError",
    "VhdLogReplayRequiredError",
    "VhdRangeError",
    "VhdTruncatedError",
    "VhdUnsupportedError",
    "VirtualDisk",
    "locate_parent",
    "open_disk",
    "open_file",
    "parent_candidates",
    "resolve_chain",
]

GiB = 1024 * MiB
TiB = 1024 * GiB

# -- limits and fixed offsets ---------------------------------------------------------------------

#: [MS-VHDX] 2.2: the first 1 MiB holds the file identifier, two headers and two region tables.
VHDX_HEADER_SECTION_SIZE = 1 * MiB
VHDX_HEADER_OFFSETS = (64 * KiB, 128 * KiB)
VHDX_HEADER_SIZE = 4 * KiB
VHDX_REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
VHDX_REGION_TABLE_SIZE = 64 * KiB
#: All VHDX objects after the header section are 1 MiB aligned ([MS-VHDX] 2.1).
VHDX_ALIGNMENT = 1 * MiB
VHDX_MAX_REGION_ENTRIES = 2047
VHDX_METADATA_TABLE_SIZE = 64 * KiB
VHDX_MAX_METADATA_ENTRIES = 2047
VHDX_MAX_METADATA_ITEM = 1 * MiB
VHDX_MIN_BLOCK_SIZE = 1 * MiB
VHDX_MAX_BLOCK_SIZE = 256 * MiB
VHDX_MAX_VIRTUAL_SIZE = 64 * TiB
VHDX_SECTOR_SIZES = (512, 4096)
#: One sector bitmap block covers 2^23 sectors ([MS-VHDX] 2.5: chunk ratio).
VHDX_SECTORS_PER_BITMAP_BLOCK = 1 << 23
VHDX_SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB

VHD_FOOTER_SIZE = 512
VHD_DYNAMIC_HEADER_SIZE = 1024
VHD_SECTOR_SIZE = 512
VHD_UNALLOCATED = 0xFFFFFFFF
#: qemu's and Hyper-V's cap: 2040 GiB (0xFF000000 sectors).
VHD_MAX_VIRTUAL_SIZE = 2040 * GiB
VHD_MIN_BLOCK_SIZE = 4 * KiB
VHD_MAX_BLOCK_SIZE = 256 * MiB
#: Longest Windows path (32767 UTF-16 units) in bytes; parent locator data beyond this is hostile.
VHD_MAX_LOCATOR_DATA = 64 * KiB
#: Creator applications whose VHDs are sized by ``current_size`` rather than CHS geometry (qemu vpc.c).
VHD_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
#: CHS geometry that means "too big for CHS": then current_size is authoritative too.
VHD_MAX_GEOMETRY_SECTORS = 65535 * 16 * 255
#: Mapping unit for fixed VHDs, which have no blocks of their own.
VHD_FIXED_MAPPING_UNIT = 2 * MiB

#: BAT entries fetched per read (64 KiB); a few chunks are cached for random lookups.
BAT_CHUNK_ENTRIES = 8192
BAT_CACHE_CHUNKS = 8
#: BATs up to this many entries are fully validated by :func:`open_disk`; larger ones lazily.
EAGER_BAT_VALIDATION_ENTRIES = 1 << 18
#: Largest single :meth:`VirtualDisk.read_virtual` (the caller reads a disk in pieces).
MAX_READ_LENGTH = 256 * MiB
#: Default limit of :func:`resolve_chain`; Hyper-V allows 50 checkpoints per VM.
MAX_CHAIN_DEPTH = 64

_REPLAY_HINT = (
    "needs log replay: open it once in Hyper-V (attach or mount it, or start the VM) or run "
    "`qemu-img check -r all` on a copy, then back up that file"
)
_CORRUPT_HINT = (
    "check the file on the Hyper-V host (`Test-VHD`, `Get-VHD`) or with `qemu-img check` on a copy; "
    "if it is damaged, restore it from a good backup"
)
_TRUNCATED_HINT = (
    "the file is shorter than its own tables say: make sure it is complete (not still being copied or "
    "written) and check it with `Test-VHD` on the host"
)


# -- errors ---------------------------------------------------------------------------------------


class VhdError(StorageError):
    """A VHD/VHDX file cannot be read as a virtual disk."""

    default_what_to_do = _CORRUPT_HINT

    def __init__(
        self,
        name: str,
        message: str,
        *,
        what_to_do: str | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.file = name
        super().__init__(
            f"{name}: {message}",
            what_to_do=what_to_do if what_to_do is not None else self.default_what_to_do,
            context=context,
        )


class VhdFormatError(VhdError):
    """Not a VHD/VHDX file, or a signature/cookie is wrong."""

    default_what_to_do = "make sure the path names a .vhd, .vhdx or .avhdx file and that it is not damaged"


class VhdCorruptError(VhdError):
    """Checksums or values that contradict each other or the spec."""


class VhdTruncatedError(VhdCorruptError):
    """A table or block points past the end of the file."""

    default_what_to_do = _TRUNCATED_HINT


class VhdLimitError(VhdCorruptError):
    """A size or count outside the format's limits."""


class VhdUnsupportedError(VhdError):
    """A valid feature this reader does not implement (unknown required region, version, ...)."""

    default_what_to_do = (
        "convert the disk on the Hyper-V host (`Convert-VHD`) to a plain VHDX, or back up the VM through a "
        "Hyper-V export"
    )


class VhdLogReplayRequiredError(VhdError):
    """The VHDX log may hold unapplied writes; the tables cannot be trusted until it is replayed."""

    default_what_to_do = _REPLAY_HINT


class VhdChainError(VhdError):
    """A differencing chain cannot be resolved (missing parent, cycle, linkage mismatch, depth)."""

    default_what_to_do = (
        "inspect the chain on the host (`Get-VHD -Path ... | Select ParentPath`), repair it with "
        "`Set-VHD -ParentPath` or merge it, then retry"
    )


class VhdRangeError(VhdError):
    """A requested virtual range lies outside the disk."""

    default_what_to_do = (
        "request ranges inside the virtual disk size (changed-block lists from another disk?)"
    )


# -- sources --------------------------------------------------------------------------------------


class RandomAccessSource(Protocol):
    """What the reader needs from a file: positioned reads and the size.

    ``read_at`` returns fewer bytes only at the end of the file.  The SMB data plane provides an
    adapter; :class:`FileSource` and :class:`BytesSource` serve local files and memory.
    """

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``."""
        ...

    def size(self) -> int:
        """Return the file size in bytes."""
        ...


class FileSource:
    """:class:`RandomAccessSource` over a local file (``os.pread``; thread-safe)."""

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileSource({self.path!r})"

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: source is closed")
        return self._fd

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset`` (short only at end of file)."""
        fd = self._require_fd()
        chunks: List[bytes] = []
        remaining = length
        pos = offset
        while remaining > 0:
            if hasattr(os, "pread"):
                data = os.pread(fd, remaining, pos)
            else:  # pragma: no cover - Windows
                with self._lock:
                    os.lseek(fd, pos, os.SEEK_SET)
                    data = os.read(fd, remaining)
            if not data:
                break
            chunks.append(data)
            pos += len(data)
            remaining -= len(data)
        return b"".join(chunks)

    def size(self) -> int:
        """Return the current file size."""
        return os.fstat(self._require_fd()).st_size

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """:class:`RandomAccessSource` over bytes in memory (small files, tests)."""

    def __init__(self, data: Union[bytes, bytearray], name: str = "<memory>") -> None:
        self._data = bytes(data)
        self.name = name

    def __repr__(self) -> str:
        return f"BytesSource({self.name!r}, {len(self._data)} bytes)"

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return self._data[offset : offset + length]

    def size(self) -> int:
        """Return the data length."""
        return len(self._data)


# -- reported objects -----------------------------------------------------------------------------


class DiskFormat(str, enum.Enum):
    """Container format."""

    VHD = "vhd"
    VHDX = "vhdx"


class DiskType(str, enum.Enum):
    """Allocation type, as ``Get-VHD`` reports ``VhdType``."""

    FIXED = "fixed"
    DYNAMIC = "dynamic"
    DIFFERENCING = "differencing"


class ExtentKind(str, enum.Enum):
    """What a virtual range is in this file.

    ``DATA``: stored here.  ``ZERO``: reads as zeros (explicitly zeroed, trimmed or undefined
    blocks).  ``ABSENT``: not stored here; reads from the parent in a differencing disk, as zeros
    otherwise.
    """

    DATA = "data"
    ZERO = "zero"
    ABSENT = "absent"


class BlockKind(str, enum.Enum):
    """Allocation of one block: all here, sector-bitmapped (differencing), zero, or not here."""

    FULL = "full"
    PARTIAL = "partial"
    ZERO = "zero"
    ABSENT = "absent"


@dataclasses.dataclass(frozen=True)
class FileRange:
    """A byte range of the disk file; ``what`` names the structure (for logs and manifests)."""

    offset: int
    length: int
    what: str = ""

    @property
    def end(self) -> int:
        """First byte after the range."""
        return self.offset + self.length


@dataclasses.dataclass(frozen=True)
class Extent:
    """A run of virtual bytes with one :class:`ExtentKind`; ``file_offset`` is set for DATA."""

    kind: ExtentKind
    virtual_offset: int
    length: int
    file_offset: int | None = None

    @property
    def virtual_end(self) -> int:
        """First virtual byte after the extent."""
        return self.virtual_offset + self.length


@dataclasses.dataclass(frozen=True)
class MappedBlock:
    """One block touched by a virtual range: where its payload (and sector bitmap) live."""

    index: int
    virtual_offset: int
    length: int
    kind: BlockKind
    file_ranges: Tuple[FileRange, ...]


@dataclasses.dataclass(frozen=True)
class ParentLocator:
    """Where a differencing disk's parent is and how to recognise it.

    ``entries`` holds the raw key/values (VHDX keys as written: ``parent_linkage``,
    ``relative_path``, ``volume_path``, ``absolute_win32_path``...; VHD ``W2ru``/``W2ku`` locators
    are reported as ``relative_path``/``absolute_win32_path``).  ``parent_linkage`` is the parent's
    expected VHDX ``DataWriteGuid``; for VHD, ``parent_unique_id`` is the parent's footer UniqueId.
    """

    entries: Mapping[str, str]
    locator_type: uuid.UUID | None = None
    parent_unique_id: uuid.UUID | None = None
    parent_timestamp: int | None = None
    parent_name: str | None = None

    @property
    def parent_linkage(self) -> str | None:
        """VHDX ``parent_linkage`` value (a ``{GUID}`` string)."""
        return self.entries.get("parent_linkage")

    @property
    def relative_path(self) -> str | None:
        """Path of the parent relative to the child's directory (Windows syntax)."""
        return self.entries.get("relative_path")

    @property
    def absolute_win32_path(self) -> str | None:
        """Absolute Windows path of the parent when the child was last written."""
        return self.entries.get("absolute_win32_path")

    @property
    def volume_path(self) -> str | None:
        """``\\\\?\\Volume{...}\\...`` path of the parent."""
        return self.entries.get("volume_path")

    def linkage_guids(self) -> List[uuid.UUID]:
        """The parent DataWriteGuids this child accepts (``parent_linkage`` and ``parent_linkage2``)."""
        out: List[uuid.UUID] = []
        for key in ("parent_linkage", "parent_linkage2"):
            value = self.entries.get(key)
            if value:
                try:
                    out.append(uuid.UUID(value.strip()))
                except ValueError:
                    continue
        return out

    def paths(self) -> List[str]:
        """Candidate parent paths in the order to try them (relative first: it survives moves)."""
        out: List[str] = []
        for key in ("relative_path", "absolute_win32_path", "volume_path"):
            value = self.entries.get(key)
            if value and value not in out:
                out.append(value)
        return out


@dataclasses.dataclass(frozen=True)
class DiskLayout:
    """Facts about one VHD/VHDX file, as read from its headers and metadata.

    ``block_size`` is 0 for fixed VHDs (they have no blocks).  ``virtual_disk_id`` is the VHDX
    page-83 identity or the VHD footer UniqueId.  ``metadata_ranges`` are the file ranges that are
    not payload (headers, region tables, log, BAT, metadata region, VHD footer/header/BAT): an
    incremental copy takes them along with the changed blocks.  ``warnings`` lists tolerated
    damage (one corrupt header copy, ...).
    """

    name: str
    format: DiskFormat
    disk_type: DiskType
    virtual_size: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    file_size: int
    virtual_disk_id: uuid.UUID | None
    data_write_guid: uuid.UUID | None
    file_write_guid: uuid.UUID | None
    parent_locator: ParentLocator | None
    creator: str
    metadata_ranges: Tuple[FileRange, ...]
    block_count: int
    leave_blocks_allocated: bool = False
    has_parent: bool = False
    header_sequence_number: int | None = None
    chunk_ratio: int | None = None
    chs_size: int | None = None
    warnings: Tuple[str, ...] = ()

    @property
    def is_differencing(self) -> bool:
        """True for differencing disks (``.avhdx`` checkpoints, VHD type 4)."""
        return self.disk_type is DiskType.DIFFERENCING


# -- internal helpers -----------------------------------------------------------------------------


class _Run(NamedTuple):
    """``nblocks`` consecutive blocks from ``first`` with the same kind.

    For FULL runs the blocks are contiguous in the file from ``file_offset``; PARTIAL runs are
    single blocks.
    """

    first: int
    nblocks: int
    kind: BlockKind
    file_offset: int


class _Ctx:
    """The file being parsed: bounded reads that fail with errors naming it."""

    def __init__(self, source: RandomAccessSource, name: str) -> None:
        self.source = source
        self.name = name
        try:
            self.size = int(source.size())
        except OSError as exc:
            raise VhdError(
                name, f"cannot get the file size: {exc}", what_to_do="check the path and access rights"
            ) from exc

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VhdTruncatedError(
                self.name,
                f"{what} at offset {offset} (+{length} bytes) lies beyond the end of the file "
                f"({self.size} bytes)",
            )
        try:
            data = self.source.read_at(offset, length)
        except OSError as exc:
            raise VhdError(
                self.name,
                f"reading {what} at offset {offset} failed: {exc}",
                what_to_do="check the connection to the file server and retry",
            ) from exc
        if len(data) != length:
            raise VhdTruncatedError(
                self.name, f"short read of {what} at offset {offset}: {len(data)} of {length} bytes"
            )
        return data

    def fail(self, cls: Type[VhdError], message: str, **context: object) -> VhdError:
        return cls(self.name, message, context=context)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _overlaps(a: FileRange, b: FileRange) -> bool:
    return a.offset < b.end and b.offset < a.end


class _RangeIndex:
    """Sorted, non-overlapping file ranges with an overlap query (payload must not hit metadata)."""

    def __init__(self, ranges: Iterable[FileRange]) -> None:
        self.ranges = sorted((r for r in ranges if r.length > 0), key=lambda r: r.offset)
        self.starts = [r.offset for r in self.ranges]

    def find_overlap(self, candidate: FileRange) -> FileRange | None:
        i = bisect.bisect_left(self.starts, candidate.end)
        # Ranges are disjoint and sorted, so only the last one starting before candidate.end can overlap.
        if i > 0 and _overlaps(self.ranges[i - 1], candidate):
            return self.ranges[i - 1]
        return None


def _check_disjoint(ctx: _Ctx, ranges: Sequence[FileRange]) -> None:
    ordered = sorted((r for r in ranges if r.length > 0), key=lambda r: r.offset)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.offset < prev.end:
            raise ctx.fail(
                VhdCorruptError,
                f"{prev.what} ({prev.offset}+{prev.length}) overlaps {cur.what} ({cur.offset}+{cur.length})",
            )


_BIT_RUNS = re.compile(r"0+|1+")


def _bitmap_runs(bitmap: bytes, nbits: int, msb_first: bool) -> Iterator[Tuple[int, int, bool]]:
    """Runs ``(start, count, present)`` of the first ``nbits`` bits of a sector bitmap."""
    if not bitmap or nbits <= 0:
        return
    if msb_first:  # VHD: bit 7 of byte 0 is sector 0
        bits = bin(int.from_bytes(bitmap, "big"))[2:].zfill(len(bitmap) * 8)
    else:  # VHDX: bit 0 of byte 0 is sector 0
        bits = bin(int.from_bytes(bitmap, "little"))[2:].zfill(len(bitmap) * 8)[::-1]
    bits = bits[:nbits]
    for match in _BIT_RUNS.finditer(bits):
        yield match.start(), match.end() - match.start(), match.group()[0] == "1"


# -- format backends ------------------------------------------------------------------------------


class _Backend:
    """Format-specific block map: runs of block kinds, sector bitmaps, validation."""

    unit: int  # bytes per block (mapping unit)
    sector_size: int  # bytes per sector bitmap bit

    def runs(self, first: int, last: int) -> Iterator[_Run]:
        raise NotImplementedError

    def bitmap_runs(self, block: int) -> List[Tuple[int, int, bool]]:
        raise NotImplementedError

    def bitmap_range(self, block: int) -> FileRange | None:
        raise NotImplementedError

    def bitmap_blocks(self) -> List[FileRange]:
        """File ranges of the sector-bitmap blocks the table marks present (VHDX only)."""
        return []


class _FixedVhdBackend(_Backend):
    def __init__(self, virtual_size: int) -> None:
        self.unit = VHD_FIXED_MAPPING_UNIT
        self.sector_size = VHD_SECTOR_SIZE
        self.virtual_size = virtual_size

    def runs(self, first: int, last: int) -> Iterator[_Run]:
        if last > first:
            yield _Run(first, last - first, BlockKind.FULL, first * self.unit)

    def bitmap_runs(self, block: int) -> List[Tuple[int, int, bool]]:
        return []

    def bitmap_range(self, block: int) -> FileRange | None:
        return None


class _DynamicVhdBackend(_Backend):
    """VHD BAT: u32 sector numbers; each block is preceded by its sector bitmap (MSB-first)."""

    def __init__(self, ctx: _Ctx, layout_info: _VhdInfo, reserved: _RangeIndex) -> None:
        self.ctx = ctx
        self.unit = layout_info.block_size
        self.sector_size = VHD_SECTOR_SIZE
        self.virtual_size = layout_info.virtual_size
        self.table_offset = layout_info.table_offset
        self.block_count = layout_info.block_count
        self.differencing = layout_info.differencing
        self.bitmap_size = _ceil_div(self.unit // VHD_SECTOR_SIZE // 8, VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE
        self.data_end = ctx.size - VHD_FOOTER_SIZE
        self.reserved = reserved
        self._cache: OrderedDict[int, Tuple[int, ...]] = OrderedDict()

    def _chunk(self, chunk_index: int) -> Tuple[int, ...]:
        cached = self._cache.get(chunk_index)
        if cached is not None:
            self._cache.move_to_end(chunk_index)
            return cached
        first = chunk_index * BAT_CHUNK_ENTRIES
        count = min(BAT_CHUNK_ENTRIES, self.block_count - first)
        raw = self.ctx.read(self.table_offset + first * 4, count * 4, "VHD BAT")
        entries = struct.unpack(f">{count}I", raw)
        self._cache[chunk_index] = entries
        if len(self._cache) > BAT_CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return entries

    def _block_file_offset(self, block: int, sector: int) -> int:
        bitmap_offset = sector * VHD_SECTOR_SIZE
        length = min(self.unit, self.virtual_size - block * self.unit)
        data_offset = bitmap_offset + self.bitmap_size
        if data_offset + length > self.data_end:
            raise self.ctx.fail(
                VhdTruncatedError,
                f"BAT entry {block} points to offset {bitmap_offset}, past the end of "
                f"the data area ({self.data_end} bytes)",
                block=block,
            )
        hit = self.reserved.find_overlap(FileRange(bitmap_offset, self.bitmap_size + length))
        if hit is not None:
            raise self.ctx.fail(
                VhdCorruptError,
                f"BAT entry {block} (offset {bitmap_offset}) overlaps the {hit.what}",
                block=block,
            )
        return data_offset

    def runs(self, first: int, last: int) -> Iterator[_Run]:
        block = first
        while block < last:
            chunk_index, pos = divmod(block, BAT_CHUNK_ENTRIES)
            entries = self._chunk(chunk_index)
            stop = min(len(entries), pos + (last - block))
            absent_start = -1
            for i in range(pos, stop):
                sector = entries[i]
                b = chunk_index * BAT_CHUNK_ENTRIES + i
                if sector == VHD_UNALLOCATED:
                    if absent_start < 0:
                        absent_start = b
                    continue
                if absent_start >= 0:
                    yield _Run(absent_start, b - absent_start, BlockKind.ABSENT, 0)
                    absent_start = -1
                offset = self._block_file_offset(b, sector)
                yield _Run(b, 1, BlockKind.PARTIAL if self.differencing else BlockKind.FULL, offset)
            if absent_start >= 0:
                yield _Run(
                    absent_start, chunk_index * BAT_CHUNK_ENTRIES + stop - absent_start, BlockKind.ABSENT, 0
                )
            block = chunk_index * BAT_CHUNK_ENTRIES + stop

    def _sector(self, block: int) -> int:
        chunk_index, pos = divmod(block, BAT_CHUNK_ENTRIES)
        return self._chunk(chunk_index)[pos]

    def bitmap_range(self, block: int) -> FileRange | None:
        sector = self._sector(block)
        if sector == VHD_UNALLOCATED:
            return None
        return FileRange(sector * VHD_SECTOR_SIZE, self.bitmap_size, "sector bitmap")

    def bitmap_runs(self, block: int) -> List[Tuple[int, int, bool]]:
        rng = self.bitmap_range(block)
        if rng is None:
            return []
        nsectors = _ceil_div(min(self.unit, self.virtual_size - block * self.unit), VHD_SECTOR_SIZE)
        bitmap = self.ctx.read(rng.offset, _ceil_div(nsectors, 8), "VHD sector bitmap")
        return list(_bitmap_runs(bitmap, nsectors, msb_first=True))


class _VhdxBackend(_Backend):
    """VHDX BAT: interleaved payload and sector-bitmap entries ([MS-VHDX] 2.5)."""

    _PAYLOAD_KIND = {
        PayloadBlockState.NOT_PRESENT: BlockKind.ABSENT,
        PayloadBlockState.UNDEFINED: BlockKind.ZERO,
        PayloadBlockState.ZERO: BlockKind.ZERO,
        PayloadBlockState.UNMAPPED: BlockKind.ZERO,
        # State 5 is "unmapped" in the v0.95 draft; qemu accepts it too.
        5: BlockKind.ZERO,
        PayloadBlockState.FULLY_PRESENT: BlockKind.FULL,
        PayloadBlockState.PARTIALLY_PRESENT: BlockKind.PARTIAL,
    }

    def __init__(self, ctx: _Ctx, info: _VhdxInfo, reserved: _RangeIndex) -> None:
        self.ctx = ctx
        self.unit = info.block_size
        self.sector_size = info.logical_sector_size
        self.virtual_size = info.virtual_size
        self.bat_offset = info.bat_offset
        self.bat_entries = info.bat_entries
        self.chunk_ratio = info.chunk_ratio
        self.block_count = info.block_count
        self.has_parent = info.has_parent
        self.reserved = reserved
        self.bitmap_bytes_per_block = self.unit // self.sector_size // 8
        self._cache: OrderedDict[int, Tuple[int, ...]] = OrderedDict()

    def _chunk(self, chunk_index: int) -> Tuple[int, ...]:
        cached = self._cache.get(chunk_index)
        if cached is not None:
            self._cache.move_to_end(chunk_index)
            return cached
        first = chunk_index * BAT_CHUNK_ENTRIES
        count = min(BAT_CHUNK_ENTRIES, self.bat_entries - first)
        raw = self.ctx.read(self.bat_offset + first * 8, count * 8, "VHDX BAT")
        entries: Tuple[int, ...] = () if raw.count(0) == len(raw) else struct.unpack(f"<{count}Q", raw)
        self._cache[chunk_index] = entries
        if len(self._cache) > BAT_CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return entries

    def _entry(self, index: int) -> int:
        chunk_index, pos = divmod(index, BAT_CHUNK_ENTRIES)
        entries = self._chunk(chunk_index)
        return entries[pos] if entries else 0

    def _payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def _bitmap_index(self, block: int) -> int:
        chunk = block // self.chunk_ratio
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def _check_block(self, what: str, index: int, offset: int, length: int) -> None:
        if offset < VHDX_HEADER_SECTION_SIZE:
            raise self.ctx.fail(
                VhdCorruptError,
                f"BAT entry {index} ({what}) points into the header section (offset {offset})",
                bat_index=index,
            )
        if offset + length > self.ctx.size:
            raise self.ctx.fail(
                VhdTruncatedError,
                f"BAT entry {index} ({what}) points to offset {offset}, past the end "
                f"of the file ({self.ctx.size} bytes)",
                bat_index=index,
            )
        hit = self.reserved.find_overlap(FileRange(offset, length))
        if hit is not None:
            raise self.ctx.fail(
                VhdCorruptError,
                f"BAT entry {index} ({what}, offset {offset}) overlaps the {hit.what}",
                bat_index=index,
            )

    def _bitmap_block_offset(self, block: int) -> int:
        index = self._bitmap_index(block)
        if index >= self.bat_entries:
            raise self.ctx.fail(
                VhdCorruptError,
                f"block {block} is partially present but the BAT has no sector bitmap entry for it",
                block=block,
            )
        value = self._entry(index)
        state = value & BAT_STATE_MASK
        if state != SectorBitmapState.PRESENT:
            if state != SectorBitmapState.NOT_PRESENT:
                raise self.ctx.fail(
                    VhdCorruptError,
                    f"sector bitmap BAT entry {index} has invalid state {state}",
                    bat_index=index,
                )
            raise self.ctx.fail(
                VhdCorruptError,
                f"block {block} is partially present but its sector bitmap block is not present",
                block=block,
            )
        offset = value & BAT_FILE_OFFSET_MASK
        self._check_block("sector bitmap", index, offset, VHDX_SECTOR_BITMAP_BLOCK_SIZE)
        return offset

    def _decode(self, block: int, value: int) -> _Run:
        state = value & BAT_STATE_MASK
        kind = self._PAYLOAD_KIND.get(state)
        index = self._payload_index(block)
        if kind is None or (kind is BlockKind.PARTIAL and not self.has_parent):
            raise self.ctx.fail(
                VhdCorruptError,
                f"payload BAT entry {index} has invalid state {state}"
                + ("" if kind is None else " (partially present in a disk without parent)"),
                bat_index=index,
            )
        if kind in (BlockKind.FULL, BlockKind.PARTIAL):
            offset = value & BAT_FILE_OFFSET_MASK
            length = min(self.unit, self.virtual_size - block * self.unit)
            self._check_block("payload block", index, offset, length)
            if kind is BlockKind.PARTIAL:
                self._bitmap_block_offset(block)
            return _Run(block, 1, kind, offset)
        return _Run(block, 1, kind, 0)

    def runs(self, first: int, last: int) -> Iterator[_Run]:
        pending: _Run | None = None
        block = first
        while block < last:
            index = self._payload_index(block)
            chunk_index = index // BAT_CHUNK_ENTRIES
            entries = self._chunk(chunk_index)
            chunk_end_index = chunk_index * BAT_CHUNK_ENTRIES + BAT_CHUNK_ENTRIES
            # Last block whose payload entry is in this chunk (+1), bounded by `last`.
            chunk_end_block = min(last, self._block_of_index_ceil(chunk_end_index))
            if not entries:
                run = _Run(block, chunk_end_block - block, BlockKind.ABSENT, 0)
                block = chunk_end_block
                runs: Iterable[_Run] = (run,)
            else:
                base = chunk_index * BAT_CHUNK_ENTRIES
                runs = [
                    self._decode(b, entries[self._payload_index(b) - base])
                    for b in range(block, chunk_end_block)
                ]
                block = chunk_end_block
            for run in runs:
                if (
                    pending is not None
                    and run.kind is pending.kind
                    and run.kind in (BlockKind.ZERO, BlockKind.ABSENT)
                    and pending.first + pending.nblocks == run.first
                ):
                    pending = pending._replace(nblocks=pending.nblocks + run.nblocks)
                    continue
                if pending is not None:
                    yield pending
                pending = run
        if pending is not None:
            yield pending

    def _block_of_index_ceil(self, index: int) -> int:
        """Number of payload blocks whose entries lie below BAT index ``index``."""
        full, rest = divmod(index, self.chunk_ratio + 1)
        return full * self.chunk_ratio + min(rest, self.chunk_ratio)

    def bitmap_range(self, block: int) -> FileRange | None:
        if self._entry(self._payload_index(block)) & BAT_STATE_MASK != PayloadBlockState.PARTIALLY_PRESENT:
            return None
        offset = self._bitmap_block_offset(block)
        within = (block % self.chunk_ratio) * self.bitmap_bytes_per_block
        return FileRange(offset + within, self.bitmap_bytes_per_block, "sector bitmap")

    def bitmap_runs(self, block: int) -> List[Tuple[int, int, bool]]:
        rng = self.bitmap_range(block)
        if rng is None:
            return []
        nsectors = _ceil_div(min(self.unit, self.virtual_size - block * self.unit), self.sector_size)
        bitmap = self.ctx.read(rng.offset, _ceil_div(nsectors, 8), "VHDX sector bitmap")
        return list(_bitmap_runs(bitmap, nsectors, msb_first=False))

    def bitmap_blocks(self) -> List[FileRange]:
        out: List[FileRange] = []
        for chunk in range(_ceil_div(self.block_count, self.chunk_ratio)):
            index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio
            if index >= self.bat_entries:
                break
            value = self._entry(index)
            state = value & BAT_STATE_MASK
            if state == SectorBitmapState.PRESENT:
                offset = value & BAT_FILE_OFFSET_MASK
                self._check_block("sector bitmap", index, offset, VHDX_SECTOR_BITMAP_BLOCK_SIZE)
                out.append(FileRange(offset, VHDX_SECTOR_BITMAP_BLOCK_SIZE, f"sector bitmap block {chunk}"))
            elif state != SectorBitmapState.NOT_PRESENT:
                raise self.ctx.fail(
                    VhdCorruptError, f"sector bitmap BAT entry {index} has invalid state {state}", bat_index=index
                )
        return out


# -- VHDX parsing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _VhdxInfo:
    virtual_size: int
    block_size: int
    logical_sector_size: int
    bat_offset: int
    bat_entries: int
    chunk_ratio: int
    block_count: int
    has_parent: bool


def _parse_vhdx_header(raw: bytes) -> VhdxHeader | None:
    header = VhdxHeader.unpack(raw)
    if header.signature != VhdxHeader.SIGNATURE or header.checksum != vhdx_checksum(raw):
        return None
    return header


def _choose_vhdx_header(ctx: _Ctx, warnings: List[str]) -> VhdxHeader:
    headers: List[VhdxHeader | None] = []
    raws: List[bytes] = []
    for number, offset in enumerate(VHDX_HEADER_OFFSETS, start=1):
        raw = ctx.read(offset, VHDX_HEADER_SIZE, f"VHDX header {number}")
        raws.append(raw)
        header = _parse_vhdx_header(raw)
        if header is None:
            warnings.append(
                f"VHDX header {number} is corrupt (bad signature or checksum); using the other copy"
            )
        headers.append(header)
    h1, h2 = headers
    if h1 is None and h2 is None:
        raise ctx.fail(VhdCorruptError, "both VHDX headers are corrupt (bad signature or CRC-32C checksum)")
    if h1 is not None and h2 is not None:
        if h1.sequence_number == h2.sequence_number and raws[0] != raws[1]:
            raise ctx.fail(
                VhdCorruptError, f"both VHDX headers carry sequence number {h1.sequence_number} but differ"
            )
        return h1 if h1.sequence_number >= h2.sequence_number else h2
    chosen = h1 if h1 is not None else h2
    assert chosen is not None
    return chosen


def _parse_region_table(ctx: _Ctx, number: int, offset: int) -> List[RegionTableEntry] | None:
    raw = ctx.read(offset, VHDX_REGION_TABLE_SIZE, f"VHDX region table {number}")
    header = RegionTableHeader.unpack(raw)
    if header.signature != RegionTableHeader.SIGNATURE or header.checksum != vhdx_checksum(raw):
        return None
    if header.entry_count > VHDX_MAX_REGION_ENTRIES:
        raise ctx.fail(
            VhdLimitError,
            f"region table {number} claims {header.entry_count} entries (limit {VHDX_MAX_REGION_ENTRIES})",
        )
    size = RegionTableEntry.struct_size()
    base = RegionTableHeader.struct_size()
    return [RegionTableEntry.unpack(raw, base + i * size) for i in range(header.entry_count)]


def _read_vhdx_regions(ctx: _Ctx, warnings: List[str]) -> List[RegionTableEntry]:
    tables = [_parse_region_table(ctx, n, off) for n, off in enumerate(VHDX_REGION_TABLE_OFFSETS, start=1)]
    t1, t2 = tables
    if t1 is None and t2 is None:
        raise ctx.fail(
            VhdCorruptError, "both VHDX region tables are corrupt (bad signature or CRC-32C checksum)"
        )
    if t1 is None or t2 is None:
        warnings.append(f"VHDX region table {1 if t1 is None else 2} is corrupt; using the other copy")
    elif t1 != t2:
        warnings.append("the two VHDX region tables differ; using region table 1")
    chosen = t1 if t1 is not None else t2
    assert chosen is not None
    return chosen


def _validate_vhdx_object(ctx: _Ctx, what: str, offset: int, length: int) -> FileRange:
    if offset % VHDX_ALIGNMENT or length % VHDX_ALIGNMENT or length <= 0:
        raise ctx.fail(
            VhdCorruptError,
            f"{what} (offset {offset}, length {length}) is not a non-empty multiple of "
            "1 MiB at a 1 MiB boundary",
        )
    if offset < VHDX_HEADER_SECTION_SIZE:
        raise ctx.fail(VhdCorruptError, f"{what} (offset {offset}) overlaps the header section")
    if offset + length > ctx.size:
        raise ctx.fail(
            VhdTruncatedError,
            f"{what} (offset {offset}, length {length}) extends past the end of the file ({ctx.size} bytes)",
        )
    return FileRange(offset, length, what)


def _read_vhdx_metadata(ctx: _Ctx, region: FileRange) -> Tuple[Dict[uuid.UUID, bytes], Dict[uuid.UUID, int]]:
    """Return item id -> item bytes and item id -> flags of the metadata region ([MS-VHDX] 2.6)."""
    if region.length < VHDX_METADATA_TABLE_SIZE:
        raise ctx.fail(
            VhdCorruptError, f"metadata region of {region.length} bytes cannot hold its 64 KiB table"
        )
    raw = ctx.read(region.offset, VHDX_METADATA_TABLE_SIZE, "VHDX metadata table")
    header = MetadataTableHeader.unpack(raw)
    if header.signature != MetadataTableHeader.SIGNATURE:
        raise ctx.fail(
            VhdFormatError, f"metadata table signature is {header.signature!r}, expected b'metadata'"
        )
    if header.entry_count > VHDX_MAX_METADATA_ENTRIES:
        raise ctx.fail(
            VhdLimitError,
            f"metadata table claims {header.entry_count} entries (limit {VHDX_MAX_METADATA_ENTRIES})",
        )
    known = {
        FILE_PARAMETERS_GUID,
        VIRTUAL_DISK_SIZE_GUID,
        VIRTUAL_DISK_ID_GUID,
        LOGICAL_SECTOR_SIZE_GUID,
        PHYSICAL_SECTOR_SIZE_GUID,
        PARENT_LOCATOR_GUID,
    }
    items: Dict[uuid.UUID, bytes] = {}
    flags: Dict[uuid.UUID, int] = {}
    size = MetadataTableEntry.struct_size()
    base = MetadataTableHeader.struct_size()
    for i in range(header.entry_count):
        entry = MetadataTableEntry.unpack(raw, base + i * size)
        if entry.item_id in flags:
            raise ctx.fail(VhdCorruptError, f"metadata item {entry.item_id} appears twice")
        if entry.item_id not in known:
            if entry.flags & MetadataTableEntryFlags.IS_REQUIRED:
                raise ctx.fail(VhdUnsupportedError, f"unknown required metadata item {entry.item_id}")
            flags[entry.item_id] = entry.flags
            continue
        if entry.length > VHDX_MAX_METADATA_ITEM:
            raise ctx.fail(
                VhdLimitError, f"metadata item {entry.item_id} is {entry.length} bytes (limit 1 MiB)"
            )
        if entry.length and (
            entry.offset < VHDX_METADATA_TABLE_SIZE or entry.offset + entry.length > region.length
        ):
            raise ctx.fail(
                VhdCorruptError,
                f"metadata item {entry.item_id} (offset {entry.offset}, length "
                f"{entry.length}) lies outside the metadata region",
            )
        flags[entry.item_id] = entry.flags
        items[entry.item_id] = ctx.read(
            region.offset + entry.offset, entry.length, f"metadata item {entry.item_id}"
        )
    return items, flags


def _parse_vhdx_parent_locator(ctx: _Ctx, raw: bytes) -> ParentLocator:
    if len(raw) < ParentLocatorHeader.struct_size():
        raise ctx.fail(VhdCorruptError, f"parent locator item of {len(raw)} bytes is too short")
    header = ParentLocatorHeader.unpack(raw)
    entry_size = ParentLocatorEntry.struct_size()
    base = ParentLocatorHeader.struct_size()
    if base + header.key_value_count * entry_size > len(raw):
        raise ctx.fail(
            VhdCorruptError,
            f"parent locator claims {header.key_value_count} entries, more than its {len(raw)} bytes hold",
        )
    entries: Dict[str, str] = {}

    def text(offset: int, length: int, what: str) -> str:
        if length == 0 or length % 2 or offset < base or offset + length > len(raw):
            raise ctx.fail(
                VhdCorruptError, f"parent locator {what} (offset {offset}, length {length}) is invalid"
            )
        try:
            return raw[offset : offset + length].decode("utf-16-le")
        except UnicodeDecodeError as exc:
            raise ctx.fail(VhdCorruptError, f"parent locator {what} is not valid UTF-16LE: {exc}") from exc

    for i in range(header.key_value_count):
        entry = ParentLocatorEntry.unpack(raw, base + i * entry_size)
        key = text(entry.key_offset, entry.key_length, f"key {i}")
        value = text(entry.value_offset, entry.value_length, f"value {i}")
        if key in entries:
            raise ctx.fail(VhdCorruptError, f"parent locator key {key!r} appears twice")
        entries[key] = value
    return ParentLocator(entries=entries, locator_type=header.locator_type)


def _metadata_item(
    ctx: _Ctx, items: Mapping[uuid.UUID, bytes], item_id: uuid.UUID, name: str, size: int
) -> bytes:
    raw = items.get(item_id)
    if raw is None:
        raise ctx.fail(VhdCorruptError, f"required metadata item {name} ({item_id}) is missing")
    if len(raw) < size:
        raise ctx.fail(VhdCorruptError, f"metadata item {name} is {len(raw)} bytes, needs {size}")
    return raw


def _open_vhdx(ctx: _Ctx) -> Tuple[DiskLayout, _Backend]:
    warnings: List[str] = []
    if ctx.size < VHDX_HEADER_SECTION_SIZE:
        raise ctx.fail(VhdTruncatedError, f"a VHDX file is at least 1 MiB, this one is {ctx.size} bytes")
    ident = VhdxFileIdentifier.unpack(ctx.read(0, VhdxFileIdentifier.struct_size(), "VHDX file identifier"))
    header = _choose_vhdx_header(ctx, warnings)
    if header.version != 1:
        raise ctx.fail(VhdUnsupportedError, f"VHDX header version {header.version} (only version 1 is known)")
    if header.log_guid != NIL_GUID:
        raise ctx.fail(
            VhdLogReplayRequiredError,
            f"the VHDX log is not empty (LogGuid {header.log_guid}); the file "
            "may hold writes that were never applied",
        )
    metadata_ranges: List[FileRange] = [FileRange(0, VHDX_HEADER_SECTION_SIZE, "VHDX header section")]
    if header.log_length:
        metadata_ranges.append(_validate_vhdx_object(ctx, "VHDX log", header.log_offset, header.log_length))

    regions = _read_vhdx_regions(ctx, warnings)
    bat_region: FileRange | None = None
    meta_region: FileRange | None = None
    seen: Set[uuid.UUID] = set()
    for entry in regions:
        if entry.guid in seen:
            raise ctx.fail(VhdCorruptError, f"region {entry.guid} appears twice in the region table")
        seen.add(entry.guid)
        if entry.guid == BAT_REGION_GUID:
            bat_region = _validate_vhdx_object(ctx, "VHDX BAT region", entry.file_offset, entry.length)
            metadata_ranges.append(bat_region)
        elif entry.guid == METADATA_REGION_GUID:
            meta_region = _validate_vhdx_object(ctx, "VHDX metadata region", entry.file_offset, entry.length)
            metadata_ranges.append(meta_region)
        elif entry.flags & RegionTableEntryFlags.REQUIRED:
            raise ctx.fail(
                VhdUnsupportedError,
                f"unknown required region {entry.guid}: this reader must not open the file",
            )
        else:
            metadata_ranges.append(
                _validate_vhdx_object(ctx, f"VHDX region {entry.guid}", entry.file_offset, entry.length)
            )
    if bat_region is None or meta_region is None:
        raise ctx.fail(
            VhdCorruptError,
            "the region table lacks the " + ("BAT" if bat_region is None else "metadata") + " region",
        )
    _check_disjoint(ctx, metadata_ranges)

    items, _flags = _read_vhdx_metadata(ctx, meta_region)
    params = FileParameters.unpack(_metadata_item(ctx, items, FILE_PARAMETERS_GUID, "FileParameters", 8))
    virtual_size = VirtualDiskSizeItem.unpack(
        _metadata_item(ctx, items, VIRTUAL_DISK_SIZE_GUID, "VirtualDiskSize", 8)
    ).virtual_disk_size
    disk_id = VirtualDiskIdItem.unpack(
        _metadata_item(ctx, items, VIRTUAL_DISK_ID_GUID, "Page83Data", 16)
    ).virtual_disk_id
    logical = SectorSizeItem.unpack(
        _metadata_item(ctx, items, LOGICAL_SECTOR_SIZE_GUID, "LogicalSectorSize", 4)
    ).sector_size
    physical = SectorSizeItem.unpack(
        _metadata_item(ctx, items, PHYSICAL_SECTOR_SIZE_GUID, "PhysicalSectorSize", 4)
    ).sector_size

    block_size = params.block_size
    if not _is_power_of_two(block_size) or not VHDX_MIN_BLOCK_SIZE <= block_size <= VHDX_MAX_BLOCK_SIZE:
        raise ctx.fail(
            VhdLimitError, f"block size {block_size} is not a power of two between 1 MiB and 256 MiB"
        )
    if logical not in VHDX_SECTOR_SIZES or physical not in VHDX_SECTOR_SIZES:
        raise ctx.fail(VhdLimitError, f"sector sizes {logical}/{physical} are not 512 or 4096")
    if virtual_size > VHDX_MAX_VIRTUAL_SIZE:
        raise ctx.fail(VhdLimitError, f"virtual size {virtual_size} exceeds the VHDX limit of 64 TiB")
    if virtual_size % logical:
        raise ctx.fail(
            VhdCorruptError,
            f"virtual size {virtual_size} is not a multiple of the logical sector size {logical}",
        )
    has_parent = bool(params.flags & FileParametersFlags.HAS_PARENT)
    leave_allocated = bool(params.flags & FileParametersFlags.LEAVE_BLOCKS_ALLOCATED)

    locator: ParentLocator | None = None
    if has_parent:
        raw_locator = items.get(PARENT_LOCATOR_GUID)
        if raw_locator is None:
            raise ctx.fail(VhdCorruptError, "differencing VHDX without a parent locator item")
        locator = _parse_vhdx_parent_locator(ctx, raw_locator)
        if locator.locator_type != VHDX_PARENT_LOCATOR_TYPE_GUID:
            warnings.append(f"unknown parent locator type {locator.locator_type}")

    chunk_ratio = (VHDX_SECTORS_PER_BITMAP_BLOCK * logical) // block_size
    block_count = _ceil_div(virtual_size, block_size)
    bitmap_blocks = _ceil_div(block_count, chunk_ratio)
    if has_parent:
        bat_entries = bitmap_blocks * (chunk_ratio + 1)
    else:
        bat_entries = block_count + (block_count - 1) // chunk_ratio if block_count else 0
    if bat_entries * 8 > bat_region.length:
        raise ctx.fail(
            VhdCorruptError,
            f"BAT region of {bat_region.length} bytes cannot hold the {bat_entries} entries "
            f"a {virtual_size}-byte disk with {block_size}-byte blocks needs",
        )

    if has_parent:
        disk_type = DiskType.DIFFERENCING
    elif leave_allocated:
        disk_type = DiskType.FIXED
    else:
        disk_type = DiskType.DYNAMIC
    layout = DiskLayout(
        name=ctx.name,
        format=DiskFormat.VHDX,
        disk_type=disk_type,
        virtual_size=virtual_size,
        block_size=block_size,
        logical_sector_size=logical,
        physical_sector_size=physical,
        file_size=ctx.size,
        virtual_disk_id=disk_id,
        data_write_guid=header.data_write_guid,
        file_write_guid=header.file_write_guid,
        parent_locator=locator,
        creator=ident.creator,
        metadata_ranges=tuple(sorted(metadata_ranges, key=lambda r: r.offset)),
        block_count=block_count,
        leave_blocks_allocated=leave_allocated,
        has_parent=has_parent,
        header_sequence_number=header.sequence_number,
        chunk_ratio=chunk_ratio,
        warnings=tuple(warnings),
    )
    info = _VhdxInfo(
        virtual_size,
        block_size,
        logical,
        bat_region.offset,
        bat_entries,
        chunk_ratio,
        block_count,
        has_parent,
    )
    return layout, _VhdxBackend(ctx, info, _RangeIndex(metadata_ranges))


# -- VHD parsing ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _VhdInfo:
    virtual_size: int
    block_size: int
    table_offset: int
    block_count: int
    differencing: bool


def _parse_vhd_footer(raw: bytes) -> VhdFooter | None:
    footer = VhdFooter.unpack(raw)
    if footer.cookie != VhdFooter.SIGNATURE or footer.checksum != vhd_checksum(raw):
        return None
    return footer


def _vhd_locators(ctx: _Ctx, dyn: VhdDynamicHeader, data_end: int) -> ParentLocator:
    entries: Dict[str, str] = {}
    names = {b"W2ru": "relative_path", b"W2ku": "absolute_win32_path"}
    for slot, loc in enumerate(dyn.parent_locators):
        key = names.get(loc.platform_code)
        if key is None or loc.platform_data_length == 0:
            continue
        if loc.platform_data_length > VHD_MAX_LOCATOR_DATA:
            raise ctx.fail(
                VhdLimitError,
                f"parent locator {slot} ({loc.platform_code!r}) claims {loc.platform_data_length} bytes",
            )
        if loc.platform_data_offset + loc.platform_data_length > data_end:
            raise ctx.fail(VhdTruncatedError, f"parent locator {slot} data lies past the end of the file")
        raw = ctx.read(loc.platform_data_offset, loc.platform_data_length, f"parent locator {slot}")
        try:
            value = raw.decode("utf-16-le").split("\0", 1)[0]
        except UnicodeDecodeError as exc:
            raise ctx.fail(VhdCorruptError, f"parent locator {slot} is not valid UTF-16LE: {exc}") from exc
        if value and key not in entries:
            entries[key] = value
    return ParentLocator(
        entries=entries,
        parent_unique_id=dyn.parent_unique_id,
        parent_timestamp=dyn.parent_timestamp,
        parent_name=dyn.parent_unicode_name,
    )


def _open_vhd(ctx: _Ctx) -> Tuple[DiskLayout, _Backend]:
    warnings: List[str] = []
    if ctx.size < VHD_FOOTER_SIZE:
        raise ctx.fail(VhdFormatError, f"file of {ctx.size} bytes is too small for a VHD footer")
    footer = _parse_vhd_footer(ctx.read(ctx.size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE, "VHD footer"))
    if footer is None:
        copy = _parse_vhd_footer(ctx.read(0, VHD_FOOTER_SIZE, "VHD footer copy"))
        if copy is None or copy.disk_type == VhdDiskType.FIXED:
            raise ctx.fail(
                VhdCorruptError,
                "the VHD footer is corrupt (bad cookie or checksum) and there is no valid copy",
            )
        warnings.append("the VHD footer at the end of the file is corrupt; using the copy at offset 0")
        footer = copy
    if footer.file_format_version >> 16 != 1:
        raise ctx.fail(VhdUnsupportedError, f"VHD file format version {footer.file_format_version:#x}")
    try:
        vhd_type = VhdDiskType(footer.disk_type)
    except ValueError:
        vhd_type = VhdDiskType.NONE
    if vhd_type not in (VhdDiskType.FIXED, VhdDiskType.DYNAMIC, VhdDiskType.DIFFERENCING):
        raise ctx.fail(VhdUnsupportedError, f"VHD disk type {footer.disk_type} (expected 2, 3 or 4)")

    chs_size = footer.cylinders * footer.heads * footer.sectors_per_track * VHD_SECTOR_SIZE
    # Hyper-V sizes every VHD by current_size; qemu does so for Hyper-V's creator "win " and a few others.
    virtual_size = footer.current_size - footer.current_size % VHD_SECTOR_SIZE
    if virtual_size != footer.current_size:
        warnings.append(f"current size {footer.current_size} is not a multiple of 512; using {virtual_size}")
    if virtual_size > VHD_MAX_VIRTUAL_SIZE:
        raise ctx.fail(VhdLimitError, f"virtual size {virtual_size} exceeds the VHD limit of 2040 GiB")
    creator = footer.creator_application.decode("latin-1")
    data_end = ctx.size - VHD_FOOTER_SIZE
    footer_range = FileRange(data_end, VHD_FOOTER_SIZE, "VHD footer")

    if vhd_type == VhdDiskType.FIXED:
        if virtual_size > data_end:
            raise ctx.fail(
                VhdTruncatedError,
                f"fixed VHD of {virtual_size} bytes needs {virtual_size + 512} bytes of file, has {ctx.size}",
            )
        layout = DiskLayout(
            name=ctx.name,
            format=DiskFormat.VHD,
            disk_type=DiskType.FIXED,
            virtual_size=virtual_size,
            block_size=0,
            logical_sector_size=VHD_SECTOR_SIZE,
            physical_sector_size=VHD_SECTOR_SIZE,
            file_size=ctx.size,
            virtual_disk_id=footer.unique_id,
            data_write_guid=None,
            file_write_guid=None,
            parent_locator=None,
            creator=creator,
            metadata_ranges=(footer_range,),
            block_count=_ceil_div(virtual_size, VHD_FIXED_MAPPING_UNIT),
            leave_blocks_allocated=True,
            chs_size=chs_size,
            warnings=tuple(warnings),
        )
        return layout, _FixedVhdBackend(virtual_size)

    dyn_offset = footer.data_offset
    if dyn_offset < VHD_FOOTER_SIZE:
        raise ctx.fail(VhdCorruptError, f"dynamic header offset {dyn_offset} overlaps the footer copy")
    if dyn_offset + VHD_DYNAMIC_HEADER_SIZE > data_end:
        raise ctx.fail(VhdTruncatedError, f"dynamic header offset {dyn_offset} lies past the end of the file")
    raw_dyn = ctx.read(dyn_offset, VHD_DYNAMIC_HEADER_SIZE, "VHD dynamic header")
    dyn = VhdDynamicHeader.unpack(raw_dyn)
    if dyn.cookie != VhdDynamicHeader.SIGNATURE:
        raise ctx.fail(VhdFormatError, f"dynamic header cookie is {dyn.cookie!r}, expected b'cxsparse'")
    if dyn.checksum != vhd_checksum(raw_dyn):
        raise ctx.fail(VhdCorruptError, "dynamic header checksum mismatch")
    if dyn.header_version >> 16 != 1:
        raise ctx.fail(VhdUnsupportedError, f"VHD dynamic header version {dyn.header_version:#x}")
    block_size = dyn.block_size
    if not _is_power_of_two(block_size) or not VHD_MIN_BLOCK_SIZE <= block_size <= VHD_MAX_BLOCK_SIZE:
        raise ctx.fail(
            VhdLimitError, f"block size {block_size} is not a power of two between 4 KiB and 256 MiB"
        )
    block_count = _ceil_div(virtual_size, block_size)
    if dyn.max_table_entries < block_count:
        raise ctx.fail(
            VhdCorruptError, f"BAT of {dyn.max_table_entries} entries is too small for {block_count} blocks"
        )
    bat_bytes = _ceil_div(dyn.max_table_entries * 4, VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE
    if dyn.table_offset < VHD_FOOTER_SIZE or dyn.table_offset + dyn.max_table_entries * 4 > data_end:
        raise ctx.fail(
            VhdTruncatedError if dyn.table_offset >= VHD_FOOTER_SIZE else VhdCorruptError,
            f"BAT at offset {dyn.table_offset} with {dyn.max_table_entries} entries lies outside the file "
            f"({ctx.size} bytes)",
        )
    bat_range = FileRange(dyn.table_offset, min(bat_bytes, data_end - dyn.table_offset), "VHD BAT")
    ranges = [
        FileRange(0, VHD_FOOTER_SIZE, "VHD footer copy"),
        FileRange(dyn_offset, VHD_DYNAMIC_HEADER_SIZE, "VHD dynamic header"),
        bat_range,
        footer_range,
    ]
    _check_disjoint(ctx, ranges)
    differencing = vhd_type == VhdDiskType.DIFFERENCING
    locator = _vhd_locators(ctx, dyn, data_end) if differencing else None
    if locator is not None:
        for slot, loc in enumerate(dyn.parent_locators):
            if loc.platform_code in (b"W2ru", b"W2ku") and loc.platform_data_length:
                ranges.append(
                    FileRange(loc.platform_data_offset, loc.platform_data_length, f"parent locator {slot}")
                )
    layout = DiskLayout(
        name=ctx.name,
        format=DiskFormat.VHD,
        disk_type=DiskType.DIFFERENCING if differencing else DiskType.DYNAMIC,
        virtual_size=virtual_size,
        block_size=block_size,
        logical_sector_size=VHD_SECTOR_SIZE,
        physical_sector_size=VHD_SECTOR_SIZE,
        file_size=ctx.size,
        virtual_disk_id=footer.unique_id,
        data_write_guid=None,
        file_write_guid=None,
        parent_locator=locator,
        creator=creator,
        metadata_ranges=tuple(sorted(ranges, key=lambda r: r.offset)),
        block_count=block_count,
        has_parent=differencing,
        chs_size=chs_size,
        warnings=tuple(warnings),
    )
    info = _VhdInfo(virtual_size, block_size, dyn.table_offset, block_count, differencing)
    return layout, _DynamicVhdBackend(ctx, info, _RangeIndex(ranges[:4]))


# -- the public reader ----------------------------------------------------------------------------


class VirtualDisk:
    """An opened VHD/VHDX file: its :class:`DiskLayout` and its virtual-to-file map.

    Create with :func:`open_disk` or :func:`open_file`.  BAT problems in large files surface
    lazily from the iterators as :class:`VhdError`; call :meth:`validate` to check everything up
    front.
    """

    def __init__(
        self, source: RandomAccessSource, layout: DiskLayout, backend: _Backend, *, owns_source: bool
    ) -> None:
        self.source = source
        self.layout = layout
        self._backend = backend
        self._owns_source = owns_source

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"VirtualDisk({lay.name!r}, {lay.format.value}, {lay.disk_type.value}, {lay.virtual_size} bytes)"
        )

    # convenience accessors
    @property
    def name(self) -> str:
        """Name of the file in messages."""
        return self.layout.name

    @property
    def virtual_size(self) -> int:
        """Size of the virtual disk in bytes."""
        return self.layout.virtual_size

    @property
    def is_differencing(self) -> bool:
        """True for differencing disks."""
        return self.layout.is_differencing

    def close(self) -> None:
        """Close the source if this object opened it."""
        close = getattr(self.source, "close", None)
        if self._owns_source and callable(close):
            close()

    def __enter__(self) -> VirtualDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(
        self, cls: Type[VhdError], message: str, *, what_to_do: str | None = None, **context: object
    ) -> VhdError:
        return cls(self.name, message, what_to_do=what_to_do, context=context)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise self._fail(
                VhdRangeError,
                f"virtual range {offset}+{length} is outside the disk ({self.virtual_size} bytes)",
                offset=offset,
                length=length,
            )

    def validate(self) -> None:
        """Walk the whole BAT (and sector bitmaps) so that every problem is raised now."""
        for run in self._backend.runs(0, self.layout.block_count):
            if run.kind is BlockKind.PARTIAL:
                self._backend.bitmap_runs(run.first)

    def blocks(self, first: int = 0, last: int | None = None) -> Iterator[Tuple[int, int, BlockKind]]:
        """Runs ``(first_block, count, kind)`` of the block map (lazy; merges zero/absent runs)."""
        end = self.layout.block_count if last is None else min(last, self.layout.block_count)
        for run in self._backend.runs(max(first, 0), end):
            yield run.first, run.nblocks, run.kind

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Extents covering ``[offset, offset+length)`` exactly, in order, adjacent ones merged.

        DATA extents of a differencing disk follow its sector bitmap, so ABSENT ones are what the
        caller must read from the parent.
        """
        if length is None:
            length = max(self.virtual_size - offset, 0)
        self._check_range(offset, length)
        if length == 0:
            return
        end = offset + length
        unit = self._backend.unit
        pending: Extent | None = None
        for piece in self._pieces(offset, end, unit):
            if pending is None:
                pending = piece
                continue
            if piece.kind is pending.kind and (
                piece.kind is not ExtentKind.DATA
                or (
                    pending.file_offset is not None
                    and pending.file_offset + pending.length == piece.file_offset
                )
            ):
                pending = dataclasses.replace(pending, length=pending.length + piece.length)
            else:
                yield pending
                pending = piece
        if pending is not None:
            yield pending

    def _pieces(self, start: int, end: int, unit: int) -> Iterator[Extent]:
        first = start // unit
        last = _ceil_div(end, unit)
        for run in self._backend.runs(first, last):
            run_start = max(run.first * unit, start)
            run_end = min((run.first + run.nblocks) * unit, end, self.virtual_size)
            if run_end <= run_start:
                continue
            if run.kind is BlockKind.FULL:
                yield Extent(
                    ExtentKind.DATA,
                    run_start,
                    run_end - run_start,
                    run.file_offset + (run_start - run.first * unit),
                )
            elif run.kind is BlockKind.ZERO:
                yield Extent(ExtentKind.ZERO, run_start, run_end - run_start)
            elif run.kind is BlockKind.ABSENT:
                yield Extent(ExtentKind.ABSENT, run_start, run_end - run_start)
            else:
                block_start = run.first * unit
                sector = self._backend.sector_size
                for s, n, present in self._backend.bitmap_runs(run.first):
                    a = max(block_start + s * sector, run_start)
                    b = min(block_start + (s + n) * sector, run_end)
                    if b <= a:
                        continue
                    if present:
                        yield Extent(ExtentKind.DATA, a, b - a, run.file_offset + (a - block_start))
                    else:
                        yield Extent(ExtentKind.ABSENT, a, b - a)

    def allocated_extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Only the DATA extents: ``(virtual_offset, length, file_offset)`` stored in this file."""
        return (e for e in self.extents(offset, length) if e.kind is ExtentKind.DATA)

    def sector_bitmap_runs(self, block: int) -> List[Tuple[int, int, bool]]:
        """For a partially present block of a differencing disk: ``(first_sector, count, present)``
        runs, sectors relative to the block (``present`` = stored in this file)."""
        if not 0 <= block < self.layout.block_count:
            raise self._fail(
                VhdRangeError, f"block {block} does not exist ({self.layout.block_count} blocks)"
            )
        return self._backend.bitmap_runs(block)

    def referenced_ranges(self) -> List[FileRange]:
        """Every file range the disk's own tables point at, merged and sorted.

        That is the headers, log, region table, BAT and metadata region (VHDX), the footer, its
        copy, the dynamic header, BAT and parent locators (VHD), and each payload block the BAT
        marks present with its sector bitmap.  The rest of the file (blocks that were trimmed or
        unmapped, free space a writer left) is never read by anyone: a sparse full backup skips
        it and its restore leaves zeros there.  A fixed disk is referenced whole.
        """
        lay = self.layout
        if lay.disk_type is DiskType.FIXED:
            return [FileRange(0, lay.file_size, "whole file")]
        out: List[FileRange] = list(lay.metadata_ranges)
        out += self._backend.bitmap_blocks()
        unit = self._backend.unit
        for run in self._backend.runs(0, lay.block_count):
            if run.kind not in (BlockKind.FULL, BlockKind.PARTIAL):
                continue
            for block in range(run.first, run.first + run.nblocks):
                length = min(unit, lay.virtual_size - block * unit)
                out.append(FileRange(run.file_offset + (block - run.first) * unit, length, f"block {block}"))
                if lay.format is DiskFormat.VHD:  # every VHD block is preceded by its sector bitmap
                    bitmap = self._backend.bitmap_range(block)
                    if bitmap is not None:
                        out.append(bitmap)
        return _merge_file_ranges(out)

    def map_virtual_ranges(self, ranges: Iterable[Tuple[int, int]]) -> Iterator[MappedBlock]:
        """Blocks touched by the virtual byte ``ranges`` ``(offset, length)`` (e.g. from RCT), each
        once and in order, with the file ranges (payload, sector bitmap) that hold them."""
        return self._mapped(ranges, allocated_only=False)

    def file_ranges_for(self, ranges: Iterable[Tuple[int, int]]) -> List[FileRange]:
        """Merged, sorted file ranges holding the virtual byte ``ranges`` (what an incremental
        backup copies, besides :attr:`DiskLayout.metadata_ranges`)."""
        out: List[FileRange] = []
        for block in self._mapped(ranges, allocated_only=True):
            out.extend(block.file_ranges)
        return _merge_file_ranges(out)

    def _mapped(self, ranges: Iterable[Tuple[int, int]], *, allocated_only: bool) -> Iterator[MappedBlock]:
        merged: list[Tuple[int, int]] = []
        for offset, length in sorted((int(o), int(n)) for o, n in ranges):
            self._check_range(offset, length)
            if length == 0:
                continue
            if merged and offset <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], offset + length))
            else:
                merged.append((offset, offset + length))
        unit = self._backend.unit
        next_block = 0
        for start, end in merged:
            first = max(start // unit, next_block)
            last = _ceil_div(end, unit)
            if first >= last:
                continue
            next_block = last
            for run in self._backend.runs(first, last):
                allocated = run.kind in (BlockKind.FULL, BlockKind.PARTIAL)
                if allocated_only and not allocated:
                    continue  # a huge sparse run is skipped without visiting its blocks
                for block in range(run.first, run.first + run.nblocks):
                    vstart = block * unit
                    vlen = min(unit, self.virtual_size - vstart)
                    file_ranges: Tuple[FileRange, ...] = ()
                    if allocated:
                        payload = FileRange(
                            run.file_offset + (block - run.first) * unit, vlen, f"block {block}"
                        )
                        bitmap = self._backend.bitmap_range(block)
                        file_ranges = (payload,) if bitmap is None else (bitmap, payload)
                    yield MappedBlock(block, vstart, vlen, run.kind, file_ranges)

    def read_virtual(self, offset: int, length: int) -> bytes:
        """Read virtual bytes; holes read as zeros.  Differencing disks: use :class:`DiskChain`."""
        if self.is_differencing:
            raise self._fail(
                VhdUnsupportedError,
                "is a differencing disk; its data is only complete together with its parent",
                what_to_do="read it through resolve_chain()",
            )
        return self._read(offset, length, None)

    def _read(self, offset: int, length: int, absent: Callable[[int, int], bytes] | None) -> bytes:
        if length > MAX_READ_LENGTH:
            raise ValueError(f"read of {length} bytes exceeds MAX_READ_LENGTH ({MAX_READ_LENGTH})")
        self._check_range(offset, length)
        out = bytearray(length)
        for ext in self.extents(offset, length):
            pos = ext.virtual_offset - offset
            if ext.kind is ExtentKind.DATA:
                assert ext.file_offset is not None
                out[pos : pos + ext.length] = self._read_file(ext.file_offset, ext.length)
            elif ext.kind is ExtentKind.ABSENT and absent is not None:
                out[pos : pos + ext.length] = absent(ext.virtual_offset, ext.length)
        return bytes(out)

    def _read_file(self, offset: int, length: int) -> bytes:
        try:
            data = self.source.read_at(offset, length)
        except OSError as exc:
            raise self._fail(
                VhdError,
                f"reading {length} bytes at offset {offset} failed: {exc}",
                what_to_do="check the connection to the file server and retry",
            ) from exc
        if len(data) != length:
            raise self._fail(
                VhdTruncatedError,
                f"short read at offset {offset}: {len(data)} of {length} bytes (file shrank?)",
            )
        return data


def _merge_file_ranges(ranges: Iterable[FileRange]) -> List[FileRange]:
    merged: List[FileRange] = []
    for rng in sorted(ranges, key=lambda r: r.offset):
        if merged and rng.offset <= merged[-1].end:
            last = merged[-1]
            merged[-1] = FileRange(last.offset, max(last.end, rng.end) - last.offset, "blocks")
        else:
            merged.append(FileRange(rng.offset, rng.length, "blocks"))
    return merged


def _source_name(source: RandomAccessSource) -> str:
    for attr in ("name", "path"):
        value = getattr(source, attr, None)
        if isinstance(value, str) and value:
            return value
    return repr(source)


def open_disk(
    source: RandomAccessSource, name: str | None = None, *, owns_source: bool = False
) -> VirtualDisk:
    """Parse and validate the VHD/VHDX in ``source``; ``name`` is used in messages.

    Raises a :class:`VhdError` subclass for anything the reader cannot trust.
    """
    ctx = _Ctx(source, name or _source_name(source))
    if ctx.size >= 8 and ctx.read(0, 8, "file signature") == VhdxFileIdentifier.SIGNATURE:
        layout, backend = _open_vhdx(ctx)
    elif ctx.size >= VHD_FOOTER_SIZE and (
        ctx.read(ctx.size - VHD_FOOTER_SIZE, 8, "VHD footer") == VhdFooter.SIGNATURE
        or ctx.read(0, 8, "VHD footer copy") == VhdFooter.SIGNATURE
    ):
        layout, backend = _open_vhd(ctx)
    else:
        raise ctx.fail(
            VhdFormatError, "is neither a VHDX (no 'vhdxfile' signature) nor a VHD (no 'conectix' footer)"
        )
    disk = VirtualDisk(source, layout, backend, owns_source=owns_source)
    entries = layout.block_count + (layout.block_count // layout.chunk_ratio if layout.chunk_ratio else 0)
    if entries <= EAGER_BAT_VALIDATION_ENTRIES:
        disk.validate()
    return disk


def open_file(path: Union[str, os.PathLike[str]]) -> VirtualDisk:
    """Open a local VHD/VHDX file (the returned disk closes it)."""
    source = FileSource(path)
    try:
        return open_disk(source, os.fspath(path), owns_source=True)
    except BaseException:
        source.close()
        raise


# -- differencing chains --------------------------------------------------------------------------


class DiskChain:
    """A differencing chain, leaf first; reads fall through ABSENT ranges to the parents."""

    def __init__(self, disks: Sequence[VirtualDisk], paths: Sequence[str]) -> None:
        self.disks = tuple(disks)
        self.paths = tuple(paths)

    def __repr__(self) -> str:
        return f"DiskChain({list(self.paths)!r})"

    @property
    def leaf(self) -> VirtualDisk:
        """The disk the chain was resolved from."""
        return self.disks[0]

    @property
    def virtual_size(self) -> int:
        """The leaf's virtual size."""
        return self.leaf.virtual_size

    def close(self) -> None:
        """Close every disk that owns its source."""
        for disk in self.disks:
            disk.close()

    def __enter__(self) -> DiskChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_virtual(self, offset: int, length: int) -> bytes:
        """Read virtual bytes of the leaf, taking absent ranges from the parents."""
        return self._read_level(0, offset, length)

    def _read_level(self, level: int, offset: int, length: int) -> bytes:
        disk = self.disks[level]
        if level + 1 >= len(self.disks):
            if disk.is_differencing:
                raise disk._fail(VhdChainError, "chain ends in a differencing disk")
            return disk._read(offset, length, None)

        def from_parent(off: int, n: int) -> bytes:
            parent_size = self.disks[level + 1].virtual_size
            inside = max(0, min(n, parent_size - off))
            head = self._read_level(level + 1, off, inside) if inside else b""
            return head + bytes(n - inside)

        return disk._read(offset, length, from_parent)


def _norm_path(path: str) -> str:
    if "\\" in path or (len(path) > 1 and path[1] == ":"):
        return ntpath.normcase(ntpath.normpath(path))
    return posixpath.normpath(path)


def _is_windows_path(path: str) -> bool:
    return "\\" in path or (len(path) > 1 and path[1] == ":")


def _next_to(child_path: str, name: str) -> str:
    """``name`` in the child's folder (Windows or POSIX syntax, as the child's path is written)."""
    if _is_windows_path(child_path):
        return ntpath.join(ntpath.dirname(child_path), name)
    return posixpath.join(posixpath.dirname(child_path), name)


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def parent_candidates(child_path: str, locator: ParentLocator) -> List[str]:
    """Where a differencing disk's parent may be, in the order to try.

    First the locator paths (relative path resolved against the child's folder: it survives
    moves; then the absolute and volume paths).  When none of them leads to the parent (a VM
    moved or copied by hand, a chain made by another tool), the parent's own name: a VHD's
    header holds the parent's Unicode name (``Parent Unicode Name``, VHD specification "Dynamic
    Disk Header"), tried next to the child and, when it is a full path, as written; a VHDX has no
    such field ([MS-VHDX] 2.6.2.6 lists only locator paths), so the file name of each locator path
    is tried next to the child.  Windows itself looks only at the locators (the child then fails
    to open), so these are the places a user who copied the files keeps them.
    """
    out: List[str] = []

    def add(value: str) -> None:
        if value and value not in out:
            out.append(value)

    windows_child = _is_windows_path(child_path)
    for key in ("relative_path", "absolute_win32_path", "volume_path"):
        value = locator.entries.get(key)
        if not value:
            continue
        if key == "relative_path":
            if windows_child:
                value = ntpath.normpath(ntpath.join(ntpath.dirname(child_path), value))
            else:
                value = posixpath.normpath(
                    posixpath.join(posixpath.dirname(child_path), value.replace("\\", "/"))
                )
        add(value)
    name = (locator.parent_name or "").strip()
    if name:
        add(_next_to(child_path, _file_name(name)))
        if _is_windows_path(name) or name.startswith("/"):
            add(name)
    for key in ("relative_path", "absolute_win32_path", "volume_path"):
        value = locator.entries.get(key)
        if value and _file_name(value):
            add(_next_to(child_path, _file_name(value)))
    return out


_candidate_paths = parent_candidates


def _find_parent(
    open_fn: Callable[[str], VirtualDisk],
    child: VirtualDisk,
    child_path: str,
    candidates: Sequence[str],
    *,
    in_chain: Callable[[str], bool],
    chain_text: str,
) -> Tuple[VirtualDisk, str]:
    """Open the first candidate that exists and is the child's parent; the error names every path tried.

    A file that exists but is not the parent (another identity or format) is skipped: a later
    candidate may be the right one; if none is, the first such refusal is raised.
    """
    tried: List[str] = []
    refused: VhdChainError | None = None
    for candidate in candidates:
        if in_chain(candidate):
            raise VhdChainError(
                child_path,
                f"differencing chain loops: parent {candidate} is already in the chain",
                context={"chain": chain_text},
            )
        tried.append(candidate)
        try:
            parent = open_fn(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            _check_linkage(child, child_path, parent, candidate)
        except VhdChainError as exc:
            refused = refused or exc
            continue
        return parent, candidate
    if refused is not None:
        if len(tried) > 1:
            refused.context["tried"] = ", ".join(tried)
        raise refused
    raise VhdChainError(
        child_path,
        "parent disk not found (tried: " + ", ".join(tried or ["no locator path"]) + ")",
        what_to_do="put the parent disk next to the child under the name it had, or reconnect the chain "
        "on the host (Set-VHD -ParentPath, or Edit Disk > Reconnect in Hyper-V Manager)",
    )


def locate_parent(open_fn: Callable[[str], VirtualDisk], child_path: str) -> str:
    """The path of a differencing disk's parent (:func:`parent_candidates`, identity checked).

    ``open_fn`` opens one file (``FileNotFoundError`` for a missing one).  Raises
    :class:`VhdChainError` naming every path tried when none is the parent, and
    :class:`VhdError` when the child cannot be read or is not a differencing disk.
    """
    child = open_fn(child_path)
    try:
        locator = child.layout.parent_locator
        if not child.is_differencing or locator is None:
            raise VhdChainError(child_path, "is not a differencing disk, so it has no parent")
        parent, parent_path = _find_parent(open_fn, child, child_path, parent_candidates(child_path, locator),
                                           in_chain=lambda _p: False, chain_text=child_path)
        parent.close()
        return parent_path
    finally:
        child.close()


def resolve_chain(
    open_fn: Callable[[str], VirtualDisk],
    path: str,
    *,
    max_depth: int = MAX_CHAIN_DEPTH,
    candidates: Callable[[str, ParentLocator], Sequence[str]] | None = None,
) -> DiskChain:
    """Open ``path`` and its parents until a non-differencing disk; return the chain.

    ``open_fn(path)`` opens one file (raising ``OSError``/``FileNotFoundError`` for a missing one,
    so the next candidate is tried).  ``candidates(child_path, locator)`` lists parent paths to
    try (default :func:`parent_candidates`: the locator paths, then the parent's name next to the
    child).  Refuses cycles (same path or same DataWriteGuid/UniqueId seen twice), parent
    identity that does not match the child's linkage, format changes, and chains deeper than
    ``max_depth``; a missing parent is an error naming every path tried.
    """
    pick = candidates or parent_candidates
    disks: List[VirtualDisk] = []
    paths: List[str] = []
    seen_paths: Set[str] = set()
    seen_ids: Set[uuid.UUID] = set()

    def remember(disk: VirtualDisk, disk_path: str) -> None:
        ident = (
            disk.layout.data_write_guid
            if disk.layout.format is DiskFormat.VHDX
            else disk.layout.virtual_disk_id
        )
        if ident is not None and ident != NIL_GUID:
            if ident in seen_ids:
                raise VhdChainError(
                    disk_path,
                    f"differencing chain loops: identity {ident} appears twice",
                    context={"chain": " <- ".join(paths)},
                )
            seen_ids.add(ident)
        seen_paths.add(_norm_path(disk_path))
        disks.append(disk)
        paths.append(disk_path)

    try:
        remember(open_fn(path), path)
        while disks[-1].is_differencing:
            child, child_path = disks[-1], paths[-1]
            if len(disks) > max_depth:
                raise VhdChainError(path, f"differencing chain is deeper than {max_depth} disks")
            locator = child.layout.parent_locator
            if locator is None:  # pragma: no cover - the parsers always set it for differencing disks
                raise VhdChainError(child_path, "differencing disk without parent locator")
            parent, parent_path = _find_parent(open_fn, child, child_path, pick(child_path, locator),
                                               in_chain=lambda p: _norm_path(p) in seen_paths,
                                               chain_text=" <- ".join(paths))
            remember(parent, parent_path)
    except BaseException:
        for disk in disks:
            disk.close()
        raise
    return DiskChain(disks, paths)


def _check_linkage(child: VirtualDisk, child_path: str, parent: VirtualDisk, parent_path: str) -> None:
    locator = child.layout.parent_locator
    assert locator is not None
    if parent.layout.format is not child.layout.format:
        parent.close()
        raise VhdChainError(
            child_path,
            f"parent {parent_path} is a {parent.layout.format.value} file, the child a "
            f"{child.layout.format.value} file",
        )
    if child.layout.format is DiskFormat.VHDX:
        accepted = locator.linkage_guids()
        if not accepted:
            parent.close()
            raise VhdChainError(child_path, "parent locator has no valid parent_linkage GUID")
        if parent.layout.data_write_guid not in accepted:
            parent.close()
            raise VhdChainError(
                child_path,
                f"parent {parent_path} has DataWriteGuid {parent.layout.data_write_guid}, the child expects "
                f"{locator.parent_linkage}: the parent was modified after the child was created",
            )
    elif (
        locator.parent_unique_id not in (None, NIL_GUID)
        and parent.layout.virtual_disk_id != locator.parent_unique_id
    ):
        parent.close()
        raise VhdChainError(
            child_path,
            f"parent {parent_path} has UniqueId {parent.layout.virtual_disk_id}, the child expects "
            f"{locator.parent_unique_id}",
        )
