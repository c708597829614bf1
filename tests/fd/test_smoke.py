"""Smoke test of the fd/agent split: a 1 GiB disk file from Samba through agent -> pipe -> core I/O.

The file lives in the simulated node's C: drive, is read by the agent over SMB (smbprotocol,
pipelined), handed to the emulated Bareos core as a pipe (do_io_in_core), stored in fdsim's save
set, restored through the agent into a directory, and compared by SHA-256.  The agent's peak
memory must stay under 150 MB: data never accumulates in the agent.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from hvsim.simulation import Simulation

from .conftest import AgentWatch, FdEnv

GiB = 1024**3
MiB = 1024**2
PEAK_LIMIT_BYTES = 150 * 1000 * 1000


def _make_disk(path: Path) -> str:
    """1 GiB: a random MiB every 4 MiB (the rest holes, read back as zeros); returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    zeros = bytes(3 * MiB)
    with open(path, "wb") as fh:
        for _ in range(GiB // (4 * MiB)):
            block = os.urandom(MiB)
            fh.write(block)
            fh.seek(3 * MiB, os.SEEK_CUR)
            digest.update(block)
            digest.update(zeros)
        fh.truncate(GiB)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.samba
@pytest.mark.timeout(240)
def test_one_gib_disk_from_samba_round_trips_with_flat_agent_memory(sim_with_samba: Simulation, fd: FdEnv,
                                                                     tmp_path: Path) -> None:
    sim = sim_with_samba
    disk = sim.world.fs.share_dir("HV01") / "VMs" / "smoke" / "smoke-disk.vhdx"
    expected = _make_disk(disk)
    creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
    host, port = sim.smb_map()["HV01"]
    opts = (f"source=smb:smb_server=HV01:smb_share=C$:smb_paths=VMs/smoke/smoke-disk.vhdx:"
            f"smb_address={host}:smb_port={port}:credentials_file={creds}")

    started = time.monotonic()
    with AgentWatch() as watch:
        backup = fd.backup(opts)
    backup_s = time.monotonic() - started
    assert backup.status == "T", backup.log()
    assert [(f.fname, f.bytes) for f in backup.files] == [("@smb/HV01/C$/VMs/smoke/smoke-disk.vhdx", GiB)]

    reported = [int(m.group(1)) for t in backup.texts() if (m := re.search(r"VmHWM\) (\d+) KiB", t))]
    assert len(reported) == 1, backup.log()
    peak_kib = max(reported[0], *(s.peak_rss_kib for s in watch.seen.values()))

    where = tmp_path / "restore"
    started = time.monotonic()
    restore = fd.restore(where)
    restore_s = time.monotonic() - started
    assert restore.status == "T", restore.log()
    restored = where / "@smb/HV01/C$/VMs/smoke/smoke-disk.vhdx"
    assert restored.stat().st_size == GiB
    assert _sha256(restored) == expected

    print(f"\nsmoke: backup 1 GiB over SMB in {backup_s:.1f} s ({GiB / backup_s / 1e6:.0f} MB/s), "
          f"restore in {restore_s:.1f} s ({GiB / restore_s / 1e6:.0f} MB/s), "
          f"agent peak memory (VmHWM) {peak_kib / 1024:.1f} MiB, sha256 {expected[:16]}...")
    assert peak_kib * 1024 < PEAK_LIMIT_BYTES
