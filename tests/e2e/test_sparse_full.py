"""Sparse fulls end to end: fdsim (the Bareos fd) -> plugin -> agent -> hvsim (WinRM) + real Samba.

A dynamic VHDX whose guest trimmed data keeps the old bytes of the trimmed blocks in the file,
referenced by nothing.  A full backup then sends only what the disk's tables reference
(``disks/<n>-<file>+S``), and every restore of it (to a directory, into Hyper-V, or as the base of
an incremental chain) gives a file that ``qemu-img check`` accepts and ``qemu-img compare`` finds
equal to the frozen source, with zeros where the source held the unreferenced bytes.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any, Dict

import pytest

from bareos_hyperv.model.backup import DeltaMethod, PartKind
from tests.e2e.test_incremental import WEB, WEB_DISKS, _backup, _manifest, _sha, _texts
from tests.e2e.test_restore_hyperv import check_restored, delete_vm, no_leftovers, restore, vm_disks

pytestmark = pytest.mark.usefixtures("no_agent_left")

MiB = 1024 * 1024
DATA = "web01-data.vhdx"
SPARSE_ITEM = f"disks/1-{DATA}+S"


def _qemu(*args: str) -> None:
    run = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    assert run.returncode == 0, " ".join(args) + ": " + run.stdout + run.stderr


def _same_disk(restored: Path, frozen: Path) -> None:
    """qemu accepts the restored file and reads the same virtual disk from it as from the frozen source."""
    _qemu("check", str(restored))
    _qemu("compare", "-f", "vhdx", "-F", "vhdx", str(frozen), str(restored))


def _trim_data_disk(world: Any, rnd: random.Random) -> None:
    """24 MiB written, 16 MiB of it trimmed: the 1 MiB blocks become unmapped, their bytes stay in the file."""
    vm = world.vm("web01")
    world.guest_write(vm.id, 1, 8 * MiB, rnd.randbytes(24 * MiB))
    world.guest_trim(vm.id, 1, 8 * MiB, 16 * MiB)


def _freeze(world: Any, where: Path) -> Dict[str, Path]:
    """Copies of the disk files as the next backup freezes them (nothing writes during a job)."""
    vm = world.vm("web01")
    where.mkdir(parents=True)
    out = {}
    for path in WEB_DISKS:
        name = PureWindowsPath(path).name
        out[name] = where / name
        shutil.copyfile(world.local(vm.node, path), out[name])
    return out


def test_sparse_full_of_a_trimmed_dynamic_vhdx_then_an_incremental_and_restores_of_both(
        estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    rnd = random.Random(11)
    _trim_data_disk(world, rnd)
    frozen = _freeze(world, tmp_path / "frozen-full")
    file_size = frozen[DATA].stat().st_size

    full = _backup(estate, "F")
    names = estate.fd.list_files(full.jobid)
    assert WEB + SPARSE_ITEM in names and WEB + f"disks/1-{DATA}" not in names
    assert WEB + "disks/0-web01-system.vhdx" in names  # a file its tables reference whole: a plain copy
    infos = _texts(full, "M_INFO")
    assert any(DATA in t and "sparse full" in t for t in infos), full.log()
    # Per disk: bytes read against the file size and the virtual size.
    (report,) = [t for t in infos if DATA in t and "MB read of a" in t]
    assert f"{file_size / MiB:.1f} MB file" in report and "virtual size 64.0 MB" in report, report
    manifest = _manifest(estate, full)
    (part,) = [p for p in manifest.backup.parts if p.name == SPARSE_ITEM]
    assert part.kind is PartKind.DISK and part.size < file_size - 15 * MiB, (part.size, file_size)
    (data_file,) = [f for d in manifest.disks for f in d.chain if f.index == 1]
    assert data_file.file_size == file_size and data_file.sha256 is not None

    # Restore to a directory: the plain .vhdx (never the +S stream), equal to the source as a disk.
    where = tmp_path / "r-full"
    back = estate.restore_to(where)
    assert back.status == "T", back.log()
    disks = where / WEB / "disks"
    assert sorted(p.name for p in disks.iterdir()) == ["0-web01-system.vhdx", f"1-{DATA}"]
    restored = disks / f"1-{DATA}"
    assert restored.stat().st_size == file_size
    assert _sha(restored) == data_file.sha256 != _sha(frozen[DATA])  # the normalised image: zeros in the holes
    _same_disk(restored, frozen[DATA])
    assert _sha(disks / "0-web01-system.vhdx") == _sha(frozen["web01-system.vhdx"])
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=where / WEB, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    # Writes into the trimmed region (a reused place in the file) and elsewhere; an incremental on top.
    vm = world.vm("web01")
    world.guest_write(vm.id, 1, 10 * MiB + 4096, rnd.randbytes(8192))
    world.guest_write(vm.id, 1, 30 * MiB, rnd.randbytes(2 * MiB))
    world.guest_write(vm.id, 0, 5 * MiB, rnd.randbytes(4096))
    frozen_inc = _freeze(world, tmp_path / "frozen-inc")
    inc = _backup(estate, "I")
    deltas = [p for p in _manifest(estate, inc).backup.parts if p.kind is PartKind.DELTA]
    assert {p.method for p in deltas} <= {DeltaMethod.RCT, DeltaMethod.UNCHANGED}, inc.log()
    data_delta = next(p for p in deltas if p.file_index == 1)
    assert data_delta.size < 8 * MiB, data_delta  # the changed blocks and metadata, not the holes

    where = tmp_path / "r-inc"
    back = estate.restore_to(where, upto=inc.jobid)
    assert back.status == "T", back.log()
    disks = where / WEB / "disks"
    assert sorted(p.name for p in disks.iterdir()) == ["0-web01-system.vhdx", f"1-{DATA}"]
    _same_disk(disks / f"1-{DATA}", frozen_inc[DATA])
    _same_disk(disks / "0-web01-system.vhdx", frozen_inc["web01-system.vhdx"])


def test_sparse_full_restored_into_hyperv(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    _trim_data_disk(world, random.Random(5))
    frozen = _freeze(world, tmp_path / "frozen")
    web_id = world.vm("web01").id
    full = _backup(estate, "F")
    assert WEB + SPARSE_ITEM in estate.fd.list_files(full.jobid)
    (data_file,) = [f for d in _manifest(estate, full).disks for f in d.chain if f.index == 1]
    delete_vm(world, "web01")

    back = restore(estate)
    assert back.status == "T", back.log()
    assert data_file.sha256 is not None
    expected = {"web01-system.vhdx": _sha(frozen["web01-system.vhdx"]), DATA: data_file.sha256}
    vm = check_restored(world, "web01", node="HV01", disks=expected, switches=["External-LAN"])
    assert vm.id == web_id
    (path,) = [p for p in vm_disks(world, vm) if p.endswith(DATA)]
    _same_disk(world.local(vm.node, path), frozen[DATA])
    no_leftovers(world)
