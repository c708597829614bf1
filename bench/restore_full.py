"""Restore of one VM with a 2 GiB disk into Hyper-V through fdsim, against Samba's ``smbclient put``, in one run.

A simulated standalone Hyper-V host (hvsim, WinRM over HTTP with NTLM, disks on a real ``smbd`` on
127.0.0.1) holds one VM whose only disk is a fixed VHDX of ``--size-mib`` MiB of incompressible
data.  The VM is backed up once through fdsim; then, each run:

* ``smbclient put`` of the same image (a local file) to the same signed SMB3 share (Samba's own
  client writing: the reference);
* the product's SMB writer alone writing the same file from the page cache (no pipe from the core,
  no SHA-256 check: the like-for-like counterpart of ``smbclient put``);
* a restore into Hyper-V through fdsim (the emulated Bareos fd writes the plugin's pipe itself, as
  the core does with ``do_io_in_core``), as a copy next to the original (``restore_new_id=yes``),
  so the disk is written over SMB under a temporary name, checked against its SHA-256, renamed,
  and the VM imported.

The product's rate is the disk's bytes over the agent's seconds from the pipe's open to the file's
end (the agent's ``written to ... MB/s`` line); the job's wall time (planning, import) is reported
beside it.  CPU seconds per GiB are reported per party (load-independent, unlike rates on a busy
machine): the writing client (``smbclient``, or the agent process), smbd (the server's parent
process accumulates its per-connection children), and this process (the emulated fd core that
feeds the plugin's pipe, plus the simulator).  MB/s = 10^6 bytes/s; medians of ``--runs``.  The
password reaches ``smbclient`` through a 0600 authentication file, never its argv.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Dict, List, Optional, Tuple

from bareos_hyperv.storage.locations import SmbLocation
from bareos_hyperv.storage.smb import SmbStorage
from bench.backup_full import VM_BIG, VM_SMALL, Bench, _authfile, build_world, disk_of, peak_rss_kib, rate, warm
from fdsim.fd import JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import STANDALONE

MiB = 1024 * 1024
_WRITTEN = re.compile(r"disks/\S+ written to (.+?), ([\d.]+) MB in ([\d.]+) s \(([\d.]+) MB/s\)")
_AGENT_HWM = re.compile(r"agent peak memory \(VmHWM\) (\d+) KiB")


@dataclass
class RestoreFigures:
    """One restore job."""

    agent_mbs: float
    job_seconds: float
    agent_hwm_kib: int
    cpu: Dict[str, float]


_HZ = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: Optional[int]) -> float:
    """CPU seconds of ``pid`` and its reaped children (utime, stime, cutime, cstime)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _HZ


def cpu_now(smbd_pid: Optional[int]) -> Dict[str, float]:
    """Cumulative CPU seconds: this process, its reaped children (agent, smbclient), smbd."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"core": me.ru_utime + me.ru_stime, "client": kids.ru_utime + kids.ru_stime,
            "smbd": _proc_cpu(smbd_pid)}


def cpu_since(before: Dict[str, float], smbd_pid: Optional[int], size: int) -> Dict[str, float]:
    """CPU seconds per GiB of each party since ``before``."""
    time.sleep(0.5)  # smbd reaps the connection's process (and adds its CPU) after the client left
    now = cpu_now(smbd_pid)
    return {k: (now[k] - before[k]) / (size / (1 << 30)) for k in now}


def run_smbclient_put(port: int, authfile: Path, local: Path, share_path: str,
                      smbd_pid: Optional[int] = None) -> Tuple[float, Dict[str, float]]:
    """MB/s and CPU s/GiB of ``smbclient put`` of a local file to the share (then removed)."""
    put = ["smbclient", "//127.0.0.1/D$", "-p", str(port), "-A", str(authfile), "-m", "SMB3",
           "-c", f'put "{local}" "{share_path}"']
    before = cpu_now(smbd_pid)
    t0 = time.perf_counter()
    res = subprocess.run(put, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    cpu = cpu_since(before, smbd_pid, local.stat().st_size)
    if res.returncode != 0:
        raise RuntimeError(f"smbclient put failed: {res.stdout}{res.stderr}")
    subprocess.run(["smbclient", "//127.0.0.1/D$", "-p", str(port), "-A", str(authfile), "-m", "SMB3",
                    "-c", f'del "{share_path}"'], capture_output=True, check=False)
    return rate(local.stat().st_size, dt), cpu


def run_writer(sim: Simulation, local: Path, share_path: str) -> float:
    """MB/s of the product's SMB writer alone (SmbStorage.create + write of the file, 1 MiB at a time,
    read from the page cache): the write half of a restore without the pipe from the core and the
    SHA-256 check, i.e. what smbclient put does.  The file is removed afterwards."""
    assert sim.samba is not None
    server = sim.samba.servers[STANDALONE]
    storage = SmbStorage(sim.user, sim.password, endpoints={STANDALONE: server.address})
    location = SmbLocation(STANDALONE, "D$", share_path.replace("/", "\\"))
    buf = bytearray(MiB)
    t0 = time.perf_counter()
    with storage, local.open("rb", buffering=0) as src:
        with storage.create(location) as writer:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                writer.write(memoryview(buf)[:n])
        seconds = time.perf_counter() - t0
        storage.delete(location)
    return rate(local.stat().st_size, seconds)


def restore(bench: Bench, name: str, smbd_pid: Optional[int] = None, size: int = 1) -> RestoreFigures:
    """Restore the big VM as a copy named ``name``; the copy and its disk are removed afterwards."""
    world = bench.sim.world
    before = cpu_now(smbd_pid)
    t0 = time.perf_counter()
    job: JobResult = bench.fd.restore(
        None, where="/", pluginoptions=f"python3:restore_new_id=yes:restore_vm_name={name}:restore_vm={VM_BIG}",
        plugin_dir=str(Path(__file__).resolve().parents[1] / "packaging"),
        extra_sys_path=[str(Path(__file__).resolve().parents[1])])
    seconds = time.perf_counter() - t0
    cpu = cpu_since(before, smbd_pid, size)
    if job.status != "T":
        raise RuntimeError(f"restore ended with status {job.status}:\n{job.log()}")
    text = "\n".join(job.texts())
    written = _WRITTEN.search(text)
    hwm = _AGENT_HWM.search(text)
    if written is None:
        raise RuntimeError(f"no disk rate in the job log:\n{job.log()}")
    size = int(float(written.group(2)) * MiB)
    figures = RestoreFigures(agent_mbs=rate(size, float(written.group(3))), job_seconds=seconds,
                             agent_hwm_kib=int(hwm.group(1)) if hwm else 0, cpu=cpu)
    vm = world.vm(name)
    for s in vm.config.vhds():
        world.local(vm.node, s.host_resource[0]).unlink()
    config = world.local(vm.node, vm.live_config_file())
    if config.exists():
        config.unlink()
    del world.vms[vm.id]
    return figures


def _med(values: List[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print a table; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m bench restore_full", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_RESTORE_SIZE_MIB", "2048")))
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    product: List[RestoreFigures] = []
    tools: Dict[str, List[float]] = {"smbclient put": [], "writer": []}
    put_cpu: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-restore-", dir=os.environ.get("BENCH_TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        print(f"creating the estate ({args.size_mib} MiB disk) ...", flush=True)
        world = build_world(tmp / "estate", size, 16 * MiB)
        with Simulation(tmp / "sim", world=world, samba=True, https=False) as sim:
            creds = sim.write_credentials_file(tmp / "hyperv.cred")
            bench = Bench(sim, tmp, creds)
            bench.backup(VM_SMALL, "default")
            bench.fd.backup(f"python3:module_name=bareos-fd-hyperv:{bench.options(VM_BIG, {})}",
                            plugin_dir=str(Path(__file__).resolve().parents[1] / "packaging"),
                            extra_sys_path=[str(Path(__file__).resolve().parents[1])])
            local = world.local(STANDALONE, disk_of(world, VM_BIG))
            image = tmp / "image.vhdx"
            subprocess.run(["cp", str(local), str(image)], check=True)
            target = str(PureWindowsPath(disk_of(world, VM_BIG)).relative_to("D:\\").parent / "put-copy.vhdx")
            assert sim.samba is not None
            port = sim.samba.servers[STANDALONE].port
            smbd_pid = sim.samba.servers[STANDALONE].pid
            with _authfile(tmp, sim.user, sim.password) as authfile:
                for run in range(args.runs):
                    # Each measured path starts with nothing dirty in the page cache: the estate, the
                    # backup's volume and the image copy are GiBs of dirty pages that the kernel
                    # writes back (and throttles writers for: vm.dirty_ratio) during whichever
                    # measurement comes next, timing the disk instead of the path.
                    warm(image)
                    os.sync()
                    put_rate, cpu = run_smbclient_put(port, authfile, image, target, smbd_pid)
                    tools["smbclient put"].append(put_rate)
                    warm(image)
                    os.sync()
                    tools["writer"].append(run_writer(sim, image, target))
                    os.sync()
                    put_cpu.append(cpu)
                    fig = restore(bench, f"{VM_BIG}-r{run}", smbd_pid, size)
                    product.append(fig)
                    print(f"  run {run + 1}: restore {fig.agent_mbs:7.0f} MB/s (smbclient put "
                          f"{tools['smbclient put'][-1]:.0f}); job {fig.job_seconds:.1f} s", flush=True)
    ref = _med(tools["smbclient put"])
    core = _med([f.agent_mbs for f in product])
    print()
    print(f"Restore into Hyper-V of a VM with a {args.size_mib} MiB disk through fdsim, loopback Samba (signed "
          f"SMB3), median of {args.runs} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"  {'path':<24} {'MB/s':>7} {'vs smbclient put':>17} {'agent VmHWM':>12} {'job s':>6}")
    print(f"  {'smbclient put':<24} {ref:7.0f} {1.0:16.2f}x")
    writer = _med(tools["writer"])
    print(f"  {'SMB writer alone':<24} {writer:7.0f} {writer / ref:16.2f}x   (no pipe, no SHA-256)")
    print(f"  {'restore (plugin)':<24} {core:7.0f} {core / ref:16.2f}x "
          f"{_med([f.agent_hwm_kib for f in product]) / 1024:9.0f} MiB {_med([f.job_seconds for f in product]):6.1f}")
    print(f"  peak memory of this process (fdsim + simulator): {peak_rss_kib() / 1024:.0f} MiB")
    print("  CPU seconds per GiB (medians; load-independent):")
    print(f"  {'path':<24} {'writer':>8} {'smbd':>8} {'fd core+sim':>12} {'total':>8}")
    for label, rows in (("smbclient put", put_cpu), ("restore (plugin)", [f.cpu for f in product])):
        med = {k: _med([r[k] for r in rows]) for k in ("client", "smbd", "core")}
        print(f"  {label:<24} {med['client']:8.2f} {med['smbd']:8.2f} {med['core']:12.2f} "
              f"{sum(med.values()):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
