r"""VHDX (MS-VHDX v1) writer and reader for the simulator.

Written independently of the product's reader so that the two check each other.
The layout copies what Hyper-V (Windows 10 / Server 2016+) writes, as seen in
Windows-made fixtures (tests/fixtures/shared/vhd)::

    0 MiB   file type identifier, header 1 (64 KiB), header 2 (128 KiB),
            region table 1 (192 KiB), region table 2 (256 KiB)
    1 MiB   log (1 MiB, empty: LogGuid is zero after a clean close)
    2 MiB   metadata region (1 MiB; items from 64 KiB on)
    3 MiB   BAT (rounded up to whole MiB)
    then    payload and sector-bitmap blocks, each 1 MiB aligned

Header sessions: every mutating call (write, trim, merge, reparent) is one
"open for write" session.  The session changes ``FileWriteGuid`` and, when
user-visible data changes, ``DataWriteGuid``, and rewrites *both* headers with
sequence numbers N+1 and N+2, as Hyper-V does (the fixtures hold identical
headers with consecutive sequence numbers).  ``LogGuid`` stays zero because a
clean close leaves an empty log; :func:`make_dirty_log` produces the other case.

Sector bitmaps: bit ``k`` (byte ``k // 8``, bit ``k % 8``, least significant
first) is sector ``k`` of the chunk the bitmap block covers.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import BinaryIO, Callable

KiB = 1024
MiB = 1024 * KiB

SIGNATURE = b"vhdxfile"
CREATOR = "Microsoft Windows 10.0.20348.0"  # Server 2022; informational only
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB
METADATA_ITEMS_START = 64 * KiB  # items live after the 64 KiB metadata table
ALIGN = 1 * MiB  # every region, payload and sector-bitmap block is 1 MiB aligned
SECTOR_BITMAP_BLOCK = 1 * MiB

DEFAULT_BLOCK_SIZE = 32 * MiB  # Hyper-V default for dynamic VHDX
DEFAULT_FIXED_BLOCK_SIZE = 2 * MiB  # what the Windows-made fixed fixture carries
DEFAULT_DIFF_BLOCK_SIZE = 2 * MiB  # Hyper-V default for differencing disks (verify per host)
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB

BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
ZERO_GUID = uuid.UUID(int=0)

# Metadata entry flags
MD_IS_USER = 1
MD_IS_VIRTUAL_DISK = 2
MD_IS_REQUIRED = 4
# File parameter flags
FP_LEAVE_BLOCKS_ALLOCATED = 1
FP_HAS_PARENT = 2

# BAT states
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_UNMAPPED_V095 = 5  # pre-1.0 drafts; read as zeros
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
BAT_STATE_MASK = 0x7
BAT_OFFSET_MASK = 0xFFFFFFFFFFF00000
ZERO_STATES = (PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_ZERO, PAYLOAD_BLOCK_UNMAPPED,
               PAYLOAD_BLOCK_UNMAPPED_V095)

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_RT_HEADER = struct.Struct("<4sIII")
_RT_ENTRY = struct.Struct("<16sQII")
_MD_HEADER = struct.Struct("<8sHH20s")
_MD_ENTRY = struct.Struct("<16sIII4s")
_PL_HEADER = struct.Struct("<16sHH")
_PL_ENTRY = struct.Struct("<IIHH")
_LOG_HEADER = struct.Struct("<4sIIIQII16sQQ")
_LOG_DATA_DESC = struct.Struct("<4sIQQQ")
_LOG_DATA_SECTOR = struct.Struct("<4sI4084sI")
LOG_SECTOR = 4 * KiB

# ---------------------------------------------------------------------------- CRC-32C


def _crc_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def _crc_step_zero(c: int) -> int:
    return _CRC_TABLE[c & 0xFF] ^ (c >> 8)


def _gf2_apply(op: list[int], v: int) -> int:
    r, i = 0, 0
    while v:
        if v & 1:
            r ^= op[i]
        v >>= 1
        i += 1
    return r


def _zero_operators() -> list[list[int]]:
    """Operators that advance the CRC register over 2**k zero bytes (the update is linear over GF(2))."""
    ops = [[_crc_step_zero(1 << i) for i in range(32)]]
    for _ in range(40):
        prev = ops[-1]
        ops.append([_gf2_apply(prev, prev[i]) for i in range(32)])
    return ops


_ZERO_OPS: list[list[int]] = []


def _skip_zeros(c: int, n: int) -> int:
    if not _ZERO_OPS:
        _ZERO_OPS.extend(_zero_operators())
    k = 0
    while n:
        if n & 1:
            c = _gf2_apply(_ZERO_OPS[k], c)
        n >>= 1
        k += 1
    return c


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) as VHDX uses it; ``crc`` continues a previous result."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    # Checksummed VHDX structures (64 KiB region tables, 4 KiB headers) are mostly
    # a trailing run of zeros: feed the bytes before it, then jump over the zeros.
    used = len(data.rstrip(b"\0"))
    for b in data[:used]:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    if used < len(data):
        c = _skip_zeros(c, len(data) - used)
    return c ^ 0xFFFFFFFF


def _with_checksum(buf: bytearray, at: int = 4) -> bytes:
    struct.pack_into("<I", buf, at, 0)
    struct.pack_into("<I", buf, at, crc32c(bytes(buf)))
    return bytes(buf)


def _checksum_ok(buf: bytes, at: int = 4) -> bool:
    stored = int(struct.unpack_from("<I", buf, at)[0])
    tmp = bytearray(buf)
    struct.pack_into("<I", tmp, at, 0)
    return crc32c(bytes(tmp)) == stored


# ---------------------------------------------------------------------------- helpers


def round_up(value: int, to: int) -> int:
    """Smallest multiple of ``to`` that is >= ``value``."""
    return (value + to - 1) // to * to


def guid_str(g: uuid.UUID) -> str:
    """GUID as Windows prints it in WMI: upper case, no braces."""
    return str(g).upper()


@dataclass
class Header:
    """One of the two 4 KiB VHDX headers."""

    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID = ZERO_GUID
    log_version: int = 0
    version: int = 1
    log_length: int = LOG_LENGTH
    log_offset: int = LOG_OFFSET

    def pack(self) -> bytes:
        buf = bytearray(HEADER_SIZE)
        _HEADER.pack_into(buf, 0, b"head", 0, self.sequence_number, self.file_write_guid.bytes_le,
                          self.data_write_guid.bytes_le, self.log_guid.bytes_le, self.log_version,
                          self.version, self.log_length, self.log_offset)
        return _with_checksum(buf)

    @classmethod
    def unpack(cls, buf: bytes) -> Header | None:
        """Parse a header; None when the signature or checksum is wrong."""
        if len(buf) < HEADER_SIZE or buf[:4] != b"head" or not _checksum_ok(buf[:HEADER_SIZE]):
            return None
        _sig, _ck, seq, fw, dw, lg, lv, ver, ll, lo = _HEADER.unpack_from(buf, 0)
        return cls(seq, uuid.UUID(bytes_le=fw), uuid.UUID(bytes_le=dw), uuid.UUID(bytes_le=lg), lv, ver, ll,
                   lo)


def _region_table(bat_length: int) -> bytes:
    buf = bytearray(REGION_TABLE_SIZE)
    _RT_HEADER.pack_into(buf, 0, b"regi", 0, 2, 0)
    _RT_ENTRY.pack_into(buf, _RT_HEADER.size, BAT_GUID.bytes_le, BAT_OFFSET, bat_length, 1)
    _RT_ENTRY.pack_into(buf, _RT_HEADER.size + _RT_ENTRY.size, METADATA_GUID.bytes_le, METADATA_OFFSET,
                        METADATA_LENGTH, 1)
    return _with_checksum(buf)


def parent_locator_bytes(entries: list[tuple[str, str]]) -> bytes:
    """Encode a VHDX parent locator (keys and values UTF-16LE, offsets from the item start)."""
    head = _PL_HEADER.size + _PL_ENTRY.size * len(entries)
    blob = bytearray()
    table = bytearray()
    for key, value in entries:
        k = key.encode("utf-16-le")
        v = value.encode("utf-16-le")
        koff = head + len(blob)
        blob += k
        voff = head + len(blob)
        blob += v
        table += _PL_ENTRY.pack(koff, voff, len(k), len(v))
    return _PL_HEADER.pack(VHDX_PARENT_LOCATOR_TYPE.bytes_le, 0, len(entries)) + bytes(table) + bytes(blob)


def parse_parent_locator(buf: bytes) -> list[tuple[str, str]]:
    """Decode a parent locator item; ValueError on a malformed one."""
    if len(buf) < _PL_HEADER.size:
        raise ValueError("parent locator item too short")
    ltype, _res, count = _PL_HEADER.unpack_from(buf, 0)
    if uuid.UUID(bytes_le=ltype) != VHDX_PARENT_LOCATOR_TYPE:
        raise ValueError(f"unknown parent locator type {uuid.UUID(bytes_le=ltype)}")
    out = []
    for i in range(count):
        pos = _PL_HEADER.size + i * _PL_ENTRY.size
        if pos + _PL_ENTRY.size > len(buf):
            raise ValueError("parent locator entry table runs past the item")
        koff, voff, klen, vlen = _PL_ENTRY.unpack_from(buf, pos)
        if koff + klen > len(buf) or voff + vlen > len(buf) or klen == 0 or vlen == 0:
            raise ValueError("parent locator key/value out of bounds")
        out.append((buf[koff:koff + klen].decode("utf-16-le"), buf[voff:voff + vlen].decode("utf-16-le")))
    return out


def _metadata_region(block_size: int, fp_flags: int, virtual_size: int, *, disk_id: uuid.UUID, lss: int,
                     pss: int, locator: bytes | None) -> bytes:
    items: list[tuple[uuid.UUID, bytes, int]] = [
        (FILE_PARAMETERS_GUID, struct.pack("<II", block_size, fp_flags), MD_IS_REQUIRED),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", virtual_size), MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (LOGICAL_SECTOR_GUID, struct.pack("<I", lss), MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (PHYSICAL_SECTOR_GUID, struct.pack("<I", pss), MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
        (PAGE83_GUID, disk_id.bytes_le, MD_IS_REQUIRED | MD_IS_VIRTUAL_DISK),
    ]
    if locator is not None:
        items.append((PARENT_LOCATOR_GUID, locator, MD_IS_REQUIRED))
    buf = bytearray(METADATA_LENGTH)
    _MD_HEADER.pack_into(buf, 0, b"metadata", 0, len(items), bytes(20))
    pos = METADATA_ITEMS_START
    for i, (gid, data, flags) in enumerate(items):
        _MD_ENTRY.pack_into(buf, _MD_HEADER.size + i * _MD_ENTRY.size, gid.bytes_le, pos, len(data), flags,
                            bytes(4))
        buf[pos:pos + len(data)] = data
        pos += len(data)
    if pos > METADATA_LENGTH:
        raise ValueError("metadata items do not fit into the metadata region")
    return bytes(buf)


def chunk_ratio(block_size: int, lss: int) -> int:
    """Payload blocks covered by one sector-bitmap block."""
    return (1 << 23) * lss // block_size


def bat_entry_count(virtual_size: int, block_size: int, lss: int, differencing: bool) -> int:
    """Number of BAT entries (MS-VHDX 2.5)."""
    data_blocks = -(-virtual_size // block_size)
    cr = chunk_ratio(block_size, lss)
    if differencing:
        return -(-data_blocks // cr) * (cr + 1)
    return data_blocks + (data_blocks - 1) // cr


# ---------------------------------------------------------------------------- creation


def create(path: Path, kind: str, virtual_size: int, block_size: int, *, lss: int, pss: int,
           disk_id: uuid.UUID | None = None, locator: bytes | None = None,
           fill: Callable[[int], bytes | None] | None = None) -> None:
    """Write a new VHDX file.

    ``fill(block_index)`` returns a block's initial content (None = leave it
    unallocated/zero); only used for fixed and dynamic disks.
    """
    if kind not in ("fixed", "dynamic", "differencing"):
        raise ValueError(f"unknown VHDX kind {kind!r}")
    if lss not in (512, 4096) or pss not in (512, 4096):
        raise ValueError(f"sector sizes must be 512 or 4096, got {lss}/{pss}")
    if block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"VHDX block size must be a power of two in 1-256 MiB, got {block_size}")
    if virtual_size <= 0 or virtual_size % lss:
        raise ValueError(f"virtual size {virtual_size} is not a positive multiple of {lss}")
    diff = kind == "differencing"
    if diff and locator is None:
        raise ValueError("a differencing VHDX needs a parent locator")
    fp_flags = FP_LEAVE_BLOCKS_ALLOCATED if kind == "fixed" else (FP_HAS_PARENT if diff else 0)
    nentries = bat_entry_count(virtual_size, block_size, lss, diff)
    bat_length = round_up(nentries * 8, ALIGN)
    payload_start = BAT_OFFSET + bat_length
    cr = chunk_ratio(block_size, lss)
    data_blocks = -(-virtual_size // block_size)
    header = Header(1, uuid.uuid4(), uuid.uuid4())
    bat = bytearray(nentries * 8)
    end = payload_start
    with open(path, "wb") as f:
        ident = bytearray(64 * KiB)
        ident[:8] = SIGNATURE
        creator = CREATOR.encode("utf-16-le")
        ident[8:8 + len(creator)] = creator
        f.write(ident)
        f.write(header.pack())
        f.seek(HEADER_OFFSETS[1])
        header.sequence_number = 2
        f.write(header.pack())
        rt = _region_table(bat_length)
        for off in REGION_TABLE_OFFSETS:
            f.seek(off)
            f.write(rt)
        f.seek(METADATA_OFFSET)
        f.write(_metadata_region(block_size, fp_flags, virtual_size, disk_id=disk_id or uuid.uuid4(), lss=lss,
                                 pss=pss, locator=locator))
        for i in range(data_blocks):
            content = fill(i) if fill is not None and not diff else None
            if kind == "fixed" or content is not None:
                off = end
                end += block_size
                struct.pack_into("<Q", bat, (i + i // cr) * 8, off | PAYLOAD_BLOCK_FULLY_PRESENT)
                if content:
                    f.seek(off)
                    f.write(content)
        f.seek(BAT_OFFSET)
        f.write(bat)
        f.truncate(end)


# ---------------------------------------------------------------------------- open / read / write


@dataclass
class Vhdx:
    """An opened VHDX file (parsed and validated on open)."""

    path: Path
    f: BinaryIO
    headers: list[Header | None]
    current: int
    block_size: int
    fp_flags: int
    virtual_size: int
    disk_id: uuid.UUID
    lss: int
    pss: int
    bat_offset: int
    bat_length: int
    locator: list[tuple[str, str]] = field(default_factory=list)
    locator_item: tuple[int, int] = (0, 0)  # (offset in region, length) of the parent locator item
    session_open: bool = False

    # -- properties
    @property
    def header(self) -> Header:
        h = self.headers[self.current]
        assert h is not None
        return h

    @property
    def kind(self) -> str:
        if self.fp_flags & FP_HAS_PARENT:
            return "differencing"
        return "fixed" if self.fp_flags & FP_LEAVE_BLOCKS_ALLOCATED else "dynamic"

    @property
    def differencing(self) -> bool:
        return bool(self.fp_flags & FP_HAS_PARENT)

    @property
    def chunk_ratio(self) -> int:
        return chunk_ratio(self.block_size, self.lss)

    @property
    def data_blocks(self) -> int:
        return -(-self.virtual_size // self.block_size)

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // self.lss

    def locator_value(self, key: str) -> str | None:
        for k, v in self.locator:
            if k == key:
                return v
        return None

    # -- open
    @classmethod
    def open(cls, path: Path, writable: bool = False) -> Vhdx:
        """Open and validate; ValueError names what is wrong."""
        f = open(path, "r+b" if writable else "rb")  # noqa: SIM115 - owned by the returned object
        try:
            d = cls._parse(path, f)
            if writable and d.header.log_guid != ZERO_GUID:
                raise ValueError(f"{path}: the VHDX log is not empty (LogGuid {d.header.log_guid}); "
                                 "replay it first, e.g. with 'qemu-img check -r all'")
            return d
        except BaseException:
            f.close()
            raise

    @classmethod
    def _parse(cls, path: Path, f: BinaryIO) -> Vhdx:
        size = os.fstat(f.fileno()).st_size
        head = _pread(f, 0, 1 * MiB)
        if head[:8] != SIGNATURE:
            raise ValueError(f"{path}: not a VHDX file (no 'vhdxfile' signature)")
        headers = [Header.unpack(head[o:o + HEADER_SIZE]) for o in HEADER_OFFSETS]
        valid = [i for i, h in enumerate(headers) if h is not None]
        if not valid:
            raise ValueError(f"{path}: both VHDX headers are invalid (bad signature or checksum)")
        current = max(valid, key=lambda i: headers[i].sequence_number)  # type: ignore[union-attr]
        hdr = headers[current]
        assert hdr is not None
        if hdr.version != 1:
            raise ValueError(f"{path}: unsupported VHDX version {hdr.version}")
        if hdr.log_offset % ALIGN or hdr.log_length % ALIGN:
            raise ValueError(f"{path}: log region not 1 MiB aligned")
        rt = None
        for off in REGION_TABLE_OFFSETS:
            cand = head[off:off + REGION_TABLE_SIZE]
            if cand[:4] == b"regi" and _checksum_ok(cand):
                rt = cand
                break
        if rt is None:
            raise ValueError(f"{path}: both region tables are invalid")
        _sig, _ck, count, _r = _RT_HEADER.unpack_from(rt, 0)
        if count > 2047:
            raise ValueError(f"{path}: region table entry count {count} too large")
        regions = {}
        for i in range(count):
            gid, foff, length, req = _RT_ENTRY.unpack_from(rt, _RT_HEADER.size + i * _RT_ENTRY.size)
            g = uuid.UUID(bytes_le=gid)
            if g not in (BAT_GUID, METADATA_GUID) and req & 1:
                raise ValueError(f"{path}: unknown required region {g}")
            if foff % ALIGN or length % ALIGN or foff + length > size:
                raise ValueError(f"{path}: region {g} at {foff}+{length} misaligned or beyond end of file")
            regions[g] = (foff, length)
        if BAT_GUID not in regions or METADATA_GUID not in regions:
            raise ValueError(f"{path}: BAT or metadata region missing")
        md_off, md_len = regions[METADATA_GUID]
        md = _pread(f, md_off, md_len)
        sig, _r, mcount, _r2 = _MD_HEADER.unpack_from(md, 0)
        if sig != b"metadata" or mcount > 2047:
            raise ValueError(f"{path}: bad metadata table")
        items = {}
        for i in range(mcount):
            gid, ioff, ilen, _flags, _r3 = _MD_ENTRY.unpack_from(md, _MD_HEADER.size + i * _MD_ENTRY.size)
            g = uuid.UUID(bytes_le=gid)
            if ilen and (ioff < METADATA_ITEMS_START or ioff + ilen > md_len):
                raise ValueError(f"{path}: metadata item {g} out of bounds")
            items[g] = (ioff, ilen)
        for need in (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, PAGE83_GUID, LOGICAL_SECTOR_GUID,
                     PHYSICAL_SECTOR_GUID):
            if need not in items:
                raise ValueError(f"{path}: required metadata item {need} missing")

        def item(g: uuid.UUID) -> bytes:
            o, n = items[g]
            return md[o:o + n]

        block_size, fp_flags = struct.unpack("<II", item(FILE_PARAMETERS_GUID)[:8])
        (vsize,) = struct.unpack("<Q", item(VIRTUAL_DISK_SIZE_GUID)[:8])
        disk_id = uuid.UUID(bytes_le=item(PAGE83_GUID)[:16])
        (lss,) = struct.unpack("<I", item(LOGICAL_SECTOR_GUID)[:4])
        (pss,) = struct.unpack("<I", item(PHYSICAL_SECTOR_GUID)[:4])
        if block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"{path}: invalid block size {block_size}")
        if lss not in (512, 4096) or pss not in (512, 4096):
            raise ValueError(f"{path}: invalid sector sizes {lss}/{pss}")
        if vsize == 0 or vsize % lss:
            raise ValueError(f"{path}: invalid virtual size {vsize}")
        locator: list[tuple[str, str]] = []
        loc_item = (0, 0)
        if fp_flags & FP_HAS_PARENT:
            if PARENT_LOCATOR_GUID not in items:
                raise ValueError(f"{path}: differencing disk without parent locator")
            loc_item = items[PARENT_LOCATOR_GUID]
            locator = parse_parent_locator(item(PARENT_LOCATOR_GUID))
        bat_off, bat_len = regions[BAT_GUID]
        d = cls(path, f, headers, current, block_size, fp_flags, vsize, disk_id, lss, pss, bat_off, bat_len,
                locator, loc_item)
        bat_need = bat_entry_count(vsize, block_size, lss, d.differencing) * 8
        if bat_need > bat_len:
            raise ValueError(f"{path}: BAT region too small ({bat_len} < {bat_need})")
        d.check_bat(size, [(hdr.log_offset, hdr.log_length, "the log"), (bat_off, bat_len, "the BAT region"),
                           (md_off, md_len, "the metadata region")])
        return d

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Vhdx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- BAT
    def bat(self) -> list[int]:
        n = bat_entry_count(self.virtual_size, self.block_size, self.lss, self.differencing)
        return list(struct.unpack(f"<{n}Q", _pread(self.f, self.bat_offset, n * 8)))

    def check_bat(self, file_size: int, regions: list[tuple[int, int, str]]) -> None:
        """Consistency of the BAT (MS-VHDX 2.5): states valid for the disk type, every
        present block inside the file and 1 MiB aligned, no block overlapping another
        block, the log, the BAT or the metadata region, and a present sector bitmap for
        every partially present block.
        """
        cr = self.chunk_ratio
        spans = list(regions)
        bat = self.bat()
        for idx, e in enumerate(bat):
            state = e & BAT_STATE_MASK
            is_sb = idx % (cr + 1) == cr
            if is_sb:
                if state not in (SB_BLOCK_NOT_PRESENT, SB_BLOCK_PRESENT):
                    raise ValueError(f"{self.path}: sector bitmap entry {idx} has invalid state {state}")
                if state == SB_BLOCK_PRESENT and not self.differencing:
                    raise ValueError(f"{self.path}: sector bitmap block {idx} in a non-differencing disk")
            elif state not in (0, 1, 2, 3, 5, 6, 7):
                raise ValueError(f"{self.path}: BAT entry {idx} has invalid state {state}")
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                if not self.differencing:
                    raise ValueError(f"{self.path}: partially present block {idx} in a non-differencing disk")
                sbi = (idx // (cr + 1)) * (cr + 1) + cr
                if sbi >= len(bat) or bat[sbi] & BAT_STATE_MASK != SB_BLOCK_PRESENT:
                    raise ValueError(f"{self.path}: partially present block {idx} without a sector bitmap")
            present = state == SB_BLOCK_PRESENT if is_sb else state in (
                PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT)
            if not present:
                continue
            off = e & BAT_OFFSET_MASK
            length = SECTOR_BITMAP_BLOCK if is_sb else self.block_size
            if off < 1 * MiB or off + length > file_size:
                raise ValueError(f"{self.path}: BAT entry {idx} points outside the file "
                                 f"({off}+{length} > {file_size}); truncated?")
            spans.append((off, length, f"BAT entry {idx}"))
        spans.sort()
        for (o1, n1, w1), (o2, _n2, w2) in zip(spans, spans[1:]):
            if o1 + n1 > o2:
                raise ValueError(f"{self.path}: {w1} overlaps {w2}")

    def _entry(self, idx: int) -> int:
        return int(struct.unpack("<Q", _pread(self.f, self.bat_offset + idx * 8, 8))[0])

    def _set_entry(self, idx: int, value: int) -> None:
        _pwrite(self.f, self.bat_offset + idx * 8, struct.pack("<Q", value))

    def payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def sb_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def block_entry(self, block: int) -> int:
        return self._entry(self.payload_index(block))

    def _file_end(self) -> int:
        return os.fstat(self.f.fileno()).st_size

    def _allocate(self, length: int) -> int:
        off = round_up(self._file_end(), ALIGN)
        self.f.truncate(off + length)
        return off

    # -- sector bitmaps
    def _bitmap_loc(self, block: int) -> tuple[int, int]:
        """(sector-bitmap BAT index, first bit of ``block`` in that bitmap)."""
        cr = self.chunk_ratio
        return self.sb_index(block // cr), (block % cr) * self.sectors_per_block

    def block_bitmap(self, block: int) -> bytes:
        """This block's sector bits (one bit per sector, LSB first); all zero if no bitmap block."""
        sbi, first = self._bitmap_loc(block)
        e = self._entry(sbi)
        nbytes = self.sectors_per_block // 8
        if e & BAT_STATE_MASK != SB_BLOCK_PRESENT:
            return bytes(nbytes)
        return _pread(self.f, (e & BAT_OFFSET_MASK) + first // 8, nbytes)

    def _set_bits(self, block: int, first_sector: int, count: int) -> None:
        sbi, first = self._bitmap_loc(block)
        e = self._entry(sbi)
        if e & BAT_STATE_MASK != SB_BLOCK_PRESENT:
            off = self._allocate(SECTOR_BITMAP_BLOCK)
            self._set_entry(sbi, off | SB_BLOCK_PRESENT)
        else:
            off = e & BAT_OFFSET_MASK
        start = first + first_sector
        lo, hi = start // 8, (start + count + 7) // 8
        buf = bytearray(_pread(self.f, off + lo, hi - lo))
        _set_bit_range(buf, start - lo * 8, count)
        _pwrite(self.f, off + lo, bytes(buf))

    # -- sessions
    def begin_session(self, data_changes: bool = True, log_guid: uuid.UUID = ZERO_GUID) -> None:
        """Open-for-write: new FileWriteGuid (and DataWriteGuid), both headers rewritten."""
        if self.session_open and log_guid == ZERO_GUID:
            return
        cur = self.header
        new = Header(cur.sequence_number + 1, uuid.uuid4(),
                     uuid.uuid4() if data_changes else cur.data_write_guid, log_guid, cur.log_version,
                     cur.version, cur.log_length, cur.log_offset)
        other = 1 - self.current
        _pwrite(self.f, HEADER_OFFSETS[other], new.pack())
        self.headers[other] = new
        self.current = other
        newer = Header(**{**new.__dict__, "sequence_number": new.sequence_number + 1})
        _pwrite(self.f, HEADER_OFFSETS[1 - other], newer.pack())
        self.headers[1 - other] = newer
        self.current = 1 - other
        self.session_open = True

    # -- guest view
    def runs(self, offset: int, length: int) -> Iterator[tuple[int, int, str, int]]:
        """Split [offset, offset+length) into (offset, length, what, file_offset) runs.

        ``what`` is "data" (bytes at file_offset), "zero" or "parent" (fall through).
        """
        bs = self.block_size
        end = min(offset + length, self.virtual_size)
        pos = offset
        while pos < end:
            block = pos // bs
            bstart = block * bs
            stop = min(end, bstart + bs)
            e = self.block_entry(block)
            state = e & BAT_STATE_MASK
            boff = e & BAT_OFFSET_MASK
            if state == PAYLOAD_BLOCK_FULLY_PRESENT:
                yield pos, stop - pos, "data", boff + pos - bstart
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                bits = self.block_bitmap(block)
                s = (pos - bstart) // self.lss
                s_end = -(-(stop - bstart) // self.lss)
                for rs, rn, present in _bit_runs(bits, s, s_end):
                    r0 = max(pos, bstart + rs * self.lss)
                    r1 = min(stop, bstart + (rs + rn) * self.lss)
                    if present:
                        yield r0, r1 - r0, "data", boff + r0 - bstart
                    else:
                        yield r0, r1 - r0, "parent", 0
            elif state == PAYLOAD_BLOCK_NOT_PRESENT and self.differencing:
                yield pos, stop - pos, "parent", 0
            else:
                yield pos, stop - pos, "zero", 0
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

    def write(self, offset: int, data: bytes) -> None:
        """Sector-aligned guest write (caller opened a session)."""
        if offset % self.lss or len(data) % self.lss or offset + len(data) > self.virtual_size:
            raise ValueError(f"{self.path}: write {offset}+{len(data)} not sector aligned or beyond the disk")
        bs = self.block_size
        pos = 0
        while pos < len(data):
            voff = offset + pos
            block = voff // bs
            inb = voff - block * bs
            n = min(len(data) - pos, bs - inb)
            chunk = data[pos:pos + n]
            idx = self.payload_index(block)
            e = self._entry(idx)
            state = e & BAT_STATE_MASK
            if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
                _pwrite(self.f, (e & BAT_OFFSET_MASK) + inb, chunk)
                if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                    self._set_bits(block, inb // self.lss, n // self.lss)
            else:
                boff = self._allocate(bs)
                _pwrite(self.f, boff + inb, chunk)
                whole = n == bs or (inb == 0 and voff + n >= self.virtual_size)
                if self.differencing and state == PAYLOAD_BLOCK_NOT_PRESENT and not whole:
                    self._set_bits(block, inb // self.lss, n // self.lss)
                    self._set_entry(idx, boff | PAYLOAD_BLOCK_PARTIALLY_PRESENT)
                else:
                    # A block that read as zeros (or is wholly overwritten) keeps zeros elsewhere.
                    self._set_entry(idx, boff | PAYLOAD_BLOCK_FULLY_PRESENT)
            pos += n

    def trim(self, offset: int, length: int) -> None:
        """Unmap: whole blocks lose their payload, partial ranges are zeroed (caller opened a session)."""
        bs = self.block_size
        end = min(offset + length, self.virtual_size)
        pos = offset
        while pos < end:
            block = pos // bs
            bstart = block * bs
            stop = min(end, bstart + bs)
            whole = pos == bstart and (stop == bstart + bs or stop == self.virtual_size)
            idx = self.payload_index(block)
            state = self._entry(idx) & BAT_STATE_MASK
            if whole and self.kind != "fixed":
                # Differencing disks use ZERO, not UNMAPPED, so no reader can fall through to the parent.
                self._set_entry(idx, PAYLOAD_BLOCK_ZERO if self.differencing else PAYLOAD_BLOCK_UNMAPPED)
            elif state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT) or (
                    self.differencing and state == PAYLOAD_BLOCK_NOT_PRESENT):
                for zpos in range(pos, stop, 4 * MiB):
                    self.write(zpos, bytes(min(4 * MiB, stop - zpos)))
            pos = stop

    # -- locator
    def set_locator(self, entries: list[tuple[str, str]]) -> None:
        """Rewrite the parent locator item in place (caller opened a session)."""
        blob = parent_locator_bytes(entries)
        md = bytearray(_pread(self.f, METADATA_OFFSET, METADATA_LENGTH))
        _sig, _r, count, _r2 = _MD_HEADER.unpack_from(md, 0)
        end = METADATA_ITEMS_START
        slot = -1
        for i in range(count):
            gid, ioff, ilen, _fl, _r3 = _MD_ENTRY.unpack_from(md, _MD_HEADER.size + i * _MD_ENTRY.size)
            if uuid.UUID(bytes_le=gid) == PARENT_LOCATOR_GUID:
                slot = i
            else:
                end = max(end, ioff + ilen)
        if slot < 0:
            raise ValueError(f"{self.path}: no parent locator to rewrite")
        md[end:] = bytes(METADATA_LENGTH - end)
        md[end:end + len(blob)] = blob
        _MD_ENTRY.pack_into(md, _MD_HEADER.size + slot * _MD_ENTRY.size, PARENT_LOCATOR_GUID.bytes_le, end,
                            len(blob), MD_IS_REQUIRED, bytes(4))
        _pwrite(self.f, METADATA_OFFSET, bytes(md))
        self.locator = list(entries)
        self.locator_item = (end, len(blob))


# ---------------------------------------------------------------------------- locators


def make_locator_entries(parent_data_write_guid: uuid.UUID, child_host_path: str | None,
                         parent_host_path: str) -> list[tuple[str, str]]:
    r"""Parent locator keys as Hyper-V writes them for a checkpoint's ``.avhdx``.

    ``relative_path`` is relative to the child's folder (``.\parent.vhdx`` when both
    share a folder, which is where Hyper-V puts checkpoint disks), ``volume_path``
    uses a volume GUID derived from the drive/share so it is stable per volume.
    """
    p = PureWindowsPath(parent_host_path)
    rel = _relative_windows(PureWindowsPath(child_host_path).parent, p) if child_host_path else ".\\" + p.name
    if parent_host_path.startswith("\\\\"):
        absolute = "\\\\?\\UNC\\" + parent_host_path[2:]
    else:
        absolute = "\\\\?\\" + parent_host_path
    vol = uuid.uuid5(uuid.NAMESPACE_URL, "hvsim-volume:" + p.anchor.upper())
    tail = str(p)[len(p.anchor):]
    volume = "\\\\?\\Volume{" + str(vol) + "}\\" + tail
    return [
        ("parent_linkage", "{" + str(parent_data_write_guid) + "}"),
        ("relative_path", rel),
        ("volume_path", volume),
        ("absolute_win32_path", absolute),
    ]


def host_path_from_absolute(value: str) -> str:
    r"""``\\?\C:\x`` -> ``C:\x``; ``\\?\UNC\srv\sh\x`` -> ``\\srv\sh\x``."""
    if value.upper().startswith("\\\\?\\UNC\\"):
        return "\\\\" + value[8:]
    if value.startswith("\\\\?\\"):
        return value[4:]
    return value


def _relative_windows(base: PureWindowsPath, target: PureWindowsPath) -> str:
    if base.anchor.upper() != target.anchor.upper():
        return str(target)
    b = [x.upper() for x in base.parts[1:]]
    t = list(target.parts[1:])
    i = 0
    while i < len(b) and i < len(t) - 1 and b[i] == t[i].upper():
        i += 1
    ups = [".."] * (len(b) - i)
    return "\\".join((ups or ["."]) + t[i:])


# ---------------------------------------------------------------------------- dirty log


def write_log_entry(d: Vhdx, file_offset: int, sector: bytes, flushed_file_offset: int,
                    sequence_number: int = 1) -> uuid.UUID:
    """Put one valid log entry (one 4 KiB data descriptor) at the start of the log; returns its LogGuid."""
    if len(sector) != LOG_SECTOR or file_offset % LOG_SECTOR:
        raise ValueError("log data must be one aligned 4 KiB sector")
    log_guid = uuid.uuid4()
    entry = bytearray(2 * LOG_SECTOR)
    _LOG_HEADER.pack_into(entry, 0, b"loge", 0, len(entry), 0, sequence_number, 1, 0, log_guid.bytes_le,
                          flushed_file_offset, flushed_file_offset)
    _LOG_DATA_DESC.pack_into(entry, _LOG_HEADER.size, b"desc", struct.unpack_from("<I", sector, 4092)[0],
                             struct.unpack_from("<Q", sector, 0)[0], file_offset, sequence_number)
    _LOG_DATA_SECTOR.pack_into(entry, LOG_SECTOR, b"data", sequence_number >> 32, sector[8:4092],
                               sequence_number & 0xFFFFFFFF)
    hdr = d.header
    log = bytearray(hdr.log_length)
    log[:len(entry)] = _with_checksum(entry)
    _pwrite(d.f, hdr.log_offset, bytes(log))
    return log_guid


# ---------------------------------------------------------------------------- low level


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


def _set_bit_range(buf: bytearray, start: int, count: int) -> None:
    """Set ``count`` bits from bit ``start`` (LSB-first within a byte)."""
    pos, end = start, start + count
    while pos < end and pos % 8:
        buf[pos // 8] |= 1 << (pos % 8)
        pos += 1
    full_end = end - end % 8
    if full_end > pos:
        buf[pos // 8:full_end // 8] = b"\xff" * ((full_end - pos) // 8)
        pos = full_end
    while pos < end:
        buf[pos // 8] |= 1 << (pos % 8)
        pos += 1


def _bit_runs(bits: bytes, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Runs (first, count, value) of the LSB-first bits in [start, end)."""
    pos = start
    while pos < end:
        val = bool(bits[pos // 8] >> (pos % 8) & 1)
        run = pos + 1
        while run < end:
            if run % 8 == 0 and run + 8 <= end:
                byte = bits[run // 8]
                if byte == (0xFF if val else 0):
                    run += 8
                    continue
            if bool(bits[run // 8] >> (run % 8) & 1) != val:
                break
            run += 1
        yield pos, run - pos, val
        pos = run
