"""Pipes and transfer threads: 1 MiB pipes, byte counts, digests, and size checks."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from bareos_hyperv.agent.transfer import PIPE_SIZE, Drain, Pump, make_pipe
from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocalLocation

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _pipe_max() -> int:
    return int(Path("/proc/sys/fs/pipe-max-size").read_text())


def test_pipe_is_enlarged_to_one_mib_where_permitted() -> None:
    rfd, wfd = make_pipe()
    try:
        assert fcntl.fcntl(wfd, F_GETPIPE_SZ) == min(PIPE_SIZE, max(_pipe_max(), 65536))
        assert not os.get_inheritable(rfd) and not os.get_inheritable(wfd)
    finally:
        os.close(rfd)
        os.close(wfd)


def test_pump_copies_a_file_and_closes_the_pipe(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 1)
    (tmp_path / "f").write_bytes(data)
    reader = LocalStorage().open_read(LocalLocation(PurePosixPath(tmp_path / "f")))
    rfd, wfd = make_pipe()
    pump = Pump("f", reader, wfd, len(data))
    pump.start()
    got = bytearray()
    while chunk := os.read(rfd, 262144):
        got += chunk
    os.close(rfd)
    assert pump.join(10) and pump.error is None
    assert bytes(got) == data and pump.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


def test_pump_reports_a_reader_that_went_away(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (4 * 1024 * 1024))
    reader = LocalStorage().open_read(LocalLocation(PurePosixPath(tmp_path / "f")))
    rfd, wfd = make_pipe()
    os.close(rfd)
    pump = Pump("f", reader, wfd, 4 * 1024 * 1024)
    pump.start()
    assert pump.join(10)
    assert isinstance(pump.error, StorageError) and "stopped reading f after" in str(pump.error)


@pytest.mark.parametrize("sent,expected,ok", [(1000, 1000, True), (999, 1000, False)])
def test_drain_checks_the_announced_size(tmp_path: Path, sent: int, expected: int, ok: bool) -> None:
    target = tmp_path / "out"
    writer = LocalStorage().create(LocalLocation(PurePosixPath(target)))
    rfd, wfd = make_pipe()
    drain = Drain("out", rfd, writer, expected)
    drain.start()
    os.write(wfd, b"y" * sent)
    os.close(wfd)
    assert drain.join(10)
    writer.close()
    assert (drain.error is None) is ok
    assert drain.bytes == sent
