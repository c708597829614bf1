"""Aggregate throughput of four concurrent Full backups against one, in the same run (issue 11, item 11).

A simulated standalone Hyper-V host (hvsim, WinRM over HTTP with NTLM) serves four running VMs,
each with one fixed VHDX of ``--size-mib`` MiB of incompressible data; a real ``smbd`` serves the
host's drives on 127.0.0.1.  One fdsim process (the emulated Bareos fd; a real fd runs up to 20 jobs
at once) then, in each run:

* backs up one VM alone,
* backs up all four VMs at once, each job on a thread of its own, started at one moment (each with
  its own sub-interpreter, agent process, checkpoint and staging folder).

Figures (MB/s = 10^6 bytes/s, medians of ``--runs``):

* ``aggregate``: the bytes of every job over the wall time from the first start to the last end
  (checkpoints, configuration export and start-up included, as an administrator's night sees it);
* ``disk``: per disk item, its bytes over the seconds from its data stream's open to its end of
  file as the core saw it (fdsim ``FileResult.seconds``), median over the jobs;
* ``speed-up``: aggregate of four over aggregate of one.

The cluster simulator, Samba, fdsim and the agents share this machine's CPUs, so the figures say
how the product scales here, not on a real Hyper-V host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bench.backup_full import PLUGIN_DIR, REPO, VM_DIR, Bench, MiB, peak_rss_kib, rate, warm
from fdsim.fd import JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import STANDALONE, build_standalone
from hvsim.world.state import DiskSpec, World

JOBS = 4
VMS = [f"conc{i:02d}" for i in range(1, JOBS + 1)]


def build_world(root: Path, size: int) -> World:
    """A standalone host with the benchmark VMs, each with one fully allocated fixed VHDX."""
    w = World(root)
    build_standalone(w)
    for seed, name in enumerate(VMS, start=21):
        folder = f"{VM_DIR}\\{name}"
        w.add_vm(STANDALONE, name, generation=2, version="9.0", state="running", root=folder, switches=["LAN"],
                 seed=seed, disks_=[DiskSpec(f"{folder}\\Virtual Hard Disks\\{name}.vhdx", kind="fixed",
                                             size=size, fill_ratio=1.0)])
    return w


@dataclass
class Round:
    """One measurement: one job alone, or the four together."""

    jobs: int
    bytes: int
    wall: float
    disk_mbs: List[float]

    @property
    def aggregate(self) -> float:
        """MB/s of all the jobs' bytes over the wall time."""
        return rate(self.bytes, self.wall)


def _together(calls: List[Callable[[], JobResult]]) -> List[JobResult]:
    """Start every call at one moment on a thread of its own; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: Dict[int, JobResult] = {}
    errors: Dict[int, BaseException] = {}

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"bench-job-{i}") for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"concurrent backups raised: {errors}")
    return [results[i] for i in range(len(calls))]


def measure(bench: Bench, vms: List[str]) -> Round:
    """Back up ``vms`` at once (one job per VM); check every job and free its volume."""

    def job(vm: str) -> Callable[[], JobResult]:
        cmd = f"python3:module_name=bareos-fd-hyperv:{bench.options(vm, {})}"
        return lambda: bench.fd.backup(cmd, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO], job_name=f"bench-{vm}")

    t0 = time.perf_counter()
    jobs = _together([job(vm) for vm in vms])
    wall = time.perf_counter() - t0
    disk_mbs = []
    for vm, result in zip(vms, jobs):
        if result.status != "T":
            raise RuntimeError(f"backup of {vm} ended with status {result.status}:\n{result.log()}")
        disks = [f for f in result.files if "/disks/" in f.fname]
        if len(disks) != 1 or disks[0].bytes != disks[0].size:
            raise RuntimeError(f"{vm}: expected one complete disk item, got {disks}")
        disk_mbs.append(rate(disks[0].bytes, disks[0].seconds))
        vol = bench.fd.store.volume_path(result.jobid)
        if vol.exists():
            vol.unlink()
    return Round(jobs=len(vms), bytes=sum(r.bytes for r in jobs), wall=wall, disk_mbs=disk_mbs)


def _med(values: List[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print a table; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m bench concurrent", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_CONCURRENT_SIZE_MIB", "512")),
                   help="disk of each VM")
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    args = p.parse_args(argv)
    size = args.size_mib * MiB

    one: List[Round] = []
    four: List[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-", dir=os.environ.get("BENCH_TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        print(f"creating the estate ({JOBS} VMs x {args.size_mib} MiB of disk) ...", flush=True)
        t0 = time.perf_counter()
        world = build_world(tmp / "estate", size)
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
        disks = [world.local(STANDALONE, f"{VM_DIR}\\{vm}\\Virtual Hard Disks\\{vm}.vhdx") for vm in VMS]
        with Simulation(tmp / "sim", world=world, samba=True, https=False) as sim:
            bench = Bench(sim, tmp, sim.write_credentials_file(tmp / "hyperv.cred"))
            for run in range(args.runs):
                for disk in disks:  # every job reads from the page cache, alone or together
                    warm(disk)
                alone = measure(bench, VMS[:1])
                together = measure(bench, VMS)
                one.append(alone)
                four.append(together)
                print(f"  run {run + 1}: one job {alone.aggregate:6.0f} MB/s ({alone.wall:.1f} s), "
                      f"{JOBS} jobs {together.aggregate:6.0f} MB/s ({together.wall:.1f} s)", flush=True)

    base = _med([r.aggregate for r in one])
    print()
    print(f"Full backups through one fdsim process, {args.size_mib} MiB disk per VM, loopback Samba (signed "
          f"SMB3), median of {args.runs} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"  {'jobs at once':<14} {'aggregate MB/s':>15} {'speed-up':>9} {'disk MB/s per job':>18} {'wall s':>7}")
    for label, rounds in (("1", one), (str(JOBS), four)):
        agg = _med([r.aggregate for r in rounds])
        print(f"  {label:<14} {agg:15.0f} {agg / base:8.2f}x {_med([m for r in rounds for m in r.disk_mbs]):18.0f} "
              f"{_med([r.wall for r in rounds]):7.1f}")
    print(f"  peak memory of this process (fdsim + simulator): {peak_rss_kib() / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
