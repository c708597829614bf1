r"""VMs whose files live on an SMB 3 file share (Hyper-V over SMB), end to end.

The clustered VM ``sql01`` keeps its configuration and disks in ``\\FS01\VMStore\sql01``
(:func:`hvsim.world.scenario.add_smb_share_vm`); the simulated file server ``FS01`` is a real smbd of
its own, reached by the ``smb_host_map`` entry ``FS01=address:port`` as the nodes are.  A full and an
incremental backup after guest writes go through fdsim; the restore to a directory is byte-identical
to the frozen source (SHA-256, ``qemu-img check``); the restore into Hyper-V after the VM was deleted
puts it back at its UNC paths, and the plan says that the share's free space is not known.  With only
read access to the share, a backup works cleanly when the staging folder is elsewhere, saves the data
with warnings naming the missing right when it is not, and a restore to the share fails before
anything is imported, naming the share and the right that is missing.
Issue #9 point 10.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any, Dict, Iterator, List

import pytest

from bareos_hyperv.manifest.document import from_xml
from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import add_smb_share_vm, default_world
from tests.e2e.conftest import Estate
from tests.e2e.test_restore_hyperv import check_restored, delete_vm, no_leftovers, restore

pytestmark = pytest.mark.usefixtures("no_agent_left")

MiB = 1 << 20
FOLDER = "\\\\FS01\\VMStore\\sql01"
DISKS = (f"{FOLDER}\\Virtual Hard Disks\\sql01-system.vhdx", f"{FOLDER}\\Virtual Hard Disks\\sql01-data.vhdx")
TREE = "@hyperv/HVCLUSTER01/sql01/"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _qemu_ok(path: Path) -> None:
    check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def _estate(tmp_path: Path, access: str) -> Iterator[Estate]:
    world = default_world(tmp_path / "sim" / "estate", disk_size=16 * MiB)
    add_smb_share_vm(world, access=access)
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


@pytest.fixture
def share_estate(tmp_path: Path) -> Iterator[Estate]:
    yield from _estate(tmp_path, "full")


@pytest.fixture
def read_only_estate(tmp_path: Path) -> Iterator[Estate]:
    yield from _estate(tmp_path, "read")


def _frozen(world: Any) -> Dict[str, str]:
    vm = world.vm("sql01")
    return {PureWindowsPath(p).name: _sha(world.local(vm.node, p)) for p in DISKS}


def _backup(estate: Estate, level: str, **options: str) -> JobResult:
    job = estate.backup(level=level, host="HVCLUSTER01", vm="sql01", **options)
    assert job.status == "T", job.log()
    return job


def _manifest_paths(estate: Estate, job: JobResult) -> List[str]:
    (obj,) = [o for o in estate.fd.store.objects([job.jobid]) if o.object_name == TREE + "manifest.object.xml"]
    manifest = from_xml(obj.inflated(), source="restore object")
    assert manifest.vm.config_root == FOLDER
    return [f.info.path for d in manifest.disks for f in d.chain]


def test_full_and_incremental_backup_and_restores_of_a_vm_on_a_file_share(share_estate: Estate,
                                                                          tmp_path: Path) -> None:
    estate, world = share_estate, share_estate.sim.world
    assert "FS01" in estate.sim.smb_map()
    vm = world.vm("sql01")
    assert [s.host_resource[0] for s in vm.config.vhds()] == list(DISKS)
    full_sums = _frozen(world)

    full = _backup(estate, "F")
    assert sorted(_manifest_paths(estate, full)) == sorted(DISKS)
    names = estate.fd.list_files(full.jobid)
    assert {n for n in names if "/disks/" in n} == {TREE + "disks/0-sql01-system.vhdx",
                                                     TREE + "disks/1-sql01-data.vhdx"}, names
    assert world.snapshots(vm.id) == [] and len(world.reference_points(vm.id)) == 1
    share = world.local(vm.node, FOLDER)
    # no checkpoint disk and no job's staging folder is left on the share; the reference point is recorded there
    assert not [p for p in share.rglob("*") if p.suffix.lower() == ".avhdx" or p.parent.name == "bareos-hyperv-staging"]
    assert (share / "bareos-hyperv-state" / f"{vm.id}.reference-points").is_file()

    # the guest writes to both disks; the incremental sends only what changed, read from the share
    world.guest_write(vm.id, 0, 3 * MiB + 512, b"\x5a" * 9000)
    world.guest_write(vm.id, 1, 10 * MiB, b"\xa5" * (2 * MiB))
    incr_sums = _frozen(world)
    assert incr_sums != full_sums
    incr = _backup(estate, "I")
    deltas = [n for n in estate.fd.list_files(incr.jobid) if "+I+" in n]
    assert len(deltas) == 2, deltas
    assert incr.log().count("changes from change tracking") == 2, incr.log()

    # restore to a directory: full + incremental give the disks as the incremental froze them
    where = tmp_path / "restored"
    back = estate.restore_to(where)
    assert back.status == "T", back.log()
    tree = where / TREE
    for index, (name, digest) in enumerate(incr_sums.items()):
        restored = tree / "disks" / f"{index}-{name}"
        assert _sha(restored) == digest, restored
        _qemu_ok(restored)
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tree, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    # restore into Hyper-V after the VM was deleted: back on the share, at its UNC paths
    vm_id = vm.id
    delete_vm(world, "sql01")
    assert not world.local("HV01", DISKS[0]).exists()
    into = restore(estate)
    assert into.status == "T", into.log()
    log = into.log()
    assert "free space on \\\\FS01\\VMStore is not known" in log, log
    restored_vm = check_restored(world, "sql01", node="HV01", disks=incr_sums, switches=["External-LAN"])
    assert restored_vm.id == vm_id
    assert [s.host_resource[0] for s in restored_vm.config.vhds()] == list(DISKS)
    assert str(restored_vm.config.vssd.get("ConfigurationDataRoot")) == FOLDER
    assert world.local("HV01", restored_vm.live_config_file()).is_relative_to(share)
    no_leftovers(world)


def test_read_access_to_the_share_backs_up_and_a_restore_there_names_the_missing_right(
        read_only_estate: Estate) -> None:
    estate, world = read_only_estate, read_only_estate.sim.world
    vm = world.vm("sql01")
    # The staging folder and the reference-point record go where the account may write (a CSV).
    staging = "C:\\ClusterStorage\\Volume1\\bareos-staging"
    full = _backup(estate, "F", staging_path=staging)
    assert sorted(_manifest_paths(estate, full)) == sorted(DISKS)
    assert len(world.reference_points(vm.id)) == 1
    assert not [m for m in full.messages if m.type_name in ("M_WARNING", "M_ERROR")], full.log()
    # Without staging_path= the staging folder and the record are on the share: the data is saved, and
    # the job says what it could not write there and which right or option fixes it.
    again = _backup(estate, "F")
    warned = [m.text for m in again.messages if m.type_name in ("M_WARNING", "M_ERROR")]
    assert warned and all("\\\\FS01\\VMStore" in t for t in warned), again.log()
    assert any("may not write" in t and "staging_path=" in t and "reference point" in t for t in warned), warned
    assert any("may not write" in t and "staging folder" in t for t in warned), warned
    assert {n for n in estate.fd.list_files(again.jobid) if "/disks/" in n} == {
        TREE + "disks/0-sql01-system.vhdx", TREE + "disks/1-sql01-data.vhdx"}
    assert world.snapshots(vm.id) == []

    delete_vm(world, "sql01")
    back = restore(estate)
    assert back.status != "T", back.log()
    fatal = [m.text for m in back.messages if m.type_name == "M_FATAL" and m.source == "plugin"]
    assert fatal and "\\\\FS01\\VMStore" in fatal[0] and "access denied" in fatal[0].lower(), back.log()
    assert "write" in fatal[0].lower() or "change" in fatal[0].lower(), fatal[0]
    # nothing was imported, nothing partial was left on the share
    assert [v for v in world.vms.values() if v.name == "sql01"] == []
    no_leftovers(world)
    assert not any(world.local("HV01", p).exists() for p in DISKS)
