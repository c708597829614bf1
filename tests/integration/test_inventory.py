"""Inventory of the simulated estate through the real client, over real HTTP(S) with pywinrm."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.inventory import take_inventory
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.vm import ControllerKind, DriveKind, Generation, PowerState
from bareos_hyperv.wsman.errors import AuthenticationError, TlsVerificationError
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim.simulation import Simulation
from hvsim.tls import CertificateAuthority


def _connector(sim: Simulation, *, https: bool = False, password: str | None = None,
               ca: str | None = None) -> Connector:
    creds = Credentials(sim.user, password if password is not None else sim.password)
    options = TransportOptions(transport="ntlm", ca_trust_path=ca if ca is not None else sim.ca_path)
    return Connector(creds, options, https=https, host_map=sim.host_map(https=https))


def test_cluster_inventory_over_ntlm_encrypted_http(sim: Simulation) -> None:
    with _connector(sim) as conn:
        inv = take_inventory(conn, "HVCLUSTER01")
        trips = conn.round_trips
    assert inv.cluster is not None
    assert inv.scope == "HVCLUSTER01"
    assert [n.name for n in inv.cluster.nodes] == ["HV01", "HV02"]
    assert [v.path for v in inv.cluster.volumes] == ["C:\\ClusterStorage\\Volume1", "C:\\ClusterStorage\\Volume2"]
    assert all(v.total_bytes > v.free_bytes > 0 for v in inv.cluster.volumes)
    assert [v.owner_node for v in inv.cluster.volumes] == ["HV01", "HV02"]
    names = {vm.ref.name: vm for vm in inv.vms}
    assert set(names) == {"web01", "db01", "file01"}
    web = names["web01"]
    assert web.generation is Generation.GEN2 and web.state is PowerState.RUNNING
    assert inv.owner[web.ref.guid] == "HV01"
    assert inv.owner[names["db01"].ref.guid] == "HV02"
    group = inv.cluster.group_of(web.ref.guid)
    assert group is not None and group.owner_node == "HV01"
    disks = [d.path for d in web.virtual_disks]
    assert disks == ["C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx",
                     "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx"]
    assert [a.switch_name for a in web.adapters] == ["External-LAN"]
    # switches differ per node: only HV02 has Lab-Isolated
    per_host = {h.name: {s.name for s in h.switches} for h in inv.hosts}
    assert "Lab-Isolated" in per_host["HV02"] and "Lab-Isolated" not in per_host["HV01"]
    # every request was NTLM-authenticated and encrypted on the wire
    assert sim.log.count() == trips
    assert trips <= 30


def test_standalone_gen1_vm_with_dvd_and_pass_through(sim: Simulation) -> None:
    with _connector(sim) as conn:
        inv = take_inventory(conn, "HVSTANDALONE01")
    assert inv.cluster is None and inv.scope == "HVSTANDALONE01"
    (vm,) = inv.vms
    assert vm.generation is Generation.GEN1
    kinds = [(d.kind, d.slot.controller) for d in vm.drives]
    assert (DriveKind.DVD, ControllerKind.IDE) in kinds
    assert any(d.kind is DriveKind.PASS_THROUGH and d.host_resource for d in vm.drives)
    formats = {d.path.rsplit(".", 1)[1] for d in vm.virtual_disks if d.path}
    assert formats == {"vhd", "vhdx"}


def test_inventory_over_https_with_the_cluster_ca(sim: Simulation) -> None:
    with _connector(sim, https=True) as conn:
        inv = take_inventory(conn, "HVCLUSTER01", with_vms=False)
    assert inv.cluster is not None and len(inv.hosts) == 2


def test_https_with_an_untrusted_ca_fails_clearly(sim: Simulation, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    other.mkdir()
    wrong_ca = CertificateAuthority(str(other))
    with _connector(sim, https=True, ca=wrong_ca.cert_path) as conn, pytest.raises(TlsVerificationError) as info:
        take_inventory(conn, "HV01", with_vms=False)
    text = str(info.value)
    assert "ca_trust_path" in text or "certificate" in text.lower()


def test_wrong_password_is_refused_without_leaking_it(sim: Simulation, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Wr0ng-But-Secret-Pa55"
    caplog.set_level(logging.DEBUG)
    with _connector(sim, password=secret) as conn, pytest.raises(AuthenticationError) as info:
        take_inventory(conn, "HV01")
    assert sim.user in str(info.value)
    assert "HV01" in str(info.value)  # the node's name, not only the mapped address
    assert secret not in str(info.value)
    assert secret not in repr(info.value.__dict__)
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_password_never_reaches_logs_or_errors_on_success(sim: Simulation,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with _connector(sim) as conn:
        take_inventory(conn, "HVCLUSTER01")
    assert caplog.records, "debug logging should have produced records"
    assert all(sim.password not in r.getMessage() for r in caplog.records)


def test_vm_that_migrated_is_found_on_its_new_owner(sim: Simulation) -> None:
    web = next(v for v in sim.world.vms.values() if v.config.vssd["ElementName"] == "web01")
    sim.world.migrate(web.id, "HV02")
    with _connector(sim) as conn:
        inv = take_inventory(conn, "HVCLUSTER01")
        on_hv01 = [v.ref.name for v in vmmod.list_vms(conn.client("HV01"))]
    guid = web.id.upper()
    assert inv.owner[guid] == "HV02"
    assert "web01" not in on_hv01


def test_duplicate_vm_names_are_refused_and_guid_is_suggested(sim: Simulation) -> None:
    sim.world.add_vm("HVSTANDALONE01", "legacy01", generation=2, version="9.0", state="off",
                     root="D:\\Hyper-V\\legacy01-copy", switches=["LAN"], disks_=[])
    with _connector(sim) as conn:
        found = vmmod.list_vms(conn.client("HVSTANDALONE01"))
    with pytest.raises(vmmod.AmbiguousVmName) as info:
        vmmod.select_vms(found, ["legacy01"], where="HVSTANDALONE01")
    assert "GUID" in str(info.value)
    one = vmmod.select_vms(found, [found[0].ref.guid])
    assert [v.ref.guid for v in one] == [found[0].ref.guid]
    with pytest.raises(vmmod.VmNotFound) as missing:
        vmmod.select_vms(found, ["nosuchvm"])
    assert "nosuchvm" in str(missing.value) and "bareos-hyperv list" in str(missing.value)


@pytest.mark.parametrize("transport", ["kerberos", "credssp"])
def test_kerberos_and_credssp_are_passed_to_pywinrm_and_fail_clearly(sim: Simulation, transport: str) -> None:
    """The simulator has no KDC and no CredSSP acceptor: the client must say so, not hang or crash."""
    from bareos_hyperv.errors import BareosHyperVError

    creds = Credentials(sim.user, sim.password)
    with Connector(creds, TransportOptions(transport=transport), host_map=sim.host_map()) as conn, \
            pytest.raises(BareosHyperVError) as info:
        conn.client("HV01").identify()
    text = str(info.value)
    assert transport in text or "401" in text or "credentials" in text
    assert sim.password not in text
