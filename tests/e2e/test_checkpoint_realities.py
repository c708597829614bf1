"""Checkpoints as real hosts make them, end to end (fdsim -> plugin -> pywinrm -> hvsim, Samba).

* An application-consistent request that Hyper-V completes crash-consistent (the guest's VSS failed):
  with a warning in the job, or silently (only the reference point's ConsistencyLevel tells).  The
  manifest records what was achieved and where that came from; ``consistency=application-required``
  fails and leaves neither checkpoint nor reference point.
* Merges that outlive the job that deleted a checkpoint: the next job waits (and says so), bounded
  by ``timeout=``, and saves the files the checkpoint froze.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest

from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.model.backup import CONSISTENCY_FROM_JOB, CONSISTENCY_FROM_REFERENCE_POINT, Consistency
from fdsim.fd import JobResult

pytestmark = pytest.mark.usefixtures("no_agent_left")

WEB = "@hyperv/HVCLUSTER01/web01/"


def _texts(job: JobResult, type_name: str) -> List[str]:
    return [m.text for m in job.messages if m.type_name == type_name]


def _final_manifest(estate: Any, job: JobResult) -> Manifest:
    (obj,) = [o for o in estate.fd.store.objects([job.jobid]) if o.object_name == WEB + "manifest.object.xml"]
    return from_xml(obj.inflated(), source="restore object")


def _streamed_manifest(estate: Any, job: JobResult, where: Path) -> Manifest:
    back = estate.restore_to(where, job.jobid, files=[WEB + "manifest.xml"])
    assert back.status == "T", back.log()
    return from_xml((where / WEB / "manifest.xml").read_bytes(), source="manifest.xml")


def _no_vss(estate: Any, variant: str) -> Any:
    web = estate.sim.world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = variant
    return web


def test_a_checkpoint_completed_with_warnings_is_recorded_crash_consistent(estate: Any, tmp_path: Path) -> None:
    web = _no_vss(estate, "degrade_warning")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    assert any("completed the application-consistent checkpoint with warnings" in w and "recorded as crash" in w
               for w in _texts(job, "M_WARNING")), job.log()
    assert any("crash checkpoint taken" in i for i in _texts(job, "M_INFO")), job.log()
    streamed = _streamed_manifest(estate, job, tmp_path / "r")
    assert streamed.backup.consistency_achieved is Consistency.CRASH
    assert streamed.backup.consistency_source == CONSISTENCY_FROM_JOB
    final = _final_manifest(estate, job)
    assert final.backup.consistency_requested.value == "application"
    assert final.backup.consistency_achieved is Consistency.CRASH
    assert final.backup.consistency_source == CONSISTENCY_FROM_REFERENCE_POINT
    assert any("crash-consistent" in w for w in final.backup.warnings)
    assert estate.sim.world.snapshots(web.id) == []


def test_application_required_fails_on_a_warned_checkpoint_and_leaves_nothing(estate: Any) -> None:
    web = _no_vss(estate, "degrade_warning")
    job = estate.backup(host="HVCLUSTER01", vm="web01", consistency="application-required")
    assert job.status == "f", job.log()
    fatal = " ".join(_texts(job, "M_FATAL") + _texts(job, "M_ERROR"))
    assert "not application-consistent" in fatal and "the checkpoint was removed" in fatal, job.log()
    assert web.id in fatal
    assert estate.sim.world.snapshots(web.id) == []
    assert estate.sim.world.reference_points(web.id) == []
    assert not any(n.endswith(".vhdx") for n in estate.fd.list_files(job.jobid))


def test_a_silently_degraded_checkpoint_is_recorded_from_its_reference_point(estate: Any, tmp_path: Path) -> None:
    web = _no_vss(estate, "degrade_silent")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    assert any("recorded the checkpoint as crash-consistent" in w for w in _texts(job, "M_WARNING")), job.log()
    # manifest.xml precedes the data: it can only say what the checkpoint's job reported, and says so
    streamed = _streamed_manifest(estate, job, tmp_path / "r")
    assert streamed.backup.consistency_achieved is Consistency.APPLICATION
    assert streamed.backup.consistency_source == CONSISTENCY_FROM_JOB
    final = _final_manifest(estate, job)
    assert final.backup.consistency_achieved is Consistency.CRASH
    assert final.backup.consistency_source == CONSISTENCY_FROM_REFERENCE_POINT
    assert len(estate.sim.world.reference_points(web.id)) == 1


def test_application_required_fails_on_a_silently_degraded_checkpoint_and_leaves_nothing(estate: Any) -> None:
    world = estate.sim.world
    web = world.vm("web01")
    first = estate.backup(host="HVCLUSTER01", vm="web01")  # a good full: its reference point must survive
    assert first.status == "T", first.log()
    (kept,) = world.reference_points(web.id)
    _no_vss(estate, "degrade_silent")
    job = estate.backup(host="HVCLUSTER01", vm="web01", consistency="application-required", level="I")
    assert job.status == "f", job.log()
    fatal = " ".join(_texts(job, "M_FATAL") + _texts(job, "M_ERROR"))
    assert "recorded the checkpoint as crash-consistent" in fatal and "reference point was removed" in fatal, \
        job.log()
    assert "web01" in fatal
    assert world.snapshots(web.id) == []
    assert [rp.id for rp in world.reference_points(web.id)] == [kept.id]
    assert not any(n.endswith("/SHA256SUMS") for n in estate.fd.list_files(job.jobid))


def test_the_next_job_waits_for_a_merge_that_outlived_the_last_one(estate: Any) -> None:
    world = estate.sim.world
    web = world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 3.0
    first = estate.backup(host="HVCLUSTER01", vm="web01")
    assert first.status == "T", first.log()
    # ConvertToReferencePoint's job has ended; the .avhdx is still being merged
    assert world.merging(web.id)
    assert all(s.host_resource[0].lower().endswith(".avhdx") for s in web.config.vhds())
    second = estate.backup(host="HVCLUSTER01", vm="web01", level="I")
    assert second.status == "T", second.log()
    infos = _texts(second, "M_INFO")
    assert any("merging disks" in i and "waiting for it to finish" in i for i in infos), second.log()
    assert any("the merge on HV01 finished" in i for i in infos), second.log()
    names = estate.fd.list_files(second.jobid)
    assert not any(".avhdx" in n for n in names), names  # only what the checkpoint froze
    final = _final_manifest(estate, second)
    assert [f.info.path.lower().endswith(".vhdx") for d in final.disks for f in d.chain] == [True, True]


def test_a_merge_longer_than_the_timeout_fails_the_job_naming_the_vm(estate: Any) -> None:
    world = estate.sim.world
    web = world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 3600.0
    first = estate.backup(host="HVCLUSTER01", vm="web01")
    assert first.status == "T", first.log()
    job = estate.backup(host="HVCLUSTER01", vm="web01", timeout="2")
    assert job.status == "f", job.log()
    fatal = " ".join(_texts(job, "M_FATAL"))
    assert "still merging disks" in fatal and "web01" in fatal and "timeout=" in fatal, job.log()
    assert world.snapshots(web.id) == []  # no checkpoint was taken
    world.finish_merges(web.id)


def test_a_reference_point_that_cannot_be_removed_is_removed_by_the_next_job(estate: Any) -> None:
    from hvsim import faults as F

    world = estate.sim.world
    web = _no_vss(estate, "degrade_silent")
    rule = estate.sim.faults.add(F.WSMAN_FAULT, "DestroyReferencePoint", reason="Provider is busy.")
    job = estate.backup(host="HVCLUSTER01", vm="web01", consistency="application-required")
    assert job.status == "f", job.log()
    assert rule.fired == 1
    assert any("could not remove reference point" in e and "the next job of this plugin removes it" in e
               for e in _texts(job, "M_ERROR")), job.log()
    (left,) = world.reference_points(web.id)
    web.guest_vss = True
    again = estate.backup(host="HVCLUSTER01", vm="web01", consistency="application-required")
    assert again.status == "T", again.log()
    assert any(left.id in i and "removed reference point" in i for i in _texts(again, "M_INFO")), again.log()
    (now,) = world.reference_points(web.id)
    assert now.id != left.id
    assert _final_manifest(estate, again).backup.consistency_achieved is Consistency.APPLICATION
