"""Incremental against full backup of one VM (bytes to the save set and wall time), in one run.

A simulated standalone Hyper-V host (hvsim, WinRM over HTTP with NTLM, real Samba on 127.0.0.1)
serves one running VM whose only disk is a dynamic VHDX of ``--size-mib`` MiB (1 MiB blocks, every
block allocated with incompressible data).  Each run, through fdsim (the emulated Bareos fd):

1. a Full backup;
2. the guest rewrites ``--changed-pct`` percent of the disk's blocks (whole 1 MiB blocks, spread
   over the disk);
3. an Incremental backup: change tracking (``GetVirtualDiskChanges``) mapped through the VHDX's
   block table; the delta item holds the changed blocks, the header section and the block table.

Reported: the disk item's bytes in the save set and the job's wall time for both, and their
ratios (targets of issue 7: bytes at most 1.5 % of the full's plus fixed metadata, time at most
10 % of the full's).  Then the incremental is restored into a directory (full + delta applied,
result digest checked) and the restored disk is compared with the source (SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import STANDALONE, build_standalone
from hvsim.world.state import DiskSpec, World

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "packaging"
VM = "inc01"
VM_DIR = "D:\\Hyper-V"
DISK = f"{VM_DIR}\\{VM}\\Virtual Hard Disks\\{VM}.vhdx"


def _escape(value: str) -> str:
    return value.replace(":", "\\:")


def build_world(root: Path, size: int) -> World:
    """A standalone host with the benchmark VM: one dynamic VHDX, 1 MiB blocks, all allocated."""
    w = World(root)
    build_standalone(w)
    folder = f"{VM_DIR}\\{VM}"
    w.add_vm(STANDALONE, VM, generation=2, version="9.0", state="running", root=folder, switches=["LAN"], seed=21,
             disks_=[DiskSpec(DISK, kind="dynamic", size=size, fill_ratio=1.0, block_size=MiB)])
    return w


@dataclass
class Figures:
    """One backup job."""

    disk_bytes: int
    job_seconds: float
    disk_seconds: float  # from the open of the disk item's data stream to its end, as the core saw it


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(8 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def plugin_string(sim: Simulation, credentials: Path, vm: str) -> str:
    """The FileSet plugin string that backs ``vm`` up from the simulated standalone host."""
    opts = {
        "host": STANDALONE,
        "vm": vm,
        "credentials_file": str(credentials),
        "host_map": sim.host_map_option(),
        "smb_host_map": ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items())),
        "timeout": "600",
        "agent_timeout": "600",
    }
    return "python3:module_name=bareos-fd-hyperv:" + ":".join(f"{k}={_escape(v)}" for k, v in opts.items())


class Bench:
    """The running estate and what the backups need to reach it."""

    def __init__(self, sim: Simulation, tmp: Path, credentials: Path) -> None:
        self.sim = sim
        self.tmp = tmp
        self.credentials = credentials
        self.fd = FdSim(tmp / "store")

    def plugin(self) -> str:
        return plugin_string(self.sim, self.credentials, VM)

    def backup(self, level: str) -> tuple[Figures, JobResult]:
        t0 = time.perf_counter()
        job = self.fd.backup(self.plugin(), level=level, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
        seconds = time.perf_counter() - t0
        if job.status != "T":
            raise RuntimeError(f"{level} backup ended with status {job.status}:\n{job.log()}")
        disks = [f for f in job.files if "/disks/" in f.fname]
        return Figures(sum(f.bytes for f in disks), seconds, sum(f.seconds for f in disks)), job

    def restore(self, where: Path) -> JobResult:
        job = self.fd.restore(None, where=str(where), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
        if job.status != "T":
            raise RuntimeError(f"restore ended with status {job.status}:\n{job.log()}")
        return job


def change_blocks(world: World, size: int, pct: float, seed: int) -> int:
    """Rewrite ``pct`` percent of the disk's 1 MiB blocks as the guest; returns the bytes written."""
    rnd = random.Random(seed)
    blocks = size // MiB
    chosen = sorted(rnd.sample(range(blocks), max(1, round(blocks * pct / 100))))
    vm = world.vm(VM)
    for block in chosen:
        world.guest_write(vm.id, 0, block * MiB, rnd.randbytes(MiB))
    return len(chosen) * MiB


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print a table; 0 on success, 1 when a target is missed."""
    p = argparse.ArgumentParser(prog="python -m bench backup_incremental", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_INCR_SIZE_MIB", "4096")))
    p.add_argument("--changed-pct", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "1")))
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    fulls: List[Figures] = []
    incs: List[Figures] = []
    written: List[int] = []
    verified: Dict[int, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench-incr-", dir=os.environ.get("BENCH_TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        print(f"creating the estate ({args.size_mib} MiB dynamic VHDX, all blocks allocated) ...", flush=True)
        t0 = time.perf_counter()
        world = build_world(tmp / "estate", size)
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
        with Simulation(tmp / "sim", world=world, samba=True, https=False) as sim:
            creds = sim.write_credentials_file(tmp / "hyperv.cred")
            bench = Bench(sim, tmp, creds)
            source = world.local(STANDALONE, DISK)
            for run in range(args.runs):
                full, _ = bench.backup("F")
                fulls.append(full)
                written.append(change_blocks(world, size, args.changed_pct, seed=run))
                expected = _sha(source)
                inc, job = bench.backup("I")
                incs.append(inc)
                print(f"  run {run + 1}: full {full.disk_bytes / MiB:.1f} MiB in {full.job_seconds:.1f} s, "
                      f"incremental {inc.disk_bytes / MiB:.1f} MiB in {inc.job_seconds:.1f} s", flush=True)
                where = tmp / f"restored{run}"
                bench.restore(where)
                restored = where / "@hyperv" / STANDALONE / VM / "disks" / f"0-{VM}.vhdx"
                verified[run] = _sha(restored) == expected
                for path in sorted(where.rglob("*"), reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
                for record in (job.jobid, job.jobid - 1):
                    vol = bench.fd.store.volume_path(record)
                    if vol.exists():
                        vol.unlink()

    full_bytes = statistics.median(f.disk_bytes for f in fulls)
    inc_bytes = statistics.median(f.disk_bytes for f in incs)
    full_s = statistics.median(f.job_seconds for f in fulls)
    inc_s = statistics.median(f.job_seconds for f in incs)
    full_d = statistics.median(f.disk_seconds for f in fulls)
    inc_d = statistics.median(f.disk_seconds for f in incs)
    changed = statistics.median(written)
    bytes_ratio = inc_bytes / full_bytes
    time_ratio = inc_s / full_s
    metadata = 4 * MiB  # header section, log, BAT and metadata region of a VHDX: at most 1 MiB each
    print()
    print(f"Incremental vs full of a {args.size_mib} MiB dynamic VHDX (1 MiB blocks), {args.changed_pct:g} % of "
          f"blocks rewritten ({changed / MiB:.0f} MiB), through fdsim and loopback Samba, median of {args.runs} "
          f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"  {'':<12} {'disk bytes':>14} {'job s':>8} {'disk item s':>12}")
    print(f"  {'full':<12} {full_bytes / MiB:11.1f} MiB {full_s:8.1f} {full_d:12.2f}")
    print(f"  {'incremental':<12} {inc_bytes / MiB:11.1f} MiB {inc_s:8.1f} {inc_d:12.2f}")
    print(f"  ratio        {100 * bytes_ratio:12.2f} % {100 * time_ratio:7.1f} % {100 * inc_d / full_d:10.1f} %   "
          f"(targets: bytes <= {100 * 0.015 + 100 * metadata / full_bytes:.2f} % = 1.5 % + fixed metadata, "
          f"time <= 10 %)")
    print(f"  fixed cost of a job here (job s - disk item s): full {full_s - full_d:.1f} s, incremental "
          f"{inc_s - inc_d:.1f} s (agent start, WS-Man round trips, Hyper-V jobs, checkpoint planning)")
    print(f"  restore of the incremental equals the source (SHA-256): {all(verified.values())}")
    ok = inc_bytes <= 0.015 * full_bytes + metadata and time_ratio <= 0.10 and all(verified.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
