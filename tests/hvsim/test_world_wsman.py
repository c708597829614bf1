"""hvsim.world behind the real WS-Man dispatcher: SOAP in, WinRM-shaped XML out (the Repository contract)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from hvsim.cim import WMI_URI_PREFIX
from hvsim.faults import FaultPlan
from hvsim.requestlog import RequestLog
from hvsim.world import NodeRepository, World
from hvsim.world.testing import Clock, make_world
from hvsim.wsman import Dispatcher

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
ANON = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
NSMAP = {"s": S, "a": A, "n": N, "w": W}
GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
V2 = WMI_URI_PREFIX + "root/virtualization/v2/"
CL = WMI_URI_PREFIX + "root/mscluster/"


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def _envelope(action: str, uri: str, body: Any = None, selectors: tuple[tuple[str, str], ...] = ()) -> bytes:
    env = etree.Element(_q(S, "Envelope"), nsmap={"s": S, "a": A, "n": N, "w": W})
    header = etree.SubElement(env, _q(S, "Header"))
    etree.SubElement(header, _q(A, "To")).text = "http://127.0.0.1:5985/wsman"
    etree.SubElement(header, _q(W, "ResourceURI")).text = uri
    reply = etree.SubElement(header, _q(A, "ReplyTo"))
    etree.SubElement(reply, _q(A, "Address")).text = ANON
    etree.SubElement(header, _q(A, "Action")).text = action
    etree.SubElement(header, _q(W, "MaxEnvelopeSize")).text = "512000"
    etree.SubElement(header, _q(A, "MessageID")).text = f"uuid:{uuid.uuid4()}"
    etree.SubElement(header, _q(W, "OperationTimeout")).text = "PT60S"
    if selectors:
        sset = etree.SubElement(header, _q(W, "SelectorSet"))
        for name, value in selectors:
            etree.SubElement(sset, _q(W, "Selector"), Name=name).text = value
    b = etree.SubElement(env, _q(S, "Body"))
    if body is not None:
        b.append(body)
    return bytes(etree.tostring(env))


class Node:
    def __init__(self, world: World, name: str) -> None:
        self.disp = Dispatcher(NodeRepository(world, name), world.faults, RequestLog())

    def send(self, data: bytes) -> Any:
        status, out = self.disp.handle(data)
        root = etree.fromstring(out)
        assert status == 200, etree.tostring(root).decode()
        return root

    def wql(self, query: str, uri: str = V2 + "*") -> list[Any]:
        en = etree.Element(_q(N, "Enumerate"))
        etree.SubElement(en, _q(W, "OptimizeEnumeration"))
        etree.SubElement(en, _q(W, "MaxElements")).text = "1000"
        etree.SubElement(en, _q(W, "Filter"), Dialect=WQL).text = query
        root = self.send(_envelope(ENUMERATE, uri, en))
        items = root.find("s:Body/n:EnumerateResponse/w:Items", NSMAP)
        assert root.find("s:Body/n:EnumerateResponse/w:EndOfSequence", NSMAP) is not None
        return [c for c in items if isinstance(c.tag, str)]


def _text(el: Any, name: str) -> str | None:
    """A property of an item, whether qualified (instances) or not (SELECT projections, w:XmlFragment)."""
    found = next((c for c in el if isinstance(c.tag, str) and etree.QName(c).localname == name), None)
    return None if found is None else found.text


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    return make_world(tmp_path, clock, faults=FaultPlan())


def test_inventory_and_checkpoint_through_soap(world: World, clock: Clock) -> None:
    hv01 = Node(world, "HV01")
    (vm,) = hv01.wql('SELECT * FROM Msvm_ComputerSystem WHERE Caption = "Virtual Machine"')
    guid = _text(vm, "Name")
    assert _text(vm, "ElementName") == "web01" and guid == world.vm("web01").id
    vssd = hv01.wql(f"ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName='Msvm_ComputerSystem',"
                    f"Name='{guid}'}} WHERE AssocClass = Msvm_SettingsDefineState "
                    "ResultClass = Msvm_VirtualSystemSettingData")
    assert [_text(v, "InstanceID") for v in vssd] == [f"Microsoft:{guid}"]
    sasds = hv01.wql(f"SELECT * FROM Msvm_StorageAllocationSettingData WHERE InstanceID LIKE 'Microsoft:{guid}%'")
    assert len(sasds) == 2

    uri = V2 + "Msvm_VirtualSystemSnapshotService"
    inp = etree.Element(_q(uri, "CreateSnapshot_INPUT"), nsmap={"p": uri})
    aff = etree.SubElement(inp, _q(uri, "AffectedSystem"))
    etree.SubElement(aff, _q(A, "Address")).text = ANON
    rp = etree.SubElement(aff, _q(A, "ReferenceParameters"))
    etree.SubElement(rp, _q(W, "ResourceURI")).text = V2 + "Msvm_ComputerSystem"
    sset = etree.SubElement(rp, _q(W, "SelectorSet"))
    etree.SubElement(sset, _q(W, "Selector"), Name="CreationClassName").text = "Msvm_ComputerSystem"
    etree.SubElement(sset, _q(W, "Selector"), Name="Name").text = guid
    etree.SubElement(inp, _q(uri, "SnapshotSettings")).text = etree.CDATA(
        '<INSTANCE CLASSNAME="Msvm_VirtualSystemSnapshotSettingData">'
        '<PROPERTY NAME="ConsistencyLevel" TYPE="uint8"><VALUE>2</VALUE></PROPERTY></INSTANCE>')
    etree.SubElement(inp, _q(uri, "SnapshotType")).text = "32768"
    svc = (("CreationClassName", "Msvm_VirtualSystemSnapshotService"), ("Name", "vssnapsvc"),
           ("SystemCreationClassName", "Msvm_ComputerSystem"), ("SystemName", "HV01"))
    root = hv01.send(_envelope(uri + "/CreateSnapshot", uri, inp, svc))
    out = root.find(f"s:Body/{{{uri}}}CreateSnapshot_OUTPUT", NSMAP)
    assert out.findtext(f"{{{uri}}}ReturnValue") == "4096"
    job_id = out.findtext(f"{{{uri}}}Job/a:ReferenceParameters/w:SelectorSet/w:Selector", namespaces=NSMAP)
    clock.tick(2)
    job = hv01.send(_envelope(GET, V2 + "Msvm_ConcreteJob", None, (("InstanceID", job_id),)))
    body = job.find("s:Body", NSMAP)[0]
    assert _text(body, "JobState") == "7"
    snaps = hv01.wql(f"ASSOCIATORS OF {{Msvm_ConcreteJob.InstanceID='{job_id}'}} WHERE "
                     "AssocClass = Msvm_AffectedJobElement ResultClass = Msvm_VirtualSystemSettingData")
    assert [_text(s, "VirtualSystemType") for s in snaps] == ["Microsoft:Hyper-V:Snapshot:Recovery"]
    assert world.snapshots("web01")[0].consistency == 2


def test_cluster_classes_through_soap(world: World) -> None:
    hv02 = Node(world, "HV02")
    groups = hv02.wql("SELECT Name, OwnerNode, State FROM MSCluster_ResourceGroup WHERE GroupType = 111",
                      CL + "*")
    assert sorted((_text(g, "Name"), _text(g, "OwnerNode")) for g in groups) == [
        ("db01", "HV02"), ("file01", "HV02"), ("web01", "HV01")]
    res = hv02.wql("SELECT * FROM MSCluster_Resource WHERE Type = 'Virtual Machine'", CL + "*")
    assert len(res) == 3
    private = _text(res[0], "PrivateProperties") or ""
    assert 'NAME="VmID"' in private  # the member name as the cluster spells it
    parts = hv02.wql("SELECT * FROM MSCluster_DiskPartition", CL + "*")
    assert sorted(_text(p, "Path") for p in parts) == ["C:\\ClusterStorage\\Volume1", "C:\\ClusterStorage\\Volume2"]
