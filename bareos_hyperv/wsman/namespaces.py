"""WS-Management vocabulary: XML namespaces, action URIs, dialects, resource URIs.

One table per vocabulary so that nothing else in the package spells a URI.
Sources: DSP0226 (WS-Management 1.x), DSP0227 (WS-CIM mapping), [MS-WSMV] 2.2.1
(namespace prefixes), ``reference/hyperv-wmi.md`` sections 1.2-1.4.
"""

from __future__ import annotations

from typing import Dict

# [MS-WSMV] 2.2.1 and hyperv-wmi.md 1.3.  Prefixes are conventional only; parsing
# always goes by namespace URI, never by prefix.
NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_ENUMERATION = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_CIMBINDING = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"
NS_MS_WSMAN = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
NS_WSMAN_FAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_CIM_COMMON = "http://schemas.dmtf.org/wbem/wscim/1/common"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_IDENTITY = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
NS_XML = "http://www.w3.org/XML/1998/namespace"

NAMESPACES: Dict[str, str] = {
    "s": NS_SOAP,
    "a": NS_ADDRESSING,
    "n": NS_ENUMERATION,
    "x": NS_TRANSFER,
    "w": NS_WSMAN,
    "b": NS_CIMBINDING,
    "p": NS_MS_WSMAN,
    "f": NS_WSMAN_FAULT,
    "cim": NS_CIM_COMMON,
    "xsi": NS_XSI,
    "wsmid": NS_IDENTITY,
}

ADDRESS_ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"


class Action:
    """WS-Management action URIs (DSP0226 annex; hyperv-wmi.md 1.3)."""

    GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
    ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
    PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
    RELEASE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release"
    # Identify has no action header ([DSP0226] 11); the name only labels log lines and errors.
    IDENTIFY = "Identify"


class Dialect:
    """Enumeration filter dialects (hyperv-wmi.md 1.3)."""

    WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
    # DSP0227 spelling; winrm.vbs writes "associationFilter" with a capital A, WinRM takes both.
    ASSOCIATION = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"
    SELECTOR = "http://schemas.dmtf.org/wbem/wsman/1/wsman/SelectorFilter"


ENUMERATION_MODE_OBJECT_AND_EPR = "EnumerateObjectAndEPR"

# Resource URIs of WMI classes reached through WinRM's WMI plugin: the namespace
# is part of the path (hyperv-wmi.md 1.2), not a __cimnamespace selector.
WMI_RESOURCE_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/wmi/"

# WSManFault/@Code values with a known meaning (hyperv-wmi.md 1.11).
WSMAN_CODE_NOT_FOUND = 2150858752  # 0x80338000: object not found
WSMAN_CODE_CANNOT_CONNECT = 2150858770
WSMAN_CODE_TIMED_OUT = 2150858793
WSMAN_CODE_ACCESS_DENIED = 5


def normalize_namespace(namespace: str) -> str:
    """Return a WMI namespace in URI form: ``root\\virtualization\\v2`` -> ``root/virtualization/v2``."""
    return namespace.replace("\\", "/").strip("/")


def resource_uri(namespace: str, class_name: str) -> str:
    """Resource URI of one WMI class, e.g. ``.../wmi/root/virtualization/v2/Msvm_ComputerSystem``."""
    return f"{WMI_RESOURCE_PREFIX}{normalize_namespace(namespace)}/{class_name}"


def wildcard_uri(namespace: str) -> str:
    """The ``/*`` resource URI WinRM requires for WQL and association enumerations (DSP0227 6.2)."""
    return f"{WMI_RESOURCE_PREFIX}{normalize_namespace(namespace)}/*"


def split_resource_uri(uri: str) -> tuple[str, str]:
    """Split a resource URI into (namespace, class name).

    For a WMI URI the namespace is the WMI namespace (``root/virtualization/v2``); for
    any other URI it is everything before the last ``/``.  The class name of a
    wildcard URI is ``*``.
    """
    head, _, tail = uri.rpartition("/")
    if uri.lower().startswith(WMI_RESOURCE_PREFIX.lower()):
        return head[len(WMI_RESOURCE_PREFIX) :], tail
    return head, tail
