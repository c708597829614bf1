"""Behaviours of real Windows hosts that differ from host to host, through pywinrm and the product.

Each simulated node can answer the way another real WinRM does (``hvsim.behaviour``):
the fault for a namespace it does not serve, access denied on ``root/MSCluster``, where
a fault carries its WMI error object, how ``MSCluster_Resource.PrivateProperties`` is
rendered, WinRM's per-user quota.  The product must read every one of them; these
tests also check that it never sends the shapes Windows refuses.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from lxml import etree

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import cluster as cl
from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.checkpoints import Checkpoint, CheckpointManager, Consistency
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.inventory import take_inventory
from bareos_hyperv.hyperv.jobs import MethodFailedError
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, ParamValue
from bareos_hyperv.wsman.errors import InternalErrorFault, QuotaLimitFault, SchemaValidationFault
from hvsim import faults as F
from hvsim.behaviour import MISSING_NAMESPACE, WinrmBehaviour
from hvsim.simulation import Simulation

from .helpers import NS_VIRT, connector, follower, object_path, quick_sim, service, vm_instance

STANDALONE = "HVSTANDALONE01"
CLUSTER = "HVCLUSTER01"
NODES = ("HV01", "HV02")
SNAPSHOTS = "Msvm_VirtualSystemSnapshotService"
V2_URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    """One estate for the module; every test leaves its nodes as it found them (see ``conn``)."""
    with quick_sim(tmp_path_factory.mktemp("shapes")) as simulation:
        yield simulation


@pytest.fixture
def conn(estate: Simulation) -> Iterator[Connector]:
    """A fresh product connector; node behaviours and armed faults are reset afterwards."""
    try:
        with connector(estate) as c:
            yield c
    finally:
        estate.faults.clear()
        for node in estate.world.nodes.values():
            node.winrm = WinrmBehaviour()


# ---------------------------------------------------------------------------- 2. "not a cluster"


@pytest.mark.parametrize("variant", sorted(MISSING_NAMESPACE))
def test_every_missing_namespace_shape_means_standalone(conn: Connector, estate: Simulation, variant: str) -> None:
    estate.world.node(STANDALONE).winrm.missing_namespace = variant
    assert cl.cluster_of(conn.client(STANDALONE)) is None
    inv = take_inventory(conn, STANDALONE, with_vms=False)
    assert inv.cluster is None and inv.scope == STANDALONE
    assert estate.log.count("Enumerate", outcome="w:InternalError") + estate.log.count(
        "Enumerate", outcome="a:DestinationUnreachable") + estate.log.count(
        "Enumerate", outcome="w:DestinationUnreachable") >= 1  # the node did answer with a fault


@pytest.mark.parametrize("variant", ["wsman", "wmierror"])
def test_access_denied_on_the_cluster_namespace_says_the_account_lacks_rights(
        conn: Connector, estate: Simulation, variant: str) -> None:
    hv01 = estate.world.node("HV01").winrm
    hv01.denied_namespaces.add("root/MSCluster")
    hv01.access_denied = variant
    with pytest.raises(cl.ClusterAccessError) as info:
        cl.cluster_of(conn.client("HV01"))
    text = str(info.value)
    assert "HV01" in text and "root/MSCluster" in text
    assert "Administrator" in (info.value.what_to_do or "")
    with pytest.raises(cl.ClusterAccessError):
        take_inventory(conn, "HV01", with_vms=False)  # never "standalone" by mistake


def test_any_other_fault_is_an_error_naming_the_host(conn: Connector, estate: Simulation) -> None:
    estate.faults.add(F.WSMAN_FAULT, "Enumerate", subcode="w:InternalError", wsman_code=2150859010,
                      wmi_status={"Description": "The provider has failed.", "Operation": "ExecQuery",
                                  "ParameterInfo": "MSCluster_Cluster", "ProviderName": "MS_CLUSTER_PROVIDER",
                                  "StatusCode": 0x80041004})
    with pytest.raises(cl.ClusterQueryError) as info:
        cl.cluster_of(conn.client("HV02"))
    assert isinstance(info.value, HyperVError)
    text = str(info.value)
    assert "whether HV02 is a failover cluster node" in text
    assert "0x80041004" in text and "WBEM_E_PROVIDER_FAILURE" in text


# ---------------------------------------------------------------------------- 6. PrivateProperties


def _render_everywhere(estate: Simulation, rendering: str) -> None:
    for name in NODES:
        estate.world.node(name).winrm.embedded_objects = rendering


@pytest.mark.parametrize("rendering", ["cimxml", "nested", "nested_class"])
def test_owner_node_for_every_private_properties_rendering(conn: Connector, estate: Simulation,
                                                           rendering: str) -> None:
    _render_everywhere(estate, rendering)
    web, db = estate.world.vm("web01"), estate.world.vm("db01")
    entry = conn.client(CLUSTER)
    assert cl.owner_node(entry, web.id) == web.node == "HV01"
    assert cl.owner_node(entry, "{" + db.id.lower() + "}") == db.node == "HV02"
    groups = {g.name: g for g in cl.vm_groups(entry)}
    assert groups["web01"].vm_guid == web.id and groups["db01"].vm_guid == db.id
    moved = estate.world.migrate("web01")
    try:
        assert cl.owner_node(entry, web.id) == moved  # the role's OwnerNode, asked again
    finally:
        estate.world.migrate("web01", "HV01")


def test_owner_lookup_that_cannot_read_the_vm_id_says_so(conn: Connector, estate: Simulation) -> None:
    _render_everywhere(estate, "nil")
    web = estate.world.vm("web01")
    with pytest.raises(cl.ClusterLookupError) as info:
        cl.owner_node(conn.client(CLUSTER), web.id)
    text = str(info.value)
    assert web.id in text and "VmID" in text and "Virtual Machine web01" in text


def test_a_vm_that_is_not_clustered_has_no_owner_role(conn: Connector, estate: Simulation) -> None:
    _render_everywhere(estate, "nested")
    legacy = estate.world.vm("legacy01")  # a standalone host's VM: no cluster resource names it
    assert cl.owner_node(conn.client(CLUSTER), legacy.id) is None


# ---------------------------------------------------------------------------- 8. WMI error placement, quota

CHECKPOINT_FAILED = {"Description": "Checkpoint operation failed.", "Operation": "ExecMethod",
                     "ParameterInfo": "Msvm_VirtualSystemSnapshotService", "ProviderName": "WMI Provider",
                     "StatusCode": 2147749889}


def _snapshot_params(vm: CimInstance) -> list[tuple[str, ParamValue]]:
    settings = CimInstance("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 2},
                           types={"ConsistencyLevel": "uint8"})
    assert vm.epr is not None
    return [("AffectedSystem", vm.epr), ("SnapshotSettings", EmbeddedInstance(settings)), ("SnapshotType", 32768)]


@pytest.mark.parametrize("placement", ["detail_wmierror", "detail_extended_status", "extended_wmierror"])
def test_wmi_error_is_read_wherever_winrm_puts_it(conn: Connector, estate: Simulation, placement: str) -> None:
    estate.world.node("HV01").winrm.wmi_error_placement = placement
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    estate.faults.add(F.WSMAN_FAULT, "CreateSnapshot", subcode="w:InternalError", wsman_code=2150859010,
                      wmi_status=CHECKPOINT_FAILED)
    with pytest.raises(InternalErrorFault) as info:
        hv01.invoke(service(hv01, SNAPSHOTS), "CreateSnapshot", _snapshot_params(web))
    fault = info.value
    assert fault.wmi_error is not None
    assert fault.wmi_error.description == "Checkpoint operation failed."
    assert fault.wmi_error.status_code == 2147749889
    text = str(fault)
    assert "Checkpoint operation failed." in text and "HRESULT 0x80041001 WBEM_E_FAILED" in text
    if placement != "detail_extended_status":  # __ExtendedStatus has no CIM status code
        assert fault.cim_status == 1 and "CIM status 1 CIM_ERR_FAILED" in text
    assert estate.world.snapshots("web01") == []


@pytest.mark.parametrize(("shape", "quota", "code"), [("wmierror", "operations", 0x803381A6),
                                                      ("wsmanfault", "shells", 0x803381A5)])
def test_quota_limit_is_its_own_category_with_advice(conn: Connector, estate: Simulation, shape: str,
                                                     quota: str, code: int) -> None:
    estate.faults.add(F.QUOTA_LIMIT, "Enumerate", shape=shape, quota=quota)
    with pytest.raises(QuotaLimitFault) as info:
        conn.client("HV02").enumerate(NS_VIRT, "Msvm_VirtualSystemManagementService")
    fault = info.value
    assert code in fault.codes
    text = str(fault)
    assert f"0x{code:08X}" in text and "HV02" in text and "maximum number of" in text
    assert "MaxConcurrentOperationsPerUser" in (fault.what_to_do or "")


# ---------------------------------------------------------------------------- 9. shapes Windows refuses


def test_a_wmi_path_string_for_a_reference_is_refused(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    assert web.epr is not None
    params = _snapshot_params(web)
    params[0] = ("AffectedSystem", object_path("HV01", web.epr))  # the DCOM habit: a path string
    with pytest.raises(SchemaValidationFault) as info:
        hv01.invoke(service(hv01, SNAPSHOTS), "CreateSnapshot", params)
    assert "AffectedSystem" in str(info.value)
    assert estate.world.snapshots("web01") == []


def test_an_embedded_instance_as_a_wsman_element_tree_is_refused(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    svc = service(hv01, SNAPSHOTS)
    assert web.epr is not None
    uri = svc.resource_uri
    body = etree.Element(f"{{{uri}}}CreateSnapshot_INPUT", nsmap={"p": uri})
    web.epr.fill_element(etree.SubElement(body, f"{{{uri}}}AffectedSystem"))
    cls = f"{V2_URI}Msvm_VirtualSystemSnapshotSettingData"
    tree = etree.SubElement(etree.SubElement(body, f"{{{uri}}}SnapshotSettings"),
                            f"{{{cls}}}Msvm_VirtualSystemSnapshotSettingData", nsmap={"c": cls})
    etree.SubElement(tree, f"{{{cls}}}ConsistencyLevel").text = "2"
    etree.SubElement(body, f"{{{uri}}}SnapshotType").text = "32768"
    with pytest.raises(SchemaValidationFault):
        hv01._exchange(f"{uri}/CreateSnapshot", uri, body=body, selectors=svc.selectors, idempotent=False)
    assert estate.world.snapshots("web01") == []


def _checkpoint(conn: Connector, job_id: int) -> tuple[CheckpointManager, Checkpoint, vmmod.VmSummary]:
    hv01 = conn.client("HV01")
    (vm,) = vmmod.select_vms(vmmod.list_vms(hv01), ["web01"])
    manager = CheckpointManager(HostServices(hv01, "HV01"), timeout=20)
    return manager, manager.create(vm.epr, vm.ref.guid, vm.state, Consistency.CRASH, job_id=job_id), vm


def test_reference_point_settings_are_refused(conn: Connector, estate: Simulation) -> None:
    manager, checkpoint, vm = _checkpoint(conn, 9001)
    try:
        settings = CimInstance("Msvm_VirtualSystemReferencePointSettingData", {"ElementName": "x"})
        with pytest.raises(MethodFailedError):
            follower(conn.client("HV01")).call(manager.services.snapshots, "ConvertToReferencePoint",
                                               [("AffectedSnapshot", checkpoint.epr),
                                                ("ReferencePointSettings", EmbeddedInstance(settings))],
                                               timeout=20)
        assert len(estate.world.snapshots("web01")) == 1
        # the product's own call sends the checkpoint only, and Windows (the simulator) takes it
        rp = manager.to_reference_point(checkpoint)
        assert rp.instance_id and estate.world.snapshots("web01") == []
        manager.destroy_reference_point(rp.epr)
    finally:
        for snap in manager.list_ours(vm.epr):
            if snap.epr is not None:
                manager.destroy(snap.epr)


def test_the_product_never_sends_a_refused_shape(conn: Connector, estate: Simulation) -> None:
    """A cluster inventory and a checkpoint cycle: no request is refused for its shape."""
    refused = ("w:SchemaValidationError", "w:InvalidParameter")
    before = [estate.log.count(outcome=r) for r in refused]  # earlier tests sent refused shapes on purpose
    inv = take_inventory(conn, CLUSTER)
    assert inv.cluster is not None
    manager, checkpoint, _vm = _checkpoint(conn, 9002)
    manager.destroy_reference_point(manager.to_reference_point(checkpoint).epr)
    assert [estate.log.count(outcome=r) for r in refused] == before
