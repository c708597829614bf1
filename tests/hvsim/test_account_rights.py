"""The simulator's rights model (hvsim.rights): who the account is decides what WMI and SMB refuse."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from hvsim.cim import WMI_URI_PREFIX
from hvsim.faults import FaultPlan
from hvsim.requestlog import RequestLog
from hvsim.rights import AccountRights
from hvsim.simulation import Simulation
from hvsim.world import NodeRepository, World
from hvsim.world.scenario import default_world
from hvsim.world.testing import Clock, make_world
from hvsim.wsman import Dispatcher

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NSMAP = {"s": S, "a": A, "n": N, "w": W}
STATUS_ACCESS_DENIED = 0xC0000022


def _enumerate(world: World, node: str, namespace: str, query: str) -> tuple[int, Any]:
    env = etree.Element(f"{{{S}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(env, f"{{{S}}}Header")
    etree.SubElement(header, f"{{{W}}}ResourceURI").text = f"{WMI_URI_PREFIX}{namespace}/*"
    etree.SubElement(header, f"{{{A}}}Action").text = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
    etree.SubElement(header, f"{{{A}}}MessageID").text = f"uuid:{uuid.uuid4()}"
    body = etree.SubElement(env, f"{{{S}}}Body")
    en = etree.SubElement(body, f"{{{N}}}Enumerate")
    etree.SubElement(en, f"{{{W}}}Filter", Dialect="http://schemas.microsoft.com/wbem/wsman/1/WQL").text = query
    status, out = Dispatcher(NodeRepository(world, node), world.faults, RequestLog()).handle(etree.tostring(env))
    return status, etree.fromstring(out)


def _denied(world: World, node: str, namespace: str, query: str) -> bool:
    status, root = _enumerate(world, node, namespace, query)
    if status == 200:
        return False
    assert root.findtext("s:Body/s:Fault/s:Code/s:Subcode/s:Value", namespaces=NSMAP) == "w:AccessDenied"
    return True


@pytest.mark.parametrize("rights, cluster, hyperv, shares", [
    # a domain account in Administrators: the default, everything allowed
    (AccountRights(), False, False, False),
    # Hyper-V Administrators only: Hyper-V's namespace, nothing else
    (AccountRights(administrators=False, hyperv_administrators=True), True, False, True),
    # neither group
    (AccountRights(administrators=False), True, True, True),
    # a local administrator: UAC filters its token over the network
    (AccountRights(local_account=True), True, True, True),
    (AccountRights(local_account=True, hyperv_administrators=True), True, False, True),
    # ... unless LocalAccountTokenFilterPolicy=1, or it is the built-in Administrator
    (AccountRights(local_account=True, local_account_token_filter_policy=1), False, False, False),
    (AccountRights(local_account=True, builtin_administrator=True), False, False, False),
])
def test_rights_decide_what_is_refused(rights: AccountRights, cluster: bool, hyperv: bool, shares: bool) -> None:
    assert rights.denies_namespace("root\\MSCluster") is cluster
    assert rights.denies_namespace("root/virtualization/v2") is hyperv
    assert rights.denies_share("C$") is shares and rights.denies_share("d$") is shares
    assert not rights.denies_share("IPC$") and not rights.denies_share("VMs")
    assert not rights.denies_namespace("root/cimv2")


def test_wmi_answers_access_denied_by_the_rights_of_the_node(tmp_path: Path) -> None:
    world = make_world(tmp_path, Clock(), faults=FaultPlan())
    assert not _denied(world, "HV01", "root/MSCluster", "SELECT * FROM MSCluster_Cluster")
    world.node("HV01").rights = AccountRights(administrators=False, hyperv_administrators=True)
    assert _denied(world, "HV01", "root/MSCluster", "SELECT * FROM MSCluster_Cluster")
    assert not _denied(world, "HV01", "root/virtualization/v2", "SELECT * FROM Msvm_ComputerSystem")
    assert not _denied(world, "HV02", "root/MSCluster", "SELECT * FROM MSCluster_Cluster")  # per node
    world.node("HV01").rights = AccountRights(local_account=True)
    assert _denied(world, "HV01", "root/virtualization/v2", "SELECT * FROM Msvm_ComputerSystem")
    world.node("HV01").rights.local_account_token_filter_policy = 1
    assert not _denied(world, "HV01", "root/MSCluster", "SELECT * FROM MSCluster_Cluster")


def _tree_connect(port: int, user: str, password: str, share: str) -> None:
    conn = Connection(uuid.uuid4(), "127.0.0.1", port)
    conn.connect(timeout=10)
    try:
        session = Session(conn, user, password)
        session.connect()
        TreeConnect(session, f"\\\\HV\\{share}").connect()
    finally:
        conn.disconnect()


def test_samba_refuses_the_admin_shares_of_a_node_where_the_account_is_no_administrator(tmp_path: Path) -> None:
    world = default_world(tmp_path / "estate")
    world.node("HV02").rights = AccountRights(local_account=True)  # filtered token on HV02 only
    with Simulation(tmp_path / "sim", world=world, samba=True, https=False) as sim:
        smb = sim.smb_map()
        _tree_connect(smb["HV01"][1], sim.user, sim.password, "C$")
        for share in ("C$", "D$"):
            with pytest.raises(SMBResponseException) as info:
                _tree_connect(smb["HV02"][1], sim.user, sim.password, share)
            assert info.value.status == STATUS_ACCESS_DENIED
