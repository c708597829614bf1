"""Virtual machines as the product reasons about them (no WS-Man, no XML)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class Generation(enum.IntEnum):
    """Hyper-V VM generation (``VirtualSystemSubType``; absent on 2012 means generation 1)."""

    GEN1 = 1
    GEN2 = 2


class PowerState(enum.Enum):
    """Power state as an operator reads it, folded from ``Msvm_ComputerSystem.EnabledState``."""

    RUNNING = "running"
    OFF = "off"
    SAVED = "saved"
    PAUSED = "paused"
    STARTING = "starting"
    STOPPING = "stopping"
    SAVING = "saving"
    OTHER = "other"

    @property
    def guest_active(self) -> bool:
        """Whether the guest OS may be running (so application consistency is possible)."""
        return self in (PowerState.RUNNING, PowerState.STARTING, PowerState.STOPPING)


class ControllerKind(enum.Enum):
    """Disk controller family; the index of a SCSI controller is its order in the VM."""

    IDE = "ide"
    SCSI = "scsi"


class DriveKind(enum.Enum):
    """What a drive slot holds."""

    VIRTUAL_DISK = "vhd"  # a VHD/VHDX/AVHDX file: backed up
    SHARED_DISK = "vhds"  # a VHD Set: not backed up yet
    PASS_THROUGH = "passthrough"  # noqa: S105  (a disk kind, not a password) never in a checkpoint
    DVD = "dvd"  # an ISO or an empty drive: recorded, not backed up
    FLOPPY = "floppy"


@dataclass(frozen=True)
class VmRef:
    """A VM's identity: its GUID (``Msvm_ComputerSystem.Name``) and display name (not unique)."""

    guid: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({self.guid})"


@dataclass(frozen=True)
class DriveSlot:
    """Where a drive sits: controller family, controller index, slot on the controller."""

    controller: ControllerKind
    controller_index: int
    location: int

    def __str__(self) -> str:
        return f"{self.controller.value.upper()} {self.controller_index}:{self.location}"


@dataclass
class Drive:
    """One drive of a VM and the file or host resource behind it."""

    kind: DriveKind
    slot: DriveSlot
    path: Optional[str]  # host path of the VHD/ISO; None for pass-through or an empty DVD
    settings_id: str  # InstanceID of the SASD (or of the drive RASD when there is no SASD)
    host_resource: Optional[str] = None  # pass-through: the Msvm_DiskDrive object path


@dataclass
class NetworkAdapter:
    """A synthetic or legacy network adapter and the switch it is connected to."""

    name: str
    mac: str  # 12 hex digits, no separators, as Hyper-V stores it
    static_mac: bool
    legacy: bool
    switch_name: Optional[str]  # ElementName of the switch (what restore matches by)
    switch_id: Optional[str]  # switch GUID on the source host
    connected: bool
    settings_id: str


@dataclass
class VmConfig:
    """The normalised view of a VM's configuration, built from its settings objects."""

    ref: VmRef
    generation: Generation
    version: str  # configuration version "major.minor"
    state: PowerState
    processors: int
    memory_mb: int
    dynamic_memory: bool
    config_root: str
    snapshot_root: str
    drives: list[Drive] = field(default_factory=list)
    adapters: list[NetworkAdapter] = field(default_factory=list)
    secure_boot: Optional[bool] = None
    notes: str = ""

    @property
    def virtual_disks(self) -> list[Drive]:
        """Drives whose files a backup copies."""
        return [d for d in self.drives if d.kind is DriveKind.VIRTUAL_DISK]
