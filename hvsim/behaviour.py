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
