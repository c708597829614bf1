"""What one backup of one VM captured and wrote: the domain types the manifest records.

Standard library only.  The agent fills these while it backs a VM up; the manifest
layer writes and reads them (``bareos_hyperv/manifest``); restore planning reads them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from bareos_hyperv.model.disk import VirtualDiskInfo
from bareos_hyperv.model.vm import ControllerKind


class BackupLevel(enum.Enum):
    """Bareos job level of the backup; the value is the word the manifest stores."""

    FULL = "Full"
    INCREMENTAL = "Incremental"
    DIFFERENTIAL = "Differential"

    @classmethod
    def from_bareos(cls, level: str) -> BackupLevel:
        """Map Bareos's one-letter level (``F``, ``I``, ``D``) or the word itself to a level.

        :raises ValueError: any other level (e.g. ``V``erify or ``B``ase), which has no meaning here.
        """
        text = level.strip().lower()
        for member in cls:
            if text in (member.value.lower(), member.value[0].lower()):
                return member
        raise ValueError(f"backup level {level!r} is not Full, Incremental or Differential")


class ConsistencyMode(enum.Enum):
    """The consistency the operator asked for (plugin option ``consistency=``)."""

    APPLICATION = "application"  # application-consistent, crash-consistent fallback with a warning
    APPLICATION_REQUIRED = "application-required"  # application-consistent or the job fails
    CRASH = "crash"  # crash-consistent only (no VSS in the guest)


class Consistency(enum.Enum):
    """The consistency a checkpoint actually achieved."""

    APPLICATION = "application"
    CRASH = "crash"
    COLD = "cold"  # the VM was off or saved: its disks were not changing, so the copy is whole


CONSISTENCY_FROM_JOB = "checkpoint-job"
CONSISTENCY_FROM_REFERENCE_POINT = "reference-point"


class PartKind(enum.Enum):
    """What a save-set file of a VM holds (the manifest itself is not listed in itself)."""

    CONFIG = "config"  # a native configuration file (.vmcx, .vmrs, .vmgs) from the config-only export
    DISK = "disk"  # a full image of one disk file
    DELTA = "delta"  # the changes that turn the base job's image of one disk file into this one


class DeltaMethod(enum.Enum):
    """How an incremental or differential job found what changed in a disk file (recorded per delta)."""

    RCT = "rct"  # Hyper-V's resilient change tracking (GetVirtualDiskChanges) mapped through the BAT
    HASH = "hash"  # the whole file read and compared chunk by chunk with the base's digests
    UNCHANGED = "unchanged"  # the VHDX header proves nothing was written since the base


@dataclass(frozen=True)
class ChainPart:
    """One save-set part a restore applies, in order, to rebuild a disk file.

    ``job_id`` wrote the part called ``name`` (relative to the VM's directory); ``image_digest``
    is the file's image digest after applying it (``storage.delta.ImageHashes``).
    """

    job_id: int
    name: str
    kind: PartKind
    image_digest: str


@dataclass(frozen=True)
class CapturedSettings:
    """One settings object of a VM exactly as captured: its CIM-XML ``INSTANCE`` text, verbatim.

    ``cimxml`` is the text ``wsman.cim.to_cimxml`` produced (or Hyper-V returned); it is
    kept byte for byte, because restore replays it through ``DefineSystem`` /
    ``ModifyResourceSettings`` (``reference/hyperv-wmi.md`` 3.4).
    """

    class_name: str
    instance_id: str
    cimxml: str


@dataclass(frozen=True)
class Controller:
    """A disk controller of a VM; SCSI controllers are numbered by their order in the VM."""

    kind: ControllerKind
    index: int
    settings_id: str


@dataclass(frozen=True)
class DiskFile:
    """One file of a disk's chain, with what the backup knows of it.

    ``index`` is the ``<n>`` of its save-set name ``disks/<n>-<file>``: unique per file
    within the VM's save set, so two files with the same name in different folders
    (a chain across volumes) never collide.  ``sha256`` is the digest of the file as
    a restore must rebuild it (after applying deltas), ``None`` when it was not read (an
    incremental that read only the changed ranges).  ``image_digest`` (with ``chunk_size``) is
    the file's image digest (``storage.delta.ImageHashes``), known for every saved file; ``chain``
    lists the parts a restore applies in order to rebuild the file: the full image first, then
    each delta (empty in manifests of older versions, where the full image is this job's part).
    ``sha256_in`` names the save-set file that holds the digest when the manifest cannot (the
    streamed manifest of a full copy, written before the bytes go through: ``SHA256SUMS``).
    """

    index: int
    info: VirtualDiskInfo
    file_size: int
    sha256: Optional[str] = None
    image_digest: Optional[str] = None
    chunk_size: Optional[int] = None
    chain: tuple[ChainPart, ...] = ()
    sha256_in: Optional[str] = None


@dataclass
class DiskBackup:
    """A disk drive of the VM as the backup handled it.

    ``settings_id`` names the drive (``Drive.settings_id`` in ``VmConfig.drives``).
    ``chain`` starts with the file the drive used when the checkpoint was taken and
    continues with its parents to the base.  A disk that is not backed up (pass-through,
    VHD Set, excluded) has an empty chain and ``not_backed_up`` says why.
    """

    settings_id: str
    chain: list[DiskFile] = field(default_factory=list)
    not_backed_up: Optional[str] = None


@dataclass(frozen=True)
class RctEntry:
    """One disk's resilient change tracking id at a reference point.

    ``virtual_disk_id`` is the entry of ``Msvm_VirtualSystemReferencePoint.VirtualDiskIdentifiers``
    and ``rct_id`` the index-aligned ``ResilientChangeTrackingIdentifiers`` entry.
    """

    virtual_disk_id: str
    rct_id: str


@dataclass(frozen=True)
class ReferencePoint:
    """An RCT reference point (``Msvm_VirtualSystemReferencePoint``) and the job that made it."""

    instance_id: str
    rct: tuple[RctEntry, ...] = ()
    job_id: Optional[int] = None


@dataclass(frozen=True)
class SaveSetPart:
    """One file this job wrote into the VM's save-set tree (besides the manifest).

    ``name`` is relative to the VM's directory (``config/<guid>.vmcx``,
    ``disks/<n>-<file>``, ``disks/<n>-<file>+I+<jobid>``; see ``manifest.layout``).
    ``size`` and ``sha256`` are of the bytes stored in Bareos.  ``file_index`` links a
    disk image or delta to its ``DiskFile``; ``source`` is the host path the bytes came
    from; ``base_job_id`` is, for a delta, the job whose image of the file it applies to, and
    ``base_digest``/``result_digest`` the image digests before and after (as in the delta's
    header); ``method`` says how the changes were found.
    """

    kind: PartKind
    name: str
    size: int
    sha256: str
    file_index: Optional[int] = None
    source: Optional[str] = None
    base_job_id: Optional[int] = None
    base_digest: Optional[str] = None
    result_digest: Optional[str] = None
    method: Optional[DeltaMethod] = None


@dataclass
class BackupFacts:
    """What the job did: level, job id, time (UTC), consistency, checkpoint, reference points, parts.

    An incremental or differential names the job its deltas are based on (``base_job_id``: the
    job whose restore objects Bareos delivered) and Bareos's since time (``since``, UTC).
    ``next_file_index`` is above every disk file number ``<n>`` used along the chain, so a file
    added later never takes a number (and save-set name) an older job of the chain used.
    """

    level: BackupLevel
    job_id: int
    time: datetime
    consistency_requested: ConsistencyMode
    consistency_achieved: Consistency
    plugin_version: str
    # where consistency_achieved comes from: CONSISTENCY_FROM_JOB (the checkpoint's job: failed and
    # fell back, warned, or completed cleanly; what the streamed manifest.xml can know) or
    # CONSISTENCY_FROM_REFERENCE_POINT (the ConsistencyLevel Hyper-V recorded on the reference point
    # the checkpoint became; the final manifest).  None in manifests before version 1.2.
    consistency_source: Optional[str] = None
    checkpoint_id: Optional[str] = None
    reference_point: Optional[ReferencePoint] = None
    previous_reference_point: Optional[ReferencePoint] = None
    # why the checkpoint did not become a reference point (the VM's configuration version has no
    # reference points nor RCT, e.g. 5.0): the next incremental compares digests.  None: it did.
    no_reference_point: Optional[str] = None
    # BackupIntent of the configuration export (Msvm_VirtualSystemExportSettingData: 0 PreserveChain,
    # 1 Merge), set deliberately rather than left to the host's template.  None before manifest 1.2.
    export_backup_intent: Optional[int] = None
    parts: list[SaveSetPart] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    base_job_id: Optional[int] = None
    since: Optional[datetime] = None
    next_file_index: Optional[int] = None
