"""A VM of configuration version 5.0 as the simulator models it (hvsim.configversion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim.cim import CimInstance
from hvsim.configversion import LegacyBehaviour, config_extension, is_legacy
from hvsim.faults import FaultPlan
from hvsim.world import NodeRepository, World
from hvsim.world.jobs import JOB_COMPLETED
from hvsim.world.scenario import add_legacy_vm
from hvsim.world.testing import Clock, call, embedded, job_results, make_world, service, vm_inst

SNAP = "Msvm_VirtualSystemSnapshotService"
VSMS = "Msvm_VirtualSystemManagementService"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    w = make_world(tmp_path, clock, files=True, faults=FaultPlan())
    add_legacy_vm(w, "old2012", node="HV01", state="running")
    return w


def _recovery(repo: NodeRepository, clock: Clock) -> tuple[int, CimInstance | None, CimInstance | None]:
    vm = vm_inst(repo, "old2012")
    out, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path, SnapshotType=32768,
                    SnapshotSettings=embedded("Msvm_VirtualSystemSnapshotSettingData", ConsistencyLevel=1))
    if job is None or job.get("JobState") != JOB_COMPLETED:
        return out.return_value, job, None
    (snap,) = job_results(repo, out, "Msvm_VirtualSystemSettingData")
    return out.return_value, job, snap


def test_versions() -> None:
    assert is_legacy("5.0") and is_legacy("4.0") and not is_legacy("6.2") and not is_legacy("10.0")
    assert config_extension("5.0") == ".xml" and config_extension("9.0") == ".vmcx"
    with pytest.raises(ValueError):
        LegacyBehaviour().recovery_checkpoints = "maybe"


def test_a_5_0_vm_keeps_xml_configuration_with_a_folder(world: World) -> None:
    vm = world.vm("old2012")
    live = world.local(vm.node, vm.live_config_file())
    assert live.name == f"{vm.id}.xml" and live.is_file()
    assert (live.parent / vm.id / f"{vm.id}.bin").is_file()  # running: the memory placeholder
    assert not list(live.parent.glob("*.vmcx"))


@pytest.mark.parametrize("variant, returned", [("job", 4096), ("not_supported", 1)])
def test_no_reference_point_for_a_5_0_vm(world: World, clock: Clock, variant: str, returned: int) -> None:
    world.vm("old2012").legacy.convert_failure = variant
    repo = NodeRepository(world, "HV01")
    _rv, _job, snap = _recovery(repo, clock)  # "allowed" (the default): the checkpoint is made
    assert snap is not None and snap.path is not None
    out, job = call(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=snap.path)
    assert out.return_value == returned
    if job is not None:
        assert job.get("JobState") != JOB_COMPLETED and "configuration version 5.0" in str(job.get("ErrorDescription"))
    vm = world.vm("old2012")
    assert world.reference_points(vm.id) == [] and len(world.snapshots(vm.id)) == 1


def test_a_host_may_refuse_recovery_checkpoints_of_a_5_0_vm(world: World, clock: Clock) -> None:
    world.vm("old2012").legacy.recovery_checkpoints = "refused"
    _rv, job, snap = _recovery(NodeRepository(world, "HV01"), clock)
    assert snap is None and job is not None and "configuration version 5.0" in str(job.get("ErrorDescription"))
    assert world.snapshots(world.vm("old2012").id) == []


def test_the_export_of_a_5_0_vm_has_the_2012_r2_shape(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    _rv, _job, snap = _recovery(repo, clock)
    assert snap is not None
    vm = world.vm("old2012")
    _out, job = call(repo, clock, service(repo, VSMS), "ExportSystemDefinition",
                     ComputerSystem=vm_inst(repo, "old2012").path,
                    ExportDirectory="C:\\Export",
                    ExportSettingData=embedded("Msvm_VirtualSystemExportSettingData", CopySnapshotConfiguration=3,
                                               CopyVmStorage=False, CopyVmRuntimeInformation=False,
                                               SnapshotVirtualSystem=snap.path.wmi_path("HV01")))
    assert job is not None and job.get("JobState") == JOB_COMPLETED, job
    folder = world.local("HV01", "C:\\Export\\Virtual Machines")
    assert sorted(p.name for p in folder.iterdir()) == [vm.id, f"{vm.id}.xml"]
    assert [p.name for p in (folder / vm.id).iterdir()] == [f"{vm.id}.bin"]
