"""Several jobs at once in one emulated fd (issue 11, item 11).

A real fd runs jobs concurrently (Client "Maximum Concurrent Jobs", default 20), each on its own
thread with its own sub-interpreter; the director's catalog takes their rows as they come.  The
old emulation's catalog raced: two jobs saving at once failed with FileNotFoundError on
store/catalog.tmp.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import List

from fdsim.fd import FdSim, JobResult

from .conftest import Env, make_data

JOBS = 6


def _spec(env: Env, n: int) -> str:
    spec = env.root / f"spec-{n}.json"
    items = [{"name": f"/@c{n}/f{i}", "size": 50_000 + i, "pattern": f"{n}-{i}"} for i in range(20)]
    spec.write_text(json.dumps({"items": items}))
    return f"python3:module_name=bareos-fd-testfiles:spec={spec}:log={env.root}/log-{n}.jsonl"


def _run_together(env: Env, cmds: List[str]) -> List[JobResult]:
    barrier = threading.Barrier(len(cmds))
    results: List[JobResult] = [None] * len(cmds)  # type: ignore[list-item]

    def run(i: int) -> None:
        barrier.wait()
        results[i] = env.sim.backup(cmds[i], plugin_dir=env.plugin_dir, job_name=f"job{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cmds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_backups_and_restores_in_one_fd(env: Env, tmp_path: Path) -> None:
    cmds = [_spec(env, n) for n in range(JOBS)]
    results = _run_together(env, cmds)
    assert [r.status for r in results] == ["T"] * JOBS, [r.log() for r in results if r.status != "T"]
    assert len({r.jobid for r in results}) == JOBS
    # the catalog holds every job with its files, also for a fresh fd reading it back
    for sim in (env.sim, FdSim(env.root / "store")):
        jobs = {j.jobid: j for j in sim.list_jobs()}
        assert sorted(jobs) == sorted(r.jobid for r in results)
        for r in results:
            assert jobs[r.jobid].status == "T" and len(sim.list_files(r.jobid)) == 20
    # concurrent restores of each FileSet into directories of their own
    restores: List[JobResult] = [None] * JOBS  # type: ignore[list-item]
    barrier = threading.Barrier(JOBS)

    def restore(i: int) -> None:
        barrier.wait()
        restores[i] = env.sim.restore(cmds[i], where=str(tmp_path / f"r{i}"), plugin_dir=env.plugin_dir)

    threads = [threading.Thread(target=restore, args=(i,)) for i in range(JOBS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status for r in restores] == ["T"] * JOBS, [r.log() for r in restores if r.status != "T"]
    for n in range(JOBS):
        for i in range(20):
            item = {"name": f"/@c{n}/f{i}", "size": 50_000 + i, "pattern": f"{n}-{i}"}
            assert (tmp_path / f"r{n}" / f"@c{n}" / f"f{i}").read_bytes() == make_data(item)
