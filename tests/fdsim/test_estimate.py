"""bconsole ``estimate`` as a real Bareos 25.1 fd runs it (reference §3.6, §12).

dird ua_cmds.cc EstimateCmd; filed dir_cmd.cc EstimateCmd, estimate.cc MakeEstimate, fd_plugins.cc
PluginEstimate; lib/message.cc Jmsg (JobId 0: straight to the console); lib/attr.cc PrintLsOutput.
"""

from __future__ import annotations

import re
import stat

from fdsim.fd import ls_line
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env

ITEMS = [{"name": "/@e/a", "size": 100}, {"name": "/@e/d", "kind": "dir"}, {"name": "/@e/b", "size": 1234567}]


def test_estimate_ends_with_the_fds_ok_line_and_counts_every_examined_item(env: Env) -> None:
    env.write_spec(ITEMS)
    est = env.sim.estimate(env.cmd(), plugin_dir=env.plugin_dir)
    assert est.status == "T", est.log()
    # files= is num_files_examined (the directory too), bytes= the st_size of regular files only
    assert est.console[-1] == "2000 OK estimate files=3 bytes=1,234,667"
    assert est.log().splitlines()[-1] == "2000 OK estimate files=3 bytes=1,234,667"
    assert est.report is None
    assert env.sim.list_jobs() == []


def test_estimate_runs_as_jobid_0_with_no_backup_job_events(env: Env) -> None:
    env.write_spec(ITEMS)
    env.sim.estimate(env.cmd(), level="I", plugin_dir=env.plugin_dir)
    events = [e["event"] for e in env.log_of("event")]
    # the fileset command's bEventEndFileSet, then bEventJobEnd once the fd leaves its command loop;
    # no pluginoptions, no restore objects, no storage command, no bEventStartBackupJob/EndBackupJob
    assert bfd.bEventStartBackupJob not in events
    assert bfd.bEventEndBackupJob not in events
    assert events[-1] == bfd.bEventJobEnd
    assert all(e["level"] == ord("I") for e in env.log_of("event"))
    assert not env.log_of("io")
    assert not env.log_of("restore_object")


def test_a_fatal_message_during_an_estimate_neither_fails_nor_stops_it(env: Env) -> None:
    # lib/message.cc Jmsg: with JobId 0 the text goes to the console before any status bookkeeping
    env.write_spec(ITEMS)
    est = env.sim.estimate(env.cmd(fail_at="end_fileset"), plugin_dir=env.plugin_dir)
    assert est.status == "T"
    assert est.console[0] == "python3-fd-mod: end_fileset failed on purpose"  # no "Fatal error:"
    assert [f.fname for f in est.files] == ["/@e/a", "/@e/d/", "/@e/b"]
    assert est.console[-1] == "2000 OK estimate files=3 bytes=1,234,667"


def test_a_refused_parse_lists_nothing_and_still_ends_ok(env: Env) -> None:
    env.write_spec(ITEMS)
    est = env.sim.estimate(env.cmd(fail_at="parse"), plugin_dir=env.plugin_dir)
    assert est.files == []
    # parsed at the fileset command and again at bEventEstimateCommand, which then ends the listing
    refused = "python3-fd-mod: parse refused on purpose"
    assert est.console == [refused, refused, "2000 OK estimate files=0 bytes=0"]


def test_estimate_listing_prints_ls_lines_of_the_save_packets(env: Env) -> None:
    env.write_spec(ITEMS)
    est = env.sim.estimate(env.cmd(), listing=True, plugin_dir=env.plugin_dir)
    lines = est.console[:-1]
    assert len(lines) == 3
    pattern = re.compile(r"^(?P<mode>[-d][-rwx]{9})  +\d+ (?P<user>.{8}) (?P<group>.{8}) *(?P<size>\d+) "
                         r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (?P<name>.+)$")
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["mode"], m["size"], m["name"]) for m in parsed if m] == [
        ("-rw-r-----", "100", "/@e/a"), ("drwxr-xr-x", "0", "/@e/d"), ("-rw-r-----", "1234567", "/@e/b")]
    assert est.console[-1] == "2000 OK estimate files=3 bytes=1,234,667"


def test_ls_line_layout() -> None:
    pkt = {"type": bfd.FT_LNK, "fname": "/x/l", "link": "/x/t",
           "statp": {"st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_uid": 0, "st_gid": 0, "st_size": 4,
                     "st_ctime": 0}}
    line = ls_line(pkt)
    # encode_mode, "  %2d ", "%-8.8s %-8.8s", "%12.12s ", encode_time
    assert line.startswith("lrwxrwxrwx" + "   1 " + "root     root    " + " " * 11 + "4 ")
    assert line.endswith("  /x/l -> /x/t")
