"""What a real Bareos 25.1 fd does at restore time (reference §3.4, §7, §12), through the emulated fd:
the order of restore objects, when ``bVarWhere`` is set, where restore-time ``pluginoptions`` go,
which files of a backup chain come back, and the job status after errors at the end of a restore.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env, make_data

OLD = int(time.time()) - 3600
NEW = int(time.time()) + 3600


def _obj(name: str, object_type: int, index: int) -> Dict[str, Any]:
    return {"name": name, "kind": "object", "type": object_type, "index": index, "data": name}


def _file(name: str, pattern: str, mtime: int = OLD, size: int = 10) -> Dict[str, Any]:
    return {"name": name, "size": size, "pattern": pattern, "mtime": mtime}


def _kinds(env: Env) -> List[str]:
    return [e["kind"] + (str(e["event"]) if e["kind"] == "event" else "") for e in env.log()]


# -- 1. restore objects: every JobId's, by ObjectIndex, before bEventStartRestoreJob -------------------

def test_restore_objects_of_the_chain_come_by_object_index_not_by_job(env: Env) -> None:
    rf, pc = bfd.FT_RESTORE_FIRST, bfd.FT_PLUGIN_CONFIG
    env.write_spec([_obj("/@ro/full-rf3", rf, 3), _obj("/@ro/full-pc1", pc, 1), _obj("/@ro/full-rf1", rf, 1),
                    _file("/@ro/a", "a1")])
    full = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert full.status == "T", full.log()
    env.write_spec([_obj("/@ro/incr-rf2", rf, 2), _obj("/@ro/incr-rf1", rf, 1), _obj("/@ro/incr-pc0", pc, 0),
                    _file("/@ro/b", "b1", NEW)])
    incr = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    assert incr.status == "T" and incr.level == "I", incr.log()
    env.clear_log()

    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    assert rr.jobids == [full.jobid, incr.jobid]
    got = env.log_of("restore_object")
    # dird SendGlobalRestoreObjects: FT_RESTORE_FIRST of all jobs ORDER BY ObjectIndex (ties in job
    # order), then FT_PLUGIN_CONFIG the same way; the old emulation gave them job by job.
    assert [(g["name"], g["jobid"]) for g in got] == [
        ("/@ro/full-rf1", full.jobid), ("/@ro/incr-rf1", incr.jobid), ("/@ro/incr-rf2", incr.jobid),
        ("/@ro/full-rf3", full.jobid), ("/@ro/incr-pc0", incr.jobid), ("/@ro/full-pc1", full.jobid)]
    kinds = _kinds(env)
    last_object = len(kinds) - 1 - kinds[::-1].index("restore_object")
    assert last_object < kinds.index(f"event{bfd.bEventStartRestoreJob}") < kinds.index("start_restore_file")
    assert [f.fname for f in rr.files] == ["/@ro/a", "/@ro/b"]

    # Only some files marked: still the objects of every job of the chain.
    env.clear_log()
    one = env.sim.restore(None, where=str(env.root / "one"), plugin_dir=env.plugin_dir, files=["/@ro/b"])
    assert [f.fname for f in one.files] == ["/@ro/b"]
    assert len(env.log_of("restore_object")) == 6
    # jobid=N: job N's objects only, still in ObjectIndex order.
    env.clear_log()
    only = env.sim.restore(jobid=incr.jobid, where=str(env.root / "only"), plugin_dir=env.plugin_dir)
    assert only.status == "T", only.log()
    assert [g["name"] for g in env.log_of("restore_object")] == ["/@ro/incr-rf1", "/@ro/incr-rf2", "/@ro/incr-pc0"]


# -- 2. bVarWhere: None while loading and during objects, set from event 5, None again at the end ------

def test_bvarwhere_is_set_only_between_start_and_end_of_the_restore(env: Env) -> None:
    env.write_spec([_obj("/@w/obj", bfd.FT_RESTORE_FIRST, 1), _file("/@w/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    where = str(env.where)
    assert env.log_of("init")[0]["where"] is None
    assert env.log_of("parse")[0]["where"] is None  # the first restore object loaded the module
    assert [o["where"] for o in env.log_of("restore_object")] == [None]
    events = {e["event"]: e["where"] for e in env.log_of("event")}
    assert events[bfd.bEventStartRestoreJob] == where
    assert events[bfd.bEventEndRestoreJob] is None
    assert events[bfd.bEventJobEnd] is None
    assert env.log_of("start_restore_file")[0]["where"] == where
    create = env.log_of("create_file")[0]
    assert create["var_where"] == where and create["where"] == where
    assert create["ofname"] == where + "/@w/a"


def test_where_slash_gives_relative_names_and_empty_where(env: Env, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Item names like "@probe/a/f0" (reference §12) or "@PROXMOX/..." have no leading "/".
    env.write_spec([_file("@w/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    monkeypatch.chdir(tmp_path)  # the relative ofname lands in the fd's working directory
    rr = env.sim.restore(None, where="/", plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    # lib/attr.cc BuildAttrOutputFnames: where "" (RestoreCmd turns "/" into nothing) -> name as saved
    creates = env.log_of("create_file")
    assert [c["ofname"] for c in creates] == ["@w/a"]
    assert {c["where"] for c in creates} == {""} and {c["var_where"] for c in creates} == {""}
    assert {c["regexwhere"] for c in creates} == {None}
    # No restore object: the first item loads the module, after event 5, so where is already set.
    assert env.log_of("init")[0]["where"] == ""
    assert (tmp_path / "@w/a").read_bytes() == make_data(_file("@w/a", "a"))


def test_bvarwhere_is_none_at_backup(env: Env) -> None:
    env.write_spec([_file("/@w/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    assert {e["where"] for e in env.log_of("event")} == {None}


# -- 3. restore-time pluginoptions: the first parse_plugin_definition only, in front ------------------

def test_restore_pluginoptions_reach_the_first_parse_only_when_objects_load_the_module(env: Env) -> None:
    env.write_spec([_obj("/@p/obj", bfd.FT_RESTORE_FIRST, 1), _file("/@p/a", "a1")])
    backup_cmd = env.cmd(tag="orig")
    assert env.sim.backup(backup_cmd, plugin_dir=env.plugin_dir).status == "T"
    env.write_spec([_obj("/@p/obj2", bfd.FT_RESTORE_FIRST, 2), _file("/@p/b", "b1", NEW)])
    assert env.sim.backup(backup_cmd, "I", plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:tag=new:extra=1")
    assert rr.status == "T", rr.log()
    stripped = backup_cmd.split(":", 2)[2] + ":"  # what the C side passes on: module_name gone, ':' added
    parses = [p["plugindef"] for p in env.log_of("parse")]
    # bEventRestoreObject -> load -> parse with <override> + backup-time string; then once per item.
    assert parses == ["tag=new:extra=1:" + stripped, stripped, stripped]
    assert env.log_of("init")[0]["plugindef"] == parses[0]
    kinds = _kinds(env)
    assert kinds.index("parse") < kinds.index("restore_object")
    assert [s["options"]["tag"] for s in env.log_of("start_restore_file")] == ["new", "new"]
    assert env.log_of("start_restore_file")[0]["options"]["extra"] == "1"


def test_restore_pluginoptions_without_objects_reach_the_first_item_parse_only(env: Env) -> None:
    env.write_spec([_file("/@p/a", "a1"), _file("/@p/b", "b1")])
    backup_cmd = env.cmd(tag="orig")
    assert env.sim.backup(backup_cmd, plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:tag=new")
    assert rr.status == "T", rr.log()
    stripped = backup_cmd.split(":", 2)[2] + ":"
    assert [p["plugindef"] for p in env.log_of("parse")] == ["tag=new:" + stripped, stripped]
    assert [s["options"]["tag"] for s in env.log_of("start_restore_file")] == ["new", "new"]
    # Loaded by the first data stream: bEventStartRestoreJob came before and was not seen.
    assert bfd.bEventStartRestoreJob not in [e["event"] for e in env.log_of("event")]


def test_backup_pluginoptions_arrive_after_the_fileset_string_unchanged(env: Env) -> None:
    env.write_spec([_file("/@p/a", "a1")])
    backup_cmd = env.cmd(tag="orig")
    r = env.sim.backup(backup_cmd, plugin_dir=env.plugin_dir, pluginoptions="python3:tag=new:extra=1")
    assert r.status == "T", r.log()
    stripped = backup_cmd.split(":", 2)[2] + ":"
    # fileset (load + parse), then the pluginoptions alone, then bEventBackupCommand.
    assert [p["plugindef"] for p in env.log_of("parse")] == [stripped, "tag=new:extra=1:", stripped]
    assert env.log_of("parse")[-1]["options"]["tag"] == "orig"


# -- 4. files of several jobs -------------------------------------------------------------------------

def test_chain_full_differential_incremental_restores_newest_version_in_jobid_order(env: Env) -> None:
    env.write_spec([_file("/@m/a", "a1"), _file("/@m/b", "b1"), _file("/@m/only-full", "f")])
    full = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    env.write_spec([_file("/@m/a", "a2", NEW), _file("/@m/b", "b1"), _file("/@m/only-i1", "i1", NEW)])
    incr1 = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    assert [f.fname for f in incr1.files] == ["/@m/a", "/@m/only-i1"]
    env.write_spec([_file("/@m/a", "a1"), _file("/@m/b", "b3", NEW), _file("/@m/only-d1", "d1", NEW)])
    diff = env.sim.backup(env.cmd(), "D", plugin_dir=env.plugin_dir)
    assert [f.fname for f in diff.files] == ["/@m/b", "/@m/only-d1"]
    assert env.sim.store.most_recent_jobids() == [full.jobid, diff.jobid]
    after_diff = env.sim.restore(None, where=str(env.root / "d"), plugin_dir=env.plugin_dir)
    # after a Differential: the Full's and the Differential's files only (not the earlier Incremental's)
    assert [f.fname for f in after_diff.files] == ["/@m/a", "/@m/only-full", "/@m/b", "/@m/only-d1"]
    assert (env.root / "d/@m/b").read_bytes() == make_data(_file("/@m/b", "b3"))

    env.write_spec([_file("/@m/a", "a4", NEW), _file("/@m/only-i2", "i2", NEW)])
    incr2 = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    assert rr.jobids == [full.jobid, diff.jobid, incr2.jobid]
    # (JobId, FileIndex) order; a name in several jobs once, from the newest; every other name of each job
    assert [f.fname for f in rr.files] == ["/@m/only-full", "/@m/b", "/@m/only-d1", "/@m/a", "/@m/only-i2"]
    assert [c["ofname"] for c in env.log_of("create_file")] == [str(env.where) + f.fname for f in rr.files]
    assert (env.where / "@m/a").read_bytes() == make_data(_file("/@m/a", "a4"))
    assert not (env.where / "@m/only-i1").exists()


def test_most_recent_restore_never_mixes_filesets(env: Env) -> None:
    env.write_spec([_file("/@x/a", "a")])
    one = env.sim.backup(env.cmd(tag="one"), plugin_dir=env.plugin_dir)
    two = env.sim.backup(env.cmd(tag="two"), plugin_dir=env.plugin_dir)
    env.write_spec([_file("/@x/b", "b", NEW)])
    incr = env.sim.backup(env.cmd(tag="one"), "I", plugin_dir=env.plugin_dir)
    assert [r.level for r in (one, two, incr)] == ["F", "F", "I"]
    # The newest backup is FileSet "one"'s Incremental: its chain is FileSet "one"'s Full + it,
    # not FileSet "two"'s Full (the old emulation restored JobIds [two, incr]).
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.jobids == [one.jobid, incr.jobid]
    assert [f.fname for f in rr.files] == ["/@x/a", "/@x/b"]
    two_only = env.sim.restore(env.cmd(tag="two"), where=str(env.root / "two"), plugin_dir=env.plugin_dir)
    assert two_only.jobids == [two.jobid]


# -- 5. job status after errors at the end of a restore --------------------------------------------------

def test_m_fatal_at_end_restore_job_fails_the_restore_without_job_end(env: Env) -> None:
    env.write_spec([_file("/@e/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=end_restore_job_fatal")
    assert rr.status == "f", rr.log()
    assert rr.fd_errors == 1 and rr.errors == 0
    assert [f.fname for f in rr.files] == ["/@e/a"]
    events = [e["event"] for e in env.log_of("event")]
    assert events[-1] == bfd.bEventEndRestoreJob and bfd.bEventJobEnd not in events
    assert env.sim.store.job(rr.jobid).status == "f"


def test_m_error_at_end_restore_job_leaves_the_restore_ok_with_an_fd_error(env: Env) -> None:
    env.write_spec([_file("/@e/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=end_restore_job_error")
    # filed RestoreCmd checks JobErrors before it raises event 6: the old emulation said "E".
    assert rr.status == "T", rr.log()
    assert rr.fd_errors == 1 and rr.errors == 1
    assert "end_restore_job error on purpose\n" in rr.texts(bfd.M_ERROR)
    assert [e["event"] for e in env.log_of("event")][-2:] == [bfd.bEventEndRestoreJob, bfd.bEventJobEnd]
    assert env.sim.store.job(rr.jobid).status == "T"


def test_m_error_before_the_end_of_the_restore_still_ends_it_in_error(env: Env) -> None:
    env.write_spec([_obj("/@e/obj", bfd.FT_RESTORE_FIRST, 1), _file("/@e/a", "a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=start_restore_job_error")
    assert rr.status == "E", rr.log()
    assert rr.fd_errors == 1 and [f.fname for f in rr.files] == ["/@e/a"]
