"""hvsim.world: what each node serves (classes, instances, associations, faults on lookups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim.cim import NS_CIMV2, NS_CLUSTER, NS_VIRT, CimError, CimRef
from hvsim.world import NodeRepository, World, schema
from hvsim.world.state import DiskSpec
from hvsim.world.testing import Clock, associated, cluster_inst, devices, make_world, settings_of, vm_inst


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, Clock())


def test_each_vm_exists_only_on_its_owner_node(world: World) -> None:
    names = {}
    for node in world.nodes:
        repo = NodeRepository(world, node)
        vms = [i for i in repo.instances(NS_VIRT, "Msvm_ComputerSystem")
               if i.get("Caption") == "Virtual Machine"]
        names[node] = sorted(i.get("ElementName") for i in vms)
        (host,) = [i for i in repo.instances(NS_VIRT, "Msvm_ComputerSystem")
                   if i.get("Caption") == "Hosting Computer System"]
        assert host.get("Name") == node
        assert host.get("Description") == "Microsoft Hosting Computer System"
    assert names == {"HV01": ["web01"], "HV02": ["db01", "file01"], "HVSTANDALONE01": ["legacy01"]}
    web01 = vm_inst(NodeRepository(world, "HV01"), "web01")
    assert web01.path is not None
    with pytest.raises(CimError) as err:
        NodeRepository(world, "HV02").get(web01.path)
    assert err.value.subcode == "a:DestinationUnreachable"
    assert err.value.wsman_code == 2150858752


def test_vm_properties_and_states(world: World) -> None:
    hv02 = NodeRepository(world, "HV02")
    db01, file01 = vm_inst(hv02, "db01"), vm_inst(hv02, "file01")
    assert db01.get("EnabledState") == 3 and db01.get("Description") == "Microsoft Virtual Machine"
    assert file01.get("EnabledState") == 6
    world.set_state("db01", "paused")
    assert vm_inst(hv02, "db01").get("EnabledState") == 32768
    web01 = vm_inst(NodeRepository(world, "HV01"), "web01")
    assert web01.get("EnabledState") == 2 and web01.get("ProcessID")
    assert web01.get("CreationClassName") == "Msvm_ComputerSystem"


def test_gen2_vm_settings_and_disks_on_two_csvs(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    vssd = settings_of(repo, vm)
    assert vssd.get("InstanceID") == f"Microsoft:{vm.get('Name')}"
    assert vssd.get("VirtualSystemType") == "Microsoft:Hyper-V:System:Realized"
    assert vssd.get("VirtualSystemSubType") == "Microsoft:Hyper-V:SubType:2"
    assert vssd.get("Version") == "9.0"
    assert vssd.get("ConfigurationDataRoot") == "C:\\ClusterStorage\\Volume1\\web01"
    sasds = devices(repo, vssd, "Msvm_StorageAllocationSettingData")
    paths = [s.get("HostResource")[0] for s in sasds]
    assert paths == ["C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx",
                     "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx"]
    for sasd in sasds:
        assert sasd.get("ResourceType") == 31
        assert str(sasd.get("InstanceID")).startswith(str(vssd.get("InstanceID")) + "\\")
        # SASD.Parent -> drive RASD -> Parent -> SCSI controller, as object path strings
        drive = _by_path(repo, sasd.get("Parent"))
        assert drive.get("ResourceSubType") == "Microsoft:Hyper-V:Synthetic Disk Drive"
        ctrl = _by_path(repo, drive.get("Parent"))
        assert ctrl.get("ResourceType") == 6
    classes = {d.class_name for d in devices(repo, vssd)}
    assert {"Msvm_ProcessorSettingData", "Msvm_MemorySettingData", "Msvm_ResourceAllocationSettingData",
            "Msvm_StorageAllocationSettingData", "Msvm_SyntheticEthernetPortSettingData",
            "Msvm_EthernetPortAllocationSettingData"} == classes
    (cpu,) = devices(repo, vssd, "Msvm_ProcessorSettingData")
    assert cpu.get("VirtualQuantity") == 4
    # Msvm_ResourceAllocationSettingData does not include its CIM siblings (SASD derives from CIM_RASD)
    assert all(d.class_name == "Msvm_ResourceAllocationSettingData"
               for d in devices(repo, vssd, "Msvm_ResourceAllocationSettingData"))


def _by_path(repo: NodeRepository, wmi_path: str):  # type: ignore[no-untyped-def]
    iid = wmi_path.split('InstanceID="', 1)[1].rstrip('"').replace("\\\\", "\\")
    cls = wmi_path.split(":", 1)[1].split(".", 1)[0]
    assert wmi_path.startswith(f"\\\\{repo.hostname}\\root\\virtualization\\v2:")
    return repo.get(CimRef(NS_VIRT, cls, (("InstanceID", iid),)))


def test_gen1_vm_with_vhd_vhdx_dvd_and_passthrough(world: World) -> None:
    repo = NodeRepository(world, "HVSTANDALONE01")
    vssd = settings_of(repo, vm_inst(repo, "legacy01"))
    assert vssd.get("VirtualSystemSubType") == "Microsoft:Hyper-V:SubType:1"
    rasds = devices(repo, vssd, "Msvm_ResourceAllocationSettingData")
    ide = [r for r in rasds if r.get("ResourceType") == 5]
    assert sorted(r.get("Address") for r in ide) == ["0", "1"]
    (pt,) = [r for r in rasds if r.get("ResourceSubType") == "Microsoft:Hyper-V:Physical Disk Drive"]
    assert "Msvm_DiskDrive" in pt.get("HostResource")[0]
    sasds = devices(repo, vssd, "Msvm_StorageAllocationSettingData")
    by_sub = {}
    for s in sasds:
        by_sub.setdefault(s.get("ResourceSubType"), []).append(s.get("HostResource")[0])
    assert [p.rsplit(".", 1)[1] for p in by_sub["Microsoft:Hyper-V:Virtual Hard Disk"]] == ["vhd", "vhdx", "vhd"]
    assert [world.disk_info("HVSTANDALONE01", p).kind  # type: ignore[union-attr]
            for p in by_sub["Microsoft:Hyper-V:Virtual Hard Disk"]] == ["dynamic", "dynamic", "fixed"]
    assert by_sub["Microsoft:Hyper-V:Virtual CD/DVD Disk"] == ["D:\\ISO\\install.iso"]
    assert world.local("HVSTANDALONE01", "D:\\ISO\\install.iso").is_file()
    # three IDE disks take 0:0, 0:1 and 1:0; the DVD gets 1:1
    (dvd,) = [r for r in rasds if r.get("ResourceSubType") == "Microsoft:Hyper-V:Synthetic DVD Drive"]
    assert _by_path(repo, dvd.get("Parent")).get("Address") == "1"


def test_network_adapters_point_at_node_switches(world: World) -> None:
    guids = {}
    for node in ("HV01", "HV02"):
        repo = NodeRepository(world, node)
        guids[node] = {i.get("ElementName"): i.get("Name")
                       for i in repo.instances(NS_VIRT, "Msvm_VirtualEthernetSwitch")}
    assert set(guids["HV01"]) == {"External-LAN", "Internal-Backup"}
    assert set(guids["HV02"]) == {"External-LAN", "Internal-Backup", "Lab-Isolated"}
    assert guids["HV01"]["External-LAN"] != guids["HV02"]["External-LAN"]
    repo = NodeRepository(world, "HV01")
    vssd = settings_of(repo, vm_inst(repo, "web01"))
    (nic,) = devices(repo, vssd, "Msvm_SyntheticEthernetPortSettingData")
    (conn,) = devices(repo, vssd, "Msvm_EthernetPortAllocationSettingData")
    assert len(nic.get("Address")) == 12
    assert _by_path(repo, conn.get("Parent")).get("InstanceID") == nic.get("InstanceID")
    hr = conn.get("HostResource")[0]
    assert hr.startswith("\\\\HV01\\root\\virtualization\\v2:Msvm_VirtualEthernetSwitch.")
    assert f'Name="{guids["HV01"]["External-LAN"]}"' in hr
    assert conn.get("LastKnownSwitchName") == "External-LAN"


def test_export_setting_data_and_services(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    assert vm.path is not None
    (esd,) = associated(repo, vm.path, "Msvm_SystemExportSettingData")
    assert esd.get("InstanceID") == f"Microsoft:{vm.get('Name')}"
    names = {i.class_name: i.get("Name") for i in repo.instances(NS_VIRT, "CIM_Service")}
    assert names["Msvm_ImageManagementService"] == "vhdsvc"
    assert set(names) == {"Msvm_VirtualSystemManagementService", "Msvm_VirtualSystemSnapshotService",
                          "Msvm_VirtualSystemReferencePointService", "Msvm_ImageManagementService"}
    (msd,) = repo.instances(NS_VIRT, "Msvm_VirtualSystemManagementServiceSettingData")
    assert msd.get("DefaultVirtualHardDiskPath") == "C:\\ClusterStorage\\Volume1\\Virtual Hard Disks"


def test_lookups_are_case_insensitive_and_validate_selectors(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    name = str(vm.get("Name"))
    ref = CimRef("ROOT\\Virtualization\\V2", "msvm_computersystem",
                 (("creationclassname", "Msvm_ComputerSystem"), ("name", name.lower())))
    assert repo.get(ref).get("ElementName") == "web01"
    with pytest.raises(CimError) as err:
        repo.get(CimRef(NS_VIRT, "Msvm_ComputerSystem", (("Name", name), ("Bogus", "1"),
                                                          ("CreationClassName", "Msvm_ComputerSystem"))))
    assert err.value.subcode == "w:InvalidSelectors"
    with pytest.raises(CimError) as err:
        repo.get(CimRef(NS_VIRT, "Msvm_ComputerSystem", (("Name", name),)))
    assert err.value.subcode == "w:InvalidSelectors"
    with pytest.raises(CimError) as err:
        list(repo.instances(NS_VIRT, "Msvm_NoSuchClass"))
    assert err.value.subcode == "a:DestinationUnreachable"


def test_namespaces_and_os(world: World) -> None:
    standalone = NodeRepository(world, "HVSTANDALONE01")
    assert NS_CLUSTER not in standalone.namespaces()
    assert standalone.class_def(NS_CLUSTER, "MSCluster_Resource") is None
    assert NodeRepository(world, "HV01").class_def("root\\MSCluster", "mscluster_resource") is not None
    (os_,) = standalone.instances(NS_CIMV2, "Win32_OperatingSystem")
    assert os_.get("BuildNumber") == "20348" and "2022" in os_.get("Caption")
    assert world.node("HVSTANDALONE01").supported_versions[0] == "8.0"
    assert "5.0" in world.node("HV01").supported_versions


def test_cluster_namespace_is_cluster_wide(world: World) -> None:
    a, b = NodeRepository(world, "HV01"), NodeRepository(world, "HV02")
    (cl,) = a.instances(NS_CLUSTER, "MSCluster_Cluster")
    assert cl.get("Name") == "HVCLUSTER01" and cl.get("SharedVolumesRoot") == "C:\\ClusterStorage"
    groups = {g.get("Name"): g.get("OwnerNode") for g in b.instances(NS_CLUSTER, "MSCluster_ResourceGroup")
              if g.get("GroupType") == 111}
    assert groups == {"web01": "HV01", "db01": "HV02", "file01": "HV02"}
    web = cluster_inst(a, "MSCluster_ResourceGroup", "web01")
    assert web.get("State") == 0
    assert cluster_inst(a, "MSCluster_ResourceGroup", "db01").get("State") == 1
    assert web.path is not None
    res = associated(a, web.path, "MSCluster_ResourceGroupToResource", namespace=NS_CLUSTER)
    assert sorted(r.get("Name") for r in res) == ["Virtual Machine Configuration web01",
                                                  "Virtual Machine web01"]
    vm_res = cluster_inst(a, "MSCluster_Resource", "Virtual Machine web01")
    assert vm_res.get("Type") == "Virtual Machine" and vm_res.get("OwnerGroup") == "web01"
    assert vm_res.get("PrivateProperties").get("VmId") == world.vm("web01").id
    assert vm_res.get("State") == 2
    nodes = associated(a, cl.path, "MSCluster_ClusterToNode", namespace=NS_CLUSTER)  # type: ignore[arg-type]
    assert sorted(n.get("Name") for n in nodes) == ["HV01", "HV02"]
    assert all(n.get("State") == 0 for n in nodes)


def test_csv_partitions_report_megabytes_and_shrink_with_files(tmp_path: Path) -> None:
    world = make_world(tmp_path, Clock(), files=True)
    repo = NodeRepository(world, "HV02")
    csvs = list(repo.instances(NS_CLUSTER, "MSCluster_ClusterSharedVolume"))
    assert [c.get("Name") for c in csvs] == ["Cluster Disk 1", "Cluster Disk 2"]
    (part,) = associated(repo, csvs[0].path, "MSCluster_ClusterSharedVolumeToPartition",  # type: ignore[arg-type]
                         namespace=NS_CLUSTER)
    assert part.get("Path") == "C:\\ClusterStorage\\Volume1"
    assert part.get("TotalSize") == 2 * 1024 * 1024
    before = part.get("FreeSpace")
    assert before <= 1200 * 1024
    big = world.local("HV02", "C:\\ClusterStorage\\Volume1\\filler.bin")
    big.write_bytes(b"\1" * (8 << 20))
    after = repo.get(part.path).get("FreeSpace")  # type: ignore[arg-type]
    assert before - after == 8


def test_two_vms_with_the_same_name_on_one_host(world: World) -> None:
    world.add_vm("HV01", "web01", disks_=[DiskSpec("C:\\ClusterStorage\\Volume1\\web01b\\web01.vhdx")])
    repo = NodeRepository(world, "HV01")
    twins = [i for i in repo.instances(NS_VIRT, "Msvm_ComputerSystem") if i.get("ElementName") == "web01"]
    assert len(twins) == 2 and twins[0].get("Name") != twins[1].get("Name")
    with pytest.raises(ValueError, match="2 VMs are named 'web01'"):
        world.vm("web01")
    assert world.vm(str(twins[1].get("Name"))).name == "web01"


def test_schema_hierarchy_and_method_signatures() -> None:
    assert schema.is_a(NS_VIRT, "Msvm_StorageAllocationSettingData", "CIM_ResourceAllocationSettingData")
    assert not schema.is_a(NS_VIRT, "Msvm_StorageAllocationSettingData", "Msvm_ResourceAllocationSettingData")
    assert schema.is_a(NS_VIRT, "Msvm_StorageJob", "CIM_ConcreteJob")
    assert schema.is_a(NS_CLUSTER, "MSCluster_DiskPartition", "MSCluster_ClusterDiskPartition")
    snap = schema.class_def(NS_VIRT, "Msvm_VirtualSystemSnapshotService")
    assert snap is not None
    create = snap.method("createsnapshot")
    assert create is not None
    assert [p.name for p in create.in_params] == ["AffectedSystem", "SnapshotSettings", "SnapshotType",
                                                   "ResultingSnapshot"]
    assert create.in_params[1].cim_type == "instance"
    assert create.in_params[0].cim_type == "reference"
    ims = schema.class_def(NS_VIRT, "Msvm_ImageManagementService")
    assert ims is not None
    changes = ims.method("GetVirtualDiskChanges")
    assert changes is not None
    offsets = next(p for p in changes.out_params if p.name == "ChangedByteOffsets")
    assert offsets.cim_type == "uint64" and offsets.is_array
    for cls in ("Msvm_ComputerSystem", "Msvm_PlannedComputerSystem", "Msvm_VirtualSystemSettingData",
                "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingDataComponent",
                "Msvm_SnapshotOfVirtualSystem", "Msvm_MostCurrentSnapshotInBranch",
                "Msvm_ReferencePointOfVirtualSystem", "Msvm_AffectedJobElement",
                "Msvm_SystemExportSettingData", "Msvm_ElementSettingData", "Msvm_VirtualEthernetSwitch",
                "Msvm_VirtualSystemExportSettingData", "Msvm_VirtualSystemSnapshotSettingData",
                "Msvm_VirtualSystemReferencePoint", "Msvm_ConcreteJob", "Msvm_Error",
                "Msvm_VirtualHardDiskSettingData"):
        assert schema.class_def(NS_VIRT, cls) is not None, cls
    assert schema.class_def(NS_VIRT, "Msvm_SettingsDefineState").is_association  # type: ignore[union-attr]


def test_default_setting_templates_are_listed_but_belong_to_no_vm(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    sasds = list(repo.instances(NS_VIRT, "Msvm_StorageAllocationSettingData"))
    templates = [s for s in sasds if str(s.get("InstanceID")).endswith("\\Default")]
    assert {t.get("ResourceSubType") for t in templates} == {"Microsoft:Hyper-V:Virtual Hard Disk",
                                                              "Microsoft:Hyper-V:Virtual CD/DVD Disk"}
    assert all(str(t.get("InstanceID")).startswith("Microsoft:Definition\\") for t in templates)
    for t in templates:
        assert t.path is not None
        assert associated(repo, t.path, "Msvm_VirtualSystemSettingDataComponent") == []
        assert repo.get(t.path).get("ResourceType") == 31
    assert len(sasds) - len(templates) == 2  # web01's two disks
