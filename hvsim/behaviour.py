"""How one simulated node's WinRM answers where real Windows hosts are known to differ.

Every node of a world carries one :class:`WinrmBehaviour` (``world.node("HV01").winrm``).
Its defaults keep the shapes the simulator always had; a test sets a knob to make
the node answer the way another real host does.  Each knob lists its variants with
the evidence for them; a variant that no capture shows is marked as such, so that a
test relying on it knows it exercises the product's robustness rather than a
recorded Windows behaviour.

Sources (short names used below):

* ``winrb-v2``: ``tests/fixtures/shared/wsman-soap/winrb-soap_fault_v2.xml``, a Windows
  WinRM 2.0 fault with ``f:ProviderFault/f:ExtendedError/p:__ExtendedStatus``.
* ``pywinrm``: pywinrm 0.5.0, ``winrm/protocol.py`` (reads
  ``s:Detail/MSFT_WmiError/error_Code`` in the namespace
  ``http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError``) and its test
  ``winrm/tests/test_exceptions.py::test_wsman_fault_wmi_error_detail``: a
  ``w:InternalError`` whose ``s:Detail`` holds only ``p:MSFT_WmiError`` (CIMStatusCode 27,
  error_Code 0x803381A6, error_Type HRESULT); the docstring of ``WSManFaultError`` says
  this is where quota violations arrive.
* ``azure-migrate``: MicrosoftDocs/azure-docs issue #55006, a Hyper-V host answering
  "The WS-Management service cannot process the request. The CIM namespace
  root/virtualization/v2 is invalid" (WBEM_E_INVALID_NAMESPACE, 0x8004100E, seen through
  WinRM; the fault's XML is not shown).
* ``hyperv-wmi``: ``reference/hyperv-wmi.md`` §1.11 (subcodes; ``w:AccessDenied`` for
  authorisation failures) and §7.5 (all failover-cluster WMI needs local Administrators).
* ``hv-manager``: Hyper-V Manager's ``Microsoft.Virtualization.Client.Management``
  (``MSClusterResourceBaseView.WmiMemberNames.VMComputerSystemInstanceId = "VmID"``, read
  from ``PrivateProperties`` as an embedded ``CimInstance``), and Microsoft's
  "Virtual Machine Private Properties" page (spells the member ``VmId``; WMI names are
  case-insensitive, the cluster database spells it ``VmID``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How a node answers a request for a namespace it does not serve (root/MSCluster on a
# standalone host).
MISSING_NAMESPACE = {
    # a:DestinationUnreachable + 0x80338000 + ProviderFault text "invalid namespace": the
    # simulator's historical answer; WMI's invalid-namespace error reported as "not found"
    # (hyperv-wmi §1.11: DestinationUnreachable for a wrong namespace/class).  No capture.
    "destination_unreachable",
    # the same fault with the subcode in the WS-Management namespace (w:DestinationUnreachable)
    # and no provider fault, as a non-WMI plugin words it.  No capture: robustness only.
    "wsman_destination_unreachable",
    # w:InternalError whose f:WSManFault Code is the WMI HRESULT itself (0x8004100E), with the
    # text azure-migrate reports.  The XML shape is not captured.
    "invalid_namespace_code",
    # w:InternalError 0x80338102 with __ExtendedStatus.StatusCode = 0x8004100E in
    # f:ProviderFault/f:ExtendedError (the placement of winrb-v2).
    "invalid_namespace_extended",
    # w:InternalError whose s:Detail holds only MSFT_WmiError (CIMStatusCode 3
    # CIM_ERR_INVALID_NAMESPACE, error_Code 0x8004100E): the placement of pywinrm.
    "invalid_namespace_wmierror",
}

# How a node answers when the account may not use a namespace (``denied_namespaces``).
ACCESS_DENIED = {
    # w:AccessDenied with f:WSManFault Code 5 (ERROR_ACCESS_DENIED), "Access is denied." (hyperv-wmi §1.11)
    "wsman",
    # w:InternalError with MSFT_WmiError directly under s:Detail: CIMStatusCode 2
    # (CIM_ERR_ACCESS_DENIED), error_Code 0x80041003 (WBEM_E_ACCESS_DENIED); pywinrm placement.
    "wmierror",
}

# Where provider faults carry the WMI error object.
WMI_ERROR_PLACEMENT = {
    # __ExtendedStatus inside f:WSManFault/f:Message/f:ProviderFault/f:ExtendedError (winrb-v2)
    "extended",
    # MSFT_WmiError inside the same f:ExtendedError (WinRM with the MI-based WMI plugin; the
    # product's unit tests carry this shape, no capture)
    "extended_wmierror",
    # MSFT_WmiError directly under s:Detail, no f:WSManFault (pywinrm)
    "detail_wmierror",
    # __ExtendedStatus directly under s:Detail after a plain f:WSManFault.  No capture.
    "detail_extended_status",
}

# How instance properties holding an embedded object (MSCluster_Resource.PrivateProperties,
# declared ``MSCluster_Property``, an object, not a string) are rendered.
EMBEDDED_OBJECTS = {
    # escaped CIM-XML INSTANCE text, as WinRM renders embedded-instance *strings* (GetErrorEx)
    "cimxml",
    # a nested element whose children are the members (<p:PrivateProperties><p:VmID>...)
    "nested",
    # a nested element wrapping one element named after the class
    # (<p:PrivateProperties><p:MSCluster_Property><p:VmID>...)
    "nested_class",
    # the property rendered as xsi:nil although the object exists.  No host is known to do
    # this: failure injection, to prove the product says when it cannot read the VM's id.
    "nil",
}

_CHOICES = {
    "missing_namespace": MISSING_NAMESPACE,
    "access_denied": ACCESS_DENIED,
    "wmi_error_placement": WMI_ERROR_PLACEMENT,
    "embedded_objects": EMBEDDED_OBJECTS,
}


@dataclass
class WinrmBehaviour:
    """The knobs (see the module tables); assigning an unknown variant raises ValueError."""

    missing_namespace: str = "destination_unreachable"
    access_denied: str = "wsman"
    wmi_error_placement: str = "extended"
    embedded_objects: str = "cimxml"
    # namespaces (canonical spelling, e.g. "root/MSCluster") the account may not use on this node
    denied_namespaces: set[str] = field(default_factory=set)

    def __setattr__(self, name: str, value: Any) -> None:
        allowed = _CHOICES.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"hvsim: {name} must be one of {sorted(allowed)}, not {value!r}")
        super().__setattr__(name, value)

    def denies(self, namespace: str) -> bool:
        """Whether the account may not use ``namespace`` on this node (case-insensitive)."""
        low = namespace.replace("\\", "/").strip("/").lower()
        return any(d.replace("\\", "/").strip("/").lower() == low for d in self.denied_namespaces)


# ------------------------------------------------------------------------------------------------
# Checkpoints of one VM (``vm.checkpoints``): what a real host does when the guest cannot quiesce,
# and when the disks of a deleted checkpoint are merged.
#
# Sources:
#
# * ``snapshot-settings``: Microsoft's Msvm_VirtualSystemSnapshotSettingData page (ConsistencyLevel
#   0 Unknown, 1 Application Consistent, 2 Crash Consistent: what is *asked*), and
#   Msvm_VirtualSystemReferencePoint (ConsistencyLevel of the point: what was *achieved*;
#   hyperv-wmi §4.3 notes that the page swaps the two descriptions, the values are 1 and 2).
# * ``altaro``: Altaro VM Backup knowledge base, error RCTCONTROLLER_011 on Windows Server 2016+:
#   "The backup snapshot for this VM is not application consistent. The backup will proceed in
#   crash-consistent mode" - the backup job completes, with a warning, although VSS failed in the
#   guest.  Hyper-V Manager's "Create standard checkpoints if it's not possible to create a
#   production checkpoint" is the same fallback for production checkpoints.
# * ``os-win``: openstack os-win ``vmutils.remove_vm_snapshot`` returns when DestroySnapshot's job
#   ends; nothing there (nor in Hyper-V Manager's "Merge in progress" display) waits for the disks.
# * ``msvm-computersystem``: Msvm_ComputerSystem.OperationalStatus[1] 32772 "Merging Disks"
#   (Microsoft's class page; hyperv-wmi §2.1; eryph's MsvmComputerSystemOperationalStatus enum
#   also lists it), shown while an online merge runs after the checkpoint itself is gone.
# * ``workinghardinit``: "Remove lingering backup checkpoints" (Didier Van Hoye): after
#   Remove-VMSnapshot returns, "you can see the merging process in the GUI" - the merge outlives
#   the command.

# What CreateSnapshot with ConsistencyLevel 1 (application) does on a running VM whose guest
# cannot take part (vm.guest_vss False, or no SCSI controller).
VSS_FAILURE = {
    # the job ends in Exception: the simulator's historical answer; 2012 R2-style backups and
    # the recovery-checkpoint path of hosts that refuse to fall back.
    "fail",
    # the job completes with warnings (JobState 32768) and GetErrorEx returns a warning that the
    # checkpoint is crash-consistent; the reference point made from it has ConsistencyLevel 2
    # (altaro: the job goes on, the warning is reported).  Exact wording not captured.
    "degrade_warning",
    # the job completes (JobState 7) with no error at all; only the reference point's
    # ConsistencyLevel (2) tells.  No capture shows this; modelled so that the product proves
    # it reads the achieved level instead of assuming it.
    "degrade_silent",
}

# When the disks of a checkpoint that DestroySnapshot / ConvertToReferencePoint removed are merged.
MERGE = {
    # inside the method's job: the simulator's historical behaviour (an offline VM with a small
    # differencing disk comes close to it on a real host).
    "sync",
    # after the job: the checkpoint is gone when the job completes, but each .avhdx stays (the
    # VM keeps running on it, OperationalStatus shows 32772) until ``merge_seconds`` have passed
    # on the world's clock or ``merge_polls`` more looks at the VM were answered, whichever comes
    # first (os-win, msvm-computersystem, workinghardinit).  A checkpoint with a later checkpoint
    # on top of it is still merged inside the job (the simulator does not model re-parenting
    # under a running merge).
    "async",
}

# What CreateSnapshot does while a merge of the VM's disks is running.  No capture: Hyper-V
# serialises checkpoint operations of a VM, and whether a new one fails ("refuse", the worst case
# for a client) or waits for the merge inside its job ("wait") is not documented.
CREATE_WHILE_MERGING = {"refuse", "wait"}

_CHECKPOINT_CHOICES = {"vss_failure": VSS_FAILURE, "merge": MERGE, "create_while_merging": CREATE_WHILE_MERGING}


@dataclass
class CheckpointBehaviour:
    """Per-VM checkpoint knobs (see the tables above); an unknown variant raises ValueError."""

    vss_failure: str = "fail"
    merge: str = "sync"
    merge_seconds: float = 0.0  # async: the merge ends this long after the method's job ended ...
    merge_polls: int = 0  # ... or after this many looks at the VM (0: time only)
    create_while_merging: str = "refuse"

    def __setattr__(self, name: str, value: Any) -> None:
        allowed = _CHECKPOINT_CHOICES.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"hvsim: {name} must be one of {sorted(allowed)}, not {value!r}")
        super().__setattr__(name, value)
