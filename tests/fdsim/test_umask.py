"""The fd's umask (issue 11, point 4): lib/daemon.cc daemon_start adds 026 to the inherited umask,
and bareos-fd.service (Type=forking) always daemonizes; what a plugin creates during a job gets it."""

from __future__ import annotations

import os
import stat

from fdsim.fd import FD_UMASK_BITS

from .conftest import Env


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_folders_a_plugin_creates_during_a_restore_get_the_fds_umask(env: Env) -> None:
    assert FD_UMASK_BITS == 0o026
    env.write_spec([{"name": "/@u/deep/er/file", "size": 10}])
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    before = _umask()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    # the test plugin makes the folders with os.makedirs (0777 & ~umask) and the file with open() (0666)
    for folder in (env.where, env.where / "@u", env.where / "@u/deep", env.where / "@u/deep/er"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~(before | 0o026), folder
    assert stat.S_IMODE((env.where / "@u/deep/er/file").stat().st_mode) == 0o666 & ~(before | 0o026)
    assert _umask() == before  # the process's own umask is back once no job runs


def test_the_umask_holds_until_the_last_of_concurrent_jobs_ends(env: Env) -> None:
    env.write_spec([{"name": "/@c/f", "size": 1}])
    before = _umask()
    slow = env.sim.start("backup", env.cmd(misbehave="slow_parse"), plugin_dir=env.plugin_dir)
    env.wait_for("slow_parse")
    assert _umask() == before | 0o026
    quick = env.sim.backup(env.cmd(log=str(env.root / "other.jsonl")), plugin_dir=env.plugin_dir)
    assert quick.status == "T", quick.log()
    assert _umask() == before | 0o026  # the slow job still runs
    assert slow.wait(30).status == "T"
    assert _umask() == before
