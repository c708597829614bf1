"""The product's VHD/VHDX reader against the simulator's independent writer (two implementations, one spec)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pytest

from bareos_hyperv.storage.vhd import VhdLogReplayRequiredError, open_file, resolve_chain
from hvsim import disks

MiB = 1 << 20
CASES = [
    ("vhdx", "dynamic", 512, 2 * MiB),
    ("vhdx", "dynamic", 4096, 1 * MiB),
    ("vhdx", "fixed", 512, 0),
    ("vhd", "dynamic", 512, 0),
    ("vhd", "fixed", 512, 0),
]


def _sha_virtual(read: Callable[[int, int], bytes], size: int) -> str:
    h = hashlib.sha256()
    for off in range(0, size, 4 * MiB):
        h.update(read(off, min(4 * MiB, size - off)))
    return h.hexdigest()


@pytest.mark.parametrize(("fmt", "kind", "sector", "block"), CASES)
def test_reader_agrees_with_writer(tmp_path: Path, fmt: str, kind: str, sector: int, block: int) -> None:
    path = tmp_path / f"d.{fmt}"
    info = disks.create_disk(path, fmt, kind, 24 * MiB, block_size=block, logical_sector_size=sector,
                             fill_ratio=0.4, seed=7)
    disks.guest_write(path, 3 * MiB + 512, b"\xab" * 8192)
    disk = open_file(str(path))
    layout = disk.layout
    assert layout.virtual_size == info.virtual_size == 24 * MiB
    assert layout.logical_sector_size == info.logical_sector_size
    assert str(layout.virtual_disk_id).upper() == info.virtual_disk_id.upper()
    ours = _sha_virtual(disk.read_virtual, layout.virtual_size)
    theirs = _sha_virtual(lambda o, n: disks.read_virtual(path, o, n), info.virtual_size)
    assert ours == theirs


def test_checkpoint_chain_reads_through_to_the_frozen_parent(tmp_path: Path) -> None:
    parent = tmp_path / "vm.vhdx"
    disks.create_disk(parent, "vhdx", "dynamic", 16 * MiB, block_size=1 * MiB, fill_ratio=0.5, seed=3)
    child = tmp_path / "vm_0A1B.avhdx"
    disks.create_differencing(child, parent, "C:\\ClusterStorage\\Volume1\\vm\\vm.vhdx")
    disks.guest_write(child, 5 * MiB + 4096, b"\x5a" * 3000, parent=parent)
    chain = resolve_chain(open_file, str(child))
    try:
        assert len(chain.disks) == 2
        ours = _sha_virtual(chain.read_virtual, 16 * MiB)
    finally:
        chain.close()
    theirs = _sha_virtual(lambda o, n: disks.read_virtual(child, o, n, parent=parent), 16 * MiB)
    assert ours == theirs


def test_dirty_log_from_the_writer_is_refused_by_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "dirty.vhdx"
    disks.create_disk(path, "vhdx", "dynamic", 8 * MiB, block_size=1 * MiB, fill_ratio=0.5, seed=1)
    disks.make_dirty_log(path)
    with pytest.raises(VhdLogReplayRequiredError) as info:
        open_file(str(path))
    assert "dirty.vhdx" in str(info.value)
