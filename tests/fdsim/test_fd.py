"""Backup and restore jobs through the emulated fd, with the stdlib-only test plugin of conftest."""

from __future__ import annotations

import os
import time
from typing import List

import pytest

from fdsim import fd as fdmod
from fdsim.fd import FdSim, FdSimError, JobResult
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env, make_data

KIB = 1024


def _calls(result: JobResult) -> List[str]:
    return [c.split("(")[0] for c in result.calls]


def _fatal(result: JobResult) -> str:
    return "\n".join(result.texts(bfd.M_FATAL))


def test_full_backup_call_order_io_sizes_and_restore(env: Env) -> None:
    items = [
        {"name": "/@test/small.txt", "size": 100, "pattern": "small", "acl": "user::rw-", "xattr": "v1"},
        {"name": "/@test/big.bin", "size": 600 * KIB, "pattern": "0123456789abcdef"},
        {"name": "/@test/piped.bin", "size": 1000 * KIB + 17, "pattern": "pipe!", "io": "core"},
    ]
    env.write_spec(items)
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    assert [f.fname for f in r.files] == [i["name"] for i in items]
    assert [f.bytes for f in r.files] == [i["size"] for i in items]
    assert r.bytes == sum(i["size"] for i in items)
    # Reference §3.1: load during fileset, 16, 3, parse again, then the per-item sequence.
    assert _calls(r)[:6] == ["load", "parse_plugin_definition", "handle_plugin_event", "handle_plugin_event",
                             "parse_plugin_definition", "start_backup_file"]
    assert r.calls[2:4] == ["handle_plugin_event(16)", "handle_plugin_event(3)"]
    assert r.calls[-2:] == ["handle_plugin_event(4)", "handle_plugin_event(2)"]
    first = r.calls[5:13]
    assert first == ["start_backup_file", "plugin_io(open)", "plugin_io(read)", "plugin_io(read)",
                     "plugin_io(close)", "get_acl", "get_xattr", "get_xattr"]
    reads = [e for e in env.log_of("io") if e["func"] == bfd.IO_READ]
    # small: 1 + EOF; big: ceil(600/256) = 3 + EOF; piped: none (the core reads the fd itself)
    assert len(reads) == 2 + 4
    assert {e["count"] for e in reads} == {fdmod.DEFAULT_BUFFER_SIZE}
    opens = [e for e in env.log_of("io") if e["func"] == bfd.IO_OPEN]
    assert [o["fname"] for o in opens] == [i["name"] for i in items]
    assert all(o["flags"] == os.O_RDONLY and o["filedes"] == -1 for o in opens)
    # The fd hands the plugin string through unchanged in savepkt.cmd and strips module_name for Python.
    sbf = env.log_of("start_backup_file")[0]
    assert sbf["cmd"] == env.cmd() and sbf["fname"] == "" and sbf["portable"] is True
    assert sbf["statp"] == "None"
    parse = env.log_of("parse")[0]["plugindef"]
    assert parse == f"spec={env.spec}:log={env.logfile}:"

    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    for it in items:
        assert (env.where / it["name"].lstrip("/")).read_bytes() == make_data(it)
    assert rr.jobids == [r.jobid]
    create = env.log_of("create_file")[0]
    assert create["ofname"] == str(env.where) + "/@test/small.txt"
    assert create["where"] == str(env.where) and create["regexwhere"] is None
    assert create["create_status"] == bfd.CF_ERROR and create["replace"] == ord("a")
    restore_opens = [e for e in env.log_of("io") if e["func"] == bfd.IO_OPEN]
    assert {(o["flags"], o["mode"]) for o in restore_opens} == {(577, 0o600)}
    # Reference §3.4 order, per item: set_file_attributes before IO_CLOSE, ACL/xattr after it.
    kinds = [e["kind"] for e in env.log()[:12]]
    assert kinds[:2] == ["init", "parse"]
    seq = [e["kind"] + (str(e.get("func", "")) if e["kind"] == "io" else "") for e in env.log()]
    start = seq.index("start_restore_file")
    assert seq[start:start + 9] == ["start_restore_file", "create_file", "io1", "io3",
                                    "set_file_attributes", "io4", "set_acl", "set_xattr", "end_restore_file"]
    assert env.log_of("set_acl")[0]["content"] == "user::rw-"
    assert env.log_of("set_xattr")[0]["value"] == "v1"
    # Event 5 is never seen: the module is only loaded by the first data stream.
    assert all(e["event"] != bfd.bEventStartRestoreJob for e in env.log_of("event"))
    assert [e["event"] for e in env.log_of("event")][-2:] == [bfd.bEventEndRestoreJob, bfd.bEventJobEnd]


def test_restore_with_do_io_in_core_on_restore_and_listing(env: Env) -> None:
    items = [{"name": "/@t/a", "size": 300 * KIB, "pattern": "A"}, {"name": "/@t/d", "kind": "dir"}]
    env.write_spec(items)
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    assert env.sim.list_files(r.jobid) == ["/@t/a", "/@t/d/"]
    assert "/@t/d/" in env.sim.store.format_listing(r.jobid)
    rr = env.sim.restore(env.cmd(), where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:restore_io=core")
    assert rr.status == "T", rr.log()
    assert (env.where / "@t/a").read_bytes() == make_data(items[0])
    assert (env.where / "@t/d").is_dir()
    assert not [e for e in env.log_of("io") if e["func"] == bfd.IO_WRITE]


def test_incremental_uses_since_time_and_restore_merges_full_and_incremental(env: Env) -> None:
    old = int(time.time()) - 3600
    env.write_spec([{"name": "/@i/a", "size": 1000, "pattern": "a1", "mtime": old},
                    {"name": "/@i/b", "size": 2000, "pattern": "b1", "mtime": old}])
    full = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert full.status == "T"
    time.sleep(1.1)  # the next job's since time is the full's start second
    env.write_spec([{"name": "/@i/a", "size": 1500, "pattern": "a2", "mtime": int(time.time()) + 5},
                    {"name": "/@i/b", "size": 2000, "pattern": "b1", "mtime": old}])
    env.clear_log()
    incr = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    assert incr.status == "T", incr.log()
    assert [f.fname for f in incr.files] == ["/@i/a"]
    assert any("Unchanged file skipped: /@i/b" in t for t in incr.texts(bfd.M_SKIPPED))
    start_job = next(e for e in env.log_of("event") if e["event"] == bfd.bEventStartBackupJob)
    assert start_job["since"] == env.sim.store.job(full.jobid).start_time
    assert start_job["level"] == ord("I") and start_job["type"] == ord("B")
    init = env.log_of("init")[0]
    assert init["type"] == ord("I") and init["level"] == ord("I")  # JT_SYSTEM during load

    rr = env.sim.restore(env.cmd(), where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    assert rr.jobids == [full.jobid, incr.jobid]
    assert (env.where / "@i/a").read_bytes() == make_data({"name": "/@i/a", "size": 1500, "pattern": "a2"})
    assert (env.where / "@i/b").read_bytes() == make_data({"name": "/@i/b", "size": 2000, "pattern": "b1"})
    # "restore job N only"
    only = env.sim.restore(jobid=incr.jobid, where=str(env.root / "only"), plugin_dir=env.plugin_dir)
    assert [f.fname for f in only.files] == ["/@i/a"]
    # file selection filter
    sel = env.sim.restore(None, where=str(env.root / "sel"), plugin_dir=env.plugin_dir, files=["/@i/b"])
    assert [f.fname for f in sel.files] == ["/@i/b"]


def test_incremental_without_full_is_upgraded(env: Env) -> None:
    env.write_spec([{"name": "/@u/a", "size": 10}])
    r = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    assert r.status == "T" and r.level == "F"
    assert any("Doing FULL backup" in t for t in r.texts(bfd.M_INFO))


def test_accurate_incremental_check_file_and_deleted_entries(env: Env) -> None:
    env.write_spec([{"name": f"/@acc/{n}", "size": 10, "mtime": 5000} for n in "abc"])
    full = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir, accurate=True)
    assert full.status == "T"
    env.write_spec([{"name": "/@acc/a", "size": 10, "mtime": 5000},
                    {"name": "/@acc/c", "size": 11, "mtime": 5000},
                    {"name": "/@acc/d", "size": 10, "mtime": 1}], keep=["/@acc/b"])
    env.clear_log()
    incr = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir, accurate=True)
    assert incr.status == "T", incr.log()
    # a unchanged (mcs equal), c changed size, d new even with an ancient mtime (accurate, not since)
    assert [f.fname for f in incr.files] == ["/@acc/c", "/@acc/d"]
    assert [e["fname"] for e in env.log_of("check_file")] == ["/@acc/b"]
    env.write_spec([{"name": "/@acc/a", "size": 10, "mtime": 5000},
                    {"name": "/@acc/c", "size": 11, "mtime": 5000},
                    {"name": "/@acc/d", "size": 10, "mtime": 1}])
    env.clear_log()
    incr2 = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir, accurate=True)
    assert [e["fname"] for e in env.log_of("check_file")] == ["/@acc/b"]
    deleted = [f for f in env.sim.store.files(incr2.jobid) if f.type == bfd.FT_DELETED]
    assert [d.fname for d in deleted] == ["/@acc/b"]
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert sorted(f.fname for f in rr.files) == ["/@acc/a", "/@acc/c", "/@acc/d"]


def test_restore_objects_round_trip_at_restore_and_next_incremental(env: Env) -> None:
    objs = [{"name": f"/@obj/o{n}", "kind": "object", "size": n, "pattern": f"{n}-"} for n in (998, 1003, 5000)]
    env.write_spec([*objs, {"name": "/@obj/file", "size": 5}])
    full = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert full.status == "T", full.log()
    stored = env.sim.store.objects([full.jobid])
    assert [o.object_compression for o in stored] == [0, 1, 1]
    env.clear_log()
    incr = env.sim.backup(env.cmd(), "I", plugin_dir=env.plugin_dir)
    assert incr.status == "T"
    kinds = [e["kind"] + str(e.get("event", "")) for e in env.log()]
    # previous job's objects arrive after the fileset and before bEventStartBackupJob
    assert kinds.index("restore_object") > kinds.index("event16")
    assert kinds.index("restore_object") < kinds.index("event3")
    got = env.log_of("restore_object")
    assert [g["data"].encode("latin-1") for g in got] == [make_data(o) for o in objs]
    assert {g["jobid"] for g in got} == {full.jobid}
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    got = env.log_of("restore_object")
    assert len(got) == 6  # objects of every job in the restore (full and incremental)
    assert got[0]["plugin_name"] == env.cmd() and got[0]["is_bytearray"] and got[0]["level"] == 32
    assert got[0]["object_len"] == 998 and got[0]["type"] == bfd.FT_RESTORE_FIRST
    # loaded by the first restore object, so event 5 is seen this time
    assert bfd.bEventStartRestoreJob in [e["event"] for e in env.log_of("event")]
    assert [f.fname for f in rr.files] == ["/@obj/file"]


def test_plugin_string_reaches_python_stripped_with_escapes(env: Env) -> None:
    env.write_spec([])
    cmd = (f"python3:module_path={env.plugin_dir}:spec={env.spec}:MODULE_NAME=bareos-fd-test\\files"
           f":log={env.logfile}:pw=a\\:b")
    r = env.sim.backup(cmd, plugin_dir=env.root / "nowhere")
    assert r.status == "T", r.log()
    assert env.log_of("parse")[0]["plugindef"] == f"spec={env.spec}:log={env.logfile}:pw=a\\:b:"
    assert env.log_of("parse")[0]["options"]["pw"] == "a:b"


def test_pluginoptions_override_at_restore(env: Env) -> None:
    env.write_spec([{"name": "/@o/a", "size": 3}])
    assert env.sim.backup(env.cmd(tag="orig"), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:tag=new:extra=1")
    assert rr.status == "T", rr.log()
    first = env.log_of("parse")[0]["plugindef"]
    assert first.startswith("tag=new:extra=1:spec=") and first.endswith(":tag=orig:")
    assert env.log_of("start_restore_file")[0]["options"]["tag"] == "new"
    # pluginoptions without a plugin name match nothing and are dropped silently
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.root / "r2"), plugin_dir=env.plugin_dir, pluginoptions="tag=x")
    assert env.log_of("start_restore_file")[0]["options"]["tag"] == "orig"


def test_replace_policy_on_core_created_files(env: Env) -> None:
    env.write_spec([{"name": "/@r/a", "size": 50, "mtime": 2000}])
    assert env.sim.backup(env.cmd(create="core"), plugin_dir=env.plugin_dir).status == "T"
    target = env.where / "@r/a"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"existing")
    os.utime(target, (1000, 1000))
    never = env.sim.restore(None, where=str(env.where), replace="never", plugin_dir=env.plugin_dir)
    assert target.read_bytes() == b"existing"
    assert any("Already exists" in t for t in never.texts(bfd.M_INFO))
    older = env.sim.restore(None, where=str(env.where), replace="ifolder", plugin_dir=env.plugin_dir)
    assert target.read_bytes() == b"existing" and any("Not older" in t for t in older.texts())
    newer = env.sim.restore(None, where=str(env.where), replace="ifnewer", plugin_dir=env.plugin_dir)
    assert newer.status == "T"
    assert target.read_bytes() == make_data({"name": "/@r/a", "size": 50})
    with pytest.raises(FdSimError):
        env.sim.restore(None, replace="sometimes")


def test_m_fatal_fails_job_and_suppresses_job_end(env: Env) -> None:
    env.write_spec([{"name": "/@f/a", "size": 3}])
    r = env.sim.backup(env.cmd(fail_at="start_backup_job"), plugin_dir=env.plugin_dir)
    assert r.status == "f"
    assert "start_backup_job failed on purpose\n" in r.texts(bfd.M_FATAL)
    assert r.files == []
    events = [e["event"] for e in env.log_of("event")]
    assert bfd.bEventEndBackupJob in events and bfd.bEventJobEnd not in events
    assert "Fatal error: python3-fd-mod: start_backup_job failed" in r.log()


def test_parse_error_aborts_the_walk(env: Env) -> None:
    env.write_spec([{"name": "/@p/a", "size": 3}])
    r = env.sim.backup(env.cmd(fail_at="parse"), plugin_dir=env.plugin_dir)
    assert r.status == "f" and r.files == []


def test_cancel_from_another_thread_during_do_io_in_core(env: Env) -> None:
    env.write_spec([{"name": "/@c/endless", "size": 1, "io": "core", "endless": True},
                    {"name": "/@c/never", "size": 1}])
    job = env.sim.start("backup", env.cmd(), plugin_dir=env.plugin_dir)
    env.wait_for("core_open")
    jobid = job.jobid
    assert env.sim.running() == [jobid]
    assert env.sim.cancel(jobid)
    r = job.wait(30)
    assert r.status == "A", r.log()
    events = env.log_of("event")
    cancel = [e for e in events if e["event"] == bfd.bEventCancelCommand]
    assert len(cancel) == 1 and cancel[0]["thread"] != cancel[0]["job_thread"]
    assert [e["event"] for e in events][-1] == bfd.bEventEndBackupJob  # no bEventJobEnd after cancel
    assert [f.fname for f in r.files] == ["/@c/endless"]
    assert env.sim.running() == [] and env.sim.cancel(jobid) is False
    assert env.sim.store.job(r.jobid).status == "A"


@pytest.mark.parametrize(("misbehave", "expected"), [
    ("no_statp", "PyStatPacketToNative() failed"),
    ("zero_type", "no type in startBackupFile packet"),
    ("return_none", "start_backup_file() returned NoneType"),
    ("bytes_object", "object needs to be of type bytearray"),
    ("readonly_cmd", "TypeError: readonly attribute"),
    ("int_no_read", "TypeError: attribute value type must be bool"),
    ("str_buf", "returned status 3 with buf of type str"),
    ("short_buf", "only 1 bytes in buf"),
])
def test_refusals(env: Env, misbehave: str, expected: str) -> None:
    kind = "object" if misbehave == "bytes_object" else "file"
    env.write_spec([{"name": "/@bad/x", "size": 3, "kind": kind}])
    r = env.sim.backup(env.cmd(misbehave=misbehave), plugin_dir=env.plugin_dir)
    assert r.status == "f", r.log()
    assert expected in _fatal(r)


def test_core_functions_refuse_foreign_threads(env: Env) -> None:
    env.write_spec([])
    r = env.sim.backup(env.cmd(misbehave="thread_message"), plugin_dir=env.plugin_dir)
    assert r.status == "T"
    assert env.log_of("thread_message")[0]["errors"] == ["JobMessage: plugin_ctx is unset"]


def test_unknown_plugin_and_missing_module(env: Env) -> None:
    r = env.sim.backup("python3:module_name=does-not-exist:a=b", plugin_dir=env.plugin_dir)
    assert r.status == "f"
    assert "ModuleNotFoundError" in _fatal(r) and _fatal(r).startswith("bareosfd: Traceback")
    r = env.sim.backup("bpipe:file=/x:reader=cat", plugin_dir=env.plugin_dir)
    assert r.status == "f" and 'Command plugin "bpipe:file=/x:reader=cat" not found.\n' in r.texts()
    r = env.sim.backup("python3:module_name=x:novalue", plugin_dir=env.plugin_dir)
    assert r.status == "f" and "Illegal argument novalue without value" in _fatal(r)


def test_three_jobs_in_one_process_each_in_a_fresh_interpreter(env: Env) -> None:
    env.write_spec([{"name": "/@3/a", "size": 70 * KIB}])
    results = [env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir) for _ in range(3)]
    assert [r.status for r in results] == ["T", "T", "T"]
    # each job imported the module afresh: __init__ ran once per job
    assert len(env.log_of("init")) == 3


def test_restore_without_backup_is_a_clear_error(tmp_path: os.PathLike[str]) -> None:
    sim = FdSim(str(tmp_path))
    with pytest.raises(FdSimError, match="no successful Full backup"):
        sim.restore(None)


def test_sparse_blocks_are_skipped_and_restored_with_seek(env: Env) -> None:
    count = fdmod.DEFAULT_BUFFER_SIZE - fdmod.SPARSE_HEADER_SIZE
    item = {"name": "/@s/zeros", "size": 3 * count + 10, "pattern": "\x00", "sparse": True}
    env.write_spec([item])
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    reads = [e for e in env.log_of("io") if e["func"] == bfd.IO_READ]
    assert {e["count"] for e in reads} == {count}
    rec = env.sim.store.files(r.jobid)[0]
    stored = env.sim.store.read_item(rec).data
    assert len(stored) == 1  # three full zero blocks below st_size were not stored
    env.clear_log()
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    seeks = [e for e in env.log_of("io") if e["func"] == bfd.IO_SEEK]
    assert [s["offset"] for s in seeks] == [3 * count]
    assert (env.where / "@s/zeros").read_bytes() == bytes(item["size"])  # type: ignore[arg-type]


def test_estimate_counts_items_without_io(env: Env) -> None:
    env.write_spec([{"name": "/@e/a", "size": 100}, {"name": "/@e/d", "kind": "dir"}, {"name": "/@e/b", "size": 5}])
    est = env.sim.estimate(env.cmd(), plugin_dir=env.plugin_dir)
    assert est.status == "T", est.log()
    assert [f.fname for f in est.files] == ["/@e/a", "/@e/d/", "/@e/b"]
    assert est.bytes == 105
    assert not env.log_of("io")
    assert env.sim.list_jobs() == []
