"""Configuration-only export of a checkpoint: the VM's native files (vmcx/vmrs/vmgs) without disks.

``ExportSystemDefinition`` with ``CopySnapshotConfiguration = 3`` (ExportOneSnapshotForBackup,
keeps the VM's ID), ``CopyVmStorage = false`` and ``CopyVmRuntimeInformation = false``
writes ``<dir>\\Virtual Machines\\<GUID>.vmcx`` (and friends) on the host; the data
plane then pulls them over SMB (``hyperv-wmi.md`` §3).  The disk chain stays as it was.
"""

from __future__ import annotations

from typing import Callable, Optional

from bareos_hyperv.hyperv.jobs import JobFollower
from bareos_hyperv.hyperv.schema import to_typed_cimxml
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, EndpointReference

EXPORT_SETTINGS_CLASS = "Msvm_VirtualSystemExportSettingData"
# The association from a VM to its export settings template (hyperv-wmi.md 2.x, 3.1).
EXPORT_TEMPLATE_ASSOCIATION = "Msvm_SystemExportSettingData"
# CopySnapshotConfiguration: ExportOneSnapshotForBackup (2016+), the exported definition keeps the VM's ID.
EXPORT_ONE_SNAPSHOT_FOR_BACKUP = 3
# CaptureLiveState: CaptureCrashConsistentState; the checkpoint already holds the consistent state.
CAPTURE_CRASH_CONSISTENT_STATE = 0
# BackupIntent: 0 BackupIntentPreserveChain (the backup application keeps a chain of its own
# increments), 1 BackupIntentMerge.  This plugin keeps a full plus deltas in Bareos and restores
# chains itself, so the chain is "preserved"; with CopyVmStorage off Hyper-V writes no
# differencing files either way, but the value is set (and recorded in the manifest) rather than
# left to a template default that could change between Windows versions.
BACKUP_INTENT_PRESERVE_CHAIN = 0

__all__ = ["BACKUP_INTENT_PRESERVE_CHAIN", "export_configuration", "export_template"]


def export_template(services: HostServices, vm_epr: EndpointReference) -> Optional[CimInstance]:
    """The host's own export settings for the VM (``Msvm_SystemExportSettingData``), or None.

    Microsoft's backup sample starts from this instance and changes only what it needs, so every
    property the host version knows keeps the host's default.
    """
    found = services.client.associators(vm_epr, assoc_class=EXPORT_TEMPLATE_ASSOCIATION,
                                        result_class=EXPORT_SETTINGS_CLASS)
    return found[0] if found else None


def export_configuration(services: HostServices, vm_epr: EndpointReference, checkpoint_epr: EndpointReference,
                         directory: str, *, timeout: float = 1800.0,
                         should_cancel: Optional[Callable[[], bool]] = None) -> int:
    """Export the checkpoint's configuration (no disks, no runtime state) into ``directory`` on the host.

    Returns the ``BackupIntent`` the export was made with.
    """
    template = export_template(services, vm_epr)
    settings = CimInstance(EXPORT_SETTINGS_CLASS, {})
    if template is not None:
        # Unset (NULL) properties stay unset: the host fills its defaults, as when the sample
        # passes the template back.
        for name, value in template.items():
            if value is not None:
                settings.set(name, value, template.type_of(name))
    settings["CopySnapshotConfiguration"] = EXPORT_ONE_SNAPSHOT_FOR_BACKUP
    settings["CopyVmStorage"] = False
    settings["CopyVmRuntimeInformation"] = False
    settings["CreateVmExportSubdirectory"] = False
    # The object path names the host as WMI does (see HostServices.computer_name), never the
    # address or alias the job connected to.
    settings["SnapshotVirtualSystem"] = services.path_of(checkpoint_epr)
    settings["CaptureLiveState"] = CAPTURE_CRASH_CONSISTENT_STATE
    settings["BackupIntent"] = BACKUP_INTENT_PRESERVE_CHAIN
    JobFollower(services.client).call(
        services.management, "ExportSystemDefinition",
        [("ComputerSystem", vm_epr), ("ExportDirectory", directory),
         ("ExportSettingData", EmbeddedInstance(to_typed_cimxml(settings)))],
        timeout=timeout, should_cancel=should_cancel,
    )
    return BACKUP_INTENT_PRESERVE_CHAIN
