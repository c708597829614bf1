"""The storage-daemon phase of a backup: a fatal error before it cascades (reference §12).

A real Bareos 25.1 director sends the fd its ``storage`` command after the fileset, the
pluginoptions and the previous job's restore objects (dird backup.cc DoNativeBackup).  When the
job already had an M_FATAL by then, filed dir_cmd.cc StorageCmd cannot authenticate with the SD
(lib/bsock.cc TwoWayAuthenticate refuses for a canceled job): three more fatal lines, no backup
command at all, "Non-fatal FD errors: 2" and about 36 s until the job ends.  An error once the
backup runs (bEventStartBackupJob, start_backup_file) ends the job without that cascade.
"""

from __future__ import annotations

from typing import List

import pytest

from fdsim import fd as fdmod
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env

CASCADE = [fdmod.SD_AUTH_CANCELED, fdmod.SD_AUTH_FAILED, fdmod.DIR_BAD_STORAGE]


def _events(env: Env) -> List[int]:
    return [e["event"] for e in env.log_of("event")]


@pytest.mark.parametrize(("fail_at", "first_fatal"), [
    ("parse", "parse refused on purpose\n"),  # parse_plugin_definition at bEventPluginCommand
    ("end_fileset", "end_fileset failed on purpose\n"),  # bEventEndFileSet
])
def test_fatal_error_before_the_storage_command_cascades(env: Env, fail_at: str, first_fatal: str) -> None:
    env.write_spec([{"name": "/@s/a", "size": 3}])
    r = env.sim.backup(env.cmd(fail_at=fail_at), plugin_dir=env.plugin_dir)
    assert r.status == "f", r.log()
    assert r.texts(bfd.M_FATAL) == [first_fatal, *CASCADE]
    # who says what: the plugin, then the fd core twice, then the director
    assert [m.source for m in r.messages if m.type == bfd.M_FATAL] == ["plugin", "core", "core", "director"]
    assert r.messages[-1].render(r.jobid).startswith("fdsim-dir JobId")
    assert "Fatal error: Bad response to Storage command: wanted 2000 OK storage, got 2902 Bad storage" in r.log()
    # lib/message.cc: the fd's JobErrors become 1 on its first fatal line, the director's too.
    assert (r.fd_errors, r.director_errors, r.non_fatal_fd_errors) == (1, 1, 2)
    assert r.modelled_seconds == fdmod.CANCELED_BEFORE_STORAGE_SECONDS
    assert r.run_time >= 36.0 > r.elapsed
    # No backup command: no bEventStartBackupJob, no start_backup_file, no bEventEndBackupJob, no JobEnd.
    events = _events(env)
    assert bfd.bEventStartBackupJob not in events and bfd.bEventEndBackupJob not in events
    assert bfd.bEventJobEnd not in events
    assert "start_backup_file" not in [c.split("(")[0] for c in r.calls]
    assert r.files == [] and env.sim.store.job(r.jobid).status == "f"


def test_fatal_error_once_the_backup_runs_does_not_cascade(env: Env) -> None:
    env.write_spec([{"name": "/@s/a", "size": 3}])
    r = env.sim.backup(env.cmd(fail_at="start_backup_job"), plugin_dir=env.plugin_dir)
    assert r.status == "f", r.log()
    assert r.texts(bfd.M_FATAL) == ["start_backup_job failed on purpose\n"]
    assert (r.non_fatal_fd_errors, r.modelled_seconds) == (1, 0.0)
    assert bfd.bEventEndBackupJob in _events(env)


def test_error_in_start_backup_file_gives_two_lines_and_no_cascade(env: Env) -> None:
    env.write_spec([{"name": "/@s/a", "size": 3}])
    r = env.sim.backup(env.cmd(misbehave="return_none"), plugin_dir=env.plugin_dir)
    assert r.status == "f", r.log()
    assert len(r.texts(bfd.M_FATAL)) == 1  # fdsim's TypeError line; the C side reads -1 (no second line)
    assert fdmod.SD_AUTH_CANCELED not in r.texts()
    assert r.director_errors == 0 and r.modelled_seconds == 0.0


def test_cancel_during_the_fileset_also_fails_the_storage_handshake(env: Env) -> None:
    env.write_spec([{"name": "/@s/a", "size": 3}])
    job = env.sim.start("backup", env.cmd(misbehave="slow_parse"), plugin_dir=env.plugin_dir)
    env.wait_for("slow_parse")
    assert env.sim.cancel(job.jobid)
    r = job.wait(30)
    assert r.status == "A", r.log()
    assert r.texts(bfd.M_FATAL) == CASCADE
    assert bfd.bEventStartBackupJob not in _events(env)


def test_a_clean_backup_has_no_director_lines_and_no_modelled_time(env: Env) -> None:
    env.write_spec([{"name": "/@s/a", "size": 3}])
    r = env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir)
    assert r.status == "T", r.log()
    assert [m for m in r.messages if m.source == "director"] == []
    assert (r.director_errors, r.non_fatal_fd_errors, r.modelled_seconds) == (0, 0, 0.0)
    assert 0 < r.elapsed == r.run_time
