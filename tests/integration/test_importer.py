"""The Hyper-V side of a restore (hyperv/importer.py, hyperv/cluster.py roles) against the simulator.

Every call goes through the product's CimClient (pywinrm, NTLM-encrypted HTTP) to hvsim.
Definitions are staged the way a restore finds them: a configuration-only export made by
the simulator's own ExportSystemDefinition (CopyVmStorage=false), copied where needed with
the simulator's file system; disk copies are plain file copies there too.  The world is read
afterwards only to check the effect.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PureWindowsPath
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from bareos_hyperv.hyperv.cluster import ClusterRoleError, add_vm_role, move_role, remove_vm_role, vm_groups
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.importer import (
    DefineFailed,
    DefinitionImportRefused,
    ImporterError,
    PlannedVm,
    PlannedVmGone,
    RealizeRefused,
    SwitchNotFound,
    UnknownDevice,
    ValidationProblem,
    VmImporter,
    VmStateError,
)
from bareos_hyperv.hyperv.schema import to_typed_cimxml
from bareos_hyperv.hyperv.vms import VmNotFound, list_vms, read_settings
from bareos_hyperv.model.backup import CapturedSettings
from bareos_hyperv.model.vm import ControllerKind, DriveSlot, VmRef
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance
from bareos_hyperv.wsman.client import CimClient
from hvsim import faults as F
from hvsim.simulation import Simulation
from hvsim.world.state import SUB_CONNECTION, SUB_NIC, SUB_PASSTHROUGH, DiskSpec, Vm, World

from .helpers import JOB_TIMEOUT, SMALL_DISK, connector, follower, one, quick_sim, service, vm_instance

STANDALONE = "HVSTANDALONE01"
CLUSTER = "HVCLUSTER01"
VOL1 = "C:\\ClusterStorage\\Volume1"
VOL2 = "C:\\ClusterStorage\\Volume2"
VSMS = "Msvm_VirtualSystemManagementService"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Simulation]:
    """A fresh estate per test (restores change it)."""
    with quick_sim(tmp_path) as simulation:
        yield simulation


@pytest.fixture
def conn(estate: Simulation) -> Iterator[Connector]:
    with connector(estate) as c:
        yield c


def _importer(conn: Connector, node: str) -> VmImporter:
    client = conn.client(node)
    return VmImporter(client, node, timeout=JOB_TIMEOUT, jobs=follower(client))


def _export(client: CimClient, vm_name: str, directory: str) -> str:
    """Configuration-only export of a VM into ``directory`` (as exporter.py does); the .vmcx path."""
    vm = vm_instance(client, vm_name)
    assert vm.epr is not None
    esd = one(client.associators(vm.epr, assoc_class="Msvm_SystemExportSettingData"), "export settings")
    esd.set("CopySnapshotConfiguration", 1, "uint8")
    esd.set("CopyVmStorage", False, "boolean")
    esd.set("CopyVmRuntimeInformation", False, "boolean")
    esd.set("CreateVmExportSubdirectory", False, "boolean")
    esd.set("CaptureLiveState", 0, "uint8")
    follower(client).call(service(client, VSMS), "ExportSystemDefinition",
                          [("ComputerSystem", vm.epr), ("ExportDirectory", directory),
                           ("ExportSettingData", EmbeddedInstance(esd))], timeout=JOB_TIMEOUT)
    return f"{directory}\\Virtual Machines\\{vm.str('Name')}.vmcx"


def _copy(world: World, src_node: str, src: str, dst_node: str, dst: str) -> None:
    """Copy a file or folder inside the simulated estate (what the restore's SMB writes amount to)."""
    source, target = world.local(src_node, src), world.local(dst_node, dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def _captured(inst: CimInstance) -> CapturedSettings:
    """A settings object as the backup captures it for the manifest."""
    return CapturedSettings(inst.class_name, inst.opt_str("InstanceID") or "", to_typed_cimxml(inst))


def _setting(vm: Vm, subtype: str) -> List[Dict[str, Any]]:
    return [s.props for s in vm.config.settings if s.subtype == subtype]


def _switch_id(world: World, node: str, name: str) -> str:
    sw = world.node(node).switch_by_name(name)
    assert sw is not None
    return sw.id


def _planned(world: World, guid: str) -> Vm:
    return world.vm(guid, planned=True)


# ----------------------------------------------------------------------------- import, same ID


def test_same_id_import_refused_while_the_vm_exists_then_restored_in_place(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    st = _importer(conn, STANDALONE)
    legacy = world.vm("legacy01")
    vmcx = _export(st.client, "legacy01", "D:\\Stage\\legacy01")
    disks = [s.host_resource[0] for s in legacy.config.vhds()]

    with pytest.raises(DefinitionImportRefused) as refused:
        st.import_definition(vmcx, new_id=False)
    text = str(refused.value)
    assert legacy.id in text and "already exists" in text and STANDALONE in text
    assert "new ID" in (refused.value.what_to_do or "")
    assert st.planned_systems() == []

    # the existing VM has to go first: not while it runs, and its disks stay
    with pytest.raises(VmStateError) as running:
        st.destroy_vm(legacy.id)
    assert "'legacy01'" in str(running.value) and "running" in str(running.value)
    assert STANDALONE in str(running.value) and running.value.what_to_do
    st.turn_off(legacy.id)
    st.turn_off(legacy.id)  # already off: nothing to do
    assert world.vm("legacy01").state == 3
    st.destroy_vm(legacy.id)
    assert not any(v.id == legacy.id for v in world.vms.values())
    assert all(world.local(STANDALONE, p).is_file() for p in disks)
    with pytest.raises(VmNotFound) as gone:
        st.destroy_vm(legacy.id)
    assert legacy.id in str(gone.value)

    planned = st.import_definition(vmcx, new_id=False, snapshot_folder="D:\\Stage\\legacy01\\Snapshots")
    assert (planned.guid, planned.name, planned.node) == (legacy.id, "legacy01", STANDALONE)
    assert st.planned_systems() == [planned]
    settings = st.disk_settings(planned)
    assert [(slot, paths) for _iid, slot, paths in settings] == [
        (DriveSlot(ControllerKind.IDE, 0, 0), [disks[0]]),
        (DriveSlot(ControllerKind.IDE, 0, 1), [disks[1]]),
        (DriveSlot(ControllerKind.IDE, 1, 0), [disks[2]]),
    ]
    assert all(iid.upper().startswith(f"MICROSOFT:{legacy.id}\\") for iid, _s, _p in settings)
    assert st.validate(planned) == []

    vm = st.realize(planned)
    assert vm == VmRef(legacy.id, "legacy01")
    assert st.planned_systems() == []
    st.destroy_planned(planned)  # the planned system is gone; the realized VM is not touched
    assert world.vm("legacy01").planned is False
    st.start(vm.guid)
    st.start(vm.guid)  # already running
    assert world.vm("legacy01").state == 2
    st.turn_off(vm.guid)
    assert world.vm("legacy01").state == 3


# ----------------------------------------------------------------------------- copy with fix-ups, cluster role


def test_copy_with_new_id_fix_ups_realize_and_cluster_role(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    source = world.add_vm("HV01", "app01", root=f"{VOL1}\\app01", switches=["External-LAN", "External-LAN"],
                          cpus=2, memory_mb=2048, disks_=[
                              DiskSpec(f"{VOL1}\\app01\\Virtual Hard Disks\\app01-os.vhdx", size=SMALL_DISK),
                              DiskSpec(f"{VOL1}\\app01\\Virtual Hard Disks\\app01-data.vhdx", size=SMALL_DISK)])
    hv01 = _importer(conn, "HV01")
    vmcx = _export(hv01.client, "app01", f"{VOL1}\\Stage\\app01")

    planned = hv01.import_definition(vmcx, new_id=True)
    assert planned.guid != source.id and planned.name == "app01" and planned.node == "HV01"
    settings = hv01.disk_settings(planned)
    assert [slot for _i, slot, _p in settings] == [DriveSlot(ControllerKind.SCSI, 0, 0),
                                                    DriveSlot(ControllerKind.SCSI, 0, 1)]
    assert all(iid.upper().startswith(f"MICROSOFT:{planned.guid}\\") for iid, _s, _p in settings)

    # disks: copies of the files at new paths
    target = f"{VOL2}\\restore\\app01-copy"
    new_paths = {}
    for _iid, slot, (path,) in settings:
        copy = f"{target}\\Virtual Hard Disks\\{PureWindowsPath(path).name}"
        _copy(world, "HV01", path, "HV01", copy)
        new_paths[slot] = copy
    hv01.retarget_disks(planned, new_paths)
    assert {slot: paths for _i, slot, paths in hv01.disk_settings(planned)} == {
        s: [p] for s, p in new_paths.items()}

    # adapters: one to another switch (MAC written with separators), one left disconnected
    macs = [props["Address"] for props in _setting(source, SUB_NIC)]
    dashed = "-".join(macs[0][i:i + 2] for i in range(0, 12, 2)).lower()
    hv01.connect_adapters(planned, {dashed: "internal-backup", macs[1]: None})

    renamed = hv01.set_system(planned, name="app01-copy", config_root=target, snapshot_root=f"{target}\\Snapshots")
    assert renamed == PlannedVm(planned.guid, "app01-copy", "HV01")
    assert hv01.validate(renamed) == []
    vm = hv01.realize(renamed)
    assert vm == VmRef(planned.guid, "app01-copy")

    copy_vm = world.vm(vm.guid)
    assert [s.host_resource for s in copy_vm.config.vhds()] == [[p] for p in new_paths.values()]
    first, second = _setting(copy_vm, SUB_CONNECTION)
    assert first["EnabledState"] == 2 and _switch_id(world, "HV01", "Internal-Backup") in first["HostResource"][0]
    assert first["LastKnownSwitchName"] == "Internal-Backup"
    assert second["EnabledState"] == 3
    assert copy_vm.config.vssd["ConfigurationDataRoot"] == target
    assert copy_vm.config.vssd["SwapFileDataRoot"] == target
    assert copy_vm.config.vssd["SnapshotDataRoot"] == f"{target}\\Snapshots"
    assert world.local("HV01", f"{target}\\Virtual Machines\\{vm.guid}.vmcx").is_file()
    # the source VM is untouched
    assert [s.host_resource[0] for s in world.vm("app01").config.vhds()] == [p for _i, _s, (p,) in settings]
    assert all(c["EnabledState"] == 2 for c in _setting(world.vm("app01"), SUB_CONNECTION))

    # make it highly available, move the role, remove the role: the VM stays where it is
    hv01_client = conn.client("HV01")
    group = add_vm_role(hv01_client, CLUSTER, vm.guid)
    assert (group.name, group.vm_guid, group.owner_node) == ("app01-copy", vm.guid, "HV01")
    move_role(hv01_client, group.name, "hv02")
    assert world.vm(vm.guid).node == "HV02"
    first, second = _setting(world.vm(vm.guid), SUB_CONNECTION)
    assert _switch_id(world, "HV02", "Internal-Backup") in first["HostResource"][0]  # followed by name
    assert second["EnabledState"] == 3
    with pytest.raises(VmNotFound):
        hv01.start(vm.guid)  # its objects live on HV02 now
    hv02 = _importer(conn, "HV02")
    hv02.start(vm.guid)
    assert world.vm(vm.guid).state == 2
    remove_vm_role(conn.client("HV02"), group.name)
    assert all(g.vm_guid != vm.guid for g in vm_groups(hv01_client))
    assert world.vm(vm.guid).node == "HV02" and world.vm(vm.guid).state == 6  # offline = saved (default)
    remove_vm_role(hv01_client, group.name)  # already gone: nothing to do
    hv02.destroy_vm(vm.guid)  # a saved VM may be destroyed (its saved state goes with it)
    assert not any(v.id == vm.guid for v in world.vms.values())
    assert all(world.local("HV02", p).is_file() for p in new_paths.values())


# ----------------------------------------------------------------------------- validation findings


def test_validate_names_each_problem_with_its_message_id_and_settings(conn: Connector, estate: Simulation) -> None:
    """A 5.0 VM with 256 GB, a CSV disk and a cluster switch, imported on the 2022 standalone host."""
    world = estate.world
    big = world.add_vm("HV01", "big50", generation=1, version="5.0", memory_mb=262144, switches=["External-LAN"],
                       root=f"{VOL1}\\big50",
                       disks_=[DiskSpec(f"{VOL1}\\big50\\big50.vhdx", controller="ide", size=SMALL_DISK)])
    _export(conn.client("HV01"), "big50", f"{VOL1}\\Stage\\big50")
    _copy(world, "HV01", f"{VOL1}\\Stage\\big50", STANDALONE, "D:\\Restore\\big50")
    st = _importer(conn, STANDALONE)
    planned = st.import_definition(f"D:\\Restore\\big50\\Virtual Machines\\{big.id}.xml", new_id=False)

    problems = st.validate(planned)
    by_id = {p.message_id: p for p in problems}
    assert sorted(by_id) == ["12660", "16100", "3050", "40000"], [str(p) for p in problems]
    assert all(p.blocking for p in problems)
    ((disk_id, _slot, _paths),) = st.disk_settings(planned)
    assert by_id["40000"].source_settings_id == disk_id and f"{VOL1}\\big50\\big50.vhdx" in by_id["40000"].message
    pvm = _planned(world, planned.guid)
    (conn_rid,) = [s.rid for s in pvm.config.settings if s.subtype == SUB_CONNECTION]
    assert by_id["12660"].source_settings_id == f"Microsoft:{planned.guid}\\{conn_rid}"
    assert "External-LAN" in by_id["12660"].message
    (mem_rid,) = [s.rid for s in pvm.config.settings if s.class_name == "Msvm_MemorySettingData"]
    assert by_id["3050"].source_settings_id == f"Microsoft:{planned.guid}\\{mem_rid}"
    assert by_id["16100"].source_settings_id is None and "5.0" in by_id["16100"].message
    assert "[MessageID 16100]" in str(by_id["16100"])

    with pytest.raises(RealizeRefused) as refused:
        st.realize(planned)
    assert sorted(p.message_id for p in refused.value.problems) == sorted(by_id)
    assert "'big50'" in str(refused.value) and STANDALONE in str(refused.value)
    st.destroy_planned(planned)
    st.destroy_planned(planned)  # gone: fine
    assert st.planned_systems() == []


def test_validation_warnings_of_a_successful_job_are_not_blocking(conn: Connector, estate: Simulation) -> None:
    hv02 = _importer(conn, "HV02")
    planned = hv02.import_definition(_export(hv02.client, "db01", f"{VOL2}\\Stage\\db01"), new_id=True)
    estate.faults.add(F.JOB_WARNING, "ValidatePlannedSystem", message="Dynamic memory is recommended.",
                      message_id="4242")
    assert hv02.validate(planned) == [ValidationProblem("Dynamic memory is recommended.", "4242", None,
                                                        blocking=False)]
    assert hv02.validate(planned) == []


# ----------------------------------------------------------------------------- remove devices, unknown names


def test_remove_devices_drops_a_pass_through_disk(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    st = _importer(conn, STANDALONE)
    legacy = world.vm("legacy01")
    planned = st.import_definition(_export(st.client, "legacy01", "D:\\Stage\\legacy01"), new_id=True)
    (pt,) = [s for s in legacy.config.settings if s.subtype == SUB_PASSTHROUGH]
    # the manifest knows the source VM's InstanceID; the copy's differs only in its VM part
    st.remove_devices(planned, [f"Microsoft:{legacy.id}\\{pt.rid}"])
    assert not any(s.subtype == SUB_PASSTHROUGH for s in _planned(world, planned.guid).config.settings)
    assert any(s.subtype == SUB_PASSTHROUGH for s in world.vm("legacy01").config.settings)
    with pytest.raises(UnknownDevice) as unknown:
        st.remove_devices(planned, [f"Microsoft:{planned.guid}\\NO-SUCH-DEVICE"])
    assert "NO-SUCH-DEVICE" in str(unknown.value) and "'legacy01'" in str(unknown.value)
    st.remove_devices(planned, [])
    assert st.validate(planned) == []


def test_unknown_slot_adapter_and_switch_are_named(conn: Connector, estate: Simulation) -> None:
    hv01 = _importer(conn, "HV01")
    planned = hv01.import_definition(_export(hv01.client, "web01", f"{VOL1}\\Stage\\web01"), new_id=True)
    with pytest.raises(UnknownDevice) as slot:
        hv01.retarget_disks(planned, {DriveSlot(ControllerKind.SCSI, 3, 9): f"{VOL1}\\x.vhdx"})
    assert "SCSI 3:9" in str(slot.value) and "SCSI 0:0, SCSI 0:1" in str(slot.value)
    with pytest.raises(UnknownDevice) as mac:
        hv01.connect_adapters(planned, {"AA:BB:CC:DD:EE:FF": "External-LAN"})
    (web_mac,) = [p["Address"] for p in _setting(estate.world.vm("web01"), SUB_NIC)]
    assert "AA:BB:CC:DD:EE:FF" in str(mac.value) and web_mac in str(mac.value)
    with pytest.raises(SwitchNotFound) as switch:
        hv01.connect_adapters(planned, {web_mac: "Lab-Isolated"})  # only HV02 has it
    assert "'Lab-Isolated'" in str(switch.value) and "External-LAN, Internal-Backup" in str(switch.value)
    assert "HV01" in str(switch.value)


# ----------------------------------------------------------------------------- fault paths


def test_a_failed_fix_up_job_is_reported_and_undone(conn: Connector, estate: Simulation) -> None:
    hv01 = _importer(conn, "HV01")
    planned = hv01.import_definition(_export(hv01.client, "web01", f"{VOL1}\\Stage\\web01"), new_id=True)
    before = hv01.disk_settings(planned)
    estate.faults.add(F.JOB_FAIL, "ModifyResourceSettings", error_description="The storage is busy.")
    with pytest.raises(ImporterError) as failed:
        hv01.retarget_disks(planned, {slot: f"{VOL2}\\elsewhere.vhdx" for _i, slot, _p in before})
    err = failed.value
    assert not isinstance(err, PlannedVmGone)
    assert "The storage is busy." in str(err) and planned.guid in str(err) and "HV01" in str(err)
    assert err.what_to_do and err.__cause__ is not None  # the job's own error is kept as the cause
    assert hv01.disk_settings(planned) == before
    estate.faults.add(F.JOB_FAIL, "RealizePlannedSystem", error_description="Out of disk space.")
    with pytest.raises(RealizeRefused) as refused:
        hv01.realize(planned)
    assert "Out of disk space." in str(refused.value)
    assert hv01.planned_systems() == [planned]
    hv01.destroy_planned(planned)


def test_a_vanished_planned_vm_is_reported_and_destroying_it_is_idempotent(conn: Connector, estate: Simulation) -> None:
    hv01 = _importer(conn, "HV01")
    planned = hv01.import_definition(_export(hv01.client, "web01", f"{VOL1}\\Stage\\web01"), new_id=True)
    other = _importer(conn, "HV01")
    other.destroy_planned(planned)  # someone else threw it away
    slot = DriveSlot(ControllerKind.SCSI, 0, 0)
    for step in (lambda: hv01.disk_settings(planned), lambda: hv01.retarget_disks(planned, {slot: "C:\\x.vhdx"}),
                 lambda: hv01.connect_adapters(planned, {"00155D000001": None}),
                 lambda: hv01.set_system(planned, name="x"), lambda: hv01.validate(planned),
                 lambda: hv01.realize(planned)):
        with pytest.raises(PlannedVmGone) as gone:
            step()
        assert planned.guid in str(gone.value) and "HV01" in str(gone.value)
    hv01.destroy_planned(planned)


def test_import_refusals_are_in_words(conn: Connector, estate: Simulation) -> None:
    hv01 = _importer(conn, "HV01")
    vmcx = _export(hv01.client, "web01", f"{VOL1}\\Stage\\web01")
    estate.faults.add(F.RETURN_CODE, "ImportSystemDefinition", code=32779)
    with pytest.raises(DefinitionImportRefused) as in_use:
        hv01.import_definition(vmcx, new_id=True)
    assert "32779 (File in Use)" in str(in_use.value) and vmcx in str(in_use.value)
    assert "in use by a registered VM" in (in_use.value.what_to_do or "")
    estate.faults.add(F.WSMAN_FAULT, "ImportSystemDefinition", subcode="w:InternalError",
                      reason="The WMI provider could not load the configuration.")
    with pytest.raises(DefinitionImportRefused) as fault:
        hv01.import_definition(vmcx, new_id=True)
    assert "could not load the configuration" in str(fault.value)
    estate.faults.add(F.JOB_FAIL, "ImportSystemDefinition", error_description="The file is corrupt.")
    with pytest.raises(DefinitionImportRefused) as failed:
        hv01.import_definition(vmcx, new_id=True)
    assert "The file is corrupt." in str(failed.value)
    assert hv01.planned_systems() == []  # the failed job left nothing behind
    planned = hv01.import_definition(vmcx, new_id=True)
    rebuilt = PlannedVm(planned.guid, planned.name, "HV01")  # no EPR: addressed by its keys
    assert hv01.validate(rebuilt) == [] and rebuilt == planned
    hv01.destroy_planned(rebuilt)
    assert hv01.planned_systems() == []


def test_cluster_role_refusals_are_in_words(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    hv02 = _importer(conn, "HV02")
    client = conn.client("HV02")
    db = world.vm("db01")
    # a highly available VM is not destroyed under the cluster
    with pytest.raises(VmStateError) as clustered:
        hv02.destroy_vm(db.id)
    assert "cluster role 'db01'" in str(clustered.value) and "remove" in (clustered.value.what_to_do or "")
    with pytest.raises(ClusterRoleError) as again:
        add_vm_role(client, CLUSTER, db.id)
    assert "already highly available" in str(again.value) and db.id in str(again.value)
    with pytest.raises(ClusterRoleError) as outside:
        add_vm_role(client, CLUSTER, world.vm("legacy01").id)  # lives on the standalone host
    assert "No virtual machine" in str(outside.value)
    with pytest.raises(ClusterRoleError) as node:
        move_role(client, "db01", "HV09")
    assert "'db01'" in str(node.value) and "HV09" in str(node.value)
    with pytest.raises(ClusterRoleError) as role:
        move_role(client, "no-such-role", "HV01")
    assert "no role named 'no-such-role'" in str(role.value)
    remove_vm_role(client, "db01")
    hv02.destroy_vm(db.id)
    assert all(world.local("HV02", s.host_resource[0]).is_file() for s in db.config.vhds())


# ----------------------------------------------------------------------------- DefineSystem fallback


def _capture(client: CimClient, name: str) -> Tuple[CapturedSettings, List[CapturedSettings]]:
    summary = next(v for v in list_vms(client) if v.ref.name == name)
    settings = read_settings(client, summary)
    return _captured(settings.system), [_captured(d) for d in settings.devices]


def test_define_from_captured_settings_gen2(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    hv02 = _importer(conn, "HV02")
    db = world.vm("db01")
    system, resources = _capture(hv02.client, "db01")
    (src,) = [s.host_resource[0] for s in db.config.vhds()]
    copy = f"{VOL2}\\defined\\db01-copy.vhdx"
    _copy(world, "HV02", src, "HV02", copy)
    (mac,) = [p["Address"] for p in _setting(db, SUB_NIC)]
    slot = DriveSlot(ControllerKind.SCSI, 0, 0)

    ref = hv02.define_from_captured(system, resources, name="db01-defined", config_root=f"{VOL2}\\defined",
                                    disk_paths={slot: copy})
    assert ref.name == "db01-defined" and ref.guid != db.id
    vm = world.vm(ref.guid)
    assert (vm.node, vm.planned, vm.state, vm.generation) == ("HV02", False, 3, 2)
    assert vm.version == world.node("HV02").default_version
    assert vm.config.vssd["ConfigurationDataRoot"] == f"{VOL2}\\defined"
    assert vm.config.vssd["BIOSGUID"] == db.config.vssd["BIOSGUID"]  # identity kept for licensing
    cpu = next(s.props for s in vm.config.settings if s.class_name == "Msvm_ProcessorSettingData")
    mem = next(s.props for s in vm.config.settings if s.class_name == "Msvm_MemorySettingData")
    src_cpu = next(s.props for s in db.config.settings if s.class_name == "Msvm_ProcessorSettingData")
    assert int(cpu["VirtualQuantity"]) == int(src_cpu["VirtualQuantity"]) and int(mem["VirtualQuantity"]) == 2048
    assert [s.host_resource for s in vm.config.vhds()] == [[copy]]
    (nic,) = _setting(vm, SUB_NIC)
    assert nic["Address"] == mac and nic["StaticMacAddress"] is True
    (connection,) = _setting(vm, SUB_CONNECTION)
    assert _switch_id(world, "HV02", "External-LAN") in connection["HostResource"][0]
    hv02.start(ref.guid)
    assert world.vm(ref.guid).state == 2


def test_define_from_captured_settings_gen1_ide_dvd_disconnected(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    st = _importer(conn, STANDALONE)
    legacy = world.vm("legacy01")
    system, resources = _capture(st.client, "legacy01")
    (pt,) = [s for s in legacy.config.settings if s.subtype == SUB_PASSTHROUGH]
    resources = [r for r in resources if not r.instance_id.endswith(pt.rid)]  # cannot come back
    (mac,) = [p["Address"] for p in _setting(legacy, SUB_NIC)]
    ref = st.define_from_captured(system, resources, name="legacy01-defined", config_root="D:\\Defined",
                                  switches={mac: None})
    vm = world.vm(ref.guid)
    assert vm.generation == 1
    assert [s.host_resource for s in vm.config.vhds()] == [s.host_resource for s in legacy.config.vhds()]
    drives = {(s.parent, s.props.get("AddressOnParent")) for s in vm.config.settings
              if s.subtype in ("Microsoft:Hyper-V:Synthetic Disk Drive", "Microsoft:Hyper-V:Synthetic DVD Drive")}
    assert len(drives) == 4  # three disks and the DVD, on the two IDE controllers
    assert [s.host_resource for s in vm.config.settings if s.subtype == "Microsoft:Hyper-V:Virtual CD/DVD Disk"] \
        == [["D:\\ISO\\install.iso"]]
    assert not any(s.subtype == SUB_PASSTHROUGH for s in vm.config.settings)
    (nic,) = _setting(vm, SUB_NIC)
    assert nic["Address"] == mac and _setting(vm, SUB_CONNECTION) == []


def test_define_from_captured_refusals(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    hv02 = _importer(conn, "HV02")
    system, resources = _capture(hv02.client, "db01")
    (mac,) = [p["Address"] for p in _setting(world.vm("db01"), SUB_NIC)]
    count = len(world.vms)
    with pytest.raises(SwitchNotFound) as switch:
        hv02.define_from_captured(system, resources, name="db01-x", config_root=f"{VOL2}\\x",
                                  switches={mac: "No-Such-Switch"})
    assert "'No-Such-Switch'" in str(switch.value) and "Lab-Isolated" in str(switch.value)
    with pytest.raises(UnknownDevice) as slot:
        hv02.define_from_captured(system, resources, name="db01-x", config_root=f"{VOL2}\\x",
                                  disk_paths={DriveSlot(ControllerKind.IDE, 0, 0): f"{VOL2}\\x.vhdx"})
    assert "IDE 0:0" in str(slot.value) and "SCSI 0:0" in str(slot.value)
    assert len(world.vms) == count  # nothing was created
    # a disk file that is not there fails the AddResourceSettings job: the half-made VM is removed
    missing = f"{VOL2}\\x\\missing.vhdx"
    with pytest.raises(DefineFailed) as failed:
        hv02.define_from_captured(system, resources, name="db01-x", config_root=f"{VOL2}\\x",
                                  disk_paths={DriveSlot(ControllerKind.SCSI, 0, 0): missing})
    assert missing in str(failed.value) and "'db01-x'" in str(failed.value) and "HV02" in str(failed.value)
    assert len(world.vms) == count and not any(v.name == "db01-x" for v in world.vms.values())


def test_power_destroy_and_define_failures_are_in_words(conn: Connector, estate: Simulation) -> None:
    world = estate.world
    hv02 = _importer(conn, "HV02")
    db = world.vm("db01")
    estate.faults.add(F.RETURN_CODE, "RequestStateChange", code=32775)
    with pytest.raises(VmStateError) as refused:
        hv02.start(db.id)
    assert "cannot start VM 'db01'" in str(refused.value) and "it is off" in str(refused.value)
    estate.faults.add(F.JOB_FAIL, "RequestStateChange", error_description="The VM's disk is offline.")
    with pytest.raises(ImporterError) as failed:
        hv02.start(db.id)
    assert "could not start VM 'db01'" in str(failed.value) and "The VM's disk is offline." in str(failed.value)
    assert world.vm("db01").state == 3

    planned = hv02.import_definition(_export(hv02.client, "db01", f"{VOL2}\\Stage\\db01"), new_id=True)
    estate.faults.add(F.JOB_FAIL, "DestroySystem", error_description="The configuration is locked.")
    with pytest.raises(ImporterError) as locked:
        hv02.destroy_planned(planned)
    assert "The configuration is locked." in str(locked.value) and planned.guid in str(locked.value)
    assert hv02.planned_systems() == [planned]
    hv02.destroy_planned(planned)

    system, resources = _capture(hv02.client, "db01")
    count = len(world.vms)
    estate.faults.add(F.JOB_FAIL, "DefineSystem", error_description="The folder is not writable.")
    with pytest.raises(DefineFailed) as define:
        hv02.define_from_captured(system, resources, name="db01-y", config_root=f"{VOL2}\\y")
    assert "The folder is not writable." in str(define.value) and "'db01-y'" in str(define.value)
    assert len(world.vms) == count
