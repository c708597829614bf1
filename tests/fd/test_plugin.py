"""The plugin through fdsim (the Bareos 25 python-fd emulation): real agent processes, real pipes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

from hvsim.samba import SMBD, SambaServer

from .conftest import AgentWatch, FdEnv, agent_pids, plugin_fatals, proc_field

SMB_SECRET_USER = "hvbackup"
ENV_SECRET = "Env-Only-Secret-7c1d"


def _tree(root: Path) -> Dict[str, bytes]:
    files = {
        "small.txt": b"hello hyper-v\n",
        "empty": b"",
        "random.bin": os.urandom(3 * 1024 * 1024 + 123),
        "sub dir/ünïcode name.vhdx": os.urandom(700_001),
        "sub dir/exact-256k": os.urandom(262144),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_650_000_000, 1_650_000_000))
    return files


def test_backup_and_restore_of_local_files_is_byte_identical(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    files = _tree(src)
    backup = fd.backup(f"source=files:paths={src}")
    assert backup.status == "T", backup.log()
    assert sorted(f.fname for f in backup.files) == sorted(f"@files{src}/{n}" for n in files)
    assert backup.bytes == sum(map(len, files.values()))
    assert plugin_fatals(backup) == []
    assert any("agent finished: 5 file(s)" in t for t in backup.texts())
    assert not any("threads still running" in t for t in backup.texts())
    # The plugin never copied data: every item was opened in do_io_in_core mode, no IO_READ calls.
    assert not any("plugin_io(read)" in c for c in backup.calls)

    where = fd.tmp / "restore"
    restore = fd.restore(where)
    assert restore.status == "T", restore.log()
    assert not any("plugin_io(write)" in c for c in restore.calls)
    for name, data in files.items():
        out = where / f"@files{src}" / name
        assert out.read_bytes() == data, name
        assert int(out.stat().st_mtime) == 1_650_000_000
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    leftovers = [p for p in where.rglob("*") if p.name.endswith(".bareos-hyperv-partial")]
    assert leftovers == []


def test_consecutive_jobs_each_in_a_fresh_interpreter_all_succeed(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    files = _tree(src)
    results = [fd.backup(f"source=files:paths={src}") for _ in range(3)]
    assert [r.status for r in results] == ["T", "T", "T"], [r.log() for r in results]
    restore = fd.restore(fd.tmp / "r")
    assert restore.status == "T", restore.log()
    assert (fd.tmp / "r" / f"@files{src}" / "random.bin").read_bytes() == files["random.bin"]
    again = fd.backup(f"source=files:paths={src}/small.txt")
    assert again.status == "T" and [f.fname for f in again.files] == [f"@files{src}/small.txt"]


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.img"
    with open(path, "wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: free on disk, seconds to stream; the test stops it early
    yield path


def _after_bytes(n: int, then: Callable[[int], None]) -> Callable[[int], bool]:
    """An AgentWatch action: once the agent has written ``n`` bytes, call ``then(pid)``."""

    def action(pid: int) -> bool:
        if proc_field(pid, "io", "wchar") < n:
            return False
        then(pid)
        return True

    return action


@pytest.mark.timeout(120)
def test_agent_killed_mid_file_is_a_clear_fatal_error(fd: FdEnv, big_file: Path) -> None:
    with AgentWatch(_after_bytes(16 * 1024**2, lambda pid: os.kill(pid, signal.SIGKILL))) as watch:
        result = fd.backup(f"source=files:paths={big_file}")
    assert watch.acted
    assert result.status == "f", result.log()
    fatals = plugin_fatals(result)
    assert len(fatals) == 1, result.log()
    assert re.match(rf"the agent process \(pid \d+\) was killed by SIGKILL while finishing @files{big_file}",
                    fatals[0]), fatals[0]
    assert 0 < result.files[0].bytes < 2 * 1024**3


@pytest.mark.timeout(120)
def test_cancel_mid_file_stops_the_agent(fd: FdEnv, big_file: Path) -> None:
    box: Dict[str, bool] = {}

    def cancel(pid: int) -> None:
        box["ok"] = fd.sim.cancel(None)

    with AgentWatch(_after_bytes(16 * 1024**2, cancel)) as watch:
        result = fd.backup(f"source=files:paths={big_file}")
    assert watch.acted and box["ok"]
    assert result.status == "A", result.log()
    assert plugin_fatals(result) == []
    assert any(re.search(r"stopping the agent \(pid \d+\) because the job was canceled: sending SIGTERM", t)
               for t in result.texts())
    assert result.bytes < 2 * 1024**3
    assert agent_pids() == []


def test_unknown_option_is_one_fatal_naming_it(fd: FdEnv, tmp_path: Path) -> None:
    result = fd.backup(f"source=files:paths={tmp_path}:bogus=1")
    assert result.status == "f"
    fatals = plugin_fatals(result)
    assert len(fatals) == 1 and fatals[0].startswith("unknown option 'bogus' in the plugin definition")
    assert fatals[0].endswith("\n") and fatals[0].count("\n") == 1


def test_missing_mandatory_options_are_reported_together(fd: FdEnv) -> None:
    result = fd.backup("source=smb:smb_share=C$")
    assert result.status == "f"
    fatals = plugin_fatals(result)
    assert len(fatals) == 1 and "mandatory options smb_server, smb_paths not set" in fatals[0]


def test_bad_agent_python_says_what_to_set(fd: FdEnv, tmp_path: Path) -> None:
    result = fd.backup(f"source=files:paths={tmp_path}:agent_python=/opt/nowhere/bin/python3")
    assert result.status == "f"
    fatals = plugin_fatals(result)
    assert len(fatals) == 1
    assert "agent_python /opt/nowhere/bin/python3 does not exist or is not executable" in fatals[0]
    assert "set agent_python= to the python3 of the environment where bareos-hyperv" in fatals[0]


def test_incremental_of_a_diagnostic_source_keeps_the_cores_change_check(fd: FdEnv, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    old = time.time() - 3600
    os.utime(tmp_path / "f", (old, old))
    assert fd.backup(f"source=files:paths={tmp_path}/f").status == "T"
    result = fd.backup(f"source=files:paths={tmp_path}/f", level="I")
    assert result.status == "T", result.log()
    assert plugin_fatals(result) == []
    assert any("Unchanged file skipped" in t for t in result.texts()), result.log()


def test_restore_never_replaces_existing_files_unless_asked(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    files = _tree(src)
    assert fd.backup(f"source=files:paths={src}").status == "T"
    where = fd.tmp / "r"
    target = where / f"@files{src}" / "small.txt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"keep me")
    result = fd.restore(where, replace="never")
    assert result.status == "T", result.log()
    assert target.read_bytes() == b"keep me"
    assert any(f"File skipped. Already exists: {target}" in t for t in result.texts())
    assert (where / f"@files{src}" / "random.bin").read_bytes() == files["random.bin"]
    assert fd.restore(where, replace="always").status == "T"
    assert target.read_bytes() == files["small.txt"]


samba = pytest.mark.skipif(not (shutil.which("smbpasswd") and os.access(SMBD, os.X_OK)),
                           reason="Samba is not installed")


@samba
@pytest.mark.samba
def test_passwords_never_reach_argv_environment_or_job_messages(fd: FdEnv, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cdrive"
    (root / "VMs").mkdir(parents=True)
    data = os.urandom(24 * 1024 * 1024)
    (root / "VMs" / "disk.vhdx").write_bytes(data)
    with SambaServer({"C$": root}, user=SMB_SECRET_USER, workdir=tmp_path) as server:
        creds = tmp_path / "hyperv.cred"
        creds.write_text(f"username={server.user}\npassword={server.password}\n")
        creds.chmod(0o600)
        monkeypatch.setenv("BAREOS_HYPERV_PASSWORD", ENV_SECRET)
        host, port = server.address
        opts = (f"source=smb:smb_server=HV01:smb_share=C$:smb_paths=VMs/disk.vhdx:smb_address={host}:"
                f"smb_port={port}:credentials_file={creds}")
        with AgentWatch() as watch:
            backup = fd.backup(opts)
        assert backup.status == "T", backup.log()
        # Account from the fd's environment instead of a file: it travels over the socket.
        monkeypatch.setenv("BAREOS_HYPERV_USERNAME", server.user)
        monkeypatch.setenv("BAREOS_HYPERV_PASSWORD", server.password)
        with AgentWatch() as watch_env:
            from_env = fd.backup(opts.replace(f":credentials_file={creds}", ""))
        assert from_env.status == "T", from_env.log()
        restore = fd.restore(tmp_path / "r")
        assert restore.status == "T", restore.log()
    assert (tmp_path / "r" / "@smb/HV01/C$/VMs/disk.vhdx").read_bytes() == data
    seen = list(watch.seen.values()) + list(watch_env.seen.values())
    assert len(seen) == 2
    for secret in (server.password, ENV_SECRET):
        for agent in seen:
            assert secret.encode() not in agent.cmdline
            assert secret.encode() not in agent.environ
        for result in (backup, from_env, restore):
            assert secret not in result.log()
            assert all(secret not in text for _, text in result.debug_messages)
    assert b"BAREOS_HYPERV_PASSWORD" not in seen[1].environ
