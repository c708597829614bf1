"""The manifests tell the truth about the disk files: every value is read against the simulator's files.

Both manifests of a VM are checked: ``manifest.xml`` as streamed first (before the disks, so a full
copy's SHA-256 cannot be in it: it says the digest is in ``SHA256SUMS``) and the final manifest saved
as a restore object (with the SHA-256 of every file).  Issue #9 point 12: every ``fileSize`` was 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PureWindowsPath
from typing import Any, Dict

import pytest

from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.model.backup import DiskFile, PartKind
from bareos_hyperv.model.disk import DiskFormat, DiskType
from hvsim import disks as simdisks

pytestmark = pytest.mark.usefixtures("no_agent_left")

_FORMATS = {"vhd": DiskFormat.VHD, "vhdx": DiskFormat.VHDX}
_TYPES = {"fixed": DiskType.FIXED, "dynamic": DiskType.DYNAMIC, "differencing": DiskType.DIFFERENCING}


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_file(f: DiskFile, truth: Dict[str, Any]) -> None:
    info = truth["info"]
    assert f.info.format is _FORMATS[info.fmt]
    assert f.info.type is _TYPES[info.kind]
    assert f.info.virtual_size == info.virtual_size
    assert f.info.block_size == info.block_size
    assert f.info.logical_sector_size == info.logical_sector_size
    assert f.info.physical_sector_size == info.physical_sector_size
    assert (f.info.disk_id or "").upper().strip("{}") == info.virtual_disk_id.upper()
    assert f.info.parent_path == info.parent_path
    assert f.file_size == truth["size"] > 0


def test_both_manifests_record_every_disk_files_true_size_and_digest(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("legacy01")
    host_paths = [
        "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-system.vhd",
        "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-data.vhdx",
        "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-swap.vhd"]
    truth: Dict[str, Dict[str, Any]] = {}
    for host_path in host_paths:
        local = world.local(vm.node, host_path)
        truth[host_path.lower()] = {"size": local.stat().st_size, "sha256": _sha(local),
                                    "info": simdisks.disk_info(local), "name": PureWindowsPath(host_path).name}

    job = estate.backup(host="HVSTANDALONE01", vm="legacy01")
    assert job.status == "T", job.log()
    base = "@hyperv/HVSTANDALONE01/legacy01/"
    objects = estate.fd.store.objects([job.jobid])
    final = from_xml(next(o for o in objects if o.object_name == base + "manifest.object.xml").inflated(),
                     source="restore object")
    back = estate.restore_to(tmp_path / "r")
    assert back.status == "T", back.log()
    tree = tmp_path / "r" / base
    streamed = from_xml((tree / "manifest.xml").read_bytes(), source="manifest.xml")
    # Issue 9 point 7: the export's BackupIntent is set deliberately and recorded (PreserveChain).
    assert streamed.backup.export_backup_intent == final.backup.export_backup_intent == 0
    sums = dict(reversed(line.split("  ", 1)) for line in (tree / "SHA256SUMS").read_text().splitlines())

    def files(manifest: Manifest) -> Dict[str, DiskFile]:
        return {f.info.path.lower(): f for d in manifest.disks for f in d.chain}

    assert set(files(streamed)) == set(files(final)) == set(truth)
    for key, f in files(streamed).items():
        _check_file(f, truth[key])
        # The streamed manifest precedes the bytes: the digest is where it says, and it is the file's.
        assert f.sha256 is None and f.sha256_in == "SHA256SUMS"
        saved = f"disks/{f.index}-{truth[key]['name']}"
        assert sums[saved] == truth[key]["sha256"]
        assert _sha(tree / saved) == truth[key]["sha256"]
        assert (tree / saved).stat().st_size == f.file_size
    for key, f in files(final).items():
        _check_file(f, truth[key])
        assert f.sha256 == truth[key]["sha256"] and f.sha256_in is None
    # Every part of the final manifest is a file of the save set with that size and digest.
    disk_parts = [p for p in final.backup.parts if p.kind is PartKind.DISK]
    assert len(disk_parts) == len(truth)
    for part in final.backup.parts:
        assert (tree / part.name).stat().st_size == part.size
        assert _sha(tree / part.name) == part.sha256 == sums[part.name]
    for part in disk_parts:
        assert part.source is not None
        assert part.size == truth[part.source.lower()]["size"]
