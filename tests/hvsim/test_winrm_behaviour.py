"""Per-node WinRM choices (hvsim.behaviour) through the real dispatcher: each variant's wire shape."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from hvsim import faults as F
from hvsim.behaviour import WinrmBehaviour
from hvsim.cim import WMI_URI_PREFIX
from hvsim.faults import FaultPlan
from hvsim.requestlog import RequestLog
from hvsim.world import NodeRepository, World
from hvsim.world.testing import Clock, call, embedded, job_results, make_world, service, vm_inst
from hvsim.wsman import Dispatcher

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
FLT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WMIERR = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"
NSMAP = {"s": S, "a": A, "n": N, "w": W, "f": FLT}
ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
CL = WMI_URI_PREFIX + "root/MSCluster/"
V2 = WMI_URI_PREFIX + "root/virtualization/v2/"
WBEM_E_INVALID_NAMESPACE = 0x8004100E


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def _wql(query: str, uri: str) -> bytes:
    env = etree.Element(_q(S, "Envelope"), nsmap={"s": S, "a": A, "n": N, "w": W})
    header = etree.SubElement(env, _q(S, "Header"))
    etree.SubElement(header, _q(W, "ResourceURI")).text = uri
    etree.SubElement(header, _q(A, "Action")).text = ENUMERATE
    etree.SubElement(header, _q(A, "MessageID")).text = f"uuid:{uuid.uuid4()}"
    body = etree.SubElement(env, _q(S, "Body"))
    en = etree.SubElement(body, _q(N, "Enumerate"))
    etree.SubElement(en, _q(W, "OptimizeEnumeration"))
    etree.SubElement(en, _q(W, "MaxElements")).text = "100"
    etree.SubElement(en, _q(W, "Filter"), Dialect=WQL).text = query
    return bytes(etree.tostring(env))


def _send(world: World, node: str, data: bytes) -> tuple[int, Any]:
    disp = Dispatcher(NodeRepository(world, node), world.faults, RequestLog())
    status, out = disp.handle(data)
    return status, etree.fromstring(out)


def _fault(world: World, node: str, data: bytes) -> Any:
    status, root = _send(world, node, data)
    assert status == 500, etree.tostring(root).decode()
    fault = root.find("s:Body/s:Fault", NSMAP)
    assert fault is not None
    return fault


def _subcode(fault: Any) -> str:
    return str(fault.findtext("s:Code/s:Subcode/s:Value", namespaces=NSMAP))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, Clock(), faults=FaultPlan())


CLUSTER_QUERY = "SELECT * FROM MSCluster_Cluster"


def test_unknown_variants_are_refused() -> None:
    behaviour = WinrmBehaviour()
    with pytest.raises(ValueError, match="missing_namespace"):
        behaviour.missing_namespace = "hang"
    with pytest.raises(ValueError, match="embedded_objects"):
        behaviour.embedded_objects = "json"


def test_missing_namespace_default_is_destination_unreachable(world: World) -> None:
    fault = _fault(world, "HVSTANDALONE01", _wql(CLUSTER_QUERY, CL + "*"))
    assert _subcode(fault) == "a:DestinationUnreachable"
    assert fault.find("s:Detail/f:WSManFault", NSMAP).get("Code") == str(0x80338000)


def test_missing_namespace_in_the_wsman_namespace(world: World) -> None:
    world.node("HVSTANDALONE01").winrm.missing_namespace = "wsman_destination_unreachable"
    fault = _fault(world, "HVSTANDALONE01", _wql(CLUSTER_QUERY, CL + "*"))
    assert _subcode(fault) == "w:DestinationUnreachable"
    assert fault.find(".//f:ProviderFault", NSMAP) is None


def test_missing_namespace_as_the_wmi_hresult_in_wsmanfault(world: World) -> None:
    world.node("HVSTANDALONE01").winrm.missing_namespace = "invalid_namespace_code"
    fault = _fault(world, "HVSTANDALONE01", _wql(CLUSTER_QUERY, CL + "*"))
    assert _subcode(fault) == "w:InternalError"
    assert fault.find("s:Detail/f:WSManFault", NSMAP).get("Code") == str(WBEM_E_INVALID_NAMESPACE)
    assert "The CIM namespace root/MSCluster is invalid" in fault.findtext("s:Reason/s:Text", namespaces=NSMAP)


def test_missing_namespace_in_extended_status(world: World) -> None:
    world.node("HVSTANDALONE01").winrm.missing_namespace = "invalid_namespace_extended"
    fault = _fault(world, "HVSTANDALONE01", _wql(CLUSTER_QUERY, CL + "*"))
    status = fault.find(".//f:ProviderFault/f:ExtendedError/*", NSMAP)
    assert etree.QName(status).localname == "__ExtendedStatus"
    code = next(c for c in status if etree.QName(c).localname == "StatusCode")
    assert code.text == str(WBEM_E_INVALID_NAMESPACE)


def test_missing_namespace_as_msft_wmierror_directly_under_detail(world: World) -> None:
    world.node("HVSTANDALONE01").winrm.missing_namespace = "invalid_namespace_wmierror"
    fault = _fault(world, "HVSTANDALONE01", _wql(CLUSTER_QUERY, CL + "*"))
    detail = fault.find("s:Detail", NSMAP)
    (err,) = list(detail)  # pywinrm's recorded shape: the WMI error object and nothing else
    assert err.tag == _q(WMIERR, "MSFT_WmiError")
    assert err.get(_q(XSI, "type")) == "p:MSFT_WmiError_Type"
    assert err.findtext(_q(WMIERR, "CIMStatusCode")) == "3"
    assert err.findtext(_q(WMIERR, "error_Code")) == str(WBEM_E_INVALID_NAMESPACE)
    assert err.findtext(_q(WMIERR, "MessageID")) == "HRESULT 0x8004100e"


@pytest.mark.parametrize(("variant", "subcode", "code"), [("wsman", "w:AccessDenied", None),
                                                          ("wmierror", "w:InternalError", 0x80041003)])
def test_denied_namespace(world: World, variant: str, subcode: str, code: int | None) -> None:
    hv01 = world.node("HV01").winrm
    hv01.denied_namespaces.add("root/MSCluster")
    hv01.access_denied = variant
    fault = _fault(world, "HV01", _wql(CLUSTER_QUERY, CL + "*"))
    assert _subcode(fault) == subcode
    if code is None:
        assert fault.find("s:Detail/f:WSManFault", NSMAP).get("Code") == "5"
    else:
        assert fault.findtext(f"s:Detail/{{{WMIERR}}}MSFT_WmiError/{{{WMIERR}}}error_Code",
                              namespaces=NSMAP) == str(code)
    status, _root = _send(world, "HV01", _wql("SELECT * FROM Msvm_ComputerSystem", V2 + "*"))
    assert status == 200  # other namespaces stay readable


INJECTED = {"Description": "Checkpoint operation failed.", "Operation": "ExecQuery", "ParameterInfo": "x",
            "ProviderName": "WMI Provider", "StatusCode": 2147749889}


@pytest.mark.parametrize("placement", ["extended", "extended_wmierror", "detail_wmierror", "detail_extended_status"])
def test_wmi_error_placement(world: World, placement: str) -> None:
    world.node("HV01").winrm.wmi_error_placement = placement
    world.faults.add(F.WSMAN_FAULT, "Enumerate", subcode="w:InternalError", wmi_status=INJECTED)
    fault = _fault(world, "HV01", _wql("SELECT * FROM Msvm_ComputerSystem", V2 + "*"))
    detail = fault.find("s:Detail", NSMAP)
    extended = fault.find(".//f:ExtendedError/*", NSMAP)
    names = [etree.QName(c).localname for c in detail]
    if placement == "extended":
        assert etree.QName(extended).localname == "__ExtendedStatus" and names == ["WSManFault"]
    elif placement == "extended_wmierror":
        assert etree.QName(extended).localname == "MSFT_WmiError" and names == ["WSManFault"]
    elif placement == "detail_wmierror":
        assert extended is None and names == ["MSFT_WmiError"]
        err = detail[0]
        assert err.findtext(_q(WMIERR, "error_Code")) == "2147749889"
        assert err.findtext(_q(WMIERR, "Message")) == "Checkpoint operation failed."
        assert err.findtext(_q(WMIERR, "CIMStatusCode")) == "1"
    else:
        assert extended is None and names == ["WSManFault", "__ExtendedStatus"]


def _private_properties(world: World) -> Any:
    status, root = _send(world, "HV01", _wql("SELECT * FROM MSCluster_Resource WHERE Type = 'Virtual Machine'",
                                             CL + "*"))
    assert status == 200
    items = root.find("s:Body/n:EnumerateResponse/w:Items", NSMAP)
    web = next(i for i in items if "web01" in (i.findtext(_q(CL + "MSCluster_Resource", "Name")) or ""))
    return web.find(_q(CL + "MSCluster_Resource", "PrivateProperties"))


def test_embedded_object_renderings(world: World) -> None:
    vm_id = world.vm("web01").id
    assert 'NAME="VmID"' in (_private_properties(world).text or "")  # default: CIM-XML text

    world.node("HV01").winrm.embedded_objects = "nested"
    el = _private_properties(world)
    member = next(c for c in el if etree.QName(c).localname == "VmID")
    assert member.text == vm_id

    world.node("HV01").winrm.embedded_objects = "nested_class"
    el = _private_properties(world)
    (wrapper,) = list(el)
    assert etree.QName(wrapper).localname == "MSCluster_Property"
    assert next(c for c in wrapper if etree.QName(c).localname == "VmID").text == vm_id

    world.node("HV01").winrm.embedded_objects = "nil"
    assert _private_properties(world).get(_q(XSI, "nil")) == "true"


@pytest.mark.parametrize(("shape", "quota", "code"), [("wmierror", "operations", 0x803381A6),
                                                      ("wsmanfault", "shells", 0x803381A5)])
def test_quota_limit(world: World, shape: str, quota: str, code: int) -> None:
    world.faults.add(F.QUOTA_LIMIT, "Enumerate", shape=shape, quota=quota)
    fault = _fault(world, "HV01", _wql("SELECT * FROM Msvm_ComputerSystem", V2 + "*"))
    if shape == "wmierror":
        assert _subcode(fault) == "w:InternalError"
        err = fault.find(f"s:Detail/{{{WMIERR}}}MSFT_WmiError", NSMAP)
        assert err.findtext(_q(WMIERR, "error_Code")) == str(code)
        assert err.findtext(_q(WMIERR, "CIMStatusCode")) == "27"
        assert "concurrent operations" in err.findtext(_q(WMIERR, "Message"))
    else:
        assert _subcode(fault) == "w:QuotaLimit"
        assert fault.find("s:Detail/f:WSManFault", NSMAP).get("Code") == str(code)
        assert "concurrent shells" in fault.findtext("s:Reason/s:Text", namespaces=NSMAP)
    status, _root = _send(world, "HV01", _wql("SELECT * FROM Msvm_ComputerSystem", V2 + "*"))
    assert status == 200  # fired once


def test_convert_to_reference_point_refuses_settings(tmp_path: Path) -> None:
    clock = Clock()
    world = make_world(tmp_path, clock, faults=FaultPlan())
    repo = NodeRepository(world, "HV01")
    snaps = service(repo, "Msvm_VirtualSystemSnapshotService")
    settings = embedded("Msvm_VirtualSystemSnapshotSettingData", ConsistencyLevel=1)
    out, job = call(repo, clock, snaps, "CreateSnapshot", AffectedSystem=vm_inst(repo, "web01").path,
                    SnapshotSettings=settings, SnapshotType=32768)
    assert job is not None and job.get("JobState") == 7
    (snap,) = job_results(repo, out, "Msvm_VirtualSystemSettingData")
    refused = repo.invoke(snaps, "ConvertToReferencePoint", {
        "AffectedSnapshot": snap.path,
        "ReferencePointSettings": '<INSTANCE CLASSNAME="Msvm_VirtualSystemReferencePointSettingData"/>'})
    assert refused.return_value == 4 and "Job" not in refused.out
    assert len(world.snapshots("web01")) == 1 and world.reference_points("web01") == []
    # without settings (or with the empty string the older documentation allows) it converts
    done, job = call(repo, clock, snaps, "ConvertToReferencePoint", AffectedSnapshot=snap.path,
                     ReferencePointSettings="")
    assert done.return_value == 4096 and job is not None and job.get("JobState") == 7
