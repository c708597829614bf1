"""hvsim.world jobs: progress over time, removal, errors, cancel; fault-plan kinds honoured by the world."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hvsim.cim import NS_CLUSTER, NS_VIRT, CimError, CimRef
from hvsim.faults import JOB_FAIL, JOB_HANG, MIGRATE_VM, RETURN_CODE, FaultPlan
from hvsim.world import NodeRepository, World
from hvsim.world.testing import (
    Clock,
    associated,
    call,
    cluster_inst,
    devices,
    embedded,
    make_world,
    service,
    settings_of,
    vm_inst,
    wait_job,
)

VSMS = "Msvm_VirtualSystemManagementService"
SNAP = "Msvm_VirtualSystemSnapshotService"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def faults() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def world(tmp_path: Path, clock: Clock, faults: FaultPlan) -> World:
    return make_world(tmp_path, clock, faults=faults)


def _start(repo: NodeRepository, name: str):  # type: ignore[no-untyped-def]
    vm = vm_inst(repo, name)
    assert vm.path is not None
    return vm.path, repo.invoke(vm.path, "RequestStateChange", {"RequestedState": 2})


def test_job_progresses_then_applies_its_effect_then_disappears(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV02")
    vm_ref, out = _start(repo, "db01")
    assert out.return_value == 4096
    job_ref = out.out["Job"]
    assert job_ref.class_name == "Msvm_ConcreteJob"
    job = repo.get(job_ref)
    assert job.get("JobState") == 2 and job.get("PercentComplete") == 0
    assert repo.get(vm_ref).get("EnabledState") == 3
    clock.tick(0.5)
    job = repo.get(job_ref)
    assert job.get("JobState") == 4 and job.get("PercentComplete") == 50
    assert job.get("TimeBeforeRemoval").seconds == 30.0
    clock.tick(0.6)
    job = repo.get(job_ref)
    assert job.get("JobState") == 7 and job.get("PercentComplete") == 100 and job.get("ErrorCode") == 0
    assert repo.get(vm_ref).get("EnabledState") == 2
    # the job's affected element is the VM; GetErrorEx has nothing on success
    assert [v.get("ElementName") for v in associated(repo, job_ref, "Msvm_AffectedJobElement")] == ["db01"]
    assert repo.invoke(job_ref, "GetErrorEx", {}).out["Errors"] == []
    # other nodes do not see the job
    with pytest.raises(CimError):
        NodeRepository(world, "HV01").get(job_ref)
    clock.tick(29)
    assert repo.get(job_ref).get("JobState") == 7
    clock.tick(2)
    with pytest.raises(CimError) as err:
        repo.get(job_ref)
    assert err.value.subcode == "a:DestinationUnreachable"
    assert world.jobs() == []


def test_state_change_return_codes(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = vm_inst(repo, "web01")
    assert web.path is not None
    assert repo.invoke(web.path, "RequestStateChange", {"RequestedState": 2}).return_value == 32775
    assert repo.invoke(web.path, "RequestStateChange", {"RequestedState": 77}).return_value == 32773
    _, job = call(repo, clock, web.path, "RequestStateChange", RequestedState=6)
    assert job is not None and job.get("JobState") == 7
    assert repo.get(web.path).get("EnabledState") == 6
    assert repo.invoke(web.path, "RequestStateChange", {"RequestedState": 9}).return_value == 32775
    host = next(i for i in repo.instances(NS_VIRT, "Msvm_ComputerSystem") if i.get("Name") == "HV01")
    assert host.path is not None
    assert repo.invoke(host.path, "RequestStateChange", {"RequestedState": 3}).return_value == 32770


def test_cancel_a_running_job(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV02")
    vm_ref, out = _start(repo, "db01")
    job_ref = out.out["Job"]
    assert repo.invoke(job_ref, "RequestStateChange", {"RequestedState": 5}).return_value == 0
    clock.tick(5)
    job = repo.get(job_ref)
    assert job.get("JobState") == 8
    assert repo.get(vm_ref).get("EnabledState") == 3
    assert repo.invoke(job_ref, "RequestStateChange", {"RequestedState": 5}).return_value == 32775
    (err,) = repo.invoke(job_ref, "GetErrorEx", {}).out["Errors"]
    assert "cancelled" in err.get("Message")


def test_job_fail_rolls_back_and_reports_msvm_errors(world: World, clock: Clock, faults: FaultPlan) -> None:
    repo = NodeRepository(world, "HV01")
    vssd = settings_of(repo, vm_inst(repo, "web01"))
    (sasd, _) = devices(repo, vssd, "Msvm_StorageAllocationSettingData")
    old = sasd.get("HostResource")
    world.create_disk("HV01", "C:\\ClusterStorage\\Volume1\\elsewhere.vhdx", "vhdx", "dynamic", 1 << 20)
    rule = faults.add(JOB_FAIL, "ModifyResourceSettings", error_code=32789,
                      error_description="Injected: the disk is in use")
    change = embedded("Msvm_StorageAllocationSettingData", InstanceID=sasd.get("InstanceID"),
                      HostResource=["C:\\ClusterStorage\\Volume1\\elsewhere.vhdx"])
    out = repo.invoke(service(repo, VSMS), "ModifyResourceSettings", {"ResourceSettings": [change]})
    # the change is visible while the job runs (Hyper-V fills ResultingResourceSettings at once) ...
    assert repo.get(out.out["ResultingResourceSettings"][0]).get("HostResource") == [
        "C:\\ClusterStorage\\Volume1\\elsewhere.vhdx"]
    job = wait_job(repo, clock, out)
    assert rule.fired == 1
    assert job.get("JobState") == 10 and job.get("ErrorCode") == 32789
    assert job.get("ErrorDescription") == "Injected: the disk is in use"
    (err,) = repo.invoke(out.out["Job"], "GetErrorEx", {}).out["Errors"]
    assert err.class_name == "Msvm_Error" and err.get("Message") == "Injected: the disk is in use"
    assert repo.invoke(out.out["Job"], "GetError", {}).out["Error"].get("ErrorCode") == 32789
    # ... and rolled back when the job fails
    assert repo.get(sasd.path).get("HostResource") == old  # type: ignore[arg-type]


def test_job_fail_on_checkpoint_leaves_no_checkpoint(world: World, clock: Clock, faults: FaultPlan) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    faults.add(JOB_FAIL, "CreateSnapshot")
    _, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path,
                  SnapshotType=32768)
    assert job is not None and job.get("JobState") == 10 and job.get("ErrorCode") == 32768
    assert "CreateSnapshot" in job.get("ErrorDescription")
    assert world.snapshots("web01") == []
    assert associated(repo, vm.path, "Msvm_SnapshotOfVirtualSystem") == []  # type: ignore[arg-type]
    # the rule fired once; the next call works
    _, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path,
                  SnapshotType=32768)
    assert job is not None and job.get("JobState") == 7
    assert len(world.snapshots("web01")) == 1


def test_job_hang_until_the_rule_is_removed(world: World, clock: Clock, faults: FaultPlan) -> None:
    repo = NodeRepository(world, "HV02")
    rule = faults.add(JOB_HANG, "RequestStateChange")
    vm_ref, out = _start(repo, "db01")
    clock.tick(600)
    job = repo.get(out.out["Job"])
    assert job.get("JobState") == 4 and job.get("PercentComplete") == 50
    assert repo.get(vm_ref).get("EnabledState") == 3
    faults.remove(rule)
    job = wait_job(repo, clock, out)
    assert job.get("JobState") == 7
    assert repo.get(vm_ref).get("EnabledState") == 2


def test_migrate_vm_fault_makes_the_call_fail_as_on_windows(world: World, clock: Clock,
                                                             faults: FaultPlan) -> None:
    hv01, hv02 = NodeRepository(world, "HV01"), NodeRepository(world, "HV02")
    vm = vm_inst(hv01, "web01")
    faults.add(MIGRATE_VM, "CreateSnapshot")
    with pytest.raises(CimError) as err:
        hv01.invoke(service(hv01, SNAP), "CreateSnapshot", {"AffectedSystem": vm.path, "SnapshotType": 32768})
    assert err.value.subcode == "a:DestinationUnreachable"
    assert world.vm("web01").node == "HV02"
    assert cluster_inst(hv01, "MSCluster_ResourceGroup", "web01").get("OwnerNode") == "HV02"
    assert vm_inst(hv02, "web01").get("Name") == vm.get("Name")
    # retrying on the new owner works
    _, job = call(hv02, clock, service(hv02, SNAP), "CreateSnapshot",
                  AffectedSystem=vm_inst(hv02, "web01").path, SnapshotType=32768)
    assert job is not None and job.get("JobState") == 7


def test_migrate_vm_fault_with_explicit_vm_and_target(world: World, faults: FaultPlan) -> None:
    hv02 = NodeRepository(world, "HV02")
    faults.add(MIGRATE_VM, "RequestStateChange", vm="db01", to="HV01")
    with pytest.raises(CimError):
        hv02.invoke(vm_inst(hv02, "db01").path, "RequestStateChange", {"RequestedState": 2})  # type: ignore[arg-type]
    assert world.vm("db01").node == "HV01"


def test_return_code_fault(world: World, faults: FaultPlan) -> None:
    repo = NodeRepository(world, "HV01")
    faults.add(RETURN_CODE, "CreateSnapshot", code=32775)
    vm = vm_inst(repo, "web01")
    out = repo.invoke(service(repo, SNAP), "CreateSnapshot", {"AffectedSystem": vm.path, "SnapshotType": 2})
    assert out.return_value == 32775 and out.out == {}
    assert world.snapshots("web01") == [] and world.jobs() == []


def test_unknown_method_and_cluster_method_faults(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    with pytest.raises(CimError) as err:
        repo.invoke(service(repo, VSMS), "NoSuchMethod", {})
    assert err.value.subcode == "a:ActionNotSupported"
    cl = CimRef(NS_CLUSTER, "MSCluster_Cluster", (("Name", "HVCLUSTER01"),))
    with pytest.raises(CimError) as err:
        repo.invoke(cl, "AddVirtualMachine", {"VirtualMachine": "nosuchvm"})
    assert err.value.subcode == "w:InternalError" and err.value.wmi_status is not None
    assert "nosuchvm" in err.value.reason


def test_operational_status_shows_the_running_operation(world: World, clock: Clock, faults: FaultPlan) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    assert vm.get("OperationalStatus") == [2]
    rule = faults.add(JOB_HANG, "CreateSnapshot")
    out = repo.invoke(service(repo, SNAP), "CreateSnapshot", {"AffectedSystem": vm.path, "SnapshotType": 32768})
    clock.tick(5)
    assert repo.get(vm.path).get("OperationalStatus") == [2, 32768]  # type: ignore[arg-type]
    faults.remove(rule)
    assert wait_job(repo, clock, out).get("JobState") == 7
    assert repo.get(vm.path).get("OperationalStatus") == [2]  # type: ignore[arg-type]


def test_files_in_use(world: World) -> None:
    leaf = world.key("HV01", world.vm("web01").config.vhds()[0].host_resource[0])
    assert leaf in world.files_in_use()
    world.set_state("web01", "off")
    assert leaf not in world.files_in_use()
    assert world.key("HV01", world.vm("web01").live_config_file()) in world.files_in_use()


def test_concurrent_clients_see_consistent_state(world: World, clock: Clock) -> None:
    errors: list[BaseException] = []
    hv02 = NodeRepository(world, "HV02")
    db = vm_inst(hv02, "db01")
    assert db.path is not None

    def reader() -> None:
        try:
            for _ in range(30):
                for inst in hv02.instances(NS_VIRT, "CIM_ResourceAllocationSettingData"):
                    assert str(inst.get("InstanceID")).startswith("Microsoft:")
                hv02.get(db.path)  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def flipper() -> None:
        try:
            for i in range(30):
                out = hv02.invoke(db.path, "RequestStateChange",  # type: ignore[arg-type]
                                  {"RequestedState": 2 if i % 2 == 0 else 3})
                assert out.return_value in (4096, 32775)
                clock.tick(1.5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=flipper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    clock.tick(5)
    assert hv02.get(db.path).get("EnabledState") in (2, 3)  # type: ignore[arg-type]
    assert all(j.finished for j in world.jobs())


def test_modify_realized_disk_to_a_missing_file_fails_and_rolls_back(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    vssd = settings_of(repo, vm_inst(repo, "web01"))
    sasd = devices(repo, vssd, "Msvm_StorageAllocationSettingData")[0]
    change = embedded("Msvm_StorageAllocationSettingData", InstanceID=sasd.get("InstanceID"),
                      HostResource=["C:\\ClusterStorage\\Volume1\\missing.vhdx"])
    _, job = call(repo, clock, service(repo, VSMS), "ModifyResourceSettings", ResourceSettings=[change])
    assert job is not None and job.get("JobState") == 10
    (err,) = repo.invoke(job.path, "GetErrorEx", {}).out["Errors"]  # type: ignore[arg-type]
    assert sasd.path is not None
    assert "missing.vhdx" in err.get("Message") and err.get("ErrorSource") == sasd.path.wmi_path("HV01")
    assert repo.get(sasd.path).get("HostResource") == sasd.get("HostResource")  # type: ignore[arg-type]
