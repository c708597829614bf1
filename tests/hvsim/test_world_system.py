"""hvsim.world VSMS: config-only export, import to a planned VM, fix-ups, validate, realize, define."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvsim.cim import NS_VIRT, CimError, CimInstance
from hvsim.world import NodeRepository, World
from hvsim.world.state import DiskSpec
from hvsim.world.testing import (
    Clock,
    associated,
    call,
    devices,
    embedded,
    job_results,
    make_world,
    ok,
    service,
    settings_of,
    vm_inst,
)

VSMS = "Msvm_VirtualSystemManagementService"
SNAP = "Msvm_VirtualSystemSnapshotService"
CONFIG_ONLY = {"CopySnapshotConfiguration": 1, "CopyVmStorage": False, "CopyVmRuntimeInformation": False,
               "CreateVmExportSubdirectory": False, "CaptureLiveState": 0}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    return make_world(tmp_path, clock)


def _export(repo: NodeRepository, clock: Clock, name: str, directory: str, **settings: object
            ) -> CimInstance:
    esd = embedded("Msvm_VirtualSystemExportSettingData", **{**CONFIG_ONLY, **settings})
    _, job = call(repo, clock, service(repo, VSMS), "ExportSystemDefinition",
                  ComputerSystem=vm_inst(repo, name).path, ExportDirectory=directory, ExportSettingData=esd)
    assert job is not None
    return job


def test_config_only_export_writes_vmcx_vmrs_vmgs(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    vm_id = world.vm("web01").id
    job = _export(repo, clock, "web01", "C:\\ClusterStorage\\Volume1\\stage\\web01")
    assert job.get("JobState") == 7
    folder = world.local("HV01", "C:\\ClusterStorage\\Volume1\\stage\\web01\\Virtual Machines")
    assert sorted(p.name for p in folder.iterdir()) == [f"{vm_id}.vmcx", f"{vm_id}.vmgs", f"{vm_id}.vmrs"]
    doc = json.loads((folder / f"{vm_id}.vmcx").read_text())
    assert doc["vm_id"] == vm_id and doc["vssd"]["ElementName"] == "web01"
    # the same folder again: Hyper-V refuses to overwrite
    job = _export(repo, clock, "web01", "C:\\ClusterStorage\\Volume1\\stage\\web01")
    assert job.get("JobState") == 10 and "already exists" in job.get("ErrorDescription")
    # a UNC target is not reachable from the host in the simulator (double hop)
    job = _export(repo, clock, "web01", "\\\\backupsrv\\stage")
    assert job.get("JobState") == 10
    job = _export(repo, clock, "web01", "C:\\x", CopyVmStorage=True)
    assert job.get("JobState") == 10 and job.get("ErrorCode") == 32770
    # Gen 1: no guest state file
    st = NodeRepository(world, "HVSTANDALONE01")
    assert _export(st, clock, "legacy01", "D:\\stage\\legacy01").get("JobState") == 7
    lid = world.vm("legacy01").id
    assert not world.local("HVSTANDALONE01", f"D:\\stage\\legacy01\\Virtual Machines\\{lid}.vmgs").exists()


def test_export_one_snapshot_for_backup_keeps_frozen_paths(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    out = ok(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path, SnapshotType=32768)
    (snap,) = job_results(repo, out, "Msvm_VirtualSystemSettingData")
    assert snap.path is not None
    job = _export(repo, clock, "web01", "C:\\ClusterStorage\\Volume1\\stage2", CopySnapshotConfiguration=3,
                  SnapshotVirtualSystem=snap.path.wmi_path("HV01"), CreateVmExportSubdirectory=True)
    assert job.get("JobState") == 7
    vm_id = vm.get("Name")
    doc = json.loads(world.local("HV01", f"C:\\ClusterStorage\\Volume1\\stage2\\web01\\Virtual Machines\\"
                                 f"{vm_id}.vmcx").read_text())
    paths = [s["props"]["HostResource"][0] for s in doc["settings"]
             if s["props"].get("ResourceSubType") == "Microsoft:Hyper-V:Virtual Hard Disk"]
    assert all(p.endswith(".vhdx") for p in paths)
    assert doc["vssd"]["ElementName"] == "web01"


def test_import_validate_fix_realize_on_another_host(world: World, clock: Clock) -> None:
    hv01 = NodeRepository(world, "HV01")
    vm_id = world.vm("web01").id
    assert _export(hv01, clock, "web01", "C:\\ClusterStorage\\Volume1\\stage\\web01").get("JobState") == 7
    vmcx = f"C:\\ClusterStorage\\Volume1\\stage\\web01\\Virtual Machines\\{vm_id}.vmcx"
    # same ID while web01 exists in the cluster: refused
    _, job = call(hv01, clock, service(hv01, VSMS), "ImportSystemDefinition", SystemDefinitionFile=vmcx,
                  SnapshotFolder="C:\\ClusterStorage\\Volume1\\stage\\web01\\Snapshots",
                  GenerateNewSystemIdentifier=False)
    assert job is not None and job.get("JobState") == 10 and "already exists" in job.get("ErrorDescription")
    # the standalone host has other switches and storage: import a copy there
    st = NodeRepository(world, "HVSTANDALONE01")
    staged = world.local("HVSTANDALONE01", f"D:\\restore\\web01\\Virtual Machines\\{vm_id}.vmcx")
    staged.parent.mkdir(parents=True)
    staged.write_bytes(world.local("HV01", vmcx).read_bytes())
    out = st.invoke(service(st, VSMS), "ImportSystemDefinition", {
        "SystemDefinitionFile": f"D:\\restore\\web01\\Virtual Machines\\{vm_id}.vmcx",
        "SnapshotFolder": "D:\\restore\\web01\\Snapshots", "GenerateNewSystemIdentifier": False})
    planned_ref = out.out["ImportedSystem"]
    assert planned_ref.class_name == "Msvm_PlannedComputerSystem"
    ok_job = call(st, clock, out.out["Job"], "GetErrorEx")[0]
    assert ok_job.return_value == 0
    planned = st.get(planned_ref)
    assert planned.get("Name") == vm_id and planned.get("ElementName") == "web01"
    assert not any(i.get("Name") == vm_id for i in st.instances(NS_VIRT, "Msvm_ComputerSystem"))
    vssd = settings_of(st, planned)
    assert vssd.get("VirtualSystemType") == "Microsoft:Hyper-V:System:Planned"
    assert vssd.get("ConfigurationDataRoot") == "D:\\restore\\web01"

    _, job = call(st, clock, service(st, VSMS), "ValidatePlannedSystem", PlannedSystem=planned_ref)
    assert job is not None and job.get("JobState") == 10
    errors = st.invoke(job.path, "GetErrorEx", {}).out["Errors"]  # type: ignore[arg-type]
    messages = " | ".join(e.get("Message") for e in errors)
    assert "web01-system.vhdx' was not found" in messages and "web01-data.vhdx' was not found" in messages
    assert "could not find Ethernet switch 'External-LAN'" in messages
    sources = {e.get("ErrorSource") for e in errors}
    (conn,) = devices(st, vssd, "Msvm_EthernetPortAllocationSettingData")
    assert conn.path is not None and conn.path.wmi_path("HVSTANDALONE01") in sources
    assert st.invoke(service(st, VSMS), "FormatError", {"Errors": errors}).out["ErrorMessage"] == "\n".join(
        e.get("Message") for e in errors)

    # fix-ups: disks onto D:, NIC onto the local switch
    (lan,) = st.instances(NS_VIRT, "Msvm_VirtualEthernetSwitch")
    assert lan.path is not None
    fixes = [embedded("Msvm_EthernetPortAllocationSettingData", InstanceID=conn.get("InstanceID"),
                      HostResource=[lan.path.wmi_path("HVSTANDALONE01")])]
    for i, sasd in enumerate(devices(st, vssd, "Msvm_StorageAllocationSettingData")):
        new = f"D:\\restore\\web01\\Virtual Hard Disks\\disk{i}.vhdx"
        world.create_disk("HVSTANDALONE01", new, "vhdx", "dynamic", 16 << 20)
        fixes.append(embedded("Msvm_StorageAllocationSettingData", InstanceID=sasd.get("InstanceID"),
                              HostResource=[new]))
    out = ok(st, clock, service(st, VSMS), "ModifyResourceSettings", ResourceSettings=fixes)
    assert len(out.out["ResultingResourceSettings"]) == 3
    ok(st, clock, service(st, VSMS), "ModifySystemSettings", SystemSettings=embedded(
        "Msvm_VirtualSystemSettingData", InstanceID=vssd.get("InstanceID"), ElementName="web01-restored"))
    ok(st, clock, service(st, VSMS), "ValidatePlannedSystem", PlannedSystem=planned_ref)
    out = ok(st, clock, service(st, VSMS), "RealizePlannedSystem", PlannedSystem=planned_ref)
    (realized,) = job_results(st, out, "Msvm_ComputerSystem")
    assert realized.get("Name") == vm_id and realized.get("ElementName") == "web01-restored"
    assert realized.get("EnabledState") == 3
    assert list(st.instances(NS_VIRT, "Msvm_PlannedComputerSystem")) == []
    assert settings_of(st, realized).get("VirtualSystemType") == "Microsoft:Hyper-V:System:Realized"
    # the realized VM's own config file is in use now
    assert st.invoke(service(st, VSMS), "ImportSystemDefinition", {
        "SystemDefinitionFile": f"D:\\restore\\web01\\Virtual Machines\\{vm_id}.vmcx",
        "GenerateNewSystemIdentifier": True}).return_value == 32779
    assert st.invoke(service(st, VSMS), "ImportSystemDefinition", {
        "SystemDefinitionFile": "D:\\nope.vmcx", "GenerateNewSystemIdentifier": True}).return_value == 32779


def test_unsupported_configuration_version(world: World, clock: Clock) -> None:
    old = world.add_vm("HV01", "old50", version="5.0", generation=1,
                       disks_=[DiskSpec("C:\\ClusterStorage\\Volume1\\old50\\old50.vhdx", controller="ide")])
    hv01 = NodeRepository(world, "HV01")
    assert _export(hv01, clock, "old50", "C:\\ClusterStorage\\Volume1\\x").get("JobState") == 7
    st = NodeRepository(world, "HVSTANDALONE01")
    src = world.local("HV01", f"C:\\ClusterStorage\\Volume1\\x\\Virtual Machines\\{old.id}.xml")
    dst = world.local("HVSTANDALONE01", f"D:\\r\\Virtual Machines\\{old.id}.xml")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    out = ok(st, clock, service(st, VSMS), "ImportSystemDefinition",
             SystemDefinitionFile=f"D:\\r\\Virtual Machines\\{old.id}.xml", GenerateNewSystemIdentifier=True)
    planned_ref = out.out["ImportedSystem"]
    assert planned_ref.key("Name") != old.id
    _, job = call(st, clock, service(st, VSMS), "RealizePlannedSystem", PlannedSystem=planned_ref)
    assert job is not None and job.get("JobState") == 10
    errors = st.invoke(job.path, "GetErrorEx", {}).out["Errors"]  # type: ignore[arg-type]
    assert any("configuration version 5.0" in e.get("Message") for e in errors)
    ok(st, clock, service(st, VSMS), "DestroySystem", AffectedSystem=planned_ref)
    assert list(st.instances(NS_VIRT, "Msvm_PlannedComputerSystem")) == []
    with pytest.raises(CimError):
        st.get(planned_ref)


def test_define_add_remove_destroy(world: World, clock: Clock) -> None:
    st = NodeRepository(world, "HVSTANDALONE01")
    vsms = service(st, VSMS)
    out = ok(st, clock, vsms, "DefineSystem", SystemSettings=embedded(
        "Msvm_VirtualSystemSettingData", ElementName="fresh",
            VirtualSystemSubType="Microsoft:Hyper-V:SubType:2",
        ConfigurationDataRoot="D:\\Hyper-V\\fresh", Notes=["restored by test"]), ResourceSettings=[])
    vm = st.get(out.out["ResultingSystem"])
    assert vm.get("ElementName") == "fresh" and vm.get("EnabledState") == 3
    vssd = settings_of(st, vm)
    assert vssd.get("Notes") == ["restored by test"] and vssd.get("Version") == "10.0"
    (scsi,) = [r for r in devices(st, vssd,
                                  "Msvm_ResourceAllocationSettingData") if r.get("ResourceType") == 6]
    assert scsi.path is not None
    drive = embedded("Msvm_ResourceAllocationSettingData", ResourceType=17,
                     ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive", AddressOnParent="0",
                     Parent=scsi.path.wmi_path("HVSTANDALONE01"))
    out = ok(st, clock, vsms, "AddResourceSettings", AffectedConfiguration=vssd.path,
             ResourceSettings=[drive])
    (drive_ref,) = out.out["ResultingResourceSettings"]
    world.create_disk("HVSTANDALONE01", "D:\\Hyper-V\\fresh\\fresh.vhdx", "vhdx", "dynamic", 8 << 20)
    disk = embedded("Msvm_StorageAllocationSettingData", ResourceType=31,
                    ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk",
                    HostResource=["D:\\Hyper-V\\fresh\\fresh.vhdx"],
                        Parent=drive_ref.wmi_path("HVSTANDALONE01"))
    out = ok(st, clock, vsms, "AddResourceSettings", AffectedConfiguration=vssd.path, ResourceSettings=[disk])
    (sasd_ref,) = out.out["ResultingResourceSettings"]
    assert str(sasd_ref.key("InstanceID")).endswith("\\0\\0\\L")
    assert world.vm("fresh").config.vhds()[0].host_resource == ["D:\\Hyper-V\\fresh\\fresh.vhdx"]
    # removing the drive removes the disk attached to it
    ok(st, clock, vsms, "RemoveResourceSettings", ResourceSettings=[drive_ref])
    assert devices(st, vssd, "Msvm_StorageAllocationSettingData") == []
    # a running VM cannot be destroyed; an off one can, and its disks stay
    world.set_state("fresh", "running")
    assert st.invoke(vsms, "DestroySystem", {"AffectedSystem": vm.path}).return_value == 32775
    world.set_state("fresh", "off")
    live_vmcx = world.local("HVSTANDALONE01", f"D:\\Hyper-V\\fresh\\Virtual Machines\\{vm.get('Name')}.vmcx")
    assert live_vmcx.is_file()
    ok(st, clock, vsms, "DestroySystem", AffectedSystem=vm.path)
    assert not live_vmcx.exists()
    assert not any(v.name == "fresh" for v in world.vms.values())
    assert world.disk_exists("HVSTANDALONE01", "D:\\Hyper-V\\fresh\\fresh.vhdx")


def test_modify_resource_settings_needs_instance_id(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    bad = embedded("Msvm_StorageAllocationSettingData", HostResource=["C:\\x.vhdx"])
    assert repo.invoke(service(repo, VSMS), "ModifyResourceSettings",
                       {"ResourceSettings": [bad]}).return_value == 4
    cimxml = ('<INSTANCE CLASSNAME="Msvm_VirtualSystemSettingData"><PROPERTY NAME="InstanceID" TYPE="string">'
              f'<VALUE>Microsoft:{world.vm("web01").id}</VALUE></PROPERTY>'
              '<PROPERTY NAME="ElementName" TYPE="string"><VALUE>web01-renamed</VALUE></PROPERTY>'
              '<PROPERTY.ARRAY NAME="Notes" TYPE="string"><VALUE.ARRAY><VALUE>a</VALUE><VALUE>b</VALUE>'
              '</VALUE.ARRAY></PROPERTY.ARRAY></INSTANCE>')
    ok(repo, clock, service(repo, VSMS), "ModifySystemSettings", SystemSettings=cimxml)
    assert world.vm("web01-renamed").config.vssd["Notes"] == ["a", "b"]


def test_job_associations_skip_elements_that_are_gone(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV02")
    db = vm_inst(repo, "db01")
    out = ok(repo, clock, service(repo, VSMS), "DestroySystem", AffectedSystem=db.path)
    assert associated(repo, out.out["Job"], "Msvm_AffectedJobElement") == []
    assert repo.get(out.out["Job"]).get("JobState") == 7
