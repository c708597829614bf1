"""On-disk structures of VHDX ([MS-VHDX] v1) and VHD (Virtual Hard Disk Image Format Specification).

Each structure is a frozen dataclass whose fields carry their wire codec; the :class:`Structure`
base derives ``SIZE``, :meth:`Structure.pack` and :meth:`Structure.unpack` from that declaration, so
the layout is read top to bottom like the spec table it cites.  Nothing here validates semantics
(sizes, offsets, states): that is the reader's job, which knows the file it came from.

VHDX integers are little-endian and its GUIDs use the Windows mixed-endian layout
(``uuid.UUID(bytes_le=...)``).  VHD integers are big-endian.  Reference summary:
``shared/reference/hyperv-wmi.md`` sections 8.3 (VHDX) and 8.4 (VHD).
"""

# The field helpers (_guid() etc.) return dataclasses.field() objects, which RUF009 cannot tell apart
# from a mutable default computed once.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import enum
import uuid
from typing import Any, ClassVar, Dict, Generic, List, Tuple, Type, TypeVar, cast

from bareos_hyperv.storage.vhd.crc32c import crc32c

__all__ = [
    "BAT_FILE_OFFSET_MASK",
    "BAT_REGION_GUID",
    "BAT_STATE_MASK",
    "FILE_PARAMETERS_GUID",
    "LOGICAL_SECTOR_SIZE_GUID",
    "METADATA_REGION_GUID",
    "NIL_GUID",
    "PARENT_LOCATOR_GUID",
    "PHYSICAL_SECTOR_SIZE_GUID",
    "VHDX_PARENT_LOCATOR_TYPE_GUID",
    "VIRTUAL_DISK_ID_GUID",
    "VIRTUAL_DISK_SIZE_GUID",
    "BatEntry",
    "FileParameters",
    "FileParametersFlags",
    "KiB",
    "MetadataTableEntry",
    "MetadataTableEntryFlags",
    "MetadataTableHeader",
    "MiB",
    "ParentLocatorEntry",
    "ParentLocatorHeader",
    "PayloadBlockState",
    "RegionTableEntry",
    "RegionTableEntryFlags",
    "RegionTableHeader",
    "SectorBitmapState",
    "SectorSizeItem",
    "Structure",
    "VhdDiskType",
    "VhdDynamicHeader",
    "VhdFooter",
    "VhdParentLocatorEntry",
    "VhdxFileIdentifier",
    "VhdxHeader",
    "VirtualDiskIdItem",
    "VirtualDiskSizeItem",
    "vhd_checksum",
    "vhdx_checksum",
]

KiB = 1024
MiB = 1024 * KiB
NIL_GUID = uuid.UUID(int=0)

# -- VHDX constants ([MS-VHDX] 2.2 - 2.6) ---------------------------------------------------------

#: Region table entries ([MS-VHDX] 2.2.3.2).
BAT_REGION_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

#: Known metadata items ([MS-VHDX] 2.6.2).
FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

#: ``LocatorType`` of the only parent locator Hyper-V writes ([MS-VHDX] 2.6.2.6.1).
VHDX_PARENT_LOCATOR_TYPE_GUID = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

#: BAT entry = u64: bits 0-2 state, bits 20-63 file offset in MiB ([MS-VHDX] 2.5.1).
BAT_STATE_MASK = 0x7
BAT_FILE_OFFSET_MASK = 0xFFFFFFFFFFF00000


class PayloadBlockState(enum.IntEnum):
    """Payload BAT entry states ([MS-VHDX] 2.5.1.1)."""

    NOT_PRESENT = 0
    UNDEFINED = 1
    ZERO = 2
    UNMAPPED = 3
    FULLY_PRESENT = 6
    PARTIALLY_PRESENT = 7


class SectorBitmapState(enum.IntEnum):
    """Sector bitmap BAT entry states ([MS-VHDX] 2.5.1.2)."""

    NOT_PRESENT = 0
    PRESENT = 6


class RegionTableEntryFlags(enum.IntFlag):
    """[MS-VHDX] 2.2.3.2 ``Required``: a reader that does not know the region must not open the file."""

    REQUIRED = 0x1


class MetadataTableEntryFlags(enum.IntFlag):
    """[MS-VHDX] 2.6.1.2 metadata table entry flags."""

    IS_USER = 0x1
    IS_VIRTUAL_DISK = 0x2
    IS_REQUIRED = 0x4


class FileParametersFlags(enum.IntFlag):
    """[MS-VHDX] 2.6.2.1 file parameters flags."""

    LEAVE_BLOCKS_ALLOCATED = 0x1
    HAS_PARENT = 0x2


class VhdDiskType(enum.IntEnum):
    """VHD footer ``Disk Type`` (VHD spec, "Hard Disk Footer Format")."""

    NONE = 0
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


# -- declarative structure machinery --------------------------------------------------------------

_V = TypeVar("_V")
_S = TypeVar("_S", bound="Structure")
_CODEC_KEY = "bareos_hyperv.vhd.codec"


class _Codec(Generic[_V]):
    """How one field is laid out: its size in bytes and its value <-> bytes mapping."""

    def __init__(self, size: int) -> None:
        self.size = size

    def decode(self, raw: bytes, byteorder: str) -> _V:
        raise NotImplementedError

    def encode(self, value: _V, byteorder: str) -> bytes:
        raise NotImplementedError


class _UInt(_Codec[int]):
    def decode(self, raw: bytes, byteorder: str) -> int:
        return int.from_bytes(raw, "little" if byteorder == "little" else "big")

    def encode(self, value: int, byteorder: str) -> bytes:
        return int(value).to_bytes(self.size, "little" if byteorder == "little" else "big")


class _Bytes(_Codec[bytes]):
    def decode(self, raw: bytes, byteorder: str) -> bytes:
        return bytes(raw)

    def encode(self, value: bytes, byteorder: str) -> bytes:
        if len(value) > self.size:
            raise ValueError(f"{len(value)} bytes do not fit a {self.size}-byte field")
        return bytes(value).ljust(self.size, b"\0")


class _Guid(_Codec[uuid.UUID]):
    """GUID in Windows mixed-endian order (``GUID`` structure), whatever the structure's byte order.

    VHD integers are big-endian, but Windows writes the footer ``UniqueId`` and the
    dynamic header ``ParentUniqueId`` as GUID structures: read that way, Windows-made
    fixtures give valid version-4 GUIDs that match Hyper-V's ``DiskIdentifier``.
    """

    def __init__(self) -> None:
        super().__init__(16)

    def decode(self, raw: bytes, byteorder: str) -> uuid.UUID:
        return uuid.UUID(bytes_le=bytes(raw))

    def encode(self, value: uuid.UUID, byteorder: str) -> bytes:
        return value.bytes_le


class _Utf16(_Codec[str]):
    """Fixed-size NUL-padded UTF-16 text; undecodable units become U+FFFD (it is informational)."""

    def __init__(self, size: int, encoding: str) -> None:
        super().__init__(size)
        self.encoding = encoding

    def decode(self, raw: bytes, byteorder: str) -> str:
        text = bytes(raw).decode(self.encoding, errors="replace")
        end = text.find("\0")
        return text if end < 0 else text[:end]

    def encode(self, value: str, byteorder: str) -> bytes:
        data = value.encode(self.encoding)
        if len(data) > self.size:
            raise ValueError(f"text of {len(data)} bytes does not fit a {self.size}-byte field")
        return data.ljust(self.size, b"\0")


class _Array(_Codec[Tuple[Any, ...]]):
    """A fixed count of nested structures."""

    def __init__(self, item: Type[Structure], count: int) -> None:
        super().__init__(item.struct_size() * count)
        self.item = item
        self.count = count

    def decode(self, raw: bytes, byteorder: str) -> Tuple[Any, ...]:
        step = self.item.struct_size()
        return tuple(self.item.unpack(raw, i * step) for i in range(self.count))

    def encode(self, value: Tuple[Any, ...], byteorder: str) -> bytes:
        if len(value) != self.count:
            raise ValueError(f"expected {self.count} {self.item.__name__} items, got {len(value)}")
        return b"".join(item.pack() for item in value)


def _field(codec: _Codec[Any], default: Any, *, repr_: bool = True) -> Any:
    return dataclasses.field(default=default, repr=repr_, metadata={_CODEC_KEY: codec})


# The helpers below return a dataclass ``Field`` typed as the field's value type, the same trick
# ``dataclasses.field()`` itself plays, so that class bodies read like typed attribute declarations.


def _u8(default: int = 0) -> int:
    return cast(int, _field(_UInt(1), default))


def _u16(default: int = 0) -> int:
    return cast(int, _field(_UInt(2), default))


def _u32(default: int = 0) -> int:
    return cast(int, _field(_UInt(4), default))


def _u64(default: int = 0) -> int:
    return cast(int, _field(_UInt(8), default))


def _raw(size: int, default: bytes = b"") -> bytes:
    return cast(bytes, _field(_Bytes(size), default.ljust(size, b"\0")))


def _reserved(size: int) -> bytes:
    # Kept (not dropped) so that unpack -> pack reproduces the file byte for byte.
    return cast(bytes, _field(_Bytes(size), bytes(size), repr_=False))


def _guid(default: uuid.UUID = NIL_GUID) -> uuid.UUID:
    return cast(uuid.UUID, _field(_Guid(), default))


def _utf16(size: int, encoding: str, default: str = "") -> str:
    return cast(str, _field(_Utf16(size, encoding), default))


def _array(item: Type[Structure], count: int) -> Tuple[Any, ...]:
    default = tuple(item() for _ in range(count))
    return cast(Tuple[Any, ...], _field(_Array(item, count), default))


class Structure:
    """Base of every on-disk structure: a dataclass whose fields declare their codec.

    ``BYTE_ORDER`` applies to integers (and picks the GUID layout).  ``SIGNATURE_FIELD`` names the
    field that holds a magic value, so callers can check it uniformly.
    """

    BYTE_ORDER: ClassVar[str] = "little"
    _layout_cache: ClassVar[Dict[type, List[Tuple[str, _Codec[Any]]]]] = {}

    @classmethod
    def _layout(cls) -> List[Tuple[str, _Codec[Any]]]:
        layout = Structure._layout_cache.get(cls)
        if layout is None:
            layout = [(f.name, f.metadata[_CODEC_KEY]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            Structure._layout_cache[cls] = layout
        return layout

    @classmethod
    def struct_size(cls) -> int:
        """Size in bytes of the packed structure."""
        return sum(codec.size for _, codec in cls._layout())

    @classmethod
    def unpack(cls: Type[_S], data: bytes, offset: int = 0) -> _S:
        """Decode the structure at ``offset`` of ``data``; raises ``ValueError`` if too short."""
        size = cls.struct_size()
        if offset < 0 or len(data) - offset < size:
            raise ValueError(f"{cls.__name__} needs {size} bytes at offset {offset}, have {len(data)}")
        values: Dict[str, Any] = {}
        pos = offset
        for name, codec in cls._layout():
            values[name] = codec.decode(data[pos : pos + codec.size], cls.BYTE_ORDER)
            pos += codec.size
        return cls(**values)

    def pack(self) -> bytes:
        """Encode the structure to exactly ``struct_size()`` bytes."""
        return b"".join(codec.encode(getattr(self, name), self.BYTE_ORDER) for name, codec in self._layout())

    @classmethod
    def field_offset(cls, name: str) -> int:
        """Byte offset of field ``name`` inside the packed structure."""
        pos = 0
        for fname, codec in cls._layout():
            if fname == name:
                return pos
            pos += codec.size
        raise KeyError(name)


# -- VHDX structures ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VhdxFileIdentifier(Structure):
    """[MS-VHDX] 2.2.1 File Type Identifier, at offset 0 (the rest of its 64 KiB is reserved)."""

    SIGNATURE: ClassVar[bytes] = b"vhdxfile"

    signature: bytes = _raw(8, b"vhdxfile")
    creator: str = _utf16(512, "utf-16-le")


@dataclasses.dataclass(frozen=True)
class VhdxHeader(Structure):
    """[MS-VHDX] 2.2.2 Header, 4 KiB at 64 KiB (header 1) and 128 KiB (header 2).

    ``checksum`` is CRC-32C over the 4 KiB with the field zeroed; the valid header with the larger
    ``sequence_number`` is current.  ``log_guid`` non-zero means the log may hold unapplied entries.
    """

    SIGNATURE: ClassVar[bytes] = b"head"

    signature: bytes = _raw(4, b"head")
    checksum: int = _u32()
    sequence_number: int = _u64()
    file_write_guid: uuid.UUID = _guid()
    data_write_guid: uuid.UUID = _guid()
    log_guid: uuid.UUID = _guid()
    log_version: int = _u16()
    version: int = _u16(1)
    log_length: int = _u32()
    log_offset: int = _u64()
    reserved: bytes = _reserved(4016)

    def with_checksum(self) -> VhdxHeader:
        """Return a copy whose ``checksum`` is correct for its contents."""
        return dataclasses.replace(self, checksum=vhdx_checksum(dataclasses.replace(self, checksum=0).pack()))


@dataclasses.dataclass(frozen=True)
class RegionTableHeader(Structure):
    """[MS-VHDX] 2.2.3.1 Region Table Header; the table is 64 KiB at 192 KiB and again at 256 KiB.

    ``checksum`` is CRC-32C over the whole 64 KiB table with the field zeroed; ``entry_count`` <= 2047.
    """

    SIGNATURE: ClassVar[bytes] = b"regi"

    signature: bytes = _raw(4, b"regi")
    checksum: int = _u32()
    entry_count: int = _u32()
    reserved: bytes = _reserved(4)


@dataclasses.dataclass(frozen=True)
class RegionTableEntry(Structure):
    """[MS-VHDX] 2.2.3.2 Region Table Entry (offset and length are multiples of 1 MiB)."""

    guid: uuid.UUID = _guid()
    file_offset: int = _u64()
    length: int = _u32()
    flags: int = _u32()


@dataclasses.dataclass(frozen=True)
class MetadataTableHeader(Structure):
    """[MS-VHDX] 2.6.1.1 Metadata Table Header, at the start of the metadata region (64 KiB table)."""

    SIGNATURE: ClassVar[bytes] = b"metadata"

    signature: bytes = _raw(8, b"metadata")
    reserved: bytes = _reserved(2)
    entry_count: int = _u16()
    reserved2: bytes = _reserved(20)


@dataclasses.dataclass(frozen=True)
class MetadataTableEntry(Structure):
    """[MS-VHDX] 2.6.1.2 Metadata Table Entry; ``offset`` is relative to the region, >= 64 KiB."""

    item_id: uuid.UUID = _guid()
    offset: int = _u32()
    length: int = _u32()
    flags: int = _u32()
    reserved: bytes = _reserved(4)


@dataclasses.dataclass(frozen=True)
class FileParameters(Structure):
    """[MS-VHDX] 2.6.2.1 File Parameters item: block size (1 MiB - 256 MiB, power of two) and flags."""

    block_size: int = _u32()
    flags: int = _u32()


@dataclasses.dataclass(frozen=True)
class VirtualDiskSizeItem(Structure):
    """[MS-VHDX] 2.6.2.2 Virtual Disk Size item (bytes, a multiple of the logical sector size)."""

    virtual_disk_size: int = _u64()


@dataclasses.dataclass(frozen=True)
class VirtualDiskIdItem(Structure):
    """[MS-VHDX] 2.6.2.3 Page 83 Data item: the disk identity the guest sees."""

    virtual_disk_id: uuid.UUID = _guid()


@dataclasses.dataclass(frozen=True)
class SectorSizeItem(Structure):
    """[MS-VHDX] 2.6.2.4 / 2.6.2.5 Logical and Physical Sector Size items (512 or 4096)."""

    sector_size: int = _u32()


@dataclasses.dataclass(frozen=True)
class ParentLocatorHeader(Structure):
    """[MS-VHDX] 2.6.2.6 Parent Locator header; key/value entries follow it."""

    locator_type: uuid.UUID = _guid(VHDX_PARENT_LOCATOR_TYPE_GUID)
    reserved: bytes = _reserved(2)
    key_value_count: int = _u16()


@dataclasses.dataclass(frozen=True)
class ParentLocatorEntry(Structure):
    """[MS-VHDX] 2.6.2.6.1 Parent Locator entry; offsets are from the start of the locator item,
    keys and values are UTF-16LE without terminator."""

    key_offset: int = _u32()
    value_offset: int = _u32()
    key_length: int = _u16()
    value_length: int = _u16()


@dataclasses.dataclass(frozen=True)
class BatEntry:
    """[MS-VHDX] 2.5.1 BAT entry (u64): ``state`` in bits 0-2, ``file_offset_mb`` in bits 20-63."""

    SIZE: ClassVar[int] = 8

    state: int
    file_offset_mb: int

    @property
    def file_offset(self) -> int:
        """Byte offset of the block in the file."""
        return self.file_offset_mb * MiB

    @classmethod
    def from_int(cls, value: int) -> BatEntry:
        """Decode the little-endian u64 value of an entry (reserved bits 3-19 are ignored)."""
        return cls(state=value & BAT_STATE_MASK, file_offset_mb=(value & BAT_FILE_OFFSET_MASK) >> 20)

    def to_int(self) -> int:
        """Encode to the u64 value."""
        return (self.file_offset_mb << 20) | (self.state & BAT_STATE_MASK)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> BatEntry:
        """Decode the entry at ``offset`` of ``data``."""
        if offset < 0 or len(data) - offset < cls.SIZE:
            raise ValueError(f"BatEntry needs 8 bytes at offset {offset}, have {len(data)}")
        return cls.from_int(int.from_bytes(data[offset : offset + 8], "little"))

    def pack(self) -> bytes:
        """Encode to 8 little-endian bytes."""
        return self.to_int().to_bytes(8, "little")


# -- VHD structures (big-endian) ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VhdParentLocatorEntry(Structure):
    """VHD spec, Dynamic Disk Header "Parent Locator Entries": 8 slots of 24 bytes.

    Platform codes Hyper-V writes: ``W2ru`` (relative path) and ``W2ku`` (absolute path), both
    UTF-16LE.  ``platform_data_length`` is the byte length of the locator data.
    """

    BYTE_ORDER: ClassVar[str] = "big"

    platform_code: bytes = _raw(4)
    platform_data_space: int = _u32()
    platform_data_length: int = _u32()
    reserved: bytes = _reserved(4)
    platform_data_offset: int = _u64()


@dataclasses.dataclass(frozen=True)
class VhdFooter(Structure):
    """VHD spec, "Hard Disk Footer Format": 512 bytes at the end of every VHD (and a copy at offset 0
    of dynamic and differencing disks).  ``checksum`` is the one's complement of the byte sum of the
    footer with the field zeroed."""

    BYTE_ORDER: ClassVar[str] = "big"
    SIGNATURE: ClassVar[bytes] = b"conectix"

    cookie: bytes = _raw(8, b"conectix")
    features: int = _u32(2)
    file_format_version: int = _u32(0x00010000)
    data_offset: int = _u64(0xFFFFFFFFFFFFFFFF)
    timestamp: int = _u32()
    creator_application: bytes = _raw(4)
    creator_version: int = _u32()
    creator_host_os: bytes = _raw(4)
    original_size: int = _u64()
    current_size: int = _u64()
    cylinders: int = _u16()
    heads: int = _u8()
    sectors_per_track: int = _u8()
    disk_type: int = _u32()
    checksum: int = _u32()
    unique_id: uuid.UUID = _guid()
    saved_state: int = _u8()
    reserved: bytes = _reserved(427)

    def with_checksum(self) -> VhdFooter:
        """Return a copy whose ``checksum`` is correct for its contents."""
        return dataclasses.replace(self, checksum=vhd_checksum(dataclasses.replace(self, checksum=0).pack()))


@dataclasses.dataclass(frozen=True)
class VhdDynamicHeader(Structure):
    """VHD spec, "Dynamic Disk Header Format": 1024 bytes at the footer's ``data_offset``.

    ``parent_unicode_name`` is UTF-16 **big-endian**; the BAT of ``max_table_entries`` u32 sector
    numbers (0xFFFFFFFF = unallocated) is at ``table_offset``.
    """

    BYTE_ORDER: ClassVar[str] = "big"
    SIGNATURE: ClassVar[bytes] = b"cxsparse"

    cookie: bytes = _raw(8, b"cxsparse")
    data_offset: int = _u64(0xFFFFFFFFFFFFFFFF)
    table_offset: int = _u64()
    header_version: int = _u32(0x00010000)
    max_table_entries: int = _u32()
    block_size: int = _u32(2 * MiB)
    checksum: int = _u32()
    parent_unique_id: uuid.UUID = _guid()
    parent_timestamp: int = _u32()
    reserved: bytes = _reserved(4)
    parent_unicode_name: str = _utf16(512, "utf-16-be")
    parent_locators: Tuple[VhdParentLocatorEntry, ...] = _array(VhdParentLocatorEntry, 8)
    reserved2: bytes = _reserved(256)

    def with_checksum(self) -> VhdDynamicHeader:
        """Return a copy whose ``checksum`` is correct for its contents."""
        return dataclasses.replace(self, checksum=vhd_checksum(dataclasses.replace(self, checksum=0).pack()))


# -- checksums ------------------------------------------------------------------------------------


def vhdx_checksum(raw: bytes, checksum_offset: int = 4) -> int:
    """CRC-32C of a VHDX header or region table ``raw`` with its checksum field treated as zero."""
    return crc32c(raw[:checksum_offset] + b"\0\0\0\0" + raw[checksum_offset + 4 :])


def vhd_checksum(raw: bytes, checksum_offset: int | None = None) -> int:
    """VHD footer/dynamic header checksum: one's complement of the byte sum, checksum field skipped.

    ``checksum_offset`` defaults to the footer's (64) for 512-byte input and the dynamic header's
    (36) for 1024-byte input.
    """
    if checksum_offset is None:
        checksum_offset = VhdFooter.field_offset("checksum") if len(raw) == 512 else 36
    total = sum(raw) - sum(raw[checksum_offset : checksum_offset + 4])
    return ~total & 0xFFFFFFFF
