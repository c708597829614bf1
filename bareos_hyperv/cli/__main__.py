"""``bareos-hyperv``: the product's command line, usable without Bareos.

``list``            inventory of a host or cluster (nodes, volumes, switches, VMs, disks, owners)
``check``           every probe a backup depends on, OK/WARN/FAIL with what to do
``plan``            the restore plan of a VM from its manifest, changing nothing
``install-plugin``  put the plugin module into the Bareos fd's plugin directory
``demo``            start the built-in simulated cluster and run the main job against it
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from bareos_hyperv import __version__
from bareos_hyperv.cli.common import add_connection_args, add_data_args, connector, format_error
from bareos_hyperv.errors import BareosHyperVError

DESCRIPTION = ("Back up and restore Hyper-V VMs from a Bareos file daemon on Linux: the command-line side. "
               "It reaches the hosts as the plugin does (WinRM, SMB) and never changes a VM.")

EPILOG = """\
credentials:
  --credentials-file FILE (lines username=DOMAIN\\user and password=..., mode 0600), or the
  environment variables BAREOS_HYPERV_USERNAME and BAREOS_HYPERV_PASSWORD. Passwords are never
  taken on the command line.

examples:
  bareos-hyperv list --host hv-cluster01 --credentials-file /etc/bareos/hyperv.cred
  bareos-hyperv list --host hv01 --vm 'web*' --json --credentials-file /etc/bareos/hyperv.cred
  bareos-hyperv check --host hv-cluster01 --vm web01 --credentials-file /etc/bareos/hyperv.cred
  bareos-hyperv plan --manifest /tmp/bareos-restores/@hyperv/HV-CLUSTER01/web01/manifest.xml \\
      --host hv-cluster01 --node hv02 --new-id --vm-name web01-test --credentials-file /etc/bareos/hyperv.cred
  bareos-hyperv install-plugin --plugin-dir /usr/lib/bareos/plugins

  Against the built-in simulator (source checkout): bareos-hyperv demo --estate-only
  prints the command lines, with --host-map and --smb-host-map, that reach it.

See docs/install.md for the installation into Bareos and the Windows-side preparation.
"""


def cmd_list(args: argparse.Namespace) -> int:
    """Print the inventory of the host or cluster."""
    from bareos_hyperv.cli.render import inventory_json, render_inventory, select_vms
    from bareos_hyperv.hyperv.inventory import take_inventory

    with connector(args) as conn:
        inv = take_inventory(conn, args.host)
        vms = select_vms(inv, args.vm)
        if args.vm and not vms:
            sys.stderr.write(f"bareos-hyperv: no VM of {inv.scope} matches {', '.join(args.vm)}\n")
        if args.json:
            sys.stdout.write(json.dumps(inventory_json(inv, vms), indent=2) + "\n")
        else:
            sys.stdout.write(render_inventory(inv, vms))
            sys.stdout.write(f"({conn.round_trips} WS-Management round trips)\n")
    return 0 if vms or not args.vm else 1


def cmd_check(args: argparse.Namespace) -> int:
    """Run every probe a backup depends on."""
    from bareos_hyperv.cli.check import run_check

    return run_check(args)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the restore plan of a manifest against the destination."""
    from bareos_hyperv.cli.plan import run_plan

    return run_plan(args)


def cmd_install_plugin(args: argparse.Namespace) -> int:
    """Install (or print) the module the fd loads."""
    from bareos_hyperv.cli.install import ENTRY_FILE, install_plugin, package_path, render_entry

    site = None if args.no_path else (args.package_path or package_path())
    if args.print:
        sys.stdout.write(render_entry(site))
        return 0
    if not args.plugin_dir:
        sys.stderr.write("bareos-hyperv install-plugin: give --plugin-dir DIR (the fd's Plugin Directory, "
                         "e.g. /usr/lib/bareos/plugins) or --print\n")
        return 2
    target, what = install_plugin(args.plugin_dir, site)
    print(f"{what}: {target}")
    if site:
        print(f"it imports bareos_hyperv from {site}")
    wrapper = target.parent / "BareosFdWrapper.py"
    if not wrapper.exists():
        print(f"note: {wrapper} is missing: install Bareos's python3 plugin for the fd "
              "(bareos-filedaemon-python3-plugin) so that this directory has it")
    print(f"Next: Plugin Names = \"python3\" and Plugin Directory = \"{target.parent}\" in the fd's Client "
          f"resource (bareos-fd.d/client/myself.conf), restart bareos-fd, then use "
          f"Plugin = \"python3:module_name={ENTRY_FILE[:-3]}:host=...:vm=...\" in a FileSet.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo against the built-in simulated cluster."""
    from bareos_hyperv.cli.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bareos-hyperv``."""
    parser = argparse.ArgumentParser(prog="bareos-hyperv", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bareos-hyperv {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging to standard error (passwords redacted)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="inventory of a host or cluster: nodes, volumes, switches, VMs and disks",
                       description="Print the inventory of a Hyper-V host or failover cluster: nodes, cluster "
                                   "shared volumes, switches, and each VM with its disks, adapters and owner.")
    add_connection_args(p)
    p.add_argument("--vm", action="append", default=[], metavar="PATTERN",
                   help="only VMs whose name or GUID matches this shell pattern (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="probe everything a backup depends on: OK/WARN/FAIL with what to do",
                       description="Probe WinRM, the account's rights on root/virtualization/v2 and "
                                   "root/MSCluster, the admin shares over SMB, each selected VM's disks, "
                                   "staging folder and switches, and the shared volumes' free space. "
                                   "Exit status: 0 all OK, 1 warnings, 2 a failure.")
    add_connection_args(p)
    add_data_args(p)
    p.add_argument("--vm", action="append", default=[], metavar="PATTERN",
                   help="probe these VMs (name, GUID or shell pattern; repeatable; default: all)")
    p.add_argument("--staging-path", metavar="FOLDER",
                   help="the host folder the plugin's staging_path= names (default: each VM's folder)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_check)

    from bareos_hyperv.cli.plan import add_plan_args

    p = sub.add_parser("plan", help="print the restore plan of a VM from its manifest, changing nothing",
                       description="Read the destination as a restore into Hyper-V would, and print the plan "
                                   "the plugin would carry out: where each disk goes and why, space per volume, "
                                   "switches, name and ID, cluster role; blocking problems with the flag that "
                                   "resolves each. Nothing is changed. Exit status: 0 ready, 1 refused.")
    add_connection_args(p, host_help="the destination: node, standalone host or cluster (default: where the "
                                     "VM was backed up)", required=False)
    add_data_args(p)
    add_plan_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("install-plugin", help="install the plugin module into the fd's plugin directory",
                       description="Write bareos-fd-hyperv.py (the module Bareos loads for module_name="
                                   "bareos-fd-hyperv) into the fd's Plugin Directory, with a line that lets it "
                                   "import this installation of bareos_hyperv.")
    p.add_argument("--plugin-dir", metavar="DIR", help="the fd's Plugin Directory, e.g. /usr/lib/bareos/plugins")
    p.add_argument("--print", action="store_true", help="print the module instead of installing it")
    p.add_argument("--package-path", metavar="DIR",
                   help="the directory holding bareos_hyperv/ at run time (default: where this one is)")
    p.add_argument("--no-path", action="store_true",
                   help="install the module unchanged (bareos_hyperv installed for the fd's python3, or "
                        "named by module_path= in the plugin string)")
    p.set_defaults(func=cmd_install_plugin)

    p = sub.add_parser("demo", help="run against the built-in simulated cluster (source checkout only)",
                       description="Start the simulated Hyper-V cluster (WinRM and Samba on 127.0.0.1), back up "
                                   "a clustered VM through the plugin in the Bareos fd emulation, restore it to "
                                   "a directory and into Hyper-V.")
    p.add_argument("--output", metavar="DIR", help="keep the demo's save-set store and restored files in DIR")
    p.add_argument("--keep", action="store_true",
                   help="keep the simulated estate running afterwards and print the command lines that reach it")
    p.add_argument("--estate-only", action="store_true",
                   help="start the simulated estate and keep it running, without the jobs (implies --keep)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; errors are printed as one clear line with what to do, exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BareosHyperVError as exc:
        sys.stderr.write(f"bareos-hyperv: {format_error(exc)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
