"""VHD/VHDX reader: real disks against qemu-img, hand-built differencing chains, refusals, hostile input.

Oracles: ``qemu-img info``/``convert``/``map`` (qemu-utils) for every fixture and for disks made by
``qemu-img create`` + ``qemu-io``; for differencing disks (qemu cannot make or read them) the
expected content is computed from what the test wrote.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Set, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.vhd import (
    BlockKind,
    BytesSource,
    DiskFormat,
    DiskType,
    ExtentKind,
    FileRange,
    FileSource,
    VhdChainError,
    VhdCorruptError,
    VhdError,
    VhdFormatError,
    VhdLimitError,
    VhdLogReplayRequiredError,
    VhdRangeError,
    VhdTruncatedError,
    VhdUnsupportedError,
    VirtualDisk,
    locate_parent,
    open_disk,
    open_file,
    parent_candidates,
    resolve_chain,
)
from bareos_hyperv.storage.vhd.structures import (
    BAT_REGION_GUID,
    FILE_PARAMETERS_GUID,
    LOGICAL_SECTOR_SIZE_GUID,
    METADATA_REGION_GUID,
    NIL_GUID,
    PARENT_LOCATOR_GUID,
    PHYSICAL_SECTOR_SIZE_GUID,
    VIRTUAL_DISK_ID_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    BatEntry,
    FileParameters,
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
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io")
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".gz", ".bz2"))

pytestmark = pytest.mark.qemu


# -- helpers --------------------------------------------------------------------------------------


def _decompress(name: str, dest: Path) -> Path:
    src = FIXTURES / name
    out = dest / name.rsplit(".", 1)[0]
    if not out.exists():
        opener = gzip.open if name.endswith(".gz") else bz2.open
        with opener(src, "rb") as fin, out.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 4 * MiB)
    return out


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vhd-fixtures")


def _qemu_fmt(path: Path) -> str:
    return "vhdx" if path.suffix == ".vhdx" else "vpc"


def _qemu_info(path: Path) -> Dict[str, object]:
    out = subprocess.run(
        [QEMU_IMG, "info", "-f", _qemu_fmt(path), "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _qemu_map(path: Path) -> List[Dict[str, object]]:
    out = subprocess.run(
        [QEMU_IMG, "map", "-f", _qemu_fmt(path), "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _qemu_raw_sha(path: Path, tmp: Path) -> str:
    raw = tmp / (path.name + ".raw")
    subprocess.run([QEMU_IMG, "convert", "-f", _qemu_fmt(path), "-O", "raw", str(path), str(raw)], check=True)
    digest = _sha_file(raw)
    raw.unlink()
    return digest


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(8 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha_virtual(read: Callable[[int, int], bytes], size: int, step: int = 32 * MiB) -> str:
    h = hashlib.sha256()
    for off in range(0, size, step):
        h.update(read(off, min(step, size - off)))
    return h.hexdigest()


def _qemu_create(
    path: Path, fmt: str, size: int, options: str, writes: Sequence[Tuple[int, int, int]]
) -> Path:
    subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, "-o", options, str(path), str(size)], check=True)
    if writes:
        if QEMU_IO:
            cmd = [QEMU_IO, "-f", fmt]
            for pattern, offset, length in writes:
                cmd += ["-c", f"write -P {pattern:#x} {offset} {length}"]
            subprocess.run([*cmd, str(path)], check=True, capture_output=True)
        else:  # pragma: no cover - qemu-io ships with qemu-utils; keep a path without it
            raw = path.with_suffix(".src.raw")
            with raw.open("wb") as fh:
                fh.truncate(size)
                for pattern, offset, length in writes:
                    fh.seek(offset)
                    fh.write(bytes([pattern]) * length)
            subprocess.run(
                [QEMU_IMG, "convert", "-f", "raw", "-O", fmt, "-o", options, str(raw), str(path)], check=True
            )
            raw.unlink()
    return path


def _check_consistent(disk: VirtualDisk, read_limit: int = 4 * MiB) -> None:
    """Invariants any successfully opened disk must satisfy (used on real and on mutated files)."""
    lay = disk.layout
    pos = 0
    for ext in disk.extents():
        assert ext.virtual_offset == pos and ext.length > 0
        pos = ext.virtual_end
        if ext.kind is ExtentKind.DATA:
            assert ext.file_offset is not None
            assert ext.file_offset >= 0 and ext.file_offset + ext.length <= lay.file_size
            for meta in lay.metadata_ranges:
                assert not (ext.file_offset < meta.end and meta.offset < ext.file_offset + ext.length), (
                    ext,
                    meta,
                )
        else:
            assert ext.file_offset is None
    assert pos == lay.virtual_size
    for block in disk.map_virtual_ranges([(0, min(lay.virtual_size, 64 * MiB))]):
        for rng in block.file_ranges:
            assert rng.end <= lay.file_size
    n = min(lay.virtual_size, read_limit)
    if not lay.is_differencing and n:
        assert len(disk.read_virtual(0, n)) == n
        assert len(disk.read_virtual(lay.virtual_size - min(n, 4096), min(n, 4096))) == min(n, 4096)


# -- hand-built disks (differencing and exact-layout tests) ---------------------------------------


@dataclasses.dataclass
class VhdxSpec:
    virtual_size: int
    block_size: int = 1 * MiB
    logical: int = 512
    physical: int = 4096
    fixed: bool = False
    locator: Dict[str, str] | None = None  # set -> differencing
    full: Dict[int, bytes] = dataclasses.field(default_factory=dict)  # block -> content
    partial: Dict[int, Tuple[bytes, Set[int]]] = dataclasses.field(
        default_factory=dict
    )  # block -> (content, sectors)
    states: Dict[int, int] = dataclasses.field(default_factory=dict)  # block -> non-allocated state
    data_write_guid: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    log_guid: uuid.UUID = NIL_GUID
    sequence: Tuple[int, int] = (1, 2)
    extra_regions: Sequence[RegionTableEntry] = ()
    extra_metadata: Sequence[MetadataTableEntry] = ()


def build_vhdx(spec: VhdxSpec) -> bytearray:
    """Write a VHDX per [MS-VHDX] from the spec (log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB)."""
    bs, lss = spec.block_size, spec.logical
    has_parent = spec.locator is not None
    chunk_ratio = (1 << 23) * lss // bs
    blocks = -(-spec.virtual_size // bs)
    sb_blocks = -(-blocks // chunk_ratio)
    entries = (
        sb_blocks * (chunk_ratio + 1)
        if has_parent
        else (blocks + (blocks - 1) // chunk_ratio if blocks else 0)
    )
    bat_len = max(MiB, -(-entries * 8 // MiB) * MiB)
    bat_off, meta_off, log_off = 3 * MiB, 2 * MiB, 1 * MiB
    next_free = bat_off + bat_len
    bat = [0] * entries
    payload: List[Tuple[int, bytes]] = []

    def alloc(data: bytes, size: int) -> int:
        nonlocal next_free
        off = next_free
        payload.append((off, data))
        next_free += -(-size // MiB) * MiB
        return off

    for block, content in spec.full.items():
        bat[block + block // chunk_ratio] = alloc(content, bs) | PayloadBlockState.FULLY_PRESENT
    for block, state in spec.states.items():
        bat[block + block // chunk_ratio] = state
    bitmaps: Dict[int, bytearray] = {}
    for block, (content, sectors) in spec.partial.items():
        bat[block + block // chunk_ratio] = alloc(content, bs) | PayloadBlockState.PARTIALLY_PRESENT
        bitmap = bitmaps.setdefault(block // chunk_ratio, bytearray(MiB))
        for s in sectors:
            bit = (block % chunk_ratio) * (bs // lss) + s
            bitmap[bit // 8] |= 1 << (bit % 8)  # LSB first
    for chunk, bitmap in bitmaps.items():
        bat[chunk * (chunk_ratio + 1) + chunk_ratio] = alloc(bytes(bitmap), MiB) | 6

    out = bytearray(next_free)
    out[0:520] = VhdxFileIdentifier(creator="bareos-hyperv test builder").pack()
    for number, (offset, seq) in enumerate(zip((64 * KiB, 128 * KiB), spec.sequence)):
        header = VhdxHeader(
            sequence_number=seq,
            file_write_guid=uuid.UUID(int=number + 1),
            data_write_guid=spec.data_write_guid,
            log_guid=spec.log_guid,
            log_length=MiB,
            log_offset=log_off,
        ).with_checksum()
        out[offset : offset + 4096] = header.pack()
    regions = [
        RegionTableEntry(guid=BAT_REGION_GUID, file_offset=bat_off, length=bat_len, flags=1),
        RegionTableEntry(guid=METADATA_REGION_GUID, file_offset=meta_off, length=MiB, flags=1),
        *spec.extra_regions,
    ]
    table = bytearray(64 * KiB)
    table[0:16] = RegionTableHeader(entry_count=len(regions)).pack()
    for i, region in enumerate(regions):
        table[16 + 32 * i : 48 + 32 * i] = region.pack()
    table[4:8] = vhdx_checksum(bytes(table)).to_bytes(4, "little")
    out[192 * KiB : 256 * KiB] = table
    out[256 * KiB : 320 * KiB] = table

    flags = (1 if spec.fixed else 0) | (2 if has_parent else 0)
    items: List[Tuple[uuid.UUID, bytes, int]] = [
        (FILE_PARAMETERS_GUID, FileParameters(block_size=bs, flags=flags).pack(), 0x4),
        (VIRTUAL_DISK_SIZE_GUID, spec.virtual_size.to_bytes(8, "little"), 0x6),
        (VIRTUAL_DISK_ID_GUID, uuid.UUID(int=0xD15C).bytes_le, 0x6),
        (LOGICAL_SECTOR_SIZE_GUID, lss.to_bytes(4, "little"), 0x6),
        (PHYSICAL_SECTOR_SIZE_GUID, spec.physical.to_bytes(4, "little"), 0x6),
    ]
    if spec.locator is not None:
        kv = list(spec.locator.items())
        blob = bytearray(ParentLocatorHeader(key_value_count=len(kv)).pack())
        blob += bytes(12 * len(kv))
        for i, (key, value) in enumerate(kv):
            k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
            koff = len(blob)
            blob += k
            voff = len(blob)
            blob += v
            entry = ParentLocatorEntry(
                key_offset=koff, value_offset=voff, key_length=len(k), value_length=len(v)
            )
            blob[20 + 12 * i : 32 + 12 * i] = entry.pack()
        items.append((PARENT_LOCATOR_GUID, bytes(blob), 0x4))
    meta = bytearray(MiB)
    entries_meta = [
        *(MetadataTableEntry(item_id=i, offset=0, length=0, flags=f) for i, _, f in items),
        *spec.extra_metadata,
    ]
    pos = 64 * KiB
    for i, (_item_id, blob_bytes, _f) in enumerate(items):
        entries_meta[i] = dataclasses.replace(entries_meta[i], offset=pos, length=len(blob_bytes))
        meta[pos : pos + len(blob_bytes)] = blob_bytes
        pos += -(-len(blob_bytes) // 8) * 8
    meta[0:32] = MetadataTableHeader(entry_count=len(entries_meta)).pack()
    for i, meta_entry in enumerate(entries_meta):
        meta[32 + 32 * i : 64 + 32 * i] = meta_entry.pack()
    out[meta_off : meta_off + MiB] = meta
    for i, bat_value in enumerate(bat):
        out[bat_off + 8 * i : bat_off + 8 * i + 8] = bat_value.to_bytes(8, "little")
    for off, data in payload:
        out[off : off + len(data)] = data
    return out


def build_vhd_diff(
    virtual_size: int,
    parent_unique_id: uuid.UUID,
    locators: Mapping[bytes, str],
    partial: Mapping[int, Tuple[bytes, Set[int]]],
    block_size: int = 2 * MiB,
    unique_id: uuid.UUID | None = None,
    parent_name: str = "parent.vhd",
) -> bytearray:
    """A differencing VHD: footer copy, dynamic header, BAT, locator data, blocks with MSB-first bitmaps."""
    blocks = -(-virtual_size // block_size)
    bat_off = 1536
    bat_len = -(-blocks * 4 // 512) * 512
    pos = bat_off + bat_len
    loc_entries: List[VhdParentLocatorEntry] = []
    loc_data: List[Tuple[int, bytes]] = []
    for code, path in locators.items():
        data = path.encode("utf-16-le")
        loc_entries.append(
            VhdParentLocatorEntry(
                platform_code=code,
                platform_data_space=512,
                platform_data_length=len(data),
                platform_data_offset=pos,
            )
        )
        loc_data.append((pos, data))
        pos += -(-len(data) // 512) * 512
    loc_entries += [VhdParentLocatorEntry() for _ in range(8 - len(loc_entries))]
    bitmap_size = -(-(block_size // 512 // 8) // 512) * 512
    bat = [0xFFFFFFFF] * blocks
    block_data: List[Tuple[int, bytes]] = []
    for block, (content, sectors) in sorted(partial.items()):
        bat[block] = pos // 512
        bitmap = bytearray(bitmap_size)
        for s in sectors:
            bitmap[s // 8] |= 0x80 >> (s % 8)  # MSB first
        block_data.append((pos, bytes(bitmap) + content))
        pos += bitmap_size + block_size
    footer = VhdFooter(
        data_offset=512,
        creator_application=b"win ",
        creator_host_os=b"Wi2k",
        original_size=virtual_size,
        current_size=virtual_size,
        cylinders=1,
        heads=1,
        sectors_per_track=1,
        disk_type=4,
        unique_id=unique_id or uuid.uuid4(),
    ).with_checksum()
    dyn = VhdDynamicHeader(
        table_offset=bat_off,
        max_table_entries=blocks,
        block_size=block_size,
        parent_unique_id=parent_unique_id,
        parent_unicode_name=parent_name,
        parent_locators=tuple(loc_entries),
    ).with_checksum()
    out = bytearray(pos + 512)
    out[0:512] = footer.pack()
    out[512:1536] = dyn.pack()
    for i, sector in enumerate(bat):
        out[bat_off + 4 * i : bat_off + 4 * i + 4] = sector.to_bytes(4, "big")
    for off, data in loc_data + block_data:
        out[off : off + len(data)] = data
    out[-512:] = footer.pack()
    return out


def _pattern(seed: int, length: int) -> bytes:
    return hashlib.sha256(seed.to_bytes(4, "little")).digest() * (length // 32)


def _open_bytes(data: bytes, name: str = "mem.vhdx") -> VirtualDisk:
    return open_disk(BytesSource(data, name))


def _fix_vhdx_checksums(buf: bytearray) -> None:
    for off in (64 * KiB, 128 * KiB):
        buf[off + 4 : off + 8] = vhdx_checksum(bytes(buf[off : off + 4096])).to_bytes(4, "little")
    for off in (192 * KiB, 256 * KiB):
        buf[off + 4 : off + 8] = vhdx_checksum(bytes(buf[off : off + 64 * KiB])).to_bytes(4, "little")


def _fix_vhd_checksums(buf: bytearray) -> None:
    for off in (0, len(buf) - 512):
        if off >= 0 and buf[off : off + 8] == b"conectix":
            buf[off + 64 : off + 68] = vhd_checksum(bytes(buf[off : off + 512])).to_bytes(4, "big")
    data_offset = int.from_bytes(buf[-512 + 16 : -512 + 24], "big")
    if 0 < data_offset < len(buf) - 1024 and buf[data_offset : data_offset + 8] == b"cxsparse":
        raw = bytes(buf[data_offset : data_offset + 1024])
        buf[data_offset + 36 : data_offset + 40] = vhd_checksum(raw, 36).to_bytes(4, "big")


# -- real fixtures vs qemu-img --------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_matches_qemu(name: str, fixture_dir: Path, tmp_path: Path) -> None:
    path = _decompress(name, fixture_dir)
    info = _qemu_info(path)
    with open_file(path) as disk:
        lay = disk.layout
        assert lay.format is (DiskFormat.VHDX if path.suffix == ".vhdx" else DiskFormat.VHD)
        assert info["format"] == ("vhdx" if lay.format is DiskFormat.VHDX else "vpc")
        assert lay.virtual_size == info["virtual-size"]
        assert lay.block_size == info.get("cluster-size", 0)
        assert lay.file_size == path.stat().st_size
        assert lay.warnings == ()
        assert lay.creator.startswith("Microsoft Windows") or lay.creator == "win "
        _check_consistent(disk)
        if lay.virtual_size <= 2 * GiB:
            assert _sha_virtual(disk.read_virtual, lay.virtual_size) == _qemu_raw_sha(path, tmp_path)
        if lay.format is DiskFormat.VHD:
            _assert_map_matches_qemu(disk, path)


def _assert_map_matches_qemu(disk: VirtualDisk, path: Path) -> None:
    """qemu's vpc driver reports allocation; its data ranges and file offsets must equal ours."""
    ours = [(e.virtual_offset, e.length, e.file_offset) for e in disk.extents() if e.kind is ExtentKind.DATA]
    theirs: List[Tuple[int, int, int | None]] = []
    for item in _qemu_map(path):
        if not item["data"]:
            continue
        start, length, offset = int(str(item["start"])), int(str(item["length"])), int(str(item["offset"]))
        if theirs:
            p_start, p_length, p_offset = theirs[-1]
            if p_start + p_length == start and p_offset is not None and p_offset + p_length == offset:
                theirs[-1] = (p_start, p_length + length, p_offset)
                continue
        theirs.append((start, length, offset))
    assert ours == theirs


def test_fixture_facts(fixture_dir: Path) -> None:
    with open_file(_decompress("dissect-fixed.vhdx.gz", fixture_dir)) as fixed:
        assert fixed.layout.disk_type is DiskType.FIXED and fixed.layout.leave_blocks_allocated
        assert (fixed.layout.logical_sector_size, fixed.layout.physical_sector_size) == (512, 4096)
        assert fixed.layout.creator == "Microsoft Windows 10.0.18363.0"
    with open_file(_decompress("dissect-dynamic.vhdx.gz", fixture_dir)) as dyn:
        lay = dyn.layout
        assert lay.disk_type is DiskType.DYNAMIC and not lay.has_parent and lay.parent_locator is None
        raw = (fixture_dir / "dissect-dynamic.vhdx").read_bytes()[: 192 * KiB]
        current = max(
            (VhdxHeader.unpack(raw, 64 * KiB), VhdxHeader.unpack(raw, 128 * KiB)),
            key=lambda h: h.sequence_number,
        )
        assert lay.header_sequence_number == current.sequence_number
        assert lay.data_write_guid == current.data_write_guid
        assert lay.chunk_ratio == (1 << 23) * 512 // (32 * MiB)
        whats = [r.what for r in lay.metadata_ranges]
        assert whats == ["VHDX header section", "VHDX log", "VHDX metadata region", "VHDX BAT region"]
    with open_file(_decompress("qemu-hyperv2012r2-dynamic.vhd.bz2", fixture_dir)) as big:
        # Hyper-V sizes by current_size (127 GiB), which is larger than the CHS geometry.
        assert big.layout.virtual_size == 136365211648
        assert big.layout.chs_size is not None and big.layout.chs_size < big.layout.virtual_size
        assert list(big.allocated_extents()) == []
        assert [r.what for r in big.layout.metadata_ranges] == [
            "VHD footer copy",
            "VHD dynamic header",
            "VHD BAT",
            "VHD footer",
        ]


# -- disks made by qemu-img ------------------------------------------------------------------------

WRITES = [(0xAB, 0, 1 * MiB), (0xCD, 3 * MiB + 512, 512), (0x11, 6 * MiB - 4096, 8192)]
QEMU_DISKS = [
    ("vhdx", "subformat=dynamic,block_size=1M,log_size=1M", 8 * MiB),
    ("vhdx", "subformat=dynamic,block_size=8M,log_size=4M", 24 * MiB),
    ("vhdx", "subformat=dynamic,block_size=32M,log_size=1M,block_state_zero=off", 40 * MiB),
    ("vhdx", "subformat=fixed,block_size=2M,log_size=1M", 10 * MiB),
    ("vpc", "subformat=dynamic,force_size=on", 8 * MiB),
    ("vpc", "subformat=fixed,force_size=on", 8 * MiB),
]


@pytest.mark.parametrize(("fmt", "options", "size"), QEMU_DISKS)
def test_qemu_created_disk(fmt: str, options: str, size: int, tmp_path: Path) -> None:
    path = _qemu_create(tmp_path / f"d.{'vhdx' if fmt == 'vhdx' else 'vhd'}", fmt, size, options, WRITES)
    info = _qemu_info(path)
    with open_file(path) as disk:
        lay = disk.layout
        assert lay.virtual_size == info["virtual-size"] == size
        assert lay.block_size == info.get("cluster-size", 0)
        assert lay.disk_type is (DiskType.FIXED if "fixed" in options else DiskType.DYNAMIC)
        _check_consistent(disk)
        assert _sha_virtual(disk.read_virtual, size, 3 * MiB) == _qemu_raw_sha(path, tmp_path)
        for pattern, offset, length in WRITES:
            assert disk.read_virtual(offset, length) == bytes([pattern]) * length
        if fmt == "vpc":
            _assert_map_matches_qemu(disk, path)
        _assert_sparse_copy_reads_the_same(disk, path, tmp_path)


def _assert_sparse_copy_reads_the_same(disk: VirtualDisk, path: Path, tmp_path: Path) -> None:
    """Metadata ranges + the file ranges of every virtual byte rebuild a file that reads the same:
    what an incremental backup of a full RCT range would copy."""
    lay = disk.layout
    ranges = list(lay.metadata_ranges) + disk.file_ranges_for([(0, lay.virtual_size)])
    copy = tmp_path / ("copy" + path.suffix)
    with path.open("rb") as src, copy.open("wb") as dst:
        dst.truncate(lay.file_size)
        for rng in ranges:
            src.seek(rng.offset)
            dst.seek(rng.offset)
            dst.write(src.read(rng.length))
    with open_file(copy) as rebuilt:
        assert rebuilt.layout.virtual_size == lay.virtual_size
        size = lay.virtual_size
        assert _sha_virtual(rebuilt.read_virtual, size) == _sha_virtual(disk.read_virtual, size)


def test_qemu_vpc_without_force_size_uses_geometry(tmp_path: Path) -> None:
    """qemu's own VHDs (creator "qemu") are sized by CHS in qemu; we report current_size and chs_size."""
    path = _qemu_create(tmp_path / "chs.vhd", "vpc", 10 * MiB, "subformat=dynamic", [(0x5A, 0, 4096)])
    info = _qemu_info(path)
    with open_file(path) as disk:
        assert disk.layout.creator == "qemu"
        assert disk.layout.chs_size == info["virtual-size"]
        assert disk.layout.virtual_size >= disk.layout.chs_size
        assert disk.read_virtual(0, 4096) == b"\x5a" * 4096


def test_map_virtual_ranges_to_blocks(tmp_path: Path) -> None:
    path = _qemu_create(
        tmp_path / "rct.vhdx",
        "vhdx",
        8 * MiB,
        "subformat=dynamic,block_size=1M,block_state_zero=off",
        [(1, 0, MiB), (2, 3 * MiB, 4096)],
    )
    with open_file(path) as disk:
        rct = [(3 * MiB + 100, 10), (10, 20), (2 * MiB, 1), (15, 100)]
        blocks = list(disk.map_virtual_ranges(rct))
        assert [(b.index, b.kind) for b in blocks] == [
            (0, BlockKind.FULL),
            (2, BlockKind.ABSENT),
            (3, BlockKind.FULL),
        ]
        assert blocks[1].file_ranges == ()
        data_extents = {e.virtual_offset: e for e in disk.allocated_extents()}
        for block in (blocks[0], blocks[2]):
            (payload,) = block.file_ranges
            assert payload.length == MiB
            assert data_extents[block.virtual_offset].file_offset == payload.offset
            with path.open("rb") as fh:
                fh.seek(payload.offset)
                assert fh.read(MiB) == disk.read_virtual(block.virtual_offset, MiB)
        merged = disk.file_ranges_for(rct)
        payloads = [b.file_ranges[0] for b in (blocks[0], blocks[2])]
        assert sum(r.length for r in merged) == sum(p.length for p in payloads)
        for p in payloads:
            assert any(m.offset <= p.offset and p.end <= m.end for m in merged)
        assert all(a.end < b.offset for a, b in zip(merged, merged[1:]))  # sorted, merged when adjacent
        with pytest.raises(VhdRangeError, match="outside the disk"):
            list(disk.map_virtual_ranges([(8 * MiB - 1, 2)]))
        with pytest.raises(VhdRangeError):
            disk.read_virtual(-1, 10)


# -- differencing disks and chains ----------------------------------------------------------------


def _parent_vhdx(tmp_path: Path) -> Path:
    return _qemu_create(
        tmp_path / "parent.vhdx",
        "vhdx",
        4 * MiB,
        "subformat=dynamic,block_size=1M",
        [(0x77, 0, 4 * MiB)],
    )


def _expected_chain_content(parent: bytes, child: VhdxSpec) -> bytes:
    out = bytearray(parent)
    bs, lss = child.block_size, child.logical
    for block, content in child.full.items():
        out[block * bs : block * bs + bs] = content
    for block, state in child.states.items():
        if state in (1, 2, 3):
            out[block * bs : block * bs + bs] = bytes(bs)
    for block, (content, sectors) in child.partial.items():
        for s in sectors:
            start = block * bs + s * lss
            out[start : start + lss] = content[s * lss : (s + 1) * lss]
    return bytes(out)


def test_vhdx_differencing_chain(tmp_path: Path) -> None:
    parent_path = _parent_vhdx(tmp_path)
    with open_file(parent_path) as parent:
        linkage = "{" + str(parent.layout.data_write_guid).upper() + "}"
        parent_bytes = parent.read_virtual(0, parent.virtual_size)
    spec = VhdxSpec(
        virtual_size=4 * MiB,
        locator={
            "parent_linkage": linkage,
            "relative_path": ".\\parent.vhdx",
            "absolute_win32_path": "C:\\VMs\\gone\\parent.vhdx",
        },
        full={1: _pattern(1, MiB)},
        partial={2: (_pattern(2, MiB), {0, 1, 2, 7, 8, 2047}), 3: (_pattern(3, MiB), set(range(100, 300)))},
        states={0: PayloadBlockState.NOT_PRESENT},
    )
    child_path = tmp_path / "child.avhdx"
    child_path.write_bytes(build_vhdx(spec))
    with open_file(child_path) as child:
        lay = child.layout
        assert lay.disk_type is DiskType.DIFFERENCING and lay.has_parent
        assert lay.parent_locator is not None and lay.parent_locator.parent_linkage == linkage
        assert lay.parent_locator.relative_path == ".\\parent.vhdx"
        assert child.sector_bitmap_runs(2) == [
            (0, 3, True),
            (3, 4, False),
            (7, 2, True),
            (9, 2038, False),
            (2047, 1, True),
        ]
        assert child.sector_bitmap_runs(0) == []
        kinds = [(e.kind, e.virtual_offset, e.length) for e in child.extents(2 * MiB, MiB)]
        assert kinds[:3] == [
            (ExtentKind.DATA, 2 * MiB, 1536),
            (ExtentKind.ABSENT, 2 * MiB + 1536, 2048),
            (ExtentKind.DATA, 2 * MiB + 3584, 1024),
        ]
        mapped = list(child.map_virtual_ranges([(2 * MiB + 10, 1)]))
        assert [r.what for r in mapped[0].file_ranges] == ["sector bitmap", "block 2"]
        assert mapped[0].file_ranges[0].length == MiB // 512 // 8
        with pytest.raises(VhdUnsupportedError, match="differencing"):
            child.read_virtual(0, 512)
        _check_consistent(child)

    opened: List[str] = []

    def open_fn(p: str) -> VirtualDisk:
        opened.append(p)
        return open_file(p)

    with resolve_chain(open_fn, str(child_path)) as chain:
        assert [Path(p).name for p in chain.paths] == ["child.avhdx", "parent.vhdx"]
        assert chain.read_virtual(0, 4 * MiB) == _expected_chain_content(parent_bytes, spec)
        assert (
            chain.read_virtual(2 * MiB + 1000, 5000)
            == _expected_chain_content(parent_bytes, spec)[2 * MiB + 1000 : 2 * MiB + 6000]
        )
    assert opened == [str(child_path), str(tmp_path / "parent.vhdx")]


def test_chain_falls_back_to_absolute_path(tmp_path: Path) -> None:
    parent_path = _parent_vhdx(tmp_path)
    with open_file(parent_path) as parent:
        linkage = str(parent.layout.data_write_guid)
    spec = VhdxSpec(
        virtual_size=4 * MiB,
        locator={
            "parent_linkage": linkage,
            "relative_path": "missing.vhdx",
            "absolute_win32_path": str(parent_path),
        },
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.avhdx").write_bytes(build_vhdx(spec))
    with resolve_chain(open_file, str(sub / "c.avhdx")) as chain:
        assert chain.paths[1] == str(parent_path)
        assert chain.read_virtual(0, 4096) == b"\x77" * 4096


def _diff_pointing_to(path: Path, target: str, linkage: uuid.UUID, own: uuid.UUID | None = None) -> None:
    spec = VhdxSpec(
        virtual_size=4 * MiB,
        locator={"parent_linkage": "{" + str(linkage) + "}", "relative_path": target},
        data_write_guid=own or uuid.uuid4(),
    )
    path.write_bytes(build_vhdx(spec))


def test_chain_refusals(tmp_path: Path) -> None:
    parent_path = _parent_vhdx(tmp_path)
    with open_file(parent_path) as parent:
        good = parent.layout.data_write_guid
    assert good is not None
    # Cycle by path: a -> b -> a.
    ga, gb = uuid.uuid4(), uuid.uuid4()
    _diff_pointing_to(tmp_path / "a.avhdx", "b.avhdx", gb, ga)
    _diff_pointing_to(tmp_path / "b.avhdx", ".\\a.avhdx", ga, gb)
    with pytest.raises(VhdChainError, match="loops") as info:
        resolve_chain(open_file, str(tmp_path / "a.avhdx"))
    assert "a.avhdx" in str(info.value) and info.value.what_to_do
    # Cycle by identity: c -> d, d carries the same DataWriteGuid as c.
    same = uuid.uuid4()
    _diff_pointing_to(tmp_path / "c.avhdx", "d.avhdx", same, same)
    _diff_pointing_to(tmp_path / "d.avhdx", "parent.vhdx", good, same)
    with pytest.raises(VhdChainError, match="appears twice"):
        resolve_chain(open_file, str(tmp_path / "c.avhdx"))
    # Linkage mismatch: the parent changed after the child was made.
    _diff_pointing_to(tmp_path / "e.avhdx", "parent.vhdx", uuid.uuid4())
    with pytest.raises(VhdChainError, match="modified after the child"):
        resolve_chain(open_file, str(tmp_path / "e.avhdx"))
    # Missing parent.
    _diff_pointing_to(tmp_path / "f.avhdx", "nowhere.vhdx", good)
    with pytest.raises(VhdChainError, match="not found"):
        resolve_chain(open_file, str(tmp_path / "f.avhdx"))
    # Depth: g -> h -> parent is fine with the default, too deep with max_depth=1.
    gh = uuid.uuid4()
    _diff_pointing_to(tmp_path / "h.avhdx", "parent.vhdx", good, gh)
    _diff_pointing_to(tmp_path / "g.avhdx", "h.avhdx", gh)
    with resolve_chain(open_file, str(tmp_path / "g.avhdx")) as chain:
        assert len(chain.disks) == 3
    with pytest.raises(VhdChainError, match="deeper than 1"):
        resolve_chain(open_file, str(tmp_path / "g.avhdx"), max_depth=1)


def test_vhd_differencing_chain(tmp_path: Path) -> None:
    parent_path = _qemu_create(
        tmp_path / "base.vhd", "vpc", 6 * MiB, "subformat=dynamic,force_size=on", [(0x42, 0, 6 * MiB)]
    )
    with open_file(parent_path) as parent:
        parent_id = parent.layout.virtual_disk_id
        parent_bytes = parent.read_virtual(0, 6 * MiB)
    assert parent_id is not None
    content = _pattern(9, 2 * MiB)
    sectors = {0, 5, 6, 4095}
    child = build_vhd_diff(
        6 * MiB,
        parent_id,
        {b"W2ru": ".\\base.vhd", b"W2ku": "D:\\VMs\\base.vhd"},
        {1: (content, sectors)},
    )
    child_path = tmp_path / "child.vhd"
    child_path.write_bytes(child)
    expected = bytearray(parent_bytes)
    for s in sectors:
        expected[2 * MiB + s * 512 : 2 * MiB + (s + 1) * 512] = content[s * 512 : (s + 1) * 512]
    with open_file(child_path) as disk:
        lay = disk.layout
        assert (lay.format, lay.disk_type) == (DiskFormat.VHD, DiskType.DIFFERENCING)
        assert lay.parent_locator is not None
        assert lay.parent_locator.relative_path == ".\\base.vhd"
        assert lay.parent_locator.absolute_win32_path == "D:\\VMs\\base.vhd"
        assert lay.parent_locator.parent_name == "parent.vhd"
        assert lay.parent_locator.parent_unique_id == parent_id
        assert disk.sector_bitmap_runs(1) == [
            (0, 1, True),
            (1, 4, False),
            (5, 2, True),
            (7, 4088, False),
            (4095, 1, True),
        ]
        _check_consistent(disk)
    with resolve_chain(open_file, str(child_path)) as chain:
        assert chain.read_virtual(0, 6 * MiB) == bytes(expected)
    # A parent with another UniqueId is refused.
    child_path.write_bytes(build_vhd_diff(6 * MiB, uuid.uuid4(), {b"W2ru": "base.vhd"}, {}))
    with pytest.raises(VhdChainError, match="UniqueId"):
        resolve_chain(open_file, str(child_path))


def test_vhd_parent_found_by_its_unicode_name_when_the_locators_lead_nowhere(tmp_path: Path) -> None:
    """Issue #9 point 11: a chain copied by hand keeps the parent's name, not its locator paths."""
    folder = tmp_path / "moved"
    folder.mkdir()
    parent_path = _qemu_create(folder / "base.vhd", "vpc", 2 * MiB, "subformat=dynamic,force_size=on",
                               [(0x5A, 0, 2 * MiB)])
    with open_file(parent_path) as parent:
        parent_id = parent.layout.virtual_disk_id
    assert parent_id is not None
    stale = {b"W2ru": ".\\old\\base-2019.vhd", b"W2ku": "E:\\Hyper-V\\old\\base-2019.vhd"}
    child_path = folder / "child.avhd"
    child_path.write_bytes(build_vhd_diff(2 * MiB, parent_id, stale, {}, parent_name="base.vhd"))
    with resolve_chain(open_file, str(child_path)) as chain:
        assert list(chain.paths) == [str(child_path), str(parent_path)]
        assert chain.read_virtual(0, 4096) == b"\x5a" * 4096
    assert locate_parent(open_file, str(child_path)) == str(parent_path)
    # The name as written, when it is a full path (the parent lives elsewhere).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "golden.vhd"
    parent_path.rename(moved)
    child_path.write_bytes(build_vhd_diff(2 * MiB, parent_id, stale, {}, parent_name=str(moved)))
    assert locate_parent(open_file, str(child_path)) == str(moved)
    # A same-named file of another identity next to the child is skipped for the right one.
    _qemu_create(folder / "golden.vhd", "vpc", 2 * MiB, "subformat=dynamic,force_size=on", [])
    assert locate_parent(open_file, str(child_path)) == str(moved)
    # Nowhere: the error names every path tried, locators first, then the names.
    moved.unlink()
    (folder / "golden.vhd").unlink()
    with pytest.raises(VhdChainError, match="parent disk not found") as info:
        resolve_chain(open_file, str(child_path))
    text = str(info.value)
    for tried in (str(folder / "old" / "base-2019.vhd"),
                  "E:\\Hyper-V\\old\\base-2019.vhd", str(folder / "golden.vhd"), str(moved),
                  str(folder / "base-2019.vhd")):
        assert tried in text, (tried, text)
    assert "Set-VHD -ParentPath" in text


def test_vhdx_parent_found_by_the_file_name_of_its_locator_next_to_the_child(tmp_path: Path) -> None:
    parent_path = _parent_vhdx(tmp_path)
    with open_file(parent_path) as parent:
        linkage = str(parent.layout.data_write_guid)
    spec = VhdxSpec(
        virtual_size=4 * MiB,
        locator={
            "parent_linkage": "{" + linkage + "}",
            "relative_path": "..\\Old Folder\\parent.vhdx",
            "absolute_win32_path": "\\\\?\\E:\\Old Folder\\parent.vhdx",
        },
    )
    child_path = tmp_path / "c.avhdx"
    child_path.write_bytes(build_vhdx(spec))
    assert parent_candidates(str(child_path), open_file(child_path).layout.parent_locator)[-1] == str(parent_path)
    with resolve_chain(open_file, str(child_path)) as chain:
        assert chain.paths[1] == str(parent_path)
        assert chain.read_virtual(0, 4096) == b"\x77" * 4096
    parent_path.unlink()
    with pytest.raises(VhdChainError, match="parent disk not found") as info:
        locate_parent(open_file, str(child_path))
    assert "E:\\Old Folder\\parent.vhdx" in str(info.value) and str(parent_path) in str(info.value)


def test_zero_and_unmapped_states_read_as_zeros() -> None:
    spec = VhdxSpec(
        virtual_size=5 * MiB,
        full={0: _pattern(5, MiB), 4: _pattern(6, MiB)},
        states={1: PayloadBlockState.ZERO, 2: PayloadBlockState.UNMAPPED, 3: PayloadBlockState.UNDEFINED},
    )
    disk = _open_bytes(bytes(build_vhdx(spec)))
    assert [(e.kind, e.virtual_offset, e.length) for e in disk.extents()] == [
        (ExtentKind.DATA, 0, MiB),
        (ExtentKind.ZERO, MiB, 3 * MiB),
        (ExtentKind.DATA, 4 * MiB, MiB),
    ]
    assert disk.read_virtual(MiB - 10, 20) == _pattern(5, MiB)[-10:] + bytes(10)
    assert disk.read_virtual(4 * MiB, MiB) == _pattern(6, MiB)


def test_large_sparse_vhdx_is_lazy() -> None:
    """64 TiB with 32 MiB blocks: 2 M BAT entries (16 MiB) must not be loaded or walked at open."""
    far = 1_500_000
    spec = VhdxSpec(virtual_size=64 * 1024 * GiB, block_size=32 * MiB, states={far: PayloadBlockState.ZERO})
    data = bytes(build_vhdx(spec))
    tracemalloc.start()
    try:
        disk = _open_bytes(data)
        first = list(disk.extents(0, 64 * MiB))
        around = list(disk.extents((far - 1) * 32 * MiB, 3 * 32 * MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(e.kind, e.length) for e in first] == [(ExtentKind.ABSENT, 64 * MiB)]
    assert [(e.kind, e.length) for e in around] == [
        (ExtentKind.ABSENT, 32 * MiB),
        (ExtentKind.ZERO, 32 * MiB),
        (ExtentKind.ABSENT, 32 * MiB),
    ]
    assert peak < 4 * MiB  # the 16 MiB BAT is read in 64 KiB chunks


# -- refusals on damaged or hostile files ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_vhdx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp = tmp_path_factory.mktemp("small-vhdx")
    path = _qemu_create(
        tmp / "s.vhdx",
        "vhdx",
        4 * MiB,
        "subformat=dynamic,block_size=1M,log_size=1M",
        [(0x3C, 0, MiB), (0x4D, 2 * MiB, 4096)],
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def small_vhd(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp = tmp_path_factory.mktemp("small-vhd")
    path = _qemu_create(tmp / "s.vhd", "vpc", 4 * MiB, "subformat=dynamic,force_size=on", [(0x3C, 0, 4096)])
    return path.read_bytes()


def _set_header_field(buf: bytearray, name: str, value: bytes, headers: Sequence[int] = (0, 1)) -> None:
    pos = VhdxHeader.field_offset(name)
    for h in headers:
        off = (64 + 64 * h) * KiB
        buf[off + pos : off + pos + len(value)] = value
    _fix_vhdx_checksums(buf)


def _region(buf: bytes, guid: uuid.UUID) -> RegionTableEntry:
    header = RegionTableHeader.unpack(buf, 192 * KiB)
    for i in range(header.entry_count):
        entry = RegionTableEntry.unpack(buf, 192 * KiB + 16 + 32 * i)
        if entry.guid == guid:
            return entry
    raise AssertionError(guid)


def _metadata_item_offset(buf: bytes, item: uuid.UUID) -> int:
    meta = _region(buf, METADATA_REGION_GUID).file_offset
    header = MetadataTableHeader.unpack(buf, meta)
    for i in range(header.entry_count):
        entry = MetadataTableEntry.unpack(buf, meta + 32 + 32 * i)
        if entry.item_id == item:
            return meta + entry.offset
    raise AssertionError(item)


def _expect(data: bytes, cls: type, match: str, name: str = "hostile.vhdx") -> VhdError:
    with pytest.raises(cls, match=match) as info:
        open_disk(BytesSource(data, name))
    err = info.value
    assert isinstance(err, VhdError) and isinstance(err, StorageError)
    assert name in str(err) and err.what_to_do
    return err


def test_log_not_empty_is_refused_with_replay_hint(small_vhdx: bytes) -> None:
    buf = bytearray(small_vhdx)
    _set_header_field(buf, "log_guid", uuid.uuid4().bytes_le)
    err = _expect(bytes(buf), VhdLogReplayRequiredError, "log is not empty")
    assert "qemu-img check -r all" in str(err) and "Hyper-V" in str(err)


def test_header_selection_and_corruption(small_vhdx: bytes) -> None:
    base = _open_bytes(small_vhdx)
    assert base.layout.warnings == ()
    # One corrupt header is tolerated and reported.
    buf = bytearray(small_vhdx)
    buf[64 * KiB + 100] ^= 0xFF
    disk = _open_bytes(bytes(buf))
    assert any("header 1" in w for w in disk.layout.warnings)
    assert disk.read_virtual(0, MiB) == b"\x3c" * MiB
    # The valid header with the larger sequence number wins.
    buf = bytearray(small_vhdx)
    newer = uuid.uuid4()
    _set_header_field(buf, "data_write_guid", newer.bytes_le, headers=(0,))
    _set_header_field(buf, "sequence_number", (2**63).to_bytes(8, "little"), headers=(0,))
    assert _open_bytes(bytes(buf)).layout.data_write_guid == newer
    # Both corrupt: refused.
    buf = bytearray(small_vhdx)
    buf[64 * KiB + 100] ^= 0xFF
    buf[128 * KiB + 100] ^= 0xFF
    _expect(bytes(buf), VhdCorruptError, "both VHDX headers")
    # Equal sequence numbers with different contents: refused.
    buf = bytearray(small_vhdx)
    seq = VhdxHeader.unpack(small_vhdx, 64 * KiB).sequence_number
    _set_header_field(buf, "sequence_number", seq.to_bytes(8, "little"))
    _set_header_field(buf, "file_write_guid", uuid.uuid4().bytes_le, headers=(1,))
    _expect(bytes(buf), VhdCorruptError, "sequence number")


def test_region_tables(small_vhdx: bytes) -> None:
    buf = bytearray(small_vhdx)
    buf[192 * KiB + 200] ^= 1  # table 1 corrupt, table 2 still good
    disk = _open_bytes(bytes(buf))
    assert any("region table 1" in w for w in disk.layout.warnings)
    buf[256 * KiB + 200] ^= 1
    _expect(bytes(buf), VhdCorruptError, "both VHDX region tables")

    unknown = uuid.uuid4()
    spec = VhdxSpec(
        virtual_size=2 * MiB,
        extra_regions=[RegionTableEntry(guid=unknown, file_offset=4 * MiB, length=MiB, flags=0)],
    )
    data = build_vhdx(spec) + bytearray(MiB)
    disk = _open_bytes(bytes(data))
    assert FileRange(4 * MiB, MiB, f"VHDX region {unknown}") in disk.layout.metadata_ranges
    spec.extra_regions = [RegionTableEntry(guid=unknown, file_offset=4 * MiB, length=MiB, flags=1)]
    _expect(bytes(build_vhdx(spec) + bytearray(MiB)), VhdUnsupportedError, "unknown required region")
    spec.extra_regions = [RegionTableEntry(guid=unknown, file_offset=3 * MiB, length=MiB, flags=0)]
    _expect(bytes(build_vhdx(spec)), VhdCorruptError, "overlaps")
    spec.extra_regions = []
    spec.extra_metadata = [MetadataTableEntry(item_id=unknown, offset=0, length=0, flags=4)]
    _expect(bytes(build_vhdx(spec)), VhdUnsupportedError, "unknown required metadata")


def test_truncated_and_absurd_files(small_vhdx: bytes) -> None:
    _expect(small_vhdx[: len(small_vhdx) - MiB], VhdTruncatedError, "past the end")
    _expect(small_vhdx[: 200 * KiB], VhdTruncatedError, "at least 1 MiB")
    _expect(b"hello" * 1000, VhdFormatError, "neither a VHDX")

    buf = bytearray(small_vhdx)
    off = _metadata_item_offset(small_vhdx, VIRTUAL_DISK_SIZE_GUID)
    buf[off : off + 8] = (65 * 1024 * GiB).to_bytes(8, "little")
    _expect(bytes(buf), VhdLimitError, "64 TiB")
    buf[off : off + 8] = (64 * 1024 * GiB).to_bytes(8, "little")
    _expect(bytes(buf), VhdCorruptError, "BAT region")  # legal size, but the 1 MiB BAT cannot map it

    buf = bytearray(small_vhdx)
    off = _metadata_item_offset(small_vhdx, FILE_PARAMETERS_GUID)
    for bad in (3 * MiB, 512 * KiB, 512 * MiB):
        buf[off : off + 4] = bad.to_bytes(4, "little")
        _expect(bytes(buf), VhdLimitError, "block size")
    buf = bytearray(small_vhdx)
    off = _metadata_item_offset(small_vhdx, LOGICAL_SECTOR_SIZE_GUID)
    buf[off : off + 4] = (1000).to_bytes(4, "little")
    _expect(bytes(buf), VhdLimitError, "sector sizes")

    meta = _region(small_vhdx, METADATA_REGION_GUID).file_offset
    buf = bytearray(small_vhdx)
    buf[meta + 10 : meta + 12] = (5000).to_bytes(2, "little")
    _expect(bytes(buf), VhdLimitError, "entries")
    buf = bytearray(small_vhdx)
    buf[meta : meta + 8] = b"metadatX"
    _expect(bytes(buf), VhdFormatError, "metadata table signature")


def test_bat_entries_pointing_outside(small_vhdx: bytes) -> None:
    bat = _region(small_vhdx, BAT_REGION_GUID).file_offset
    cases = [
        (BatEntry(6, len(small_vhdx) // MiB).to_int(), VhdTruncatedError, "past the end"),
        (BatEntry(6, 0).to_int(), VhdCorruptError, "header section"),
        (BatEntry(6, bat // MiB).to_int(), VhdCorruptError, "overlaps the VHDX BAT region"),
        (BatEntry(7, 5).to_int(), VhdCorruptError, "without parent"),
        (BatEntry(4, 5).to_int(), VhdCorruptError, "invalid state 4"),
    ]
    for value, cls, match in cases:
        buf = bytearray(small_vhdx)
        buf[bat + 8 : bat + 16] = value.to_bytes(8, "little")
        _expect(bytes(buf), cls, match)


def test_vhd_refusals(small_vhd: bytes) -> None:
    disk = _open_bytes(small_vhd, "s.vhd")
    assert disk.read_virtual(0, 4096) == b"\x3c" * 4096
    # End footer damaged: the copy at offset 0 is used.
    buf = bytearray(small_vhd)
    buf[-512 + 30] ^= 0xFF
    assert "copy at offset 0" in _open_bytes(bytes(buf), "s.vhd").layout.warnings[0]
    buf[30] ^= 0xFF
    _expect(bytes(buf), VhdCorruptError, "no valid copy", "s.vhd")
    # Too large.
    buf = bytearray(small_vhd)
    for off in (0, len(buf) - 512):
        buf[off + 48 : off + 56] = (2041 * GiB).to_bytes(8, "big")
    _fix_vhd_checksums(buf)
    _expect(bytes(buf), VhdLimitError, "2040 GiB", "s.vhd")
    # BAT entry past the end / onto the dynamic header.
    table = VhdDynamicHeader.unpack(small_vhd, 512).table_offset
    for sector, cls, match in (
        (len(small_vhd) // 512, VhdTruncatedError, "past the end"),
        (1, VhdCorruptError, "overlaps"),
    ):
        buf = bytearray(small_vhd)
        buf[table + 4 : table + 8] = sector.to_bytes(4, "big")
        _expect(bytes(buf), cls, match, "s.vhd")
    # Dynamic header damaged.
    buf = bytearray(small_vhd)
    buf[512 + 20] ^= 1
    _expect(bytes(buf), VhdCorruptError, "dynamic header checksum", "s.vhd")
    buf = bytearray(small_vhd)
    buf[512:520] = b"cxsparsX"
    _expect(bytes(buf), VhdFormatError, "cxsparse", "s.vhd")


def test_file_source_short_read_and_close(tmp_path: Path, small_vhdx: bytes) -> None:
    path = tmp_path / "x.vhdx"
    path.write_bytes(small_vhdx)
    with FileSource(path) as src:
        assert src.size() == len(small_vhdx)
        assert src.read_at(len(small_vhdx) - 3, 10) == small_vhdx[-3:]
        disk = open_disk(src)
        assert disk.name == str(path)
        # The file shrinks after open: reads fail cleanly.
        with path.open("r+b") as fh:
            fh.truncate(3 * MiB)
        with pytest.raises(VhdTruncatedError):
            disk.read_virtual(0, MiB)
    with pytest.raises(ValueError, match="closed"):
        src.read_at(0, 1)


# -- hostile input: mutate valid disks, expect a consistent result or a StorageError --------------

MUTATION = st.tuples(
    st.integers(min_value=0, max_value=2**31),  # which interesting byte (modulo the list)
    st.sampled_from(["flip", "byte", "u16", "u32", "u64", "u64be", "u32be"]),
    st.integers(min_value=0, max_value=2**64 - 1),
)


def _interesting_offsets_vhdx(data: bytes) -> List[int]:
    offsets = list(range(64 * KiB, 64 * KiB + 80)) + list(range(128 * KiB, 128 * KiB + 80))
    for table in (192 * KiB, 256 * KiB):
        offsets += range(table, table + 16 + 32 * 3)
    meta = _region(data, METADATA_REGION_GUID).file_offset
    offsets += range(meta, meta + 32 + 32 * 6)
    offsets += range(meta + 64 * KiB, meta + 64 * KiB + 400)
    bat = _region(data, BAT_REGION_GUID).file_offset
    offsets += range(bat, bat + 8 * 16)
    return offsets


def _interesting_offsets_vhd(data: bytes) -> List[int]:
    end = len(data) - 512
    offsets = list(range(0, 85)) + list(range(end, end + 85)) + list(range(512, 512 + 700))
    table = VhdDynamicHeader.unpack(data, 512).table_offset
    offsets += range(table, table + 64)
    return offsets


def _mutate(
    data: bytes, offsets: List[int], mutations: List[Tuple[int, str, int]], fix: bool, vhdx: bool
) -> bytes:
    buf = bytearray(data)
    for which, kind, value in mutations:
        pos = offsets[which % len(offsets)]
        if kind == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif kind == "byte":
            buf[pos] = value & 0xFF
        else:
            width = {"u16": 2, "u32": 4, "u64": 8, "u64be": 8, "u32be": 4}[kind]
            order = "big" if kind.endswith("be") else "little"
            chunk = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)  # type: ignore[arg-type]
            buf[pos : pos + width] = chunk[: len(buf) - pos]
    if fix:
        if vhdx:
            _fix_vhdx_checksums(buf)
        else:
            _fix_vhd_checksums(buf)
    return bytes(buf)


def _open_and_check(data: bytes, name: str) -> None:
    try:
        disk = open_disk(BytesSource(data, name))
        disk.validate()
        _check_consistent(disk, read_limit=2 * MiB)
        event("parsed")
    except StorageError as exc:
        assert name in str(exc)
        event(type(exc).__name__)


@pytest.fixture(scope="module")
def hostile_bases(small_vhdx: bytes, small_vhd: bytes) -> Dict[str, Tuple[bytes, List[int], bool]]:
    diff = VhdxSpec(
        virtual_size=3 * MiB,
        locator={"parent_linkage": "{" + str(uuid.uuid4()) + "}", "relative_path": "p.vhdx"},
        full={0: _pattern(1, MiB)},
        partial={1: (_pattern(2, MiB), {1, 2, 3, 500})},
    )
    diff_bytes = bytes(build_vhdx(diff))
    vhd_diff = bytes(
        build_vhd_diff(
            4 * MiB,
            uuid.uuid4(),
            {b"W2ru": "p.vhd", b"W2ku": "C:\\p.vhd"},
            {0: (_pattern(3, 2 * MiB), {0, 9})},
        )
    )
    return {
        "vhdx": (small_vhdx, _interesting_offsets_vhdx(small_vhdx), True),
        "vhdx-diff": (diff_bytes, _interesting_offsets_vhdx(diff_bytes), True),
        "vhd": (small_vhd, _interesting_offsets_vhd(small_vhd), False),
        "vhd-diff": (vhd_diff, _interesting_offsets_vhd(vhd_diff), False),
    }


HOSTILE = settings(
    max_examples=200,
    derandomize=True,
    deadline=timedelta(seconds=5),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("base", ["vhdx", "vhdx-diff", "vhd", "vhd-diff"])
@HOSTILE
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4), fix=st.booleans())
def test_mutated_structures_parse_or_raise_storage_error(
    hostile_bases: Dict[str, Tuple[bytes, List[int], bool]],
    base: str,
    mutations: List[Tuple[int, str, int]],
    fix: bool,
) -> None:
    data, offsets, vhdx = hostile_bases[base]
    _open_and_check(_mutate(data, offsets, mutations, fix, vhdx), f"{base}-mutant")


@HOSTILE
@given(
    base=st.sampled_from(["vhdx", "vhdx-diff", "vhd", "vhd-diff"]),
    cut=st.integers(min_value=0, max_value=8 * MiB),
    mutations=st.lists(MUTATION, max_size=2),
)
def test_truncated_and_mutated_files_stay_bounded(
    hostile_bases: Dict[str, Tuple[bytes, List[int], bool]],
    base: str,
    cut: int,
    mutations: List[Tuple[int, str, int]],
) -> None:
    data, offsets, vhdx = hostile_bases[base]
    mutated = _mutate(data, offsets, mutations, True, vhdx)[: min(cut, len(data))]
    tracemalloc.start()
    try:
        _open_and_check(mutated, f"{base}-truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The input copy inside BytesSource plus bounded reads (BAT chunks, 2 MiB of content).
    assert peak < len(mutated) + 24 * MiB
