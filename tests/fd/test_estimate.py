"""bconsole ``estimate`` of the plugin through the fd emulation (JobId 0, no plugin_io): the agent
lists and nothing is read; a configuration error is one line and the estimate still ends OK."""

from __future__ import annotations

import os

from fdsim.fd import JobResult

from .conftest import PLUGIN_DIR, REPO, FdEnv


def _estimate(fd: FdEnv, options: str, *, listing: bool = False) -> JobResult:
    return fd.sim.estimate(f"python3:module_name=bareos-fd-hyperv:{options}", listing=listing,
                           plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])


def test_estimate_of_local_files_lists_them_without_reading(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(1_000_000))
    (src / "b").write_bytes(b"x" * 10)
    est = _estimate(fd, f"source=files:paths={src}", listing=True)
    assert est.status == "T", est.log()
    assert est.console[-1] == "2000 OK estimate files=2 bytes=1,000,010"
    assert [line.rsplit("  ", 1)[1] for line in est.console if line.startswith("-rw-")] == [
        f"@files{src}/a", f"@files{src}/b"]
    assert not any("plugin_io" in c for c in est.calls)
    assert fd.sim.list_jobs() == []


def test_estimate_with_an_unknown_option_prints_one_line_and_ends_ok(fd: FdEnv) -> None:
    est = _estimate(fd, "source=files:paths=/etc/hostname:no_such_option=1")
    lines = est.console
    assert lines[-1] == "2000 OK estimate files=0 bytes=0"
    problems = [line for line in lines[:-1] if "no_such_option" in line]
    assert len(problems) == 1 and problems[0].startswith("python3-fd-mod: "), lines
