"""Restore into Hyper-V, end to end: fdsim (the Bareos fd) -> plugin -> agent -> hvsim (WinRM) + real Samba.

Each test backs a VM up with the full backup, changes the estate, restores from the catalog with
``where=/`` and checks the simulator's resulting state: the VM with its planned name, ID and
owner node, each disk at its planned path byte-identical to the backed-up image and accepted by
``qemu-img check``, adapters on the planned switches, the cluster role and its owner.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any, Dict, List, Optional

import pytest

from fdsim.fd import JobResult
from tests.e2e.conftest import PLUGIN_DIR, REPO, _escape

pytestmark = pytest.mark.usefixtures("no_agent_left")

WEB_DISKS = ("C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx",
             "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _qemu_ok(path: Path) -> None:
    check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def restore(estate: Any, jobid: Optional[int] = None, where: str = "/", **options: str) -> JobResult:
    """A bconsole restore of the newest backup (or ``jobid``) with restore_* pluginoptions."""
    opts = ":".join(f"{k}={_escape(v)}" for k, v in options.items())
    return estate.fd.restore(None, jobid=jobid, where=where, pluginoptions=f"python3:{opts}" if opts else None,
                             plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])


def vm_disks(world: Any, vm: Any) -> List[str]:
    return [s.host_resource[0] for s in vm.config.vhds()]


def vm_switches(world: Any, vm: Any) -> List[Optional[str]]:
    """Switch name of each adapter connection (None: disconnected)."""
    node = world.node(vm.node)
    out: List[Optional[str]] = []
    for s in vm.config.settings:
        if s.class_name != "Msvm_EthernetPortAllocationSettingData":
            continue
        hr = s.host_resource
        if int(s.props.get("EnabledState") or 2) == 3 or not hr:
            out.append(None)
            continue
        m = re.search(r'[.,]Name="([^"]*)"', hr[0])
        sw = node.switch_by_id(m.group(1)) if m else None
        out.append(sw.name if sw else "?")
    return out


def delete_vm(world: Any, name: str) -> None:
    """What an administrator's Remove-VM plus deleting its files does."""
    vm = world.vm(name)
    if world.cluster is not None:
        group = world.cluster.group_for_vm(vm.id)
        if group is not None:
            world.cluster.groups.remove(group)
    for path in vm_disks(world, vm):
        world.local(vm.node, path).unlink()
    config = world.local(vm.node, vm.live_config_file())
    if config.exists():
        config.unlink()
    del world.vms[vm.id]


def sources(world: Any) -> Dict[str, str]:
    web = world.vm("web01")
    return {PureWindowsPath(p).name: _sha(world.local(web.node, p)) for p in WEB_DISKS}


def check_restored(world: Any, name: str, *, node: str, disks: Dict[str, str], switches: List[Optional[str]],
                   clustered: bool = True) -> Any:
    """The VM exists as planned: disks byte-identical and valid, adapters, cluster role."""
    vm = world.vm(name)
    assert not vm.planned
    assert vm.node == node
    paths = vm_disks(world, vm)
    assert sorted(PureWindowsPath(p).name.lower() for p in paths) == sorted(n.lower() for n in disks)
    for path in paths:
        local = world.local(vm.node, path)
        assert _sha(local) == disks[PureWindowsPath(path).name]
        _qemu_ok(local)
    assert vm_switches(world, vm) == switches
    group = world.cluster.group_for_vm(vm.id) if world.cluster else None
    if clustered:
        assert group is not None and group.owner_node == node
    else:
        assert group is None
    return vm


def no_leftovers(world: Any) -> None:
    """No planned VM, no partial file, no staging folder anywhere."""
    assert [v.name for v in world.vms.values() if v.planned] == []
    left = [p for p in world.root.rglob("*") if ".partial" in p.name or ".bareos-hyperv-restore" in p.name]
    assert left == []


def test_restore_to_the_original_place_after_the_vm_was_deleted(estate: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    web_id = world.vm("web01").id
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    delete_vm(world, "web01")

    back = restore(estate)
    assert back.status == "T", back.log()
    log = back.log()
    assert "web01" in log and "same path" in log.lower()
    vm = check_restored(world, "web01", node="HV01", disks=before, switches=["External-LAN"])
    assert vm.id == web_id
    assert sorted(vm_disks(world, vm)) == sorted(WEB_DISKS)
    no_leftovers(world)


def test_restore_next_to_the_existing_original_with_a_new_id_and_name(estate: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    original = world.vm("web01")
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    original_disks = {p: _sha(world.local(original.node, p)) for p in vm_disks(world, original)}

    back = restore(estate, restore_new_id="yes", restore_vm_name="web01-copy")
    assert back.status == "T", back.log()
    copy = world.vm("web01-copy")
    assert copy.id != original.id
    paths = vm_disks(world, copy)
    assert not set(p.lower() for p in paths) & set(p.lower() for p in WEB_DISKS)  # renamed, not overwritten
    for path in paths:
        name = PureWindowsPath(path).name
        base = next(n for n in before if name.startswith(PureWindowsPath(n).stem))
        assert _sha(world.local(copy.node, path)) == before[base]
        _qemu_ok(world.local(copy.node, path))
    assert world.cluster.group_for_vm(copy.id) is not None
    # The original is untouched.
    same = world.vm(original.id)
    assert {p: _sha(world.local(same.node, p)) for p in vm_disks(world, same)} == original_disks
    no_leftovers(world)


def test_restore_without_new_id_next_to_the_original_is_refused_before_writing(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    files_before = sorted(str(p) for p in world.root.rglob("*"))
    back = restore(estate)
    assert back.status != "T"
    assert "restore_new_id=yes" in back.log() and "restore_overwrite=yes" in back.log()
    assert sorted(str(p) for p in world.root.rglob("*")) == files_before


def test_restore_overwrite_replaces_the_original_that_is_off(estate: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    web = world.vm("web01")
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    # The guest changes after the backup; the restore brings the backed-up disks back.
    world.guest_write("web01", 0, 4096, b"after the backup" * 256)
    world.set_state("web01", "off")

    back = restore(estate, restore_overwrite="yes")
    assert back.status == "T", back.log()
    vm = check_restored(world, "web01", node="HV01", disks=before, switches=["External-LAN"])
    assert vm.id == web.id
    assert [v.id for v in world.vms.values() if v.name == "web01"] == [web.id]
    no_leftovers(world)


def test_restore_overwrite_of_a_running_vm_needs_force_off(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    back = restore(estate, restore_overwrite="yes")
    assert back.status != "T"
    assert "restore_force_off=yes" in back.log()
    assert world.vm("web01").state == 2  # still running, untouched


def test_restore_to_the_other_node_of_the_cluster(estate: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    delete_vm(world, "web01")
    back = restore(estate, restore_node="HV02", restore_start="yes")
    assert back.status == "T", back.log()
    vm = check_restored(world, "web01", node="HV02", disks=before, switches=["External-LAN"])
    assert vm.state == 2  # restore_start=yes: running
    no_leftovers(world)


def test_restore_to_a_standalone_host_that_lacks_the_switch_disconnects(estate: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    back = restore(estate, restore_host="HVSTANDALONE01", restore_new_id="yes",
                   restore_missing_switch="disconnect")
    assert back.status == "T", back.log()
    assert "disconnect" in back.log().lower()
    vm = next(v for v in world.vms.values() if v.name == "web01" and v.node == "HVSTANDALONE01")
    check_restored(world, vm.id, node="HVSTANDALONE01", disks=before, switches=[None], clustered=False)
    no_leftovers(world)


def test_restore_to_a_standalone_host_that_lacks_the_switch_fails_by_default(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    count = len(world.vms)
    back = restore(estate, restore_host="HVSTANDALONE01", restore_new_id="yes")
    assert back.status != "T"
    assert "External-LAN" in back.log() and "restore_missing_switch=disconnect" in back.log()
    assert len(world.vms) == count
    no_leftovers(world)


def test_restore_dry_run_prints_the_plan_and_changes_nothing(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    delete_vm(world, "web01")
    files_before = sorted(str(p) for p in world.root.rglob("*"))
    vms_before = sorted(world.vms)
    back = restore(estate, restore_dry_run="yes")
    assert back.status == "T", back.log()
    assert "web01-system.vhdx" in back.log()
    assert sorted(world.vms) == vms_before
    assert sorted(str(p) for p in world.root.rglob("*")) == files_before


def test_restore_to_a_directory_does_not_call_hyperv(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    requests = estate.sim.log.count()
    back = restore(estate, where=str(tmp_path / "x"))
    assert back.status == "T", back.log()
    assert (tmp_path / "x" / "@hyperv" / "HVCLUSTER01" / "web01" / "manifest.xml").is_file()
    assert estate.sim.log.count() == requests  # not one WS-Management request
    assert world.vm("web01") is not None


def test_two_vms_one_refused_by_the_plan_the_other_restored(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01,db01").status == "T"
    delete_vm(world, "db01")  # db01 can come back in place; web01 still exists: refused without a new ID
    web = world.vm("web01")
    web_disks = {p: _sha(world.local(web.node, p)) for p in vm_disks(world, web)}
    back = restore(estate)
    assert back.status != "T"
    log = back.log()
    assert "web01" in log and "restore_new_id=yes" in log
    db = world.vm("db01")
    assert not db.planned and world.cluster.group_for_vm(db.id) is not None
    same = world.vm("web01")
    assert same.id == web.id and {p: _sha(world.local(same.node, p)) for p in vm_disks(world, same)} == web_disks
    no_leftovers(world)


@pytest.fixture
def estate_2016(tmp_path: Path) -> Any:
    """The default estate plus a standalone Windows Server 2016 host (configuration versions up to 8.0)."""
    from fdsim.fd import FdSim
    from hvsim.simulation import Simulation
    from hvsim.world.scenario import default_world
    from tests.e2e.conftest import Estate

    world = default_world(tmp_path / "sim" / "estate")
    world.add_node("HV2016", build=14393, switches=["External-LAN"])
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


def test_restore_to_a_host_that_cannot_run_the_configuration_version_is_refused(estate_2016: Any) -> None:
    estate = estate_2016
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    files_before = sorted(str(p) for p in world.root.rglob("*"))
    count = len(world.vms)
    back = restore(estate, restore_host="HV2016", restore_new_id="yes")
    assert back.status != "T"
    log = back.log()
    assert "9.0" in log and "HV2016" in log
    assert len(world.vms) == count
    assert sorted(str(p) for p in world.root.rglob("*")) == files_before


def test_restore_to_a_volume_without_enough_free_space_is_refused(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    delete_vm(world, "web01")
    for csv in world.cluster.csvs:
        csv.free_bytes = world.csv_used_bytes(csv) + 1024 * 1024  # 1 MiB free on every CSV
    files_before = sorted(str(p) for p in world.root.rglob("*"))
    back = restore(estate)
    assert back.status != "T"
    assert "free" in back.log().lower() and "Volume" in back.log()
    assert sorted(str(p) for p in world.root.rglob("*")) == files_before


@pytest.fixture
def second_cluster(estate: Any, tmp_path: Path) -> Any:
    """Another cluster (HVCLUSTER02: nodes HV21, HV22, one CSV, switch 'Prod-LAN'), same account."""
    from hvsim.simulation import Simulation
    from hvsim.world.scenario import GiB, TiB
    from hvsim.world.state import World

    world = World(tmp_path / "sim2" / "estate")
    world.add_cluster("HVCLUSTER02")
    for node in ("HV21", "HV22"):
        world.add_node(node, build=20348, switches=["Prod-LAN"], cluster=True)
    world.add_csv(1 * TiB, 500 * GiB)
    with Simulation(tmp_path / "sim2", world=world, samba=True, user=estate.sim.user,
                    password=estate.sim.password) as sim2:
        yield sim2


def test_restore_to_another_cluster_with_other_volumes_and_switch_names(estate: Any, second_cluster: Any) -> None:
    world = estate.sim.world
    before = sources(world)
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    sims = (estate.sim, second_cluster)
    host_map = ",".join(f"{n}={a}:{p}" for s in sims for n, (a, p) in sorted(s.host_map().items()))
    smb_map = ",".join(f"{n}={a}:{p}" for s in sims for n, (a, p) in sorted(s.smb_map().items()))
    storage = "C:\\ClusterStorage\\Volume1\\Restored"
    back = restore(estate, host_map=host_map, smb_host_map=smb_map, restore_host="HVCLUSTER02",
                   restore_storage=storage, restore_switch_map="External-LAN=Prod-LAN")
    assert back.status == "T", back.log()
    other = second_cluster.world
    vm = other.vm("web01")
    assert vm.id == world.vm("web01").id  # nobody at the destination has the ID: kept
    paths = vm_disks(other, vm)
    assert all(p.lower().startswith((storage + "\\web01\\").lower()) for p in paths), paths
    check_restored(other, "web01", node=vm.node, disks=before, switches=["Prod-LAN"])
    assert other.cluster.group_for_vm(vm.id).owner_node in ("HV21", "HV22")
    no_leftovers(other)
    no_leftovers(world)


def _tamper_manifest(estate: Any, jobid: int, old: str, new: str) -> None:
    """Change the manifest restore object in the catalog as a damaged or forged save set would."""
    import base64
    import zlib

    objects = estate.fd.store._objects[jobid]
    for i, obj in enumerate(objects):
        if not obj.object_name.endswith("/manifest.object.xml"):
            continue  # the disk bases (base-<n>.object.json) are for the next incremental
        text = obj.inflated().decode("utf-8")
        assert old in text
        data = text.replace(old, new).encode("utf-8")
        stored = zlib.compress(data) if obj.object_compression else data
        objects[i] = type(obj)(**{**obj.__dict__, "data_b64": base64.b64encode(stored).decode("ascii"),
                                  "object_len": len(data), "object_full_len": len(data)})


DATA_PATH = 'path="C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx"'


@pytest.mark.parametrize(("old", "new", "needle"), [
    (DATA_PATH, DATA_PATH.replace("Disks\\", "Disks\\..\\..\\..\\Windows\\"), "which would leave its folder"),
    (DATA_PATH, DATA_PATH.replace("web01-data.vhdx", "CON.vhdx"), "Windows device name 'CON'"),
    (DATA_PATH, DATA_PATH.replace("web01-data.vhdx", "web01-data.vhdx:evil"), "alternate data stream"),
    # The captured settings are kept with their SHA-256: a changed text is a damaged manifest.
    ("Virtual Hard Disks\\web01-data.vhdx", "Virtual Hard Disks\\evil.vhdx", "damaged"),
])
def test_a_forged_manifest_is_refused_before_anything_is_written(estate: Any, old: str, new: str,
                                                                 needle: str) -> None:
    world = estate.sim.world
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T"
    delete_vm(world, "web01")
    _tamper_manifest(estate, job.jobid, old, new)
    files_before = sorted(str(p) for p in world.root.rglob("*"))
    back = restore(estate)
    assert back.status != "T"
    assert needle in back.log()
    assert sorted(str(p) for p in world.root.rglob("*")) == files_before
    no_leftovers(world)


def test_restore_vm_selects_one_vm_of_a_multi_vm_job(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01,db01").status == "T"
    delete_vm(world, "db01")  # web01 still exists, but it is not selected: no refusal for it
    back = restore(estate, restore_vm="db01")
    assert back.status == "T", back.log()
    assert "web01" not in "\n".join(line for line in back.log().splitlines() if "Restore plan" in line)
    db = world.vm("db01")
    assert world.cluster.group_for_vm(db.id) is not None
    no_leftovers(world)
