"""``bareos-hyperv demo``: the built-in simulated cluster, and the main jobs run against it.

The simulator (``hvsim``) and the fd emulation (``fdsim``) are the test rig, not part of the
installed product: the demo runs from a source checkout (``make demo``).  ``--keep`` leaves the
simulated estate running afterwards and prints the command lines that reach it (``list``,
``check``, ``plan``); ``--estate-only`` starts the estate without running the jobs.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, List, Optional

from bareos_hyperv.cli.render import render_inventory
from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.inventory import take_inventory
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.transport import TransportOptions

__all__ = ["REPO", "estate_commands", "run_demo"]

REPO = Path(__file__).resolve().parents[2]


def _import_rig() -> None:
    """Make hvsim and fdsim importable from the source checkout this package runs from."""
    try:
        import hvsim  # noqa: F401
    except ImportError:
        if not (REPO / "hvsim").is_dir():
            raise ConfigurationError(
                "the demo needs the simulator (hvsim) and the fd emulation (fdsim) of the source checkout, "
                "which the installed package does not contain",
                what_to_do="run it from a clone of the repository: make demo") from None
        sys.path.insert(0, str(REPO))


def _plugin_value(value: str) -> str:
    """A plugin-string value: a colon inside a value is written ``\\:``."""
    return value.replace(":", "\\:")


def estate_commands(sim: Any, credentials_file: Path, manifest: Optional[Path] = None) -> List[str]:
    """Command lines that reach the running estate (printed by ``demo --keep``, run by the tests)."""
    host_map = sim.host_map_option()
    smb_map = ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))
    base = f"--credentials-file {shlex.quote(str(credentials_file))} --host-map {host_map}"
    data = f" --smb-host-map {smb_map}" if smb_map else ""
    lines = [
        f"bareos-hyperv list --host {sim.cluster_name} {base}",
        f"bareos-hyperv list --host HVSTANDALONE01 --vm 'legacy*' --json {base}",
        f"bareos-hyperv check --host {sim.cluster_name} --vm web01 {base}{data}",
    ]
    if manifest is not None:
        lines.append(f"bareos-hyperv plan --manifest {shlex.quote(str(manifest))} --host {sim.cluster_name} "
                     f"--node HV02 --new-id --vm-name web01-copy {base}{data}")
    return lines


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_demo(args: argparse.Namespace) -> int:
    """Start the simulated estate, show its inventory, back up a clustered VM through the plugin, restore it.

    Everything is real except Windows: pywinrm over NTLM-encrypted HTTP to the simulated nodes,
    Samba serving their C$ shares, the plugin loaded by the Bareos fd emulation in a fresh
    sub-interpreter, and the core reading the disk pipes itself.
    """
    _import_rig()
    # The demo is the only product code that may use the simulators.
    from hvsim.simulation import Simulation

    keep = bool(args.keep or args.estate_only)
    out_dir = Path(args.output) if args.output else None
    with tempfile.TemporaryDirectory(prefix="bareos-hyperv-demo-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        print("Starting the simulated Hyper-V estate: cluster HVCLUSTER01 (nodes HV01, HV02, two CSVs)")
        print("and standalone host HVSTANDALONE01; WinRM and Samba on 127.0.0.1 ...", flush=True)
        with Simulation(root / "sim", samba=True) as sim:
            print(f"  ready in {time.monotonic() - started:.1f} s: "
                  + ", ".join(f"{n} at {a}:{p}" for n, (a, p) in sorted(sim.host_map().items())))
            creds_file = sim.write_credentials_file(root / "hyperv.cred")
            ok = True
            manifest: Optional[Path] = None
            if not args.estate_only:
                ok, manifest = _jobs(sim, creds_file, root, out_dir)
            if keep:
                print()
                print("== The simulated estate keeps running; reach it with (Ctrl-C stops it):")
                for line in estate_commands(sim, creds_file, manifest):
                    print("  " + line)
                print("READY", flush=True)
                _wait_for_signal()
            return 0 if ok else 1


def _jobs(sim: Any, creds_file: Path, root: Path, out_dir: Optional[Path]) -> tuple[bool, Optional[Path]]:
    from fdsim.fd import FdSim

    repo = REPO
    for entry in [sim.cluster_name or "", "HVSTANDALONE01"]:
        with Connector(Credentials.from_file(str(creds_file)), TransportOptions(transport="ntlm"),
                       host_map=dict(sim.host_map())) as conn:
            print()
            print(f"== bareos-hyperv list --host {entry}  (NTLM with message encryption over HTTP)")
            sys.stdout.write(render_inventory(take_inventory(conn, entry)))
            print(f"({conn.round_trips} WS-Management round trips)")

    store = out_dir / "store" if out_dir else root / "store"
    fd = FdSim(store)
    smb_map = ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))
    plugin = ":".join([
        "python3:module_name=bareos-fd-hyperv", "host=HVCLUSTER01", "vm=web01",
        f"credentials_file={_plugin_value(str(creds_file))}",
        f"host_map={_plugin_value(sim.host_map_option())}", f"smb_host_map={_plugin_value(smb_map)}"])
    print()
    print("== Full backup job: FileSet Plugin = \"python3:module_name=bareos-fd-hyperv:host=HVCLUSTER01:"
          "vm=web01:credentials_file=...\"")
    before = sim.log.count()
    job = fd.backup(plugin, plugin_dir=str(repo / "packaging"), extra_sys_path=[str(repo)])
    print(job.log())
    print(f"({sim.log.count() - before} WS-Management round trips for the job)")
    print()
    print(f"== Catalog: list files jobid={job.jobid}")
    print(fd.store.format_listing(job.jobid))
    if job.status != "T":
        return False, None
    where = (out_dir or root) / "restored"
    print()
    print(f"== Restore of the files alone into a directory (restore_local=yes): {where}")
    back = fd.restore(None, where=str(where), plugin_dir=str(repo / "packaging"), extra_sys_path=[str(repo)])
    print(back.log())
    tree = where / "@hyperv" / "HVCLUSTER01" / "web01"
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tree, capture_output=True, text=True,
                           check=False)
    print(f"$ cd {tree} && sha256sum -c SHA256SUMS")
    print(check.stdout.rstrip())
    vm = sim.world.vm("web01")
    print()
    print(f"Checkpoints left on web01: {len(sim.world.snapshots(vm.id))}; "
          f"reference points kept for the next incremental: {len(sim.world.reference_points(vm.id))}")
    into = _restore_into_hyperv(sim, fd, repo)
    manifest = tree / "manifest.xml"
    return back.status == "T" and check.returncode == 0 and into, manifest if manifest.is_file() else None


def _restore_into_hyperv(sim: Any, fd: Any, repo: Path) -> bool:
    """Restore web01 into Hyper-V as a copy on the other node, its switch renamed there."""
    world = sim.world
    hv02 = world.node("HV02")
    lan = hv02.switch_by_name("External-LAN")
    if lan is not None:
        lan.name = "Production"  # the administrator renamed the switch on HV02 since the backup
    options = ("python3:restore_node=HV02:restore_new_id=yes:restore_vm_name=web01-restored:"
               "restore_switch_map=External-LAN=Production")
    print()
    print("== Restore into Hyper-V: bconsole restore where=/ pluginoptions=\"" + options + "\"")
    back = fd.restore(None, where="/", pluginoptions=options, plugin_dir=str(repo / "packaging"),
                      extra_sys_path=[str(repo)])
    print(back.log())
    try:
        copy = world.vm("web01-restored")
    except (KeyError, ValueError):
        print("web01-restored was not created")
        return False
    group = world.cluster.group_for_vm(copy.id) if world.cluster else None
    print(f"web01-restored: ID {copy.id}, on {copy.node}, cluster role owner "
          f"{group.owner_node if group else '(none)'}")
    return back.status == "T" and copy.node == "HV02" and group is not None
