"""Wrong options, names, hosts, credentials and permissions: each ends the job with one clear M_FATAL.

The M_FATAL must name the option or the host and say what to do; nothing may be left on the
simulated estate (no checkpoint, no staging folder, no agent) and no password may appear.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, List

import pytest

from fdsim.fd import JobResult
from hvsim import faults as F
from hvsim.world.scenario import MiB
from hvsim.world.state import DiskSpec

pytestmark = pytest.mark.usefixtures("no_agent_left")

ALL_VMS = ("web01", "db01", "file01", "legacy01")


def _fatal(job: JobResult) -> str:
    """The plugin's M_FATAL (the core adds its own "startBackupFile failed" line after it)."""
    fatals = [m.text for m in job.messages if m.type_name == "M_FATAL" and m.source == "plugin"]
    assert len(fatals) == 1, job.log()
    return fatals[0]


def _untouched(estate: Any, job: JobResult, *secrets: str) -> None:
    """Failed before anything was changed or saved, and no secret in any message."""
    world = estate.sim.world
    assert job.status == "f", job.log()
    assert estate.fd.list_files(job.jobid) == []
    for name in ALL_VMS:
        vm = world.vm(name)
        assert world.snapshots(vm.id) == [] and world.reference_points(vm.id) == [], name
    assert [p for p in world.root.rglob("bareos-hyperv-staging*")] == []
    texts: List[str] = [m.text for m in job.messages] + [t for _lvl, t in job.debug_messages]
    for secret in (estate.sim.password, *secrets):
        assert all(secret not in t for t in texts)


def test_unknown_option_names_it_and_lists_the_known_ones(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="web01", vmname="web01")
    fatal = _fatal(job)
    assert "unknown option 'vmname'" in fatal, fatal
    assert "remove it or correct its spelling" in fatal and "vm," in fatal, fatal
    _untouched(estate, job)


def test_bad_option_value_names_the_option_and_the_allowed_values(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="web01", consistency="perfect")
    fatal = _fatal(job)
    assert "consistency=perfect" in fatal and "application, application-required, crash" in fatal, fatal
    _untouched(estate, job)


def test_missing_mandatory_option_is_named(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01")
    fatal = _fatal(job)
    assert "mandatory option vm not set" in fatal and "add vm=... to the Plugin= line" in fatal, fatal
    _untouched(estate, job)


def test_vm_name_matching_nothing_names_the_vm_and_the_host(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="web01,web99")
    fatal = _fatal(job)
    assert "no VM matches 'web99'" in fatal and "HVCLUSTER01" in fatal, fatal
    assert "check the vm= option" in fatal, fatal
    _untouched(estate, job)


def test_two_vms_with_one_name_are_refused_and_the_guid_works(estate: Any) -> None:
    world = estate.sim.world
    with world.lock:
        twin = world.add_vm("HV02", "web01", state="off", root="C:\\ClusterStorage\\Volume2\\web01-twin", seed=9,
                            disks_=[DiskSpec("C:\\ClusterStorage\\Volume2\\web01-twin\\twin.vhdx", size=8 * MiB)])
    original = next(v for v in world.vms.values() if v.name == "web01" and v.id != twin.id)
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    fatal = _fatal(job)
    assert "2 VMs are named 'web01'" in fatal, fatal
    assert "give the VM's GUID in vm=" in fatal and twin.id in fatal and original.id in fatal, fatal
    assert world.snapshots(twin.id) == [] and world.snapshots(original.id) == []
    assert estate.fd.list_files(job.jobid) == []

    by_guid = estate.backup(host="HVCLUSTER01", vm=twin.id)
    assert by_guid.status == "T", by_guid.log()
    names = estate.fd.list_files(by_guid.jobid)
    assert names and all("/HVCLUSTER01/web01" in n for n in names)
    assert len(world.reference_points(twin.id)) == 1 and world.reference_points(original.id) == []
    assert world.snapshots(twin.id) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_host_is_named_with_what_to_check(estate: Any) -> None:
    host_map = estate.sim.host_map_option() + f",HVGONE01=127.0.0.1:{_closed_port()}"
    job = estate.backup(host="HVGONE01", vm="web01", host_map=host_map)
    fatal = _fatal(job)
    assert "HVGONE01" in fatal, fatal
    assert "check that the host is up and WinRM listens" in fatal, fatal
    _untouched(estate, job)


def test_wrong_credentials_name_the_host_and_the_credentials_file(estate: Any, tmp_path: Path) -> None:
    wrong = "Wr0ng-Passw0rd-4711"
    creds = tmp_path / "wrong.cred"
    creds.write_text(f"username = {estate.sim.user}\npassword = {wrong}\n", encoding="utf-8")
    creds.chmod(0o600)
    job = estate.backup(host="HVCLUSTER01", vm="web01", credentials_file=str(creds))
    fatal = _fatal(job)
    assert "HVCLUSTER01" in fatal and "rejected the credentials of user" in fatal, fatal
    assert "check user name, password and domain in the credentials file" in fatal, fatal
    _untouched(estate, job, wrong)


def test_missing_permissions_name_the_host_and_the_group_to_join(estate: Any) -> None:
    rule = estate.sim.faults.add(F.WSMAN_FAULT, "Enumerate", subcode="w:AccessDenied", reason="Access is denied.",
                                 provider=False, times=0)
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired >= 1
    fatal = _fatal(job)
    # The first thing read is the failover cluster namespace: the message names it and the right it needs.
    assert "HVCLUSTER01" in fatal and "root/MSCluster" in fatal, fatal
    assert "local Administrator on every cluster node" in fatal, fatal
    _untouched(estate, job)


def test_unreadable_credentials_file_is_named(estate: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.cred"
    job = estate.backup(host="HVCLUSTER01", vm="web01", credentials_file=str(missing))
    fatal = _fatal(job)
    assert str(missing) in fatal, fatal
    _untouched(estate, job)
