"""Full backup of one VM with a 2 GiB disk through fdsim, against Samba's ``smbclient`` and ``cat``, in one run.

A simulated standalone Hyper-V host (hvsim, WinRM over HTTP with NTLM) serves one running VM whose
only disk is a fixed VHDX of ``--size-mib`` MiB of incompressible data (every byte allocated, so
every byte moves), and a small VM with a disk of ``--small-mib`` MiB to show that memory does not
grow with the disk.  A real ``smbd`` serves the host's drives on 127.0.0.1.  Each run:

* ``cat`` of the local disk file (the machine's ceiling),
* ``smbclient get <disk> /dev/null`` over the same signed SMB3 share (Samba's own client),
* a Full backup through fdsim (the emulated Bareos fd, which reads the plugin's pipe itself, as the
  core does with ``do_io_in_core``) of the small VM and of the big one, for each ``--variant``.

The product's rate is the disk item's bytes over the seconds from its data stream's open to its
end of file as the core saw it (fdsim ``FileResult.seconds``), not the job's wall time (which holds
the checkpoint, the configuration export and start-up).  Also reported: the agent's own figure for
the same disk, the agent's peak memory (VmHWM, from the job log), this process's peak memory
(fdsim and the simulator), and the control-plane round trips per VM (WS-Management requests in the
simulator's request log).  MB/s = 10^6 bytes/s; medians of ``--runs``.

The password reaches ``smbclient`` through a 0600 authentication file (``-A``), never its argv.

Variants (``--variant``, repeatable; default: ``default``, ``smbclient`` and ``local``):

``default``      the product as shipped (smbprotocol, pipelined);
``smbprotocol``  the pipelined smbprotocol reader, named explicitly;
``smbclient``    Samba's client as the data mover for the disk's sequential read
                 (``bareos_hyperv.storage.smbclient_mover``);
``local``        ``data=local`` (the share's directory as a local mount): the upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Dict, Iterator, List, Optional

from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import STANDALONE, build_standalone
from hvsim.world.state import DiskSpec, World

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "packaging"
VM_BIG, VM_SMALL = "bench01", "bench02"
VM_DIR = "D:\\Hyper-V"
# The agent picks its SMB data mover from this variable (see bareos_hyperv.storage.smb.SmbOptions).
MOVER_ENV = "BAREOS_HYPERV_SMB_MOVER"
VARIANTS = {
    "default": ({}, {}),
    "smbprotocol": ({MOVER_ENV: "smbprotocol"}, {}),
    "smbclient": ({MOVER_ENV: "smbclient"}, {}),
    "local": ({}, {"data": "local"}),
}
_AGENT_HWM = re.compile(r"agent peak memory \(VmHWM\) (\d+) KiB")
_AGENT_RATE = re.compile(r"saved disks/\S+, [\d.]+ MB in [\d.]+ s \(([\d.]+) MB/s\)")


def _escape(value: str) -> str:
    """A plugin-string value: ``:`` separates options, so a colon inside a value is written ``\\:``."""
    return value.replace(":", "\\:")


def build_world(root: Path, size: int, small: int) -> World:
    """A standalone host with the two benchmark VMs, each with one fully allocated fixed VHDX."""
    w = World(root)
    build_standalone(w)
    for name, disk, seed in ((VM_BIG, size, 11), (VM_SMALL, small, 12)):
        folder = f"{VM_DIR}\\{name}"
        w.add_vm(STANDALONE, name, generation=2, version="9.0", state="running", root=folder, switches=["LAN"],
                 seed=seed, disks_=[DiskSpec(f"{folder}\\Virtual Hard Disks\\{name}.vhdx", kind="fixed",
                                             size=disk, fill_ratio=1.0)])
    return w


def disk_of(world: World, vm: str) -> str:
    """Host path of the VM's only disk."""
    return f"{VM_DIR}\\{vm}\\Virtual Hard Disks\\{vm}.vhdx"


def warm(path: Path) -> None:
    """Pull a file into the page cache so every tool reads it the same way."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass


def rate(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes per second)."""
    return nbytes / max(seconds, 1e-9) / 1e6


def run_cat(path: Path) -> float:
    """MB/s of ``cat`` of the local file."""
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return rate(path.stat().st_size, time.perf_counter() - t0)


def run_smbclient(port: int, authfile: Path, share_path: str, size: int) -> float:
    """MB/s of ``smbclient get`` of the disk (signed SMB3, same smbd as the product)."""
    argv = ["smbclient", "//127.0.0.1/D$", "-p", str(port), "-A", str(authfile), "-m", "SMB3",
            "-c", f'get "{share_path}" /dev/null']
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"smbclient failed: {res.stdout}{res.stderr}")
    return rate(size, dt)


@dataclass
class BackupFigures:
    """One backup job of one VM."""

    core_mbs: float
    agent_mbs: float
    agent_hwm_kib: int
    round_trips: int
    job_seconds: float


@dataclass
class Row:
    """Medians of one variant."""

    big: List[BackupFigures] = field(default_factory=list)
    small: List[BackupFigures] = field(default_factory=list)


class Bench:
    """The running estate and what the backups need to reach it."""

    def __init__(self, sim: Simulation, tmp: Path, credentials: Path) -> None:
        self.sim = sim
        self.tmp = tmp
        self.credentials = credentials
        self.fd = FdSim(tmp / "store")

    def options(self, vm: str, extra: Dict[str, str]) -> str:
        opts = {
            "host": STANDALONE,
            "vm": vm,
            "credentials_file": str(self.credentials),
            "host_map": self.sim.host_map_option(),
            "smb_host_map": ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(self.sim.smb_map().items())),
            "timeout": "300",
        }
        if extra.get("data") == "local":
            local = self.sim.world.local(STANDALONE, VM_DIR)
            opts["path_map"] = f"{VM_DIR}={local}"
        opts.update(extra)
        return ":".join(f"{k}={_escape(v)}" for k, v in opts.items())

    def backup(self, vm: str, variant: str) -> BackupFigures:
        env, extra = VARIANTS[variant]
        saved = {k: os.environ.get(k) for k in (MOVER_ENV, *env)}
        os.environ.pop(MOVER_ENV, None)
        os.environ.update(env)
        self.sim.log.clear()
        t0 = time.perf_counter()
        try:
            job = self.fd.backup(f"python3:module_name=bareos-fd-hyperv:{self.options(vm, extra)}",
                                 plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        job_seconds = time.perf_counter() - t0
        if job.status != "T":
            raise RuntimeError(f"backup of {vm} ({variant}) ended with status {job.status}:\n{job.log()}")
        figures = self._figures(job, job_seconds)
        # The volume is not needed any more; keep the page cache for the next run's source file.
        vol = self.fd.store.volume_path(job.jobid)
        if vol.exists():
            vol.unlink()
        return figures

    def _figures(self, job: JobResult, job_seconds: float) -> BackupFigures:
        disks = [f for f in job.files if "/disks/" in f.fname]
        if len(disks) != 1 or disks[0].bytes != disks[0].size:
            raise RuntimeError(f"expected one complete disk item, got {disks}")
        disk = disks[0]
        text = "\n".join(job.texts())
        hwm = _AGENT_HWM.search(text)
        agent = _AGENT_RATE.search(text)
        return BackupFigures(
            core_mbs=rate(disk.bytes, disk.seconds),
            agent_mbs=float(agent.group(1)) if agent else 0.0,
            agent_hwm_kib=int(hwm.group(1)) if hwm else 0,
            round_trips=self.sim.log.count(),
            job_seconds=job_seconds,
        )


def _med(values: List[float]) -> float:
    return statistics.median(values) if values else 0.0


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@contextlib.contextmanager
def _authfile(tmp: Path, user: str, password: str) -> Iterator[Path]:
    """A 0600 smbclient authentication file in a private directory, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="auth-", dir=tmp))
    path = d / "auth"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"username = {user}\npassword = {password}\n")
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print a table; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m bench backup_full", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_BACKUP_SIZE_MIB", "2048")))
    p.add_argument("--small-mib", type=int, default=256, help="disk of the second VM (memory must not grow)")
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="product variants to run")
    args = p.parse_args(argv)
    variants = args.variant or ["default", "smbclient", "local"]
    size, small = args.size_mib * MiB, args.small_mib * MiB

    rows: Dict[str, Row] = {v: Row() for v in variants}
    tools: Dict[str, List[float]] = {"cat": [], "smbclient": []}
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir=os.environ.get("BENCH_TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        print(f"creating the estate ({args.size_mib} + {args.small_mib} MiB of disks) ...", flush=True)
        t0 = time.perf_counter()
        world = build_world(tmp / "estate", size, small)
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
        with Simulation(tmp / "sim", world=world, samba=True, https=False) as sim:
            creds = sim.write_credentials_file(tmp / "hyperv.cred")
            bench = Bench(sim, tmp, creds)
            local = world.local(STANDALONE, disk_of(world, VM_BIG))
            share_rel = str(PureWindowsPath(disk_of(world, VM_BIG)).relative_to("D:\\"))
            assert sim.samba is not None
            port = sim.samba.servers[STANDALONE].port
            with _authfile(tmp, sim.user, sim.password) as authfile:
                for run in range(args.runs):
                    warm(local)
                    tools["cat"].append(run_cat(local))
                    tools["smbclient"].append(run_smbclient(port, authfile, share_rel, local.stat().st_size))
                    for variant in variants:
                        rows[variant].small.append(bench.backup(VM_SMALL, variant))
                        warm(local)
                        fig = bench.backup(VM_BIG, variant)
                        rows[variant].big.append(fig)
                        print(f"  run {run + 1} {variant:<12} {fig.core_mbs:7.0f} MB/s (smbclient "
                              f"{tools['smbclient'][-1]:.0f}, cat {tools['cat'][-1]:.0f})", flush=True)

    ref = _med(tools["smbclient"])
    print()
    print(f"Full backup of a VM with a {args.size_mib} MiB disk through fdsim, loopback Samba (signed SMB3), "
          f"median of {args.runs} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"  {'path':<24} {'MB/s':>7} {'vs smbclient':>13} {'agent MB/s':>11} {'agent VmHWM':>12} "
          f"{'(small disk)':>12} {'round trips/VM':>15} {'job s':>6}")
    for name in ("cat", "smbclient"):
        print(f"  {name:<24} {_med(tools[name]):7.0f} {_med(tools[name]) / ref:12.2f}x")
    for variant, row in rows.items():
        core = _med([f.core_mbs for f in row.big])
        print(f"  {'backup ' + variant:<24} {core:7.0f} {core / ref:12.2f}x "
              f"{_med([f.agent_mbs for f in row.big]):11.0f} "
              f"{_med([f.agent_hwm_kib for f in row.big]) / 1024:9.0f} MiB "
              f"{_med([f.agent_hwm_kib for f in row.small]) / 1024:9.0f} MiB "
              f"{_med([f.round_trips for f in row.big]):15.0f} {_med([f.job_seconds for f in row.big]):6.1f}")
    print(f"  peak memory of this process (fdsim + simulator): {peak_rss_kib() / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
