"""Producers: local files and files on a real Samba share, listed and read as the agent streams them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from bareos_hyperv.agent.connections import Connections
from bareos_hyperv.agent.sources import FilesSource, SmbSource, make_source
from bareos_hyperv.errors import ConfigurationError, StorageError
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.options import FilesOptions, JobOptions, SmbShareOptions, split_list
from bareos_hyperv.protocol.messages import FileEntry
from hvsim.samba import SMBD, SambaServer


class Ctx:
    """A job's view for a source: typed options and credentials."""

    def __init__(self, options: JobOptions, credentials: Credentials | None = None) -> None:
        self._options = options
        self._credentials = credentials

    @property
    def options(self) -> JobOptions:
        return self._options

    def credentials(self) -> Credentials:
        if self._credentials is None:
            raise ConfigurationError("no credentials")
        return self._credentials

    def connections(self) -> Connections:
        raise AssertionError("the files and smb sources make no Hyper-V connections")


def _files(paths: str) -> Ctx:
    return Ctx(JobOptions(files=FilesOptions(paths=split_list(paths))))


def _read(source: FilesSource | SmbSource, name: str) -> bytes:
    # A source lists its items in one batch; the entry for an item is all open() needs.
    entry = FileEntry(name=name, size=0, mtime=0)
    with source.open(entry) as reader:
        buf = bytearray(256 * 1024)
        out = bytearray()
        while True:
            n = reader.readinto(buf)
            if not n:
                return bytes(out)
            out += buf[:n]


def test_files_source_walks_directories_in_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "z").mkdir(parents=True)
    (tmp_path / "d" / "b").write_bytes(b"bb")
    (tmp_path / "d" / "a").write_bytes(b"a")
    (tmp_path / "d" / "z" / "c").write_bytes(b"ccc")
    (tmp_path / "single").write_bytes(b"s")
    os.utime(tmp_path / "single", (1_500_000_000, 1_500_000_000))
    src = FilesSource(_files(f"{tmp_path}/d, {tmp_path}/single,{tmp_path}/d/a"))
    listing = src.list_files()
    assert [(e.name, e.size) for e in listing] == [
        (f"@files{tmp_path}/d/a", 1), (f"@files{tmp_path}/d/b", 2), (f"@files{tmp_path}/d/z/c", 3),
        (f"@files{tmp_path}/single", 1)]
    assert listing[-1].mtime == 1_500_000_000
    assert _read(src, f"@files{tmp_path}/d/z/c") == b"ccc"


@pytest.mark.parametrize(("paths", "fragment"), [("", "needs at least one path"),
                                                 ("relative/x", "is not an absolute path")])
def test_files_source_refuses_bad_paths(paths: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        FilesSource(_files(paths)).list_files()


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        make_source("tape", Ctx(JobOptions()))
    assert "files, hyperv, smb" in (info.value.what_to_do or "")


samba = pytest.mark.skipif(not (shutil.which("smbpasswd") and os.access(SMBD, os.X_OK)),
                           reason="Samba is not installed")


@pytest.fixture
def share(tmp_path: Path) -> Iterator[tuple[SambaServer, Path]]:
    root = tmp_path / "cdrive"
    (root / "VMs" / "web01").mkdir(parents=True)
    with SambaServer({"C$": root}, workdir=tmp_path) as server:
        yield server, root


@samba
@pytest.mark.samba
def test_smb_source_lists_and_reads_from_real_samba(share: tuple[SambaServer, Path]) -> None:
    server, root = share
    data = os.urandom(9 * 1024 * 1024 + 3)
    (root / "VMs" / "web01" / "disk.vhdx").write_bytes(data)
    (root / "VMs" / "web01" / "web01.vmcx").write_bytes(b"config")
    host, port = server.address
    ctx = Ctx(JobOptions(smb=SmbShareOptions(server="HV01", share="C$", paths=("VMs\\web01",), address=host,
                                             port=port)), Credentials(server.user, server.password))
    src = make_source("smb", ctx)
    try:
        listing = src.list_files()
        assert [(e.name, e.size) for e in listing] == [("@smb/HV01/C$/VMs/web01/disk.vhdx", len(data)),
                                                      ("@smb/HV01/C$/VMs/web01/web01.vmcx", 6)]
        assert _read(src, "@smb/HV01/C$/VMs/web01/disk.vhdx") == data  # type: ignore[arg-type]
    finally:
        src.close()


@samba
@pytest.mark.samba
def test_smb_source_with_wrong_password_is_a_storage_error(share: tuple[SambaServer, Path]) -> None:
    server, _ = share
    host, port = server.address
    ctx = Ctx(JobOptions(smb=SmbShareOptions(server="HV01", share="C$", paths=("VMs",), address=host, port=port)),
              Credentials(server.user, "wrong-password"))
    src = make_source("smb", ctx)
    try:
        with pytest.raises(StorageError) as info:
            src.list_files()
        assert "wrong-password" not in str(info.value)
    finally:
        src.close()
