"""Incremental and differential backups, and chain restores, end to end.

Through fdsim (the Bareos fd: levels, since time, the previous job's restore objects before
bEventStartBackupJob, restores of several jobs in (JobId, FileIndex) order), hvsim (resilient
change tracking, reference points, merges) and real Samba.  Every restored disk is compared with
the frozen source of its point (SHA-256) and checked by ``qemu-img check``.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any, Dict, List

import pytest

from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.model.backup import BackupLevel, DeltaMethod, PartKind
from fdsim.fd import JobResult
from tests.e2e.test_reference_points import _assert_merges_still_work

pytestmark = pytest.mark.usefixtures("no_agent_left")

KiB = 1024
MiB = 1024 * KiB
WEB = "@hyperv/HVCLUSTER01/web01/"
WEB_DISKS = ("C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx",
             "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx")
LEGACY = "@hyperv/HVSTANDALONE01/legacy01/"
LEGACY_DISKS = ("D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-system.vhd",
                "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-data.vhdx",
                "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-swap.vhd")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _frozen(world: Any, vm_name: str, disks: tuple[str, ...]) -> Dict[str, str]:
    """SHA-256 of each disk file as the next backup will freeze it (nothing writes during a job)."""
    vm = world.vm(vm_name)
    return {PureWindowsPath(p).name: _sha(world.local(vm.node, p)) for p in disks}


def _backup(estate: Any, level: str, vm: str = "web01", host: str = "HVCLUSTER01") -> JobResult:
    job = estate.backup(level=level, host=host, vm=vm)
    assert job.status == "T", job.log()
    return job


def _manifest(estate: Any, job: JobResult, vm_dir: str = WEB) -> Manifest:
    (obj,) = [o for o in estate.fd.store.objects([job.jobid]) if o.object_name == vm_dir + "manifest.object.xml"]
    return from_xml(obj.inflated(), source="restore object")


def _texts(job: JobResult, type_name: str) -> List[str]:
    return [m.text for m in job.messages if m.type_name == type_name]


def _ours(world: Any, vm_name: str) -> List[str]:
    return [rp.id for rp in world.reference_points(world.vm(vm_name).id)]


def _qemu_check(path: Path) -> None:
    """``qemu-img check`` for VHDX; qemu cannot check VHD (vpc), so a VHD must convert cleanly instead."""
    if path.suffix.lower() == ".vhdx":
        check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True, check=False)
    else:
        check = subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(path) + ".raw"],
                               capture_output=True, text=True, check=False)
        Path(str(path) + ".raw").unlink(missing_ok=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _restore_and_check(estate: Any, where: Path, expected: Dict[str, str], vm_dir: str = WEB, *,
                       upto: int | None = None) -> None:
    job = estate.restore_to(where, upto=upto)
    assert job.status == "T", job.log()
    tree = where / vm_dir
    for index, (name, digest) in enumerate(expected.items()):
        restored = tree / "disks" / f"{index}-{name}"
        assert _sha(restored) == digest, f"{restored} is not the frozen source of the point"
        _qemu_check(restored)
    leftovers = [p.name for p in (tree / "disks").iterdir() if "+I+" in p.name or p.name.startswith(".")]
    assert leftovers == []
    # SHA256SUMS lists what the restore left whose plain digest the backup knew: sha256sum agrees.
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tree, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def _writes_a(world: Any, vm_id: str, rnd: random.Random) -> None:
    """Scattered 4 KiB writes, a large sequential write, a trim, and growth of the dynamic VHDX."""
    for disk in (0, 1):
        for _ in range(12):
            world.guest_write(vm_id, disk, rnd.randrange(0, 60 * MiB // 4096) * 4096, rnd.randbytes(4 * KiB))
    world.guest_write(vm_id, 1, 20 * MiB, rnd.randbytes(8 * MiB))  # large sequential write
    world.guest_trim(vm_id, 1, 40 * MiB, 3 * MiB + 512)  # whole blocks unmapped, a partial one zeroed
    world.guest_write(vm_id, 1, 60 * MiB, rnd.randbytes(3 * MiB))  # new blocks: the file grows


def _writes_b(world: Any, vm_id: str, rnd: random.Random) -> None:
    for _ in range(6):
        world.guest_write(vm_id, 0, rnd.randrange(0, 64 * MiB // 4096) * 4096, rnd.randbytes(4 * KiB))
    world.guest_write(vm_id, 1, 21 * MiB + 512, rnd.randbytes(1536))  # unaligned: whole sectors rewritten
    world.guest_trim(vm_id, 0, 32 * MiB, 32 * MiB)  # a whole 32 MiB block of the system disk


def test_chain_of_full_incremental_differential_and_a_restore_of_every_point(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("web01")
    rnd = random.Random(7)
    points: Dict[int, Dict[str, str]] = {}
    plan = [("F", None), ("I", _writes_a), ("I", _writes_b), ("D", None), ("I", _writes_a)]
    jobs: List[JobResult] = []
    chain: List[int] = []  # the jobs whose parts rebuild the disks of the newest point
    for level, writes in plan:
        if writes is not None:
            writes(world, vm.id, rnd)
        expected = _frozen(world, "web01", WEB_DISKS)
        job = _backup(estate, level)
        jobs.append(job)
        points[job.jobid] = expected
        manifest = _manifest(estate, job)
        assert manifest.backup.level is BackupLevel.from_bareos(level)
        # After every job: no checkpoint, our reference point plus (after an Incr/Diff) the Full's.
        assert world.snapshots(vm.id) == []
        assert len(_ours(world, "web01")) == (1 if level == "F" else 2), _ours(world, "web01")
        assert manifest.backup.reference_point is not None
        assert manifest.backup.reference_point.instance_id == f"Microsoft:{_ours(world, 'web01')[-1]}"
        disks = {f.index: f for d in manifest.disks for f in d.chain}
        for index, name in enumerate(expected):
            assert disks[index].image_digest is not None
            if disks[index].sha256 is not None:
                assert disks[index].sha256 == expected[name]
        names = estate.fd.list_files(job.jobid)
        if level == "F":
            assert WEB + "disks/0-web01-system.vhdx" in names
            chain = [job.jobid]
            continue
        base_job = jobs[0].jobid if level == "D" else jobs[-2].jobid
        assert manifest.backup.base_job_id == base_job
        deltas = [p for p in manifest.backup.parts if p.kind is PartKind.DELTA]
        assert [p.name for p in deltas] == [f"disks/0-web01-system.vhdx+I+{job.jobid}",
                                            f"disks/1-web01-data.vhdx+I+{job.jobid}"]
        assert {p.base_job_id for p in deltas} == {base_job}
        # Change tracking is used throughout (the Full's reference point serves the Differential).
        assert {p.method for p in deltas} <= {DeltaMethod.RCT, DeltaMethod.UNCHANGED}, job.log()
        assert not any(p.kind is PartKind.DISK for p in manifest.backup.parts)
        chain = [jobs[0].jobid] + ([job.jobid] if level == "D" else [*chain[1:], job.jobid])
        for disk in manifest.disks:
            assert [c.job_id for c in disk.chain[0].chain] == chain
        if writes is _writes_b:
            # Scattered 4 KiB writes into allocated blocks, a trim: the header section, the block table,
            # the written ranges (and the 1 MiB chunks of the trimmed block the writes hit before the
            # trim), not whole 32 MiB blocks.
            assert [p.size < limit for p, limit in zip(deltas, (8 * MiB, 2 * MiB))] == [True, True], deltas
    assert [len(points)] == [5]
    _assert_merges_still_work(world, "web01", world.reference_points(vm.id)[-1])

    # A restore of every point gives the frozen disks of that point.
    for n, job in enumerate(jobs):
        _restore_and_check(estate, tmp_path / f"point{n}", points[job.jobid], upto=job.jobid)


def test_a_vhd_disk_takes_the_digest_fallback_and_its_vhdx_neighbour_change_tracking(
        estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("legacy01")
    rnd = random.Random(11)
    full = _backup(estate, "F", vm="legacy01", host="HVSTANDALONE01")
    for disk in (0, 1, 2):
        world.guest_write(vm.id, disk, rnd.randrange(0, 7 * MiB // 4096) * 4096, rnd.randbytes(8 * KiB))
    world.guest_write(vm.id, 0, 30 * MiB, rnd.randbytes(5 * MiB))  # new blocks of the dynamic VHD
    expected = _frozen(world, "legacy01", LEGACY_DISKS)
    inc = _backup(estate, "I", vm="legacy01", host="HVSTANDALONE01")
    methods = {p.name.split("+")[0]: p.method for p in _manifest(estate, inc, LEGACY).backup.parts
               if p.kind is PartKind.DELTA}
    assert methods == {"disks/0-legacy01-system.vhd": DeltaMethod.HASH, "disks/1-legacy01-data.vhdx": DeltaMethod.RCT,
                       "disks/2-legacy01-swap.vhd": DeltaMethod.HASH}, inc.log()
    infos = _texts(inc, "M_INFO")
    assert any("legacy01-system.vhd: changed chunks by digest (VHD files have no resilient change tracking)" in t
               for t in infos), inc.log()
    assert _manifest(estate, inc, LEGACY).backup.base_job_id == full.jobid
    _restore_and_check(estate, tmp_path / "restored", expected, LEGACY)


def test_a_deleted_reference_point_and_lost_tracking_fall_back_to_digests_with_a_reason(
        estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("web01")
    rnd = random.Random(13)
    _backup(estate, "F")
    (ours,) = world.reference_points(vm.id)
    with world.lock:
        world.destroy_reference_point(vm, ours)
    world.guest_write(vm.id, 1, 5 * MiB, rnd.randbytes(64 * KiB))
    inc = _backup(estate, "I")
    warnings = _texts(inc, "M_WARNING")
    assert any("changed chunks by digest (the reference point of job 1 is gone" in w for w in warnings), inc.log()
    parts = [p for p in _manifest(estate, inc).backup.parts if p.kind is PartKind.DELTA]
    # (the merge of the Full's checkpoint rewrote both files' headers, so neither is unchanged)
    assert [p.method for p in parts] == [DeltaMethod.HASH, DeltaMethod.HASH]
    world.guest_write(vm.id, 0, 7 * MiB, rnd.randbytes(64 * KiB))
    world.lose_change_tracking(vm.id)
    expected = _frozen(world, "web01", WEB_DISKS)
    inc2 = _backup(estate, "I")
    assert any("change tracking could not be used" in w for w in _texts(inc2, "M_WARNING")), inc2.log()
    assert [p.method for p in _manifest(estate, inc2).backup.parts if p.kind is PartKind.DELTA] == [
        DeltaMethod.HASH, DeltaMethod.HASH]
    _restore_and_check(estate, tmp_path / "restored", expected)


def test_a_missing_delta_is_a_clear_error_and_never_leaves_a_corrupt_disk(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("web01")
    rnd = random.Random(17)
    _backup(estate, "F")
    world.guest_write(vm.id, 1, 9 * MiB, rnd.randbytes(64 * KiB))
    second = _backup(estate, "I")
    world.guest_write(vm.id, 1, 11 * MiB, rnd.randbytes(64 * KiB))
    _backup(estate, "I")
    names = [n for j in estate.fd.store.most_recent_jobids() for n in estate.fd.list_files(j)]
    without = sorted({n for n in names if not n.endswith(f"+I+{second.jobid}") and not n.endswith(".object.json")
                      and not n.endswith(".object.xml")})
    job = estate.restore_to(tmp_path / "restored", files=without)
    assert job.status != "T", job.log()
    fatal = _texts(job, "M_FATAL")
    assert any("a delta of the chain is missing, repeated or out of order" in f for f in fatal), job.log()
    disks = tmp_path / "restored" / WEB / "disks"
    # The system disk's delta of job 3 met the Full's image (job 2's was left out): refused before a
    # byte was written, and the file removed rather than left at a point the restore did not ask for.
    assert not (disks / "0-web01-system.vhdx").exists()
    assert any("0-web01-system.vhdx was removed rather than left half patched" in e for e in _texts(job, "M_ERROR"))
    assert not [p for p in disks.iterdir() if p.name.startswith(".") or "+I+" in p.name]


def test_a_missing_final_delta_fails_the_restore_instead_of_leaving_an_older_disk(
        estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    vm = world.vm("web01")
    rnd = random.Random(19)
    _backup(estate, "F")
    world.guest_write(vm.id, 1, 9 * MiB, rnd.randbytes(64 * KiB))
    _backup(estate, "I")
    world.guest_write(vm.id, 1, 11 * MiB, rnd.randbytes(64 * KiB))
    last = _backup(estate, "I")
    names = [n for j in estate.fd.store.most_recent_jobids() for n in estate.fd.list_files(j)]
    # The newest job's deltas are left out: every earlier delta applies cleanly, so the disks end at
    # the point of the job before; the newest manifest (and SHA256SUMS) says otherwise.
    without = sorted({n for n in names if not n.endswith(f"+I+{last.jobid}") and not n.endswith(".object.json")
                      and not n.endswith(".object.xml")})
    job = estate.restore_to(tmp_path / "restored", files=without)
    assert job.status != "T", job.log()
    text = "\n".join(_texts(job, "M_FATAL") + _texts(job, "M_ERROR"))
    assert f"not every disk is at the point of job {last.jobid}" in text, job.log()
    assert f"1-web01-data.vhdx+I+{last.jobid} of job {last.jobid}, was not applied" in text, job.log()
    disks = tmp_path / "restored" / WEB / "disks"
    assert not (disks / "1-web01-data.vhdx").exists()
    assert not (disks / "0-web01-system.vhdx").exists()  # its (unchanged) final delta is missing too
    assert not [p for p in disks.iterdir() if p.name.startswith(".") or "+I+" in p.name]


def test_two_vms_in_one_fd_keep_their_bases_apart(estate: Any) -> None:
    world = estate.sim.world
    web_full = _backup(estate, "F", vm="web01")
    db_full = _backup(estate, "F", vm="db01")
    world.guest_write(world.vm("web01").id, 1, 3 * MiB, b"\x33" * 4096)
    web_inc = _backup(estate, "I", vm="web01")
    db_inc = _backup(estate, "I", vm="db01")
    assert _manifest(estate, web_inc).backup.base_job_id == web_full.jobid
    db = _manifest(estate, db_inc, "@hyperv/HVCLUSTER01/db01/")
    assert db.backup.base_job_id == db_full.jobid
    assert [p.method for p in db.backup.parts if p.kind is PartKind.DELTA] in (
        [DeltaMethod.UNCHANGED], [DeltaMethod.RCT])
