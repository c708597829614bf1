"""hvsim.world failover cluster: ownership, live migration, offline/online, HA add/remove."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim.cim import NS_CLUSTER, NS_VIRT, CimError, CimRef
from hvsim.world import NodeRepository, World
from hvsim.world.testing import Clock, associated, cluster_inst, devices, make_world, settings_of, vm_inst


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, Clock())


def _group_ref(name: str) -> CimRef:
    return CimRef(NS_CLUSTER, "MSCluster_ResourceGroup", (("Name", name),))


def test_move_group_live_migrates_the_vm(world: World) -> None:
    hv01, hv02 = NodeRepository(world, "HV01"), NodeRepository(world, "HV02")
    vm_id = world.vm("web01").id
    out = hv02.invoke(_group_ref("web01"), "MoveToNewNode", {"NodeName": "HV02", "TimeOut": 60})
    assert out.return_value == 0
    assert not any(i.get("Name") == vm_id for i in hv01.instances(NS_VIRT, "Msvm_ComputerSystem"))
    moved = vm_inst(hv02, "web01")
    assert moved.get("Name") == vm_id and moved.get("EnabledState") == 2
    for repo in (hv01, hv02):
        assert cluster_inst(repo, "MSCluster_ResourceGroup", "web01").get("OwnerNode") == "HV02"
        assert cluster_inst(repo, "MSCluster_Resource", "Virtual Machine web01").get("OwnerNode") == "HV02"
    # the NIC follows the switch name to HV02's switch GUID
    (conn,) = devices(hv02, settings_of(hv02, moved), "Msvm_EthernetPortAllocationSettingData")
    hv02_lan = world.node("HV02").switch_by_name("External-LAN")
    assert hv02_lan is not None
    assert conn.get("HostResource")[0].startswith("\\\\HV02\\") and hv02_lan.id in conn.get("HostResource")[0]
    with pytest.raises(CimError) as err:
        hv01.invoke(_group_ref("web01"), "MoveToNewNode", {"NodeName": "HV09", "TimeOut": 60})
    assert err.value.subcode == "w:InternalError"


def test_world_migrate_helper_and_standalone_refusal(world: World) -> None:
    assert world.migrate("db01") == "HV01"
    assert vm_inst(NodeRepository(world, "HV01"), "db01").get("EnabledState") == 3
    with pytest.raises(ValueError, match="not on a cluster node"):
        world.migrate("legacy01")


def test_offline_saves_and_online_starts(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    assert repo.invoke(_group_ref("web01"), "TakeOffline", {"TimeOut": 60}).return_value == 0
    assert world.vm("web01").state == 6
    group = cluster_inst(repo, "MSCluster_ResourceGroup", "web01")
    assert group.get("State") == 1
    assert cluster_inst(repo, "MSCluster_Resource", "Virtual Machine web01").get("State") == 3
    assert repo.invoke(_group_ref("web01"), "BringOnline", {"TimeOut": 60}).return_value == 0
    assert world.vm("web01").state == 2
    assert cluster_inst(repo, "MSCluster_ResourceGroup", "web01").get("State") == 0
    world.cluster.group("web01").offline_action = 0  # type: ignore[union-attr]
    res = CimRef(NS_CLUSTER, "MSCluster_Resource", (("Name", "Virtual Machine web01"),))
    assert repo.invoke(res, "TakeOffline", {"TimeOut": 60}).return_value == 0
    assert world.vm("web01").state == 3


def test_destroy_group_and_add_virtual_machine(world: World) -> None:
    repo = NodeRepository(world, "HV02")
    cluster = CimRef(NS_CLUSTER, "MSCluster_Cluster", (("Name", "HVCLUSTER01"),))
    assert repo.invoke(_group_ref("db01"), "DestroyGroup", {"Options": 1}).return_value == 0
    assert "db01" not in [g.get("Name") for g in repo.instances(NS_CLUSTER, "MSCluster_ResourceGroup")]
    assert vm_inst(repo, "db01").get("EnabledState") == 3  # the VM itself stays
    with pytest.raises(CimError):
        repo.get(CimRef(NS_CLUSTER, "MSCluster_Resource", (("Name", "Virtual Machine db01"),)))
    assert repo.invoke(cluster, "AddVirtualMachine", {"VirtualMachine": "db01"}).return_value == 0
    group = cluster_inst(repo, "MSCluster_ResourceGroup", "db01")
    assert group.get("GroupType") == 111 and group.get("OwnerNode") == "HV02"
    res = cluster_inst(repo, "MSCluster_Resource", "Virtual Machine Configuration db01")
    assert res.get("PrivateProperties").get("VmId") == world.vm("db01").id
    with pytest.raises(CimError, match="already highly available"):
        repo.invoke(cluster, "AddVirtualMachine", {"VirtualMachine": world.vm("db01").id})
    with pytest.raises(CimError, match="No virtual machine named 'legacy01'"):
        repo.invoke(cluster, "AddVirtualMachine", {"VirtualMachine": "legacy01"})
    with pytest.raises(CimError, match="DestroyGroup"):
        repo.invoke(_group_ref("db01"), "DeleteGroup", {})


def test_group_of_a_destroyed_vm_is_failed(world: World) -> None:
    repo = NodeRepository(world, "HV02")
    del world.vms[world.vm("db01").id]
    assert cluster_inst(repo, "MSCluster_ResourceGroup", "db01").get("State") == 2
    assert cluster_inst(repo, "MSCluster_Resource", "Virtual Machine db01").get("State") == 4


def test_more_nodes_and_csvs(tmp_path: Path) -> None:
    world = make_world(tmp_path, Clock(), nodes=3, csvs=3)
    repo = NodeRepository(world, "HV03")
    assert sorted(n.get("Name") for n in repo.instances(NS_CLUSTER, "MSCluster_Node")) == ["HV01", "HV02",
                                                                                           "HV03"]
    paths = sorted(p.get("Path") for p in repo.instances(NS_CLUSTER, "MSCluster_DiskPartition"))
    assert paths == [f"C:\\ClusterStorage\\Volume{i}" for i in (1, 2, 3)]
    world.node("HV03").state = 1
    assert cluster_inst(repo, "MSCluster_Node", "HV03").get("State") == 1
    with pytest.raises(CimError, match="not up"):
        repo.invoke(_group_ref("web01"), "MoveToNewNode", {"NodeName": "HV03", "TimeOut": 1})


def test_csv_owner_moves(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    csv = CimRef(NS_CLUSTER, "MSCluster_ClusterSharedVolume", (("Name", "Cluster Disk 1"),))
    (owner,) = associated(repo, csv, "MSCluster_ClusterSharedVolumeToNode", namespace=NS_CLUSTER)
    assert owner.get("Name") == "HV01"
    assert repo.invoke(csv, "MoveToNewHost", {"NodeName": "HV02"}).return_value == 0
    (owner,) = associated(repo, csv, "MSCluster_ClusterSharedVolumeToNode", namespace=NS_CLUSTER)
    assert owner.get("Name") == "HV02"
    with pytest.raises(CimError):
        repo.invoke(csv, "MoveToNewHost", {"NodeName": "HVSTANDALONE01"})
