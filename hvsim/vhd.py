r"""Legacy VHD writer and reader for the simulator (big-endian, Hyper-V flavour).

Layout as Windows writes it (compare tests/fixtures/shared/vhd/dissect-dynamic.vhd)::

    0       footer copy (dynamic/differencing only)
    512     dynamic header (1024 bytes)
    1536    BAT (u32 sector numbers, 0xFFFFFFFF = unallocated, 0xFF-padded to a 4 KiB boundary)
    ...     differencing: parent locator data (W2ku absolute, W2ru relative; UTF-16LE)
    ...     blocks: 512-byte sector bitmap + data, placed so that the data is 4 KiB aligned
    end     footer (512 bytes)

Creator ``win `` 10.0 on ``Wi2k`` so that qemu uses ``CurrentSize`` as Hyper-V does.
Differencing disks: ParentUnicodeName holds the parent's file name (UTF-16BE, as the
spec and VirtualBox have it); locator "platform data space" is in bytes (VirtualBox
reads it so; the spec says sectors - readers should use the data length).
Dynamic disks set every bitmap bit of an allocated block (as Windows does);
differencing disks set the bits of the sectors they hold (bit 7 of byte 0 is
sector 0, i.e. most significant bit first).
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import BinaryIO, Callable

SECTOR = 512
FOOTER_SIZE = 512
DYN_HEADER_OFFSET = 512
DYN_HEADER_SIZE = 1024
BAT_OFFSET = DYN_HEADER_OFFSET + DYN_HEADER_SIZE
DATA_ALIGN = 4096  # Windows keeps block data 4 KiB aligned (bitmap in the sector before)
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
UNALLOCATED = 0xFFFFFFFF
VHD_EPOCH = 946684800  # 2000-01-01 00:00:00 UTC
MAX_SIZE = 2040 * 1024**3

TYPE_FIXED = 2
TYPE_DYNAMIC = 3
TYPE_DIFFERENCING = 4
KIND_OF_TYPE = {TYPE_FIXED: "fixed", TYPE_DYNAMIC: "dynamic", TYPE_DIFFERENCING: "differencing"}
TYPE_OF_KIND = {v: k for k, v in KIND_OF_TYPE.items()}

CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000  # 10.0, as in the Windows 10 fixtures
CREATOR_OS = b"Wi2k"
PLATFORM_W2RU = b"W2ru"  # relative Windows path, UTF-16LE
PLATFORM_W2KU = b"W2ku"  # absolute Windows path, UTF-16LE
LOCATOR_SLOT = 512  # bytes reserved per locator (one sector; paths up to 256 UTF-16 units)

NO_PARENT = uuid.UUID(int=0)

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427s")
_DYN = struct.Struct(">8sQQIIII16sII512s192s256s")
_LOCATOR = struct.Struct(">4sIIIQ")


def checksum(buf: bytes) -> int:
    """One's complement of the byte sum (checksum field must be zero in ``buf``)."""
    return ~sum(buf) & 0xFFFFFFFF


def chs(size: int) -> tuple[int, int, int]:
    """CHS geometry from the VHD specification's algorithm."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return min(cth // heads, 65535), heads, spt


@dataclass
class Footer:
    """The 512-byte hard disk footer."""

    disk_type: int
    current_size: int
    unique_id: uuid.UUID
    data_offset: int
    timestamp: int
    original_size: int = 0
    saved_state: int = 0

    def pack(self) -> bytes:
        cyl, heads, spt = chs(self.current_size)
        fields = [b"conectix", 2, 0x00010000, self.data_offset, self.timestamp, CREATOR_APP, CREATOR_VERSION,
                  CREATOR_OS, self.original_size or self.current_size, self.current_size, cyl, heads, spt,
                  self.disk_type, 0, self.unique_id.bytes_le, self.saved_state, bytes(427)]
        raw = _FOOTER.pack(*fields)
        fields[14] = checksum(raw)
        return _FOOTER.pack(*fields)

    @classmethod
    def unpack(cls, buf: bytes) -> Footer | None:
        if len(buf) < FOOTER_SIZE or buf[:8] != b"conectix":
            return None
        f = _FOOTER.unpack_from(buf, 0)
        raw = bytearray(buf[:FOOTER_SIZE])
        raw[64:68] = bytes(4)
        if checksum(bytes(raw)) != f[14]:
            return None
        return cls(f[13], f[9], uuid.UUID(bytes_le=f[15]), f[3], f[4], f[8], f[16])


@dataclass
class DynamicHeader:
    """The 1024-byte dynamic disk header."""

    table_offset: int
    max_table_entries: int
    block_size: int
    parent_unique_id: uuid.UUID = NO_PARENT
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: list[tuple[bytes, int, int, int]] = field(default_factory=list)  # code, space, length, offset

    def pack(self) -> bytes:
        locs = b"".join(_LOCATOR.pack(code, space, length, 0, off)
                        for code, space, length, off in self.locators)
        locs = locs.ljust(192, b"\0")
        name = self.parent_name.encode("utf-16-be")[:512].ljust(512, b"\0")
        fields = [b"cxsparse", 0xFFFFFFFFFFFFFFFF, self.table_offset, 0x00010000, self.max_table_entries,
                  self.block_size, 0, self.parent_unique_id.bytes_le, self.parent_timestamp, 0, name, locs,
                  bytes(256)]
        raw = _DYN.pack(*fields)
        fields[6] = checksum(raw)
        return _DYN.pack(*fields)

    @classmethod
    def unpack(cls, buf: bytes) -> DynamicHeader | None:
        if len(buf) < DYN_HEADER_SIZE or buf[:8] != b"cxsparse":
            return None
        f = _DYN.unpack_from(buf, 0)
        raw = bytearray(buf[:DYN_HEADER_SIZE])
        raw[36:40] = bytes(4)
        if checksum(bytes(raw)) != f[6]:
            return None
        locators = []
        for i in range(8):
            code, space, length, _r, off = _LOCATOR.unpack_from(f[11], i * _LOCATOR.size)
            if code != bytes(4):
                locators.append((code, space, length, off))
        name = f[10].decode("utf-16-be", errors="replace").split("\0", 1)[0]
        return cls(f[2], f[4], f[5], uuid.UUID(bytes_le=f[7]), f[8], name, locators)


def vhd_timestamp(unix: float | None = None) -> int:
    """Seconds since 2000-01-01 UTC."""
    return max(0, int(time.time() if unix is None else unix) - VHD_EPOCH)


def bitmap_size(block_size: int) -> int:
    """Bytes of the per-block sector bitmap, padded to a sector."""
    return -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR


# ---------------------------------------------------------------------------- creation


def create(path: Path, kind: str, virtual_size: int, block_size: int, *,
           fill: Callable[[int, int], bytes | None] | None = None,
           parent: tuple[uuid.UUID, int, str, str] | None = None) -> None:
    """Write a new VHD.

    ``fill(offset, length)`` gives initial content for a chunk (None = zeros/unallocated);
    ``parent`` = (unique id, timestamp, absolute host path, relative path) for differencing.
    """
    if kind not in TYPE_OF_KIND:
        raise ValueError(f"unknown VHD kind {kind!r}")
    if virtual_size <= 0 or virtual_size % SECTOR or virtual_size > MAX_SIZE:
        raise ValueError(f"VHD virtual size {virtual_size} must be a positive multiple of 512 up to 2040 GiB")
    if kind != "fixed" and (block_size & (block_size - 1) or not 4096 <= block_size <= 256 * 1024 * 1024):
        raise ValueError(f"VHD block size must be a power of two between 4 KiB and 256 MiB, got {block_size}")
    if kind == "differencing" and parent is None:
        raise ValueError("a differencing VHD needs its parent")
    uid = uuid.uuid4()
    ts = vhd_timestamp()
    with open(path, "wb") as f:
        if kind == "fixed":
            f.truncate(virtual_size)
            if fill is not None:
                step = DEFAULT_BLOCK_SIZE
                for off in range(0, virtual_size, step):
                    data = fill(off, min(step, virtual_size - off))
                    if data:
                        f.seek(off)
                        f.write(data)
            f.seek(virtual_size)
            f.write(Footer(TYPE_FIXED, virtual_size, uid, 0xFFFFFFFFFFFFFFFF, ts).pack())
            return
        entries = -(-virtual_size // block_size)
        # Windows pads the BAT with 0xFF up to a 4 KiB boundary and starts the first
        # block's data one 4 KiB page later (bitmap in the sector before it).
        bat_bytes = -(-(BAT_OFFSET + entries * 4) // DATA_ALIGN) * DATA_ALIGN - BAT_OFFSET
        pos = BAT_OFFSET + bat_bytes
        dyn = DynamicHeader(BAT_OFFSET, entries, block_size)
        blobs: list[tuple[int, bytes]] = []
        if parent is not None:
            puid, pts, abs_path, rel_path = parent
            dyn.parent_unique_id, dyn.parent_timestamp = puid, pts
            dyn.parent_name = PureWindowsPath(abs_path).name  # the spec's "parent filename"
            for code, text in ((PLATFORM_W2KU, abs_path), (PLATFORM_W2RU, rel_path)):
                data = text.encode("utf-16-le")
                space = -(-len(data) // SECTOR) * SECTOR or SECTOR
                dyn.locators.append((code, space, len(data), pos))
                blobs.append((pos, data))
                pos += space
        footer = Footer(TYPE_OF_KIND[kind], virtual_size, uid, DYN_HEADER_OFFSET, ts)
        f.write(footer.pack())
        f.write(dyn.pack())
        f.write(b"\xff" * bat_bytes)
        for off, data in blobs:
            f.seek(off)
            f.write(data)
        pos = -(-(pos + SECTOR) // DATA_ALIGN) * DATA_ALIGN - SECTOR
        f.truncate(pos)
        f.seek(pos)
        f.write(footer.pack())
    if fill is not None and kind == "dynamic":
        with Vhd.open(path, writable=True) as d:
            for i in range(entries):
                data = fill(i * block_size, min(block_size, virtual_size - i * block_size))
                if data:
                    d.write(i * block_size, data)


# ---------------------------------------------------------------------------- open / read / write


@dataclass
class Vhd:
    """An opened VHD file (validated on open)."""

    path: Path
    f: BinaryIO
    footer: Footer
    dyn: DynamicHeader | None

    @property
    def kind(self) -> str:
        return KIND_OF_TYPE[self.footer.disk_type]

    @property
    def differencing(self) -> bool:
        return self.footer.disk_type == TYPE_DIFFERENCING

    @property
    def virtual_size(self) -> int:
        return self.footer.current_size

    @property
    def block_size(self) -> int:
        return self.dyn.block_size if self.dyn else 0

    @classmethod
    def open(cls, path: Path, writable: bool = False) -> Vhd:
        """Open and validate; ValueError names what is wrong."""
        f = open(path, "r+b" if writable else "rb")  # noqa: SIM115 - owned by the returned object
        try:
            return cls._parse(path, f)
        except BaseException:
            f.close()
            raise

    @classmethod
    def _parse(cls, path: Path, f: BinaryIO) -> Vhd:
        size = os.fstat(f.fileno()).st_size
        if size < FOOTER_SIZE or size % SECTOR:
            raise ValueError(f"{path}: not a VHD (size {size} is not a multiple of 512)")
        raw = _pread(f, size - FOOTER_SIZE, FOOTER_SIZE)
        footer = Footer.unpack(raw)
        if footer is None:
            kind = "bad checksum" if raw[:8] == b"conectix" else "no 'conectix' footer at the end; truncated?"
            raise ValueError(f"{path}: invalid VHD footer ({kind})")
        if footer.disk_type not in KIND_OF_TYPE:
            raise ValueError(f"{path}: unsupported VHD disk type {footer.disk_type}")
        if footer.disk_type == TYPE_FIXED:
            if footer.current_size != size - FOOTER_SIZE:
                raise ValueError(f"{path}: fixed VHD size {footer.current_size} does not match the file")
            return cls(path, f, footer, None)
        if _pread(f, 0, FOOTER_SIZE) != raw:
            raise ValueError(f"{path}: footer copy at offset 0 differs from the footer at the end")
        dyn = DynamicHeader.unpack(_pread(f, footer.data_offset, DYN_HEADER_SIZE))
        if dyn is None:
            raise ValueError(f"{path}: invalid dynamic disk header (signature or checksum)")
        if dyn.block_size & (dyn.block_size - 1) or dyn.block_size < SECTOR:
            raise ValueError(f"{path}: invalid block size {dyn.block_size}")
        if dyn.max_table_entries * dyn.block_size < footer.current_size:
            raise ValueError(f"{path}: BAT too small for the disk size")
        d = cls(path, f, footer, dyn)
        limit = size - FOOTER_SIZE
        span = bitmap_size(dyn.block_size) + dyn.block_size
        for i, e in enumerate(d.bat()):
            if e != UNALLOCATED and (e * SECTOR < BAT_OFFSET or e * SECTOR + span > limit):
                raise ValueError(f"{path}: BAT entry {i} points outside the file; truncated?")
        if d.differencing:
            for code, _space, length, off in dyn.locators:
                if off + length > limit:
                    raise ValueError(f"{path}: parent locator {code!r} outside the file")
        return d

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Vhd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bat(self) -> list[int]:
        assert self.dyn is not None
        n = self.dyn.max_table_entries
        return list(struct.unpack(f">{n}I", _pread(self.f, self.dyn.table_offset, n * 4)))

    def _entry(self, block: int) -> int:
        assert self.dyn is not None
        return int(struct.unpack(">I", _pread(self.f, self.dyn.table_offset + block * 4, 4))[0])

    def locator_path(self, code: bytes) -> str | None:
        """Decoded parent locator of a platform code (W2ku / W2ru)."""
        if self.dyn is None:
            return None
        for c, _space, length, off in self.dyn.locators:
            if c == code:
                return _pread(self.f, off, length).decode("utf-16-le")
        return None

    def runs(self, offset: int, length: int) -> Iterator[tuple[int, int, str, int]]:
        """(offset, length, "data"|"zero"|"parent", file_offset) runs of a virtual range."""
        end = min(offset + length, self.virtual_size)
        if self.dyn is None:
            if offset < end:
                yield offset, end - offset, "data", offset
            return
        bs = self.dyn.block_size
        bm = bitmap_size(bs)
        pos = offset
        while pos < end:
            block = pos // bs
            bstart = block * bs
            stop = min(end, bstart + bs)
            e = self._entry(block)
            if e == UNALLOCATED:
                yield pos, stop - pos, "parent" if self.differencing else "zero", 0
            else:
                base = e * SECTOR
                bits = _pread(self.f, base, bm)
                s0 = (pos - bstart) // SECTOR
                s1 = -(-(stop - bstart) // SECTOR)
                for rs, rn, present in _bit_runs_msb(bits, s0, s1):
                    r0 = max(pos, bstart + rs * SECTOR)
                    r1 = min(stop, bstart + (rs + rn) * SECTOR)
                    if present:
                        yield r0, r1 - r0, "data", base + bm + r0 - bstart
                    else:
                        yield r0, r1 - r0, "parent" if self.differencing else "zero", 0
            pos = stop

    def read(self, offset: int, length: int, parent: Callable[[int, int], bytes] | None) -> bytes:
        """Guest-visible bytes; ``parent(offset, length)`` supplies fall-through reads."""
        out = bytearray(max(0, min(offset + length, self.virtual_size) - offset))
        view = memoryview(out)
        for off, n, what, foff in self.runs(offset, length):
            rel = off - offset
            if what == "data":
                os.preadv(self.f.fileno(), [view[rel:rel + n]], foff)  # short read at EOF leaves zeros
            elif what == "parent":
                if parent is None:
                    raise ValueError(f"{self.path}: differencing disk read needs its parent")
                view[rel:rel + n] = parent(off, n)
        return bytes(out)

    def _allocate(self, block: int) -> int:
        """Append a block before the footer; returns its bitmap's file offset."""
        assert self.dyn is not None
        bm = bitmap_size(self.dyn.block_size)
        footer_at = os.fstat(self.f.fileno()).st_size - FOOTER_SIZE
        data_at = -(-(footer_at + bm) // DATA_ALIGN) * DATA_ALIGN
        base = data_at - bm
        bits = bytes(bm) if self.differencing else b"\xff" * bm
        self.f.truncate(data_at + self.dyn.block_size)
        _pwrite(self.f, base, bits)
        _pwrite(self.f, data_at + self.dyn.block_size, self.footer.pack())
        _pwrite(self.f, self.dyn.table_offset + block * 4, struct.pack(">I", base // SECTOR))
        if footer_at < base:
            _pwrite(self.f, footer_at, bytes(base - footer_at))  # the old footer becomes padding
        return base

    def write(self, offset: int, data: bytes) -> None:
        """Sector-aligned guest write: allocates blocks, sets differencing bitmap bits."""
        if offset % SECTOR or len(data) % SECTOR or offset + len(data) > self.virtual_size:
            raise ValueError(f"{self.path}: write {offset}+{len(data)} not sector aligned or beyond the disk")
        if self.dyn is None:
            _pwrite(self.f, offset, data)
            return
        bs = self.dyn.block_size
        bm = bitmap_size(bs)
        pos = 0
        while pos < len(data):
            voff = offset + pos
            block = voff // bs
            inb = voff - block * bs
            n = min(len(data) - pos, bs - inb)
            e = self._entry(block)
            base = self._allocate(block) if e == UNALLOCATED else e * SECTOR
            _pwrite(self.f, base + bm + inb, data[pos:pos + n])
            if self.differencing:
                s0, cnt = inb // SECTOR, n // SECTOR
                lo, hi = s0 // 8, (s0 + cnt + 7) // 8
                bits = bytearray(_pread(self.f, base + lo, hi - lo))
                for s in range(s0, s0 + cnt):
                    bits[s // 8 - lo] |= 0x80 >> (s % 8)
                _pwrite(self.f, base + lo, bytes(bits))
            pos += n

    def trim(self, offset: int, length: int) -> None:
        """VHD has no unmap: allocated (or, in a differencing disk, all) ranges are zeroed."""
        end = min(offset + length, self.virtual_size)
        if self.dyn is None:
            for pos in range(offset, end, 4 * 1024 * 1024):
                _pwrite(self.f, pos, bytes(min(4 * 1024 * 1024, end - pos)))
            return
        bs = self.dyn.block_size
        pos = offset
        while pos < end:
            stop = min(end, (pos // bs + 1) * bs)
            if self.differencing or self._entry(pos // bs) != UNALLOCATED:
                self.write(pos, bytes(stop - pos))
            pos = stop

    def set_parent(self, parent: tuple[uuid.UUID, int, str, str]) -> None:
        """Rewrite parent identity and locators (paths must fit the existing locator space)."""
        assert self.dyn is not None
        puid, pts, abs_path, rel_path = parent
        self.dyn.parent_unique_id, self.dyn.parent_timestamp = puid, pts
        self.dyn.parent_name = PureWindowsPath(abs_path).name
        new_locs = []
        for code, space, _length, off in self.dyn.locators:
            text = abs_path if code == PLATFORM_W2KU else rel_path
            data = text.encode("utf-16-le")
            if len(data) > space:
                raise ValueError(f"{self.path}: new parent path does not fit the {space}-byte locator")
            _pwrite(self.f, off, data.ljust(space, b"\0"))
            new_locs.append((code, space, len(data), off))
        self.dyn.locators = new_locs
        _pwrite(self.f, self.footer.data_offset, self.dyn.pack())


def relative_path(child_host_path: str | None, parent_host_path: str) -> str:
    """Windows relative path of the parent seen from the child's folder."""
    p = PureWindowsPath(parent_host_path)
    if not child_host_path:
        return ".\\" + p.name
    base = PureWindowsPath(child_host_path).parent
    if base.anchor.upper() != p.anchor.upper():
        return str(p)
    b = [x.upper() for x in base.parts[1:]]
    t = list(p.parts[1:])
    i = 0
    while i < len(b) and i < len(t) - 1 and b[i] == t[i].upper():
        i += 1
    return "\\".join(([".."] * (len(b) - i) or ["."]) + t[i:])


def _pread(f: BinaryIO, offset: int, length: int) -> bytes:
    data = os.pread(f.fileno(), length, offset)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def _pwrite(f: BinaryIO, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(f.fileno(), view, offset)
        view = view[n:]
        offset += n


def _bit_runs_msb(bits: bytes, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Runs (first, count, value) of MSB-first bits in [start, end)."""
    pos = start
    while pos < end:
        val = bool(bits[pos // 8] & (0x80 >> (pos % 8)))
        run = pos + 1
        while run < end:
            if run % 8 == 0 and run + 8 <= end and bits[run // 8] == (0xFF if val else 0):
                run += 8
                continue
            if bool(bits[run // 8] & (0x80 >> (run % 8))) != val:
                break
            run += 1
        yield pos, run - pos, val
        pos = run
