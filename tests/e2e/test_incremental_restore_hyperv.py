"""Restore of incremental and differential points into Hyper-V, end to end.

Through fdsim (the chain of jobs restored in (JobId, FileIndex) order with the restore objects of
every job of the chain), the plugin and agent (the full image written over SMB to a temporary
file, each delta applied to it in place, the point's image digest checked before the rename), and
hvsim + Samba.  Each restored disk is byte-identical to the frozen source of its point and passes
``qemu-img check``; a missing delta fails the VM with nothing left behind.
"""

from __future__ import annotations

import random
from pathlib import PureWindowsPath
from typing import Any, Dict, List, Optional

import pytest

from fdsim.fd import JobResult
from tests.e2e.conftest import PLUGIN_DIR, REPO, _escape
from tests.e2e.test_incremental import WEB_DISKS, _backup, _frozen, _texts, _writes_a, _writes_b
from tests.e2e.test_restore_hyperv import check_restored, delete_vm, no_leftovers, vm_disks

pytestmark = pytest.mark.usefixtures("no_agent_left")


def _restore(estate: Any, *, upto: Optional[int] = None, files: Optional[List[str]] = None,
             **options: str) -> JobResult:
    opts = ":".join(f"{k}={_escape(v)}" for k, v in options.items())
    return estate.fd.restore(None, where="/", pluginoptions=f"python3:{opts}" if opts else None,
                             plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO], upto=upto, files=files)


def _chain(estate: Any, world: Any) -> Dict[str, Any]:
    """Full, writes, Incremental, writes, Incremental, Differential, writes; the frozen disks of each point."""
    vm = world.vm("web01")
    rnd = random.Random(23)
    points: Dict[str, Any] = {}
    for label, level, writes in [("full", "F", None), ("inc1", "I", _writes_a), ("inc2", "I", _writes_b),
                                 ("diff", "D", _writes_a)]:
        if writes is not None:
            writes(world, vm.id, rnd)
        expected = _frozen(world, "web01", WEB_DISKS)
        points[label] = (_backup(estate, level), expected)
    return points


def test_an_incremental_point_restored_into_hyperv_after_the_vm_was_deleted(estate: Any) -> None:
    world = estate.sim.world
    web_id = world.vm("web01").id
    points = _chain(estate, world)
    job, expected = points["inc2"]
    delete_vm(world, "web01")
    back = _restore(estate, upto=job.jobid)
    assert back.status == "T", back.log()
    assert "rebuilt from 3 parts" in back.log(), back.log()
    vm = check_restored(world, "web01", node="HV01", disks=expected, switches=["External-LAN"])
    assert vm.id == web_id
    assert sorted(vm_disks(world, vm)) == sorted(WEB_DISKS)
    no_leftovers(world)


def test_a_differential_point_restored_next_to_the_original(estate: Any) -> None:
    world = estate.sim.world
    points = _chain(estate, world)
    job, expected = points["diff"]
    back = _restore(estate, upto=job.jobid, restore_new_id="yes", restore_vm_name="web01-diff")
    assert back.status == "T", back.log()
    assert "rebuilt from 2 parts" in back.log(), back.log()  # the Full's image and the Differential's delta
    copy = world.vm("web01-diff")
    assert copy.id != world.vm("web01").id
    paths = vm_disks(world, copy)
    assert not {p.lower() for p in paths} & {p.lower() for p in WEB_DISKS}
    renamed = {PureWindowsPath(p).name: expected[next(n for n in expected
                                                      if PureWindowsPath(p).name.startswith(PureWindowsPath(n).stem))]
               for p in paths}
    check_restored(world, "web01-diff", node=copy.node, disks=renamed, switches=["External-LAN"])
    no_leftovers(world)


def test_a_missing_delta_fails_the_vm_and_leaves_nothing(estate: Any) -> None:
    world = estate.sim.world
    points = _chain(estate, world)
    inc1, _ = points["inc1"]
    inc2, _ = points["inc2"]
    delete_vm(world, "web01")
    names = [n for j in estate.fd.store.most_recent_jobids(upto=inc2.jobid) for n in estate.fd.list_files(j)]
    without = sorted({n for n in names if not n.endswith(f"+I+{inc1.jobid}") and not n.endswith(".object.json")
                      and not n.endswith(".object.xml")})
    back = _restore(estate, upto=inc2.jobid, files=without)
    assert back.status != "T", back.log()
    text = "\n".join(_texts(back, "M_FATAL") + _texts(back, "M_ERROR"))
    assert "a part of the disk file's chain is missing or out of order" in text, back.log()
    assert "nothing was left behind" in text, back.log()
    assert "web01" not in [v.name for v in world.vms.values()]
    no_leftovers(world)
    for path in WEB_DISKS:
        assert not world.local("HV01", path).exists()


def test_one_incremental_job_alone_is_refused_before_any_data(estate: Any) -> None:
    world = estate.sim.world
    points = _chain(estate, world)
    inc2, _ = points["inc2"]
    delete_vm(world, "web01")
    # jobid=N: that job's files and restore objects only; its disks need the Full's image and inc1's delta.
    back = estate.fd.restore(None, jobid=inc2.jobid, where="/", plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
    assert back.status != "T", back.log()
    text = "\n".join(_texts(back, "M_FATAL") + _texts(back, "M_ERROR"))
    assert "whose manifest is not part of this restore" in text, back.log()
    assert "web01" not in [v.name for v in world.vms.values()]
    no_leftovers(world)


def test_an_older_incremental_point_over_the_running_original_and_the_chain_goes_on(estate: Any) -> None:
    """restore_overwrite of inc1 (not the newest point) over the running VM; the next incremental
    finds the replaced VM's reference point gone, compares digests against the newest backup and
    restores to exactly what the VM now holds."""
    world = estate.sim.world
    web_id = world.vm("web01").id
    points = _chain(estate, world)
    job, expected = points["inc1"]
    back = _restore(estate, upto=job.jobid, restore_overwrite="yes", restore_force_off="yes")
    assert back.status == "T", back.log()
    assert "rebuilt from 2 parts" in back.log(), back.log()
    vm = check_restored(world, "web01", node="HV01", disks=expected, switches=["External-LAN"])
    assert vm.id == web_id
    assert [v.id for v in world.vms.values() if v.name == "web01"] == [web_id]
    no_leftovers(world)

    frozen_next = _frozen(world, "web01", WEB_DISKS)
    after = _backup(estate, "I")
    warnings = "\n".join(_texts(after, "M_WARNING"))
    assert "by digest" in warnings, after.log()
    delete_vm(world, "web01")
    again = _restore(estate, upto=after.jobid)
    assert again.status == "T", again.log()
    check_restored(world, "web01", node="HV01", disks=frozen_next, switches=["External-LAN"])
    no_leftovers(world)
