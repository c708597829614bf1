"""SOAP faults from WinRM as typed exceptions (DSP0226 14; [MS-WSMV] 2.2.4.43; hyperv-wmi.md 1.11).

:func:`parse_fault` reads an ``s:Fault`` into a :class:`WsmanFault` (or the subclass
for its category) carrying the SOAP code/subcode, reason, ``w:FaultDetail``, the
Microsoft ``f:WSManFault`` code, machine and message, the provider fault, and the
WMI error object (``__ExtendedStatus`` or ``MSFT_WmiError``) where present, plus the
host, action and resource URI of the request that failed.
"""

from __future__ import annotations

import re
from typing import Dict, Type

from lxml import etree

from bareos_hyperv.wsman.cim import CimInstance, child_elements, parse_wsman_instance
from bareos_hyperv.wsman.errors import (
    AccessDeniedFault,
    EncodingLimitFault,
    InternalErrorFault,
    InvalidFilterFault,
    InvalidHeaderFault,
    InvalidParameterFault,
    InvalidSelectorsFault,
    NotFoundFault,
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
}

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


def _wmi_error(fault_el: etree._Element) -> WmiError | None:
    ext = fault_el.find(f".//{{{NS_WSMAN_FAULT}}}ExtendedError")
    if ext is None:
        return None
    obj_el = next(child_elements(ext), None)
    if obj_el is None:
        return None
    inst: CimInstance = parse_wsman_instance(obj_el)

    def text(*names: str) -> str | None:
        for name in names:
            value = inst.get(name)
            if isinstance(value, str) and value.strip():
                return _clean(value)
        return None

    status: int | None = None
    for name in ("StatusCode", "error_Code", "CIMStatusCode"):
        raw = inst.get(name)
        if isinstance(raw, str) and _int(raw.strip()) is not None:
            status = _int(raw.strip())
            break
    return WmiError(
        class_name=inst.class_name,
        description=text("Description", "Message", "error_WindowsErrorMessage"),
        operation=text("Operation", "error_WinMgmtOperation"),
        parameter_info=text("ParameterInfo"),
        provider_name=text("ProviderName", "error_WinMgmtProviderName", "OwningEntity"),
        status_code=status,
        message_id=text("MessageID"),
        properties={name: value for name, value in inst.items()},
    )


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
    cls = _BY_SUBCODE.get(name or "") or _BY_WSMAN_CODE.get(wsman_code or -1) or WsmanFault
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
        wmi_error=_wmi_error(fault_el),
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
    "SchemaValidationFault",
    "TimedOutFault",
    "WmiError",
    "WsmanFault",
    "find_fault",
    "parse_fault",
]
