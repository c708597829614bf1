"""Configuration-only export of a checkpoint: the VM's native files (vmcx/vmrs/vmgs) without disks.

``ExportSystemDefinition`` with ``CopySnapshotConfiguration = 3`` (ExportOneSnapshotForBackup,
keeps the VM's ID), ``CopyVmStorage = false`` and ``CopyVmRuntimeInformation = false``
writes ``<dir>\\Virtual Machines\\<GUID>.vmcx`` (and friends) on the host; the data
plane then pulls them over SMB (``hyperv-wmi.md`` §3).  The disk chain stays as it was.
"""

from __future__ import annotations

from typing import Callable, Optional

from bareos_hyperv.hyperv.jobs import JobFollower
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.wsman.cim import CimInstance, CimValue, EmbeddedInstance, EndpointReference

EXPORT_SETTINGS_CLASS = "Msvm_VirtualSystemExportSettingData"
EXPORT_ONE_SNAPSHOT_FOR_BACKUP = 3
CAPTURE_CRASH_CONSISTENT_STATE = 0

_TYPES = {
    "CopySnapshotConfiguration": "uint8",
    "CopyVmStorage": "boolean",
    "CopyVmRuntimeInformation": "boolean",
    "CreateVmExportSubdirectory": "boolean",
    "SnapshotVirtualSystem": "string",
    "CaptureLiveState": "uint8",
}


def export_configuration(services: HostServices, vm_epr: EndpointReference, checkpoint_epr: EndpointReference,
                         directory: str, *, timeout: float = 1800.0,
                         should_cancel: Optional[Callable[[], bool]] = None) -> None:
    """Export the checkpoint's configuration (no disks, no runtime state) into ``directory`` on the host."""
    values: dict[str, CimValue] = {
        "CopySnapshotConfiguration": EXPORT_ONE_SNAPSHOT_FOR_BACKUP,
        "CopyVmStorage": False,
        "CopyVmRuntimeInformation": False,
        "CreateVmExportSubdirectory": False,
        "SnapshotVirtualSystem": services.path_of(checkpoint_epr),
        "CaptureLiveState": CAPTURE_CRASH_CONSISTENT_STATE,
    }
    settings = CimInstance(EXPORT_SETTINGS_CLASS, values)
    JobFollower(services.client).call(
        services.management, "ExportSystemDefinition",
        [("ComputerSystem", vm_epr), ("ExportDirectory", directory),
         ("ExportSettingData", EmbeddedInstance(settings, _TYPES))],
        timeout=timeout, should_cancel=should_cancel,
    )
