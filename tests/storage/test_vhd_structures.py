"""Byte-exact pack/unpack of the VHD/VHDX structures, against hand-written bytes and real files."""

from __future__ import annotations

import bz2
import gzip
import struct
import uuid
from pathlib import Path

import pytest

from bareos_hyperv.storage.vhd.crc32c import crc32c
from bareos_hyperv.storage.vhd.structures import (
    BAT_REGION_GUID,
    FILE_PARAMETERS_GUID,
    VHDX_PARENT_LOCATOR_TYPE_GUID,
    BatEntry,
    FileParameters,
    FileParametersFlags,
    MetadataTableEntry,
    MetadataTableHeader,
    ParentLocatorEntry,
    ParentLocatorHeader,
    PayloadBlockState,
    RegionTableEntry,
    RegionTableHeader,
    VhdDynamicHeader,
    VhdFooter,
    VhdParentLocatorEntry,
    VhdxFileIdentifier,
    VhdxHeader,
    vhd_checksum,
    vhdx_checksum,
)

FIXTURES = (Path(__file__).resolve().parents[2] / "tests/fixtures/shared/vhd")
GUID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
# The same GUID in Windows mixed-endian (bytes_le) order and in RFC 4122 (big-endian) order, by hand.
GUID_LE = bytes.fromhex("33221100 5544 7766 8899 aabbccddeeff".replace(" ", ""))


def _head(name: str, length: int) -> bytes:
    path = FIXTURES / name
    opener = gzip.open if name.endswith(".gz") else bz2.open
    with opener(path, "rb") as fh:
        return fh.read(length)


def _tail(name: str, length: int) -> bytes:
    path = FIXTURES / name
    opener = gzip.open if name.endswith(".gz") else bz2.open
    with opener(path, "rb") as fh:
        data = fh.read()
    return data[-length:]


def test_vhdx_header_known_bytes() -> None:
    header = VhdxHeader(
        checksum=0x11223344,
        sequence_number=0x0102030405060708,
        file_write_guid=GUID,
        data_write_guid=BAT_REGION_GUID,
        log_guid=uuid.UUID(int=0),
        log_version=0,
        version=1,
        log_length=0x100000,
        log_offset=0x100000,
    )
    expected = (
        b"head"
        + bytes.fromhex("44332211")
        + bytes.fromhex("0807060504030201")
        + GUID_LE
        + bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
        + bytes(16)
        + bytes.fromhex("0000 0100".replace(" ", ""))
        + bytes.fromhex("00001000")
        + bytes.fromhex("0000100000000000")
    )
    packed = header.pack()
    assert len(packed) == VhdxHeader.struct_size() == 4096
    assert packed[: len(expected)] == expected
    assert packed[len(expected) :] == bytes(4096 - len(expected))
    assert VhdxHeader.unpack(packed) == header


def test_vhdx_header_checksum() -> None:
    header = VhdxHeader(sequence_number=7, data_write_guid=GUID).with_checksum()
    raw = header.pack()
    assert header.checksum == crc32c(raw[:4] + bytes(4) + raw[8:])
    assert vhdx_checksum(raw) == header.checksum


def test_file_identifier_known_bytes() -> None:
    ident = VhdxFileIdentifier(creator="qemu")
    packed = ident.pack()
    assert packed == b"vhdxfile" + "qemu".encode("utf-16-le") + bytes(512 - 8)
    assert VhdxFileIdentifier.unpack(packed) == ident


def test_region_table_known_bytes() -> None:
    header = RegionTableHeader(checksum=0xDEADBEEF, entry_count=2)
    assert header.pack() == b"regi" + bytes.fromhex("efbeadde") + bytes.fromhex("02000000") + bytes(4)
    entry = RegionTableEntry(guid=BAT_REGION_GUID, file_offset=3 * 1024 * 1024, length=1024 * 1024, flags=1)
    expected = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08") + struct.pack("<QII", 3 << 20, 1 << 20, 1)
    assert entry.pack() == expected
    assert RegionTableEntry.unpack(b"junk" + expected, 4) == entry


def test_metadata_table_known_bytes() -> None:
    header = MetadataTableHeader(entry_count=5)
    assert header.pack() == b"metadata" + bytes(2) + b"\x05\x00" + bytes(20)
    entry = MetadataTableEntry(item_id=FILE_PARAMETERS_GUID, offset=0x10000, length=8, flags=0x4)
    guid_le = bytes.fromhex("3767a1ca36fa434db3b633f0aa44e76b")
    assert entry.pack() == guid_le + struct.pack("<III", 0x10000, 8, 4) + bytes(4)
    assert MetadataTableEntry.unpack(entry.pack()) == entry
    params = FileParameters(block_size=32 << 20, flags=FileParametersFlags.HAS_PARENT)
    assert params.pack() == bytes.fromhex("00000002 02000000".replace(" ", ""))
    assert FileParameters.unpack(params.pack()) == params


def test_parent_locator_known_bytes() -> None:
    header = ParentLocatorHeader(key_value_count=3)
    assert (
        header.pack() == bytes.fromhex("b7ef4ab0 9ed1 814a b78925b8e9445913".replace(" ", "")) + b"\0\0\x03\0"
    )
    assert ParentLocatorHeader.unpack(header.pack()).locator_type == VHDX_PARENT_LOCATOR_TYPE_GUID
    entry = ParentLocatorEntry(key_offset=0x20, value_offset=0x40, key_length=28, value_length=76)
    assert entry.pack() == struct.pack("<IIHH", 0x20, 0x40, 28, 76)
    assert ParentLocatorEntry.unpack(entry.pack()) == entry


def test_bat_entry_bits() -> None:
    entry = BatEntry(state=PayloadBlockState.FULLY_PRESENT, file_offset_mb=5)
    assert entry.pack() == (5 * 1024 * 1024 + 6).to_bytes(8, "little")
    assert entry.file_offset == 5 * 1024 * 1024
    # Reserved bits 3-19 are ignored on decode.
    assert BatEntry.from_int((5 << 20) | 0xFFFF8 | 7) == BatEntry(state=7, file_offset_mb=5)
    assert BatEntry.unpack(bytes(3) + entry.pack(), 3) == entry
    with pytest.raises(ValueError):
        BatEntry.unpack(b"\0" * 7)


def test_vhd_footer_known_bytes_and_checksum() -> None:
    footer = VhdFooter(
        features=2,
        data_offset=512,
        timestamp=0x260CF38F,
        creator_application=b"win ",
        creator_version=0x000A0000,
        creator_host_os=b"Wi2k",
        original_size=10 << 20,
        current_size=10 << 20,
        cylinders=301,
        heads=4,
        sectors_per_track=17,
        disk_type=3,
        unique_id=GUID,
    ).with_checksum()
    expected_head = (
        b"conectix"
        + bytes.fromhex("00000002 00010000 0000000000000200 260cf38f".replace(" ", ""))
        + b"win "
        + bytes.fromhex("000a0000")
        + b"Wi2k"
        + struct.pack(">QQHBBI", 10 << 20, 10 << 20, 301, 4, 17, 3)
    )
    packed = footer.pack()
    assert len(packed) == 512
    assert packed[:64] == expected_head
    assert packed[68:84] == GUID_LE
    assert packed[84:] == bytes(512 - 84)
    # One's complement of the byte sum with the checksum field left out.
    assert int.from_bytes(packed[64:68], "big") == ~sum(packed[:64] + packed[68:]) & 0xFFFFFFFF
    assert VhdFooter.unpack(packed) == footer


def test_vhd_dynamic_header_known_bytes() -> None:
    locators = (
        VhdParentLocatorEntry(
            platform_code=b"W2ru", platform_data_space=512, platform_data_length=20, platform_data_offset=2048
        ),
        *tuple(VhdParentLocatorEntry() for _ in range(7)),
    )
    dyn = VhdDynamicHeader(
        table_offset=1536,
        max_table_entries=5,
        block_size=2 << 20,
        parent_unique_id=GUID,
        parent_timestamp=0x01020304,
        parent_unicode_name="base.vhd",
        parent_locators=locators,
    ).with_checksum()
    packed = dyn.pack()
    assert len(packed) == 1024
    assert packed[:36] == b"cxsparse" + b"\xff" * 8 + struct.pack(">QIII", 1536, 0x10000, 5, 2 << 20)
    assert packed[40:56] == GUID_LE
    assert packed[56:60] == b"\x01\x02\x03\x04"
    assert packed[64:80] == "base.vhd".encode("utf-16-be")
    assert packed[576:600] == b"W2ru" + struct.pack(">IIIQ", 512, 20, 0, 0x800)
    assert vhd_checksum(packed) == dyn.checksum == ~(sum(packed) - sum(packed[36:40])) & 0xFFFFFFFF
    assert VhdDynamicHeader.unpack(packed) == dyn


@pytest.mark.parametrize(
    "name", ["dissect-dynamic.vhdx.gz", "dissect-fixed.vhdx.gz", "qemu-iotest-dynamic-1G.vhdx.bz2"]
)
def test_vhdx_fixture_structures_round_trip(name: str) -> None:
    head = _head(name, 320 * 1024)
    assert VhdxFileIdentifier.unpack(head).signature == b"vhdxfile"
    for offset in (64 * 1024, 128 * 1024):
        raw = head[offset : offset + 4096]
        header = VhdxHeader.unpack(raw)
        assert header.pack() == raw
        assert header.checksum == vhdx_checksum(raw)
        assert header.with_checksum() == header
    for offset in (192 * 1024, 256 * 1024):
        table = RegionTableHeader.unpack(head, offset)
        assert table.pack() == head[offset : offset + 16]
        assert table.checksum == vhdx_checksum(head[offset : offset + 65536])
        for i in range(table.entry_count):
            pos = offset + 16 + 32 * i
            assert RegionTableEntry.unpack(head, pos).pack() == head[pos : pos + 32]


@pytest.mark.parametrize(
    "name", ["dissect-dynamic.vhd.gz", "dissect-fixed.vhd.gz", "qemu-hyperv2012r2-dynamic.vhd.bz2"]
)
def test_vhd_fixture_structures_round_trip(name: str) -> None:
    raw = _tail(name, 512)
    footer = VhdFooter.unpack(raw)
    assert footer.pack() == raw
    assert footer.creator_application == b"win "
    assert footer.with_checksum() == footer
    if footer.disk_type != 2:
        head = _head(name, footer.data_offset + 1024)
        dyn_raw = head[footer.data_offset :]
        dyn = VhdDynamicHeader.unpack(dyn_raw)
        assert dyn.pack() == dyn_raw
        assert dyn.with_checksum() == dyn


def test_unpack_short_and_pack_overflow_raise_value_error() -> None:
    with pytest.raises(ValueError):
        VhdxHeader.unpack(bytes(4095))
    with pytest.raises(ValueError):
        VhdFooter(creator_application=b"toolong").pack()
    with pytest.raises(ValueError):
        VhdxFileIdentifier(creator="x" * 300).pack()
    assert VhdxHeader.field_offset("log_guid") == 48
    with pytest.raises(KeyError):
        VhdxHeader.field_offset("nope")


def test_vhd_unique_ids_of_windows_files_are_version_4_guids(tmp_path: Path) -> None:
    """Windows writes VHD UniqueId as a GUID structure (mixed-endian), as Hyper-V's DiskIdentifier shows."""
    from bareos_hyperv.storage.vhd import open_file

    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "shared" / "vhd"
    for name in ("dissect-fixed.vhd.gz", "dissect-dynamic.vhd.gz"):
        out = tmp_path / name[:-3]
        out.write_bytes(gzip.decompress((fixtures / name).read_bytes()))
        disk = open_file(str(out))
        assert disk.layout.virtual_disk_id is not None
        assert disk.layout.virtual_disk_id.version == 4, name
