"""Concurrent jobs in one fd (issue 11, item 11): four backups of different VMs at once, then two
restores to directories at once, in one FdSim process (a real fd runs up to 20 jobs together).

Three clustered VMs of the default simulated estate (web01 running, db01 off, file01 saved) and the
standalone legacy01, each job with its own agent, sub-interpreter, checkpoint and staging folder.
Every job must end T with no checkpoint and no staging folder left, and each VM must be restorable.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from fdsim.fd import JobResult

from .conftest import PLUGIN_DIR, REPO

pytestmark = pytest.mark.usefixtures("no_agent_left")

VMS: List[Tuple[str, str]] = [("HVCLUSTER01", "web01"), ("HVCLUSTER01", "db01"), ("HVCLUSTER01", "file01"),
                              ("HVSTANDALONE01", "legacy01")]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _together(calls: List[Callable[[], JobResult]], timeout: float = 600) -> List[JobResult]:
    """Start every call at the same moment on a thread of its own; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: Dict[int, JobResult] = {}
    errors: Dict[int, BaseException] = {}

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # handed to the test below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"job-{i}") for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a concurrent job did not end"
    assert not errors, errors
    return [results[i] for i in range(len(calls))]


def _fileset(estate: Any, host: str, vm: str) -> str:
    return f"python3:module_name=bareos-fd-hyperv:{estate.options(host=host, vm=vm)}"


def test_four_backups_at_once_then_two_restores_at_once(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    filesets = [_fileset(estate, host, vm) for host, vm in VMS]

    def backup(cmd: str) -> Callable[[], JobResult]:
        return lambda: estate.fd.backup(cmd, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])

    jobs = _together([backup(cmd) for cmd in filesets])
    for (_, vm), job in zip(VMS, jobs):
        assert job.status == "T", (vm, job.log())
        assert job.report is not None and job.report.termination == "Backup OK", (vm, job.log())
    assert len({j.jobid for j in jobs}) == len(VMS)
    for (host, vm), job in zip(VMS, jobs):
        names = estate.fd.list_files(job.jobid)
        assert names[0] == f"@hyperv/{host}/{vm}/manifest.xml", names
        assert all(n.startswith(f"@hyperv/{host}/{vm}/") for n in names), names  # nothing of another job
        assert any("/disks/" in n for n in names)
        ref = world.vm(vm)
        assert world.snapshots(ref.id) == [], vm  # no checkpoint left
        assert len(world.reference_points(ref.id)) == 1, vm
    staging = [p for p in world.root.rglob("bareos-hyperv-staging*") if any(p.iterdir())]
    assert staging == []

    # Two restores to directories at once, of two of the jobs (one clustered, one standalone).
    picks = [0, 3]

    def restore(i: int) -> Callable[[], JobResult]:
        return lambda: estate.fd.restore(filesets[i], where=str(tmp_path / f"r{i}"), plugin_dir=PLUGIN_DIR,
                                         extra_sys_path=[REPO])

    backs = _together([restore(i) for i in picks])
    for i, back in zip(picks, backs):
        host, vm = VMS[i]
        assert back.status == "T", (vm, back.log())
        assert back.jobids == [jobs[i].jobid]
        tree = tmp_path / f"r{i}" / "@hyperv" / host / vm
        sums = (tree / "SHA256SUMS").read_text().splitlines()
        digests = dict(reversed(line.split("  ", 1)) for line in sums)
        assert any(name.startswith("disks/") for name in digests), digests
        for name, digest in digests.items():
            assert _sha(tree / name) == digest, (vm, name)
