"""Modes of what a restore to a directory creates (issue 11, point 4), through the fd emulation,
which runs jobs with a real fd's umask (026): folders 0750 and files with their saved mode (0640),
whatever the umask; a file being written is 0600."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from .conftest import FdEnv


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_restored_folders_are_0750_and_files_keep_their_saved_mode(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "disk.vhdx").write_bytes(os.urandom(300_000))
    (src / "top.vmcx").write_bytes(b"config")
    backup = fd.backup(f"source=files:paths={src}")
    assert backup.status == "T", backup.log()

    where = fd.tmp / "restore"  # made by the restore too
    restore = fd.restore(where)
    assert restore.status == "T", restore.log()
    tree = where / f"@files{src}"
    folders = [p for p in where.rglob("*") if p.is_dir()] + [where]
    assert tree / "a" / "b" in folders
    assert {str(p): _mode(p) for p in folders} == {str(p): 0o750 for p in folders}
    files = [p for p in where.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["disk.vhdx", "top.vmcx"]
    assert {p.name: _mode(p) for p in files} == {"disk.vhdx": 0o640, "top.vmcx": 0o640}


def test_existing_folders_keep_their_mode(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    assert fd.backup(f"source=files:paths={src}").status == "T"
    where = fd.tmp / "restore"
    where.mkdir(mode=0o755)
    os.chmod(where, 0o755)
    restore = fd.restore(where)
    assert restore.status == "T", restore.log()
    assert _mode(where) == 0o755
    assert _mode(where / "@files") == 0o750


def test_a_file_being_restored_is_readable_by_its_owner_only(fd: FdEnv) -> None:
    src = fd.tmp / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(24 * 1024 * 1024))
    assert fd.backup(f"source=files:paths={src}").status == "T"
    where = fd.tmp / "restore"
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for p in where.rglob("*.bareos-hyperv-partial"):
                with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                    seen.append(_mode(p))
            stop.wait(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        restore = fd.restore(where)
    finally:
        stop.set()
        watcher.join()
    assert restore.status == "T", restore.log()
    assert seen and set(seen) == {0o600}
