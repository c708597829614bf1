"""hvsim per-VM checkpoint behaviour: a guest whose VSS fails (fail / degrade with a warning / degrade
silently) and merges that outlive the job that deleted the checkpoint (hvsim.behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvsim.behaviour import CheckpointBehaviour
from hvsim.cim import CimInstance
from hvsim.world import NodeRepository, World
from hvsim.world.testing import (
    Clock,
    call,
    devices,
    embedded,
    job_results,
    make_world,
    service,
    settings_of,
    vm_inst,
)

SNAP = "Msvm_VirtualSystemSnapshotService"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    return make_world(tmp_path, clock, files=True)


def _create(repo: NodeRepository, clock: Clock, name: str, level: int = 1) -> tuple[CimInstance, list[CimInstance]]:
    settings = embedded("Msvm_VirtualSystemSnapshotSettingData", ConsistencyLevel=level,
                        IgnoreNonSnapshottableDisks=True)
    out, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm_inst(repo, name).path,
                    SnapshotSettings=settings, SnapshotType=32768)
    assert job is not None
    snaps = job_results(repo, out, "Msvm_VirtualSystemSettingData") if job.get("JobState") != 10 else []
    return job, snaps


def _errors(repo: NodeRepository, job: CimInstance) -> list[CimInstance]:
    assert job.path is not None
    outcome = repo.invoke(job.path, "GetErrorEx", {})
    assert outcome.return_value == 0
    return list(outcome.out.get("Errors") or [])


def _convert(repo: NodeRepository, clock: Clock, snap: CimInstance) -> CimInstance:
    out, job = call(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=snap.path)
    assert job is not None and job.get("JobState") == 7, job
    (rp,) = job_results(repo, out, "Msvm_VirtualSystemReferencePoint")
    return rp


def _status(repo: NodeRepository, name: str) -> list[int]:
    return list(vm_inst(repo, name).get("OperationalStatus"))


def _live_disks(repo: NodeRepository, name: str) -> list[str]:
    return [s.get("HostResource")[0] for s in devices(repo, settings_of(repo, vm_inst(repo, name)),
                                                     "Msvm_StorageAllocationSettingData")
            if s.get("ResourceSubType") == "Microsoft:Hyper-V:Virtual Hard Disk"]


def test_unknown_variants_are_refused() -> None:
    knobs = CheckpointBehaviour()
    with pytest.raises(ValueError, match="vss_failure"):
        knobs.vss_failure = "maybe"
    with pytest.raises(ValueError, match="merge"):
        knobs.merge = "later"


def test_vss_failure_fails_the_job_by_default(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    world.vm("web01").guest_vss = False
    job, _ = _create(repo, clock, "web01")
    assert job.get("JobState") == 10 and "application-consistent" in job.get("ErrorDescription")
    assert world.snapshots("web01") == []


def test_vss_failure_degrades_with_a_warning(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = "degrade_warning"
    job, (snap,) = _create(repo, clock, "web01")
    assert job.get("JobState") == 32768  # Completed with warnings
    (error,) = _errors(repo, job)
    assert "crash-consistent" in error.get("Message") and error.get("PerceivedSeverity") == 3  # a warning
    assert world.snapshots("web01")[0].consistency == 2
    assert _convert(repo, clock, snap).get("ConsistencyLevel") == 2


def test_vss_failure_degrades_silently(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = "degrade_silent"
    job, (snap,) = _create(repo, clock, "web01")
    assert job.get("JobState") == 7 and _errors(repo, job) == []
    # only the reference point tells
    assert _convert(repo, clock, snap).get("ConsistencyLevel") == 2
    # a guest that answers still gets application consistency
    world.vm("web01").guest_vss = True
    world.finish_merges()
    _job, (snap,) = _create(repo, clock, "web01")
    assert _convert(repo, clock, snap).get("ConsistencyLevel") == 1


def test_async_merge_outlives_the_job(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 30.0
    frozen = _live_disks(repo, "web01")
    _job, (snap,) = _create(repo, clock, "web01")
    children = _live_disks(repo, "web01")
    assert all(p.lower().endswith(".avhdx") for p in children)
    _convert(repo, clock, snap)
    # the checkpoint is gone and the job completed, but the merge runs on: the VM still uses the
    # .avhdx, which exists and is held open, and the VM says "Merging Disks"
    assert world.snapshots("web01") == []
    assert _status(repo, "web01") == [2, 32772]
    assert _live_disks(repo, "web01") == children
    assert all(world.local("HV01", p).exists() for p in children)
    assert {world.key("HV01", p) for p in children} <= world.files_in_use()
    # a new checkpoint is refused meanwhile
    job, _ = _create(repo, clock, "web01")
    assert job.get("JobState") == 10 and "merging" in job.get("ErrorDescription")
    clock.tick(31)
    assert _status(repo, "web01") == [2]
    assert _live_disks(repo, "web01") == frozen
    assert not any(world.local("HV01", p).exists() for p in children)


def test_async_merge_ends_after_n_polls_and_a_waiting_create(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 1e9
    web.checkpoints.merge_polls = 20  # requests answered after the job ended (the test's own included)
    _job, (snap,) = _create(repo, clock, "web01")
    _convert(repo, clock, snap)
    assert world.merging(web.id)
    polls = 0
    while world.merging(web.id):
        world.advance()
        polls += 1
        assert polls <= 20
    assert polls > 0
    # "wait": CreateSnapshot waits for the merge inside its job
    _job, (snap,) = _create(repo, clock, "web01")
    _convert(repo, clock, snap)
    assert world.merging(web.id)
    web.checkpoints.create_while_merging = "wait"
    job, snaps = _create(repo, clock, "web01")
    assert job.get("JobState") == 7 and len(snaps) == 1 and not world.merging(web.id)


def test_rct_after_an_async_merge_counts_writes_made_during_the_merge(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    web = world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 10.0
    _job, (snap,) = _create(repo, clock, "web01")
    rp = _convert(repo, clock, snap)
    world.guest_write("web01", 0, 5 << 20, b"\x22" * 4096)  # lands in the .avhdx still being merged
    clock.tick(11)
    world.advance()
    assert not world.merging(web.id)
    rct = rp.get("ResilientChangeTrackingIdentifiers")[0]
    root = _live_disks(repo, "web01")[0]
    assert root.lower().endswith(".vhdx")  # the merge ended: the VM runs on its own file again
    changed = world.changed_ranges("HV01", root, rct)
    assert changed is not None and any(o <= 5 << 20 < o + n for o, n in changed)
