"""Every WS-Management operation of the product client against the simulator, end to end.

Real pywinrm over real HTTP with NTLM message encryption (HTTPS where noted), the
product's :class:`CimClient`, the simulator's WinRM server and dispatcher.  Read-only
tests share one estate per module; anything that changes the world or arms faults gets
its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import pytest

from bareos_hyperv.wsman.cim import CimInstance, EndpointReference
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import (
    EncodingLimitFault,
    InternalErrorFault,
    InvalidFilterFault,
    InvalidSelectorsFault,
    NotFoundFault,
)
from hvsim.faults import WSMAN_FAULT
from hvsim.simulation import Simulation
from hvsim.world import schema

from .helpers import NS_CLUSTER, NS_VIRT, connector, one, quick_sim, service, vm_instance, vssd_of

RASD_FAMILY = "CIM_ResourceAllocationSettingData"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    """One read-only estate for the module (HTTP and HTTPS listeners)."""
    with quick_sim(tmp_path_factory.mktemp("ops"), https=True) as simulation:
        yield simulation


@pytest.fixture
def hv01(estate: Simulation) -> Iterator[CimClient]:
    """A fresh client for HV01; the request log and the fault plan start empty."""
    estate.faults.clear()
    estate.log.clear()
    with connector(estate) as conn:
        yield conn.client("HV01")
    estate.faults.clear()


def _ids(items: list[CimInstance]) -> set[str]:
    return {str(i.get("InstanceID")) for i in items}


# ---------------------------------------------------------------------------- Identify


def test_identify_names_the_windows_stack(hv01: CimClient, estate: Simulation) -> None:
    result = hv01.identify()
    assert result.product_vendor == "Microsoft Corporation"
    build = estate.world.node("HV01").build
    assert f"10.0.{build}" in result.product_version
    assert result.protocol_version == "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
    assert estate.log.count("Identify") == 1


def test_identify_and_get_over_https(estate: Simulation) -> None:
    estate.log.clear()
    with connector(estate, https=True) as conn:
        client = conn.client("HV02")
        assert client.endpoint.https
        assert client.identify().product_vendor == "Microsoft Corporation"
        db01 = vm_instance(client, "db01")
        assert db01.epr is not None
        again = client.get(db01.epr)
        sent = client.request_count
    assert again.str("ElementName") == "db01"
    assert again.str("Name") == estate.world.vm("db01").id
    assert estate.log.count() == sent == 3


# ---------------------------------------------------------------------------- Get


def test_get_by_hand_built_selectors(hv01: CimClient, estate: Simulation) -> None:
    web = estate.world.vm("web01")
    ref = EndpointReference.build("root\\virtualization\\v2", "Msvm_ComputerSystem",
                                  {"CreationClassName": "Msvm_ComputerSystem", "Name": web.id})
    inst = hv01.get(ref)
    assert inst.class_name == "Msvm_ComputerSystem"
    assert inst.str("ElementName") == "web01"
    assert inst.int("EnabledState") == 2
    assert inst.epr == ref
    # a key with backslashes (RASD-family InstanceID) survives the trip unescaped
    disk = web.config.vhds()[0]
    sasd_id = f"Microsoft:{web.id}\\{disk.rid}"
    sasd = hv01.get(EndpointReference.build(NS_VIRT, "Msvm_StorageAllocationSettingData",
                                            {"InstanceID": sasd_id}))
    assert sasd.str("InstanceID") == sasd_id
    assert sasd.strs("HostResource") == disk.host_resource


def test_get_with_a_wrong_selector_name_is_invalid_selectors(hv01: CimClient) -> None:
    ref = EndpointReference.build(NS_VIRT, "Msvm_ComputerSystem",
                                  {"CreationClassName": "Msvm_ComputerSystem", "VmName": "web01"})
    with pytest.raises(InvalidSelectorsFault) as info:
        hv01.get(ref)
    fault = info.value
    assert fault.subcode_name == "InvalidSelectors"
    assert fault.fault_detail is not None and fault.fault_detail.endswith("UnexpectedSelectors")
    assert fault.machine == "HV01"
    assert "VmName" in str(fault)
    assert str(fault).count("invalid selectors") == 1  # WinRM's repeated reason is not doubled


def test_get_with_a_missing_key_is_invalid_selectors(hv01: CimClient) -> None:
    ref = EndpointReference.build(NS_VIRT, "Msvm_ComputerSystem", {"CreationClassName": "Msvm_ComputerSystem"})
    with pytest.raises(InvalidSelectorsFault) as info:
        hv01.get(ref)
    assert info.value.fault_detail is not None
    assert info.value.fault_detail.endswith("InsufficientSelectors")


def test_get_of_an_absent_instance_is_not_found(hv01: CimClient, estate: Simulation) -> None:
    # db01 exists, but on HV02: HV01 must not see it
    db01 = estate.world.vm("db01")
    ref = EndpointReference.build(NS_VIRT, "Msvm_ComputerSystem",
                                  {"CreationClassName": "Msvm_ComputerSystem", "Name": db01.id})
    with pytest.raises(NotFoundFault) as info:
        hv01.get(ref)
    fault = info.value
    assert fault.subcode_name == "DestinationUnreachable"
    assert fault.wsman_code == 0x80338000
    assert "moved to another node" in str(fault)
    assert estate.log.count("Get", outcome="a:DestinationUnreachable") == 1


# ---------------------------------------------------------------------------- Enumerate / Pull


def test_enumerate_and_pull_in_small_pages(hv01: CimClient, estate: Simulation) -> None:
    whole = hv01.enumerate(NS_VIRT, RASD_FAMILY, max_elements=100)
    assert estate.log.count("Pull") == 0  # one optimized Enumerate carried everything
    web = estate.world.vm("web01")
    mine = [i for i in whole if str(i.get("InstanceID")).startswith(f"Microsoft:{web.id}\\")]
    assert len(mine) == len(web.config.settings) >= 7
    estate.log.clear()
    paged = hv01.enumerate(NS_VIRT, RASD_FAMILY, max_elements=2)
    assert _ids(paged) == _ids(whole)
    assert len(paged) == len(whole)  # no duplicates across pages
    records = estate.log.records()
    assert [r.operation for r in records] == ["Enumerate"] + ["Pull"] * (len(records) - 1)
    assert all(r.items <= 2 for r in records)
    assert estate.log.count("Pull") == math.ceil(len(whole) / 2) - 1
    # subclasses come with their own class names
    classes = {i.class_name for i in paged}
    assert {"Msvm_StorageAllocationSettingData", "Msvm_ProcessorSettingData"} <= classes
    assert all(schema.is_a(NS_VIRT, c, RASD_FAMILY) for c in classes)


def test_small_max_envelope_size_is_handled_by_paging(estate: Simulation) -> None:
    estate.log.clear()
    with connector(estate) as conn:
        roomy = conn.client("HV01").enumerate(NS_VIRT, RASD_FAMILY)
    assert estate.log.count("Pull") == 0
    estate.log.clear()
    with connector(estate, max_envelope_size=8192, max_elements=100) as conn:
        tight = conn.client("HV01").enumerate(NS_VIRT, RASD_FAMILY)
    assert _ids(tight) == _ids(roomy)
    assert estate.log.count("Pull") >= 1
    assert estate.log.count(outcome="fault") == 0


def test_encoding_limit_fault_makes_the_client_halve_its_page(hv01: CimClient, estate: Simulation) -> None:
    whole = hv01.enumerate(NS_VIRT, RASD_FAMILY)
    estate.log.clear()
    estate.faults.add(WSMAN_FAULT, "Pull", subcode="w:EncodingLimit", provider=False,
                      reason="The response that the WS-Management service computed exceeds the maximum "
                             "envelope size that is allowed.")
    paged = hv01.enumerate(NS_VIRT, RASD_FAMILY, max_elements=4)
    assert _ids(paged) == _ids(whole)
    pulls = [r for r in estate.log.records() if r.operation == "Pull"]
    assert pulls[0].outcome == "w:EncodingLimit"
    assert pulls[1:] and all(r.ok and r.items <= 2 for r in pulls[1:])


def test_encoding_limit_at_one_item_per_page_is_reported(hv01: CimClient, estate: Simulation) -> None:
    estate.faults.add(WSMAN_FAULT, "Enumerate", times=0, subcode="w:EncodingLimit", provider=False)
    with pytest.raises(EncodingLimitFault) as info:
        hv01.enumerate(NS_VIRT, RASD_FAMILY, max_elements=4)
    assert "max_elements" in str(info.value) or "MaxEnvelopeSize" in str(info.value)
    assert estate.log.count("Enumerate") == 3  # 4, 2, 1 items per page, then give up


def test_a_failed_pull_releases_the_enumeration(hv01: CimClient, estate: Simulation) -> None:
    estate.faults.add(WSMAN_FAULT, "Pull", nth=2)
    with pytest.raises(InternalErrorFault):
        hv01.enumerate(NS_VIRT, RASD_FAMILY, max_elements=2)
    assert estate.log.count("Release") == 1
    assert estate.nodes["HV01"].dispatcher.open_enumerations() == 0


# ---------------------------------------------------------------------------- WQL


def test_wql_where_on_strings_and_numbers(estate: Simulation) -> None:
    with connector(estate) as conn:
        hv02 = conn.client("HV02")
        vms = hv02.query(NS_VIRT, 'SELECT * FROM Msvm_ComputerSystem WHERE Caption = "Virtual Machine"')
        off = hv02.query(NS_VIRT, "SELECT * FROM Msvm_ComputerSystem "
                                  "WHERE Caption = 'Virtual Machine' AND EnabledState = 3")
        host = hv02.query(NS_VIRT, "SELECT * FROM Msvm_ComputerSystem WHERE Caption <> 'Virtual Machine'")
    assert sorted(v.str("ElementName") for v in vms) == ["db01", "file01"]
    assert [v.str("ElementName") for v in off] == ["db01"]
    assert [h.str("Name") for h in host] == ["HV02"]


def test_wql_like_selects_one_vms_devices(hv01: CimClient, estate: Simulation) -> None:
    web = estate.world.vm("web01")
    found = hv01.query(NS_VIRT, f"SELECT * FROM {RASD_FAMILY} WHERE InstanceID LIKE 'Microsoft:{web.id}%'")
    assert len(found) == len(web.config.settings)
    assert all(str(i.get("InstanceID")).startswith(f"Microsoft:{web.id}\\") for i in found)
    # the same set, reached by association from the VSSD
    vssd = vssd_of(hv01, vm_instance(hv01, "web01"))
    assert vssd.epr is not None
    parts = hv01.associators(vssd.epr, assoc_class="Msvm_VirtualSystemSettingDataComponent")
    assert _ids(parts) == _ids(found)
    none = hv01.query(NS_VIRT, f"SELECT * FROM {RASD_FAMILY} WHERE InstanceID LIKE 'Microsoft:NOPE%'")
    assert none == []


def test_wql_associators_of_a_path_with_backslashes(hv01: CimClient, estate: Simulation) -> None:
    web = estate.world.vm("web01")
    sasd = hv01.query(NS_VIRT, "SELECT * FROM Msvm_StorageAllocationSettingData "
                               f"WHERE InstanceID LIKE 'Microsoft:{web.id}%'")[0]
    assert sasd.epr is not None and "\\" in sasd.epr.str_selector("InstanceID")
    wql = (f"ASSOCIATORS OF {{{sasd.epr.wql_path()}}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent "
           "ResultClass = Msvm_VirtualSystemSettingData")
    vssd = one(hv01.query(NS_VIRT, wql), "VSSD")
    assert vssd.str("InstanceID") == f"Microsoft:{web.id}"
    refs = hv01.query(NS_VIRT, f"REFERENCES OF {{{sasd.epr.wql_path()}}} "
                               "WHERE ResultClass = Msvm_VirtualSystemSettingDataComponent")
    link = one(refs, "component link")
    assert link.ref("PartComponent") == sasd.epr


def test_unknown_class_in_wql_is_a_filter_fault(hv01: CimClient) -> None:
    query = "SELECT * FROM Msvm_NoSuchClass"
    with pytest.raises(InvalidFilterFault) as info:
        hv01.query(NS_VIRT, query)
    assert info.value.wmi_error is not None
    assert info.value.wmi_error.parameter_info == query
    with pytest.raises(InvalidFilterFault):
        hv01.query(NS_VIRT, "SELECT FROM WHERE")


# ---------------------------------------------------------------------------- association filters


def test_associators_with_assoc_class_result_class_and_role(hv01: CimClient, estate: Simulation) -> None:
    web = vm_instance(hv01, "web01")
    assert web.epr is not None
    vssd = one(hv01.associators(web.epr, assoc_class="Msvm_SettingsDefineState",
                                result_class="Msvm_VirtualSystemSettingData", role="ManagedElement"), "VSSD")
    assert vssd.str("InstanceID") == f"Microsoft:{estate.world.vm('web01').id}"
    assert vssd.str("VirtualSystemType") == "Microsoft:Hyper-V:System:Realized"
    # the VM plays ManagedElement, never SettingData
    assert hv01.associators(web.epr, assoc_class="Msvm_SettingsDefineState", role="SettingData") == []
    assert hv01.associators(web.epr, assoc_class="Msvm_SettingsDefineState", result_role="ManagedElement") == []
    # a result class that does not match filters everything out
    assert hv01.associators(web.epr, assoc_class="Msvm_SettingsDefineState",
                            result_class="Msvm_VirtualEthernetSwitch") == []


def test_references_with_result_class_and_role(hv01: CimClient) -> None:
    web = vm_instance(hv01, "web01")
    vssd = vssd_of(hv01, web)
    assert web.epr is not None and vssd.epr is not None
    link = one(hv01.references(web.epr, result_class="Msvm_SettingsDefineState", role="ManagedElement"),
               "SettingsDefineState")
    assert link.class_name == "Msvm_SettingsDefineState"
    assert link.ref("ManagedElement") == web.epr
    assert link.ref("SettingData") == vssd.epr
    assert hv01.references(web.epr, result_class="Msvm_SettingsDefineState", role="SettingData") == []


def test_association_filter_on_an_absent_object_is_not_found(hv01: CimClient, estate: Simulation) -> None:
    db01 = estate.world.vm("db01")  # lives on HV02
    ref = EndpointReference.build(NS_VIRT, "Msvm_ComputerSystem",
                                  {"CreationClassName": "Msvm_ComputerSystem", "Name": db01.id})
    with pytest.raises(NotFoundFault):
        hv01.associators(ref, assoc_class="Msvm_SettingsDefineState")


# ---------------------------------------------------------------------------- EPRs


def test_enumerated_eprs_serve_get_and_invoke(hv01: CimClient, estate: Simulation) -> None:
    systems = hv01.enumerate(NS_VIRT, "Msvm_ComputerSystem")
    assert {s.str("Name") for s in systems} == {"HV01", estate.world.vm("web01").id}
    for inst in systems:
        assert inst.epr is not None
        assert [k for k, _ in inst.epr.selectors] == ["CreationClassName", "Name"]
        again = hv01.get(inst.epr)
        assert again.epr == inst.epr
        assert [(k, v) for k, v in again.items() if k != "OnTimeInMilliseconds"] == \
            [(k, v) for k, v in inst.items() if k != "OnTimeInMilliseconds"]
    web_id = estate.world.vm("web01").id
    sasds = [s for s in hv01.enumerate(NS_VIRT, "Msvm_StorageAllocationSettingData")
             if str(s.get("InstanceID")).startswith(f"Microsoft:{web_id}\\")]
    assert len(sasds) == 2 and all(s.epr is not None for s in sasds)
    image = service(hv01, "Msvm_ImageManagementService")
    assert image.str_selector("Name") == "vhdsvc"
    for sasd in sasds:
        assert sasd.epr is not None
        assert hv01.get(sasd.epr).str("InstanceID") == sasd.str("InstanceID")
        path = sasd.strs("HostResource")[0]
        state = hv01.invoke(image, "GetVirtualHardDiskState", [("Path", path)])
        assert state.return_value == 0
        local = estate.world.local("HV01", path)
        assert state.outputs.instance("State").int("FileSize") == local.stat().st_size


# ---------------------------------------------------------------------------- namespaces


def test_cluster_namespace_on_a_node(hv01: CimClient, estate: Simulation) -> None:
    nodes = hv01.enumerate(NS_CLUSTER, "MSCluster_Node")
    assert sorted(n.str("Name") for n in nodes) == ["HV01", "HV02"]
    groups = hv01.query(NS_CLUSTER, "SELECT * FROM MSCluster_ResourceGroup WHERE GroupType = 111")
    assert sorted(g.str("Name") for g in groups) == ["db01", "file01", "web01"]
    web = hv01.get(EndpointReference.build(NS_CLUSTER, "MSCluster_ResourceGroup", {"Name": "web01"}))
    assert web.str("OwnerNode") == "HV01"
    assert web.epr is not None
    resources = hv01.associators(web.epr, assoc_class="MSCluster_ResourceGroupToResource")
    assert sorted(r.str("Type") for r in resources) == ["Virtual Machine", "Virtual Machine Configuration"]
    # both spellings of a namespace address the same objects
    legacy = hv01.enumerate("root\\virtualization\\v2", "Msvm_VirtualEthernetSwitch")
    modern = hv01.enumerate(NS_VIRT, "Msvm_VirtualEthernetSwitch")
    assert {s.str("Name") for s in legacy} == {s.str("Name") for s in modern} != set()


def test_cluster_namespace_is_absent_on_a_standalone_host(estate: Simulation) -> None:
    with connector(estate) as conn, pytest.raises(NotFoundFault) as info:
        conn.client("HVSTANDALONE01").enumerate(NS_CLUSTER, "MSCluster_Node")
    assert info.value.machine == "HVSTANDALONE01"
    assert "MSCluster" in str(info.value)


@pytest.mark.parametrize(("namespace", "cls"), [
    (NS_VIRT, "Msvm_NoSuchClass"),
    ("root/nosuch", "Msvm_ComputerSystem"),
])
def test_unknown_class_or_namespace_is_not_found(hv01: CimClient, namespace: str, cls: str) -> None:
    with pytest.raises(NotFoundFault) as info:
        hv01.enumerate(namespace, cls)
    assert info.value.wsman_code == 0x80338000
    with pytest.raises(NotFoundFault):
        hv01.get(EndpointReference.build(namespace, cls, {"Name": "x"}))


def test_request_log_matches_what_the_client_sent(tmp_path: Path) -> None:
    with quick_sim(tmp_path) as sim, connector(sim) as conn:
        client = conn.client("HVSTANDALONE01")
        client.identify()
        vm = vm_instance(client, "legacy01")
        vssd_of(client, vm)
        sent = client.request_count
        assert sim.log.count() == sent == 3
        assert [r.operation for r in sim.log.records()] == ["Identify", "Enumerate", "Enumerate"]
        assert all(r.user == sim.user for r in sim.log.records()[1:])
