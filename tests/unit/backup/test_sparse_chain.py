"""An incremental on top of a sparse full: the delta's result digest describes what a restore rebuilds.

The restored image of a sparse full has zeros where the file still holds the old bytes of trimmed
blocks.  When such a hole shares an image-digest chunk with a block the next job changes, the
touched chunk must be hashed as the image holds it (zeros there), not as the file does; the
zero ranges travel in the disk base for that.  The disks are made by hvsim's writer (as Hyper-V
keeps a trimmed block's bytes), read through the product's local storage.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import List, Tuple

import pytest

from bareos_hyperv.backup.base import DiskBase
from bareos_hyperv.backup.incremental import complement_ranges, plan_file
from bareos_hyperv.model.backup import DeltaMethod
from bareos_hyperv.storage.delta import DeltaApplier, DeltaHeader, DeltaReader, DeltaResultMismatch, FilePatchTarget
from bareos_hyperv.storage.local import LocalReader, LocalStorage
from bareos_hyperv.storage.locations import LocalLocation
from bareos_hyperv.storage.vhd import open_file
from hvsim import disks as hvdisks

MiB = 1024 * 1024
CHUNK = 4 * MiB  # larger than the 1 MiB blocks, as for files above 16 GiB


def _disk(tmp_path: Path) -> Path:
    path = tmp_path / "data.vhdx"
    hvdisks.create_disk(path, "vhdx", "dynamic", 64 * MiB, block_size=MiB, fill_ratio=0.0)
    hvdisks.guest_write(path, 8 * MiB, os.urandom(8 * MiB))  # blocks 8..15
    hvdisks.guest_trim(path, 9 * MiB, MiB)  # holes sharing chunk 8-12 MiB with live blocks
    hvdisks.guest_trim(path, 13 * MiB, MiB)
    return path


def _apply(data_source: DeltaReader, target: Path, base: object = None) -> DeltaApplier:
    applier = DeltaApplier(FilePatchTarget(str(target)), name="d", base=base)  # type: ignore[arg-type]
    applier.write(data_source.read())
    data_source.close()
    applier.close()
    return applier


def _sparse_full(path: Path, image: Path) -> Tuple[DiskBase, List[Tuple[int, int]]]:
    storage = LocalStorage()
    plan = plan_file(storage, LocalLocation(PurePosixPath(str(path))), path.name, job_id=1, base=None, rct=None,
                     no_rct_reason="", virtual_size=64 * MiB)
    assert plan.sparse and plan.method is None
    header = DeltaHeader.sparse_full(job_id=1, size=plan.size, chunk_size=CHUNK, ranges=plan.ranges)
    reader = LocalReader(str(path))
    image.write_bytes(b"")
    applier = _apply(DeltaReader(header, plan.ranges, name="d", source=reader, close=reader.close), image)
    assert applier.result is not None
    with open_file(path) as disk:
        base = DiskBase(vm_guid="G", index=1, path="C:\\data.vhdx", disk_format="VHDX", disk_id=None,
                        virtual_size=64 * MiB, block_size=disk.layout.block_size, job_id=1, hashes=applier.result,
                        sha256=applier.result_sha256, bat_offset=plan.bat_offset, bat=plan.bat,
                        zeros=complement_ranges(plan.ranges, plan.size))
    assert plan.zeros == base.zeros and base.zeros
    return base, plan.ranges


@pytest.mark.parametrize("keep_zeros", [True, False])
def test_rct_delta_on_a_sparse_full_rebuilds_the_disk(tmp_path: Path, keep_zeros: bool) -> None:
    path = _disk(tmp_path)
    image = tmp_path / "image.vhdx"
    base, _ranges = _sparse_full(path, image)
    if not keep_zeros:  # what a base without its zero ranges (the old behaviour) would give
        base = DiskBase(**{**base.__dict__, "zeros": []})
    hvdisks.guest_write(path, 8 * MiB + 100 * 1024, os.urandom(4096))  # block 8: chunk 2 holds hole 9
    changed = [(8 * MiB + 100 * 1024, 4096)]
    plan = plan_file(LocalStorage(), LocalLocation(PurePosixPath(str(path))), path.name, job_id=2, base=base,
                     rct=lambda: changed, no_rct_reason="", virtual_size=64 * MiB)
    assert plan.method is DeltaMethod.RCT, plan.reason
    assert plan.header is not None
    reader = LocalReader(str(path))
    delta = DeltaReader(plan.header, plan.ranges, reader.read_at, name="d", close=reader.close)
    # The chunk of the header section, log, BAT and metadata region, and the 4 KiB: no hole is sent.
    assert sum(n for _o, n in plan.ranges) <= CHUNK + 4096
    if not keep_zeros:
        with pytest.raises(DeltaResultMismatch):
            _apply(delta, image, base.hashes)
        return
    applier = _apply(delta, image, base.hashes)
    assert applier.result is not None and applier.result.digest() == plan.header.result_digest
    # The zero ranges left are still zeros in the image (the holes the delta did not cover).
    assert plan.zeros and all(image.read_bytes()[o:o + n] == bytes(n) for o, n in plan.zeros)
    with open_file(path) as source, open_file(image) as rebuilt:
        assert rebuilt.read_virtual(0, 64 * MiB) == source.read_virtual(0, 64 * MiB)
