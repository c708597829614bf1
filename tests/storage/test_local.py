"""bareos_hyperv.storage.local: the Storage interface on local paths (data=local, restore_local)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.base import StorageAccessDenied, StorageExists, StorageNotFound
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocalLocation, LocationResolver, SmbLocation, parse_path_map

MiB = 1024 * 1024
AWKWARD = ["a b.bin", "[brackets] (1).vhdx", "Grüße ünïcødé.txt", "日本語 ファイル.avhdx"]


def L(p: Path) -> LocalLocation:
    return LocalLocation(PurePosixPath(p))


def test_read_through_path_map_byte_identical(tmp_path: Path) -> None:
    mnt = tmp_path / "csv1"
    (mnt / "vm").mkdir(parents=True)
    data = os.urandom(3 * MiB + 17)
    (mnt / "vm" / "disk [1].vhdx").write_bytes(data)
    r = LocationResolver(path_map=parse_path_map([rf"C:\ClusterStorage\Volume1={mnt}"]), local=True)
    loc = r.resolve(r"C:\ClusterStorage\Volume1\vm\disk [1].vhdx", "HV01")
    with LocalStorage() as st, st.open_read(loc) as f:
        assert f.size == len(data)
        h = hashlib.sha256()
        buf = bytearray(256 * 1024)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
        assert h.digest() == hashlib.sha256(data).digest()
        assert f.read_at(MiB - 5, 10) == data[MiB - 5 : MiB + 5]
        assert f.read_at(len(data) - 3, 100) == data[-3:]
        assert f.tell() == len(data)
        assert f.seek(10) == 10
        assert f.read(5) == data[10:15]
        assert f.seek(-4, 2) == len(data) - 4
        assert f.read() == data[-4:]


def test_write_exclusive_rename_no_replace(tmp_path: Path) -> None:
    st = LocalStorage()
    tmp, final = L(tmp_path / "x.partial"), L(tmp_path / "x.vhdx")
    with st.create(tmp) as w:
        w.write(b"a" * 1000)
        w.write(memoryview(b"b" * 10))
        assert w.written == 1010
    with pytest.raises(StorageExists):
        st.create(tmp)
    (tmp_path / "x.vhdx").write_bytes(b"old")
    with pytest.raises(StorageExists):
        st.rename(tmp, final)
    assert (tmp_path / "x.vhdx").read_bytes() == b"old"
    assert (tmp_path / "x.partial").exists()
    st.rename(tmp, final, replace=True)
    assert (tmp_path / "x.vhdx").read_bytes() == b"a" * 1000 + b"b" * 10
    st.rename(final, L(tmp_path / "y.vhdx"))
    assert not (tmp_path / "x.vhdx").exists() and (tmp_path / "y.vhdx").exists()


def test_discard_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), LocalStorage().create(L(tmp_path / "p.bin")) as w:
        w.write(b"x")
        raise RuntimeError("cancel")
    assert not (tmp_path / "p.bin").exists()


def test_listdir_stat_makedirs_delete_with_awkward_names(tmp_path: Path) -> None:
    st = LocalStorage()
    sub = L(tmp_path / "über [x]" / "Virtual Hard Disks")
    st.makedirs(sub)
    st.makedirs(sub)
    for name in AWKWARD:
        with st.create(sub.child(name)) as w:
            w.write(name.encode())
    entries = st.listdir(sub)
    assert [e.name for e in entries] == sorted(AWKWARD)
    assert all(e.size == len(e.name.encode()) and not e.is_dir for e in entries)
    s = st.stat(sub.child(AWKWARD[2]))
    assert s.size == len(AWKWARD[2].encode()) and not s.is_dir
    assert st.stat(sub).is_dir
    assert st.exists(sub.child(AWKWARD[0])) and not st.exists(sub.child("nope"))
    st.delete(sub.child(AWKWARD[0]))
    assert not st.exists(sub.child(AWKWARD[0]))
    with pytest.raises(StorageNotFound):
        st.delete(sub.child(AWKWARD[0]))
    st.delete(sub.child(AWKWARD[0]), missing_ok=True)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageExists):
        st.makedirs(L(tmp_path / "f" / "sub"))


def test_errors_name_the_path(tmp_path: Path) -> None:
    st = LocalStorage()
    with pytest.raises(StorageNotFound) as ei:
        st.open_read(L(tmp_path / "missing.vhdx"))
    assert "missing.vhdx" in str(ei.value) and ei.value.what_to_do
    with pytest.raises(StorageExists, match="directory"):
        st.open_read(L(tmp_path))
    with pytest.raises(StorageError, match="SMB location"):
        st.stat(SmbLocation("HV01", "C$", "x"))


def test_permission_denied_says_what_to_do() -> None:
    # sysfs refuses to create files even for root: a real EACCES without changing users.
    with pytest.raises(StorageAccessDenied) as ei:
        LocalStorage().create(L(Path("/sys/bareos-hyperv-test")))
    assert "/sys/bareos-hyperv-test" in str(ei.value)
    assert "Errno 13" in str(ei.value)
    assert ei.value.what_to_do


def test_updater_reads_writes_and_resizes_in_place(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"0123456789")
    storage = LocalStorage()
    with storage.open_update(LocalLocation(PurePosixPath(tmp_path / "f.bin"))) as updater:
        assert updater.size == 10
        assert updater.read_at(8, 10) == b"89"
        updater.write_at(2, b"ab")
        updater.truncate(14)
        updater.write_at(12, memoryview(b"yz"))
        assert updater.size == 14
    assert (tmp_path / "f.bin").read_bytes() == b"01ab456789\0\0yz"
    with pytest.raises(StorageNotFound):
        storage.open_update(LocalLocation(PurePosixPath(tmp_path / "missing.bin")))
