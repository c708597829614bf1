r"""``bareos-hyperv check``: every probe a backup depends on, each OK, WARN or FAIL with what to do.

Probes, in the order a backup meets them:

* ``winrm``: each node's WinRM answers and accepts the account (Identify, then a query);
* ``cluster``: the account may read ``root/MSCluster`` (or the host is standalone); nodes that are down;
* ``hyperv``: the account may use ``root/virtualization/v2`` on each node; the host's build allows
  recovery checkpoints and resilient change tracking (Windows Server 2016, build 14393, or later);
* ``smb``: each node's admin share ``C$`` can be listed (or the ``--path-map`` mount, ``--data local``);
* per selected VM: ``version`` (its configuration version runs on its host and has RCT),
  ``disk`` (each disk file can be read over SMB; pass-through disks and VHD Sets cannot be captured by a
  checkpoint), ``staging`` (a file can be created in the staging folder: ``--staging-path`` or the VM's
  configuration folder), ``switch`` (each adapter's switch exists on every node it may run on);
* ``space``: free space of each cluster shared volume (the checkpoints' differencing disks grow there).

Exit status: 0 when everything is OK, 1 when there are warnings only, 2 when anything failed.
Nothing is changed on the hosts, except a probe file created and removed in each staging folder.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

from bareos_hyperv.cli.common import Connections, cli_advice, connect
from bareos_hyperv.cli.render import passthrough_disk, select_vms
from bareos_hyperv.errors import BareosHyperVError
from bareos_hyperv.hyperv import cluster as cl
from bareos_hyperv.hyperv.host import build_from_product_version, host_facts
from bareos_hyperv.hyperv.inventory import Inventory, take_inventory
from bareos_hyperv.model.cluster import NodeState
from bareos_hyperv.model.host import HostFacts
from bareos_hyperv.model.vm import Drive, DriveKind, VmConfig
from bareos_hyperv.storage.base import StorageAccessDenied, StorageAuthError, StorageConnectionError, StorageNotFound
from bareos_hyperv.storage.locations import Location, SmbLocation
from bareos_hyperv.wsman.errors import (
    AccessDeniedFault,
    AuthenticationError,
    NotFoundFault,
    TlsVerificationError,
    WsmanConnectionError,
)

__all__ = ["Probe", "run_check"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"
RCT_BUILD = 14393  # Windows Server 2016: recovery checkpoints and resilient change tracking
RCT_VERSION = (6, 2)  # the first configuration version with RCT
LOW_SPACE = 0.10  # a CSV with less than this share free gets a warning
_GIB = 1024**3

# The admin shares and root/MSCluster need a full administrator token: Hyper-V Administrators is not
# enough, and UAC filters a local account's token over the network (hvsim.rights has the sources).
ADMIN_RIGHTS = ("add the account to the local Administrators group of {node} (Hyper-V Administrators is not "
                "enough for the admin shares and root/MSCluster); a local (non-domain) account also needs "
                "LocalAccountTokenFilterPolicy=1, or use a domain account; see docs/install.md, 'Windows side'")


@dataclass
class Probe:
    """One result line: status, what was probed (``winrm``, ``disk``, ...), where, what was found, what to do."""

    status: str
    probe: str
    subject: str
    detail: str
    advice: str = ""


class _Checker:
    def __init__(self, args: argparse.Namespace, conns: Connections) -> None:
        self.args = args
        self.conns = conns
        self.results: List[Probe] = []

    def add(self, status: str, probe: str, subject: str, detail: str, advice: str = "") -> None:
        self.results.append(Probe(status, probe, subject, detail, advice))

    def fail(self, probe: str, subject: str, exc: BareosHyperVError, advice: Optional[str] = None) -> None:
        self.add(FAIL, probe, subject, exc.message, advice or cli_advice(exc.what_to_do) or "")

    # ------------------------------------------------------------------ WinRM

    def winrm(self, node: str) -> bool:
        client = self.conns.connector.client(node)
        endpoint = self.conns.connector.endpoint(node)
        port = self.args.port or (5986 if self.args.https else 5985)
        try:
            ident = client.identify()
        except AuthenticationError as exc:
            self.fail("winrm", node, exc, "check the user name and password (--username/--credentials-file); "
                                          f"{ADMIN_RIGHTS.format(node=node)}")
            return False
        except TlsVerificationError as exc:
            self.fail("winrm", node, exc, "give --ca-trust-path FILE with the CA that signed the host's certificate")
            return False
        except WsmanConnectionError as exc:
            self.fail("winrm", node, exc, f"on {node}: run 'winrm quickconfig' (HTTPS: add a listener with a "
                                          f"certificate) and open TCP {port} in its firewall; or give --host-map")
            return False
        except BareosHyperVError as exc:
            self.fail("winrm", node, exc)
            return False
        build = build_from_product_version(ident.product_version)
        self.add(OK, "winrm", node, f"WinRM at {endpoint.hostport} answered and accepted the account "
                                    f"({self.args.transport}{', HTTPS' if self.args.https else ''}; "
                                    f"Windows build {build or 'unknown'})")
        return True

    # ------------------------------------------------------------------ cluster

    def cluster(self, entry: str) -> Optional[List[str]]:
        """The nodes to probe (up ones), or None when the entry's cluster cannot be read."""
        client = self.conns.connector.client(entry)
        try:
            cluster = cl.cluster_of(client)
            if cluster is None:
                self.add(OK, "cluster", entry, "standalone host (no failover cluster)")
                return [entry]
            facts = cl.cluster_facts(client, cluster)
        except cl.ClusterAccessError as exc:
            self.fail("cluster", entry, exc, f"the account needs full access to the cluster (Grant-ClusterAccess "
                                             f"-Full) and {ADMIN_RIGHTS.format(node='every node')}")
            return None
        except BareosHyperVError as exc:
            self.fail("cluster", entry, exc)
            return None
        up = [n.name for n in facts.nodes if n.state in (NodeState.UP, NodeState.PAUSED)]
        self.add(OK, "cluster", facts.name, f"root/MSCluster readable: nodes {', '.join(n.name for n in facts.nodes)}, "
                                            f"{len(facts.volumes)} shared volume(s), {len(facts.groups)} VM role(s)")
        for node in facts.nodes:
            if node.name not in up:
                self.add(WARN, "cluster", node.name, f"node is {node.state.name.lower()}: its VMs cannot be reached",
                         f"bring {node.name} up, or move its roles to a node that is up")
        for volume in facts.volumes:
            share = volume.free_bytes / volume.total_bytes if volume.total_bytes else 1.0
            text = f"{volume.name}: {_size(volume.free_bytes)} free of {_size(volume.total_bytes)}"
            if share < LOW_SPACE:
                self.add(WARN, "space", volume.path, text + "; a checkpoint's differencing disks grow here",
                         "free space on the volume before the backup window")
            else:
                self.add(OK, "space", volume.path, text)
        return up

    # ------------------------------------------------------------------ per node

    def hyperv(self, node: str) -> Optional[HostFacts]:
        try:
            facts = host_facts(self.conns.connector.client(node), name=node)
        except (AccessDeniedFault, NotFoundFault) as exc:
            denied = isinstance(exc, AccessDeniedFault)
            what = "refused the account" if denied else "is missing"
            self.add(FAIL, "hyperv", node, f"root/virtualization/v2 {what}: {exc.message}",
                     ADMIN_RIGHTS.format(node=node) if denied else f"install the Hyper-V role on {node}")
            return None
        except BareosHyperVError as exc:
            self.fail("hyperv", node, exc)
            return None
        build = _build(facts.os_version)
        if build is not None and build < RCT_BUILD:
            self.add(FAIL, "hyperv", node, f"Windows {facts.os_version} has no recovery checkpoints nor resilient "
                                           "change tracking", "upgrade the host to Windows Server 2016 or later")
        else:
            self.add(OK, "hyperv", node, f"root/virtualization/v2 usable; Windows {facts.os_version}: recovery "
                                         f"checkpoints and RCT; configuration versions "
                                         f"{', '.join(facts.supported_config_versions) or 'unknown'}")
        return facts

    def smb(self, node: str) -> None:
        path = "C:\\"
        try:
            location = self.conns.resolver.resolve(path, node)
            self.conns.storage.listdir(location)
        except BareosHyperVError as exc:
            self.add(FAIL, "smb", node, f"{_where(path, node)} cannot be listed: {exc.message}", _smb_advice(exc, node))
            return
        self.add(OK, "smb", node, f"{_share(location)} readable")

    # ------------------------------------------------------------------ per VM

    def vm(self, vm: VmConfig, node: str, host: Optional[HostFacts], inv: Inventory) -> None:
        subject = vm.ref.name
        supported = host.supported_config_versions if host is not None else []
        if supported and vm.version not in supported:
            self.add(FAIL, "version", subject, f"configuration version {vm.version} does not run on {node} "
                                               f"(it runs {', '.join(supported)})",
                     f"upgrade the VM's configuration version (Update-VMVersion {vm.ref.name})")
        elif _version(vm.version) < RCT_VERSION:
            self.add(WARN, "version", subject, f"configuration version {vm.version} has no resilient change "
                                               "tracking nor reference points: backups remove their checkpoint, "
                                               "and every incremental reads whole disks to compare digests",
                     f"upgrade it with Update-VMVersion {vm.ref.name} (the VM must be off)")
        else:
            self.add(OK, "version", subject, f"configuration version {vm.version}, generation {int(vm.generation)}, "
                                             f"{vm.state.value} on {node}")
        for drive in vm.drives:
            self.drive(vm, drive, node)
        self.staging(vm, node)
        self.switches(vm, node, inv)

    def drive(self, vm: VmConfig, drive: Drive, node: str) -> None:
        kind, path, resource = drive.kind, drive.path, drive.host_resource
        subject = f"{vm.ref.name} {drive.slot}"
        if kind is DriveKind.PASS_THROUGH:
            self.add(FAIL, "disk", subject, f"pass-through disk ({passthrough_disk(resource)}) cannot be captured by "
                                            "a checkpoint: it is not backed up",
                     "move the data to a VHDX, or back it up from inside the guest; the backup skips it with a warning")
            return
        if kind is DriveKind.SHARED_DISK:
            self.add(FAIL, "disk", subject, f"shared disk (VHD Set) {path or ''} cannot be captured: it is not "
                                            "backed up", "back the shared disk up from inside the guest cluster")
            return
        if kind is not DriveKind.VIRTUAL_DISK or not path:
            return
        try:
            location = self.conns.resolver.resolve(path, node)
            stat = self.conns.storage.stat(location)
        except BareosHyperVError as exc:
            self.add(FAIL, "disk", subject, f"{path} cannot be read: {exc.message}", _smb_advice(exc, node))
            return
        self.add(OK, "disk", subject, f"{path} readable over {_share(location)} ({_size(stat.size)})")

    def staging(self, vm: VmConfig, node: str) -> None:
        folder = self.args.staging_path or vm.config_root
        subject = vm.ref.name
        if not folder:
            self.add(WARN, "staging", subject, "the VM has no configuration folder to stage its export in",
                     "give --staging-path (the plugin's staging_path= option)")
            return
        name = f".bareos-hyperv-check-{secrets.token_hex(4)}"
        try:
            probe = self.conns.resolver.resolve(folder, node).child(name)
            writer = self.conns.storage.create(probe)
            try:
                writer.write(b"bareos-hyperv check\n")
                writer.close()
            finally:
                self.conns.storage.delete(probe, missing_ok=True)
        except BareosHyperVError as exc:
            self.add(FAIL, "staging", subject, f"cannot create a file in {folder}: {exc.message}",
                     _smb_advice(exc, node))
            return
        self.add(OK, "staging", subject, f"{folder} writable (configuration export)")

    def switches(self, vm: VmConfig, node: str, inv: Inventory) -> None:
        clustered = inv.cluster is not None and inv.cluster.group_of(vm.ref.guid) is not None
        candidates = list(inv.hosts) if clustered else [h for h in inv.hosts if h.name.upper() == node.upper()]
        for adapter in vm.adapters:
            if not adapter.connected or not adapter.switch_name:
                continue
            missing = [h.name for h in candidates if adapter.switch_name not in {s.name for s in h.switches}]
            subject = f"{vm.ref.name} nic {adapter.name!r}"
            if missing:
                self.add(WARN, "switch", subject, f"switch {adapter.switch_name!r} is missing on "
                                                  f"{', '.join(missing)}: the VM loses its network there",
                         f"create a switch named {adapter.switch_name!r} on {', '.join(missing)}")
            else:
                self.add(OK, "switch", subject, f"switch {adapter.switch_name!r} exists on "
                                                f"{', '.join(h.name for h in candidates)}")

    # ------------------------------------------------------------------ all

    def run(self) -> None:
        entry = self.args.host
        if not self.winrm(entry):
            return
        nodes = self.cluster(entry)
        if nodes is None:
            return
        hosts: Dict[str, Optional[HostFacts]] = {}
        for node in nodes:
            if node.upper() != entry.upper() and not self.winrm(node):
                hosts[node.upper()] = None
                continue
            hosts[node.upper()] = self.hyperv(node)
            self.smb(node)
        if not any(hosts.values()):
            return
        try:
            inv = take_inventory(self.conns.connector, entry)
        except BareosHyperVError as exc:
            self.fail("vms", entry, exc)
            return
        chosen = select_vms(inv, self.args.vm)
        for pattern in self.args.vm:
            if not select_vms(inv, [pattern]):
                self.add(FAIL, "vms", pattern, f"no VM of {inv.scope} matches {pattern!r}",
                         "see the VM names with: bareos-hyperv list --host " + entry)
        for vm in chosen:
            node = inv.owner.get(vm.ref.guid, entry)
            self.vm(vm, node, hosts.get(node.upper()), inv)


def _size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", _GIB), ("MiB", 1024**2)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def _build(os_version: str) -> Optional[int]:
    parts = os_version.split(".")
    return int(parts[2]) if len(parts) >= 3 and parts[2].isdigit() else None


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def _share(location: Location) -> str:
    if isinstance(location, SmbLocation):
        return f"\\\\{location.server}\\{location.share}"
    return str(location)


def _where(path: str, node: str) -> str:
    return f"{path} on {node}"


def _smb_advice(exc: BareosHyperVError, node: str) -> str:
    if isinstance(exc, StorageAccessDenied):
        return ADMIN_RIGHTS.format(node=node)
    if isinstance(exc, StorageAuthError):
        return (f"check the user name and password; {node} must accept the account over SMB "
                "(a local account needs LocalAccountTokenFilterPolicy=1)")
    if isinstance(exc, StorageConnectionError):
        return (f"open TCP 445 to {node} (File and Printer Sharing) and keep its admin shares "
                "(AutoShareServer); or give --smb-host-map")
    if isinstance(exc, StorageNotFound):
        return "check the path; with --share-map or --path-map, check the map"
    return cli_advice(exc.what_to_do) or ""


def run_check(args: argparse.Namespace, out: Optional[Callable[[str], object]] = None) -> int:
    """Run every probe; print the results (text or JSON); 0 all OK, 1 warnings, 2 a failure."""
    out = out or sys.stdout.write
    try:
        conns = connect(args)
    except BareosHyperVError as exc:
        results = [Probe(FAIL, "setup", args.host, exc.message, cli_advice(exc.what_to_do) or "")]
    else:
        checker = _Checker(args, conns)
        try:
            checker.run()
        finally:
            conns.close()
        results = checker.results
    statuses = [r.status for r in results]
    status = 2 if FAIL in statuses else 1 if WARN in statuses else 0
    summary = {s: statuses.count(s) for s in (OK, WARN, FAIL)}
    if args.json:
        out(json.dumps({"host": args.host, "status": status, "summary": summary,
                        "results": [asdict(r) for r in results]}, indent=2) + "\n")
        return status
    for r in results:
        out(f"{r.status:<4}  {r.probe:<8} {r.subject}: {r.detail}\n")
        if r.advice and r.status != OK:
            out(f"{'':<14} -> {r.advice}\n")
    out(f"{summary[OK]} OK, {summary[WARN]} WARN, {summary[FAIL]} FAIL\n")
    return status

