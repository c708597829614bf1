"""Virtual machines: list them, resolve the ones a FileSet names, read their configuration.

A VM is read with two round trips: its current settings (``Msvm_SettingsDefineState``)
and every device setting of those (``Msvm_VirtualSystemSettingDataComponent``, one
association enumeration without a result class).  The raw instances are kept for
the manifest; :func:`normalise` builds the typed view.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.paths import parse_wmi_path
from bareos_hyperv.model.host import Switch
from bareos_hyperv.model.vm import (
    ControllerKind,
    Drive,
    DriveKind,
    DriveSlot,
    Generation,
    NetworkAdapter,
    PowerState,
    VmConfig,
    VmRef,
)
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference
from bareos_hyperv.wsman.client import CimClient

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")


class VmNotFound(HyperVError):
    """No VM matches a name, GUID or pattern the user gave."""


class AmbiguousVmName(HyperVError):
    """Several VMs share the display name the user gave."""


@dataclass(frozen=True)
class VmSummary:
    """A VM as listed on one host: identity, power state, and the node it was found on."""

    ref: VmRef
    state: PowerState
    node: str
    epr: EndpointReference


@dataclass
class VmSettings:
    """The VM's current settings objects as Hyper-V returned them (for the manifest)."""

    system: CimInstance
    devices: list[CimInstance] = field(default_factory=list)


def list_vms(client: CimClient) -> list[VmSummary]:
    """Every VM registered on the host the client talks to (one enumeration)."""
    found = client.query(C.NS_VIRT, f"SELECT * FROM {C.COMPUTER_SYSTEM} WHERE Caption = {C.wql_literal(C.CAPTION_VM)}")
    result = []
    for inst in found:
        if inst.epr is None:
            raise HyperVError("Hyper-V returned a VM without its endpoint reference",
                              context={"host": client.host, "vm": inst.opt_str("ElementName")})
        result.append(
            VmSummary(
                ref=VmRef(guid=inst.str("Name").upper(), name=inst.opt_str("ElementName") or ""),
                state=C.power_state(inst.opt_int("EnabledState") or 0),
                node=client.host,
                epr=inst.epr,
            )
        )
    return result


def is_guid(text: str) -> bool:
    """Whether the text is a VM GUID (with or without braces)."""
    return bool(_GUID.match(text.strip()))


def select_vms(vms: Sequence[VmSummary], wanted: Iterable[str], excluded: Iterable[str] = (),
               *, where: str = "") -> list[VmSummary]:
    """Resolve the ``vm=`` and ``exclude_vm=`` options against the VMs found.

    Each wanted item is a GUID, an exact name, or a shell-style pattern.  An exact
    name held by several VMs is refused (names are not unique in Hyper-V: the user
    must give the GUID).  A name or GUID that matches nothing is an error; a
    pattern that matches nothing is an error too, so a typo never silently backs up
    nothing.  The result keeps the order of ``vms`` and holds each VM once.
    """
    chosen: dict[str, VmSummary] = {}
    for item in (w.strip() for w in wanted):
        if not item:
            continue
        matches = _match(vms, item)
        if not matches:
            raise VmNotFound(
                f"no VM matches '{item}'",
                context={"host": where} if where else None,
                what_to_do="check the vm= option: names are case-insensitive, patterns use * and ?; "
                "`bareos-hyperv list` shows the VMs the plugin can see",
            )
        if not _is_pattern(item) and not is_guid(item) and len(matches) > 1:
            guids = ", ".join(m.ref.guid for m in matches)
            raise AmbiguousVmName(
                f"{len(matches)} VMs are named '{item}'",
                context={"host": where, "guids": guids} if where else {"guids": guids},
                what_to_do="Hyper-V VM names are not unique: give the VM's GUID in vm= instead",
            )
        for m in matches:
            chosen.setdefault(m.ref.guid, m)
    for item in (e.strip() for e in excluded):
        if item:
            for m in _match(vms, item):
                chosen.pop(m.ref.guid, None)
    return [v for v in vms if v.ref.guid in chosen]


def _is_pattern(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def _match(vms: Sequence[VmSummary], item: str) -> list[VmSummary]:
    if is_guid(item):
        guid = item.strip("{}").upper()
        return [v for v in vms if v.ref.guid == guid]
    if _is_pattern(item):
        pat = item.lower()
        return [v for v in vms if fnmatch.fnmatchcase(v.ref.name.lower(), pat)]
    low = item.lower()
    return [v for v in vms if v.ref.name.lower() == low]


def read_settings(client: CimClient, vm: VmSummary) -> VmSettings:
    """The VM's current system settings and all its device settings (two round trips)."""
    systems = client.associators(vm.epr, assoc_class=C.SETTINGS_DEFINE_STATE, result_class=C.VSSD)
    current = [s for s in systems if (s.opt_str("VirtualSystemType") or C.VirtualSystemType.REALIZED)
               in (C.VirtualSystemType.REALIZED, C.VirtualSystemType.PLANNED)]
    if not current:
        raise HyperVError(
            "the VM has no current settings object",
            context={"host": client.host, "vm": str(vm.ref)},
            what_to_do="the VM may be being deleted or migrated; retry the job",
        )
    system = current[0]
    if system.epr is None:
        raise HyperVError("Hyper-V returned VM settings without their endpoint reference",
                          context={"host": client.host, "vm": str(vm.ref)})
    devices = client.associators(system.epr, assoc_class=C.VSSD_COMPONENT)
    return VmSettings(system=system, devices=devices)


def normalise(vm: VmSummary, settings: VmSettings, switches: Sequence[Switch]) -> VmConfig:
    """Build the typed view of a VM from its settings objects (pure)."""
    sysd = settings.system
    subtype = sysd.opt_str("VirtualSystemSubType") or ""
    generation = Generation.GEN2 if subtype.endswith(":2") else Generation.GEN1
    by_id = {(d.opt_str("InstanceID") or "").lower(): d for d in settings.devices}

    processors = 0
    memory_mb = 0
    dynamic = False
    for dev in settings.devices:
        rtype = dev.opt_int("ResourceType")
        if rtype == C.ResourceType.PROCESSOR:
            processors = dev.opt_int("VirtualQuantity") or 0
        elif rtype == C.ResourceType.MEMORY:
            memory_mb = dev.opt_int("VirtualQuantity") or 0
            dynamic = bool(dev.opt_bool("DynamicMemoryEnabled"))

    controllers = controller_slots(settings.devices)
    drives = _drives(settings.devices, by_id, controllers)
    adapters = _adapters(settings.devices, by_id, switches)
    return VmConfig(
        ref=vm.ref,
        generation=generation,
        version=sysd.opt_str("Version") or "",
        state=vm.state,
        processors=processors,
        memory_mb=memory_mb,
        dynamic_memory=dynamic,
        config_root=sysd.opt_str("ConfigurationDataRoot") or "",
        snapshot_root=sysd.opt_str("SnapshotDataRoot") or "",
        drives=drives,
        adapters=adapters,
        secure_boot=sysd.opt_bool("SecureBootEnabled"),
        notes="\n".join(sysd.strs("Notes")) if "Notes" in sysd else "",
    )


def _instance_id_of_path(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    return (parse_wmi_path(path).key("InstanceID") or "").lower() or None


def controller_slots(devices: Sequence[CimInstance]) -> dict[str, tuple[ControllerKind, int]]:
    """Controller InstanceID -> (kind, index); SCSI index = order among the VM's SCSI controllers."""
    result: dict[str, tuple[ControllerKind, int]] = {}
    scsi = 0
    for dev in devices:
        rtype = dev.opt_int("ResourceType")
        iid = (dev.opt_str("InstanceID") or "").lower()
        if rtype == C.ResourceType.IDE_CONTROLLER:
            addr = dev.opt_str("Address") or "0"
            result[iid] = (ControllerKind.IDE, int(addr) if addr.isdigit() else 0)
        elif rtype == C.ResourceType.SCSI_CONTROLLER:
            result[iid] = (ControllerKind.SCSI, scsi)
            scsi += 1
    return result


def _drives(devices: Sequence[CimInstance], by_id: dict[str, CimInstance],
            controllers: dict[str, tuple[ControllerKind, int]]) -> list[Drive]:
    drives: list[Drive] = []
    media_of: dict[str, CimInstance] = {}
    for dev in devices:
        if dev.opt_int("ResourceType") == C.ResourceType.LOGICAL_DISK:
            parent = _instance_id_of_path(dev.opt_str("Parent"))
            if parent:
                media_of[parent] = dev
    for dev in devices:
        rtype = dev.opt_int("ResourceType")
        if rtype not in (C.ResourceType.DISK_DRIVE, C.ResourceType.DVD_DRIVE, C.ResourceType.FLOPPY_DRIVE):
            continue
        iid = (dev.opt_str("InstanceID") or "").lower()
        ctrl = controllers.get(_instance_id_of_path(dev.opt_str("Parent")) or "")
        loc = dev.opt_str("AddressOnParent") or "0"
        slot = DriveSlot(ctrl[0] if ctrl else ControllerKind.IDE, ctrl[1] if ctrl else 0,
                         int(loc) if loc.isdigit() else 0)
        subtype = dev.opt_str("ResourceSubType") or ""
        media = media_of.get(iid)
        media_path = media.strs("HostResource")[0] if media is not None and media.strs("HostResource") else None
        if subtype == C.SubType.PHYSICAL_DISK:
            host_res = dev.strs("HostResource")
            drives.append(Drive(DriveKind.PASS_THROUGH, slot, None, dev.opt_str("InstanceID") or "",
                                host_resource=host_res[0] if host_res else None))
        elif rtype == C.ResourceType.DVD_DRIVE:
            drives.append(Drive(DriveKind.DVD, slot, media_path,
                                (media or dev).opt_str("InstanceID") or ""))
        elif rtype == C.ResourceType.FLOPPY_DRIVE:
            drives.append(Drive(DriveKind.FLOPPY, slot, media_path, (media or dev).opt_str("InstanceID") or ""))
        elif media is not None and media_path:
            kind = DriveKind.SHARED_DISK if media_path.lower().endswith(".vhds") else DriveKind.VIRTUAL_DISK
            drives.append(Drive(kind, slot, media_path, media.opt_str("InstanceID") or ""))
    drives.sort(key=lambda d: (d.slot.controller.value, d.slot.controller_index, d.slot.location))
    return drives


def _adapters(devices: Sequence[CimInstance], by_id: dict[str, CimInstance],
              switches: Sequence[Switch]) -> list[NetworkAdapter]:
    switch_by_guid = {s.guid.upper(): s for s in switches}
    connection_of: dict[str, CimInstance] = {}
    for dev in devices:
        if dev.opt_int("ResourceType") == C.ResourceType.ETHERNET_CONNECTION:
            parent = _instance_id_of_path(dev.opt_str("Parent"))
            if parent:
                connection_of[parent] = dev
    adapters: list[NetworkAdapter] = []
    for dev in devices:
        if dev.opt_int("ResourceType") != C.ResourceType.ETHERNET_ADAPTER:
            continue
        iid = dev.opt_str("InstanceID") or ""
        conn = connection_of.get(iid.lower())
        switch_name: Optional[str] = None
        switch_id: Optional[str] = None
        connected = False
        if conn is not None:
            targets = conn.strs("HostResource")
            connected = (conn.opt_int("EnabledState") or 2) == 2 and bool(targets)
            if targets:
                switch_id = (parse_wmi_path(targets[0]).key("Name") or "").upper() or None
                sw = switch_by_guid.get(switch_id or "")
                switch_name = sw.name if sw else None
            if switch_name is None:
                switch_name = conn.opt_str("LastKnownSwitchName")
        adapters.append(
            NetworkAdapter(
                name=dev.opt_str("ElementName") or "",
                mac=(dev.opt_str("Address") or "").upper(),
                static_mac=bool(dev.opt_bool("StaticMacAddress")),
                legacy=(dev.opt_str("ResourceSubType") or "") == C.SubType.EMULATED_NIC,
                switch_name=switch_name,
                switch_id=switch_id,
                connected=connected,
                settings_id=iid,
            )
        )
    return adapters
