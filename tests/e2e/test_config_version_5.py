"""A VM kept at configuration version 5.0 (from Windows Server 2012 R2), end to end.

hvsim models it as Microsoft documents it (hvsim.configversion): XML configuration with a
``<GUID>`` folder, no resilient change tracking, and ``ConvertToReferencePoint`` fails.  The plugin
backs it up with the export's whole shape (folder included), removes the checkpoint instead of
converting it, says why in a job message and records it in the manifest; an incremental compares
block digests and says why.  Through fdsim, pywinrm and Samba.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, List

import pytest

from bareos_hyperv.manifest.document import from_xml
from bareos_hyperv.model.backup import DeltaMethod, PartKind
from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import MiB, add_legacy_vm, default_world
from tests.e2e.conftest import Estate

pytestmark = pytest.mark.usefixtures("no_agent_left")

VM = "old2012"
TREE = f"@hyperv/HVCLUSTER01/{VM}/"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    world = default_world(tmp_path / "estate", disk_size=8 * MiB)
    add_legacy_vm(world, VM, node="HV01", state="running")
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _texts(job: JobResult, type_name: str) -> List[str]:
    return [m.text for m in job.messages if m.type_name == type_name]


def _manifest_object(estate: Estate, job: JobResult) -> bytes:
    (obj,) = [o for o in estate.fd.store.objects([job.jobid]) if o.object_name == TREE + "manifest.object.xml"]
    return bytes(obj.inflated())


def test_a_5_0_vm_is_backed_up_without_reference_point_and_its_incremental_compares_digests(
        estate: Estate, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm(VM)
    assert vm.version == "5.0"
    converts = estate.sim.log.count(method="ConvertToReferencePoint")

    full = estate.backup(host="HVCLUSTER01", vm=VM)
    assert full.status == "T", full.log()
    # the checkpoint was removed, not converted (which fails for 5.0), and the job says why
    assert estate.sim.log.count(method="ConvertToReferencePoint") == converts
    assert world.snapshots(vm.id) == [] and world.reference_points(vm.id) == []
    warnings = _texts(full, "M_WARNING")
    assert any("configuration version 5.0 has no reference points nor resilient change tracking" in w
               and "checkpoint was removed" in w and "Update-VMVersion" in w for w in warnings), full.log()
    # the export's shape, folder included: <GUID>.xml and the <GUID> folder's runtime file
    names = estate.fd.list_files(full.jobid)
    guid = vm.id
    assert f"/{TREE}config/{guid}.xml" in names or f"{TREE}config/{guid}.xml" in names, names
    assert any(n.endswith(f"{TREE}config/{guid}/{guid}.bin") for n in names), names
    # the manifest records the version, why there is no reference point, and every config part
    manifest = from_xml(_manifest_object(estate, full), source="restore object")
    assert manifest.vm.version == "5.0"
    assert manifest.backup.reference_point is None
    assert manifest.backup.no_reference_point and "5.0" in manifest.backup.no_reference_point
    config = {p.name for p in manifest.backup.parts if p.kind is PartKind.CONFIG}
    assert config == {f"config/{guid}.xml", f"config/{guid}/{guid}.bin"}
    assert b"noReferencePoint=" in _manifest_object(estate, full)

    # the guest writes; an incremental finds the change by digests and says why
    disk = vm.config.vhds()[0].host_resource[0]
    world.guest_write(vm.id, 0, 1 * MiB, b"\x5a" * (64 * 1024))
    frozen = _sha(world.local(vm.node, disk))  # as the incremental's checkpoint freezes it
    incr = estate.backup(level="I", host="HVCLUSTER01", vm=VM)
    assert incr.status == "T", incr.log()
    assert estate.sim.log.count(method="ConvertToReferencePoint") == converts
    assert world.snapshots(vm.id) == [] and world.reference_points(vm.id) == []
    said = _texts(incr, "M_INFO") + _texts(incr, "M_WARNING")
    assert any("changed chunks by digest" in t and "configuration version 5.0 has no resilient change tracking" in t
               for t in said), incr.log()
    inc_manifest = from_xml(_manifest_object(estate, incr), source="restore object")
    deltas = [p for p in inc_manifest.backup.parts if p.kind is PartKind.DELTA]
    assert deltas and all(p.method is DeltaMethod.HASH for p in deltas), inc_manifest.backup.parts
    assert inc_manifest.backup.base_job_id == full.jobid and inc_manifest.backup.no_reference_point
    assert disk.lower().endswith(f"{VM}.vhdx")

    # both jobs restore to a directory: the folder comes back, the disk equals the source
    where = tmp_path / "restored"
    job = estate.restore_to(where, upto=incr.jobid)
    assert job.status == "T", job.log()
    assert (where / TREE / "config" / guid / f"{guid}.bin").is_file()
    assert _sha(where / TREE / "disks" / f"0-{VM}.vhdx") == frozen


def test_a_host_that_refuses_backup_checkpoints_of_a_5_0_vm_gets_a_message_naming_the_version(
        estate: Estate) -> None:
    world = estate.sim.world
    vm = world.vm(VM)
    vm.legacy.recovery_checkpoints = "refused"  # the other plausible answer of a real host (hvsim.configversion)
    job = estate.backup(host="HVCLUSTER01", vm=VM)
    assert job.status == "f", job.log()
    fatals = [m.text for m in job.messages if m.type_name == "M_FATAL" and m.source == "plugin"]
    assert len(fatals) == 1, job.log()
    assert "configuration version 5.0" in fatals[0] and f"Update-VMVersion {VM}" in fatals[0], fatals[0]
    assert world.snapshots(vm.id) == [] and world.reference_points(vm.id) == []
    assert [p for p in world.root.rglob("bareos-hyperv-staging*") if any(p.iterdir())] == []
