"""Samba's smbclient as the data mover of large sequential reads, against a real smbd.

The reader must deliver the same bytes as smbprotocol, keep the password out of smbclient's argv and
environment, leave no process or private file behind, and carry on with smbprotocol from the first
byte it had not delivered when smbclient dies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest

from bareos_hyperv.storage.locations import SmbLocation
from bareos_hyperv.storage.smb import SmbReader
from bareos_hyperv.storage.smbclient_mover import (
    DEFAULT_MOVER,
    MOVER_ENV,
    MoverReader,
    SmbclientCommand,
    mover_setting,
    path_is_movable,
)
from tests.storage.conftest import SmbFactory

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("smbclient") is None,
                                reason="Samba's smbclient is not installed: apt-get install smbclient")


def _random_file(path: Path, size: int) -> bytes:
    data = hashlib.shake_256(path.name.encode()).digest(size)
    path.write_bytes(data)
    return data


def _loc(node_dir: Path, name: str) -> SmbLocation:
    return SmbLocation("HV01", "C$", f"{node_dir.name}\\{name}")


def _drain(reader: object, bufsize: int = MiB) -> bytes:
    out = bytearray()
    buf = bytearray(bufsize)
    while True:
        n = reader.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            return bytes(out)
        out += buf[:n]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_streams_a_large_file_byte_for_byte_and_cleans_up(smb_factory: SmbFactory, node_dir: Path) -> None:
    data = _random_file(node_dir / "disk [1] ü.vhdx", 24 * MiB + 7)
    st = smb_factory(mover="auto", mover_min_size=MiB)
    with st.open_read(_loc(node_dir, "disk [1] ü.vhdx")) as r:
        assert isinstance(r, MoverReader)
        first = bytearray(MiB)
        assert r.readinto(first) == MiB
        pid = r.mover_pid
        assert pid > 0 and _alive(pid)
        # Data flows: the private directory (auth file, smb.conf) is already gone.
        private = Path(os.readlink(f"/proc/{pid}/cwd").replace(" (deleted)", ""))
        assert private.name.startswith("bareos-hyperv-smbclient-")
        assert not private.exists()
        rest = _drain(r)
        assert r.tell() == len(data) and r.readinto(bytearray(10)) == 0
        assert r.fallbacks == 0
    assert bytes(first) + rest == data
    assert not _alive(pid) and not private.exists()


def test_password_is_never_in_argv_or_environment(smb_factory: SmbFactory, node_dir: Path,
                                                  samba_cluster: object) -> None:
    _random_file(node_dir / "p.bin", 8 * MiB)
    password = samba_cluster.servers["HV01"].password  # type: ignore[attr-defined]
    st = smb_factory(mover="smbclient")
    with st.open_read(_loc(node_dir, "p.bin")) as r:
        assert r.readinto(bytearray(64 * 1024)) > 0
        pid = r.mover_pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"-A" in cmdline.split(b"\0")
        assert password.encode() not in cmdline and password.encode() not in environ
        assert password not in repr(r)


def test_private_files_are_mode_0600_in_a_0700_directory(tmp_path: Path) -> None:
    command = SmbclientCommand("/usr/bin/smbclient", server="HV01", host="127.0.0.1", port=445, share="C$",
                               path="a\\b.vhdx", username="DOM\\backup", password="s3cret-Pa55")
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    command.write_private_files(str(private))
    auth = (private / "auth").read_text()
    assert "username = backup" in auth and "domain = DOM" in auth and "password = s3cret-Pa55" in auth
    for name in ("auth", "smb.conf"):
        assert stat.S_IMODE((private / name).stat().st_mode) == 0o600
    argv = command.argv(str(private))
    assert "s3cret-Pa55" not in " ".join(argv) and "s3cret-Pa55" not in repr(command)
    assert argv[argv.index("-A") + 1] == str(private / "auth")
    assert "--client-protection=sign" in argv


def test_smbclient_killed_mid_stream_continues_with_smbprotocol(
        smb_factory: SmbFactory, node_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _random_file(node_dir / "k.bin", 40 * MiB + 3)
    st = smb_factory(mover="smbclient")
    with caplog.at_level(logging.WARNING, logger="bareos_hyperv.storage.smbclient_mover"), \
            st.open_read(_loc(node_dir, "k.bin")) as r:
        head = bytearray(3 * MiB)
        got = 0
        while got < len(head):
            got += r.readinto(memoryview(head)[got:])
        os.kill(r.mover_pid, signal.SIGKILL)  # the process this reader started
        rest = _drain(r, 256 * 1024)
        assert r.fallbacks == 1
    assert bytes(head) + rest == data
    lines = [rec.getMessage() for rec in caplog.records]
    assert any("continuing with smbprotocol" in line and "k.bin" in line for line in lines), lines


def test_seek_and_ranged_reads_go_through_smbprotocol(smb_factory: SmbFactory, node_dir: Path) -> None:
    data = _random_file(node_dir / "s.bin", 12 * MiB)
    st = smb_factory(mover="smbclient")
    with st.open_read(_loc(node_dir, "s.bin")) as r:
        assert isinstance(r, MoverReader)
        assert r.read_at(5 * MiB, 100) == data[5 * MiB: 5 * MiB + 100]
        assert r.read(1000) == data[:1000]
        assert r.seek(7 * MiB) == 7 * MiB
        assert r.mover_pid == 0  # the stream moved to smbprotocol
        assert r.read() == data[7 * MiB:]


def test_when_smbprotocol_moves_the_data(smb_factory: SmbFactory, node_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _random_file(node_dir / "small.bin", MiB)
    _random_file(node_dir / "semi;colon.bin", MiB)
    assert isinstance(smb_factory().open_read(_loc(node_dir, "small.bin")), SmbReader)  # the default
    assert isinstance(smb_factory(mover="auto").open_read(_loc(node_dir, "small.bin")), SmbReader)  # < 64 MiB
    assert isinstance(smb_factory(mover="smbprotocol", mover_min_size=0).open_read(_loc(node_dir, "small.bin")),
                      SmbReader)
    # smbclient's -c cannot name a file with ';' in it
    assert isinstance(smb_factory(mover="smbclient").open_read(_loc(node_dir, "semi;colon.bin")), SmbReader)
    monkeypatch.setenv("PATH", str(node_dir))  # no smbclient to be found
    r = smb_factory(mover="smbclient").open_read(_loc(node_dir, "small.bin"))
    assert isinstance(r, SmbReader)
    r.close()


def test_mover_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MOVER_ENV, raising=False)
    assert mover_setting() == DEFAULT_MOVER == "smbprotocol"
    monkeypatch.setenv(MOVER_ENV, "AUTO")
    assert mover_setting() == "auto"
    assert mover_setting("smbclient") == "smbclient"
    monkeypatch.setenv(MOVER_ENV, "ftp")
    assert mover_setting() == DEFAULT_MOVER
    assert path_is_movable("VMs\\a b [1].vhdx") and not path_is_movable('a"b') and not path_is_movable("a;b")
