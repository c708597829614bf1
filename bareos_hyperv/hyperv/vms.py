"""Virtual machines: list them, resolve the ones a FileSet names, read their configuration.

A VM is read with two round trips: its current settings (``Msvm_SettingsDefineState``)
and every device setting of those (``Msvm_VirtualSystemSettingDataComponent``, one
association enumeration without a result class).  The raw instances are kept for
the manifest; :func:`normalise` builds the typed view.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

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

log = logging.getLogger("bareos_hyperv.hyperv.vms")

# Msvm_ComputerSystem.OperationalStatus[1] while a checkpoint's disks are deleted or merged
# (Microsoft's Msvm_ComputerSystem page; hyperv-wmi.md 2.1): 32770 Deleting Snapshot, 32772
# Merging Disks.  A merge outlives the DestroySnapshot / ConvertToReferencePoint job that started it.
MERGE_STATUSES = {32770: "deleting a checkpoint", 32772: "merging disks"}
MERGE_POLL_FIRST = 0.5  # seconds between looks, doubled up to MERGE_POLL_MAX
MERGE_POLL_MAX = 10.0

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


def merge_in_progress(client: CimClient, vm: VmSummary) -> Optional[str]:
    """What the host says it is doing to the VM's disks ("merging disks"), or None when nothing."""
    inst = client.get(vm.epr)
    for code in inst.ints("OperationalStatus")[1:]:
        if code in MERGE_STATUSES:
            return MERGE_STATUSES[code]
    return None


def wait_for_merges(client: CimClient, vm: VmSummary, *, timeout: float,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait, at most ``timeout`` seconds, until no merge of the VM's disks is running; seconds waited.

    The files of a disk chain change while Hyper-V merges a deleted checkpoint's ``.avhdx`` into
    its parent (the ``.avhdx`` disappears when the merge ends), so neither the chain nor a new
    checkpoint can be taken before.  Says once in the job log that it waits.

    :raises HyperVError: the merge is still running after ``timeout`` seconds (names the VM).
    """
    started = clock()
    doing = merge_in_progress(client, vm)
    if doing is None:
        return 0.0
    log.info("%s: Hyper-V is %s on %s; waiting for it to finish (at most %g s) before the checkpoint",
             vm.ref.name, doing, client.host, timeout)
    interval = MERGE_POLL_FIRST
    while doing is not None:
        left = started + timeout - clock()
        if left <= 0:
            raise HyperVError(
                f"Hyper-V is still {doing} of the VM after {timeout:g} seconds",
                context={"vm": str(vm.ref), "host": client.host},
                what_to_do="let the merge finish (Hyper-V Manager shows its progress on the VM) and run the job "
                "again, or raise timeout=",
            )
        sleep(min(interval, left))
        interval = min(interval * 2, MERGE_POLL_MAX)
        doing = merge_in_progress(client, vm)
    waited = clock() - started
    log.info("%s: the merge on %s finished after %.1f s", vm.ref.name, client.host, waited)
    return waited


def is_guid(text: str) -> bool:
    """Whether the text is a VM GUID (with or without braces)."""
    return bool(_GUID.match(text.strip()))


PATTERN_CHARACTERS = "*?["


def select_vms(vms: Sequence[VmSummary], wanted: Iterable[str], excluded: Iterable[str] = (),
               *, where: str = "") -> list[VmSummary]:
    """Resolve the ``vm=`` and ``exclude_vm=`` options against the VMs found.

    Each wanted item is a GUID, an exact name, or a shell-style pattern.  An exact name wins
    over a pattern: a VM named ``web[1]`` or ``test*`` is selected by its name, and the
    item is read as a pattern only when no VM has that name (names compare case-insensitively,
    after Unicode NFC).  An exact name held by several VMs is refused (names are not unique in
    Hyper-V: the user must give the GUID).  A name or GUID that matches nothing is an error; a
    pattern that matches nothing is an error too, so a typo never silently backs up nothing.
    The result keeps the order of ``vms`` and holds each VM once.
    """
    items = [w.strip() for w in wanted if w.strip()]
    chosen: dict[str, VmSummary] = {}
    for position, item in enumerate(items):
        matches, how = _match(vms, item)
        if not matches:
            raise VmNotFound(
                f"no VM matches '{item}'",
                context={"host": where} if where else None,
                what_to_do=_not_found_advice(vms, items, position),
            )
        if how == "name" and len(matches) > 1:
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
            for m in _match(vms, item)[0]:
                chosen.pop(m.ref.guid, None)
    return [v for v in vms if v.ref.guid in chosen]


def _is_pattern(item: str) -> bool:
    return any(ch in item for ch in PATTERN_CHARACTERS)


def _fold(name: str) -> str:
    # Names typed on Linux are NFC; Windows keeps whatever form the VM was named with.
    return unicodedata.normalize("NFC", name).casefold()


def _match(vms: Sequence[VmSummary], item: str) -> tuple[list[VmSummary], str]:
    """The VMs an item names and how it named them: ``guid``, ``name`` or ``pattern``."""
    if is_guid(item):
        guid = item.strip("{}").upper()
        return [v for v in vms if v.ref.guid == guid], "guid"
    low = _fold(item)
    exact = [v for v in vms if _fold(v.ref.name) == low]
    if exact or not _is_pattern(item):
        return exact, "name"
    return [v for v in vms if fnmatch.fnmatchcase(_fold(v.ref.name), low)], "pattern"


def _not_found_advice(vms: Sequence[VmSummary], items: Sequence[str], position: int) -> str:
    """What to do about an item of vm= that names no VM (the pattern characters, the comma, the GUID)."""
    item = items[position]
    advice = []
    for first, last in ((position - 1, position), (position, position + 1)):
        if first < 0 or last >= len(items):
            continue
        # The items were stripped, so blanks after the comma of a name are compared away.
        joined = _fold(f"{items[first]},{items[last]}")
        found = [v for v in vms if re.sub(r"\s*,\s*", ",", _fold(v.ref.name)) == joined]
        if found:
            vm = found[0].ref
            advice.append(f"'{items[first]}' and '{items[last]}' together are the name of the VM '{vm.name}' "
                          f"({vm.guid}): a comma inside a name is written \\, (\\\\, in bareos-dir.conf "
                          "and bconsole)")
            break
    advice.append("check the vm= option: names are compared case-insensitively and a VM whose name is the "
                  "whole item is always chosen first")
    if _is_pattern(item):
        advice.append("no VM has this exact name, so it was read as a pattern, in which * is any text, ? one "
                      "character and [...] one of the characters inside the brackets (write [[] for a literal [)")
    advice.append("a VM's GUID selects it whatever its name holds (`bareos-hyperv list` shows the names and "
                  "GUIDs the plugin can see)")
    return "; ".join(advice)


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
