"""hvsim.samba: a private smbd per simulated node (real Samba, real smbclient, real smbprotocol)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import List

import pytest
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBAuthenticationError, SMBResponseException
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from hvsim.fs import ClusterFileSystem
from hvsim.samba import SMBD, SambaCluster, SambaError, SambaServer

pytestmark = pytest.mark.samba

if not (shutil.which("smbpasswd") and shutil.which("smbclient") and os.access(SMBD, os.X_OK)):
    pytest.skip("Samba (smbd, smbpasswd, smbclient) is not installed", allow_module_level=True)


def _smbclient(
    srv: SambaServer, share: str, command: str, tmp: Path, password: str = ""
) -> subprocess.CompletedProcess[str]:
    # The password goes through a 0600 authentication file, never argv.
    auth = tmp / f"auth-{uuid.uuid4().hex}"
    auth.touch(mode=0o600)
    auth.write_text(f"username = {srv.user}\npassword = {password or srv.password}\n")
    argv = ["smbclient", f"//127.0.0.1/{share}", "-p", str(srv.port), "-A", str(auth), "-m", "SMB3"]
    try:
        return subprocess.run(
            [*argv, "-c", command],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        auth.unlink()


def _session(srv: SambaServer, password: str = "") -> Session:
    conn = Connection(uuid.uuid4(), "127.0.0.1", srv.port, require_signing=True)
    conn.connect(timeout=10)
    session = Session(
        conn, srv.user, password or srv.password, require_encryption=False, auth_protocol="ntlm"
    )
    try:
        session.connect()
    except BaseException:
        conn.disconnect(close=False)
        raise
    return session


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (reaped by whoever inherits it).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_start_serve_follow_csv_symlink_and_stop(tmp_path: Path) -> None:
    fs = ClusterFileSystem(tmp_path / "sim")
    (fs.csv_volume(1) / "vm").mkdir()
    (fs.csv_volume(1) / "vm" / "disk [1].vhdx").write_bytes(b"csv bytes")
    srv = SambaServer({"C$": fs.share_dir("HV01")})
    srv.start()
    try:
        assert srv.pid is not None and _alive(srv.pid)
        with socket.create_connection(srv.address, timeout=2):
            pass
        state = srv.dir
        assert state is not None
        # Every path smbd writes is inside the private directory: the system Samba is not touched.
        conf = (state / "smb.conf").read_text()
        for line in conf.splitlines():
            key = line.split("=")[0].strip()
            if key.endswith(("directory", "dir", "file", "passdb backend", "username map")):
                assert str(state) in line, line
        assert "server signing = mandatory" in conf and "server min protocol = SMB3" in conf
        get = f'get "ClusterStorage\\Volume1\\vm\\disk [1].vhdx" "{tmp_path / "out"}"'
        res = _smbclient(srv, "C$", get, tmp_path)
        assert res.returncode == 0, res.stderr + res.stdout
        assert (tmp_path / "out").read_bytes() == b"csv bytes"
        pid = srv.pid
    finally:
        srv.stop()
    assert not _alive(pid)
    assert not state.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    srv.stop()  # idempotent


def test_signing_mandatory_and_wrong_password_refused(tmp_path: Path) -> None:
    with SambaServer({"C$": tmp_path}) as srv:
        session = _session(srv)
        try:
            assert session.signing_required and not session.encrypt_data
            assert session.connection.dialect == 0x0311
        finally:
            session.connection.disconnect()
        with pytest.raises((SMBAuthenticationError, SMBResponseException)):
            _session(srv, password="not-the-password")
        res = _smbclient(srv, "C$", "ls", tmp_path, password="not-the-password")
        assert res.returncode != 0 and "LOGON_FAILURE" in res.stdout + res.stderr


def test_encryption_required_per_share_and_server(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with SambaServer({"C$": tmp_path / "a", "secure": tmp_path / "b"}, encrypted_shares={"secure"}) as srv:
        session = _session(srv)
        try:
            plain = TreeConnect(session, r"\\HV01\C$")
            plain.connect()
            secure = TreeConnect(session, r"\\HV01\secure")
            secure.connect()
            assert not plain.encrypt_data and secure.encrypt_data
        finally:
            session.connection.disconnect()
    with SambaServer({"C$": tmp_path / "a"}, encrypt=True) as srv:
        session = _session(srv)
        try:
            assert session.encrypt_data
        finally:
            session.connection.disconnect()


def test_cluster_one_smbd_per_node(tmp_path: Path) -> None:
    fs = ClusterFileSystem(tmp_path / "sim")
    nodes = ["HV01", "HV02", "HV03"]
    for n in nodes:
        (fs.share_dir(n) / f"{n}.txt").write_text(n)
    t0 = time.monotonic()
    extra = {"HV02": {"vms": fs.share_dir("HV02", "D")}}
    with SambaCluster({n: fs.share_dir(n) for n in nodes}, extra_shares=extra) as c:
        elapsed = time.monotonic() - t0
        ports = {c.endpoint(n)[1] for n in nodes}
        assert len(ports) == 3
        for n in nodes:
            res = _smbclient(c.servers[n], "C$", "ls", tmp_path)
            assert res.returncode == 0, res.stderr
            names: List[str] = res.stdout.split()
            assert f"{n}.txt" in names
            assert [m for m in nodes if m != n and f"{m}.txt" in names] == []
            assert "ClusterStorage" in names
        assert _smbclient(c.servers["HV02"], "vms", "ls", tmp_path).returncode == 0
        assert _smbclient(c.servers["HV01"], "vms", "ls", tmp_path).returncode != 0
        pids = [s.pid for s in c.servers.values()]
    print(f"3 smbd started in {elapsed:.2f}s")
    assert all(p is not None and not _alive(p) for p in pids)


def test_drop_connections_and_restart_keep_the_port(tmp_path: Path) -> None:
    with SambaServer({"C$": tmp_path}) as srv:
        session = _session(srv)
        try:
            assert len(srv.connection_pids()) == 1
            assert srv.drop_connections() == 1
            deadline = time.monotonic() + 10
            while srv.connection_pids() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.connection_pids() == []
            assert _smbclient(srv, "C$", "ls", tmp_path).returncode == 0  # daemon still serving
        finally:
            session.connection.disconnect(close=False)
        port, old_pid = srv.port, srv.pid
        srv.restart()
        assert srv.port == port and srv.pid != old_pid
        assert old_pid is not None and not _alive(old_pid)
        assert _smbclient(srv, "C$", "ls", tmp_path).returncode == 0


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SambaError, match="not a directory"):
        SambaServer({"C$": tmp_path / "missing"}).start()
    with pytest.raises(SambaError, match="unknown shares"):
        SambaServer({"C$": tmp_path}, encrypted_shares={"nope"})
    with pytest.raises(SambaError, match="one line"):
        SambaServer({"C$": tmp_path}, user="a\nb").start()
    srv = SambaServer({"C$": tmp_path})
    with srv, pytest.raises(SambaError, match="already started"):
        srv.start()
