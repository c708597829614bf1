"""Sparse full of a dynamic VHDX against a full of a fixed VHDX with the same content, in one run.

A simulated standalone Hyper-V host (hvsim, WinRM over HTTP with NTLM, real Samba on 127.0.0.1)
serves two VMs whose disks hold the same virtual content:

* ``sparse01``: a dynamic VHDX of ``--size-mib`` MiB (32 MiB blocks, Hyper-V's default) that the
  guest filled and then trimmed: ``--allocated-pct`` percent of its blocks remain allocated, the
  trimmed blocks' old bytes stay in the file, referenced by nothing (as Hyper-V leaves them until
  the disk is compacted).  Its full backup is a sparse full: only what the tables reference.
* ``fixed01``: a fixed VHDX of the same size and content (the trimmed ranges read as zeros); its
  full backup sends the whole file.

Reported, through fdsim (the emulated Bareos fd): for both fulls the disk item's bytes in the save
set, the bytes read from the disk file against its size and the virtual size, the job's wall time
and the disk item's streaming time, and the ratios sparse/fixed.  Then the sparse full is restored
to a directory and the result checked with ``qemu-img check`` and ``qemu-img compare`` against the
dynamic source.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from bench.backup_incremental import plugin_string
from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import STANDALONE, build_standalone
from hvsim.world.state import DiskSpec, World

MiB = 1024 * 1024
BLOCK = 32 * MiB
REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "packaging"
VM_DIR = "D:\\Hyper-V"
VMS = {"sparse01": "dynamic", "fixed01": "fixed"}


def _disk(vm: str) -> str:
    return f"{VM_DIR}\\{vm}\\Virtual Hard Disks\\{vm}.vhdx"


def build_world(root: Path, size: int, allocated_pct: float) -> World:
    """Both VMs, their disks filled with the same data (same seed and block size), then the same trims."""
    w = World(root)
    build_standalone(w)
    for vm, kind in VMS.items():
        w.add_vm(STANDALONE, vm, generation=2, version="9.0", state="running", root=f"{VM_DIR}\\{vm}",
                 switches=["LAN"], seed=31, disks_=[DiskSpec(_disk(vm), kind=kind, size=size, fill_ratio=1.0,
                                                             block_size=BLOCK)])
    blocks = size // BLOCK
    keep = max(1, round(blocks * allocated_pct / 100))
    # Keep every n-th block allocated, trim runs of the others (contiguous runs: fewer trims).
    kept = {round(i * blocks / keep) for i in range(keep)}
    runs: List[tuple[int, int]] = []
    for block in range(blocks):
        if block in kept:
            continue
        if runs and runs[-1][0] + runs[-1][1] == block:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((block, 1))
    for vm in VMS:
        vm_id = w.vm(vm).id
        for first, count in runs:
            w.guest_trim(vm_id, 0, first * BLOCK, count * BLOCK)
    return w


@dataclass
class Figures:
    """One full backup."""

    disk_bytes: int
    read_bytes: int
    job_seconds: float
    disk_seconds: float


class Bench:
    """The running estate and what the backups need to reach it."""

    def __init__(self, sim: Simulation, tmp: Path, credentials: Path) -> None:
        self.sim = sim
        self.tmp = tmp
        self.credentials = credentials
        self.fd = FdSim(tmp / "store")

    def plugin(self, vm: str) -> str:
        return plugin_string(self.sim, self.credentials, vm)

    def backup(self, vm: str) -> tuple[Figures, JobResult]:
        t0 = time.perf_counter()
        job = self.fd.backup(self.plugin(vm), level="F", plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
        seconds = time.perf_counter() - t0
        if job.status != "T":
            raise RuntimeError(f"full backup of {vm} ended with status {job.status}:\n{job.log()}")
        disks = [f for f in job.files if "/disks/" in f.fname]
        # The plugin's per-disk report: "<file>: X MB read of a Y MB file, virtual size Z MB".
        read = sum(float(m.group(1)) for m in (re.search(r"([0-9.]+) MB read of a", t.text) for t in job.messages)
                   if m is not None)
        return Figures(sum(f.bytes for f in disks), int(read * MiB), seconds, sum(f.seconds for f in disks)), job

    def restore(self, jobid: int, where: Path) -> JobResult:
        job = self.fd.restore(None, jobid=jobid, where=str(where), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
        if job.status != "T":
            raise RuntimeError(f"restore ended with status {job.status}:\n{job.log()}")
        return job


def _qemu(*args: str) -> bool:
    run = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if run.returncode:
        print(f"  qemu-img {' '.join(args)}: {run.stdout}{run.stderr}", flush=True)
    return run.returncode == 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print a table; 0 on success, 1 when the sparse full is not smaller or not valid."""
    p = argparse.ArgumentParser(prog="python -m bench backup_sparse", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_SPARSE_SIZE_MIB", "4096")))
    p.add_argument("--allocated-pct", type=float, default=25.0)
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-sparse-", dir=os.environ.get("BENCH_TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        print(f"creating the estate (two {args.size_mib} MiB VHDX, {args.allocated_pct:g} % of the dynamic one's "
              "blocks left allocated after trims) ...", flush=True)
        t0 = time.perf_counter()
        world = build_world(tmp / "estate", size, args.allocated_pct)
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
        dynamic = world.local(STANDALONE, _disk("sparse01"))
        fixed = world.local(STANDALONE, _disk("fixed01"))
        file_sizes = {"sparse01": dynamic.stat().st_size, "fixed01": fixed.stat().st_size}
        with Simulation(tmp / "sim", world=world, samba=True, https=False) as sim:
            creds = sim.write_credentials_file(tmp / "hyperv.cred")
            bench = Bench(sim, tmp, creds)
            same = _qemu("compare", "-f", "vhdx", "-F", "vhdx", str(dynamic), str(fixed))
            sparse, job = bench.backup("sparse01")
            full, _ = bench.backup("fixed01")
            where = tmp / "restored"
            t0 = time.perf_counter()
            bench.restore(job.jobid, where)
            restore_s = time.perf_counter() - t0
            restored = where / "@hyperv" / STANDALONE / "sparse01" / "disks" / "0-sparse01.vhdx"
            valid = _qemu("check", str(restored)) and _qemu("compare", "-f", "vhdx", "-F", "vhdx", str(dynamic),
                                                             str(restored))
            allocated = os.stat(restored).st_blocks * 512

    print()
    print(f"Sparse full of a {args.size_mib} MiB dynamic VHDX ({args.allocated_pct:g} % of its 32 MiB blocks "
          f"allocated, the trimmed ones still in the file) vs full of a fixed VHDX with the same content, through "
          f"fdsim and loopback Samba (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs); contents equal: "
          f"{same}")
    print(f"  {'':<14} {'file MiB':>9} {'read MiB':>9} {'saved MiB':>10} {'job s':>7} {'disk item s':>12}")
    for label, fig, vm in (("sparse full", sparse, "sparse01"), ("fixed full", full, "fixed01")):
        print(f"  {label:<14} {file_sizes[vm] / MiB:9.1f} {fig.read_bytes / MiB:9.1f} {fig.disk_bytes / MiB:10.1f} "
              f"{fig.job_seconds:7.1f} {fig.disk_seconds:12.2f}")
    print(f"  ratio          {'':>9} {100 * sparse.read_bytes / full.read_bytes:8.1f}% "
          f"{100 * sparse.disk_bytes / full.disk_bytes:9.1f}% {100 * sparse.job_seconds / full.job_seconds:6.1f}% "
          f"{100 * sparse.disk_seconds / full.disk_seconds:11.1f}%")
    print(f"  virtual size {args.size_mib} MiB; restore of the sparse full to a directory: {restore_s:.1f} s, "
          f"{allocated / MiB:.0f} MiB allocated on disk of {file_sizes['sparse01'] / MiB:.0f} MiB; qemu-img check and "
          f"compare with the source: {valid}")
    ok = valid and same and sparse.disk_bytes < full.disk_bytes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
