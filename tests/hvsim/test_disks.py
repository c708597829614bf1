"""hvsim.disks: real VHD/VHDX files, checked against qemu-img and Windows-made fixtures."""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from hvsim import disks, vhd, vhdx

MiB = 1024 * 1024
FIXTURES = (Path(__file__).resolve().parents[2] / "tests/fixtures/shared/vhd")
QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed")
QEMU_FMT = {"vhd": "vpc", "vhdx": "vhdx"}


def qemu(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=check, timeout=120)


def qemu_info(path: Path, fmt: str) -> dict[str, object]:
    out = json.loads(qemu("info", "-f", QEMU_FMT[fmt], "--output=json", str(path)).stdout)
    assert isinstance(out, dict)
    return out


def qemu_raw(path: Path, fmt: str, tmp_path: Path) -> bytes:
    raw = tmp_path / (path.name + ".raw")
    qemu("convert", "-f", QEMU_FMT[fmt], "-O", "raw", str(path), str(raw))
    data = raw.read_bytes()
    raw.unlink()
    return data


def assert_qemu_check_clean(path: Path, fmt: str) -> None:
    r = qemu("check", "-f", QEMU_FMT[fmt], str(path), check=False)
    if fmt == "vhd":
        # qemu's vpc driver implements no check; info/convert are the acceptance test there.
        assert r.returncode == 63 and "does not support checks" in r.stderr, r
    else:
        assert r.returncode == 0 and "No errors" in r.stdout, (r.stdout, r.stderr)


def bat_states(path: Path) -> list[int]:
    with vhdx.Vhdx.open(path) as d:
        return [d.block_entry(b) & vhdx.BAT_STATE_MASK for b in range(d.data_blocks)]


def apply(model: bytearray, offset: int, data: bytes) -> None:
    model[offset:offset + len(data)] = data


# ---------------------------------------------------------------------------- creation matrix

MATRIX = [("vhd", "fixed", 512), ("vhd", "dynamic", 512), ("vhdx", "fixed", 512), ("vhdx", "dynamic", 512),
          ("vhdx", "fixed", 4096), ("vhdx", "dynamic", 4096)]


def _size(fmt: str, lss: int) -> int:
    # Not a multiple of the block size (partial last block); for VHD not CHS-aligned, so
    # qemu only reports it exactly if it honours CurrentSize for creator "win ".
    return 7 * MiB + 3 * lss


def _block(fmt: str) -> int:
    return 1 * MiB if fmt == "vhdx" else 0


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(("fmt", "kind", "lss"), MATRIX)
def test_created_disk_is_valid_and_agrees_with_qemu(tmp_path: Path, fmt: str, kind: str, lss: int) -> None:
    path = tmp_path / f"d.{fmt}"
    size = _size(fmt, lss)
    info = disks.create_disk(path, fmt, kind, size, block_size=_block(fmt), logical_sector_size=lss,
                             fill_ratio=0.5, seed=7)
    assert (info.fmt, info.kind, info.virtual_size) == (fmt, kind, size)
    assert info.file_size == path.stat().st_size
    assert info.logical_sector_size == lss
    uuid.UUID(info.virtual_disk_id)
    assert info.virtual_disk_id == info.virtual_disk_id.upper()
    expected_bs = {"vhdx": MiB, "vhd": 0 if kind == "fixed" else vhd.DEFAULT_BLOCK_SIZE}[fmt]
    assert info.block_size == expected_bs
    unit = disks.fill_unit(fmt, kind, info.block_size)
    mine = disks.read_virtual(path, 0, size)
    assert mine == disks.expected_content(size, unit, 0.5, 7)
    assert mine != bytes(size)
    if fmt == "vhdx":
        assert info.data_write_guid is not None and info.physical_sector_size == 4096
        with vhdx.Vhdx.open(path) as d:
            assert d.header.log_guid == vhdx.ZERO_GUID
            assert (d.header.log_offset, d.header.log_length) == (vhdx.LOG_OFFSET, vhdx.LOG_LENGTH)
            present = [e & vhdx.BAT_OFFSET_MASK for e in d.bat() if e & 7 == vhdx.PAYLOAD_BLOCK_FULLY_PRESENT]
            assert all(off % MiB == 0 for off in present)
            assert len(present) == (d.data_blocks if kind == "fixed" else round(0.5 * d.data_blocks))
    if lss == 4096:
        # qemu 7.2 refuses 4 KiB logical sectors even in Windows-made files (ENOTSUP);
        # compare with it only where it accepts them.
        r = qemu("info", "-f", "vhdx", str(path), check=False)
        if r.returncode != 0:
            assert "Operation not supported" in r.stderr
            return
    qi = qemu_info(path, fmt)
    assert qi["virtual-size"] == size
    assert qi["format"] == QEMU_FMT[fmt]
    assert qi.get("cluster-size") == (info.block_size or None)
    assert_qemu_check_clean(path, fmt)
    assert qemu_raw(path, fmt, tmp_path) == mine


def test_fill_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.vhdx", tmp_path / "b.vhdx", tmp_path / "c.vhdx"
    for p, seed in ((a, 1), (b, 1), (c, 2)):
        disks.create_disk(p, "vhdx", "dynamic", 8 * MiB, block_size=MiB, fill_ratio=0.25, seed=seed)
    va, vb, vc = (disks.read_virtual(p, 0, 8 * MiB) for p in (a, b, c))
    assert va == vb != vc
    assert bat_states(a).count(vhdx.PAYLOAD_BLOCK_FULLY_PRESENT) == 2
    blocks = [va[i * MiB:(i + 1) * MiB] for i in range(8)]
    filled = [blk for blk in blocks if blk != bytes(MiB)]
    assert len(filled) == 2 and filled[0] != filled[1]


def test_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512-byte"):
        disks.create_disk(tmp_path / "x.vhd", "vhd", "dynamic", 8 * MiB, logical_sector_size=4096)
    with pytest.raises(ValueError, match="block size"):
        disks.create_disk(tmp_path / "x.vhdx", "vhdx", "dynamic", 8 * MiB, block_size=3 * MiB)
    with pytest.raises(ValueError, match="multiple"):
        disks.create_disk(tmp_path / "x.vhdx", "vhdx", "dynamic", 8 * MiB + 512, logical_sector_size=4096)
    with pytest.raises(ValueError, match="create_differencing"):
        disks.create_disk(tmp_path / "x.vhdx", "vhdx", "differencing", 8 * MiB)
    (tmp_path / "junk.vhdx").write_bytes(b"not a disk" * 100)
    with pytest.raises(ValueError):
        disks.disk_info(tmp_path / "junk.vhdx")


# ---------------------------------------------------------------------------- guest writes


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(("fmt", "kind"), [("vhd", "dynamic"), ("vhd", "fixed"), ("vhdx", "dynamic"),
                                           ("vhdx", "fixed")])
def test_guest_writes_read_back_through_qemu(tmp_path: Path, fmt: str, kind: str) -> None:
    path = tmp_path / f"w.{fmt}"
    size = 9 * MiB
    disks.create_disk(path, fmt, kind, size, block_size=_block(fmt), fill_ratio=0.3, seed=3)
    model = bytearray(disks.read_virtual(path, 0, size))
    before = path.stat().st_size
    tracker = disks.ChangeTracker()
    writes = [(100, b"unaligned head"), (MiB - 700, b"\x11" * 1500),  # crosses a 1 MiB block boundary
              (5 * MiB, b"\x22" * (2 * MiB)), (size - 512, b"\x33" * 512), (4 * MiB + 4096, b"\x44" * 4096)]
    for off, data in writes:
        disks.guest_write(path, off, data, tracker=tracker)
        apply(model, off, data)
    assert tracker.ranges[0] == (100, 14)
    assert sum(n for _o, n in tracker.ranges) == sum(len(d) for _o, d in writes)
    mine = disks.read_virtual(path, 0, size)
    assert mine == bytes(model)
    if kind == "dynamic":
        assert path.stat().st_size > before
    else:
        assert path.stat().st_size == before
    if fmt == "vhdx":
        assert path.stat().st_size % MiB == 0
    assert_qemu_check_clean(path, fmt)
    assert qemu_raw(path, fmt, tmp_path) == mine


def test_vhdx_write_sessions_change_guids_and_sequence(tmp_path: Path) -> None:
    path = tmp_path / "s.vhdx"
    disks.create_disk(path, "vhdx", "dynamic", 4 * MiB, block_size=MiB)
    with vhdx.Vhdx.open(path) as d:
        h0 = d.header
        seqs0 = sorted(h.sequence_number for h in d.headers if h)
    disks.guest_write(path, 0, b"a" * 512)
    with vhdx.Vhdx.open(path) as d:
        h1 = d.header
        both = [h for h in d.headers if h]
    assert len(both) == 2 and {h.data_write_guid for h in both} == {h1.data_write_guid}
    assert sorted(h.sequence_number for h in both) == [seqs0[1] + 1, seqs0[1] + 2]
    assert h1.data_write_guid != h0.data_write_guid and h1.file_write_guid != h0.file_write_guid
    assert h1.log_guid == vhdx.ZERO_GUID
    disks.guest_write(path, 512, b"b" * 512, new_session=False)
    with vhdx.Vhdx.open(path) as d:
        assert d.header == h1
    assert disks.read_virtual(path, 0, 1024) == b"a" * 512 + b"b" * 512


def test_change_tracker_merges_ranges() -> None:
    t = disks.ChangeTracker()
    for off, n in ((100, 10), (0, 5), (50, 10), (105, 20), (5, 5), (200, 0)):
        t.add(off, n)
    assert t.ranges == [(0, 10), (50, 10), (100, 25)]
    t.add(0, 200)
    assert t.ranges == [(0, 200)]
    t.clear()
    assert t.ranges == []


# ---------------------------------------------------------------------------- trim


@needs_qemu
@pytest.mark.qemu
def test_trim_dynamic_vhdx_unmaps_whole_blocks_and_zeroes_partial(tmp_path: Path) -> None:
    path = tmp_path / "t.vhdx"
    size = 8 * MiB
    disks.create_disk(path, "vhdx", "dynamic", size, block_size=MiB, fill_ratio=1.0, seed=5)
    model = bytearray(disks.read_virtual(path, 0, size))
    disks.guest_trim(path, 2 * MiB - 1000, 2 * MiB + 1000 + 4096)  # partial, whole, partial
    apply(model, 2 * MiB - 1000, bytes(2 * MiB + 1000 + 4096))
    states = bat_states(path)
    assert states[2] == states[3] == vhdx.PAYLOAD_BLOCK_UNMAPPED
    assert states[1] == states[4] == vhdx.PAYLOAD_BLOCK_FULLY_PRESENT
    mine = disks.read_virtual(path, 0, size)
    assert mine == bytes(model)
    assert_qemu_check_clean(path, "vhdx")
    assert qemu_raw(path, "vhdx", tmp_path) == mine
    disks.guest_write(path, 2 * MiB + 512, b"again" * 100)  # re-allocates an unmapped block
    apply(model, 2 * MiB + 512, b"again" * 100)
    assert disks.read_virtual(path, 0, size) == bytes(model)
    assert bat_states(path)[2] == vhdx.PAYLOAD_BLOCK_FULLY_PRESENT


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_trim_vhd_zeroes(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "t.vhd"
    size = 8 * MiB
    disks.create_disk(path, "vhd", kind, size, fill_ratio=0.5, seed=9)
    model = bytearray(disks.read_virtual(path, 0, size))
    disks.guest_trim(path, MiB + 3, 5 * MiB)
    apply(model, MiB + 3, bytes(5 * MiB))
    assert disks.read_virtual(path, 0, size) == bytes(model)
    assert qemu_raw(path, "vhd", tmp_path) == bytes(model)


# ---------------------------------------------------------------------------- differencing


def _chain(tmp_path: Path, fmt: str, lss: int = 512) -> tuple[Path, Path, bytes]:
    ext = {"vhd": ("vhd", "avhd"), "vhdx": ("vhdx", "avhdx")}[fmt]
    parent = tmp_path / f"disk.{ext[0]}"
    size = 6 * MiB
    disks.create_disk(parent, fmt, "dynamic", size, block_size=_block(fmt), logical_sector_size=lss,
                      fill_ratio=0.5, seed=11)
    child = tmp_path / f"disk_1A2B3C4D-0000-4000-8000-000000000001.{ext[1]}"
    host = "C:\\ClusterStorage\\Volume1\\vm1\\"
    info = disks.create_differencing(child, parent, host + parent.name, child_host_path=host + child.name)
    assert info.kind == "differencing" and info.parent_path == host + parent.name
    return parent, child, disks.read_virtual(parent, 0, size)


@pytest.mark.parametrize(("fmt", "lss"), [("vhd", 512), ("vhdx", 512), ("vhdx", 4096)])
def test_differencing_reads_fall_through_and_writes_stay_in_child(tmp_path: Path, fmt: str, lss: int) -> None:
    parent, child, base = _chain(tmp_path, fmt, lss)
    size = len(base)
    parent_bytes = parent.read_bytes()
    assert disks.read_virtual(child, 0, size) == base
    model = bytearray(base)
    for off, data in ((10, b"x" * 100), (MiB + lss, b"y" * (3 * lss)), (4 * MiB, b"z" * (2 * MiB))):
        disks.guest_write(child, off, data)
        apply(model, off, data)
    assert disks.read_virtual(child, 0, size) == bytes(model)
    assert disks.read_virtual(child, 0, size, parent=parent) == bytes(model)
    assert parent.read_bytes() == parent_bytes  # the frozen parent is untouched
    if fmt == "vhdx":
        states = bat_states(child)
        assert states[0] == vhdx.PAYLOAD_BLOCK_PARTIALLY_PRESENT  # 2 MiB child blocks
        with vhdx.Vhdx.open(child) as d:
            assert d.block_size == vhdx.DEFAULT_DIFF_BLOCK_SIZE and d.lss == lss
            assert states[2] == vhdx.PAYLOAD_BLOCK_FULLY_PRESENT  # wholly overwritten block
            assert states[1] == vhdx.PAYLOAD_BLOCK_NOT_PRESENT
            sb = d._entry(d.sb_index(0))
            assert sb & 7 == vhdx.SB_BLOCK_PRESENT and (sb & vhdx.BAT_OFFSET_MASK) % MiB == 0
            bits = d.block_bitmap(0)
            # sectors holding bytes 10..110 plus 3 sectors at 1 MiB + lss, LSB first
            assert bits[0] & 1 == 1
            first = (MiB + lss) // lss
            assert all(bits[s // 8] >> (s % 8) & 1 for s in range(first, first + 3))
            assert not bits[(first + 3) // 8] >> ((first + 3) % 8) & 1
    # a grandchild (second checkpoint) sees the child's view and adds its own
    gchild = tmp_path / f"disk_2.{child.suffix[1:]}"
    disks.create_differencing(gchild, child, "C:\\ClusterStorage\\Volume1\\vm1\\" + child.name)
    disks.guest_write(gchild, 3 * MiB, b"g" * 4096)
    gmodel = bytearray(model)
    apply(gmodel, 3 * MiB, b"g" * 4096)
    assert disks.read_virtual(gchild, 0, size) == bytes(gmodel)
    assert disks.read_virtual(child, 0, size) == bytes(model)


def test_vhdx_parent_locator_as_hyperv_writes_it(tmp_path: Path) -> None:
    parent, child, _base = _chain(tmp_path, "vhdx")
    pinfo = disks.disk_info(parent)
    cinfo = disks.disk_info(child)
    with vhdx.Vhdx.open(child) as d:
        loc = dict(d.locator)
        assert d.kind == "differencing" and d.fp_flags == vhdx.FP_HAS_PARENT
    assert pinfo.data_write_guid is not None
    assert loc["parent_linkage"] == "{" + pinfo.data_write_guid.lower() + "}"
    assert loc["relative_path"] == ".\\disk.vhdx"
    assert loc["absolute_win32_path"] == "\\\\?\\C:\\ClusterStorage\\Volume1\\vm1\\disk.vhdx"
    assert loc["volume_path"].startswith("\\\\?\\Volume{")
    assert loc["volume_path"].endswith("}\\ClusterStorage\\Volume1\\vm1\\disk.vhdx")
    assert cinfo.virtual_disk_id == pinfo.virtual_disk_id  # guest keeps its disk identity
    assert cinfo.file_size == 4 * MiB  # empty avhdx: header, log, metadata, BAT


def test_vhd_differencing_header_and_locators(tmp_path: Path) -> None:
    parent, child, _base = _chain(tmp_path, "vhd")
    with vhd.Vhd.open(parent) as p, vhd.Vhd.open(child) as c:
        assert c.dyn is not None and c.footer.disk_type == vhd.TYPE_DIFFERENCING
        assert c.dyn.parent_unique_id == p.footer.unique_id
        assert c.dyn.parent_name == "disk.vhd"
        assert c.locator_path(vhd.PLATFORM_W2KU) == "C:\\ClusterStorage\\Volume1\\vm1\\disk.vhd"
        assert c.locator_path(vhd.PLATFORM_W2RU) == ".\\disk.vhd"


@needs_qemu
@pytest.mark.qemu
def test_qemu_refuses_vhdx_differencing(tmp_path: Path) -> None:
    _parent, child, _base = _chain(tmp_path, "vhdx")
    r = qemu("info", "-f", "vhdx", str(child), check=False)
    assert r.returncode != 0 and "Operation not supported" in r.stderr


def test_writing_the_parent_breaks_the_linkage(tmp_path: Path) -> None:
    parent, child, _base = _chain(tmp_path, "vhdx")
    disks.guest_write(parent, 0, b"p" * 512)
    with pytest.raises(ValueError, match="parent_linkage"):
        disks.read_virtual(child, 0, 512)
    (tmp_path / "v").mkdir()
    vparent, vchild, _b = _chain(tmp_path / "v", "vhd")
    other = tmp_path / "other.vhd"
    disks.create_disk(other, "vhd", "dynamic", 6 * MiB)
    with pytest.raises(ValueError, match="ParentUniqueId"):
        disks.read_virtual(vchild, 0, 512, parent=other)
    assert disks.read_virtual(vchild, 0, 512, parent=vparent) == disks.read_virtual(vparent, 0, 512)


# ---------------------------------------------------------------------------- merge


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(("fmt", "parent_kind"), [("vhdx", "dynamic"), ("vhdx", "fixed"), ("vhd", "dynamic"),
                                                  ("vhd", "fixed")])
def test_merge_equals_child_view(tmp_path: Path, fmt: str, parent_kind: str) -> None:
    ext = "avhdx" if fmt == "vhdx" else "avhd"
    parent = tmp_path / f"base.{fmt}"
    size = 6 * MiB
    disks.create_disk(parent, fmt, parent_kind, size, block_size=_block(fmt), fill_ratio=0.5, seed=21)
    child = tmp_path / f"base_c1.{ext}"
    disks.create_differencing(child, parent, "D:\\VMs\\base." + fmt)
    grandchild = tmp_path / f"base_c2.{ext}"
    for off, data in ((3, b"q" * 999), (2 * MiB, b"r" * (2 * MiB)), (5 * MiB + 512, b"s" * 4096)):
        disks.guest_write(child, off, data)
    disks.guest_trim(child, 4 * MiB, 1 * MiB)
    view = disks.read_virtual(child, 0, size)
    disks.create_differencing(grandchild, child, "D:\\VMs\\" + child.name)
    disks.guest_write(grandchild, MiB, b"t" * 512)
    gview = disks.read_virtual(grandchild, 0, size)

    disks.merge_into_parent(child, parent)
    merged = disks.read_virtual(parent, 0, size)
    assert merged == view
    assert_qemu_check_clean(parent, fmt)
    assert qemu_raw(parent, fmt, tmp_path) == view
    # Hyper-V re-points the live disk at the merged parent and deletes the checkpoint disk
    child.unlink()
    disks.reparent(grandchild, parent, "D:\\VMs\\base." + fmt)
    assert disks.read_virtual(grandchild, 0, size) == gview
    assert disks.disk_info(grandchild).parent_path == "D:\\VMs\\base." + fmt


def test_merge_vhdx_chain_with_trimmed_child_block(tmp_path: Path) -> None:
    parent = tmp_path / "p.vhdx"
    disks.create_disk(parent, "vhdx", "dynamic", 8 * MiB, block_size=MiB, fill_ratio=1.0, seed=2)
    child = tmp_path / "p_c.avhdx"
    disks.create_differencing(child, parent, "C:\\p.vhdx", block_size=MiB)
    disks.guest_trim(child, 2 * MiB, 2 * MiB)  # whole child blocks -> ZERO, never the parent's data
    assert bat_states(child)[2:4] == [vhdx.PAYLOAD_BLOCK_ZERO] * 2
    assert disks.read_virtual(child, 2 * MiB, 2 * MiB) == bytes(2 * MiB)
    view = disks.read_virtual(child, 0, 8 * MiB)
    disks.merge_into_parent(child, parent)
    assert disks.read_virtual(parent, 0, 8 * MiB) == view
    assert bat_states(parent)[2:4] == [vhdx.PAYLOAD_BLOCK_UNMAPPED] * 2


# ---------------------------------------------------------------------------- dirty log, corruption


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_dirty_log_is_replayable_by_qemu(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "dirty.vhdx"
    size = 8 * MiB
    disks.create_disk(path, "vhdx", kind, size, block_size=MiB, fill_ratio=0.25, seed=4)
    before = disks.read_virtual(path, 0, size)
    off, data = disks.make_dirty_log(path)
    with vhdx.Vhdx.open(path) as d:
        assert d.header.log_guid != vhdx.ZERO_GUID
        entry = vhdx._pread(d.f, d.header.log_offset, 2 * vhdx.LOG_SECTOR)
        assert entry[:4] == b"loge" and entry[48:64] != bytes(16)
    # without replay the guest view is unchanged (the BAT/data update sits in the log)
    assert disks.read_virtual(path, 0, size) == before
    r = qemu("info", "-f", "vhdx", str(path), check=False)
    assert r.returncode != 0 and "log that needs to be replayed" in r.stderr
    replay = tmp_path / "replay.vhdx"
    shutil.copyfile(path, replay)
    r = qemu("check", "-r", "all", "-f", "vhdx", str(replay), check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    expect = bytearray(before)
    apply(expect, off, data)
    assert (bytes(expect) != before) == (kind == "dynamic")
    assert qemu_raw(replay, "vhdx", tmp_path) == bytes(expect)
    assert disks.disk_info(path).log_pending and not disks.disk_info(replay).log_pending
    with pytest.raises(ValueError, match="log is not empty"):
        disks.guest_write(path, 0, b"x" * 512)
    disks.guest_write(replay, 0, b"x" * 512)  # fine once replayed


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(("fmt", "how", "disk_info_fails", "qemu_fails"), [
    ("vhdx", "header_checksum", False, False),  # the other header is still valid
    ("vhdx", "both_headers", True, True),
    ("vhdx", "region_tables", True, True),
    ("vhdx", "truncate", True, True),
    ("vhdx", "bat_beyond_eof", True, True),
    ("vhdx", "bat_overlap", True, True),
    ("vhd", "footer_checksum", True, False),  # qemu reads the dynamic disk's footer copy at 0
    ("vhd", "dynamic_header_checksum", True, False),  # qemu does not verify that checksum
    ("vhd", "truncate", True, True),  # the last block now runs past the end of the file
    ("vhd", "bat_beyond_eof", True, True),
])
def test_corrupt_files(tmp_path: Path, fmt: str, how: str, disk_info_fails: bool, qemu_fails: bool) -> None:
    path = tmp_path / f"c.{fmt}"
    disks.create_disk(path, fmt, "dynamic", 8 * MiB, block_size=_block(fmt), fill_ratio=0.5, seed=1)
    old_seq = None
    if how == "header_checksum":
        with vhdx.Vhdx.open(path) as d:
            old_seq = min(h.sequence_number for h in d.headers if h)
    disks.corrupt_disk(path, how)
    if disk_info_fails:
        with pytest.raises(ValueError):
            disks.disk_info(path)
    else:
        assert disks.disk_info(path).virtual_size == 8 * MiB
        with vhdx.Vhdx.open(path) as d:
            assert d.header.sequence_number == old_seq
    ok = (qemu("info", "-f", QEMU_FMT[fmt], str(path), check=False).returncode == 0
          and (fmt == "vhd" or qemu("check", "-f", "vhdx", str(path), check=False).returncode == 0))
    assert ok != qemu_fails


def test_partially_present_block_needs_a_sector_bitmap(tmp_path: Path) -> None:
    _parent, child, _base = _chain(tmp_path, "vhdx")
    disks.guest_write(child, 0, b"c" * 512)
    assert disks.disk_info(child).kind == "differencing"
    with vhdx.Vhdx.open(child, writable=True) as d:
        d._set_entry(d.sb_index(0), vhdx.SB_BLOCK_NOT_PRESENT)
    with pytest.raises(ValueError, match="without a sector bitmap"):
        disks.disk_info(child)


def test_corrupt_disk_rejects_unknown_kind(tmp_path: Path) -> None:
    path = tmp_path / "c.vhd"
    disks.create_disk(path, "vhd", "fixed", MiB)
    with pytest.raises(ValueError, match="unknown corruption"):
        disks.corrupt_disk(path, "bitrot")
    with pytest.raises(ValueError, match="VHDX files only"):
        disks.corrupt_disk(path, "region_tables")


# ---------------------------------------------------------------------------- Windows-made fixtures


def _fixture(tmp_path: Path, name: str) -> Path:
    src = FIXTURES / name
    out = tmp_path / name.rsplit(".", 1)[0]
    opener = gzip.open if name.endswith(".gz") else bz2.open
    with opener(src, "rb") as f:
        out.write_bytes(f.read())
    return out


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(("name", "kind", "bs"), [
    ("dissect-dynamic.vhdx.gz", "dynamic", 32 * MiB), ("dissect-fixed.vhdx.gz", "fixed", 2 * MiB),
    ("qemu-iotest-dynamic-1G.vhdx.bz2", "dynamic", 32 * MiB), ("dissect-dynamic.vhd.gz", "dynamic", 2 * MiB),
    ("dissect-fixed.vhd.gz", "fixed", 0)])
def test_reader_agrees_with_qemu_on_windows_files(tmp_path: Path, name: str, kind: str, bs: int) -> None:
    path = _fixture(tmp_path, name)
    fmt = "vhdx" if ".vhdx" in name else "vhd"
    info = disks.disk_info(path)
    assert (info.fmt, info.kind, info.block_size) == (fmt, kind, bs)
    # Windows stores these ids as GUID structs (first three fields little-endian): read that
    # way they are random version-4 GUIDs, read big-endian they are not.
    assert uuid.UUID(info.virtual_disk_id).version == 4
    raw = tmp_path / "fixture.raw"
    qemu("convert", "-f", QEMU_FMT[fmt], "-O", "raw", str(path), str(raw))
    assert raw.stat().st_size == info.virtual_size
    compare = info.virtual_size
    if fmt == "vhdx" and info.virtual_size > 128 * MiB:
        # The 1 GiB Server 2012 file holds data in its first blocks only; the rest is
        # PAYLOAD_BLOCK_ZERO, which both readers return as zeros by definition.
        states = bat_states(path)
        compare = 128 * MiB
        assert set(states[compare // bs:]) <= {vhdx.PAYLOAD_BLOCK_ZERO, vhdx.PAYLOAD_BLOCK_NOT_PRESENT}
        assert vhdx.PAYLOAD_BLOCK_FULLY_PRESENT in states[:compare // bs]
    chunk = 32 * MiB
    with raw.open("rb") as f:
        for off in range(0, compare, chunk):
            assert disks.read_virtual(path, off, chunk) == f.read(chunk), off


def test_layout_matches_windows_files(tmp_path: Path) -> None:
    win = _fixture(tmp_path, "dissect-dynamic.vhdx.gz").read_bytes()
    mine_path = tmp_path / "mine.vhdx"
    disks.create_disk(mine_path, "vhdx", "dynamic", 10 * MiB)
    mine = mine_path.read_bytes()
    rt = slice(vhdx.REGION_TABLE_OFFSETS[0], vhdx.REGION_TABLE_OFFSETS[1] + vhdx.REGION_TABLE_SIZE)
    assert mine[rt] == win[rt]  # region tables, checksums included
    md = slice(vhdx.METADATA_OFFSET, vhdx.METADATA_OFFSET + 32 * 6)
    assert mine[md] == win[md]  # metadata table: same items, order, offsets and flags
    items = slice(vhdx.METADATA_OFFSET + vhdx.METADATA_ITEMS_START, vhdx.METADATA_OFFSET + 0x10018)
    assert mine[items] == win[items]  # block size, flags, size, sector sizes
    # VHD: same dynamic header and BAT/padding once the same blocks are written in the same order
    wvhd = _fixture(tmp_path, "dissect-dynamic.vhd.gz").read_bytes()
    mvhd_path = tmp_path / "mine.vhd"
    disks.create_disk(mvhd_path, "vhd", "dynamic", 10 * MiB)
    for off in (0, 6 * MiB, 2 * MiB):
        disks.guest_write(mvhd_path, off, b"w" * 512)
    mvhd = mvhd_path.read_bytes()
    assert mvhd[512:8192] == wvhd[512:8192]
    assert mvhd[:24] == wvhd[:24]  # cookie, features, format version, DataOffset 512
    assert mvhd[28:40] == wvhd[28:40] == b"win \x00\x0a\x00\x00Wi2k"  # creator, version 10.0, host OS
    assert mvhd[40:60] == wvhd[40:60]  # original/current size, CHS geometry
