"""Rendering of an inventory for operators (``bareos-hyperv list``, the demo): plain text and JSON."""

from __future__ import annotations

import fnmatch
from typing import Any, Dict, List, Optional, Sequence

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv.inventory import Inventory
from bareos_hyperv.hyperv.paths import parse_wmi_path
from bareos_hyperv.model.vm import Drive, DriveKind, VmConfig

_GIB = 1024**3

_KIND = {
    DriveKind.VIRTUAL_DISK: "disk",
    DriveKind.SHARED_DISK: "shared disk (VHD Set, not backed up)",
    DriveKind.PASS_THROUGH: "pass-through disk (not backed up)",
    DriveKind.DVD: "dvd",
    DriveKind.FLOPPY: "floppy",
}


def _size(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def passthrough_disk(host_resource: Optional[str]) -> str:
    r"""A pass-through disk as an operator knows it: ``host disk 2 on HV01``, not a WMI object path.

    Hyper-V names the host's physical disk by an ``Msvm_DiskDrive`` object path whose ``DeviceID``
    ends in the disk number (``Microsoft:<guid>\2``).  Anything else is shown as the device ID.
    """
    if not host_resource:
        return "(no host disk)"
    try:
        path = parse_wmi_path(host_resource)
    except HyperVError:
        return host_resource
    device = path.key("DeviceID") or ""
    host = path.key("SystemName") or path.host
    number = device.replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1]
    where = f" on {host}" if host else ""
    if number.isdigit():
        return f"host disk {int(number)}{where}"
    return f"host disk {device or '(unknown)'}{where}"


def drive_target(drive: Drive) -> str:
    """What a drive holds, readable: a file path, a host disk, or ``(empty)``."""
    if drive.kind is DriveKind.PASS_THROUGH:
        return passthrough_disk(drive.host_resource)
    return drive.path or drive.host_resource or "(empty)"


def select_vms(inv: Inventory, patterns: Sequence[str]) -> List[VmConfig]:
    """The VMs whose name or GUID matches one of the shell patterns (all when there is none)."""
    if not patterns:
        return list(inv.vms)
    low = [p.casefold() for p in patterns]
    return [vm for vm in inv.vms
            if any(fnmatch.fnmatchcase(vm.ref.name.casefold(), p) or fnmatch.fnmatchcase(vm.ref.guid.casefold(),
                                                                                         p.strip("{}"))
                   for p in low)]


def render_inventory(inv: Inventory, vms: Optional[Sequence[VmConfig]] = None) -> str:
    """A readable multi-section report of nodes, volumes, switches and VMs."""
    shown = list(inv.vms) if vms is None else list(vms)
    out: list[str] = []
    if inv.cluster:
        c = inv.cluster
        out.append(f"Cluster {c.name} ({c.fqdn or 'no FQDN'}), shared volumes under {c.shared_volumes_root}")
        out.append("  Nodes:")
        for n in c.nodes:
            out.append(f"    {n.name:<16} {n.state.name.lower()}")
        out.append("  Cluster shared volumes:")
        for v in c.volumes:
            out.append(f"    {v.path:<34} {v.name:<16} {_size(v.free_bytes)} free of {_size(v.total_bytes)}"
                       f"  owner {v.owner_node or '-'}")
    else:
        out.append(f"Standalone host {inv.entry.upper()}")
    for h in inv.hosts:
        out.append(f"Host {h.name}: Windows {h.os_version}, config versions {', '.join(h.supported_config_versions)}")
        out.append(f"  default VM path {h.default_vm_path or '-'}, VHD path {h.default_vhd_path or '-'}")
        out.append("  switches: " + (", ".join(f"{s.name}" for s in h.switches) or "none"))
    out.append(f"Virtual machines ({len(shown)}" + (f" of {len(inv.vms)}" if len(shown) != len(inv.vms) else "")
               + "):")
    for vm in shown:
        owner = inv.owner.get(vm.ref.guid, "-")
        clustered = ""
        if inv.cluster:
            clustered = " clustered" if inv.cluster.group_of(vm.ref.guid) else " not clustered"
        out.append(f"  {vm.ref.name} {{{vm.ref.guid}}}")
        out.append(f"    gen {int(vm.generation)}, version {vm.version}, {vm.state.value}, on {owner}{clustered}; "
                   f"{vm.processors} vCPU, {vm.memory_mb} MB{' dynamic' if vm.dynamic_memory else ''}")
        for d in vm.drives:
            out.append(f"    {d.slot!s:<10} {_KIND[d.kind]:<12} {drive_target(d)}")
        for a in vm.adapters:
            sw = a.switch_name if a.connected and a.switch_name else "(not connected)"
            out.append(f"    nic {a.name!r} mac {a.mac}{' static' if a.static_mac else ''} -> {sw}")
    return "\n".join(out) + "\n"


def inventory_json(inv: Inventory, vms: Optional[Sequence[VmConfig]] = None) -> Dict[str, Any]:
    """The same picture as plain data for ``list --json`` (stable keys, sizes in bytes)."""
    shown = list(inv.vms) if vms is None else list(vms)
    cluster: Optional[Dict[str, Any]] = None
    if inv.cluster is not None:
        c = inv.cluster
        cluster = {
            "name": c.name, "fqdn": c.fqdn or None, "shared_volumes_root": c.shared_volumes_root,
            "nodes": [{"name": n.name, "state": n.state.name.lower()} for n in c.nodes],
            "shared_volumes": [{"name": v.name, "path": v.path, "total_bytes": v.total_bytes,
                                "free_bytes": v.free_bytes, "owner_node": v.owner_node} for v in c.volumes],
        }
    hosts = [{"name": h.name, "os_version": h.os_version,
              "supported_config_versions": list(h.supported_config_versions),
              "default_vm_path": h.default_vm_path or None, "default_vhd_path": h.default_vhd_path or None,
              "switches": [{"name": s.name, "guid": s.guid} for s in h.switches]} for h in inv.hosts]
    machines = []
    for vm in shown:
        group = inv.cluster.group_of(vm.ref.guid) if inv.cluster is not None else None
        machines.append({
            "name": vm.ref.name, "guid": vm.ref.guid, "generation": int(vm.generation), "version": vm.version,
            "state": vm.state.value, "node": inv.owner.get(vm.ref.guid), "clustered": group is not None,
            "cluster_role": group.name if group is not None else None,
            "processors": vm.processors, "memory_mb": vm.memory_mb, "dynamic_memory": vm.dynamic_memory,
            "config_root": vm.config_root,
            "drives": [{"slot": str(d.slot), "kind": d.kind.value, "path": d.path,
                        "host_disk": passthrough_disk(d.host_resource) if d.kind is DriveKind.PASS_THROUGH else None,
                        "backed_up": d.kind is DriveKind.VIRTUAL_DISK} for d in vm.drives],
            "adapters": [{"name": a.name, "mac": a.mac, "static_mac": a.static_mac, "legacy": a.legacy,
                          "switch": a.switch_name if a.connected else None} for a in vm.adapters],
        })
    return {"entry": inv.entry, "scope": inv.scope, "cluster": cluster, "hosts": hosts, "vms": machines}
