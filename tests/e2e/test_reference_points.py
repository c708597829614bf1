"""Reference points after full backups: one per VM, never another product's, none lost by a failed job.

Through fdsim (the Bareos fd), hvsim (WinRM) and real Samba.  Hyper-V cannot tell who made a
reference point, so the plugin records the ones it makes in
``<VM folder>\\bareos-hyperv-state\\<VM GUID>.reference-points`` on the host and destroys only
those (``HyperVBackupSource._replace_reference_points``).  After every job the VM runs on its base
disks again and Hyper-V's own checkpoint merges still work on them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any, List

import pytest

from bareos_hyperv.manifest.document import Manifest, from_xml
from fdsim.fd import JobResult
from hvsim import faults as F
from hvsim.world.state import VST_RECOVERY, VST_SNAPSHOT, ReferencePoint

pytestmark = pytest.mark.usefixtures("no_agent_left")

MiB = 1024 * 1024


def _texts(job: JobResult, type_name: str) -> List[str]:
    return [m.text for m in job.messages if m.type_name == type_name]


def _other_products_reference_point(world: Any, vm_name: str) -> ReferencePoint:
    """What another backup product leaves: its own recovery checkpoint, converted to a reference point."""
    vm = world.vm(vm_name)
    with world.lock:
        snap = world.take_snapshot(vm, VST_RECOVERY, 1)
        snap.config.vssd["ElementName"] = "other-backup-product"
        rp: ReferencePoint = world.convert_to_reference_point(vm, snap)
    return rp


def _ids(world: Any, vm_name: str) -> List[str]:
    return [rp.id for rp in world.reference_points(world.vm(vm_name).id)]


def _final_manifest(estate: Any, job: JobResult) -> Manifest:
    (obj,) = [o for o in estate.fd.store.objects([job.jobid]) if o.object_name.endswith("/manifest.object.xml")]
    return from_xml(obj.inflated(), source="restore object")


def _ledger(world: Any, vm_name: str) -> Path:
    vm = world.vm(vm_name)
    root = PureWindowsPath(str(vm.config.vssd["ConfigurationDataRoot"]))
    return Path(world.local(vm.node, str(root / "bareos-hyperv-state" / f"{vm.id.upper()}.reference-points")))


def _backup(estate: Any, vm_name: str = "web01") -> JobResult:
    job = estate.backup(host="HVCLUSTER01", vm=vm_name)
    assert job.status == "T", job.log()
    return job


def _assert_merges_still_work(world: Any, vm_name: str, ours: ReferencePoint) -> None:
    """No checkpoint is left, the VM runs on its base disks, and Hyper-V can checkpoint and merge them.

    The simulator freezes (makes read-only) a parent while a checkpoint's differencing child exists
    and merges the child back when the checkpoint is deleted; the reference point keeps tracking
    changes through that merge.
    """
    vm = world.vm(vm_name)
    assert world.snapshots(vm.id) == []
    live = [s.host_resource[0] for s in vm.config.vhds()]
    assert live and not any(p.lower().endswith((".avhdx", ".avhd")) for p in live), live
    for path in live:
        assert world.local(vm.node, path).stat().st_mode & 0o200, f"{path} is still frozen"
        folder = world.local(vm.node, str(PureWindowsPath(path).parent))
        assert not list(folder.glob("*.avhd*")), list(folder.iterdir())
    # An ordinary checkpoint, a guest write on top, then Hyper-V deletes it (merge).
    with world.lock:
        snap = world.take_snapshot(vm, VST_SNAPSHOT, 2)
    assert [s.host_resource[0] for s in vm.config.vhds()] != live
    offset = 5 * MiB
    world.guest_write(vm.id, 0, offset, b"\x5a" * 65536)
    with world.lock:
        world.remove_snapshot(vm, snap)
    assert [s.host_resource[0] for s in vm.config.vhds()] == live
    assert world.snapshots(vm.id) == []
    for path in live:
        check = subprocess.run(["qemu-img", "check", str(world.local(vm.node, path))], capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    changed = world.changed_ranges(vm.node, live[0], ours.rct_ids[0])
    assert changed is not None and any(o <= offset < o + n for o, n in changed), changed


def test_three_fulls_leave_one_reference_point_and_never_touch_another_products(estate: Any) -> None:
    world = estate.sim.world
    theirs_before = _other_products_reference_point(world, "web01")
    made: List[str] = []
    for n in range(3):
        if n == 2:
            # Another product's reference point newer than ours: age does not make one ours.
            theirs_after = _other_products_reference_point(world, "web01")
        job = _backup(estate)
        others = {theirs_before.id} | ({theirs_after.id} if n == 2 else set())
        ours = [rp for rp in world.reference_points(world.vm("web01").id) if rp.id not in others]
        assert len(ours) == 1, _ids(world, "web01")
        assert others <= set(_ids(world, "web01"))
        made.append(ours[0].id)
        final = _final_manifest(estate, job).backup.reference_point
        assert final is not None and final.instance_id == f"Microsoft:{ours[0].id}" and final.job_id == job.jobid
        assert [e.rct_id for e in final.rct] == ours[0].rct_ids
        infos = _texts(job, "M_INFO")
        if n:
            assert any(f"removed reference point Microsoft:{made[n - 1]}" in i for i in infos), job.log()
        assert any("did not record are left alone" in i and f"Microsoft:{theirs_before.id}" in i
                   for i in infos), job.log()
        _assert_merges_still_work(world, "web01", ours[0])
    assert len(set(made)) == 3
    assert sorted(_ids(world, "web01")) == sorted([theirs_before.id, theirs_after.id, made[-1]])
    ledger = _ledger(world, "web01").read_text()
    assert f"Microsoft:{made[-1]}\t" in ledger and made[0] not in ledger and theirs_before.id not in ledger


@pytest.mark.parametrize(("kind", "method"), [
    (F.JOB_FAIL, "ExportSystemDefinition"),  # right after the checkpoint
    (F.JOB_FAIL, "ConvertToReferencePoint"),  # after every byte was saved
])
def test_a_failed_job_keeps_the_previous_reference_point(estate: Any, kind: str, method: str) -> None:
    world = estate.sim.world
    _backup(estate)
    (first,) = world.reference_points(world.vm("web01").id)
    rule = estate.sim.faults.add(kind, method, error_code=32768, error_description=f"{method} failed (injected).")
    failed = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    assert failed.status == "f", failed.log()
    assert _ids(world, "web01") == [first.id]
    _assert_merges_still_work(world, "web01", first)  # the next incremental can still ask for changes
    _backup(estate)
    (third,) = world.reference_points(world.vm("web01").id)
    assert third.id != first.id
    _assert_merges_still_work(world, "web01", third)


def test_a_reference_point_that_cannot_be_removed_now_is_removed_by_the_next_job(estate: Any) -> None:
    world = estate.sim.world
    _backup(estate)
    (first,) = world.reference_points(world.vm("web01").id)
    rule = estate.sim.faults.add(F.WSMAN_FAULT, "DestroyReferencePoint", reason="Provider is busy.")
    second = _backup(estate)  # the data is saved: the job succeeds and says what is left
    assert rule.fired == 1
    assert any(f"could not remove reference point Microsoft:{first.id}" in w and "next job retries" in w
               for w in _texts(second, "M_WARNING")), second.log()
    assert len(_ids(world, "web01")) == 2
    third = _backup(estate)
    (last,) = world.reference_points(world.vm("web01").id)
    assert last.id not in (first.id,)
    removed = [i for i in _texts(third, "M_INFO") if "removed reference point" in i]
    assert len(removed) == 2, third.log()
    _assert_merges_still_work(world, "web01", last)


def test_a_lost_record_keeps_every_reference_point_it_listed(estate: Any) -> None:
    world = estate.sim.world
    _backup(estate)
    (first,) = world.reference_points(world.vm("web01").id)
    ledger = _ledger(world, "web01")
    assert f"Microsoft:{first.id}\t" in ledger.read_text()
    ledger.unlink()  # e.g. an operator cleaned the folder: the plugin no longer knows `first` is its own
    job = _backup(estate)
    assert first.id in _ids(world, "web01") and len(_ids(world, "web01")) == 2
    assert any("did not record are left alone" in i for i in _texts(job, "M_INFO")), job.log()
    _backup(estate)
    assert first.id in _ids(world, "web01") and len(_ids(world, "web01")) == 2


def test_each_vm_keeps_its_own_reference_point(estate: Any) -> None:
    world = estate.sim.world
    for _ in range(2):
        job = estate.backup(host="HVCLUSTER01", vm="web01,db01")
        assert job.status == "T", job.log()
        assert len(_ids(world, "web01")) == 1 and len(_ids(world, "db01")) == 1
