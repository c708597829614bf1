"""Every simulated WMI method, invoked through the product's CimClient and followed with JobFollower.

Each test drives the simulator only over WS-Management (NTLM-encrypted HTTP); the
simulator's world and the files behind it are read afterwards to check the effect.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

import pytest

from bareos_hyperv.hyperv import cluster as clustermod
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.jobs import (
    JobFailedError,
    JobResult,
    JobState,
    JobVanishedError,
    MethodFailedError,
)
from bareos_hyperv.wsman.cim import CimInstance, CimValue, EmbeddedInstance, EndpointReference, to_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import InternalErrorFault, NotFoundFault
from hvsim.simulation import Simulation
from hvsim.world.state import DiskSpec

from .helpers import (
    JOB_TIMEOUT,
    NS_CLUSTER,
    NS_VIRT,
    SMALL_DISK,
    connector,
    follower,
    object_path,
    one,
    quick_sim,
    service,
    vm_instance,
    vm_settings,
    vssd_of,
)

VSMS = "Msvm_VirtualSystemManagementService"
SNAPSHOTS = "Msvm_VirtualSystemSnapshotService"
IMAGES = "Msvm_ImageManagementService"
RP_SERVICE = "Msvm_VirtualSystemReferencePointService"
VSSD = "Msvm_VirtualSystemSettingData"
SASD = "Msvm_StorageAllocationSettingData"
EPASD = "Msvm_EthernetPortAllocationSettingData"
RECOVERY = 32768
STANDARD = 2
APP_CONSISTENT = 1
CRASH_CONSISTENT = 2
DISK_DRIVE = "Microsoft:Hyper-V:Synthetic Disk Drive"
VIRTUAL_HARD_DISK = "Microsoft:Hyper-V:Virtual Hard Disk"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Simulation]:
    """A fresh estate per test (the methods change it)."""
    with quick_sim(tmp_path) as simulation:
        yield simulation


@pytest.fixture
def conn(estate: Simulation) -> Iterator[Connector]:
    """Product connector to every node of the estate."""
    with connector(estate) as c:
        yield c


def _epr(inst: CimInstance) -> EndpointReference:
    assert inst.epr is not None, f"{inst.class_name} came without an EPR"
    return inst.epr


def _call(client: CimClient, target: EndpointReference | CimInstance, method: str,
          params: list[tuple[str, Any]], **kwargs: Any) -> JobResult:
    ref = target if isinstance(target, EndpointReference) else _epr(target)
    return follower(client).call(ref, method, params, timeout=JOB_TIMEOUT, **kwargs)


def _snapshot_settings(level: int) -> EmbeddedInstance:
    inst = CimInstance("Msvm_VirtualSystemSnapshotSettingData",
                       {"ConsistencyLevel": level, "IgnoreNonSnapshottableDisks": True},
                       types={"ConsistencyLevel": "uint8"})
    return EmbeddedInstance(inst)


def _create_snapshot(client: CimClient, vm: CimInstance, snapshot_type: int, level: int = APP_CONSISTENT
                     ) -> CimInstance:
    res = _call(client, service(client, SNAPSHOTS), "CreateSnapshot",
                [("AffectedSystem", _epr(vm)), ("SnapshotSettings", _snapshot_settings(level)),
                 ("SnapshotType", snapshot_type)])
    assert not res.synchronous and res.job is not None
    return one(res.resulting("ResultingSnapshot", VSSD), "resulting snapshot")


def _disk_paths(client: CimClient, vssd: CimInstance) -> list[str]:
    return sorted(s.strs("HostResource")[0] for s in vm_settings(client, vssd)
                  if s.class_name == SASD and s.str("ResourceSubType") == VIRTUAL_HARD_DISK)


def _export_settings(client: CimClient, vm: CimInstance) -> CimInstance:
    """The VM's export template, switched to the config-only recipe (hyperv-wmi.md 3.2)."""
    esd = one(client.associators(_epr(vm), assoc_class="Msvm_SystemExportSettingData"), "export settings")
    assert esd.class_name == "Msvm_VirtualSystemExportSettingData"
    esd.set("CopySnapshotConfiguration", 1, "uint8")
    esd.set("CopyVmStorage", False, "boolean")
    esd.set("CopyVmRuntimeInformation", False, "boolean")
    esd.set("CreateVmExportSubdirectory", True, "boolean")
    esd.set("CaptureLiveState", 0, "uint8")
    return esd


def _export(client: CimClient, vm: CimInstance, directory: str) -> JobResult:
    return _call(client, service(client, VSMS), "ExportSystemDefinition",
                 [("ComputerSystem", _epr(vm)), ("ExportDirectory", directory),
                  ("ExportSettingData", EmbeddedInstance(_export_settings(client, vm)))])


# ---------------------------------------------------------------------------- power


def test_request_state_change_on_a_vm(conn: Connector, estate: Simulation) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    assert db01.int("EnabledState") == 3
    started = _call(hv02, db01, "RequestStateChange", [("RequestedState", 2)])
    assert started.job is not None and started.job.int("JobState") == JobState.COMPLETED
    assert hv02.get(_epr(db01)).int("EnabledState") == 2
    assert estate.world.vm("db01").state == 2
    with pytest.raises(MethodFailedError) as info:
        _call(hv02, db01, "RequestStateChange", [("RequestedState", 2)])
    assert info.value.return_value == 32775
    assert "Invalid state for this operation" in str(info.value)
    _call(hv02, db01, "RequestStateChange", [("RequestedState", 3)])
    assert hv02.get(_epr(db01)).int("EnabledState") == 3


# ---------------------------------------------------------------------------- export / import


def test_export_config_only_writes_the_definition(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    res = _export(hv01, web, "C:\\ClusterStorage\\Volume2\\Export")
    assert res.job is not None and res.job.int("JobState") == JobState.COMPLETED
    vm_id = web.str("Name")
    folder = estate.world.local("HV01", "C:\\ClusterStorage\\Volume2\\Export\\web01")
    vmcx = folder / "Virtual Machines" / f"{vm_id}.vmcx"
    assert json.loads(vmcx.read_text(encoding="utf-8"))["vm_id"].upper() == vm_id.upper()
    assert (folder / "Virtual Machines" / f"{vm_id}.vmgs").is_file()
    # configuration only: no disks copied
    assert not list(folder.rglob("*.vhd*"))
    # a second export to the same place is refused by the job, with the reason
    with pytest.raises(JobFailedError) as info:
        _export(hv01, web, "C:\\ClusterStorage\\Volume2\\Export")
    assert "already exists" in str(info.value)


def test_restore_in_place_export_destroy_import_validate_realize(conn: Connector, estate: Simulation) -> None:
    host = conn.client("HVSTANDALONE01")
    legacy = vm_instance(host, "legacy01")
    vm_id = legacy.str("Name")
    disks_before = _disk_paths(host, vssd_of(host, legacy))
    # a running VM cannot be destroyed: turn it off first
    with pytest.raises(MethodFailedError) as refused:
        _call(host, service(host, VSMS), "DestroySystem", [("AffectedSystem", _epr(legacy))])
    assert refused.value.return_value == 32775
    _call(host, legacy, "RequestStateChange", [("RequestedState", 3)])
    _export(host, legacy, "D:\\Export")
    _call(host, service(host, VSMS), "DestroySystem", [("AffectedSystem", _epr(legacy))])
    with pytest.raises(NotFoundFault):
        host.get(_epr(legacy))
    assert host.query(NS_VIRT, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName = 'legacy01'") == []
    for path in disks_before:  # DestroySystem keeps the disks
        assert estate.world.local("HVSTANDALONE01", path).is_file()

    imported = _call(host, service(host, VSMS), "ImportSystemDefinition", [
        ("SystemDefinitionFile", f"D:\\Export\\legacy01\\Virtual Machines\\{vm_id}.vmcx"),
        ("SnapshotFolder", "D:\\Export\\legacy01\\Snapshots"),
        ("GenerateNewSystemIdentifier", False)])
    planned = one(imported.resulting("ImportedSystem", "Msvm_PlannedComputerSystem"), "planned VM")
    assert planned.class_name == "Msvm_PlannedComputerSystem"
    assert planned.str("Name") == vm_id
    assert vm_instance(host, "legacy01", planned=True).epr == planned.epr
    planned_vssd = vssd_of(host, planned)
    assert planned_vssd.str("VirtualSystemType") == "Microsoft:Hyper-V:System:Planned"
    assert _disk_paths(host, planned_vssd) == disks_before

    _call(host, service(host, VSMS), "ValidatePlannedSystem", [("PlannedSystem", _epr(planned))])
    realized = _call(host, service(host, VSMS), "RealizePlannedSystem", [("PlannedSystem", _epr(planned))])
    vm = one(realized.resulting("ResultingSystem", "Msvm_ComputerSystem"), "realized VM")
    assert vm.str("Name") == vm_id and vm.str("ElementName") == "legacy01"
    assert vm.int("EnabledState") == 3
    assert host.enumerate(NS_VIRT, "Msvm_PlannedComputerSystem") == []


def test_import_with_a_new_identifier(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    _export(hv01, web, "C:\\ClusterStorage\\Volume1\\Export")
    vmcx = f"C:\\ClusterStorage\\Volume1\\Export\\web01\\Virtual Machines\\{web.str('Name')}.vmcx"
    # same identifier while web01 is registered: the job refuses and says why
    with pytest.raises(JobFailedError) as clash:
        _call(hv01, service(hv01, VSMS), "ImportSystemDefinition",
              [("SystemDefinitionFile", vmcx), ("GenerateNewSystemIdentifier", False)])
    assert web.str("Name").upper() in str(clash.value).upper()
    copy = _call(hv01, service(hv01, VSMS), "ImportSystemDefinition",
                 [("SystemDefinitionFile", vmcx), ("GenerateNewSystemIdentifier", True)])
    planned = one(copy.resulting("ImportedSystem", "Msvm_PlannedComputerSystem"), "planned copy")
    assert planned.str("Name").upper() != web.str("Name").upper()
    assert planned.str("ElementName") == "web01"
    assert one(hv01.enumerate(NS_VIRT, "Msvm_PlannedComputerSystem"), "planned VM").epr == planned.epr
    # the planned VM can be thrown away with DestroySystem
    _call(hv01, service(hv01, VSMS), "DestroySystem", [("AffectedSystem", _epr(planned))])
    assert hv01.enumerate(NS_VIRT, "Msvm_PlannedComputerSystem") == []
    with pytest.raises(MethodFailedError) as missing:
        _call(hv01, service(hv01, VSMS), "ImportSystemDefinition",
              [("SystemDefinitionFile", "C:\\nowhere\\x.vmcx"), ("GenerateNewSystemIdentifier", True)])
    assert missing.value.return_value == 32779


def test_validate_finds_missing_switch_and_disks_then_fix_ups_realize(conn: Connector,
                                                                      estate: Simulation) -> None:
    """Restore of a cluster VM onto the standalone host: no CSV, no External-LAN switch there."""
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    web_disks = _disk_paths(hv01, vssd_of(hv01, web))
    _export(hv01, web, "C:\\ClusterStorage\\Volume1\\Export")
    # stage the export and the disks on the standalone host (what the restore does over SMB)
    world = estate.world
    shutil.copytree(world.local("HV01", "C:\\ClusterStorage\\Volume1\\Export\\web01"),
                    world.local("HVSTANDALONE01", "D:\\Restore\\web01"))
    for path in web_disks:
        target = world.local("HVSTANDALONE01", f"D:\\Restore\\web01\\{PureWindowsPath(path).name}")
        shutil.copyfile(world.local("HV01", path), target)

    host = conn.client("HVSTANDALONE01")
    vsms = service(host, VSMS)
    vm_id = web.str("Name")
    imported = _call(host, vsms, "ImportSystemDefinition", [
        ("SystemDefinitionFile", f"D:\\Restore\\web01\\Virtual Machines\\{vm_id}.vmcx"),
        ("SnapshotFolder", "D:\\Restore\\web01\\Snapshots"), ("GenerateNewSystemIdentifier", False)])
    planned = one(imported.resulting("ImportedSystem", "Msvm_PlannedComputerSystem"), "planned VM")

    with pytest.raises(JobFailedError) as info:
        _call(host, vsms, "ValidatePlannedSystem", [("PlannedSystem", _epr(planned))])
    errors = info.value.errors
    by_id = {e.message_id: e for e in errors}
    assert set(by_id) == {"12660", "40000"}, [str(e) for e in errors]
    assert sum(e.message_id == "40000" for e in errors) == len(web_disks)
    assert "External-LAN" in str(by_id["12660"])
    for e in errors:
        assert e.error_source is not None and vm_id.upper() in e.error_source.upper()
    assert any(p in str(info.value) for p in web_disks)

    # fix-ups on the planned VM: Get each setting, change it, send it back as CIM-XML
    lan = one(host.query(NS_VIRT, "SELECT * FROM Msvm_VirtualEthernetSwitch WHERE ElementName = 'LAN'"),
              "LAN switch")
    changed: list[EmbeddedInstance] = []
    for setting in vm_settings(host, vssd_of(host, planned)):
        if setting.class_name == SASD and setting.str("ResourceSubType") == VIRTUAL_HARD_DISK:
            name = PureWindowsPath(setting.strs("HostResource")[0]).name
            setting["HostResource"] = [f"D:\\Restore\\web01\\{name}"]
        elif setting.class_name == EPASD:
            setting["HostResource"] = [object_path("HVSTANDALONE01", _epr(lan))]
        else:
            continue
        changed.append(EmbeddedInstance(to_cimxml(setting)))
    assert len(changed) == len(web_disks) + 1
    modified = _call(host, vsms, "ModifyResourceSettings", [("ResourceSettings", changed)])
    assert len(modified.outputs.refs("ResultingResourceSettings")) == len(changed)
    planned_vssd = vssd_of(host, planned)
    assert _disk_paths(host, planned_vssd) == sorted(
        f"D:\\Restore\\web01\\{PureWindowsPath(p).name}" for p in web_disks)

    _call(host, vsms, "ValidatePlannedSystem", [("PlannedSystem", _epr(planned))])
    realized = _call(host, vsms, "RealizePlannedSystem", [("PlannedSystem", _epr(planned))])
    vm = one(realized.resulting("ResultingSystem", "Msvm_ComputerSystem"), "realized VM")
    assert vm.str("Name") == vm_id
    assert world.vm(vm_id).node == "HVSTANDALONE01"


# ---------------------------------------------------------------------------- settings


def test_modify_resource_settings_round_trips_a_get(conn: Connector, estate: Simulation) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    cpu = one([s for s in vm_settings(hv02, vssd_of(hv02, db01)) if s.class_name == "Msvm_ProcessorSettingData"],
              "processor settings")
    before = cpu.int("VirtualQuantity")
    cpu["VirtualQuantity"] = before + 2
    text = to_cimxml(cpu)
    assert 'CLASSNAME="Msvm_ProcessorSettingData"' in text and "InstanceID" in text
    res = _call(hv02, service(hv02, VSMS), "ModifyResourceSettings",
                [("ResourceSettings", [EmbeddedInstance(text)])])
    (ref,) = res.outputs.refs("ResultingResourceSettings")
    assert ref == cpu.epr
    assert hv02.get(ref).int("VirtualQuantity") == before + 2
    world_cpu = next(s for s in estate.world.vm("db01").config.settings
                     if s.class_name == "Msvm_ProcessorSettingData")
    assert int(world_cpu.props["VirtualQuantity"]) == before + 2


def test_modify_system_settings_renames(conn: Connector, estate: Simulation) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    vssd = vssd_of(hv02, db01)
    vssd["ElementName"] = "db01-renamed"
    vssd["Notes"] = ["renamed by an end-to-end test"]
    _call(hv02, service(hv02, VSMS), "ModifySystemSettings", [("SystemSettings", EmbeddedInstance(vssd))])
    again = hv02.get(_epr(db01))
    assert again.str("ElementName") == "db01-renamed"
    assert vssd_of(hv02, again).strs("Notes") == ["renamed by an end-to-end test"]
    assert estate.world.vm("db01-renamed").id == db01.str("Name")


def test_define_add_remove_destroy(conn: Connector, estate: Simulation, tmp_path: Path) -> None:
    hv01 = conn.client("HV01")
    vsms = service(hv01, VSMS)
    settings = CimInstance(VSSD, {"ElementName": "new01", "VirtualSystemSubType": "Microsoft:Hyper-V:SubType:2",
                                  "ConfigurationDataRoot": "C:\\ClusterStorage\\Volume1\\new01"})
    defined = _call(hv01, vsms, "DefineSystem", [("SystemSettings", EmbeddedInstance(settings))])
    vm = one(defined.resulting("ResultingSystem", "Msvm_ComputerSystem"), "defined VM")
    assert vm.str("ElementName") == "new01" and vm.int("EnabledState") == 3
    vm_id = vm.str("Name")
    assert estate.world.local("HV01", f"C:\\ClusterStorage\\Volume1\\new01\\Virtual Machines\\{vm_id}.vmcx"
                              ).is_file()
    vssd = vssd_of(hv01, vm)
    assert vssd.str("VirtualSystemSubType") == "Microsoft:Hyper-V:SubType:2"
    controller = one([s for s in vm_settings(hv01, vssd) if s.opt_int("ResourceType") == 6], "SCSI controller")

    drive_props: dict[str, CimValue] = {
        "ResourceType": 17, "ResourceSubType": DISK_DRIVE, "AddressOnParent": "0",
        "Parent": object_path("HV01", _epr(controller))}
    drive = CimInstance("Msvm_ResourceAllocationSettingData", drive_props, types={"ResourceType": "uint16"})
    added = _call(hv01, vsms, "AddResourceSettings",
                  [("AffectedConfiguration", _epr(vssd)), ("ResourceSettings", [EmbeddedInstance(drive)])])
    (drive_ref,) = added.outputs.refs("ResultingResourceSettings")
    new_drive = hv01.get(drive_ref)
    assert new_drive.str("ResourceSubType") == DISK_DRIVE
    assert new_drive.str("Parent").lower() == object_path("HV01", _epr(controller)).lower()

    vhdx = "C:\\ClusterStorage\\Volume1\\new01\\new01.vhdx"
    local = estate.world.local("HV01", vhdx)
    local.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(local), "8M"], check=True)
    disk_props: dict[str, CimValue] = {"ResourceType": 31, "ResourceSubType": VIRTUAL_HARD_DISK,
                                       "Parent": object_path("HV01", drive_ref), "HostResource": [vhdx]}
    disk = CimInstance(SASD, disk_props, types={"ResourceType": "uint16"})
    added = _call(hv01, vsms, "AddResourceSettings",
                  [("AffectedConfiguration", _epr(vssd)), ("ResourceSettings", [EmbeddedInstance(disk)])])
    (disk_ref,) = added.outputs.refs("ResultingResourceSettings")
    assert hv01.get(disk_ref).strs("HostResource") == [vhdx]
    assert _disk_paths(hv01, vssd) == [vhdx]

    _call(hv01, vsms, "RemoveResourceSettings", [("ResourceSettings", [drive_ref])])
    for gone in (drive_ref, disk_ref):  # the drive and the disk in it
        with pytest.raises(NotFoundFault):
            hv01.get(gone)
    assert _disk_paths(hv01, vssd) == []

    _call(hv01, vsms, "DestroySystem", [("AffectedSystem", _epr(vm))])
    with pytest.raises(NotFoundFault):
        hv01.get(_epr(vm))
    assert local.is_file()  # DestroySystem never deletes disks


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("level", [APP_CONSISTENT, CRASH_CONSISTENT])
def test_recovery_snapshot_and_destroy(conn: Connector, estate: Simulation, level: int) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    live_before = _disk_paths(hv01, vssd_of(hv01, web))
    snap = _create_snapshot(hv01, web, RECOVERY, level)
    assert snap.str("VirtualSystemType") == "Microsoft:Hyper-V:Snapshot:Recovery"
    (world_snap,) = estate.world.snapshots("web01")
    assert world_snap.consistency == level
    assert snap.str("InstanceID") == f"Microsoft:{world_snap.id}"
    # the snapshot keeps the frozen parents, the VM now writes to new .avhdx children beside them
    assert _disk_paths(hv01, snap) == live_before
    live_now = _disk_paths(hv01, vssd_of(hv01, web))
    assert all(p.lower().endswith(".avhdx") for p in live_now)
    for child, parent in zip(live_now, live_before):
        assert PureWindowsPath(child).parent == PureWindowsPath(parent).parent
        assert estate.world.local("HV01", child).is_file()
    listed = hv01.associators(_epr(web), assoc_class="Msvm_SnapshotOfVirtualSystem")
    assert [s.str("InstanceID") for s in listed] == [snap.str("InstanceID")]

    _call(hv01, service(hv01, SNAPSHOTS), "DestroySnapshot", [("AffectedSnapshot", _epr(snap))])
    assert hv01.associators(_epr(web), assoc_class="Msvm_SnapshotOfVirtualSystem") == []
    assert _disk_paths(hv01, vssd_of(hv01, web)) == live_before
    for child in live_now:
        assert not estate.world.local("HV01", child).exists()


def test_standard_snapshot_cannot_become_a_reference_point(conn: Connector) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    res = _call(hv02, service(hv02, SNAPSHOTS), "CreateSnapshot",
                [("AffectedSystem", _epr(db01)), ("SnapshotSettings", ""), ("SnapshotType", STANDARD)])
    snap = one(res.resulting("ResultingSnapshot", VSSD), "snapshot")
    assert snap.str("VirtualSystemType") == "Microsoft:Hyper-V:Snapshot:Realized"
    with pytest.raises(JobFailedError) as info:
        _call(hv02, service(hv02, SNAPSHOTS), "ConvertToReferencePoint", [("AffectedSnapshot", _epr(snap))])
    assert "recovery" in str(info.value).lower()
    assert info.value.errors, "GetErrorEx should explain the failure"


def test_app_consistent_snapshot_needs_the_guest(conn: Connector, estate: Simulation) -> None:
    estate.world.add_vm("HV01", "novss01", state="running", guest_vss=False,
                        root="C:\\ClusterStorage\\Volume1\\novss01",
                        disks_=[DiskSpec("C:\\ClusterStorage\\Volume1\\novss01\\d.vhdx", size=SMALL_DISK)])
    hv01 = conn.client("HV01")
    vm = vm_instance(hv01, "novss01")
    with pytest.raises(JobFailedError) as info:
        _create_snapshot(hv01, vm, RECOVERY, APP_CONSISTENT)
    err = info.value
    assert err.job_state == JobState.EXCEPTION and err.error_code
    assert "VSS" in str(err) and "novss01" in str(err)
    assert estate.world.snapshots("novss01") == []
    # crash consistency does not need the guest
    assert _create_snapshot(hv01, vm, RECOVERY, CRASH_CONSISTENT).str("VirtualSystemType").endswith("Recovery")


def test_reference_point_lifecycle(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    snap = _create_snapshot(hv01, web, RECOVERY)
    res = _call(hv01, service(hv01, SNAPSHOTS), "ConvertToReferencePoint", [("AffectedSnapshot", _epr(snap))])
    rp = one(res.resulting("ResultingReferencePoint", "Msvm_VirtualSystemReferencePoint"), "reference point")
    assert rp.str("VirtualSystemIdentifier") == web.str("Name")
    assert rp.int("ReferencePointType") == 2
    rct = rp.strs("ResilientChangeTrackingIdentifiers")
    assert len(rct) == len(rp.strs("VirtualDiskIdentifiers")) == 2 and all(rct)
    # the recovery snapshot is gone (merged)
    with pytest.raises(NotFoundFault):
        hv01.get(_epr(snap))
    assert hv01.associators(_epr(web), assoc_class="Msvm_SnapshotOfVirtualSystem") == []
    listed = hv01.associators(_epr(web), assoc_class="Msvm_ReferencePointOfVirtualSystem")
    assert [r.epr for r in listed] == [rp.epr]
    (world_rp,) = estate.world.reference_points("web01")
    assert list(world_rp.rct_ids) == rct

    _call(hv01, service(hv01, RP_SERVICE), "DestroyReferencePoint", [("AffectedReferencePoint", _epr(rp))])
    assert hv01.associators(_epr(web), assoc_class="Msvm_ReferencePointOfVirtualSystem") == []
    assert estate.world.reference_points("web01") == []


# ---------------------------------------------------------------------------- image service


@pytest.mark.qemu
def test_vhd_setting_data_matches_qemu_img(conn: Connector, estate: Simulation) -> None:
    host = conn.client("HVSTANDALONE01")
    images = service(host, IMAGES)
    paths = _disk_paths(host, vssd_of(host, vm_instance(host, "legacy01")))
    assert {p.rsplit(".", 1)[1] for p in paths} == {"vhd", "vhdx"}
    for path in paths:
        res = _call(host, images, "GetVirtualHardDiskSettingData", [("Path", path)])
        assert res.synchronous
        data = res.outputs.instance("SettingData")
        assert data.class_name == "Msvm_VirtualHardDiskSettingData"
        local = estate.world.local("HVSTANDALONE01", path)
        fmt = "vhdx" if path.lower().endswith(".vhdx") else "vpc"
        info = json.loads(subprocess.run(["qemu-img", "info", "-f", fmt, "--output=json", str(local)],
                                         check=True, capture_output=True, text=True).stdout)
        assert data.str("Path") == path
        assert data.int("Format") == {"vpc": 2, "vhdx": 3}[fmt]
        assert data.int("MaxInternalSize") == info["virtual-size"]
        assert data.int("LogicalSectorSize") == 512
        if data.int("Type") == 2:  # fixed: the data plus a 512-byte footer
            assert fmt == "vpc" and local.stat().st_size == info["virtual-size"] + 512
        else:
            assert data.int("Type") == 3  # dynamic
            assert data.int("BlockSize") == info["cluster-size"]
    with pytest.raises(MethodFailedError) as info_missing:
        _call(host, images, "GetVirtualHardDiskSettingData", [("Path", "D:\\nowhere.vhdx")])
    assert info_missing.value.return_value == 32779 and "File not found" in str(info_missing.value)


def test_validate_virtual_hard_disk(conn: Connector, estate: Simulation) -> None:
    from hvsim.disks import corrupt_disk

    host = conn.client("HVSTANDALONE01")
    images = service(host, IMAGES)
    good = next(p for p in _disk_paths(host, vssd_of(host, vm_instance(host, "legacy01"))) if p.endswith(".vhdx"))
    res = _call(host, images, "ValidateVirtualHardDisk", [("Path", good)])
    assert res.job_ref is not None and res.job_ref.class_name == "Msvm_StorageJob"
    assert res.job is not None and res.job.int("JobState") == JobState.COMPLETED
    with pytest.raises(MethodFailedError) as missing:
        _call(host, images, "ValidateVirtualHardDisk", [("Path", "D:\\nowhere.vhdx")])
    assert missing.value.return_value == 32779
    corrupt_disk(estate.world.local("HVSTANDALONE01", good), "both_headers")
    with pytest.raises(JobFailedError) as bad:
        _call(host, images, "ValidateVirtualHardDisk", [("Path", good)])
    assert good in str(bad.value)


def test_get_virtual_disk_changes_after_guest_writes(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    snaps = service(hv01, SNAPSHOTS)
    images = service(hv01, IMAGES)
    first = _create_snapshot(hv01, web, RECOVERY)
    res = _call(hv01, snaps, "ConvertToReferencePoint", [("AffectedSnapshot", _epr(first))])
    rp = one(res.resulting("ResultingReferencePoint", "Msvm_VirtualSystemReferencePoint"), "reference point")
    rct = rp.strs("ResilientChangeTrackingIdentifiers")

    block = estate.world.rct_block_size
    estate.world.guest_write("web01", 0, 3 * block + 100, b"x" * 4096)
    estate.world.guest_write("web01", 0, 7 * block, b"y" * (block + 1))  # spills into a second block

    second = _create_snapshot(hv01, web, RECOVERY)
    # RCT ids are index-aligned with VirtualDiskIdentifiers; match disks by their device part
    rct_by_device = {d.split("\\", 1)[1]: r for d, r in zip(rp.strs("VirtualDiskIdentifiers"), rct)}
    size = SMALL_DISK
    changes: dict[str, tuple[object, object]] = {}
    frozen = [s for s in vm_settings(hv01, second)
              if s.class_name == SASD and s.str("ResourceSubType") == VIRTUAL_HARD_DISK]
    assert len(frozen) == 2
    for sasd in frozen:
        path = sasd.strs("HostResource")[0]
        rct_id = rct_by_device[sasd.str("InstanceID").split("\\", 1)[1]]
        out = _call(hv01, images, "GetVirtualDiskChanges",
                    [("Path", path), ("LimitId", rct_id), ("ByteOffset", 0), ("ByteLength", size)],
                    out_types={"ProcessedByteLength": "uint64", "ChangedByteOffsets": "uint64[]",
                               "ChangedByteLengths": "uint64[]"})
        assert out.outputs["ProcessedByteLength"] == size
        changes[PureWindowsPath(path).name] = (out.outputs["ChangedByteOffsets"], out.outputs["ChangedByteLengths"])
    system = next(n for n in changes if "system" in n)
    data = next(n for n in changes if "data" in n)
    assert changes[system] == ([3 * block, 7 * block], [block, 2 * block])
    assert changes[data] == ([], [])
    with pytest.raises(MethodFailedError) as unknown:
        _call(hv01, images, "GetVirtualDiskChanges",
              [("Path", frozen[0].strs("HostResource")[0]), ("LimitId", "rctX:not-a-known-id"),
               ("ByteOffset", 0), ("ByteLength", size)])
    assert unknown.value.return_value == 32773


# ---------------------------------------------------------------------------- jobs


def test_job_progress_is_reported_until_completion(tmp_path: Path) -> None:
    with quick_sim(tmp_path, job_duration=1.0) as sim, connector(sim) as conn:
        hv02 = conn.client("HV02")
        db01 = vm_instance(hv02, "db01")
        seen: list[int] = []
        res = _call(hv02, db01, "RequestStateChange", [("RequestedState", 2)], progress=seen.append)
    assert res.job is not None
    assert seen == sorted(seen) and seen[-1] == 100
    assert any(0 < p < 100 for p in seen), seen
    assert res.job.int("JobState") == JobState.COMPLETED and res.job.int("ErrorCode") == 0


def test_finished_job_disappears_after_time_before_removal(tmp_path: Path) -> None:
    with quick_sim(tmp_path, time_before_removal=0.6) as sim, connector(sim) as conn:
        hv02 = conn.client("HV02")
        db01 = vm_instance(hv02, "db01")
        res = _call(hv02, db01, "RequestStateChange", [("RequestedState", 2)])
        assert res.job_ref is not None and res.job is not None
        assert res.job.interval("TimeBeforeRemoval") == timedelta(seconds=0.6)
        assert hv02.get(res.job_ref).int("JobState") == JobState.COMPLETED
        time.sleep(0.8)
        with pytest.raises(NotFoundFault):
            hv02.get(res.job_ref)
        assert all(j.epr != res.job_ref for j in hv02.enumerate(NS_VIRT, "Msvm_ConcreteJob"))


def test_a_job_removed_before_it_was_read_is_reported(tmp_path: Path) -> None:
    with quick_sim(tmp_path, time_before_removal=0.0) as sim, connector(sim) as conn:
        hv02 = conn.client("HV02")
        db01 = vm_instance(hv02, "db01")
        result = hv02.invoke(_epr(db01), "RequestStateChange", [("RequestedState", 2)])
        assert result.return_value == 4096
        time.sleep(0.2)
        hv02.get(_epr(db01))  # the host moves on: the job finishes ...
        hv02.get(_epr(db01))  # ... and is purged
        with pytest.raises(JobVanishedError) as info:
            follower(hv02).follow(result, timeout=JOB_TIMEOUT)
    assert "disappeared" in str(info.value) and "TimeBeforeRemoval" in str(info.value)


# ---------------------------------------------------------------------------- cluster


def _cluster(client: CimClient) -> CimInstance:
    return one(client.enumerate(NS_CLUSTER, "MSCluster_Cluster"), "cluster")


def _group(client: CimClient, name: str) -> CimInstance:
    return client.get(EndpointReference.build(NS_CLUSTER, "MSCluster_ResourceGroup", {"Name": name}))


def test_add_virtual_machine_makes_it_highly_available(conn: Connector, estate: Simulation) -> None:
    estate.world.add_vm("HV01", "ha01", root="C:\\ClusterStorage\\Volume1\\ha01", switches=["External-LAN"])
    hv01 = conn.client("HV01")
    groups = {g.str("Name") for g in hv01.enumerate(NS_CLUSTER, "MSCluster_ResourceGroup")}
    assert "ha01" not in groups
    res = hv01.invoke(_epr(_cluster(hv01)), "AddVirtualMachine", [("VirtualMachine", "ha01")])
    assert res.return_value == 0
    group = _group(hv01, "ha01")
    assert group.str("OwnerNode") == "HV01" and group.int("GroupType") == 111
    resources = hv01.associators(_epr(group), assoc_class="MSCluster_ResourceGroupToResource")
    assert sorted(r.str("Type") for r in resources) == ["Virtual Machine", "Virtual Machine Configuration"]
    assert clustermod.owner_node(hv01, estate.world.vm("ha01").id) == "HV01"
    with pytest.raises(InternalErrorFault) as again:
        hv01.invoke(_epr(_cluster(hv01)), "AddVirtualMachine", [("VirtualMachine", "ha01")])
    assert "already highly available" in str(again.value)
    assert again.value.wmi_error is not None and again.value.wmi_error.parameter_info == "VirtualMachine"


def test_move_to_new_node_moves_the_vm(conn: Connector, estate: Simulation) -> None:
    hv01, hv02 = conn.client("HV01"), conn.client("HV02")
    web = vm_instance(hv01, "web01")
    res = hv01.invoke(_epr(_group(hv01, "web01")), "MoveToNewNode", [("NodeName", "HV02"), ("TimeOut", 60)])
    assert res.return_value == 0
    with pytest.raises(NotFoundFault):
        hv01.get(_epr(web))
    assert hv02.get(_epr(web)).str("ElementName") == "web01"
    assert _group(hv02, "web01").str("OwnerNode") == "HV02"
    assert clustermod.owner_node(hv01, web.str("Name")) == "HV02"
    with pytest.raises(InternalErrorFault):
        hv01.invoke(_epr(_group(hv01, "web01")), "MoveToNewNode", [("NodeName", "HV09"), ("TimeOut", 60)])


def test_take_offline_and_bring_online(conn: Connector) -> None:
    hv01 = conn.client("HV01")
    group = _group(hv01, "web01")
    assert group.int("State") == 0
    hv01.invoke(_epr(group), "TakeOffline", [("TimeOut", 60)])
    assert _group(hv01, "web01").int("State") == 1
    assert vm_instance(hv01, "web01").int("EnabledState") == 6  # default OfflineAction: Save
    hv01.invoke(_epr(group), "BringOnline", [("TimeOut", 60)])
    assert _group(hv01, "web01").int("State") == 0
    assert vm_instance(hv01, "web01").int("EnabledState") == 2


def test_destroy_group_keeps_the_vm(conn: Connector) -> None:
    hv02 = conn.client("HV02")
    hv02.invoke(_epr(_group(hv02, "db01")), "DestroyGroup", [("Options", 1)])
    with pytest.raises(NotFoundFault):
        _group(hv02, "db01")
    groups = hv02.query(NS_CLUSTER, "SELECT * FROM MSCluster_ResourceGroup WHERE GroupType = 111")
    assert sorted(g.str("Name") for g in groups) == ["file01", "web01"]
    assert vm_instance(hv02, "db01").str("ElementName") == "db01"
