"""Reads after a cancel (issue 11, item 9).

filed dir_cmd.cc CancelCmd raises bEventCancelCommand on the thread of the director's cancel
connection *before* it marks the job canceled (JS_Canceled), terminates the job's storage-daemon
connection and signals the job thread.  filed backup.cc reads and sends a file's data without a
cancel check, so the job thread keeps reading while the plugin handles the cancel, the read in
flight returns, and only its send fails (SendDataToSd, silent once canceled); then IO_CLOSE,
end_backup_file and bEventEndBackupJob, no bEventJobEnd.  The director stops waiting for the fd's
EndJob (dird fd_cmds.cc CancelFileDaemonJob): "Backup Canceled", FD Files Written 0 (measured on a
real 25.1 fd, reference §12).  The old emulation marked the job canceled first and stopped before
the next read.
"""

from __future__ import annotations

from typing import Any, Dict, List

from fdsim.fd import JobResult
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env


def _after_cancel(env: Env) -> List[Dict[str, Any]]:
    log = env.log()
    first = next(i for i, e in enumerate(log) if e["kind"] == "cancel_start"
                 or (e["kind"] == "event" and e["event"] == bfd.bEventCancelCommand))
    return log[first + 1:]


def _assert_canceled_report(r: JobResult) -> None:
    assert r.status == "A", r.log()
    assert r.report is not None
    assert (r.report.job_status, r.report.termination) == ("A", "Backup Canceled")
    assert (r.report.files, r.report.bytes) == (0, 0)
    assert r.report.fields["FD Files Written"] == "0"
    # WaitForJobTermination without an EndJob: FDJobStatus = JS_ErrorTerminated and a director line
    assert r.report.fd_termination == "Error"
    assert [m.text for m in r.report.messages] == ["No Job status returned from FD.\n"]
    assert r.texts(bfd.M_FATAL) == []  # nothing fatal while the job ran
    # the job's last call is bEventEndBackupJob (bEventJobEnd is not delivered after a cancel)
    assert r.calls[-1] == f"handle_plugin_event({bfd.bEventEndBackupJob})", r.calls[-3:]


def test_reads_go_on_while_the_plugin_handles_the_cancel_in_plugin_io(env: Env) -> None:
    env.write_spec([{"name": "/@c/endless", "size": 1, "endless": True}, {"name": "/@c/never", "size": 1}])
    job = env.sim.start("backup", env.cmd(misbehave="slow_cancel"), plugin_dir=env.plugin_dir)
    env.wait_for("io")
    assert env.sim.cancel(job.jobid)
    r = job.wait(30)
    _assert_canceled_report(r)
    after = _after_cancel(env)
    kinds = [(e["kind"], e.get("func"), e.get("event")) for e in after]
    reads = [k for k in kinds if k == ("io", bfd.IO_READ, None)]
    # the job thread read on during the 0.5 s handler, and after it (the read in flight)
    assert len(reads) >= 2, kinds
    end = kinds.index(("cancel_end", None, None))
    # then IO_CLOSE, and the backup's end event; no bEventJobEnd, and the next item never started
    assert ("io", bfd.IO_CLOSE, None) in kinds[end + 1:], kinds
    events = [e["event"] for e in env.log_of("event")]
    assert events[-1] == bfd.bEventEndBackupJob and bfd.bEventJobEnd not in events
    assert [e["name"] for e in env.log_of("start_backup_file")] == ["/@c/endless"]
    calls = [c.split("(")[0] for c in r.calls]
    assert calls.index("end_backup_file") > max(i for i, c in enumerate(calls) if c == "plugin_io")


def test_the_core_reads_the_pipe_on_while_the_plugin_handles_the_cancel(env: Env) -> None:
    env.write_spec([{"name": "/@c/piped", "size": 1, "io": "core", "endless": True, "throttle": True}])
    job = env.sim.start("backup", env.cmd(misbehave="slow_cancel"), plugin_dir=env.plugin_dir)
    env.wait_for("core_open")
    assert env.sim.cancel(job.jobid)
    r = job.wait(30)
    _assert_canceled_report(r)
    start, end = env.log_of("cancel_start")[0], env.log_of("cancel_end")[0]
    # The core kept draining the pipe during the handler (the old emulation stopped after at most
    # one 256 KiB buffer, and the feeder blocked once the 64 KiB pipe was full).
    assert end["fed"] - start["fed"] > 1024 * 1024, (start, end)
    assert r.files[0].bytes > 0


def test_a_core_read_blocked_on_a_silent_pipe_returns_once_canceled(env: Env) -> None:
    # The feeder stops at the cancel but keeps its end of the pipe open (closed only at IO_CLOSE):
    # the real fd's TIMEOUT_SIGNAL interrupts the blocked read, and the job still ends.
    env.write_spec([{"name": "/@c/piped", "size": 1, "io": "core", "endless": True, "throttle": True}])
    job = env.sim.start("backup", env.cmd(), plugin_dir=env.plugin_dir)
    env.wait_for("core_open")
    assert env.sim.cancel(job.jobid)
    r = job.wait(30)
    _assert_canceled_report(r)
    assert env.log_of("io")[-1]["func"] == bfd.IO_CLOSE


def test_restore_canceled_reports_restore_canceled(env: Env) -> None:
    env.write_spec([{"name": f"/@c/f{i}", "size": 10} for i in range(3)])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    job = env.sim.start("restore", None, where=str(env.where), plugin_dir=env.plugin_dir,
                        pluginoptions="python3:misbehave=slow_restore")
    env.wait_for("start_restore_file")
    assert env.sim.cancel(job.jobid)
    rr = job.wait(30)
    assert rr.status == "A", rr.log()
    assert rr.report is not None
    assert (rr.report.termination, rr.report.files, rr.report.expected_files) == ("Restore Canceled", 0, 3)
    assert "File count mismatch: expected=3 , restored=0\n" in [m.text for m in rr.report.messages]
