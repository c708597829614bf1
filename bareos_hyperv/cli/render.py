"""Plain-text rendering of an inventory for operators (``bareos-hyperv list``, the demo)."""

from __future__ import annotations

from bareos_hyperv.hyperv.inventory import Inventory
from bareos_hyperv.model.vm import DriveKind

_GIB = 1024**3


def _size(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def render_inventory(inv: Inventory) -> str:
    """A readable multi-section report of nodes, volumes, switches and VMs."""
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
    out.append(f"Virtual machines ({len(inv.vms)}):")
    for vm in inv.vms:
        owner = inv.owner.get(vm.ref.guid, "-")
        clustered = ""
        if inv.cluster:
            clustered = " clustered" if inv.cluster.group_of(vm.ref.guid) else " not clustered"
        out.append(f"  {vm.ref.name} {{{vm.ref.guid}}}")
        out.append(f"    gen {int(vm.generation)}, version {vm.version}, {vm.state.value}, on {owner}{clustered}; "
                   f"{vm.processors} vCPU, {vm.memory_mb} MB{' dynamic' if vm.dynamic_memory else ''}")
        for d in vm.drives:
            what = {
                DriveKind.VIRTUAL_DISK: "disk",
                DriveKind.SHARED_DISK: "shared disk (not backed up)",
                DriveKind.PASS_THROUGH: "pass-through disk (not backed up)",
                DriveKind.DVD: "dvd",
                DriveKind.FLOPPY: "floppy",
            }[d.kind]
            out.append(f"    {d.slot!s:<10} {what:<12} {d.path or d.host_resource or '(empty)'}")
        for a in vm.adapters:
            sw = a.switch_name if a.connected and a.switch_name else "(not connected)"
            out.append(f"    nic {a.name!r} mac {a.mac}{' static' if a.static_mac else ''} -> {sw}")
    return "\n".join(out) + "\n"
