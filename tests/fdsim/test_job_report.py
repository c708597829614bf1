"""The director's job report at the end of a backup or restore (issue 11, item 8).

What an administrator reads in the job log: the termination line, the FD termination status, the
FD error count, the files written or restored.  dird backup.cc NativeBackupCleanup and
GenerateBackupSummary, dird restore.cc NativeRestoreCleanup and GenerateRestoreSummary, both after
backup.cc WaitForJobTermination (the fd's EndJob counts); lib/util.cc JobstatusToAscii.  The old
emulation had no report at all (JobResult.report did not exist).
"""

from __future__ import annotations

from typing import Any, Dict

from fdsim.fd import JobReport, JobResult
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env

OLD = 1_000


def _file(name: str, size: int = 10) -> Dict[str, Any]:
    return {"name": name, "size": size, "pattern": name[-1], "mtime": OLD}


def _report(result: JobResult) -> JobReport:
    assert result.report is not None, result.log()
    return result.report


def test_backup_ok_reports_files_and_bytes_written(env: Env) -> None:
    env.write_spec([_file("/@r/a", 100), _file("/@r/b", 2500)])
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    rep = _report(r)
    assert (rep.job_status, rep.termination, rep.fd_termination) == ("T", "Backup OK", "OK")
    assert (rep.files, rep.bytes, rep.errors) == (2, 2600, 0)
    assert rep.fields["FD Files Written"] == "2" and rep.fields["FD Bytes Written"] == "2,600"
    assert rep.fields["Backup Level"] == "Full"
    # what the job log ends with
    assert r.log().splitlines()[-1] == "  Termination:            Backup OK"
    assert "  FD termination status:  OK" in r.log()


def test_backup_with_an_m_error_ends_ok_with_warnings(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    r = env.sim.backup(env.cmd(fail_at="start_backup_job_error"), plugin_dir=env.plugin_dir)
    rep = _report(r)
    # The fd's own status stays T; NativeBackupCleanup turns T with JobErrors into W.
    assert r.status == "T" and r.fd_errors == 1
    assert (rep.job_status, rep.termination, rep.fd_termination) == ("W", "Backup OK -- with warnings", "OK")
    assert rep.errors == 1 and rep.fields["Non-fatal FD errors"] == "1"
    assert env.sim.store.job(r.jobid).status == "W"
    # W is a good job: the next Incremental of the same FileSet builds on it
    env.write_spec([_file("/@r/b")])
    incr = env.sim.backup(env.cmd(fail_at="start_backup_job_error"), "I", plugin_dir=env.plugin_dir)
    assert incr.level == "I" and _report(incr).job_status == "W", incr.log()


def test_backup_with_an_m_fatal_is_a_backup_error(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    r = env.sim.backup(env.cmd(fail_at="start_backup_job"), plugin_dir=env.plugin_dir)
    rep = _report(r)
    assert (rep.job_status, rep.termination, rep.fd_termination) == ("f", "*** Backup Error ***", "Fatal Error")
    assert rep.errors == 1 and rep.files == 0


def test_backup_refused_before_the_storage_command_never_hears_from_the_fd(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    r = env.sim.backup(env.cmd(fail_at="parse"), plugin_dir=env.plugin_dir)
    rep = _report(r)
    # No backup command, no EndJob: FDJobStatus keeps 0, which JobstatusToAscii prints as "".
    assert (rep.job_status, rep.termination, rep.fd_termination) == ("f", "*** Backup Error ***", "")
    assert (rep.errors, rep.files) == (2, 0)  # "Non-fatal FD errors: 2" as measured (reference §12)


def test_restore_ok_reports_expected_and_restored_files(env: Env) -> None:
    env.write_spec([_file("/@r/a", 10), _file("/@r/b", 20)])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir)
    rep = _report(rr)
    assert (rep.job_status, rep.termination, rep.fd_termination) == ("T", "Restore OK", "OK")
    assert (rep.expected_files, rep.files, rep.bytes, rep.errors) == (2, 2, 30, 0)
    assert rep.fields["Files Restored"] == "2" and rep.fields["FD Errors"] == "0"
    assert rr.log().splitlines()[-1] == "  Termination:            Restore OK"


def test_m_error_at_the_end_of_a_restore_still_reads_restore_ok_with_one_fd_error(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=end_restore_job_error")
    rep = _report(rr)
    # Measured on a real 25.1 (reference §12): job T, "Restore OK", FD Errors 1.
    assert (rep.job_status, rep.termination, rep.fd_termination, rep.errors) == ("T", "Restore OK", "OK", 1)


def test_m_fatal_at_the_end_of_a_restore_is_a_restore_error(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=end_restore_job_fatal")
    rep = _report(rr)
    # Measured: job f, "*** Restore Error ***", FD termination "Fatal Error", FD Errors 1.
    assert (rep.job_status, rep.termination, rep.fd_termination, rep.errors) == (
        "f", "*** Restore Error ***", "Fatal Error", 1)
    assert rep.files == 1  # the fd's EndJob still counts the file it restored


def test_m_error_during_a_restore_is_a_restore_error(env: Env) -> None:
    env.write_spec([{"name": "/@r/obj", "kind": "object", "data": "x", "index": 1}, _file("/@r/a")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=start_restore_job_error")
    rep = _report(rr)
    assert (rep.job_status, rep.termination, rep.fd_termination, rep.errors) == (
        "E", "*** Restore Error ***", "Error", 1)


def test_restore_that_restores_fewer_files_than_selected_warns_of_the_mismatch(env: Env) -> None:
    env.write_spec([_file("/@r/a"), _file("/@r/b")])
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()
    # The plugin refuses the first item at start_restore_file: the restore ends before create_file.
    rr = env.sim.restore(None, where=str(env.where), plugin_dir=env.plugin_dir,
                         pluginoptions="python3:fail_at=parse")
    rep = _report(rr)
    assert rep.expected_files == 2 and rep.files == 0
    assert [m.text for m in rep.messages if m.type == bfd.M_WARNING] == [
        "File count mismatch: expected=2 , restored=0\n"]
    assert rep.termination == "*** Restore Error ***"


def test_backup_canceled_before_the_storage_command_reads_backup_canceled(env: Env) -> None:
    env.write_spec([_file("/@r/a")])
    job = env.sim.start("backup", env.cmd(misbehave="slow_parse"), plugin_dir=env.plugin_dir)
    env.wait_for("slow_parse")
    assert env.sim.cancel(job.jobid)
    rep = _report(job.wait(30))
    # the director never waited for an EndJob (no backup command): no "No Job status" line
    assert (rep.job_status, rep.termination, rep.fd_termination, rep.files) == ("A", "Backup Canceled", "", 0)
    assert rep.messages == []
