"""Hyper-V and failover-cluster WMI vocabulary: namespaces, class names, subtypes, enums.

Values are from ``reference/hyperv-wmi.md`` (sections cited per group).  Method
return codes live in :mod:`bareos_hyperv.hyperv.returncodes`.
"""

from __future__ import annotations

import enum

from bareos_hyperv.model.vm import PowerState

# §1.1 namespaces (as they appear in resource URIs)
NS_VIRT = "root/virtualization/v2"
NS_CLUSTER = "root/MSCluster"

# §2 classes
COMPUTER_SYSTEM = "Msvm_ComputerSystem"
PLANNED_COMPUTER_SYSTEM = "Msvm_PlannedComputerSystem"
VSSD = "Msvm_VirtualSystemSettingData"
RASD = "Msvm_ResourceAllocationSettingData"
SASD = "Msvm_StorageAllocationSettingData"
EPASD = "Msvm_EthernetPortAllocationSettingData"
PROCESSOR_SD = "Msvm_ProcessorSettingData"
MEMORY_SD = "Msvm_MemorySettingData"
SYNTHETIC_NIC_SD = "Msvm_SyntheticEthernetPortSettingData"
EMULATED_NIC_SD = "Msvm_EmulatedEthernetPortSettingData"
SWITCH = "Msvm_VirtualEthernetSwitch"
VSMS = "Msvm_VirtualSystemManagementService"
VSMS_SETTINGS = "Msvm_VirtualSystemManagementServiceSettingData"
SNAPSHOT_SERVICE = "Msvm_VirtualSystemSnapshotService"
IMAGE_SERVICE = "Msvm_ImageManagementService"
REFERENCE_POINT = "Msvm_VirtualSystemReferencePoint"
REFERENCE_POINT_SERVICE = "Msvm_VirtualSystemReferencePointService"

# §2.3 associations
SETTINGS_DEFINE_STATE = "Msvm_SettingsDefineState"
VSSD_COMPONENT = "Msvm_VirtualSystemSettingDataComponent"
SNAPSHOT_OF_VS = "Msvm_SnapshotOfVirtualSystem"
REFERENCE_POINT_OF_VS = "Msvm_ReferencePointOfVirtualSystem"
AFFECTED_JOB_ELEMENT = "Msvm_AffectedJobElement"

# §7 failover cluster
CLUSTER = "MSCluster_Cluster"
CLUSTER_NODE = "MSCluster_Node"
CLUSTER_GROUP = "MSCluster_ResourceGroup"
CLUSTER_RESOURCE = "MSCluster_Resource"
CLUSTER_CSV = "MSCluster_ClusterSharedVolume"
CLUSTER_PARTITION = "MSCluster_DiskPartition"
CSV_TO_PARTITION = "MSCluster_ClusterSharedVolumeToPartition"
CSV_TO_NODE = "MSCluster_ClusterSharedVolumeToNode"
GROUP_TYPE_VIRTUAL_MACHINE = 111
RESOURCE_TYPE_VM = "Virtual Machine"

# §2.1 captions that tell VMs from the host object
CAPTION_VM = "Virtual Machine"
CAPTION_HOST = "Hosting Computer System"


class ResourceType(enum.IntEnum):
    """CIM ``ResourceType`` of RASD-family settings (§2.4)."""

    PROCESSOR = 3
    MEMORY = 4
    IDE_CONTROLLER = 5
    SCSI_CONTROLLER = 6
    ETHERNET_ADAPTER = 10
    FLOPPY_DRIVE = 14
    DVD_DRIVE = 16
    DISK_DRIVE = 17
    SERIAL_PORT = 21
    LOGICAL_DISK = 31
    ETHERNET_CONNECTION = 33


class SubType:
    """``ResourceSubType`` strings (§2.4)."""

    IDE_CONTROLLER = "Microsoft:Hyper-V:Emulated IDE Controller"
    SCSI_CONTROLLER = "Microsoft:Hyper-V:Synthetic SCSI Controller"
    DISK_DRIVE = "Microsoft:Hyper-V:Synthetic Disk Drive"
    DVD_DRIVE = "Microsoft:Hyper-V:Synthetic DVD Drive"
    PHYSICAL_DISK = "Microsoft:Hyper-V:Physical Disk Drive"
    FLOPPY_DRIVE = "Microsoft:Hyper-V:Synthetic Diskette Drive"
    VIRTUAL_HARD_DISK = "Microsoft:Hyper-V:Virtual Hard Disk"
    VIRTUAL_DVD = "Microsoft:Hyper-V:Virtual CD/DVD Disk"
    VIRTUAL_FLOPPY = "Microsoft:Hyper-V:Virtual Floppy Disk"
    SYNTHETIC_NIC = "Microsoft:Hyper-V:Synthetic Ethernet Port"
    EMULATED_NIC = "Microsoft:Hyper-V:Emulated Ethernet Port"
    ETHERNET_CONNECTION = "Microsoft:Hyper-V:Ethernet Connection"


class VirtualSystemType:
    """``VirtualSystemType`` of a VSSD (§2.2)."""

    REALIZED = "Microsoft:Hyper-V:System:Realized"
    PLANNED = "Microsoft:Hyper-V:System:Planned"
    SNAPSHOT_REALIZED = "Microsoft:Hyper-V:Snapshot:Realized"
    SNAPSHOT_RECOVERY = "Microsoft:Hyper-V:Snapshot:Recovery"


class EnabledState(enum.IntEnum):
    """``Msvm_ComputerSystem.EnabledState`` (§2.1)."""

    UNKNOWN = 0
    ENABLED = 2
    DISABLED = 3
    SHUTTING_DOWN = 4
    ENABLED_BUT_OFFLINE = 6
    QUIESCE = 9
    STARTING_V1 = 10
    PAUSED = 32768
    SUSPENDED = 32769
    STARTING = 32770
    SNAPSHOTTING = 32771
    SAVING = 32773
    STOPPING = 32774
    PAUSING = 32776
    RESUMING = 32777


_POWER = {
    EnabledState.ENABLED: PowerState.RUNNING,
    EnabledState.DISABLED: PowerState.OFF,
    EnabledState.ENABLED_BUT_OFFLINE: PowerState.SAVED,
    EnabledState.SUSPENDED: PowerState.SAVED,
    EnabledState.QUIESCE: PowerState.PAUSED,
    EnabledState.PAUSED: PowerState.PAUSED,
    EnabledState.PAUSING: PowerState.PAUSED,
    EnabledState.STARTING: PowerState.STARTING,
    EnabledState.STARTING_V1: PowerState.STARTING,
    EnabledState.RESUMING: PowerState.STARTING,
    EnabledState.SHUTTING_DOWN: PowerState.STOPPING,
    EnabledState.STOPPING: PowerState.STOPPING,
    EnabledState.SAVING: PowerState.SAVING,
    EnabledState.SNAPSHOTTING: PowerState.RUNNING,
}


def power_state(enabled_state: int) -> PowerState:
    """Fold an ``EnabledState`` value into the operator's power state."""
    try:
        return _POWER.get(EnabledState(enabled_state), PowerState.OTHER)
    except ValueError:
        return PowerState.OTHER


SUBTYPE_GENERATION_PREFIX = "Microsoft:Hyper-V:SubType:"


def wql_literal(value: object) -> str:
    """A WQL literal: strings single-quoted with ``\\`` and ``'`` escaped, numbers and booleans bare.

    Every value that goes into a WQL query passes through here, so a VM name with a
    quote in it can neither break nor change the query.
    """
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"
