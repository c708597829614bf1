"""``bareos-hyperv``: the product's command line, usable without Bareos.

``list``  inventory of a host or cluster (nodes, volumes, switches, VMs, disks, owners)
``demo``  start the built-in simulated cluster and run the main job against it
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from bareos_hyperv.cli.render import render_inventory
from bareos_hyperv.errors import BareosHyperVError
from bareos_hyperv.hyperv.connection import Connector, parse_host_map
from bareos_hyperv.hyperv.inventory import take_inventory
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.transport import TransportOptions


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="a node or the cluster name")
    p.add_argument("--credentials-file", help="file with username= and password= lines (mode 0600)")
    p.add_argument("--username", help="user name; the password comes from BAREOS_HYPERV_PASSWORD")
    p.add_argument("--transport", default="ntlm", choices=["ntlm", "kerberos", "credssp", "basic"])
    p.add_argument("--https", action="store_true", help="use HTTPS (port 5986) instead of encrypted HTTP")
    p.add_argument("--port", type=int, help="WinRM port (default 5985, or 5986 with --https)")
    p.add_argument("--ca-trust-path", help="CA bundle that signs the hosts' HTTPS certificates")
    p.add_argument("--no-cert-validation", action="store_true", help="do not verify HTTPS certificates (unsafe)")
    p.add_argument("--host-map", default="", help="NODE=address[:port],... when names do not resolve")
    p.add_argument("--timeout", type=float, default=60.0, help="WS-Management operation timeout, seconds")


def _credentials(args: argparse.Namespace) -> Credentials:
    if args.credentials_file:
        return Credentials.from_file(args.credentials_file)
    env = {}
    if args.username:
        env["BAREOS_HYPERV_USERNAME"] = args.username
    return Credentials.from_env({**os.environ, **env})


def _connector(args: argparse.Namespace) -> Connector:
    options = TransportOptions(
        transport=args.transport,
        cert_validation=not args.no_cert_validation,
        ca_trust_path=args.ca_trust_path,
        operation_timeout=args.timeout,
    )
    return Connector(_credentials(args), options, https=args.https, port=args.port,
                     host_map=parse_host_map(args.host_map))


def cmd_list(args: argparse.Namespace) -> int:
    """Print the inventory of the host or cluster."""
    with _connector(args) as conn:
        inv = take_inventory(conn, args.host)
        sys.stdout.write(render_inventory(inv))
        sys.stdout.write(f"({conn.round_trips} WS-Management round trips)\n")
    return 0


def _plugin_value(value: str) -> str:
    """A plugin-string value: a colon inside a value is written ``\\:``."""
    return value.replace(":", "\\:")


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the simulated estate, show its inventory, then back up a clustered VM through the plugin.

    Everything is real except Windows: pywinrm over NTLM-encrypted HTTP to the simulated nodes,
    Samba serving their C$ shares, the plugin loaded by the Bareos fd emulation in a fresh
    sub-interpreter, and the core reading the disk pipes itself.
    """
    # The demo is the only product code that may use the simulators.
    from fdsim.fd import FdSim
    from hvsim.simulation import Simulation

    repo = Path(__file__).resolve().parents[2]
    out_dir = Path(args.output) if args.output else None
    with tempfile.TemporaryDirectory(prefix="bareos-hyperv-demo-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        print("Starting the simulated Hyper-V estate: cluster HVCLUSTER01 (nodes HV01, HV02, two CSVs)")
        print("and standalone host HVSTANDALONE01; WinRM and Samba on 127.0.0.1 ...")
        with Simulation(root / "sim", samba=True) as sim:
            print(f"  ready in {time.monotonic() - started:.1f} s: "
                  + ", ".join(f"{n} at {a}:{p}" for n, (a, p) in sorted(sim.host_map().items())))
            creds_file = sim.write_credentials_file(root / "hyperv.cred")
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
                return 1
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
            into = _demo_restore_into_hyperv(sim, fd, repo)
            return 0 if back.status == "T" and check.returncode == 0 and into else 1


def _demo_restore_into_hyperv(sim: Any, fd: Any, repo: Path) -> bool:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bareos-hyperv``."""
    parser = argparse.ArgumentParser(prog="bareos-hyperv", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (passwords redacted)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="inventory of a host or cluster")
    _connection_args(p_list)
    p_list.set_defaults(func=cmd_list)
    p_demo = sub.add_parser("demo", help="run against the built-in simulated cluster")
    p_demo.add_argument("--output", help="keep the demo's save-set store and restored files in this directory")
    p_demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; errors are printed as one clear line with what to do, exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BareosHyperVError as exc:
        sys.stderr.write(f"bareos-hyperv: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
