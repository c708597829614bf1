"""hvsim.world behaviour a restore relies on: switch names follow connections, media must exist, warnings.

* ``LastKnownSwitchName`` of an Ethernet connection is read-only and kept by Hyper-V
  (msvm-ethernetportallocationsettingdata); a live migration reconnects by that name.
* AddResourceSettings on a realized VM fails its job when a disk file is missing (as
  ModifyResourceSettings does); a planned VM accepts any path (validation reports it).
* A JOB_WARNING rule makes a job end "Completed with warnings" (32768) whose GetErrorEx
  returns the warning, as Microsoft's PVM sample expects of ValidatePlannedSystem.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim import faults as F
from hvsim.cim import NS_CLUSTER, NS_VIRT, CimRef
from hvsim.faults import FaultPlan
from hvsim.world import NodeRepository, World
from hvsim.world.jobs import JOB_COMPLETED_WITH_WARNINGS
from hvsim.world.state import DiskSpec
from hvsim.world.testing import (
    Clock,
    call,
    devices,
    embedded,
    make_world,
    ok,
    service,
    settings_of,
    vm_inst,
)

VSMS = "Msvm_VirtualSystemManagementService"
EPASD = "Msvm_EthernetPortAllocationSettingData"
VOL1 = "C:\\ClusterStorage\\Volume1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plan() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def world(tmp_path: Path, clock: Clock, plan: FaultPlan) -> World:
    return make_world(tmp_path, clock, faults=plan)


def _switch_path(world: World, node: str, name: str) -> str:
    sw = world.node(node).switch_by_name(name)
    assert sw is not None
    return (f'\\\\{node}\\root\\virtualization\\v2:Msvm_VirtualEthernetSwitch.CreationClassName='
            f'"Msvm_VirtualEthernetSwitch",Name="{sw.id}"')


def test_last_known_switch_name_follows_the_connection_and_migration_uses_it(world: World, clock: Clock) -> None:
    hv01 = NodeRepository(world, "HV01")
    vm = vm_inst(hv01, "web01")
    (conn,) = devices(hv01, settings_of(hv01, vm), EPASD)
    assert conn.get("LastKnownSwitchName") == "External-LAN"
    # the client names the new switch by its path only; a LastKnownSwitchName it sends is ignored
    ok(hv01, clock, service(hv01, VSMS), "ModifyResourceSettings", ResourceSettings=[embedded(
        EPASD, InstanceID=conn.get("InstanceID"), HostResource=[_switch_path(world, "HV01", "Internal-Backup")],
        LastKnownSwitchName="made-up")])
    (conn,) = devices(hv01, settings_of(hv01, vm), EPASD)
    assert conn.get("LastKnownSwitchName") == "Internal-Backup"
    # the move reconnects the port to the switch of that name on the new owner
    group = CimRef(NS_CLUSTER, "MSCluster_ResourceGroup", (("Name", "web01"),))
    assert hv01.invoke(group, "MoveToNewNode", {"NodeName": "HV02", "TimeOut": 60}).return_value == 0
    hv02 = NodeRepository(world, "HV02")
    (conn,) = devices(hv02, settings_of(hv02, vm_inst(hv02, "web01")), EPASD)
    assert conn.get("HostResource") == [_switch_path(world, "HV02", "Internal-Backup")]
    # a disabled port keeps its last known switch
    ok(hv02, clock, service(hv02, VSMS), "ModifyResourceSettings", ResourceSettings=[embedded(
        EPASD, InstanceID=conn.get("InstanceID"), EnabledState=3)])
    (conn,) = devices(hv02, settings_of(hv02, vm_inst(hv02, "web01")), EPASD)
    assert conn.get("EnabledState") == 3 and conn.get("LastKnownSwitchName") == "Internal-Backup"


def test_added_connection_gets_the_switch_name(world: World, clock: Clock) -> None:
    hv01 = NodeRepository(world, "HV01")
    world.add_vm("HV01", "nic01", root=f"{VOL1}\\nic01")
    vssd = settings_of(hv01, vm_inst(hv01, "nic01"))
    out = ok(hv01, clock, service(hv01, VSMS), "AddResourceSettings", AffectedConfiguration=vssd.path,
             ResourceSettings=[embedded("Msvm_SyntheticEthernetPortSettingData", ResourceType=10,
                                        ResourceSubType="Microsoft:Hyper-V:Synthetic Ethernet Port",
                                        Address="00155D0A9999", StaticMacAddress=True)])
    (nic,) = out.out["ResultingResourceSettings"]
    ok(hv01, clock, service(hv01, VSMS), "AddResourceSettings", AffectedConfiguration=vssd.path,
       ResourceSettings=[embedded(EPASD, ResourceType=33, ResourceSubType="Microsoft:Hyper-V:Ethernet Connection",
                                  Parent=nic.wmi_path("HV01"),
                                  HostResource=[_switch_path(world, "HV01", "External-LAN")])])
    (conn,) = devices(hv01, vssd, EPASD)
    assert conn.get("LastKnownSwitchName") == "External-LAN"


def test_add_resource_settings_needs_the_disk_file_on_a_realized_vm(world: World, clock: Clock) -> None:
    st = NodeRepository(world, "HVSTANDALONE01")
    world.add_vm("HVSTANDALONE01", "media01", root="D:\\Hyper-V\\media01")
    vssd = settings_of(st, vm_inst(st, "media01"))
    (scsi,) = [r for r in devices(st, vssd, "Msvm_ResourceAllocationSettingData") if r.get("ResourceType") == 6]
    assert scsi.path is not None
    out = ok(st, clock, service(st, VSMS), "AddResourceSettings", AffectedConfiguration=vssd.path,
             ResourceSettings=[embedded("Msvm_ResourceAllocationSettingData", ResourceType=17,
                                        ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive",
                                        AddressOnParent="0", Parent=scsi.path.wmi_path("HVSTANDALONE01"))])
    (drive,) = out.out["ResultingResourceSettings"]
    disk = embedded("Msvm_StorageAllocationSettingData", ResourceType=31,
                    ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk", HostResource=["D:\\nowhere\\gone.vhdx"],
                    Parent=drive.wmi_path("HVSTANDALONE01"))
    _, job = call(st, clock, service(st, VSMS), "AddResourceSettings", AffectedConfiguration=vssd.path,
                  ResourceSettings=[disk])
    assert job is not None and job.get("JobState") == 10
    assert "D:\\nowhere\\gone.vhdx' was not found" in job.get("ErrorDescription")
    assert devices(st, vssd, "Msvm_StorageAllocationSettingData") == []
    # once the file exists the same request succeeds
    world.create_disk("HVSTANDALONE01", "D:\\nowhere\\gone.vhdx", "vhdx", "dynamic", 8 << 20)
    ok(st, clock, service(st, VSMS), "AddResourceSettings", AffectedConfiguration=vssd.path,
       ResourceSettings=[disk])
    assert world.vm("media01").config.vhds()[0].host_resource == ["D:\\nowhere\\gone.vhdx"]


def test_job_warning_completes_with_warnings_that_get_error_ex_returns(world: World, clock: Clock,
                                                                       plan: FaultPlan) -> None:
    hv01 = NodeRepository(world, "HV01")
    old = world.add_vm("HV01", "warn01", root=f"{VOL1}\\warn01",
                       disks_=[DiskSpec(f"{VOL1}\\warn01\\warn01.vhdx", size=8 << 20)])
    ok(hv01, clock, service(hv01, VSMS), "ExportSystemDefinition", ComputerSystem=vm_inst(hv01, "warn01").path,
       ExportDirectory=f"{VOL1}\\stage", ExportSettingData=embedded(
           "Msvm_VirtualSystemExportSettingData", CopySnapshotConfiguration=1, CopyVmStorage=False,
           CopyVmRuntimeInformation=False, CreateVmExportSubdirectory=False))
    out = ok(hv01, clock, service(hv01, VSMS), "ImportSystemDefinition",
             SystemDefinitionFile=f"{VOL1}\\stage\\Virtual Machines\\{old.id}.vmcx", GenerateNewSystemIdentifier=True)
    planned = out.out["ImportedSystem"]
    plan.add(F.JOB_WARNING, "ValidatePlannedSystem", message="The memory is larger than recommended.",
             message_id="4242")
    _, job = call(hv01, clock, service(hv01, VSMS), "ValidatePlannedSystem", PlannedSystem=planned)
    assert job is not None and job.get("JobState") == JOB_COMPLETED_WITH_WARNINGS
    assert job.get("ErrorCode") == 0 and job.get("JobStatus") == "Job completed with warnings"
    assert job.path is not None
    (warning,) = hv01.invoke(job.path, "GetErrorEx", {}).out["Errors"]
    assert warning.get("MessageID") == "4242" and warning.get("PerceivedSeverity") == 3
    # the work was done: the planned VM is still there and a second validation has no warning
    _, job = call(hv01, clock, service(hv01, VSMS), "ValidatePlannedSystem", PlannedSystem=planned)
    assert job is not None and job.get("JobState") == 7
    assert [i.get("Name") for i in hv01.instances(NS_VIRT, "Msvm_PlannedComputerSystem")] == [planned.key("Name")]
