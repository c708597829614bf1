r"""Bring a backed-up VM back into Hyper-V: import, fix up, validate, realize (``hyperv-wmi.md`` §5).

The restore flow on one host, through :class:`VmImporter`:

1. :meth:`~VmImporter.import_definition` registers the staged ``.vmcx`` as a *planned* VM
   (``ImportSystemDefinition``; the files stay where they are);
2. fix-ups on the planned VM: disks to their restored paths (:meth:`~VmImporter.retarget_disks`),
   adapters to this host's switches by name (:meth:`~VmImporter.connect_adapters`), devices
   that cannot come back removed (:meth:`~VmImporter.remove_devices`), name and folders
   (:meth:`~VmImporter.set_system`);
3. :meth:`~VmImporter.validate` lists what Hyper-V still objects to, each problem with the
   settings object it concerns; :meth:`~VmImporter.realize` turns the planned VM into a VM;
4. :meth:`~VmImporter.destroy_planned` throws a planned VM away (also the leftovers of an
   interrupted restore, :meth:`~VmImporter.planned_systems`).

When the definition cannot be imported at all (a newer configuration version, say),
:meth:`~VmImporter.define_from_captured` builds a new VM from the settings the manifest
captured (``DefineSystem`` + ``AddResourceSettings``, §5.4).

Settings are changed as Microsoft's samples do: Get the instance, change the fields, send
every non-NULL property back as CIM-XML with its declared type (§1.10).  Every failure is
raised as an :class:`ImporterError` naming the VM and the host, with the Hyper-V detail
(job errors, fault text) kept as the cause.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from bareos_hyperv.errors import BareosHyperVError, HyperVError, WsmanError
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.cluster import cluster_of, vm_groups
from bareos_hyperv.hyperv.jobs import (
    JobError,
    JobErrorDetail,
    JobFailedError,
    JobFollower,
    JobResult,
    MethodFailedError,
)
from bareos_hyperv.hyperv.paths import parse_wmi_path
from bareos_hyperv.hyperv.returncodes import ReturnCode, label
from bareos_hyperv.hyperv.schema import to_typed_cimxml
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.hyperv.vms import VmNotFound, controller_slots
from bareos_hyperv.model.backup import CapturedSettings
from bareos_hyperv.model.vm import ControllerKind, DriveSlot, PowerState, VmRef
from bareos_hyperv.wsman.cim import (
    CimInstance,
    CimValue,
    EmbeddedInstance,
    EndpointReference,
    ParamValue,
    parse_cimxml,
)
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import NotFoundFault, WsmanFault

log = logging.getLogger("bareos_hyperv.hyperv.importer")

REQUEST_START = 2  # Msvm_ComputerSystem.RequestStateChange(RequestedState)
REQUEST_TURN_OFF = 3
CONNECTION_ENABLED = 2  # Msvm_EthernetPortAllocationSettingData.EnabledState
CONNECTION_DISABLED = 3

# VSSD properties that identify the source VM or belong to its files; DefineSystem must not get them.
# Version is left to the host (its default), which is what makes the fallback work across host
# versions where an import of a newer .vmcx is refused (hyperv-wmi.md 3.4); BootSourceOrder holds
# object paths of the source VM's devices.
_NOT_DEFINED = frozenset(p.lower() for p in (
    "InstanceID", "VirtualSystemIdentifier", "VirtualSystemType", "ConfigurationID", "ConfigurationFile",
    "Parent", "CreationTime", "Version", "IsSaved", "GuestStateFile", "GuestStateDataRoot",
    "BootSourceOrder", "Caption", "Description",
))
# Folders that follow the configuration folder (set_system, define_from_captured).
_DATA_ROOTS = ("SwapFileDataRoot", "SuspendDataRoot", "LogDataRoot")
# Processor and memory settings replayed from a capture: the sizing, not host-specific tuning,
# so that a capture from a newer host still applies to an older one.
_CPU_PROPS = ("VirtualQuantity", "Reservation", "Limit", "Weight")
_MEMORY_PROPS = ("VirtualQuantity", "Reservation", "Limit", "Weight", "DynamicMemoryEnabled",
                 "TargetMemoryBuffer")
_MEDIA_SUBTYPES = (C.SubType.VIRTUAL_HARD_DISK, C.SubType.VIRTUAL_DVD, C.SubType.VIRTUAL_FLOPPY)
_DRIVE_TYPES = (C.ResourceType.DISK_DRIVE, C.ResourceType.DVD_DRIVE, C.ResourceType.FLOPPY_DRIVE)
_NON_HEX = re.compile(r"[^0-9A-Fa-f]")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PlannedVm:
    """A planned VM (``Msvm_PlannedComputerSystem``) on one host.

    ``epr`` is the reference Hyper-V returned; a PlannedVm rebuilt from a GUID alone (for
    example to clean up after an interrupted restore) addresses the planned system by its
    keys instead.
    """

    guid: str  # Msvm_PlannedComputerSystem.Name
    name: str  # ElementName
    node: str  # host it was imported on
    epr: Optional[EndpointReference] = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> EndpointReference:
        """EPR of the planned system (the one Hyper-V returned, or built from its keys)."""
        if self.epr is not None:
            return self.epr
        return EndpointReference.build(C.NS_VIRT, C.PLANNED_COMPUTER_SYSTEM, {
            "CreationClassName": C.PLANNED_COMPUTER_SYSTEM, "Name": self.guid})

    def __str__(self) -> str:
        return f"'{self.name}' ({self.guid})"


@dataclass(frozen=True)
class ValidationProblem:
    """One finding of ValidatePlannedSystem / RealizePlannedSystem (an ``Msvm_Error``).

    ``source_settings_id`` is the InstanceID of the settings object the finding is about (the
    SASD of a missing disk, the Ethernet connection of a missing switch), taken from the error's
    ``ErrorSource``; None when the finding concerns the VM as a whole.  ``blocking`` is False
    for warnings of a validation that succeeded.
    """

    message: str  # Msvm_Error.Message
    message_id: str  # MessageID ("" when Hyper-V gave none)
    source_settings_id: Optional[str]
    blocking: bool = True

    def __str__(self) -> str:
        return f"{self.message} [MessageID {self.message_id}]" if self.message_id else self.message


# --------------------------------------------------------------------------- errors


class ImporterError(HyperVError):
    """A restore step on Hyper-V failed; ``problems`` holds Hyper-V's findings when it gave any."""

    def __init__(
        self,
        message: str,
        *,
        what_to_do: Optional[str] = None,
        context: Optional[Mapping[str, object]] = None,
        problems: Sequence[ValidationProblem] = (),
    ) -> None:
        self.problems: List[ValidationProblem] = list(problems)
        super().__init__(message, what_to_do=what_to_do, context=context)


class DefinitionImportRefused(ImporterError):
    """ImportSystemDefinition did not produce a planned VM."""


class PlannedVmGone(ImporterError):
    """The planned VM no longer exists (destroyed, realized, or never on this host)."""


class UnknownDevice(ImporterError):
    """A drive slot, adapter MAC address or settings InstanceID names nothing of the VM."""


class SwitchNotFound(ImporterError):
    """The host has no virtual switch of the requested name."""


class VmStateError(ImporterError):
    """The VM is in a state (or a cluster role) that forbids the operation."""


class RealizeRefused(ImporterError):
    """RealizePlannedSystem failed; ``problems`` lists why."""


class DefineFailed(ImporterError):
    """The DefineSystem fallback failed; the partly defined VM was removed."""


# --------------------------------------------------------------------------- helpers


def _mac(text: str) -> str:
    """MAC address as Hyper-V stores it: 12 upper-case hex digits, no separators."""
    return _NON_HEX.sub("", text).upper()


def _instance_id_of_path(path: Optional[str]) -> Optional[str]:
    """InstanceID key of a WMI object path held in a string property (``Parent``, ``ErrorSource``)."""
    if not path:
        return None
    try:
        return parse_wmi_path(path).key("InstanceID")
    except HyperVError:
        return None


def _device_part(instance_id: str) -> str:
    r"""``<device>`` of ``Microsoft:<VM GUID>\<device>``: what stays when an import gives a VM a new ID."""
    return instance_id.partition("\\")[2].lower()


def _for_modify(inst: CimInstance) -> CimInstance:
    """A copy of a Get/enumerated instance to send back: every non-NULL property (hyperv-wmi.md 1.10)."""
    copy = inst.copy()
    for name in [n for n, v in inst.items() if v is None]:
        del copy[name]
    return copy


def _embedded(inst: CimInstance) -> EmbeddedInstance:
    return EmbeddedInstance(to_typed_cimxml(inst))


def _problem(detail: JobErrorDetail, *, blocking: bool) -> ValidationProblem:
    return ValidationProblem(
        message=detail.message or "(no message)",
        message_id=detail.message_id or "",
        source_settings_id=_instance_id_of_path(detail.error_source),
        blocking=blocking,
    )


def _job_detail(exc: BaseException) -> str:
    """The reason of a failed call without repeating method and host (the caller's message names them)."""
    if isinstance(exc, JobFailedError):
        reasons = [exc.error_description or exc.error_summary or ""]
        reasons += [str(e) for e in exc.errors if e.message and e.message not in reasons[0]]
        text = " | ".join(r for r in reasons if r)
        return f"{exc.method} failed: {text or 'no error text'}"
    if isinstance(exc, MethodFailedError):
        return f"{exc.method} returned {label(exc.method, exc.return_value)}"
    if isinstance(exc, WsmanError):
        return exc.message
    return str(exc)


def _slot_key(slot: DriveSlot) -> Tuple[str, int, int]:
    """Sort key of drive slots: IDE before SCSI, then controller index, then location."""
    return slot.controller.value, slot.controller_index, slot.location


def _slot(drive: CimInstance, controllers: Mapping[str, Tuple[ControllerKind, int]]) -> Optional[DriveSlot]:
    """Drive slot of a drive RASD (controller kind and index, location on the controller)."""
    ctrl = controllers.get((_instance_id_of_path(drive.opt_str("Parent")) or "").lower())
    location = (drive.opt_str("AddressOnParent") or "").strip()
    if ctrl is None or not location.isdigit():
        return None
    return DriveSlot(ctrl[0], ctrl[1], int(location))


def _drives_by_slot(devices: Sequence[CimInstance]) -> Dict[DriveSlot, CimInstance]:
    """Drive RASDs (disk, DVD, floppy, pass-through) by their slot."""
    controllers = controller_slots(devices)
    result: Dict[DriveSlot, CimInstance] = {}
    for dev in devices:
        if dev.opt_int("ResourceType") in _DRIVE_TYPES:
            slot = _slot(dev, controllers)
            if slot is not None:
                result[slot] = dev
    return result


def _media_by_slot(devices: Sequence[CimInstance], subtypes: Iterable[str] = _MEDIA_SUBTYPES
                   ) -> Dict[DriveSlot, CimInstance]:
    """Media SASDs (VHD, ISO, floppy image) by the slot of the drive they sit in."""
    wanted = set(subtypes)
    slot_of_drive = {(d.opt_str("InstanceID") or "").lower(): s for s, d in _drives_by_slot(devices).items()}
    result: Dict[DriveSlot, CimInstance] = {}
    for dev in devices:
        if dev.opt_int("ResourceType") == C.ResourceType.LOGICAL_DISK and (dev.opt_str("ResourceSubType") or "") \
                in wanted:
            slot = slot_of_drive.get((_instance_id_of_path(dev.opt_str("Parent")) or "").lower())
            if slot is not None:
                result[slot] = dev
    return result


def _adapters(devices: Sequence[CimInstance]) -> List[CimInstance]:
    return [d for d in devices if d.opt_int("ResourceType") == C.ResourceType.ETHERNET_ADAPTER]


def _connections(devices: Sequence[CimInstance]) -> Dict[str, CimInstance]:
    """Ethernet connections (EPASD) by the lower-case InstanceID of their adapter."""
    result: Dict[str, CimInstance] = {}
    for dev in devices:
        if dev.opt_int("ResourceType") == C.ResourceType.ETHERNET_CONNECTION:
            parent = _instance_id_of_path(dev.opt_str("Parent"))
            if parent:
                result[parent.lower()] = dev
    return result


def _connection(adapter_path: str, switch_path: str) -> Dict[str, CimValue]:
    """A new Ethernet connection of an adapter to a switch (EPASD, hyperv-wmi.md 2.4/2.5)."""
    return {"ResourceType": int(C.ResourceType.ETHERNET_CONNECTION), "ResourceSubType": C.SubType.ETHERNET_CONNECTION,
            "Parent": adapter_path, "HostResource": [switch_path], "EnabledState": CONNECTION_ENABLED}


@dataclass
class _Captured:
    """Captured device settings of a VM, sorted by what they are (for the DefineSystem fallback)."""

    devices: List[CimInstance]
    controllers: Dict[str, Tuple[ControllerKind, int]]
    drives: Dict[DriveSlot, CimInstance]
    media: Dict[DriveSlot, CimInstance]
    adapters: List[CimInstance]
    connections: Dict[str, CimInstance]

    @classmethod
    def of(cls, devices: List[CimInstance]) -> _Captured:
        return cls(devices, controller_slots(devices), _drives_by_slot(devices), _media_by_slot(devices),
                   _adapters(devices), _connections(devices))


def _epr(inst: CimInstance, what: str, host: str) -> EndpointReference:
    if inst.epr is None:
        raise HyperVError(f"Hyper-V returned {what} without its endpoint reference", context={"host": host},
                          what_to_do="report this with the host's Windows version")
    return inst.epr


# --------------------------------------------------------------------------- importer


class VmImporter:
    """The Hyper-V side of a restore on one host (see the module docstring).

    :param client: the host's CIM client.
    :param node: the host's name as Hyper-V knows it (used in messages and in object paths).
    :param timeout: seconds to wait for each Hyper-V job.
    :param should_cancel: polled while jobs run; True cancels the job.
    :param jobs: the job follower (default: one on ``client``).
    """

    def __init__(self, client: CimClient, node: str, *, timeout: float,
                 should_cancel: Optional[Callable[[], bool]] = None, jobs: Optional[JobFollower] = None) -> None:
        self.client = client
        self.node = node.upper()
        self.timeout = timeout
        self.should_cancel = should_cancel
        self.services = HostServices(client, node)
        self.jobs = jobs or JobFollower(client)

    # ------------------------------------------------------------------ plumbing

    def _context(self, vm: object = None, **more: object) -> Dict[str, object]:
        ctx: Dict[str, object] = {"host": self.node, "vm": vm}
        ctx.update(more)
        return ctx

    def _gone(self, planned: PlannedVm) -> PlannedVmGone:
        return PlannedVmGone(
            f"planned VM {planned} no longer exists on {self.node}",
            context=self._context(planned.guid),
            what_to_do="it was destroyed or realized meanwhile (or lives on another host); "
            "list the planned VMs of the host and import the definition again if needed",
        )

    def _call(self, target: EndpointReference, method: str, params: Sequence[Tuple[str, ParamValue]], *,
              doing: str, vm: object, what_to_do: str, planned: Optional[PlannedVm] = None,
              error: Type[ImporterError] = ImporterError) -> JobResult:
        """Invoke and follow one method; failures become ``error`` naming the VM and this host."""
        try:
            return self.jobs.call(target, method, params, timeout=self.timeout, should_cancel=self.should_cancel)
        except NotFoundFault as exc:
            if planned is not None:
                raise self._gone(planned) from exc
            raise error(f"could not {doing} on {self.node}: {_job_detail(exc)}",
                        context=self._context(vm, method=method), what_to_do=what_to_do) from exc
        except (JobError, WsmanFault) as exc:
            problems = ([_problem(e, blocking=True) for e in exc.errors] if isinstance(exc, JobFailedError)
                        else [])
            raise error(f"could not {doing} on {self.node}: {_job_detail(exc)}",
                        context=self._context(vm, method=method, job=getattr(exc, "job_id", None)),
                        what_to_do=what_to_do, problems=problems) from exc

    def _vsms(self, method: str, params: Sequence[Tuple[str, ParamValue]], *, doing: str, vm: object,
              what_to_do: str, planned: Optional[PlannedVm] = None,
              error: Type[ImporterError] = ImporterError) -> JobResult:
        """:meth:`_call` on the host's Msvm_VirtualSystemManagementService."""
        return self._call(self.services.management, method, params, doing=doing, vm=vm, what_to_do=what_to_do,
                          planned=planned, error=error)

    def _read(self, planned: PlannedVm) -> Tuple[CimInstance, List[CimInstance]]:
        """The planned VM's VSSD and its device settings (two round trips); PlannedVmGone when it is gone."""
        try:
            systems = self.client.associators(planned.ref, assoc_class=C.SETTINGS_DEFINE_STATE,
                                              result_class=C.VSSD)
            if not systems:
                raise self._gone(planned)
            vssd = systems[0]
            devices = self.client.associators(_epr(vssd, "planned VM settings", self.node),
                                              assoc_class=C.VSSD_COMPONENT)
        except NotFoundFault as exc:
            raise self._gone(planned) from exc
        return vssd, devices

    def _read_vm(self, vm_epr: EndpointReference, vm: object) -> Tuple[CimInstance, List[CimInstance]]:
        systems = self.client.associators(vm_epr, assoc_class=C.SETTINGS_DEFINE_STATE, result_class=C.VSSD)
        current = [s for s in systems if (s.opt_str("VirtualSystemType") or C.VirtualSystemType.REALIZED)
                   == C.VirtualSystemType.REALIZED]
        if not current:
            raise ImporterError("the VM has no current settings object", context=self._context(vm),
                                what_to_do="the VM may be being deleted; check it on the host")
        devices = self.client.associators(_epr(current[0], "VM settings", self.node), assoc_class=C.VSSD_COMPONENT)
        return current[0], devices

    def _vm(self, guid: str) -> CimInstance:
        """The realized VM with this GUID on this host; VmNotFound otherwise."""
        wanted = guid.strip().strip("{}").upper()
        found = [v for v in self.client.query(
            C.NS_VIRT, f"SELECT * FROM {C.COMPUTER_SYSTEM} WHERE Name = {C.wql_literal(wanted)}")
            if (v.opt_str("Caption") or C.CAPTION_VM) == C.CAPTION_VM]
        if not found or found[0].epr is None:
            raise VmNotFound(
                f"no VM with the ID {wanted} is registered on {self.node}",
                context=self._context(wanted),
                what_to_do="on a cluster the VM may live on another node: ask the cluster for its owner",
            )
        return found[0]

    def _switch_paths(self) -> Dict[str, Tuple[str, str]]:
        """The host's switches: casefolded name -> (name, object path for HostResource)."""
        result: Dict[str, Tuple[str, str]] = {}
        for sw in self.client.query(C.NS_VIRT, f"SELECT * FROM {C.SWITCH}"):
            name = sw.opt_str("ElementName") or ""
            if sw.epr is not None:
                result.setdefault(name.casefold(), (name, self.services.path_of(sw.epr)))
        return result

    def _switch(self, switches: Mapping[str, Tuple[str, str]], name: str, vm: object) -> str:
        hit = switches.get(name.casefold())
        if hit is None:
            have = ", ".join(sorted(n for n, _ in switches.values())) or "none"
            raise SwitchNotFound(
                f"{self.node} has no virtual switch named '{name}' (its switches: {have})",
                context=self._context(vm, switch=name),
                what_to_do="map the adapter to one of the host's switches, leave it disconnected, "
                "or create the switch on the host",
            )
        return hit[1]

    def _job_errors(self, job_ref: EndpointReference) -> List[JobErrorDetail]:
        """``GetErrorEx`` of a job that succeeded: its warnings (best effort)."""
        try:
            res = self.client.invoke(job_ref, "GetErrorEx", [])
            if res.return_value != ReturnCode.COMPLETED:
                return []
            return [JobErrorDetail.from_instance(i) for i in res.outputs.instances("Errors")]
        except WsmanError as exc:
            log.debug("GetErrorEx on %s failed: %s", self.node, exc)
            return []

    # ------------------------------------------------------------------ import

    def import_definition(self, vmcx_path: str, *, new_id: bool, snapshot_folder: str = "") -> PlannedVm:
        """Register a staged definition file as a planned VM (``ImportSystemDefinition``).

        :param vmcx_path: host path of the ``.vmcx`` (``.xml`` before 2016); it must not be the
            file of a registered VM.
        :param new_id: give the VM a new ID (a copy); False keeps the ID, which Hyper-V refuses
            while a VM or planned VM with that ID is registered.
        :param snapshot_folder: folder with the VM's checkpoint definitions (left out when empty).
        :raises DefinitionImportRefused: with Hyper-V's reason in words.
        """
        params: List[Tuple[str, ParamValue]] = [("SystemDefinitionFile", vmcx_path)]
        if snapshot_folder:
            params.append(("SnapshotFolder", snapshot_folder))
        params.append(("GenerateNewSystemIdentifier", new_id))
        try:
            result = self.jobs.call(self.services.management, "ImportSystemDefinition", params,
                                    timeout=self.timeout, should_cancel=self.should_cancel)
        except MethodFailedError as exc:
            raise DefinitionImportRefused(
                f"Hyper-V refused to import '{vmcx_path}' on {self.node}: "
                f"ImportSystemDefinition returned {label(exc.method, exc.return_value)}",
                context=self._context(None, file=vmcx_path),
                what_to_do=self._import_hint(exc.return_value),
            ) from exc
        except (JobError, WsmanFault) as exc:
            hint = ("keeping the ID fails while a VM or planned VM with that ID is registered on the host "
                    "(or in its cluster): turn that VM off and destroy it first, destroy leftover planned "
                    "VMs, or import with a new ID") if not new_id else (
                "check that the file is a virtual machine configuration this host's Hyper-V version can "
                "read; otherwise define the VM from the captured settings")
            problems = ([_problem(e, blocking=True) for e in exc.errors] if isinstance(exc, JobFailedError)
                        else [])
            raise DefinitionImportRefused(
                f"could not import '{vmcx_path}' on {self.node}: {_job_detail(exc)}",
                context=self._context(None, file=vmcx_path, job=getattr(exc, "job_id", None)),
                what_to_do=hint,
                problems=problems,
            ) from exc
        found = result.resulting("ImportedSystem", C.PLANNED_COMPUTER_SYSTEM)
        if not found:
            raise DefinitionImportRefused(
                f"ImportSystemDefinition of '{vmcx_path}' finished on {self.node} but no planned VM can be found",
                context=self._context(None, file=vmcx_path, job=result.job_id),
                what_to_do="list the host's planned VMs and destroy leftovers before retrying",
            )
        inst = found[0]
        planned = PlannedVm(guid=inst.str("Name").upper(), name=inst.opt_str("ElementName") or "",
                            node=self.node, epr=inst.epr)
        log.info("imported %s on %s as planned VM %s", vmcx_path, self.node, planned)
        return planned

    @staticmethod
    def _import_hint(code: int) -> str:
        if code == ReturnCode.FILE_NOT_FOUND_OR_IN_USE:
            return ("the definition file is in use by a registered VM, or cannot be opened: stage a copy "
                    "in a folder of its own, or remove the VM that uses it")
        if code == ReturnCode.MSVM_INVALID_PARAMETER:
            return "give a local or cluster-shared-volume path of the host (not a UNC path) to an existing file"
        if code == ReturnCode.ACCESS_DENIED:
            return "use an account in the host's Hyper-V Administrators or Administrators group"
        return "see the Hyper-V-VMMS Admin event log on the host"

    def planned_systems(self) -> List[PlannedVm]:
        """Every planned VM on the host (leftovers of interrupted restores, for cleanup)."""
        return [PlannedVm(guid=p.str("Name").upper(), name=p.opt_str("ElementName") or "", node=self.node,
                          epr=p.epr)
                for p in self.client.enumerate(C.NS_VIRT, C.PLANNED_COMPUTER_SYSTEM)]

    # ------------------------------------------------------------------ fix-ups

    def disk_settings(self, planned: PlannedVm) -> List[Tuple[str, DriveSlot, List[str]]]:
        """(InstanceID, drive slot, HostResource paths) of each virtual-hard-disk SASD of the planned VM."""
        _vssd, devices = self._read(planned)
        media = _media_by_slot(devices, (C.SubType.VIRTUAL_HARD_DISK,))
        return [(sasd.str("InstanceID"), slot, sasd.strs("HostResource"))
                for slot, sasd in sorted(media.items(), key=lambda kv: _slot_key(kv[0]))]

    def retarget_disks(self, planned: PlannedVm, new_paths: Mapping[DriveSlot, str]) -> None:
        """Point the virtual hard disks at their restored files, by drive slot (one ModifyResourceSettings).

        :raises UnknownDevice: a slot holds no virtual hard disk (the message lists the VM's disk slots).
        """
        if not new_paths:
            return
        _vssd, devices = self._read(planned)
        disks = _media_by_slot(devices, (C.SubType.VIRTUAL_HARD_DISK,))
        unknown = [str(s) for s in new_paths if s not in disks]
        if unknown:
            have = ", ".join(str(s) for s in sorted(disks, key=_slot_key)) or "none"
            raise UnknownDevice(
                f"planned VM {planned} on {self.node} has no virtual hard disk at {', '.join(unknown)} "
                f"(its disks: {have})",
                context=self._context(planned.guid),
                what_to_do="map the disks by the drive slots the VM has",
            )
        changed = []
        for slot, path in new_paths.items():
            sasd = _for_modify(disks[slot])
            sasd["HostResource"] = [path]
            changed.append(_embedded(sasd))
        self._vsms("ModifyResourceSettings", [("ResourceSettings", changed)],
                   doing=f"point the disks of planned VM {planned} at the restored files", vm=planned.guid,
                   planned=planned, what_to_do="check that the restored disk files exist on the host and are "
                   "not used by another VM")

    def connect_adapters(self, planned: PlannedVm, switches: Mapping[str, Optional[str]]) -> None:
        """Connect network adapters, by MAC address, to this host's switches by name (None: disconnect).

        The switch is looked up by its friendly name (GUIDs differ per host) and its object path
        put into the adapter's Ethernet connection; a disconnected adapter keeps its connection
        object with EnabledState 3 (the allocation is then not processed).

        :raises UnknownDevice: a MAC address is not one of the VM's adapters.
        :raises SwitchNotFound: the host has no switch of that name (the message lists its switches).
        """
        if not switches:
            return
        vssd, devices = self._read(planned)
        adapters = {_mac(a.opt_str("Address") or ""): a for a in _adapters(devices)}
        wanted = {_mac(mac): name for mac, name in switches.items()}
        unknown = [mac for mac in switches if _mac(mac) not in adapters or not _mac(mac)]
        if unknown:
            have = ", ".join(sorted(m for m in adapters if m)) or "none"
            raise UnknownDevice(
                f"planned VM {planned} on {self.node} has no network adapter with MAC address "
                f"{', '.join(unknown)} (its adapters: {have})",
                context=self._context(planned.guid),
                what_to_do="map the adapters by the MAC addresses the VM has",
            )
        host_switches = self._switch_paths() if any(n is not None for n in wanted.values()) else {}
        connections = _connections(devices)
        modify: List[EmbeddedInstance] = []
        add: List[EmbeddedInstance] = []
        for mac, name in wanted.items():
            adapter = adapters[mac]
            path = self._switch(host_switches, name, planned.guid) if name is not None else None
            conn = connections.get((adapter.opt_str("InstanceID") or "").lower())
            if conn is None:
                if path is None:
                    continue  # no connection object: the adapter is not connected already
                add.append(_embedded(CimInstance(C.EPASD, _connection(
                    self.services.path_of(_epr(adapter, "an adapter", self.node)), path))))
                continue
            inst = _for_modify(conn)
            if path is None:
                inst["EnabledState"] = CONNECTION_DISABLED
            else:
                inst["HostResource"] = [path]
                inst["EnabledState"] = CONNECTION_ENABLED
            modify.append(_embedded(inst))
        what = "connect the network adapters of planned VM " + str(planned)
        hint = "check the switch names on the host"
        if modify:
            self._vsms("ModifyResourceSettings", [("ResourceSettings", modify)], doing=what, vm=planned.guid,
                       planned=planned, what_to_do=hint)
        if add:
            self._vsms("AddResourceSettings", [("AffectedConfiguration", _epr(vssd, "planned VM settings",
                                                                              self.node)),
                                               ("ResourceSettings", add)],
                       doing=what, vm=planned.guid, planned=planned, what_to_do=hint)

    def remove_devices(self, planned: PlannedVm, settings_ids: Sequence[str]) -> None:
        r"""Remove devices that cannot come back (pass-through disks ...) with RemoveResourceSettings.

        An InstanceID of the source VM matches by its device part (after ``Microsoft:<GUID>\``),
        since an import with a new ID changes only the VM part.  Removing a drive removes what sits in it.

        :raises UnknownDevice: an ID names no device of the planned VM.
        """
        if not settings_ids:
            return
        _vssd, devices = self._read(planned)
        by_id = {(d.opt_str("InstanceID") or "").lower(): d for d in devices}
        refs: List[EndpointReference] = []
        unknown: List[str] = []
        for sid in settings_ids:
            dev = by_id.get(sid.lower())
            if dev is None and _device_part(sid):
                hits = [d for iid, d in by_id.items() if _device_part(iid) == _device_part(sid)]
                dev = hits[0] if len(hits) == 1 else None
            if dev is None:
                unknown.append(sid)
            else:
                refs.append(_epr(dev, "a device setting", self.node))
        if unknown:
            raise UnknownDevice(
                f"planned VM {planned} on {self.node} has no device {', '.join(unknown)}",
                context=self._context(planned.guid),
                what_to_do="name devices by the InstanceID of their settings (drive or disk)",
            )
        self._vsms("RemoveResourceSettings", [("ResourceSettings", refs)],
                   doing=f"remove devices from planned VM {planned}", vm=planned.guid, planned=planned,
                   what_to_do="see the Hyper-V-VMMS Admin event log on the host")

    def set_system(self, planned: PlannedVm, *, name: Optional[str] = None, config_root: Optional[str] = None,
                   snapshot_root: Optional[str] = None) -> PlannedVm:
        """Rename the planned VM and move its folders (``ModifySystemSettings`` on its VSSD).

        ``config_root`` becomes ConfigurationDataRoot and the smart-paging, saved-state and log
        folders; ``snapshot_root`` the checkpoint folder.  Returns the PlannedVm with its new name.
        """
        if name is None and config_root is None and snapshot_root is None:
            return planned
        vssd, _devices = self._read(planned)
        inst = _for_modify(vssd)
        if name is not None:
            inst["ElementName"] = name
        if config_root is not None:
            inst["ConfigurationDataRoot"] = config_root
            for prop in _DATA_ROOTS:
                if prop in inst:
                    inst[prop] = config_root
        if snapshot_root is not None:
            inst["SnapshotDataRoot"] = snapshot_root
        self._vsms("ModifySystemSettings", [("SystemSettings", _embedded(inst))],
                   doing=f"change the settings of planned VM {planned}", vm=planned.guid, planned=planned,
                   what_to_do="check the name (at most 100 characters) and that the folders are host paths")
        return dataclasses.replace(planned, name=name) if name is not None else planned

    # ------------------------------------------------------------------ validate / realize

    def validate(self, planned: PlannedVm) -> List[ValidationProblem]:
        """What Hyper-V objects to (``ValidatePlannedSystem``); [] when the planned VM is valid.

        A failed validation yields its ``Msvm_Error`` findings (blocking); a validation that
        succeeded may still carry warnings (``blocking`` False), which Microsoft's sample prints too.
        """
        try:
            result = self.jobs.call(self.services.management, "ValidatePlannedSystem",
                                    [("PlannedSystem", planned.ref)], timeout=self.timeout,
                                    should_cancel=self.should_cancel)
        except NotFoundFault as exc:
            raise self._gone(planned) from exc
        except JobFailedError as exc:
            problems = [_problem(e, blocking=True) for e in exc.errors]
            return problems or [ValidationProblem(exc.error_description or exc.message, "", None)]
        except (JobError, WsmanFault) as exc:
            raise ImporterError(f"could not validate planned VM {planned} on {self.node}: {_job_detail(exc)}",
                                context=self._context(planned.guid),
                                what_to_do="see the Hyper-V-VMMS Admin event log on the host") from exc
        if result.job_ref is None:
            return []
        return [_problem(e, blocking=False) for e in self._job_errors(result.job_ref)]

    def realize(self, planned: PlannedVm) -> VmRef:
        """Turn the planned VM into a VM (``RealizePlannedSystem``, which validates again).

        :raises RealizeRefused: with Hyper-V's findings in ``problems``.
        """
        try:
            result = self.jobs.call(self.services.management, "RealizePlannedSystem",
                                    [("PlannedSystem", planned.ref)], timeout=self.timeout,
                                    should_cancel=self.should_cancel)
        except NotFoundFault as exc:
            raise self._gone(planned) from exc
        except (JobError, WsmanFault) as exc:
            problems = ([_problem(e, blocking=True) for e in exc.errors] if isinstance(exc, JobFailedError)
                        else [])
            found = "; ".join(str(p) for p in problems) or _job_detail(exc)
            raise RealizeRefused(
                f"Hyper-V refused to realize planned VM {planned} on {self.node}: {found}",
                context=self._context(planned.guid, job=getattr(exc, "job_id", None)),
                what_to_do="fix what the findings name (validate() ties each to its settings object) and "
                "realize again, or destroy the planned VM",
                problems=problems,
            ) from exc
        vms = [v for v in result.resulting("ResultingSystem", C.COMPUTER_SYSTEM)
               if v.class_name.lower() == C.COMPUTER_SYSTEM.lower()]
        vm = vms[0] if vms else self._vm(planned.guid)
        ref = VmRef(guid=vm.str("Name").upper(), name=vm.opt_str("ElementName") or "")
        log.info("realized planned VM %s on %s as %s", planned, self.node, ref)
        return ref

    def destroy_planned(self, planned: PlannedVm) -> None:
        """Throw a planned VM away (``DestroySystem``); one that is already gone is fine.

        Only the planned system is addressed, so a VM realized from it is never touched.
        The files it was imported from stay.
        """
        try:
            self.jobs.call(self.services.management, "DestroySystem", [("AffectedSystem", planned.ref)],
                           timeout=self.timeout)
        except NotFoundFault:
            log.debug("planned VM %s is already gone from %s", planned, self.node)
        except (JobError, WsmanFault) as exc:
            try:
                self.client.get(planned.ref)
            except NotFoundFault:
                return  # it went away while the job ran: that is what was asked for
            except WsmanError:
                pass
            raise ImporterError(f"could not destroy planned VM {planned} on {self.node}: {_job_detail(exc)}",
                                context=self._context(planned.guid),
                                what_to_do="remove it in Hyper-V Manager or with Remove-VM on the host") from exc

    # ------------------------------------------------------------------ realized VMs

    def destroy_vm(self, guid: str) -> None:
        """Unregister a realized VM (``DestroySystem``); its disk files stay.

        Refused unless the VM is off or saved (what Microsoft's DestroySystem page requires; a
        saved state is discarded with the VM), and while it is a cluster role (destroying it under
        the cluster would leave a failed role: remove the role first).

        :raises VmNotFound: no such VM on this host.
        :raises VmStateError: the VM is running (or between states), or is highly available.
        """
        vm = self._vm(guid)
        label_ = f"'{vm.opt_str('ElementName') or ''}' ({vm.str('Name').upper()})"
        power = C.power_state(vm.opt_int("EnabledState") or 0)
        if power not in (PowerState.OFF, PowerState.SAVED):
            raise VmStateError(
                f"VM {label_} on {self.node} is {power.value}; it must be off (or saved) to be destroyed",
                context=self._context(vm.str("Name")),
                what_to_do="turn the VM off first; its disk files are kept either way",
            )
        group = self._cluster_role(vm.str("Name"))
        if group is not None:
            raise VmStateError(
                f"VM {label_} on {self.node} is highly available (cluster role '{group}'); "
                "destroying it would leave a failed cluster role",
                context=self._context(vm.str("Name"), role=group),
                what_to_do="remove the VM's cluster role first (the VM stays on its node)",
            )
        try:
            self.jobs.call(self.services.management, "DestroySystem",
                           [("AffectedSystem", _epr(vm, "a VM", self.node))], timeout=self.timeout)
        except MethodFailedError as exc:
            # DestroySystem is documented with the CIM codes (5 Invalid State); Msvm hosts answer 32775
            if exc.return_value in (ReturnCode.INVALID_STATE, ReturnCode.MSVM_INVALID_STATE):
                raise VmStateError(
                    f"Hyper-V refused to destroy VM {label_} on {self.node}: "
                    f"{label(exc.method, exc.return_value)}",
                    context=self._context(vm.str("Name")),
                    what_to_do="turn the VM off and retry",
                ) from exc
            raise ImporterError(f"could not destroy VM {label_} on {self.node}: {_job_detail(exc)}",
                                context=self._context(vm.str("Name")),
                                what_to_do="see the Hyper-V-VMMS Admin event log on the host") from exc
        except (JobError, WsmanFault) as exc:
            raise ImporterError(f"could not destroy VM {label_} on {self.node}: {_job_detail(exc)}",
                                context=self._context(vm.str("Name")),
                                what_to_do="see the Hyper-V-VMMS Admin event log on the host") from exc
        log.info("destroyed VM %s on %s (disk files kept)", label_, self.node)

    def _cluster_role(self, guid: str) -> Optional[str]:
        """Name of the cluster role holding the VM, or None (also on a standalone host)."""
        if cluster_of(self.client) is None:
            return None
        wanted = guid.upper()
        return next((g.name for g in vm_groups(self.client) if (g.vm_guid or "").upper() == wanted), None)

    def start(self, guid: str) -> None:
        """Start the VM (``RequestStateChange(2)``); a running VM is left as it is."""
        self._change_state(guid, REQUEST_START, C.EnabledState.ENABLED, "start")

    def turn_off(self, guid: str) -> None:
        """Turn the VM off, like pulling the plug (``RequestStateChange(3)``); an off VM is left as it is."""
        self._change_state(guid, REQUEST_TURN_OFF, C.EnabledState.DISABLED, "turn off")

    def _change_state(self, guid: str, requested: int, final: int, verb: str) -> None:
        vm = self._vm(guid)
        if vm.opt_int("EnabledState") == final:
            return
        label_ = f"'{vm.opt_str('ElementName') or ''}' ({vm.str('Name').upper()})"
        try:
            self.jobs.call(_epr(vm, "a VM", self.node), "RequestStateChange", [("RequestedState", requested)],
                           timeout=self.timeout, should_cancel=self.should_cancel)
        except MethodFailedError as exc:
            now = self._vm(guid).opt_int("EnabledState")
            if now == final:
                return  # it got there meanwhile
            if exc.return_value == ReturnCode.MSVM_INVALID_STATE:
                raise VmStateError(
                    f"cannot {verb} VM {label_} on {self.node}: it is {C.power_state(now or 0).value}",
                    context=self._context(vm.str("Name")),
                    what_to_do="wait for the VM's current operation to finish and retry",
                ) from exc
            raise ImporterError(f"could not {verb} VM {label_} on {self.node}: {_job_detail(exc)}",
                                context=self._context(vm.str("Name")),
                                what_to_do="see the Hyper-V-VMMS Admin event log on the host") from exc
        except (JobError, WsmanFault) as exc:
            raise ImporterError(f"could not {verb} VM {label_} on {self.node}: {_job_detail(exc)}",
                                context=self._context(vm.str("Name")),
                                what_to_do="check the VM's disks and switches; the Hyper-V-Worker event log "
                                "on the host says why it failed") from exc

    # ------------------------------------------------------------------ DefineSystem fallback

    def define_from_captured(
        self,
        system: CapturedSettings,
        resources: Sequence[CapturedSettings],
        *,
        name: str,
        config_root: str,
        disk_paths: Optional[Mapping[DriveSlot, str]] = None,
        switches: Optional[Mapping[str, Optional[str]]] = None,
    ) -> VmRef:
        """Define a new VM (new ID) from the settings a backup captured, when the definition cannot be imported.

        ``DefineSystem`` with the captured VSSD (the VM ID and the configuration version left to the
        host, BIOS and serial-number identity kept for licensing), then
        processor and memory sizing, extra SCSI controllers, drives in their slots, media, network
        adapters with their MAC addresses (static) and their switch connections (``hyperv-wmi.md`` 5.4).
        Checkpoints, saved state and guest state do not come back this way.

        :param resources: the captured device settings to replay; classes other than processor,
            memory, controllers, drives, media, adapters and connections are left to the host's
            defaults.  Leave out what cannot come back (pass-through disks of another host).
        :param disk_paths: restored file of each virtual hard disk by drive slot (others keep the
            captured path).
        :param switches: adapter MAC -> switch name on this host, or None to leave it disconnected;
            adapters not named keep the switch they had (by name).
        :raises UnknownDevice, SwitchNotFound: before anything is created.
        :raises DefineFailed: a step failed; the partly defined VM has been removed again.
        """
        sys_inst = parse_cimxml(system.cimxml)
        cap = _Captured.of([parse_cimxml(r.cimxml) for r in resources])
        skipped = sorted({d.class_name for d in cap.devices if d.opt_int("ResourceType") not in (
            C.ResourceType.PROCESSOR, C.ResourceType.MEMORY, C.ResourceType.IDE_CONTROLLER,
            C.ResourceType.SCSI_CONTROLLER, C.ResourceType.ETHERNET_ADAPTER, C.ResourceType.ETHERNET_CONNECTION,
            C.ResourceType.LOGICAL_DISK, *_DRIVE_TYPES)})
        if skipped:
            log.debug("define %s: left to the host's defaults: %s", name, ", ".join(skipped))

        # everything that can be checked is checked before the VM exists
        paths = dict(disk_paths or {})
        vhd_slots = {s for s, m in cap.media.items() if m.opt_str("ResourceSubType") == C.SubType.VIRTUAL_HARD_DISK}
        unknown_slots = [str(s) for s in paths if s not in vhd_slots]
        if unknown_slots:
            raise UnknownDevice(
                f"the captured VM '{name}' has no virtual hard disk at {', '.join(unknown_slots)} "
                f"(its disks: {', '.join(str(s) for s in sorted(vhd_slots, key=_slot_key)) or 'none'})",
                context=self._context(name), what_to_do="map the disks by the drive slots the VM had")
        targets = self._connection_targets(name, cap.adapters, cap.connections, switches or {})

        defined = self._define_system(sys_inst, name, config_root)
        vm_epr = _epr(defined, "the defined VM", self.node)
        guid = defined.str("Name").upper()
        try:
            self._replay(vm_epr, guid=guid, name=name, cap=cap, targets=targets, paths=paths)
        except BareosHyperVError as exc:
            self._discard(vm_epr, guid, name)
            raise DefineFailed(
                f"could not define VM '{name}' on {self.node} from the captured settings: {exc.message}",
                context=self._context(guid), what_to_do=exc.what_to_do or "see the Hyper-V-VMMS Admin event log",
                problems=exc.problems if isinstance(exc, ImporterError) else (),
            ) from exc
        log.info("defined VM '%s' (%s) on %s from captured settings", name, guid, self.node)
        return VmRef(guid=guid, name=name)

    def _connection_targets(self, name: str, adapters: Sequence[CimInstance],
                            connections: Mapping[str, CimInstance],
                            switches: Mapping[str, Optional[str]]) -> Dict[str, str]:
        """Adapter InstanceID (lower case) -> switch object path on this host, for adapters to connect."""
        by_mac = {_mac(a.opt_str("Address") or ""): a for a in adapters}
        wanted = {_mac(m): n for m, n in switches.items()}
        unknown = [m for m in switches if _mac(m) not in by_mac or not _mac(m)]
        if unknown:
            raise UnknownDevice(
                f"the captured VM '{name}' has no network adapter with MAC address {', '.join(unknown)} "
                f"(its adapters: {', '.join(sorted(m for m in by_mac if m)) or 'none'})",
                context=self._context(name), what_to_do="map the adapters by the MAC addresses the VM had")
        names: Dict[str, str] = {}
        for adapter in adapters:
            iid = (adapter.opt_str("InstanceID") or "").lower()
            mac = _mac(adapter.opt_str("Address") or "")
            conn = connections.get(iid)
            if mac and mac in wanted:
                target = wanted[mac]
            elif conn is not None and (conn.opt_int("EnabledState") or CONNECTION_ENABLED) == CONNECTION_ENABLED \
                    and conn.strs("HostResource"):
                target = conn.opt_str("LastKnownSwitchName") or None
                if target is None:
                    raise SwitchNotFound(
                        f"the captured connection of adapter {mac or iid} of VM '{name}' does not name its switch",
                        context=self._context(name),
                        what_to_do="map the adapter to a switch of the host or leave it disconnected")
            else:
                target = None
            if target is not None:
                names[iid] = target
        if not names:
            return {}
        host_switches = self._switch_paths()
        return {iid: self._switch(host_switches, sw, name) for iid, sw in names.items()}

    def _define_system(self, captured: CimInstance, name: str, config_root: str) -> CimInstance:
        vssd = CimInstance(C.VSSD)
        for prop, value in captured.items():
            if value is not None and prop.lower() not in _NOT_DEFINED:
                vssd.set(prop, value, captured.type_of(prop))
        vssd["ElementName"] = name
        vssd["ConfigurationDataRoot"] = config_root
        vssd["SnapshotDataRoot"] = config_root
        for prop in _DATA_ROOTS:
            vssd[prop] = config_root
        result = self._vsms("DefineSystem", [("SystemSettings", _embedded(vssd))],
                            doing=f"define VM '{name}'", vm=name, error=DefineFailed,
                            what_to_do="check the configuration folder and the captured settings")
        found = [v for v in result.resulting("ResultingSystem", C.COMPUTER_SYSTEM)
                 if v.class_name.lower() == C.COMPUTER_SYSTEM.lower()]
        if not found:
            raise DefineFailed(f"DefineSystem of '{name}' finished on {self.node} but the VM cannot be found",
                               context=self._context(name, job=result.job_id),
                               what_to_do="look for the VM on the host and remove it before retrying")
        return found[0]

    def _replay(self, vm_epr: EndpointReference, *, guid: str, name: str, cap: _Captured,
                targets: Mapping[str, str], paths: Mapping[DriveSlot, str]) -> None:
        """Add the captured devices to the freshly defined VM, step by step (parents before children)."""
        vm_label = f"'{name}' ({guid})"
        vssd, now = self._read_vm(vm_epr, guid)
        vssd_epr = _epr(vssd, "VM settings", self.node)

        def add(items: List[EmbeddedInstance], what: str, current: List[CimInstance]) -> List[CimInstance]:
            """Add settings and return the VM's devices afterwards (unchanged when there was nothing to add)."""
            if not items:
                return current
            self._vsms("AddResourceSettings", [("AffectedConfiguration", vssd_epr), ("ResourceSettings", items)],
                       doing=f"add {what} to VM {vm_label}", vm=guid,
                       what_to_do="check that the files and switches the settings name exist on the host")
            return self._read_vm(vm_epr, guid)[1]

        # processor and memory exist already: resize them
        sizing: List[EmbeddedInstance] = []
        for rtype, names in ((C.ResourceType.PROCESSOR, _CPU_PROPS), (C.ResourceType.MEMORY, _MEMORY_PROPS)):
            captured = next((d for d in cap.devices if d.opt_int("ResourceType") == rtype), None)
            current = next((d for d in now if d.opt_int("ResourceType") == rtype), None)
            if captured is None or current is None:
                continue
            inst = CimInstance(current.class_name, {"InstanceID": current.str("InstanceID")})
            for prop in names:
                if captured.get(prop) is not None:
                    inst.set(prop, captured.get(prop), captured.type_of(prop))
            sizing.append(_embedded(inst))
        if sizing:
            self._vsms("ModifyResourceSettings", [("ResourceSettings", sizing)],
                       doing=f"size processor and memory of VM {vm_label}", vm=guid,
                       what_to_do="the host may have fewer processors or less memory than the VM had")

        # SCSI controllers beyond the default ones, so that captured indexes exist
        have_scsi = sum(1 for k, _i in controller_slots(now).values() if k is ControllerKind.SCSI)
        need_scsi = 1 + max((i for k, i in cap.controllers.values() if k is ControllerKind.SCSI), default=-1)
        scsi: Dict[str, CimValue] = {"ResourceType": int(C.ResourceType.SCSI_CONTROLLER),
                                     "ResourceSubType": C.SubType.SCSI_CONTROLLER}
        now = add([_embedded(CimInstance(C.RASD, scsi)) for _ in range(max(0, need_scsi - have_scsi))],
                  "SCSI controllers", now)

        # drives in their slots
        new_ctrls = {slot: iid for iid, slot in controller_slots(now).items()}
        by_iid = {(d.opt_str("InstanceID") or "").lower(): d for d in now}
        items = []
        for slot, drive in sorted(cap.drives.items(), key=lambda kv: _slot_key(kv[0])):
            ctrl_iid = new_ctrls.get((slot.controller, slot.controller_index))
            if ctrl_iid is None:
                raise UnknownDevice(f"VM {vm_label} on {self.node} has no {slot.controller.value.upper()} "
                                    f"controller {slot.controller_index} for the drive at {slot}",
                                    context=self._context(guid),
                                    what_to_do="a generation 2 VM has no IDE controllers; check the captured "
                                    "generation")
            props: Dict[str, CimValue] = {
                "ResourceType": drive.opt_int("ResourceType"), "ResourceSubType": drive.opt_str("ResourceSubType"),
                "AddressOnParent": str(slot.location),
                "Parent": self.services.path_of(_epr(by_iid[ctrl_iid], "a controller", self.node))}
            inst = CimInstance(drive.class_name or C.RASD, props)
            if drive.strs("HostResource"):  # pass-through: the host disk
                inst["HostResource"] = drive.strs("HostResource")
            items.append(_embedded(inst))
        now = add(items, "drives", now)

        # media in the drives
        new_drives = _drives_by_slot(now)
        items = []
        for slot, medium in sorted(cap.media.items(), key=lambda kv: _slot_key(kv[0])):
            target = new_drives.get(slot)
            if target is None:
                continue  # its drive was not captured
            hosts = [paths[slot]] if slot in paths else medium.strs("HostResource")
            props = {"ResourceType": int(C.ResourceType.LOGICAL_DISK),
                     "ResourceSubType": medium.opt_str("ResourceSubType"), "HostResource": hosts,
                     "Parent": self.services.path_of(_epr(target, "a drive", self.node))}
            items.append(_embedded(CimInstance(medium.class_name or C.SASD, props)))
        now = add(items, "disks and media", now)

        # adapters with their MAC addresses, then their connections
        items = []
        for adapter in cap.adapters:
            props = {"ResourceType": int(C.ResourceType.ETHERNET_ADAPTER),
                     "ResourceSubType": adapter.opt_str("ResourceSubType"),
                     "ElementName": adapter.opt_str("ElementName") or "Network Adapter"}
            inst = CimInstance(adapter.class_name or C.SYNTHETIC_NIC_SD, props)
            mac = _mac(adapter.opt_str("Address") or "")
            if mac:
                inst["Address"] = mac
                inst["StaticMacAddress"] = True  # keep the guest's MAC (hyperv-wmi.md 5.4)
            if adapter.get("VirtualSystemIdentifiers") is not None:
                inst["VirtualSystemIdentifiers"] = adapter.strs("VirtualSystemIdentifiers")
            items.append(_embedded(inst))
        now = add(items, "network adapters", now)
        new_adapters = _adapters(now)
        items = []
        for adapter in cap.adapters:
            path = targets.get((adapter.opt_str("InstanceID") or "").lower())
            if path is None:
                continue
            mac = _mac(adapter.opt_str("Address") or "")
            ids = adapter.strs("VirtualSystemIdentifiers") if adapter.get("VirtualSystemIdentifiers") else []
            match = next((a for a in new_adapters if mac and _mac(a.opt_str("Address") or "") == mac), None) or \
                next((a for a in new_adapters if ids and a.strs("VirtualSystemIdentifiers") == ids), None)
            if match is None:
                raise UnknownDevice(f"the adapter {mac or '(no MAC)'} added to VM {vm_label} cannot be found",
                                    context=self._context(guid), what_to_do="check the VM's adapters on the host")
            items.append(_embedded(CimInstance(C.EPASD, _connection(
                self.services.path_of(_epr(match, "an adapter", self.node)), path))))
        add(items, "switch connections", now)

    def _discard(self, vm_epr: EndpointReference, guid: str, name: str) -> None:
        """Remove a VM the fallback defined before it failed (best effort: the error that led here wins)."""
        try:
            self.jobs.call(self.services.management, "DestroySystem", [("AffectedSystem", vm_epr)],
                           timeout=self.timeout)
            log.info("removed the partly defined VM '%s' (%s) from %s", name, guid, self.node)
        except (JobError, WsmanError) as exc:
            log.warning("could not remove the partly defined VM '%s' (%s) from %s: %s", name, guid, self.node, exc)
