"""Restores into Hyper-V that go wrong at each step: nothing left behind, nothing pre-existing changed.

After every fault: no planned VM, no partial or restored disk file of the failed VM, no staging
folder, no agent process; the VM that existed before (if any) is untouched; the job fails with
one fatal message that says what happened.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, List

import pytest

from hvsim import faults as F
from tests.e2e.test_restore_hyperv import _qemu_ok, delete_vm, no_leftovers, restore, vm_disks

pytestmark = pytest.mark.usefixtures("no_agent_left")


def _files(world: Any) -> List[str]:
    return sorted(str(p) for p in world.root.rglob("*") if p.is_file())


def _backed_up_and_deleted(estate: Any) -> List[str]:
    """Back web01 up, delete it, and return the files that exist after the deletion."""
    world = estate.sim.world
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    delete_vm(world, "web01")
    return _files(world)


def _assert_failed_cleanly(estate: Any, back: Any, files_before: List[str], *needles: str) -> None:
    world = estate.sim.world
    assert back.status == "f", back.log()
    log = back.log()
    for needle in needles:
        assert needle in log, log
    assert "nothing was left behind" in log, log
    with pytest.raises(ValueError):
        world.vm("web01")
    no_leftovers(world)
    assert _files(world) == files_before


@pytest.mark.parametrize(("method", "needle"), [
    ("ImportSystemDefinition", "ImportSystemDefinition"),
    ("ValidatePlannedSystem", "refused"),
    ("RealizePlannedSystem", "RealizePlannedSystem"),
])
def test_a_failed_hyperv_job_during_the_import_removes_everything(estate: Any, method: str, needle: str) -> None:
    files_before = _backed_up_and_deleted(estate)
    estate.sim.faults.add(F.JOB_FAIL, method, error_code=32768, error_description=f"{method} failed (injected).")
    back = restore(estate)
    _assert_failed_cleanly(estate, back, files_before, "web01")


def test_add_virtual_machine_failure_removes_the_realized_vm(estate: Any) -> None:
    files_before = _backed_up_and_deleted(estate)
    estate.sim.faults.add(F.WSMAN_FAULT, "AddVirtualMachine", reason="The cluster service is not running.")
    back = restore(estate)
    _assert_failed_cleanly(estate, back, files_before, "web01")


def estate_plugin_dir() -> Path:
    from tests.e2e.conftest import PLUGIN_DIR

    return PLUGIN_DIR


def estate_repo() -> Path:
    from tests.e2e.conftest import REPO

    return REPO


def test_cancel_during_the_import_removes_everything(estate: Any) -> None:
    world = estate.sim.world
    files_before = _backed_up_and_deleted(estate)
    hang = estate.sim.faults.add(F.JOB_HANG, "ValidatePlannedSystem")
    job = estate.fd.start("restore", None, where="/", plugin_dir=estate_plugin_dir(), extra_sys_path=[estate_repo()])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(v.planned for v in world.vms.values()):
        time.sleep(0.2)
    assert estate.fd.cancel(job.jobid)
    back = job.wait(120)
    estate.sim.faults.remove(hang)
    assert back.status == "A", back.log()
    time.sleep(0.5)
    no_leftovers(world)
    with pytest.raises(ValueError):
        world.vm("web01")
    assert _files(world) == files_before


# ------------------------------------------------------------------ a disk big enough to act mid-write

BIG_DISK = "C:\\ClusterStorage\\Volume1\\big01\\Virtual Hard Disks\\big01.vhdx"


@pytest.fixture
def big(tmp_path: Path) -> Any:
    """A cluster with one VM whose 1 GiB disk (256 MiB allocated) takes long enough to restore to act mid-disk."""
    from fdsim.fd import FdSim
    from hvsim.simulation import Simulation
    from hvsim.world.scenario import MiB, build_cluster
    from hvsim.world.state import DiskSpec, World
    from tests.e2e.conftest import Estate

    world = World(tmp_path / "estate")
    build_cluster(world)
    world.add_vm("HV01", "big01", generation=2, version="9.0", state="off", clustered=True,
                 root="C:\\ClusterStorage\\Volume1\\big01", switches=["External-LAN"], seed=7,
                 disks_=[DiskSpec(BIG_DISK, size=1024 * MiB, fill_ratio=0.25)])
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        estate = Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)
        job = estate.backup(host="HVCLUSTER01", vm="big01")
        assert job.status == "T", job.log()
        delete_vm(world, "big01")
        yield estate


def _partial(world: Any) -> List[Path]:
    return [p for p in world.root.rglob("*.partial")]


def _mid_write(estate: Any) -> Any:
    """Start the restore and return once the disk is being written (its partial file grows)."""
    job = estate.fd.start("restore", None, where="/", plugin_dir=estate_plugin_dir(), extra_sys_path=[estate_repo()])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parts = _partial(estate.sim.world)
        if parts and parts[0].stat().st_size > 32 * 1024 * 1024:
            return job
        time.sleep(0.01)
    raise AssertionError("the disk never started to be written")


def _agents() -> List[int]:
    from tests.e2e.conftest import agent_processes

    return agent_processes()


def test_cancel_mid_disk_removes_the_partial_file(big: Any) -> None:
    world = big.sim.world
    files_before = _files(world)
    job = _mid_write(big)
    assert big.fd.cancel(job.jobid)
    back = job.wait(120)
    assert back.status == "A", back.log()
    assert "everything it had created was removed" in back.log(), back.log()
    no_leftovers(world)
    assert _files(world) == files_before
    with pytest.raises(ValueError):
        world.vm("big01")


def test_agent_killed_mid_disk_is_cleaned_up_by_a_fresh_agent(big: Any) -> None:
    world = big.sim.world
    files_before = _files(world)
    job = _mid_write(big)
    pids = _agents()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    back = job.wait(120)
    assert back.status == "f", back.log()
    log = back.log()
    assert "was killed by SIGKILL without undoing it; starting a fresh agent" in log, log
    assert "cleanup done: nothing the restore created is left" in log, log
    no_leftovers(world)
    assert _files(world) == files_before
    assert big.sim.password not in log


def test_smb_connection_drop_mid_disk_resumes_or_fails_cleanly(big: Any) -> None:
    world = big.sim.world
    files_before = _files(world)
    job = _mid_write(big)
    assert big.sim.samba is not None
    dropped = sum(server.drop_connections() for server in big.sim.samba.servers.values())
    assert dropped >= 1
    back = job.wait(300)
    if back.status == "T":  # the writer resumed on a new connection: the disk must still be exact
        vm = world.vm("big01")
        path = vm_disks(world, vm)[0]
        _qemu_ok(world.local(vm.node, path))
        no_leftovers(world)
    else:
        assert back.status == "f", back.log()
        assert "nothing was left behind" in back.log() or "everything it had created was removed" in back.log()
        no_leftovers(world)
        assert _files(world) == files_before


def test_a_refused_import_of_a_copy_falls_back_to_define_system_and_says_so(estate: Any) -> None:
    world = estate.sim.world
    assert estate.backup(host="HVCLUSTER01", vm="web01").status == "T"
    estate.sim.faults.add(F.JOB_FAIL, "ImportSystemDefinition", error_code=32768,
                          error_description="The configuration file is of an unsupported format (injected).")
    back = restore(estate, restore_new_id="yes", restore_vm_name="web01-defined")
    assert back.status == "T", back.log()
    assert "defining the VM from the settings the backup captured instead (DefineSystem)" in back.log()
    vm = world.vm("web01-defined")
    assert vm.id != world.vm("web01").id
    paths = vm_disks(world, vm)
    assert len(paths) == 2 and all("-restored-" in p for p in paths), paths
    for path in paths:
        _qemu_ok(world.local(vm.node, path))
    assert world.cluster.group_for_vm(vm.id) is not None
    no_leftovers(world)
