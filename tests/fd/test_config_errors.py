"""Configuration errors reach the administrator as one fatal line, without the storage cascade.

In a real Bareos 25.1 fd an M_FATAL while the fileset is parsed cancels the job before its
storage-daemon handshake: three more fatal lines, "Non-fatal FD errors: 2" and about 36 s
(reference §12; fdsim models it, see tests/fdsim/test_storage_phase.py).  The plugin therefore
only remembers problems while it parses and reports them all, once, before it starts the agent.
"""

from __future__ import annotations

from pathlib import Path

from fdsim import fd as fdmod
from fdsim.pyfiles import bareosfd as bfd

from .conftest import FdEnv, plugin_fatals

CASCADE = (fdmod.SD_AUTH_CANCELED, fdmod.SD_AUTH_FAILED, fdmod.DIR_BAD_STORAGE)


def _no_cascade(result: fdmod.JobResult) -> None:
    assert not any(text in result.texts() for text in CASCADE), result.log()
    assert result.director_errors == 0 and result.modelled_seconds == 0.0
    assert bfd.bEventEndBackupJob in [int(c.split("(")[1].rstrip(")")) for c in result.calls
                                      if c.startswith("handle_plugin_event(")] or result.job_type == "R"


def test_unknown_option_is_the_jobs_only_fatal_line(fd: FdEnv, tmp_path: Path) -> None:
    result = fd.backup(f"source=files:paths={tmp_path}:bogus=1")
    assert result.status == "f"
    assert result.texts(bfd.M_FATAL) == plugin_fatals(result)  # nothing from the core or the director
    (fatal,) = plugin_fatals(result)
    assert fatal.startswith("unknown option 'bogus' in the plugin definition")
    _no_cascade(result)
    assert result.non_fatal_fd_errors == 1 and result.files == []
    # refused at the first start_backup_file, before any agent was started, with bRC_Stop
    assert [c for c in result.calls if c.startswith("start_backup_file")] == ["start_backup_file"]


def test_every_problem_of_the_definition_in_one_line(fd: FdEnv, tmp_path: Path) -> None:
    # The host_map was written with \: in bareos-dir.conf, which the director turned into ':'.
    result = fd.backup("source=files:timeout=soon:bogus=1:"
                       "host_map=HV01=127.0.0.1:5985,HV02=127.0.0.1:5986:agent_timeout=30")
    assert result.status == "f"
    (fatal,) = result.texts(bfd.M_FATAL)
    assert fatal.startswith("the plugin definition has 4 problems: (1) option timeout=soon is not a whole number")
    assert "(2) unknown option 'bogus'" in fatal
    assert ("(3) '5985,HV02=127.0.0.1:5986' after host_map=HV01=127.0.0.1 is not an option (key=value)"
            in fatal)
    assert "write host_map=HV01=127.0.0.1#5985,HV02=127.0.0.1#5986" in fatal
    assert "(4) mandatory option paths not set" in fatal
    _no_cascade(result)


def test_the_old_escaped_spelling_and_the_new_one_both_work(fd: FdEnv, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    for host_map in ("HV01=127.0.0.1\\:5985,HV02=127.0.0.1\\:5986", "HV01=127.0.0.1#5985,HV02=127.0.0.1#5986"):
        result = fd.backup(f"source=files:host_map={host_map}:paths={tmp_path}/f:staging_path=C$/VMs/stage")
        assert result.status == "T", result.log()


def test_a_bad_restore_option_fails_the_restore_once(fd: FdEnv, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    assert fd.backup(f"source=files:paths={tmp_path}/f").status == "T"
    result = fd.restore(tmp_path / "r", pluginoptions="python3:restore_missing_switch=drop:restore_storage=\\VMs")
    assert result.status == "f", result.log()
    (fatal,) = result.texts(bfd.M_FATAL)
    assert fatal.startswith("the plugin definition has 2 problems: (1) option restore_missing_switch=drop is not "
                            "one of fail, disconnect")
    assert "write the UNC path with forward slashes" in fatal
    _no_cascade(result)
    assert not (tmp_path / "r").exists()
