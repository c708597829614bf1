"""bareos_hyperv.storage.smb against a real Samba smbd (signing mandatory, SMB3 only)."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from smbprotocol.connection import Connection, SigningAlgorithms
from smbprotocol.header import Commands, Smb2Flags, SMB2HeaderResponse
from smbprotocol.open import SMB2WriteRequest

from bareos_hyperv.errors import StorageError
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.storage import smb as smb_module
from bareos_hyperv.storage.base import (
    StorageAccessDenied,
    StorageAuthError,
    StorageConnectionError,
    StorageExists,
    StorageNotFound,
)
from bareos_hyperv.storage.delta import DeltaApplier
from bareos_hyperv.storage.locations import LocationResolver, SmbLocation, parse_share_map
from bareos_hyperv.storage.smb import SmbOptions, SmbStorage, message_signature
from hvsim.fs import ClusterFileSystem
from hvsim.samba import SMBD, SambaCluster, SambaServer

from .conftest import SmbFactory
from .test_delta import CHUNK, _delta, _hashes

pytestmark = pytest.mark.samba

MiB = 1024 * 1024
AWKWARD = ["a b.bin", "[brackets] (1).vhdx", "Grüße ünïcødé.txt", "日本語 ファイル.avhdx"]


def _random_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes (fast, reproducible) and return their SHA-256."""
    h = hashlib.sha256()
    block = hashlib.shake_256(str(seed).encode()).digest(MiB)
    with path.open("wb") as f:
        left = size
        i = 0
        while left:
            # Vary each MiB so a misplaced block cannot go unnoticed.
            chunk = (i.to_bytes(8, "little") + block[8:])[: min(MiB, left)]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


def _sha_reader(reader: object, bufsize: int = MiB) -> str:
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    while True:
        n = reader.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            return h.hexdigest()
        h.update(view[:n])


def _loc(node_dir: Path, name: str = "", server: str = "HV01") -> SmbLocation:
    rel = node_dir.name + (f"\\{name}" if name else "")
    return SmbLocation(server, "C$", rel)


if not os.access(SMBD, os.X_OK):
    pytest.skip("Samba (smbd) is not installed: apt-get install samba", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SambaServer]:
    """A private smbd for tests that disturb the server (drops, restarts, stops)."""
    (tmp_path / "c").mkdir()
    srv = SambaServer({"C$": tmp_path / "c"})
    with srv:
        yield srv


def _storage(srv: SambaServer, **opts: object) -> SmbStorage:
    options = SmbOptions(retry_delay=0.01, **opts)  # type: ignore[arg-type]
    return SmbStorage(srv.user, srv.password, endpoints={"HV01": srv.address}, options=options)


# -- signing without copies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "algorithm"),
    [(0x0311, SigningAlgorithms.AES_GMAC), (0x0311, SigningAlgorithms.AES_CMAC), (0x0302, None), (0x0210, None)],
)
@pytest.mark.parametrize("command", [Commands.SMB2_READ, Commands.SMB2_CANCEL])
def test_signature_matches_smbprotocol(dialect: int, algorithm: int | None, command: int) -> None:
    conn = Connection(uuid.UUID(int=1), "127.0.0.1", 445)
    conn.dialect = dialect
    conn.signing_algorithm_id = algorithm
    header = SMB2HeaderResponse()
    header["command"] = command
    header["message_id"] = 0x1234
    header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SERVER_TO_REDIR)
    header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
    header["data"] = os.urandom(100_003)
    key = bytes(range(16))
    expected = conn._generate_signature(header.pack(), key, 0x1234, True, command)
    assert message_signature(conn, header, key, True) == expected
    data = header["data"].get_value()
    header["data"] = data[:-1] + bytes([data[-1] ^ 1])  # one bit flipped
    assert message_signature(conn, header, key, True) != expected


class _CapturingTcp(smb_module._FastTcp):  # type: ignore[misc]
    """A transport that records each message instead of sending it."""

    def __init__(self) -> None:
        self.sent: list = []
        self.connected = True

    def send_parts(self, parts: Any) -> None:
        self.sent.append(b"".join(bytes(p) for p in parts))


@pytest.mark.parametrize(
    ("dialect", "algorithm", "signed"),
    [(0x0311, SigningAlgorithms.AES_GMAC, True), (0x0311, SigningAlgorithms.AES_CMAC, True),
     (0x0302, None, True), (0x0210, None, True), (0x0311, None, False)],
)
@pytest.mark.parametrize("dfs", [False, True])
def test_fast_write_sends_what_smbprotocol_sends(dialect: int, algorithm: int | None, signed: bool,
                                                 dfs: bool) -> None:
    # The hand-built WRITE (header, body, payload in three pieces, signed piecewise) must be the
    # very bytes smbprotocol's own path would put on the wire for the same request.
    conn = smb_module._FastConnection(uuid.UUID(int=1), "127.0.0.1", 445)
    conn.transport = _CapturingTcp()
    conn.dialect = dialect
    conn.signing_algorithm_id = algorithm
    conn.supports_multi_credit = True
    conn.max_write_size = 8 * MiB
    conn._t_exc = None
    tree = SimpleNamespace(tree_connect_id=7, is_dfs_share=dfs, encrypt_data=False)
    session = SimpleNamespace(session_id=0x4455, signing_required=signed, signing_key=bytes(range(16)),
                              encrypt_data=False, tree_connect_table={7: tree})
    tree.session = session
    conn.session_table[session.session_id] = session
    file_id = bytes(range(100, 116))
    handle = SimpleNamespace(connection=conn, tree_connect=tree, file_id=file_id)
    payload = os.urandom(MiB + 17)
    for path in ("fast", "stock"):
        conn.sequence_window = {"low": 40, "high": 400}
        if path == "fast":
            request = smb_module._send_write(handle, 123_456_789, memoryview(payload))
        else:
            msg = SMB2WriteRequest()
            msg["length"] = len(payload)
            msg["offset"] = 123_456_789
            msg["file_id"] = file_id
            msg["buffer"] = payload
            request = conn._send([msg], session_id=session.session_id, tree_id=7)[0]
        assert conn.outstanding_requests[40] is request
        assert conn.sequence_window["low"] == 40 + 17  # (1 MiB + 17 - 1) // 64 KiB + 1 credits
    fast, stock = conn.transport.sent
    assert len(fast) == 64 + 48 + len(payload)
    assert fast == stock


def test_writer_takes_views_across_chunk_boundaries(server: SambaServer) -> None:
    # Writes of views that straddle the chunk buffers, from one reused source, land in order.
    payload = os.urandom(3 * MiB + 5)
    with _storage(server, write_size=MiB, write_depth=2) as st, st.create(SmbLocation("HV01", "C$", "w2.tmp")) as w:
        for i in range(0, len(payload), 700_001):
            w.write(memoryview(payload)[i : i + 700_001])
    assert (server.shares["C$"] / "w2.tmp").read_bytes() == payload


def test_fast_path_is_in_use_with_this_smbprotocol() -> None:
    # If smbprotocol moved the internals the fast path overrides, SmbStorage falls back to the
    # stock (slower) classes; this says so instead of letting throughput drop silently.
    assert smb_module._FAST_PATH


# -- negotiation ------------------------------------------------------------------------------------


def test_signed_smb311_session(smb: SmbStorage, node_dir: Path) -> None:
    info = smb.connection_info(_loc(node_dir))
    assert info["dialect"] == "0x0311"
    assert info["signing"] is True
    assert info["encrypted"] is False
    assert info["max_read_size"] >= MiB


def test_encrypted_share_and_server(tmp_path: Path) -> None:
    for d in ("c", "secure"):
        (tmp_path / d).mkdir()
    (tmp_path / "secure" / "x.bin").write_bytes(b"secret data" * 1000)
    shares = {"C$": tmp_path / "c", "secure": tmp_path / "secure"}
    with SambaServer(shares, encrypted_shares={"secure"}) as srv, _storage(srv) as st:
        assert st.connection_info(SmbLocation("HV01", "C$", ""))["encrypted"] is False
        loc = SmbLocation("HV01", "secure", "x.bin")
        assert st.connection_info(loc)["encrypted"] is True
        with st.open_read(loc) as r:
            assert r.read() == b"secret data" * 1000
    with SambaServer({"C$": tmp_path / "secure"}, encrypt=True) as srv:
        # Whole-server encryption: a client that does not offer it must still get an encrypted session.
        with _storage(srv) as st:
            loc = SmbLocation("HV01", "C$", "x.bin")
            assert st.connection_info(loc)["encrypted"] is True
            with st.open_read(loc) as r:
                assert hashlib.sha256(r.read()).digest() == hashlib.sha256(b"secret data" * 1000).digest()
        with _storage(srv, encrypt=True) as st, st.create(SmbLocation("HV01", "C$", "w.bin")) as w:
            w.write(b"z" * (3 * MiB + 5))
    assert (tmp_path / "secure" / "w.bin").read_bytes() == b"z" * (3 * MiB + 5)


# -- reading ----------------------------------------------------------------------------------------


def test_large_read_through_csv_symlink_is_byte_identical(
    smb: SmbStorage, cluster_fs: ClusterFileSystem
) -> None:
    vm_dir = cluster_fs.csv_volume(1) / "web01" / "Virtual Hard Disks"
    vm_dir.mkdir(parents=True, exist_ok=True)
    size = 64 * MiB + 12345  # not a multiple of the request size
    digest = _random_file(vm_dir / "web01.vhdx", size)
    resolver = LocationResolver()
    for node in ("HV01", "HV02"):  # the CSV is reachable through every node's C$
        loc = resolver.resolve(r"C:\ClusterStorage\Volume1\web01\Virtual Hard Disks\web01.vhdx", node)
        assert isinstance(loc, SmbLocation)
        assert (loc.server, loc.share) == (node, "C$")
        with smb.open_read(loc) as r:
            assert r.size == size
            assert _sha_reader(r, bufsize=256 * 1024) == digest
            assert r.readinto(bytearray(10)) == 0


def test_pipeline_keeps_several_requests_in_flight(smb_factory: SmbFactory, node_dir: Path) -> None:
    digest = _random_file(node_dir / "p.bin", 9 * MiB + 1)
    st = smb_factory(read_size=MiB, read_depth=4)
    with st.open_read(_loc(node_dir, "p.bin")) as r:
        first = bytearray(1000)
        assert r.readinto(first) == 1000
        assert r.in_flight == 3  # one answered, three more already asked for
        rest = r.read()
        assert hashlib.sha256(bytes(first) + rest).hexdigest() == digest


def test_read_at_and_seek(smb: SmbStorage, node_dir: Path) -> None:
    _random_file(node_dir / "r.bin", 10 * MiB + 7)
    data = (node_dir / "r.bin").read_bytes()
    with smb.open_read(_loc(node_dir, "r.bin")) as r:
        assert r.read_at(0, 512) == data[:512]
        assert r.read_at(5 * MiB - 3, 6 * MiB) == data[5 * MiB - 3 :]  # crosses requests, short at EOF
        assert r.read_at(len(data), 10) == b""
        assert r.read(100) == data[:100]
        assert r.seek(8 * MiB) == 8 * MiB
        assert r.read(50) == data[8 * MiB : 8 * MiB + 50]
        assert r.seek(-10, 2) == len(data) - 10
        assert r.read() == data[-10:]
        assert r.tell() == len(data)
        r.seek(150)
        assert r.read(10) == data[150:160]


def test_stat_listdir_and_awkward_names(smb: SmbStorage, node_dir: Path) -> None:
    base = _loc(node_dir)
    sub = base.child("Virtual Hard Disks").child("über [x]")
    smb.makedirs(sub)
    smb.makedirs(sub)  # mkdir -p is idempotent
    for i, name in enumerate(AWKWARD):
        with smb.create(sub.child(name)) as w:
            w.write(name.encode() * (i + 1))
    entries = smb.listdir(sub)
    assert [e.name for e in entries] == sorted(AWKWARD)
    local = node_dir / "Virtual Hard Disks" / "über [x]"
    for e in entries:
        assert not e.is_dir
        assert (local / e.name).read_bytes() == e.name.encode() * (AWKWARD.index(e.name) + 1)
        st = smb.stat(sub.child(e.name))
        assert st.size == e.size == (local / e.name).stat().st_size
        assert abs(st.mtime - (local / e.name).stat().st_mtime) < 1e-3
    assert smb.stat(sub).is_dir
    top = smb.listdir(base)
    assert [(e.name, e.is_dir) for e in top] == [("Virtual Hard Disks", True)]
    assert smb.exists(sub.child(AWKWARD[0]))
    assert not smb.exists(sub.child("nope"))


def test_csv_symlink_is_a_directory_over_smb(smb: SmbStorage, cluster_fs: ClusterFileSystem) -> None:
    root = SmbLocation("HV02", "C$", "")
    names = {e.name: e.is_dir for e in smb.listdir(root)}
    assert names.get("ClusterStorage") is True
    assert "Volume1" in [e.name for e in smb.listdir(root.child("ClusterStorage"))]


def test_share_map_to_other_server(smb: SmbStorage, cluster_fs: ClusterFileSystem) -> None:
    (cluster_fs.csv_volume(1) / "sm").mkdir(exist_ok=True)
    (cluster_fs.csv_volume(1) / "sm" / "f.txt").write_bytes(b"via fileserver")
    (cluster_fs.share_dir("HV01", "D") / "VMs" / "g.txt").write_bytes(b"via vms share")
    resolver = LocationResolver(
        parse_share_map([r"C:\ClusterStorage=\\FILESERVER\csv", r"HV01:D:\VMs=\\HV01\vms"])
    )
    loc = resolver.resolve(r"C:\ClusterStorage\Volume1\sm\f.txt", "HV02")
    assert loc == SmbLocation("FILESERVER", "csv", r"Volume1\sm\f.txt")
    with smb.open_read(loc) as r:
        assert r.read() == b"via fileserver"
    loc = resolver.resolve(r"D:\VMs\g.txt", "HV01")
    with smb.open_read(loc) as r:
        assert r.read() == b"via vms share"


# -- writing ----------------------------------------------------------------------------------------


def test_write_temp_then_rename(smb_factory: SmbFactory, node_dir: Path) -> None:
    payload = os.urandom(5 * MiB) + b"tail"
    tmp = _loc(node_dir, "disk.vhdx.partial")
    final = _loc(node_dir, "disk.vhdx")
    st = smb_factory(write_size=MiB, write_depth=3)
    with st.create(tmp) as w:
        for i in range(0, len(payload), 300_000):  # writes smaller than the request size
            w.write(payload[i : i + 300_000])
        assert w.written == len(payload)
    st.rename(tmp, final)
    assert (node_dir / "disk.vhdx").read_bytes() == payload
    assert not (node_dir / "disk.vhdx.partial").exists()


def test_create_is_exclusive_and_rename_does_not_replace(smb: SmbStorage, node_dir: Path) -> None:
    (node_dir / "exists.bin").write_bytes(b"keep me")
    with pytest.raises(StorageExists) as ei:
        smb.create(_loc(node_dir, "exists.bin"))
    assert "0xC0000035" in str(ei.value)
    assert "exists.bin" in str(ei.value)
    with smb.create(_loc(node_dir, "new.bin")) as w:
        w.write(b"new")
    with pytest.raises(StorageExists):
        smb.rename(_loc(node_dir, "new.bin"), _loc(node_dir, "exists.bin"))
    assert (node_dir / "exists.bin").read_bytes() == b"keep me"
    smb.rename(_loc(node_dir, "new.bin"), _loc(node_dir, "exists.bin"), replace=True)
    assert (node_dir / "exists.bin").read_bytes() == b"new"
    with pytest.raises(StorageError, match="across"):
        smb.rename(_loc(node_dir, "exists.bin"), SmbLocation("HV02", "C$", "x"))


def test_writer_discard_removes_partial_file(smb: SmbStorage, node_dir: Path) -> None:
    with pytest.raises(RuntimeError), smb.create(_loc(node_dir, "partial.bin")) as w:
        w.write(b"x" * MiB)
        raise RuntimeError("restore cancelled")
    assert not (node_dir / "partial.bin").exists()


def test_delete(smb: SmbStorage, node_dir: Path) -> None:
    (node_dir / "d.bin").write_bytes(b"1")
    smb.delete(_loc(node_dir, "d.bin"))
    assert not (node_dir / "d.bin").exists()
    with pytest.raises(StorageNotFound):
        smb.delete(_loc(node_dir, "d.bin"))
    smb.delete(_loc(node_dir, "d.bin"), missing_ok=True)


def test_makedirs_over_a_file_fails(smb: SmbStorage, node_dir: Path) -> None:
    (node_dir / "file").write_bytes(b"")
    with pytest.raises(StorageExists):
        smb.makedirs(_loc(node_dir, "file\\sub"))


# -- errors -----------------------------------------------------------------------------------------


def test_not_found_names_status_server_share_and_path(smb: SmbStorage, node_dir: Path) -> None:
    with pytest.raises(StorageNotFound) as ei:
        smb.open_read(_loc(node_dir, "missing.vhdx"))
    text = str(ei.value)
    assert "0xC0000034 STATUS_OBJECT_NAME_NOT_FOUND" in text
    assert "server=HV01" in text and "share=C$" in text and "missing.vhdx" in text
    with pytest.raises(StorageNotFound, match="share does not exist"):
        smb.stat(SmbLocation("HV01", "NOSHARE$", ""))


def test_wrong_password_is_a_clear_error_without_the_password(samba_cluster: SambaCluster) -> None:
    srv = samba_cluster.servers["HV01"]
    secret = "Wr0ng-But-Secret-Pa55"
    st = SmbStorage(srv.user, secret, endpoints=samba_cluster.endpoints())
    with pytest.raises(StorageAuthError) as ei:
        st.stat(SmbLocation("HV01", "C$", ""))
    text = f"{ei.value} {ei.value!r} {ei.value.context} {st!r}"
    assert "0xC000006D STATUS_LOGON_FAILURE" in text
    assert "credentials" in (ei.value.what_to_do or "")
    assert secret not in text and srv.password not in text
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    st.close()


def test_from_credentials(samba_cluster: SambaCluster, node_dir: Path) -> None:
    srv = samba_cluster.servers["HV01"]
    (node_dir / "c.txt").write_bytes(b"creds")
    good = Credentials(srv.user, srv.password)
    st = SmbStorage.from_credentials(good, endpoints=samba_cluster.endpoints())
    with st, st.open_read(_loc(node_dir, "c.txt")) as r:
        assert r.read() == b"creds"
    # A domain-qualified account is sent as DOMAIN\user; refused here, and the principal is named.
    other = Credentials(f"CORP\\{srv.user}", "not-it")
    st = SmbStorage.from_credentials(other, endpoints=samba_cluster.endpoints())
    with st, pytest.raises(StorageAuthError) as ei:
        st.stat(_loc(node_dir, "c.txt"))
    assert f"CORP\\{srv.user}" in str(ei.value) and "not-it" not in str(ei.value)


def test_access_denied_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    srv = SambaServer({"C$": tmp_path / "ro"}, read_only_shares={"C$"})
    with srv, _storage(srv) as st, pytest.raises(StorageAccessDenied) as ei:
        st.create(SmbLocation("HV01", "C$", "x.bin"))
    assert "0xC0000022" in str(ei.value)
    assert "Administrators" in (ei.value.what_to_do or "")
    assert "LocalAccountTokenFilterPolicy" in (ei.value.what_to_do or "")


def test_access_denied_on_a_file_share_names_read_or_write(tmp_path: Path) -> None:
    # A Hyper-V over SMB share (\\FS01\VMStore): writing needs Change, reading needs Read; no admin advice.
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "a.vhdx").write_bytes(b"x")
    (tmp_path / "no").mkdir()
    srv = SambaServer({"VMStore": tmp_path / "ro", "Denied": tmp_path / "no"}, read_only_shares={"VMStore"},
                      denied_shares={"Denied"})
    with srv, _storage(srv) as st:
        assert st.stat(SmbLocation("HV01", "VMStore", "a.vhdx")).size == 1
        with pytest.raises(StorageAccessDenied) as ei:
            st.create(SmbLocation("HV01", "VMStore", "x.bin"))
        assert "may not write" in str(ei.value) and "\\\\HV01\\VMStore" in str(ei.value)
        assert "Change" in (ei.value.what_to_do or "") and "Administrators group of" not in (ei.value.what_to_do or "")
        with pytest.raises(StorageAccessDenied) as ei:
            st.stat(SmbLocation("HV01", "Denied", "a.vhdx"))
        assert "may not write" not in str(ei.value) and "\\\\HV01\\Denied" in str(ei.value)
        assert "grant the account Read" in (ei.value.what_to_do or "")


def test_unreachable_server_after_bounded_retries(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = SmbOptions(retries=2, retry_delay=0.01)
    st = SmbStorage("u", "p", endpoints={"HV09": ("127.0.0.1", port)}, options=options)
    log_cm = caplog.at_level(logging.WARNING, logger="bareos_hyperv.storage.smb")
    with log_cm, pytest.raises(StorageConnectionError) as ei:
        st.stat(SmbLocation("HV09", "C$", "x"))
    assert f"127.0.0.1:{port}" in str(ei.value)
    attempts = [r for r in caplog.records if "reconnecting, attempt" in r.getMessage()]
    assert len(attempts) == 2


# -- dropped connections ----------------------------------------------------------------------------


def test_dropped_connection_mid_read_resumes_at_last_good_offset(
    server: SambaServer, caplog: pytest.LogCaptureFixture
) -> None:
    digest = _random_file(server.shares["C$"] / "big.bin", 40 * MiB + 3)
    st = _storage(server, read_size=2 * MiB, read_depth=3)
    with st, st.open_read(SmbLocation("HV01", "C$", "big.bin")) as r:
        h = hashlib.sha256()
        buf = bytearray(MiB)
        done = 0
        dropped_at = -1
        with caplog.at_level(logging.WARNING, logger="bareos_hyperv.storage.smb"):
            while True:
                n = r.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
                done += n
                if dropped_at < 0 and done >= 17 * MiB:
                    assert server.drop_connections() >= 1
                    dropped_at = done
        assert done == 40 * MiB + 3
        assert h.hexdigest() == digest
        assert r.reconnects == 1
    lines = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert len(lines) == 1
    assert "big.bin" in lines[0] and "attempt 1 of 3" in lines[0]
    # The resume point is the first byte that had not arrived: at or after what the caller had, and
    # at most the buffered request plus the three in flight (answered before the drop) beyond it.
    offset = int(lines[0].split("offset ")[1].split()[0])
    assert dropped_at <= offset <= dropped_at + 4 * 2 * MiB


def test_server_restart_mid_read_resumes(server: SambaServer) -> None:
    digest = _random_file(server.shares["C$"] / "r.bin", 12 * MiB)
    st = _storage(server, read_size=MiB, read_depth=2)
    with st, st.open_read(SmbLocation("HV01", "C$", "r.bin")) as r:
        head = r.read(3 * MiB)
        server.restart()
        rest = r.read()
    assert hashlib.sha256(head + rest).hexdigest() == digest
    assert r.reconnects >= 1


def test_drop_from_a_thread_while_reading(server: SambaServer) -> None:
    digest = _random_file(server.shares["C$"] / "t.bin", 48 * MiB)
    st = _storage(server, read_size=MiB, read_depth=4)
    with st, st.open_read(SmbLocation("HV01", "C$", "t.bin")) as r:
        dropped = threading.Event()

        def killer() -> None:
            # Cut the connection from outside while the reader is busy in the middle of the file.
            while r.tell() < 10 * MiB:
                threading.Event().wait(0.001)
            server.drop_connections()
            dropped.set()

        t = threading.Thread(target=killer)
        t.start()
        h = hashlib.sha256()
        buf = bytearray(64 * 1024)
        while True:
            n = r.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
            if r.tell() >= 10 * MiB:
                dropped.wait(5)
        t.join()
    assert h.hexdigest() == digest
    assert r.reconnects == 1


def test_dropped_connection_mid_write_resends_unacknowledged_data(server: SambaServer) -> None:
    payload = os.urandom(12 * MiB + 11)
    with _storage(server, write_size=MiB, write_depth=4) as st:
        with st.create(SmbLocation("HV01", "C$", "w.tmp")) as w:
            w.write(payload[: 5 * MiB])
            assert server.drop_connections() >= 1
            w.write(payload[5 * MiB :])
        assert w.reconnects == 1
        st.rename(SmbLocation("HV01", "C$", "w.tmp"), SmbLocation("HV01", "C$", "w.bin"))
    assert (server.shares["C$"] / "w.bin").read_bytes() == payload


def test_gives_up_after_retries_when_server_is_gone(
    server: SambaServer, caplog: pytest.LogCaptureFixture
) -> None:
    _random_file(server.shares["C$"] / "g.bin", 8 * MiB)
    st = _storage(server, read_size=MiB, read_depth=2, retries=2)
    with st, st.open_read(SmbLocation("HV01", "C$", "g.bin")) as r:
        r.read(MiB)
        server.stop()
        log_cm = caplog.at_level(logging.WARNING, logger="bareos_hyperv.storage.smb")
        with log_cm, pytest.raises(StorageConnectionError) as ei:
            r.read()
    assert "g.bin" in str(ei.value)
    assert len([x for x in caplog.records if "reconnecting, attempt" in x.getMessage()]) == 2


@pytest.mark.parametrize("grow", [-70_000, 0, 300_000])
def test_updater_applies_a_delta_in_place(smb_factory: SmbFactory, node_dir: Path, grow: int) -> None:
    """Random reads and writes and resizing over SMB: a delta turns the base into the result in place."""
    rnd = random.Random(grow)
    base = rnd.randbytes(1_000_000)
    result = bytearray(base[: len(base) + grow] if grow < 0 else base + rnd.randbytes(grow))
    ranges = []
    for _ in range(20):
        at = rnd.randrange(0, len(result) - 5000)
        result[at:at + 4096] = rnd.randbytes(4096)
        ranges.append((at, 4096))
    if grow > 0:
        ranges.append((len(base), grow))
    (node_dir / "disk.vhdx").write_bytes(base)
    st = smb_factory(read_size=CHUNK, write_size=CHUNK)  # several requests per range and per chunk
    updater = st.open_update(_loc(node_dir, "disk.vhdx"))
    assert updater.size == len(base)
    assert updater.read_at(len(base) - 10, 100) == base[-10:]
    applier = DeltaApplier(updater, name="disk.vhdx")
    delta = _delta(base, bytes(result), ranges)
    for pos in range(0, len(delta), 50_000):
        applier.write(delta[pos:pos + 50_000])
    applier.close()
    assert applier.result is not None and applier.result.digest() == _hashes(bytes(result)).digest()
    assert (node_dir / "disk.vhdx").read_bytes() == bytes(result)
    with pytest.raises(StorageNotFound):
        st.open_update(_loc(node_dir, "missing.vhdx"))


def test_updater_write_survives_a_dropped_connection(server: SambaServer) -> None:
    path = server.shares["C$"] / "u.bin"
    path.write_bytes(b"\0" * (3 * MiB))
    payload = os.urandom(2 * MiB + 3)
    with _storage(server, write_size=MiB, write_depth=2) as st, st.open_update(SmbLocation("HV01", "C$", "u.bin")) as u:
        u.write_at(0, b"a" * MiB)
        assert server.drop_connections() >= 1
        u.write_at(MiB - 1, memoryview(payload))  # pipelined requests, sent again on a fresh connection
        assert u.size == MiB - 1 + len(payload)
    assert path.read_bytes() == b"a" * (MiB - 1) + payload
