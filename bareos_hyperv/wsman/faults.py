"""SOAP faults from WinRM as typed exceptions (DSP0226 14; [MS-WSMV] 2.2.4.43; hyperv-wmi.md 1.11).

:func:`parse_fault` reads an ``s:Fault`` into a :class:`WsmanFault` (or the subclass
for its category) carrying the SOAP code/subcode, reason, ``w:FaultDetail``, the
Microsoft ``f:WSManFault`` code, machine and message, the provider fault, and the
WMI error object (``__ExtendedStatus`` or ``MSFT_WmiError``) where present, plus the
host, action and resource URI of the request that failed.

The WMI error object is looked for wherever WinRM puts it: inside
``f:ProviderFault/f:ExtendedError`` (WinRM 2.0, ``winrb-soap_fault_v2.xml``) and directly
under ``s:Detail`` with no ``f:WSManFault`` at all (pywinrm 0.5.0 reads
``s:Detail/MSFT_WmiError/error_Code`` there, and its recorded fault carries nothing else).
A generic subcode (``w:InternalError``, or one we do not know) is refined by the codes the
fault carries, because WinRM wraps the same WMI condition in several ways: WMI's
invalid-namespace/class codes mean "not found", its access-denied codes "access
denied", WinRM's per-user quota codes their own category.
"""

from __future__ import annotations

import re
from typing import Dict, Type

from lxml import etree

from bareos_hyperv.wsman.cim import CimInstance, child_elements, localname, namespace_of, parse_wsman_instance
from bareos_hyperv.wsman.errors import (
    AccessDeniedFault,
    EncodingLimitFault,
    InternalErrorFault,
    InvalidFilterFault,
    InvalidHeaderFault,
    InvalidParameterFault,
    InvalidSelectorsFault,
    NotFoundFault,
    QuotaLimitFault,
    SchemaValidationFault,
    TimedOutFault,
    WmiError,
    WsmanFault,
)
from bareos_hyperv.wsman.namespaces import (
    NS_ADDRESSING,
    NS_ENUMERATION,
    NS_SOAP,
    NS_WSMAN,
    NS_WSMAN_FAULT,
    WSMAN_CODE_ACCESS_DENIED,
    WSMAN_CODE_NOT_FOUND,
    WSMAN_CODE_TIMED_OUT,
)

_BY_SUBCODE: Dict[str, Type[WsmanFault]] = {
    "DestinationUnreachable": NotFoundFault,
    "AccessDenied": AccessDeniedFault,
    "InvalidSelectors": InvalidSelectorsFault,
    "InvalidParameter": InvalidParameterFault,
    "TimedOut": TimedOutFault,
    "EncodingLimit": EncodingLimitFault,
    "CannotProcessFilter": InvalidFilterFault,
    "FilterDialectRequestedUnavailable": InvalidFilterFault,
    "SchemaValidationError": SchemaValidationFault,
    "InvalidMessageInformationHeader": InvalidHeaderFault,
    "InternalError": InternalErrorFault,
    "QuotaLimit": QuotaLimitFault,  # DSP0226 wsman:QuotaLimit; [MS-WSMV] 3.1.4.5.2.1
}

# Codes that say what a generic fault really is (WbemCli.h "WMI Error Constants"; wsmerror.h as
# PowerShell's CimChildJobBase.cs copies it, which sleeps and retries on exactly these quota codes).
_NO_SUCH_NAMESPACE_CODES = frozenset({
    0x8004100E,  # WBEM_E_INVALID_NAMESPACE
    0x80041010,  # WBEM_E_INVALID_CLASS
    0x80041011,  # WBEM_E_PROVIDER_NOT_FOUND
})
_ACCESS_DENIED_CODES = frozenset({
    0x80041003,  # WBEM_E_ACCESS_DENIED
    0x80070005,  # E_ACCESSDENIED
})
_QUOTA_CODES = frozenset({
    0x8033803F,  # ERROR_WSMAN_QUOTA_LIMIT
    0x803381A5, 0x803381A6, 0x803381A7, 0x803381A8,  # MAX_SHELLS, MAX_OPERATIONS, USER, SYSTEM
    0x803381AB,  # MAX_SHELLUSERS
    0x803381E4, 0x803381E5, 0x803381E6, 0x803381E7, 0x803381E8, 0x803381E9, 0x803381EA,  # the *_PPQ family
})
# DSP0200 CIM status codes of MSFT_WmiError.CIMStatusCode
_CIM_ACCESS_DENIED = 2
_CIM_INVALID_NAMESPACE = 3
_CIM_INVALID_CLASS = 5
_CIM_SERVER_LIMITS_EXCEEDED = 27

_BY_WSMAN_CODE: Dict[int, Type[WsmanFault]] = {
    WSMAN_CODE_NOT_FOUND: NotFoundFault,
    WSMAN_CODE_TIMED_OUT: TimedOutFault,
    WSMAN_CODE_ACCESS_DENIED: AccessDeniedFault,
}

_SPACES = re.compile(r"\s+")


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = _SPACES.sub(" ", text).strip()
    return cleaned or None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None  # type: ignore[arg-type]  # None excluded
    except ValueError:
        return None


def _own_text(element: etree._Element) -> str | None:
    """Text directly inside an element (not inside its child elements)."""
    parts = [element.text or ""] + [child.tail or "" for child in element]
    return _clean("".join(parts))


_WMI_ERROR_CLASSES = frozenset({"__extendedstatus", "msft_wmierror", "cim_error", "msvm_error"})
_HRESULT_IN_TEXT = re.compile(r"0x([0-9a-fA-F]{8})")


def _wmi_error_elements(detail: etree._Element) -> list[etree._Element]:
    """Every WMI error object in ``s:Detail``, whatever its placement."""
    found: list[etree._Element] = []
    for ext in detail.iter(f"{{{NS_WSMAN_FAULT}}}ExtendedError"):
        found.extend(child_elements(ext))
    for child in child_elements(detail):
        # directly under s:Detail: anything but the WS-Man parts is the WMI error object
        if namespace_of(child) not in (NS_WSMAN, NS_WSMAN_FAULT):
            found.append(child)
    for el in detail.iter():
        if isinstance(el.tag, str) and localname(el).lower() in _WMI_ERROR_CLASSES and el not in found:
            found.append(el)
    return found


def _wmi_error(fault_el: etree._Element) -> WmiError | None:
    """The WMI error object of a fault; several placements are merged, the first value of each field wins."""
    detail = fault_el.find(f"{{{NS_SOAP}}}Detail")
    if detail is None:
        return None
    instances: list[CimInstance] = [parse_wsman_instance(el) for el in _wmi_error_elements(detail)]
    if not instances:
        return None

    def text(*names: str) -> str | None:
        for inst in instances:
            for name in names:
                value = inst.get(name)
                if isinstance(value, str) and value.strip():
                    return _clean(value)
        return None

    def number(*names: str) -> int | None:
        for inst in instances:
            for name in names:
                raw = inst.get(name)
                if isinstance(raw, str) and _int(raw.strip()) is not None:
                    return _int(raw.strip())
        return None

    message_id = text("MessageID")
    status = number("StatusCode", "error_Code")
    if status is None and message_id:
        # "HRESULT 0x803381a6": the code when error_Code is missing
        match = _HRESULT_IN_TEXT.search(message_id)
        status = int(match.group(1), 16) if match else None
    properties: Dict[str, object] = {}
    for inst in reversed(instances):
        properties.update(inst.items())
    return WmiError(
        class_name=instances[0].class_name,
        description=text("Description", "Message", "error_WindowsErrorMessage"),
        operation=text("Operation", "error_WinMgmtOperation"),
        parameter_info=text("ParameterInfo", "ErrorSource"),
        provider_name=text("ProviderName", "error_WinMgmtProviderName", "OwningEntity"),
        status_code=status,
        message_id=message_id,
        properties=properties,
        cim_status_code=number("CIMStatusCode"),
        error_type=text("error_Type"),
    )


def _refined(cls: Type[WsmanFault], wsman_code: int | None, wmi_error: WmiError | None) -> Type[WsmanFault]:
    """The category a generic fault (``w:InternalError``, unknown subcode) really belongs to."""
    if cls not in (WsmanFault, InternalErrorFault):
        return cls
    codes = {c & 0xFFFFFFFF for c in (wsman_code, wmi_error.status_code if wmi_error else None) if c is not None}
    cim = wmi_error.cim_status_code if wmi_error else None
    if codes & _QUOTA_CODES or cim == _CIM_SERVER_LIMITS_EXCEEDED:
        return QuotaLimitFault
    if codes & _ACCESS_DENIED_CODES or cim == _CIM_ACCESS_DENIED:
        return AccessDeniedFault
    if codes & _NO_SUCH_NAMESPACE_CODES or cim in (_CIM_INVALID_NAMESPACE, _CIM_INVALID_CLASS):
        return NotFoundFault
    return cls


def find_fault(envelope: etree._Element) -> etree._Element | None:
    """The ``s:Fault`` element of a response envelope, or None."""
    return envelope.find(f"{{{NS_SOAP}}}Body/{{{NS_SOAP}}}Fault")


def parse_fault(
    fault_el: etree._Element,
    *,
    host: str,
    action: str,
    resource_uri: str | None,
    http_status: int | None = None,
) -> WsmanFault:
    """Build the typed exception for an ``s:Fault`` element (see module docstring)."""
    code = _clean(fault_el.findtext(f"{{{NS_SOAP}}}Code/{{{NS_SOAP}}}Value"))
    subcode = _clean(fault_el.findtext(f"{{{NS_SOAP}}}Code/{{{NS_SOAP}}}Subcode/{{{NS_SOAP}}}Value"))
    reason = _clean(fault_el.findtext(f"{{{NS_SOAP}}}Reason/{{{NS_SOAP}}}Text"))
    detail = fault_el.find(f"{{{NS_SOAP}}}Detail")
    fault_detail = wsman_code = machine = wsman_message = None
    provider = provider_path = provider_message = None
    if detail is not None:
        fault_detail = _clean(detail.findtext(f"{{{NS_WSMAN}}}FaultDetail"))
        outer = detail.find(f"{{{NS_WSMAN_FAULT}}}WSManFault")
        if outer is not None:
            wsman_code = _int(outer.get("Code"))
            machine = _clean(outer.get("Machine"))
            msg_el = outer.find(f"{{{NS_WSMAN_FAULT}}}Message")
            if msg_el is not None:
                wsman_message = _own_text(msg_el)
                pf = msg_el.find(f"{{{NS_WSMAN_FAULT}}}ProviderFault")
                if pf is not None:
                    provider = _clean(pf.get("provider"))
                    provider_path = _clean(pf.get("path"))
                    inner_msg = pf.find(f"{{{NS_WSMAN_FAULT}}}WSManFault/{{{NS_WSMAN_FAULT}}}Message")
                    provider_message = _own_text(inner_msg) if inner_msg is not None else _own_text(pf)
    # Subcode prefixes are resolved through the fault element's namespace map when possible,
    # so that a server using other prefixes still lands in the right category.
    name = subcode.rsplit(":", 1)[-1] if subcode else None
    if subcode and ":" in subcode:
        prefix = subcode.split(":", 1)[0]
        ns = fault_el.nsmap.get(prefix)
        if ns not in (None, NS_WSMAN, NS_ADDRESSING, NS_ENUMERATION, NS_SOAP):
            name = None
    wmi_error = _wmi_error(fault_el)
    cls = _BY_SUBCODE.get(name or "") or _BY_WSMAN_CODE.get(wsman_code or -1) or WsmanFault
    cls = _refined(cls, wsman_code, wmi_error)
    return cls(
        host=host,
        action=action,
        resource_uri=resource_uri,
        http_status=http_status,
        code=code,
        subcode=subcode,
        reason=reason,
        fault_detail=fault_detail,
        wsman_code=wsman_code,
        machine=machine,
        wsman_message=wsman_message,
        provider=provider,
        provider_path=provider_path,
        provider_message=provider_message,
        wmi_error=wmi_error,
    )


def describe_fault_class(fault: WsmanFault) -> str:
    """Short category name for logs (``NotFound``, ``InvalidSelectors``...)."""
    return type(fault).__name__.replace("Fault", "") or "Fault"


__all__ = [
    "AccessDeniedFault",
    "EncodingLimitFault",
    "InternalErrorFault",
    "InvalidFilterFault",
    "InvalidHeaderFault",
    "InvalidParameterFault",
    "InvalidSelectorsFault",
    "NotFoundFault",
    "QuotaLimitFault",
    "SchemaValidationFault",
    "TimedOutFault",
    "WmiError",
    "WsmanFault",
    "find_fault",
    "parse_fault",
]
