r"""Real VHD/VHDX files for the simulated VMs.

The Hyper-V world (``hvsim.world``) creates and manipulates every virtual disk
through these functions only, so that the files on disk are real VHD/VHDX
images that ``qemu-img check`` accepts and that the product's reader must parse.

All sizes are bytes.  ``fmt`` is ``"vhd"`` or ``"vhdx"``; ``kind`` is
``"fixed"``, ``"dynamic"`` or ``"differencing"``.  Format internals live in
:mod:`hvsim.vhdx` and :mod:`hvsim.vhd` (see their docstrings for the layouts).

Behaviour worth knowing when you test a reader against these files:

* Every mutating call (``guest_write``, ``guest_trim``, ``merge_into_parent``,
  ``reparent``) is one VHDX write session: ``FileWriteGuid`` and
  ``DataWriteGuid`` change once, both headers are rewritten (sequence N+1, N+2).
  Pass ``new_session=False`` to ``guest_write``/``guest_trim`` to continue the
  previous session (GUIDs kept).  Writing to a parent therefore breaks its
  children's ``parent_linkage`` - exactly what Hyper-V detects.
* Dynamic VHDX trim: whole blocks -> ``PAYLOAD_BLOCK_UNMAPPED``; differencing
  VHDX trim: whole blocks -> ``PAYLOAD_BLOCK_ZERO`` (never falls through to the
  parent); partial blocks are zeroed.  VHD has no unmap: ranges are zeroed.
* Differencing children: VHDX block size defaults to 2 MiB (Hyper-V's
  differencing default), page 83 disk id copied from the parent, locator keys
  ``parent_linkage`` (``{lower-case guid}``), ``relative_path``,
  ``volume_path``, ``absolute_win32_path`` (``\\?\C:\...``).  VHD children
  record ParentUniqueId, ParentTimeStamp, the parent's file name as
  ParentUnicodeName and W2ku (absolute) / W2ru (relative) locators.
* VHD stores no sector sizes: ``disk_info`` reports 512/512 for VHD.
* GUIDs - VHDX ones and the VHD footer UniqueId alike - are stored as Windows GUID
  structs (first three fields little-endian), as in Windows-made files: read that way
  the fixtures' ids are version-4 GUIDs.  ``virtual_disk_id`` is printed from that form.
* Fill content is AES-128-CTR keystream from ``cryptography`` (an install requirement);
  without it shake-128 is used, which gives other (still deterministic) bytes.
* Parents are found from the child's ``relative_path`` (W2ru for VHD) relative
  to the child's folder, falling back to the file name next to the child;
  ``parent=`` overrides the first level.  The linkage is verified on every read.
* ``make_dirty_log`` leaves a VHDX whose header has a non-zero LogGuid and whose
  log holds one valid entry; ``corrupt_disk`` produces invalid files.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Union

from hvsim import vhd as _vhd
from hvsim import vhdx as _vhdx

try:
    from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
    from cryptography.hazmat.primitives.ciphers import algorithms as _algorithms
    from cryptography.hazmat.primitives.ciphers import modes as _modes
except ImportError:  # pragma: no cover - cryptography is an install requirement
    _Cipher = None  # type: ignore[assignment,misc]

FORMATS = ("vhd", "vhdx")
KINDS = ("fixed", "dynamic", "differencing")
FILL_UNIT_FIXED_VHD = 2 * 1024 * 1024  # fill granularity where the format has no blocks
COPY_CHUNK = 4 * 1024 * 1024  # bytes moved per read/write when copying or zeroing
MAX_CHAIN_DEPTH = 64  # guards against a locator cycle
CORRUPTIONS = ("header_checksum", "both_headers", "region_tables", "truncate", "footer_checksum",
               "dynamic_header_checksum", "bat_beyond_eof", "bat_overlap")

Image = Union[_vhd.Vhd, _vhdx.Vhdx]


@dataclass
class DiskInfo:
    """What ``Msvm_VirtualHardDiskSettingData`` / ``Msvm_VirtualHardDiskState`` report for a file."""

    path: Path
    fmt: str  # "vhd" | "vhdx"
    kind: str  # "fixed" | "dynamic" | "differencing"
    virtual_size: int  # MaxInternalSize
    block_size: int  # 0 for fixed VHD
    logical_sector_size: int
    physical_sector_size: int
    file_size: int
    virtual_disk_id: str  # GUID string, upper case, no braces
    parent_path: str | None = None  # host path of the parent as recorded in the child's locator
    data_write_guid: str | None = None  # VHDX only
    log_pending: bool = False  # VHDX with a non-zero LogGuid: the log must be replayed before use


@dataclass
class ChangeTracker:
    """Virtual byte ranges written since a point (resilient change tracking state of one disk)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), merged, sorted

    def add(self, offset: int, length: int) -> None:
        """Record a changed range, keeping ``ranges`` sorted and merged."""
        if length <= 0:
            return
        new: list[tuple[int, int]] = []
        start, end = offset, offset + length
        placed = False
        for o, n in self.ranges:
            if o + n < start:
                new.append((o, n))
            elif o > end:
                if not placed:
                    new.append((start, end - start))
                    placed = True
                new.append((o, n))
            else:
                start, end = min(start, o), max(end, o + n)
        if not placed:
            new.append((start, end - start))
        self.ranges = new

    def clear(self) -> None:
        """Start a new tracking period (a new reference point)."""
        self.ranges = []


# ---------------------------------------------------------------------------- opening


def _fmt_of(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == _vhdx.SIGNATURE:
        return "vhdx"
    return "vhd"


def _open(path: Path, writable: bool = False) -> Image:
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such disk file")
    if _fmt_of(path) == "vhdx":
        return _vhdx.Vhdx.open(Path(path), writable)
    return _vhd.Vhd.open(Path(path), writable)


def _info(d: Image) -> DiskInfo:
    size = os.fstat(d.f.fileno()).st_size
    if isinstance(d, _vhdx.Vhdx):
        parent = d.locator_value("absolute_win32_path")
        return DiskInfo(d.path, "vhdx", d.kind, d.virtual_size, d.block_size, d.lss, d.pss, size,
                        _vhdx.guid_str(d.disk_id),
                        _vhdx.host_path_from_absolute(parent) if parent else None,
                        _vhdx.guid_str(d.header.data_write_guid),
                        d.header.log_guid != _vhdx.ZERO_GUID)
    parent_path = d.locator_path(_vhd.PLATFORM_W2KU) if d.differencing else None
    return DiskInfo(d.path, "vhd", d.kind, d.virtual_size, d.block_size, _vhd.SECTOR, _vhd.SECTOR, size,
                    _vhdx.guid_str(d.footer.unique_id), parent_path or None, None)


def _locate_parent(d: Image) -> Path:
    """Local path of a child's parent from its relative locator (Hyper-V keeps them side by side)."""
    if isinstance(d, _vhdx.Vhdx):
        rel = d.locator_value("relative_path")
        absolute = d.locator_value("absolute_win32_path") or ""
    else:
        rel = d.locator_path(_vhd.PLATFORM_W2RU)
        absolute = d.locator_path(_vhd.PLATFORM_W2KU) or ""
    here = d.path.parent
    candidates = []
    if rel:
        candidates.append(here / rel.replace("\\", "/"))
    name = absolute.replace("\\", "/").rsplit("/", 1)[-1]
    if name:
        candidates.append(here / name)
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"{d.path}: parent not found (tried {', '.join(str(c) for c in candidates)}); "
                     "pass parent= explicitly")


def _check_linkage(child: Image, parent: Image) -> None:
    if isinstance(child, _vhdx.Vhdx):
        if not isinstance(parent, _vhdx.Vhdx):
            raise ValueError(f"{child.path}: a VHDX child needs a VHDX parent, {parent.path} is VHD")
        want = {"{" + str(parent.header.data_write_guid).lower() + "}"}
        got = {(v or "").lower() for v in (child.locator_value("parent_linkage"),
                                           child.locator_value("parent_linkage2")) if v}
        if not want & got:
            raise ValueError(f"{child.path}: parent_linkage {sorted(got)} does not match the DataWriteGuid "
                             f"{sorted(want)} of {parent.path} (parent modified since the child was made)")
        if parent.lss != child.lss:
            raise ValueError(f"{child.path}: sector size differs from parent {parent.path}")
    else:
        if not isinstance(parent, _vhd.Vhd):
            raise ValueError(f"{child.path}: a VHD child needs a VHD parent, {parent.path} is VHDX")
        assert child.dyn is not None
        if child.dyn.parent_unique_id != parent.footer.unique_id:
            raise ValueError(f"{child.path}: ParentUniqueId does not match the UniqueId of {parent.path}")
    if parent.virtual_size != child.virtual_size:
        raise ValueError(f"{child.path}: virtual size differs from parent {parent.path}")


class _Chain:
    """A disk and its opened ancestors; ``read`` resolves fall-through reads down the chain."""

    def __init__(self, path: Path, parent: Path | None = None) -> None:
        self.images: list[Image] = []
        try:
            d = _open(path)
            self.images.append(d)
            override = parent
            while d.differencing:
                if len(self.images) > MAX_CHAIN_DEPTH:
                    raise ValueError(f"{path}: parent chain deeper than {MAX_CHAIN_DEPTH} (cycle?)")
                ppath = override if override is not None else _locate_parent(d)
                override = None
                p = _open(ppath)
                self.images.append(p)
                _check_linkage(d, p)
                d = p
        except BaseException:
            self.close()
            raise

    def reader(self, level: int) -> Callable[[int, int], bytes] | None:
        if level >= len(self.images):
            return None
        img = self.images[level]
        below = self.reader(level + 1)
        return lambda off, n: img.read(off, n, below)

    def read(self, offset: int, length: int) -> bytes:
        r = self.reader(0)
        assert r is not None
        return r(offset, length)

    def close(self) -> None:
        for img in self.images:
            img.close()

    def __enter__(self) -> _Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- content


def block_content(seed: int, index: int, length: int) -> bytes:
    """Deterministic pseudo-random bytes of fill unit ``index``.

    AES-128-CTR keystream (key from the seed, counter block starting at ``index << 64``):
    incompressible, several GB/s, from ``cryptography`` which the package already
    requires; shake-128 (~300 MB/s) where it is missing.  The bytes depend only on
    (seed, index, length).
    """
    key = hashlib.sha256(f"hvsim-disk:{seed}".encode()).digest()[:16]
    if _Cipher is not None:
        enc = _Cipher(_algorithms.AES(key), _modes.CTR((index << 64).to_bytes(16, "big"))).encryptor()
        return enc.update(bytes(length)) + enc.finalize()
    return hashlib.shake_128(key + index.to_bytes(8, "little")).digest(length)


def filled_units(count: int, fill_ratio: float, seed: int) -> set[int]:
    """Which of ``count`` fill units get data for ``fill_ratio`` (deterministic per seed)."""
    if not 0.0 <= fill_ratio <= 1.0:
        raise ValueError(f"fill_ratio must be within 0..1, got {fill_ratio}")
    k = round(fill_ratio * count)
    return set(random.Random(seed).sample(range(count), k))


def expected_content(virtual_size: int, unit: int, fill_ratio: float, seed: int, *, offset: int = 0,
                     length: int = -1) -> bytes:
    """What ``create_disk`` put at [offset, offset+length) (for tests and benchmarks; -1 = to the end)."""
    if length < 0:
        length = virtual_size - offset
    count = -(-virtual_size // unit)
    chosen = filled_units(count, fill_ratio, seed)
    out = bytearray()
    pos, end = offset, min(offset + length, virtual_size)
    while pos < end:
        i = pos // unit
        stop = min(end, (i + 1) * unit)
        if i in chosen:
            full = block_content(seed, i, min(unit, virtual_size - i * unit))
            out += full[pos - i * unit:stop - i * unit]
        else:
            out += bytes(stop - pos)
        pos = stop
    return bytes(out)


def fill_unit(fmt: str, kind: str, block_size: int) -> int:
    """Granularity of ``fill_ratio`` for a disk (its block size; 2 MiB for fixed VHD)."""
    return block_size or FILL_UNIT_FIXED_VHD


# ---------------------------------------------------------------------------- public API


def create_disk(path: Path, fmt: str, kind: str, virtual_size: int, *, block_size: int = 0,
                logical_sector_size: int = 512, physical_sector_size: int = 4096,
                fill_ratio: float = 0.0, seed: int = 0) -> DiskInfo:
    """Create a fixed or dynamic disk; ``fill_ratio`` of its blocks get deterministic pseudo-random data.

    ``block_size=0`` picks Hyper-V's default (dynamic VHDX 32 MiB, fixed VHDX 2 MiB, VHD 2 MiB;
    fixed VHD has none).  Which blocks are filled and with what is given by
    :func:`expected_content` with the unit :func:`fill_unit` returns.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown disk format {fmt!r}; use 'vhd' or 'vhdx'")
    if kind not in ("fixed", "dynamic"):
        raise ValueError(f"create_disk makes fixed or dynamic disks, not {kind!r} (use create_differencing)")
    if fmt == "vhdx":
        bs = block_size or (_vhdx.DEFAULT_FIXED_BLOCK_SIZE if kind == "fixed" else _vhdx.DEFAULT_BLOCK_SIZE)
        units = -(-virtual_size // bs) if virtual_size > 0 else 0
        chosen = filled_units(units, fill_ratio, seed)

        def fill_block(i: int) -> bytes | None:
            if i not in chosen:
                return None
            return block_content(seed, i, min(bs, virtual_size - i * bs))

        _vhdx.create(path, kind, virtual_size, bs, lss=logical_sector_size, pss=physical_sector_size,
                     fill=fill_block if chosen else None)
    else:
        if logical_sector_size != 512:
            raise ValueError("VHD supports only 512-byte logical sectors; use vhdx for 4096")
        bs = 0 if kind == "fixed" else (block_size or _vhd.DEFAULT_BLOCK_SIZE)
        unit = fill_unit(fmt, kind, bs)
        units = -(-virtual_size // unit) if virtual_size > 0 else 0
        chosen = filled_units(units, fill_ratio, seed)

        def fill_range(off: int, length: int) -> bytes | None:
            i = off // unit
            return block_content(seed, i, length) if i in chosen else None

        _vhd.create(path, kind, virtual_size, bs or _vhd.DEFAULT_BLOCK_SIZE,
                    fill=fill_range if chosen else None)
    return disk_info(path)


def create_differencing(path: Path, parent: Path, parent_host_path: str, *, block_size: int = 0,
                        child_host_path: str | None = None) -> DiskInfo:
    r"""Create a differencing child (``.avhdx``/``.avhd``) of ``parent`` recording ``parent_host_path``.

    The child's format follows the parent's.  ``child_host_path`` (the child's own
    Windows path) makes ``relative_path`` exact; without it the parent is assumed
    to sit in the child's folder (``.\parent.vhdx``), which is where Hyper-V puts
    checkpoint disks.
    """
    path = Path(path)
    with _open(Path(parent)) as p:
        if isinstance(p, _vhdx.Vhdx):
            entries = _vhdx.make_locator_entries(p.header.data_write_guid, child_host_path, parent_host_path)
            _vhdx.create(path, "differencing", p.virtual_size, block_size or _vhdx.DEFAULT_DIFF_BLOCK_SIZE,
                         lss=p.lss, pss=p.pss, disk_id=p.disk_id, locator=_vhdx.parent_locator_bytes(entries))
        else:
            ident = (p.footer.unique_id, _vhd.vhd_timestamp(os.fstat(p.f.fileno()).st_mtime),
                     parent_host_path, _vhd.relative_path(child_host_path, parent_host_path))
            _vhd.create(path, "differencing", p.virtual_size,
                        block_size or p.block_size or _vhd.DEFAULT_BLOCK_SIZE, parent=ident)
    return disk_info(path)


def disk_info(path: Path) -> DiskInfo:
    """Read a disk's headers (raises ValueError for a file that is not a valid VHD/VHDX)."""
    with _open(Path(path)) as d:
        return _info(d)


def _aligned(path: Path, offset: int, data: bytes, parent: Path | None) -> tuple[int, bytes, int]:
    """Widen a write to whole logical sectors, reading the edges through the chain."""
    with _open(path) as d:
        lss = d.lss if isinstance(d, _vhdx.Vhdx) else _vhd.SECTOR
        vsize = d.virtual_size
    if offset < 0 or offset + len(data) > vsize:
        raise ValueError(f"{path}: range {offset}+{len(data)} outside the {vsize}-byte disk")
    start = offset // lss * lss
    end = -(-(offset + len(data)) // lss) * lss
    if start == offset and end == offset + len(data):
        return offset, data, lss
    head = read_virtual(path, start, offset - start, parent) if offset > start else b""
    tail_from = offset + len(data)
    tail = read_virtual(path, tail_from, end - tail_from, parent) if end > tail_from else b""
    return start, head + data + tail, lss


def guest_write(path: Path, offset: int, data: bytes, *, parent: Path | None = None,
                tracker: ChangeTracker | None = None, new_session: bool = True) -> None:
    """Write as a guest would: allocate blocks / sector bitmaps as needed, grow the file.

    Unaligned writes are widened to whole sectors (edges read through the chain,
    ``parent`` overriding the first level).  ``tracker`` records the range.
    """
    path = Path(path)
    if not data:
        return
    start, buf = offset, data
    with _open(path) as d:
        lss = d.lss if isinstance(d, _vhdx.Vhdx) else _vhd.SECTOR
    if offset % lss or len(data) % lss:
        start, buf, _lss = _aligned(path, offset, data, parent)
    with _open(path, writable=True) as d:
        if start < 0 or start + len(buf) > d.virtual_size:
            raise ValueError(f"{path}: range {offset}+{len(data)} outside the {d.virtual_size}-byte disk")
        if isinstance(d, _vhdx.Vhdx):
            d.session_open = not new_session
            d.begin_session()
        d.write(start, buf)
    if tracker is not None:
        tracker.add(offset, len(data))


def guest_trim(path: Path, offset: int, length: int, *, parent: Path | None = None,
               tracker: ChangeTracker | None = None, new_session: bool = True) -> None:
    """Unmap a range as a guest TRIM would (whole blocks become unmapped, partial ones zeroed)."""
    path = Path(path)
    if length <= 0:
        return
    with _open(path) as d:
        lss = d.lss if isinstance(d, _vhdx.Vhdx) else _vhd.SECTOR
        vsize = d.virtual_size
    if offset < 0 or offset + length > vsize:
        raise ValueError(f"{path}: trim {offset}+{length} outside the {vsize}-byte disk")
    # Guests trim whole sectors; the unaligned edges are zeroed like a write.
    start = -(-offset // lss) * lss
    end = (offset + length) // lss * lss
    if start > offset:
        guest_write(path, offset, bytes(min(start, offset + length) - offset), parent=parent,
                    new_session=new_session)
        new_session = False
    if end >= start and end < offset + length:
        guest_write(path, max(end, offset), bytes(offset + length - max(end, offset)), parent=parent,
                    new_session=new_session)
        new_session = False
    if end > start:
        with _open(path, writable=True) as d:
            if isinstance(d, _vhdx.Vhdx):
                d.session_open = not new_session
                d.begin_session()
            d.trim(start, end - start)
    if tracker is not None:
        tracker.add(offset, length)


def read_virtual(path: Path, offset: int, length: int, parent: Path | None = None) -> bytes:
    """Read guest-visible bytes (through the parent chain for differencing disks).

    ``parent`` overrides where the first parent is; deeper ancestors are found
    from the locators.  Reads past the end of the disk are clipped.
    """
    with _Chain(Path(path), Path(parent) if parent is not None else None) as chain:
        return chain.read(offset, length)


def merge_into_parent(child: Path, parent: Path) -> None:
    r"""Write every block the child holds into the parent, as Hyper-V merges a checkpoint.

    Sectors the child holds are copied; ranges the child defines as zero (trimmed
    blocks) are trimmed in the parent.  The parent gets one write session (new
    DataWriteGuid), so other children of it no longer link; the caller deletes
    the child and :func:`reparent`\ s any grandchild.
    """
    child, parent = Path(child), Path(parent)
    with _open(child) as c, _open(parent, writable=True) as p:
        if not c.differencing:
            raise ValueError(f"{child}: only a differencing disk can be merged into its parent")
        _check_linkage(c, p)
        if isinstance(p, _vhdx.Vhdx):
            p.begin_session()
        for off, n, what, foff in list(c.runs(0, c.virtual_size)):
            if what == "data":
                for pos in range(0, n, COPY_CHUNK):
                    k = min(COPY_CHUNK, n - pos)
                    p.write(off + pos, _vhdx._pread(c.f, foff + pos, k))
            elif what == "zero":
                p.trim(off, n)


def reparent(child: Path, parent: Path, parent_host_path: str, *, child_host_path: str | None = None) -> None:
    """Point a differencing disk at a new parent (after its old parent was merged away).

    Hyper-V does this for the live ``.avhdx`` when a middle checkpoint is deleted.
    """
    child, parent = Path(child), Path(parent)
    with _open(parent) as p, _open(child, writable=True) as c:
        if not c.differencing:
            raise ValueError(f"{child}: not a differencing disk")
        if isinstance(c, _vhdx.Vhdx):
            if not isinstance(p, _vhdx.Vhdx):
                raise ValueError(f"{parent}: a VHDX child needs a VHDX parent")
            c.begin_session(data_changes=False)
            c.set_locator(_vhdx.make_locator_entries(p.header.data_write_guid, child_host_path,
                                                     parent_host_path))
        else:
            if not isinstance(p, _vhd.Vhd):
                raise ValueError(f"{parent}: a VHD child needs a VHD parent")
            c.set_parent((p.footer.unique_id, _vhd.vhd_timestamp(os.fstat(p.f.fileno()).st_mtime),
                          parent_host_path, _vhd.relative_path(child_host_path, parent_host_path)))
        _check_linkage(c, p)


def make_dirty_log(path: Path, offset: int | None = None, seed: int = 0) -> tuple[int, bytes]:
    """Leave a VHDX as after a host crash: non-zero LogGuid and one valid, unreplayed log entry.

    As MS-VHDX prescribes, the log carries metadata only (never payload).  Dynamic or
    differencing disk: a new payload block (for the block at ``offset``, default the
    first unallocated one) is written at the end of the file, but the BAT sector that
    maps it sits only in the log - without replay the block still reads as before.
    Fixed disk (or no free block): the entry rewrites the BAT sector of the block at
    ``offset`` (default 0) unchanged, so replay changes nothing the guest sees.
    Returns ``(virtual offset, bytes the guest sees there after replay)``; the bytes
    are empty when replay changes nothing.  ``qemu-img check -r all`` replays the log;
    qemu refuses read-only opens; hvsim refuses to write such a file.
    """
    path = Path(path)
    with _vhdx.Vhdx.open(path, writable=True) as d:
        if d.header.log_guid != _vhdx.ZERO_GUID:
            raise ValueError(f"{path}: log already dirty")
        bs = d.block_size
        free = [b for b in range(d.data_blocks)
                if d.block_entry(b) & _vhdx.BAT_STATE_MASK not in (_vhdx.PAYLOAD_BLOCK_FULLY_PRESENT,
                                                                  _vhdx.PAYLOAD_BLOCK_PARTIALLY_PRESENT)]
        block = offset // bs if offset is not None else (free[0] if free and d.kind != "fixed" else 0)
        if d.kind != "fixed" and block in free:
            length = min(bs, d.virtual_size - block * bs)
            content = block_content(seed ^ 0x5EED, block, length)
            boff = d._allocate(bs)
            _vhdx._pwrite(d.f, boff, content)
            idx = d.payload_index(block)
            sector_at = (d.bat_offset + idx * 8) // _vhdx.LOG_SECTOR * _vhdx.LOG_SECTOR
            sector = bytearray(_vhdx._pread(d.f, sector_at, _vhdx.LOG_SECTOR))
            struct.pack_into("<Q", sector, d.bat_offset + idx * 8 - sector_at,
                             boff | _vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
            result = (block * bs, content)
        else:
            entry_at = d.bat_offset + d.payload_index(block) * 8
            sector_at = entry_at // _vhdx.LOG_SECTOR * _vhdx.LOG_SECTOR
            sector = bytearray(_vhdx._pread(d.f, sector_at, _vhdx.LOG_SECTOR))
            result = (block * bs, b"")
        size = os.fstat(d.f.fileno()).st_size
        log_guid = _vhdx.write_log_entry(d, sector_at, bytes(sector), size, sequence_number=0x1000 + seed)
        d.begin_session(log_guid=log_guid)
        return result


def corrupt_disk(path: Path, how: str) -> None:
    """Damage a disk for a reader's negative tests.

    ``how``: ``header_checksum`` (current VHDX header only - a reader must fall back
    to the other one), ``both_headers``, ``region_tables`` (VHDX), ``truncate`` (cut
    off the last MiB / the VHD footer), ``footer_checksum`` and
    ``dynamic_header_checksum`` (VHD), ``bat_beyond_eof`` (first BAT entry points
    past the end of the file), ``bat_overlap`` (VHDX: first block mapped onto the
    metadata region).
    """
    path = Path(path)
    if how not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {how!r}; choose one of {', '.join(CORRUPTIONS)}")
    fmt = _fmt_of(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(size - (1024 * 1024 if fmt == "vhdx" else _vhd.FOOTER_SIZE + 1024))
            return
        if fmt == "vhdx":
            if how in ("header_checksum", "both_headers"):
                d = _vhdx.Vhdx.open(path)
                cur = d.current
                d.close()
                every = list(_vhdx.HEADER_OFFSETS)
                for t in [every[cur]] if how == "header_checksum" else every:
                    _flip(f, t + 100)
            elif how == "region_tables":
                for t in _vhdx.REGION_TABLE_OFFSETS:
                    _flip(f, t + 20)
            elif how == "bat_beyond_eof":
                f.seek(_vhdx.BAT_OFFSET)
                f.write(struct.pack("<Q", _vhdx.round_up(size + 1, _vhdx.ALIGN) |
                                    _vhdx.PAYLOAD_BLOCK_FULLY_PRESENT))
            elif how == "bat_overlap":
                f.seek(_vhdx.BAT_OFFSET)
                f.write(struct.pack("<Q", _vhdx.METADATA_OFFSET | _vhdx.PAYLOAD_BLOCK_FULLY_PRESENT))
            else:
                raise ValueError(f"corruption {how!r} applies to VHD files only")
        elif how == "footer_checksum":
            _flip(f, size - _vhd.FOOTER_SIZE + 72)  # inside UniqueId
        elif how == "dynamic_header_checksum":
            _flip(f, _vhd.DYN_HEADER_OFFSET + 36)  # the checksum field itself
        elif how == "bat_beyond_eof":
            f.seek(_vhd.BAT_OFFSET)
            f.write(struct.pack(">I", size // _vhd.SECTOR + 8))
        else:
            raise ValueError(f"corruption {how!r} applies to VHDX files only")


def _flip(f: BinaryIO, at: int) -> None:
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 0x5A]))

