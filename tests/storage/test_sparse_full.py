"""Sparse fulls: the ranges a dynamic or differencing VHD/VHDX references, and the delta that carries them.

The range computation (``VirtualDisk.referenced_ranges``, ``backup.incremental.sparse_ranges``) is
checked against the real VHD/VHDX fixtures (``tests/fixtures/shared/vhd``, PROVENANCE.md), disks
qemu made (``qemu-img create`` + ``qemu-io`` writes) and disks hvsim's independent writer made with
trimmed blocks and differencing children: a copy of the file with zeros everywhere else (the
*normalised image*) must pass ``qemu-img check`` and ``qemu-img compare`` equal to the source, and
must read the same virtual bytes through our reader.  The sparse full itself goes through the
delta format: the stream's digests, the restore into an empty file, and what a damaged or
misapplied one does.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from bareos_hyperv.backup.base import DiskBase
from bareos_hyperv.backup.incremental import (
    SPARSE_MIN_SAVING,
    complement_ranges,
    sparse_ranges,
    subtract_ranges,
    zeroed_read_at,
)
from bareos_hyperv.storage.delta import (
    DeltaApplier,
    DeltaBaseMismatch,
    DeltaFormatError,
    DeltaHeader,
    DeltaReader,
    DeltaResultMismatch,
    FilePatchTarget,
    ImageHashes,
    delta_size,
    empty_image_digest,
)
from bareos_hyperv.storage.local import LocalReader
from bareos_hyperv.storage.locations import SmbLocation
from bareos_hyperv.storage.vhd import (
    DiskType,
    ExtentKind,
    VhdCorruptError,
    VhdError,
    VirtualDisk,
    open_file,
    resolve_chain,
)
from hvsim import disks as hvdisks

pytestmark = pytest.mark.qemu

FIXTURES = Path(__file__).resolve().parents[2] / "tests/fixtures/shared/vhd"
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
MiB = 1024 * 1024


def _fixture(name: str, dest: Path) -> Path:
    out = dest / name.rsplit(".", 1)[0]
    opener = gzip.open if name.endswith(".gz") else bz2.open
    with opener(FIXTURES / name, "rb") as fin, out.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 4 * MiB)
    return out


def _fmt(path: Path) -> str:
    return "vhdx" if path.suffix in (".vhdx", ".avhdx") else "vpc"


def _ranges(path: Path) -> List[Tuple[int, int]]:
    with open_file(path) as disk:
        return [(r.offset, r.length) for r in disk.referenced_ranges()]


def _normalised(path: Path, ranges: List[Tuple[int, int]], dest: Path) -> Path:
    """The file with zeros outside ``ranges`` (a sparse file of the same length)."""
    out = dest / ("norm-" + path.name)
    with path.open("rb") as src, out.open("wb") as dst:
        dst.truncate(path.stat().st_size)
        for offset, length in ranges:
            src.seek(offset)
            dst.seek(offset)
            dst.write(src.read(length))
    return out


def _qemu_ok(path: Path, source: Path) -> None:
    # qemu's vpc driver has no check (exit 63): opening it (info) is what qemu can say of a VHD.
    what = "check" if _fmt(path) == "vhdx" else "info"
    check = subprocess.run([QEMU_IMG, what, "-f", _fmt(path), str(path)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    compare = subprocess.run([QEMU_IMG, "compare", "-f", _fmt(source), "-F", _fmt(path), str(source), str(path)],
                             capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def _assert_ranges_cover_the_disk(path: Path, ranges: List[Tuple[int, int]]) -> None:
    """Every table and every byte of data the reader maps lies inside the ranges; they are sorted and disjoint."""
    assert ranges == sorted(ranges)
    assert all(a + n < b for (a, n), (b, _m) in zip(ranges, ranges[1:]))

    def inside(offset: int, length: int) -> bool:
        return any(a <= offset and offset + length <= a + n for a, n in ranges)

    with open_file(path) as disk:
        for r in disk.layout.metadata_ranges:
            assert inside(r.offset, r.length), r
        for ext in disk.extents():
            if ext.kind is ExtentKind.DATA:
                assert ext.file_offset is not None and inside(ext.file_offset, ext.length), ext


@pytest.mark.parametrize("name", ["dissect-dynamic.vhdx.gz", "dissect-dynamic.vhd.gz",
                                  "qemu-hyperv2012r2-dynamic.vhd.bz2", "qemu-iotest-dynamic-1G.vhdx.bz2"])
def test_referenced_ranges_of_real_dynamic_disks(name: str, tmp_path: Path) -> None:
    path = _fixture(name, tmp_path)
    ranges = _ranges(path)
    _assert_ranges_cover_the_disk(path, ranges)
    _qemu_ok(_normalised(path, ranges, tmp_path), path)


def test_windows_made_vhdx_has_an_unreferenced_tail_that_a_sparse_full_skips(tmp_path: Path) -> None:
    path = _fixture("dissect-dynamic.vhdx.gz", tmp_path)
    size = path.stat().st_size
    with open_file(path) as disk:
        ranges = sparse_ranges(disk, size)
        virtual = disk.virtual_size
    assert ranges is not None
    sent = sum(n for _o, n in ranges)
    # The last 32 MiB block holds less of the disk than the block: its tail is never read.
    assert size - sent >= SPARSE_MIN_SAVING and sent <= virtual + 4 * MiB


@pytest.mark.parametrize("name", ["dissect-fixed.vhdx.gz", "dissect-fixed.vhd.gz"])
def test_fixed_disks_are_sent_whole(name: str, tmp_path: Path) -> None:
    path = _fixture(name, tmp_path)
    with open_file(path) as disk:
        assert disk.layout.disk_type is DiskType.FIXED
        assert [(r.offset, r.length) for r in disk.referenced_ranges()] == [(0, path.stat().st_size)]
        assert sparse_ranges(disk, path.stat().st_size) is None


def test_small_gaps_are_not_worth_a_sparse_full(tmp_path: Path) -> None:
    path = _fixture("dissect-dynamic.vhd.gz", tmp_path)  # 16 KiB of the file is unreferenced
    with open_file(path) as disk:
        assert sparse_ranges(disk, path.stat().st_size) is None


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_qemu_made_disks_with_writes(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / ("q.vhdx" if fmt == "vhdx" else "q.vhd")
    options = "block_size=1M" if fmt == "vhdx" else "subformat=dynamic"
    subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, "-o", options, str(path), "64M"], check=True)
    subprocess.run([QEMU_IO, "-f", fmt, "-c", "write -P 0x55 0 3M", "-c", "write -P 0x66 20M 1M",
                    "-c", "write -P 0x77 40M 64k", "-c", "discard 0 1M", str(path)],
                   check=True, capture_output=True)
    ranges = _ranges(path)
    _assert_ranges_cover_the_disk(path, ranges)
    _qemu_ok(_normalised(path, ranges, tmp_path), path)


def test_trimmed_blocks_of_a_dynamic_vhdx_are_left_out(tmp_path: Path) -> None:
    """hvsim's writer (as Hyper-V) keeps a trimmed block's bytes in the file, unreferenced."""
    path = tmp_path / "d.vhdx"
    hvdisks.create_disk(path, "vhdx", "dynamic", 256 * MiB, block_size=8 * MiB, fill_ratio=0.75, seed=3)
    hvdisks.guest_trim(path, 32 * MiB, 96 * MiB)
    hvdisks.guest_write(path, 200 * MiB + 4096, os.urandom(64 * 1024))
    size = path.stat().st_size
    with open_file(path) as disk:
        ranges = sparse_ranges(disk, size)
    assert ranges is not None
    assert size - sum(n for _o, n in ranges) >= 64 * MiB  # the trimmed blocks that held data
    _assert_ranges_cover_the_disk(path, ranges)
    norm = _normalised(path, ranges, tmp_path)
    _qemu_ok(norm, path)
    assert _through_delta(path, ranges, tmp_path) == norm.read_bytes()


def test_differencing_vhdx_and_vhd_keep_partial_blocks_and_sector_bitmaps(tmp_path: Path) -> None:
    """qemu cannot read differencing VHDX: the chain is read through our reader with the parent."""
    for fmt, suffix in (("vhdx", ".avhdx"), ("vhd", ".avhd")):
        parent = tmp_path / f"p.{fmt}"
        hvdisks.create_disk(parent, fmt, "dynamic", 64 * MiB, fill_ratio=0.5, seed=5)
        child = tmp_path / f"c{suffix}"
        hvdisks.create_differencing(child, parent, f"C:\\VMs\\p.{fmt}")
        hvdisks.guest_write(child, 3 * MiB + 512, os.urandom(8192), parent=parent)  # partially present
        hvdisks.guest_write(child, 10 * MiB, os.urandom(4 * MiB), parent=parent)
        hvdisks.guest_trim(child, 10 * MiB, 2 * MiB, parent=parent)
        ranges = _ranges(child)
        _assert_ranges_cover_the_disk(child, ranges)
        norm = tmp_path / f"n{suffix}"
        _normalised(child, ranges, tmp_path).rename(norm)

        def content(leaf: Path, parent_path: Path) -> bytes:
            def opener(p: str) -> VirtualDisk:
                return open_file(leaf if p == str(leaf) else parent_path)

            chain = resolve_chain(opener, str(leaf), candidates=lambda _child, _locator: [str(parent_path)])
            try:
                return chain.read_virtual(0, chain.virtual_size)
            finally:
                chain.close()

        assert content(norm, parent) == content(child, parent), fmt


def _through_delta(path: Path, ranges: List[Tuple[int, int]], tmp_path: Path, *, chunk: int = MiB) -> bytes:
    """A sparse full of ``path`` streamed (pipelined source reads) and applied to an empty file."""
    size = path.stat().st_size
    header = DeltaHeader.sparse_full(job_id=7, size=size, chunk_size=chunk, ranges=ranges)
    reader = LocalReader(str(path))
    stream = DeltaReader(header, ranges, name="disks/0-d.vhdx+S", source=reader, close=reader.close)
    data = stream.read()
    stream.close()
    assert len(data) == stream.size == delta_size(ranges, sparse=True)
    assert stream.bytes_read == sum(n for _o, n in ranges)
    out = tmp_path / "restored.bin"
    out.write_bytes(b"")
    applier = DeltaApplier(FilePatchTarget(str(out)), name="disks/0-d.vhdx+S")
    for i in range(0, len(data), 3 * MiB + 17):
        applier.write(data[i:i + 3 * MiB + 17])
    applier.close()
    restored = out.read_bytes()
    assert stream.result is not None and applier.result is not None
    assert applier.result.digest() == stream.result.digest()
    assert applier.result_sha256 == stream.sha256 == hashlib.sha256(restored).hexdigest()
    assert os.stat(out).st_blocks * 512 < size  # holes where nothing was written
    return restored


def _sample(tmp_path: Path) -> Tuple[Path, List[Tuple[int, int]]]:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(5 * MiB + 123))
    return path, [(0, 1000), (MiB, 3 * MiB), (5 * MiB, 123)]


def test_sparse_full_stream_and_restore(tmp_path: Path) -> None:
    path, ranges = _sample(tmp_path)
    expected = bytearray(path.stat().st_size)
    raw = path.read_bytes()
    for offset, length in ranges:
        expected[offset:offset + length] = raw[offset:offset + length]
    assert _through_delta(path, ranges, tmp_path) == bytes(expected)
    header = DeltaHeader.sparse_full(job_id=7, size=len(raw), chunk_size=MiB, ranges=ranges)
    again = DeltaHeader.unpack(header.pack())
    assert again.sparse and again.base_size == 0 and again.base_job_id == 0 and again.result_digest == ""
    assert again.base_digest == empty_image_digest(MiB) == ImageHashes(MiB, 0, []).digest()


def test_sparse_full_refuses_a_file_that_is_not_empty_and_detects_damage(tmp_path: Path) -> None:
    path, ranges = _sample(tmp_path)
    header = DeltaHeader.sparse_full(job_id=7, size=path.stat().st_size, chunk_size=MiB, ranges=ranges)
    reader = LocalReader(str(path))
    data = DeltaReader(header, ranges, reader.read_at, close=reader.close).read()
    busy = tmp_path / "busy.bin"
    busy.write_bytes(b"x" * 10)
    with pytest.raises(DeltaBaseMismatch, match="empty file"):
        DeltaApplier(FilePatchTarget(str(busy)), name="s").write(data)
    # A byte of the payload changed in the save set: the trailer's checksum fails.
    damaged = bytearray(data)
    damaged[300] ^= 1
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    applier = DeltaApplier(FilePatchTarget(str(out)), name="s")
    with pytest.raises(DeltaFormatError, match="trailer"):
        applier.write(bytes(damaged))
    # The trailer's result digest altered (and its checksum with it is impossible): the result is refused.
    wrong = bytearray(data)
    wrong[-80] ^= 1  # inside the result image digest
    out.write_bytes(b"")
    applier = DeltaApplier(FilePatchTarget(str(out)), name="s")
    applier.write(bytes(wrong))
    with pytest.raises(DeltaResultMismatch):
        applier.close()
    # A sparse flag with a base is not a valid header.
    bad = bytearray(header.pack())
    bad[24] = 1  # base job id
    with pytest.raises(DeltaFormatError):
        DeltaHeader.unpack(bytes(bad))


def test_zeroed_reads_and_range_arithmetic(tmp_path: Path) -> None:
    path, ranges = _sample(tmp_path)
    raw = path.read_bytes()
    zeros = complement_ranges(ranges, len(raw))
    assert zeros == [(1000, MiB - 1000), (4 * MiB, MiB)]
    reader = LocalReader(str(path))
    read = zeroed_read_at(reader.read_at, zeros)
    got = read(500, 2 * MiB)
    expected = bytearray(2 * MiB)
    expected[0:500] = raw[500:1000]
    expected[MiB - 500:] = raw[MiB:2 * MiB + 500]
    assert got == bytes(expected)
    assert read(3 * MiB + 10, 20) == raw[3 * MiB + 10:3 * MiB + 30]
    assert read(4 * MiB + 10, 20) == bytes(20)
    assert read(len(raw) - 10, 100) == raw[-10:]  # short at the end, as the file
    assert zeroed_read_at(reader.read_at, [])(0, 10) == raw[:10]
    reader.close()
    assert subtract_ranges([(0, 100), (200, 100)], [(50, 10), (90, 150), (290, 5)]) == [
        (0, 50), (60, 30), (240, 50), (295, 5)]
    assert subtract_ranges([(0, 10)], []) == [(0, 10)] and subtract_ranges([], [(0, 10)]) == []
    assert complement_ranges([(0, 10)], 10) == [] and complement_ranges([], 0) == []


def test_the_zero_ranges_travel_in_the_disk_base() -> None:
    hashes = ImageHashes(MiB, 3 * MiB, [bytes(32)] * 3)
    base = DiskBase(vm_guid="G", index=0, path="C:\\d.vhdx", disk_format="VHDX", disk_id=None, virtual_size=1,
                    block_size=1, job_id=4, hashes=hashes, zeros=[(MiB, 5), (2 * MiB, 10)])
    again = DiskBase.from_text(base.to_text(), source="test")
    assert again.zeros == [(MiB, 5), (2 * MiB, 10)]
    plain = DiskBase.from_text(DiskBase(**{**base.__dict__, "zeros": []}).to_text(), source="test")
    assert plain.zeros == [] and '"zeros"' not in DiskBase(**{**base.__dict__, "zeros": []}).to_text()
    with pytest.raises(Exception, match="zero range"):
        DiskBase.from_text(base.to_text().replace("[1048576,5]", "[3145720,50]"), source="test")


@pytest.mark.parametrize(("fmt", "how"), [("vhdx", "bat_beyond_eof"), ("vhdx", "bat_overlap"),
                                         ("vhd", "bat_beyond_eof")])
def test_a_damaged_block_table_is_copied_whole(fmt: str, how: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / f"d.{fmt}"
    hvdisks.create_disk(path, fmt, "dynamic", 64 * MiB, fill_ratio=0.5, seed=2)
    hvdisks.corrupt_disk(path, how)
    # Small tables are checked when the file is opened: the backup then has no layout (a plain copy).
    with pytest.raises(VhdError):
        open_file(path)
    assert sparse_ranges(None, path.stat().st_size) is None
    # A large table is walked lazily: the walk's error also means a plain copy, with a warning.
    with open_file(_fixture("dissect-dynamic.vhdx.gz", tmp_path)) as disk:
        def broken() -> List[object]:
            raise VhdCorruptError(disk.name, "BAT entry 3 overlaps the metadata region")

        disk.referenced_ranges = broken  # type: ignore[method-assign]
        assert sparse_ranges(disk, disk.layout.file_size) is None
    assert "copied whole" in caplog.text and "overlaps the metadata region" in caplog.text


def test_ranges_stream_over_smb_without_reading_the_gaps(smb_factory: Any, node_dir: Path) -> None:
    """The pipelined SMB reader, told each range's end, keeps reads in flight within it and none past it."""
    data = os.urandom(12 * MiB + 5)
    (node_dir / "s.vhdx").write_bytes(data)
    ranges = [(0, MiB + 17), (4 * MiB, 3 * MiB), (12 * MiB, 5)]
    st = smb_factory(read_size=MiB, read_depth=4)
    location = SmbLocation("HV01", "C$", f"{node_dir.name}\\s.vhdx")
    with st.open_read(location) as reader:
        reader.seek(4 * MiB)
        reader.set_limit(7 * MiB)
        first = bytearray(1000)
        assert reader.readinto(first) == 1000 and bytes(first) == data[4 * MiB:4 * MiB + 1000]
        assert reader.in_flight == 2  # 5, 6 MiB asked for; nothing at 7 MiB or beyond
        rest = reader.read(3 * MiB - 1000)
        assert reader.readinto(bytearray(10)) == 0  # the range's end: no read past it
        assert bytes(first) + rest == data[4 * MiB:7 * MiB]
    header = DeltaHeader.sparse_full(job_id=3, size=len(data), chunk_size=MiB, ranges=ranges)
    reader = st.open_read(location)
    stream = DeltaReader(header, ranges, name="s", source=reader, close=reader.close)
    out = stream.read()
    stream.close()
    expected = bytearray(len(data))
    for offset, length in ranges:
        expected[offset:offset + length] = data[offset:offset + length]
    assert stream.sha256 == hashlib.sha256(expected).hexdigest() and stream.bytes_read == sum(n for _o, n in ranges)
    assert len(out) == delta_size(ranges, sparse=True)
