"""Recovery checkpoints and reference points: the consistent point a backup reads from.

Flow (``hyperv-wmi.md`` §4): ``CreateSnapshot`` with ``SnapshotType`` 32768 (a
*recovery* checkpoint, hidden from Hyper-V Manager) freezes every disk under a new
differencing child; the backup reads the frozen parents; then the checkpoint is
converted to a reference point (kept for the next incremental) on success or
destroyed on failure.  Checkpoints are named ``bareos-hyperv job <id>`` so that a
later job can recognise and remove the ones an interrupted job of *this* plugin
left behind, without touching other products' recovery checkpoints.

Reference points carry no such mark: ``Msvm_VirtualSystemReferencePoint`` has no
name a caller can set, no creation time and no link to the checkpoint it was
converted from (``hyperv-wmi.md`` §4.3; Microsoft's class page).  Which ones this
plugin made is therefore what the caller recorded when it made them
(:meth:`CheckpointManager.replace_reference_points`).

What a checkpoint achieved is read, not assumed: Windows Server 2016 and later can finish an
application-consistent request crash-consistent when the guest's VSS fails, without failing the
job (vendors report "the backup will proceed in crash-consistent mode", e.g. Altaro's
RCTCONTROLLER_011).  The job's warnings (``GetErrorEx`` of a job that completed with warnings)
are read when the checkpoint is made, and the reference point's ``ConsistencyLevel``
(1 application, 2 crash; Msvm_VirtualSystemReferencePoint) when it becomes one.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Optional

from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, HyperVError
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.jobs import JobFailedError, JobFollower
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.vm import PowerState
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, EndpointReference
from bareos_hyperv.wsman.errors import NotFoundFault

log = logging.getLogger("bareos_hyperv.hyperv.checkpoints")

SNAPSHOT_TYPE_RECOVERY = 32768
CONSISTENCY_APPLICATION = 1  # Msvm_VirtualSystemSnapshotSettingData.ConsistencyLevel
CONSISTENCY_CRASH = 2
NAME_PREFIX = "bareos-hyperv job "
SNAPSHOT_SETTINGS_CLASS = "Msvm_VirtualSystemSnapshotSettingData"


class Consistency(enum.Enum):
    """The ``consistency`` option."""

    APPLICATION = "application"  # try application-consistent, fall back to crash with a warning
    APPLICATION_REQUIRED = "application-required"  # fail the VM when the guest cannot quiesce
    CRASH = "crash"

    @classmethod
    def parse(cls, text: str) -> Consistency:
        """Parse the option value; ConfigurationError names the allowed values."""
        for member in cls:
            if member.value == text.strip().lower():
                return member
        raise ConfigurationError(
            f"consistency={text} is not a known consistency level",
            what_to_do="use consistency=application (default), application-required or crash",
        )


class Achieved(enum.Enum):
    """What a checkpoint actually captured (recorded in the manifest)."""

    APPLICATION = "application"
    CRASH = "crash"
    COLD = "cold"  # the VM was off or saved: the disks were not changing


@dataclass
class Checkpoint:
    """A recovery checkpoint of one VM: its settings object and the frozen disk files."""

    vm_guid: str
    instance_id: str
    epr: EndpointReference
    achieved: Achieved
    frozen_disks: list[str] = field(default_factory=list)  # SASD HostResource of the snapshot settings
    warnings: list[str] = field(default_factory=list)
    # device key (:func:`device_key`) -> the file the checkpoint froze for that virtual hard disk
    frozen_by_device: Dict[str, str] = field(default_factory=dict)


@dataclass
class ReferencePoint:
    """An RCT reference point: the baseline of the next incremental, with an RCT id per disk."""

    instance_id: str
    epr: EndpointReference
    rct_ids: dict[str, str] = field(default_factory=dict)  # virtual disk identifier -> RCT id
    consistency_level: Optional[int] = None  # ConsistencyLevel of the point (1 application, 2 crash)

    @property
    def achieved(self) -> Optional[Achieved]:
        """What the point says it captured (None: the host did not say)."""
        return {CONSISTENCY_APPLICATION: Achieved.APPLICATION, CONSISTENCY_CRASH: Achieved.CRASH}.get(
            self.consistency_level or 0)


@dataclass
class ReferencePointCleanup:
    """What :meth:`CheckpointManager.replace_reference_points` did with a VM's reference points (ids)."""

    destroyed: List[str] = field(default_factory=list)  # made by this plugin and no longer needed
    failed: Dict[str, str] = field(default_factory=dict)  # made by this plugin, not destroyed: id -> error
    gone: List[str] = field(default_factory=list)  # recorded as this plugin's but no longer on the VM
    others: List[str] = field(default_factory=list)  # not recorded as this plugin's: never touched


def device_key(instance_id: str) -> str:
    """The device part of a settings object's InstanceID, the same in a VM's and its checkpoint's settings.

    Hyper-V names device settings ``Microsoft:<configuration id>\\<device>...``: the live
    configuration and each checkpoint have their own configuration id and share the rest.
    """
    _head, sep, tail = instance_id.partition("\\")
    return (tail if sep else instance_id).lower()


def _snapshot_settings(level: int) -> EmbeddedInstance:
    inst = CimInstance(SNAPSHOT_SETTINGS_CLASS, {"ConsistencyLevel": level, "IgnoreNonSnapshottableDisks": True})
    return EmbeddedInstance(inst, {"ConsistencyLevel": "uint8", "IgnoreNonSnapshottableDisks": "boolean"})


class CheckpointManager:
    """Create, list, name, convert and destroy recovery checkpoints of VMs on one host."""

    def __init__(self, services: HostServices, *, timeout: float = 1800.0,
                 should_cancel: Optional[Callable[[], bool]] = None) -> None:
        self.services = services
        self.client = services.client
        self.jobs = JobFollower(self.client)
        self.timeout = timeout
        self.should_cancel = should_cancel

    def create(self, vm_epr: EndpointReference, vm_guid: str, state: PowerState, consistency: Consistency,
               job_id: int) -> Checkpoint:
        """Take a recovery checkpoint with the requested consistency (``hyperv-wmi.md`` §4.1).

        A running VM is asked for application consistency first unless ``crash`` was
        requested; when the guest cannot quiesce, ``application`` falls back to crash
        consistency with a warning and ``application-required`` fails.  A VM that is
        off or saved is captured cold (its disks are not changing).  A job that completed
        with warnings (how Windows Server 2016+ reports a checkpoint that went on
        crash-consistent) makes the checkpoint crash-consistent, or, with
        ``application-required``, is removed and fails.
        """
        warnings: list[str] = []
        if not state.guest_active:
            level, achieved = CONSISTENCY_CRASH, Achieved.COLD
        elif consistency is Consistency.CRASH:
            level, achieved = CONSISTENCY_CRASH, Achieved.CRASH
        else:
            level, achieved = CONSISTENCY_APPLICATION, Achieved.APPLICATION
        try:
            result, job_warnings = self._create(vm_epr, level)
        except JobFailedError as exc:
            if level != CONSISTENCY_APPLICATION:
                raise  # a crash-consistent or cold checkpoint failed: nothing to fall back to
            if consistency is Consistency.APPLICATION_REQUIRED:
                raise HyperVError(
                    "the guest could not make an application-consistent checkpoint",
                    context={"host": self.services.node, "vm": vm_guid, "hyper-v": exc.message},
                    what_to_do="check the Hyper-V Volume Shadow Copy Requestor (backup integration "
                    "service) in the guest, or allow a fallback with consistency=application",
                ) from exc
            warnings.append(
                f"application-consistent checkpoint failed ({exc.message}); "
                "fell back to a crash-consistent checkpoint"
            )
            log.warning("VM %s: %s", vm_guid, warnings[-1])
            level, achieved = CONSISTENCY_CRASH, Achieved.CRASH
            result, job_warnings = self._create(vm_epr, level)
        snap = result
        if snap.epr is None:
            raise HyperVError("Hyper-V returned a checkpoint without its reference",
                              context={"host": self.services.node, "vm": vm_guid})
        # Named first: should the checkpoint have to go and its removal fail, a later job knows it as ours.
        self._name(snap, job_id)
        if job_warnings and achieved is Achieved.APPLICATION:
            # Completed, but with warnings: Windows Server 2016+ reports a checkpoint that went on
            # crash-consistent this way (the guest's VSS failed).  Whatever the warning says, an
            # application-consistent point cannot be claimed.
            said = "; ".join(job_warnings)
            if consistency is Consistency.APPLICATION_REQUIRED:
                fate = ("the checkpoint was removed" if self._discard(snap.epr, vm_guid)
                        else "the checkpoint could not be removed; the next job of this plugin removes it")
                raise HyperVError(
                    "Hyper-V completed the application-consistent checkpoint with warnings, so it is not "
                    f"application-consistent; {fate}",
                    context={"host": self.services.node, "vm": vm_guid, "hyper-v": said},
                    what_to_do="check the Hyper-V Volume Shadow Copy Requestor (backup integration service) and "
                    "the VSS writers in the guest, or accept a crash-consistent backup with consistency=application",
                )
            achieved = Achieved.CRASH
            warnings.append(f"Hyper-V completed the application-consistent checkpoint with warnings ({said}); "
                            "it is recorded as crash-consistent")
        elif job_warnings:
            warnings.append(f"Hyper-V completed the checkpoint with warnings: {'; '.join(job_warnings)}")
        checkpoint = Checkpoint(vm_guid=vm_guid, instance_id=snap.str("InstanceID"), epr=snap.epr,
                                achieved=achieved, warnings=warnings)
        frozen = self.disk_settings(snap.epr)
        checkpoint.frozen_disks = [path for _key, path in frozen]
        checkpoint.frozen_by_device = dict(frozen)
        return checkpoint

    def _discard(self, snapshot_epr: EndpointReference, vm_guid: str) -> bool:
        """Destroy a checkpoint the job will not use; False when that failed (it is named: a later job removes it)."""
        try:
            self.destroy(snapshot_epr)
        except BareosHyperVError as exc:
            log.error("VM %s: could not remove the checkpoint that will not be used: %s", vm_guid, exc)
            return False
        return True

    def _create(self, vm_epr: EndpointReference, level: int) -> tuple[CimInstance, List[str]]:
        """CreateSnapshot; the checkpoint and the warnings of its job (none when it completed cleanly)."""
        result = self.jobs.call(
            self.services.snapshots, "CreateSnapshot",
            [("AffectedSystem", vm_epr), ("SnapshotSettings", _snapshot_settings(level)),
             ("SnapshotType", SNAPSHOT_TYPE_RECOVERY)],
            timeout=self.timeout, should_cancel=self.should_cancel, out_types={"SnapshotType": "uint16"},
        )
        found = result.resulting("ResultingSnapshot", C.VSSD)
        if not found:
            raise HyperVError("CreateSnapshot finished but no checkpoint can be found",
                              context={"host": self.services.node, "job": result.job_id},
                              what_to_do="look for a recovery checkpoint on the VM and remove it; retry")
        warnings: List[str] = []
        if result.warning and result.job_ref is not None:
            warnings = [str(e) for e in self.jobs.errors(result.job_ref, "CreateSnapshot")]
            if not warnings:  # GetErrorEx said nothing: the state itself is the warning
                warnings = [(result.job.opt_str("ErrorDescription") if result.job is not None else None)
                            or "the job completed with warnings"]
        return found[0], warnings

    def _name(self, snap: CimInstance, job_id: int) -> None:
        """Rename the checkpoint so that a later job can recognise it as ours."""
        renamed = CimInstance(C.VSSD, {"InstanceID": snap.str("InstanceID"), "ElementName": f"{NAME_PREFIX}{job_id}"})
        self.jobs.call(self.services.management, "ModifySystemSettings",
                       [("SystemSettings", EmbeddedInstance(renamed, {"InstanceID": "string",
                                                                      "ElementName": "string"}))],
                       timeout=self.timeout)

    def disk_paths(self, settings_epr: EndpointReference) -> list[str]:
        """Files of the virtual hard disks of a settings object (checkpoint or live VM)."""
        return [path for _key, path in self.disk_settings(settings_epr)]

    def disk_settings(self, settings_epr: EndpointReference) -> list[tuple[str, str]]:
        """(device key, file) of each virtual hard disk of a settings object, in Hyper-V's order."""
        devices = self.client.associators(settings_epr, assoc_class=C.VSSD_COMPONENT, result_class=C.SASD)
        out = []
        for dev in devices:
            if (dev.opt_str("ResourceSubType") or "") == C.SubType.VIRTUAL_HARD_DISK:
                hosts = dev.strs("HostResource")
                if hosts:
                    out.append((device_key(dev.opt_str("InstanceID") or ""), hosts[0]))
        return out

    def list_ours(self, vm_epr: EndpointReference) -> list[CimInstance]:
        """Recovery checkpoints of the VM that this plugin created (by name)."""
        snaps = self.client.associators(vm_epr, assoc_class=C.SNAPSHOT_OF_VS, result_class=C.VSSD)
        return [s for s in snaps
                if s.opt_str("VirtualSystemType") == C.VirtualSystemType.SNAPSHOT_RECOVERY
                and (s.opt_str("ElementName") or "").startswith(NAME_PREFIX)]

    def destroy(self, snapshot_epr: EndpointReference) -> None:
        """Delete a checkpoint; Hyper-V merges its differencing disks back."""
        self.jobs.call(self.services.snapshots, "DestroySnapshot", [("AffectedSnapshot", snapshot_epr)],
                       timeout=self.timeout)

    def remove_stale(self, vm_epr: EndpointReference) -> list[str]:
        """Destroy recovery checkpoints an earlier, interrupted job of this plugin left; their names."""
        removed = []
        for snap in self.list_ours(vm_epr):
            if snap.epr is not None:
                self.destroy(snap.epr)
                removed.append(snap.opt_str("ElementName") or snap.str("InstanceID"))
        return removed

    def to_reference_point(self, checkpoint: Checkpoint) -> ReferencePoint:
        """Convert the checkpoint into a reference point (the checkpoint disappears, disks merge)."""
        result = self.jobs.call(self.services.snapshots, "ConvertToReferencePoint",
                                [("AffectedSnapshot", checkpoint.epr)], timeout=self.timeout)
        found = result.resulting("ResultingReferencePoint", C.REFERENCE_POINT)
        rp = found[0] if found else None
        if rp is None or rp.epr is None:
            raise HyperVError("ConvertToReferencePoint finished but no reference point can be found",
                              context={"host": self.services.node, "vm": checkpoint.vm_guid})
        disks = rp.strs("VirtualDiskIdentifiers")
        rcts = rp.strs("ResilientChangeTrackingIdentifiers")
        return ReferencePoint(instance_id=rp.str("InstanceID"), epr=rp.epr, rct_ids=dict(zip(disks, rcts)),
                              consistency_level=rp.opt_int("ConsistencyLevel"))

    def reference_points(self, vm_epr: EndpointReference) -> list[CimInstance]:
        """Reference points of the VM."""
        return self.client.associators(vm_epr, assoc_class=C.REFERENCE_POINT_OF_VS, result_class=C.REFERENCE_POINT)

    def destroy_reference_point(self, epr: EndpointReference) -> None:
        """Drop a baseline that is no longer needed."""
        self.jobs.call(self.services.reference_points, "DestroyReferencePoint",
                       [("AffectedReferencePoint", epr)], timeout=self.timeout)

    def replace_reference_points(self, vm_epr: EndpointReference, *, keep: Collection[str],
                                 ours: Collection[str]) -> ReferencePointCleanup:
        """Destroy the VM's reference points that this plugin made (``ours``), except those in ``keep``.

        ``keep`` holds the reference point the job just made and, later, the base a differential
        chain still needs.  A reference point whose InstanceID is not in ``ours`` belongs to
        another product (or its record was lost) and is never touched: Hyper-V cannot tell who
        made one.  A failure to destroy one is reported in the result, not raised, so that the
        caller keeps it recorded and a later job retries; listing the VM's reference points
        raises.  Ids compare case-insensitively.
        """
        keep_ids = {k.lower() for k in keep}
        our_ids = {o.lower() for o in ours}
        result = ReferencePointCleanup()
        present = set()
        for rp in self.reference_points(vm_epr):
            rid = rp.str("InstanceID")
            present.add(rid.lower())
            if rid.lower() in keep_ids:
                continue
            if rid.lower() not in our_ids or rp.epr is None:
                result.others.append(rid)
                continue
            try:
                self.destroy_reference_point(rp.epr)
            except NotFoundFault:
                result.gone.append(rid)  # removed meanwhile (by Hyper-V or an operator)
            except BareosHyperVError as exc:
                result.failed[rid] = str(exc)
            else:
                result.destroyed.append(rid)
        result.gone += [o for o in ours if o.lower() not in present and o.lower() not in keep_ids]
        return result
