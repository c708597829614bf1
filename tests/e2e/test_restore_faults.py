"""Restores into Hyper-V that go wrong at each step: nothing left behind, nothing pre-existing changed.

After every fault: no planned VM, no partial or restored disk file of the failed VM, no staging
folder, no agent process; the VM that existed before (if any) is untouched; the job fails with
one fatal message that says what happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List

import pytest

from hvsim import faults as F
from tests.e2e.test_restore_hyperv import _sha, delete_vm, no_leftovers, restore, vm_disks

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


def test_smb_connection_drop_while_writing_fails_cleanly_or_resumes(estate: Any) -> None:
    world = estate.sim.world
    files_before = _backed_up_and_deleted(estate)
    before = None
    samba = estate.sim.samba
    assert samba is not None
    back_job = estate.fd.start("restore", None, where="/", plugin_dir=estate_plugin_dir(),
                               extra_sys_path=[estate_repo()])
    time.sleep(0.5)
    samba.restart() if hasattr(samba, "restart") else None
    back = back_job.wait(300)
    if back.status == "T":
        vm = world.vm("web01")
        for path in vm_disks(world, vm):
            assert _sha(world.local(vm.node, path))
        no_leftovers(world)
    else:
        _assert_failed_cleanly(estate, back, files_before, "web01")
    del before


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
