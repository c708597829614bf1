"""WS-Management dispatcher: answers SOAP envelopes the way WinRM's WMI plugin does.

:class:`Dispatcher` turns one request body into one response (HTTP status + body) on
top of a :class:`hvsim.cim.Repository`: Identify, transfer Get, Enumerate / Pull /
Release (plain, WQL, ``ASSOCIATORS OF`` / ``REFERENCES OF``, association filter,
selector filter; optimized enumeration; EPR modes) and Invoke of CIM methods with
references and embedded CIM-XML instances.  The HTTP server and authentication are
elsewhere; this module only sees bytes and a context with ``.username``.

Fault shapes follow the recorded Windows faults in ``tests/fixtures/shared/wsman-soap``:
the WS-Addressing headers, ``s:Code``/``s:Subcode``, ``s:Reason``, optional
``w:FaultDetail``, ``f:WSManFault`` with ``Code`` and ``Machine``, and for errors that
come from WMI an ``f:ProviderFault`` (``WsmWmiPl.dll``) with a nested ``f:WSManFault``
and an optional ``f:ExtendedError/p:__ExtendedStatus`` (winrb-soap_fault_v2.xml).
Error codes are the ``ERROR_WSMAN_*`` values of Windows' ``wsmerror.h``; where the
subcode Windows uses for a case was not recorded, the choice is noted at the code.

Choices not backed by a recorded Windows response (verify on a lab host):

* unknown class in the resource URI: ``a:DestinationUnreachable`` with 0x80338000 (WMI's
  invalid-class error surfaces as "not found"); an unknown *namespace* is answered as the
  node's ``winrm.missing_namespace`` says (:mod:`hvsim.behaviour`: real hosts differ);
* where a provider fault carries its WMI error object (``f:ExtendedError`` or directly
  under ``s:Detail``) and how embedded-object properties are rendered are per-node
  choices too (``winrm.wmi_error_placement``, ``winrm.embedded_objects``);
* WQL filter sent to a class URI: ``w:InternalError`` with
  ERROR_WSMAN_INVALID_URI_WMI_ENUM_WQL (0x803380FB);
* Get/Invoke without selectors on a keyed class: ``w:InvalidSelectors`` with
  ERROR_WSMAN_INVALID_URI_WMI_SINGLETON (0x803380FA);
* unknown method: ``a:ActionNotSupported``; unknown in-parameter: ``w:InvalidParameter``
  (detail InvalidName); unparsable embedded instance, an embedded instance sent as a
  WS-Man element tree, or a REF parameter sent as a WMI object-path string instead of an
  EPR: ``w:SchemaValidationError`` (hyperv-wmi.md §1.10 and traps 2-3: Windows takes only
  CIM-XML text and EPRs there; the element-tree refusal was reported for another client,
  the object-path one is inferred from the method schema typing REFs as EPRs);
* request ``w:MaxEnvelopeSize`` above the server's: ``w:EncodingLimit`` (0x80338047);
  response too big: ``w:EncodingLimit`` (0x80338048); request body above the server's
  MaxEnvelopeSizekb: HTTP 413 with no body (as clients report from Windows);
* a missing ``a:Action``/``a:MessageID``: ``a:MessageInformationHeaderRequired``;
  ``a:To`` and ``a:ReplyTo`` are not required.

``WSMAN_FAULT`` rules fire with the method name as target for Invoke and with the
operation name (``Identify``, ``Get``, ``Enumerate``, ``Pull``, ``Release``) otherwise.
Association queries without an association class need the optional repository method
``class_names(namespace)``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Sequence, Tuple

from lxml import etree

from hvsim import cimxml
from hvsim.behaviour import WinrmBehaviour
from hvsim.cim import (
    WMI_URI_PREFIX,
    CimError,
    CimInstance,
    CimInterval,
    CimRef,
    ClassDef,
    MethodDef,
    PropDef,
    Repository,
)
from hvsim.faults import QUOTA_LIMIT, WSMAN_FAULT, FaultPlan, FaultRule
from hvsim.requestlog import OUTCOME_OK, RequestLog, RequestRecord
from hvsim.rights import AccountRights
from hvsim.wql import (
    AssociatorsQuery,
    ReferencesQuery,
    SelectQuery,
    WqlError,
    check_properties,
    evaluate,
    parse_object_path,
    parse_wql,
    project,
)

log = logging.getLogger(__name__)

# --- XML namespaces (hyperv-wmi.md 1.3) -------------------------------------------------
NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_S11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_E = "http://schemas.xmlsoap.org/ws/2004/08/eventing"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_P = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
NS_B = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"
NS_F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_WSMID = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"

# Prefixes Windows declares on every response envelope (fixtures); fault subcode QNames
# (``w:InvalidSelectors``, ``n:CannotProcessFilter``) resolve against them.
ENVELOPE_NSMAP = {"s": NS_S, "a": NS_A, "x": NS_X, "e": NS_E, "n": NS_N, "w": NS_W, "p": NS_P}

ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"

ACTION_GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
ACTION_PUT = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put"
ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
ACTION_PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
ACTION_RELEASE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release"

FAULT_ACTION_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
FAULT_ACTION_ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"
FAULT_ACTION_ENUMERATION = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/fault"
FAULT_DETAIL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/"

DIALECT_WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
DIALECT_ASSOCIATION = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"
DIALECT_SELECTOR = "http://schemas.dmtf.org/wbem/wsman/1/wsman/SelectorFilter"

PROTOCOL_VERSION = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
PRODUCT_VENDOR = "Microsoft Corporation"
DEFAULT_PRODUCT_VERSION = "OS: 10.0.17763 SP: 0.0 Stack: 3.0"  # Windows Server 2019

WMI_PROVIDER_NAME = "WMI Provider"
WMI_PROVIDER_PATH = "%systemroot%\\system32\\WsmWmiPl.dll"

MIN_ENVELOPE_SIZE = 8192  # bytes; smaller w:MaxEnvelopeSize values are refused

# --- ERROR_WSMAN_* codes (wsmerror.h), sent as f:WSManFault/@Code ------------------------
ERROR_ACCESS_DENIED = 5
ERROR_WSMAN_RESOURCE_NOT_FOUND = 0x80338000  # 2150858752
ERROR_WSMAN_INVALID_MESSAGE_INFORMATION_HEADER = 0x8033800F
ERROR_WSMAN_MESSAGE_INFORMATION_HEADER_REQUIRED = 0x80338011
ERROR_WSMAN_ACTION_NOT_SUPPORTED = 0x80338013
ERROR_WSMAN_SOAP_VERSION_MISMATCH = 0x8033800D
ERROR_WSMAN_FILTER_DIALECT_REQUESTED_UNAVAILABLE = 0x80338019
ERROR_WSMAN_CANNOT_PROCESS_FILTER = 0x8033801A  # 2150858778 (winrb fixture)
ERROR_WSMAN_INVALID_ENUMERATION_CONTEXT = 0x8033801B
ERROR_WSMAN_OPERATION_TIMEDOUT = 0x80338029
ERROR_WSMAN_INVALID_PARAMETER = 0x8033803A
ERROR_WSMAN_INVALID_RESOURCE_URI = 0x8033803B
ERROR_WSMAN_SCHEMA_VALIDATION_ERROR = 0x80338041
ERROR_WSMAN_INVALID_XML = 0x80338043
ERROR_WSMAN_MAX_ENVELOPE_SIZE = 0x80338047  # request's MaxEnvelopeSize above the server's
ERROR_WSMAN_MAX_ENVELOPE_SIZE_EXCEEDED = 0x80338048  # response larger than MaxEnvelopeSize
ERROR_WSMAN_INVALID_PARAMETER_NAME = 0x80338055
ERROR_WSMAN_INSUFFICIENT_SELECTORS = 0x8033805A
ERROR_WSMAN_UNEXPECTED_SELECTORS = 0x8033805B  # 2150858843 (pypsrp fixtures)
ERROR_WSMAN_MIN_ENVELOPE_SIZE = 0x8033807E
ERROR_WSMAN_ENUMERATION_MODE_UNSUPPORTED = 0x80338086
ERROR_WSMAN_INVALID_URI_WMI_SINGLETON = 0x803380FA  # 2150859002
ERROR_WSMAN_INVALID_URI_WMI_ENUM_WQL = 0x803380FB
ERROR_WSMAN_WMI_PROVIDER_NOT_CAPABLE = 0x80338102  # 2150859010
ERROR_WSMAN_WMI_INVALID_VALUE = 0x80338103
# Per-user quotas (wsmerror.h, as copied into PowerShell's CimChildJobBase.cs, which sleeps and
# retries on them; ansible's winrm plugin recreates its shell on 0x803381A6, ansible/ansible#83656).
ERROR_WSMAN_QUOTA_MAX_SHELLS = 0x803381A5  # 2150859173 (hashicorp/vagrant#7489)
ERROR_WSMAN_QUOTA_MAX_OPERATIONS = 0x803381A6  # 2150859174 (pywinrm's MSFT_WmiError test)
# WMI's own HRESULTs (WbemCli.h, "WMI Error Constants")
WBEM_E_ACCESS_DENIED = 0x80041003
WBEM_E_INVALID_NAMESPACE = 0x8004100E
# CIM status codes (DSP0200) WinRM puts in MSFT_WmiError.CIMStatusCode
CIM_STATUS_OF_HRESULT: Dict[int, int] = {
    0x80041002: 6,  # WBEM_E_NOT_FOUND -> CIM_ERR_NOT_FOUND
    WBEM_E_ACCESS_DENIED: 2,  # CIM_ERR_ACCESS_DENIED
    0x80041008: 4,  # WBEM_E_INVALID_PARAMETER -> CIM_ERR_INVALID_PARAMETER
    0x8004100C: 7,  # WBEM_E_NOT_SUPPORTED -> CIM_ERR_NOT_SUPPORTED
    WBEM_E_INVALID_NAMESPACE: 3,  # CIM_ERR_INVALID_NAMESPACE
    0x80041010: 5,  # WBEM_E_INVALID_CLASS -> CIM_ERR_INVALID_CLASS
    ERROR_WSMAN_QUOTA_MAX_SHELLS: 27,  # CIM_ERR_SERVER_LIMITS_EXCEEDED (pywinrm's recorded fault)
    ERROR_WSMAN_QUOTA_MAX_OPERATIONS: 27,
}
# Where WinRM v2+ puts MSFT_WmiError directly under s:Detail (pywinrm 0.5.0 protocol.py).
MSFT_WMIERROR_URI = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"

# Default f:WSManFault/@Code per subcode for faults the repository raises without one.
DEFAULT_CODES: Dict[str, int] = {
    "a:DestinationUnreachable": ERROR_WSMAN_RESOURCE_NOT_FOUND,
    "w:InvalidSelectors": ERROR_WSMAN_UNEXPECTED_SELECTORS,
    "w:InvalidParameter": ERROR_WSMAN_INVALID_PARAMETER,
    "w:SchemaValidationError": ERROR_WSMAN_SCHEMA_VALIDATION_ERROR,
    "w:AccessDenied": ERROR_ACCESS_DENIED,
    "w:TimedOut": ERROR_WSMAN_OPERATION_TIMEDOUT,
    "w:EncodingLimit": ERROR_WSMAN_MAX_ENVELOPE_SIZE_EXCEEDED,
    "w:InternalError": ERROR_WSMAN_WMI_PROVIDER_NOT_CAPABLE,
    "n:CannotProcessFilter": ERROR_WSMAN_CANNOT_PROCESS_FILTER,
    "n:InvalidEnumerationContext": ERROR_WSMAN_INVALID_ENUMERATION_CONTEXT,
    "a:ActionNotSupported": ERROR_WSMAN_ACTION_NOT_SUPPORTED,
}
RECEIVER_SUBCODES = frozenset(
    {"w:InternalError", "w:TimedOut", "n:InvalidEnumerationContext", "a:EndpointUnavailable"}
)

# Reason texts as Windows words them (wsmerror.h message texts, trailing space included).
TEXT_NOT_FOUND = (
    "The WS-Management service cannot process the request. The service cannot find the resource "
    "identified by the resource URI and selectors. "
)
TEXT_INVALID_SELECTORS = (
    "The WS-Management service cannot process the request because the request contained invalid "
    "selectors for the resource. "
)
TEXT_INSUFFICIENT_SELECTORS = (
    "The WS-Management service cannot process the request because the request did not contain all "
    "required selectors. "
)
TEXT_CANNOT_PROCESS_FILTER = (
    "The data source could not process the filter. The filter might be missing or it might be "
    "invalid. Change the filter and try the request again.  "
)
TEXT_CLASS_NOT_FOUND = "The specified class does not exist in the given namespace. "
TEXT_INVALID_CONTEXT = (
    "The WS-Enumeration context in the enumeration is not valid. Enumeration may have been completed "
    "or canceled. You cannot use this enumeration context anymore. Start a new enumeration. "
)
TEXT_ENVELOPE_EXCEEDED = (
    "The response that the WS-Management service computed exceeds the maximum envelope size in the "
    "request. "
)
TEXT_INVALID_URI = (
    "The WS-Management service cannot process the request. The resource URI is missing or it has an "
    "incorrect format. Check the documentation or use the following command for information on how "
    "to construct a resource URI: \"winrm help uris\". "
)
TEXT_HEADER_REQUIRED = (
    "The WS-Management service cannot process the request. The request does not have all the "
    "expected SOAP headers. "
)
TEXT_INVALID_HEADER = (
    "The WS-Management service cannot process the request. The request contains one or more invalid "
    "SOAP headers. "
)
TEXT_ACTION_NOT_SUPPORTED = "The WS-Management service does not support the action specified in the request. "
TEXT_INVALID_PARAMETER = (
    "The WS-Management service cannot process the request because a parameter for the operation is "
    "not valid. "
)
TEXT_SCHEMA_VALIDATION = (
    "The SOAP XML in the message does not match the corresponding XML schema definition. Change the XML "
    "and retry. "
)
# Quota texts as Windows words them (masterzen/winrm#129; hashicorp/vagrant#7489).
TEXT_QUOTA_OPERATIONS = (
    "The WS-Management service cannot process the request. This user is allowed a maximum number of 1500 "
    "concurrent operations, which has been exceeded. Close existing operations for this user, or raise the "
    "quota for this user. "
)
TEXT_QUOTA_SHELLS = (
    "The WS-Management service cannot process the request. This user is allowed a maximum number of 5 "
    "concurrent shells, which has been exceeded. Close existing shells or raise the quota for this user. "
)
TEXT_INTERNAL = (
    "The WS-Management service cannot process the request. The WMI service reported that the WMI "
    "provider could not perform the requested operation. "
)


class WsmanFault(Exception):
    """A SOAP fault to send back; built by the dispatcher, or from a :class:`CimError`.

    ``message`` is the ``f:Message`` text (defaults to ``reason``).  ``provider``
    wraps it in an ``f:ProviderFault`` of the WMI plugin, with ``wmi_status`` as the WMI
    error object (``__ExtendedStatus`` or ``MSFT_WmiError``) placed where ``placement``
    says (one of :data:`hvsim.behaviour.WMI_ERROR_PLACEMENT`; None: the node's choice).
    """

    def __init__(
        self,
        subcode: str,
        reason: str,
        *,
        wsman_code: int | None = None,
        detail: str | None = None,
        message: str | None = None,
        provider: bool = False,
        wmi_status: Mapping[str, Any] | None = None,
        code: str | None = None,
        http_status: int = 500,
        placement: str | None = None,
    ) -> None:
        super().__init__(f"{subcode}: {reason}")
        self.placement = placement
        self.subcode = subcode
        self.reason = reason
        self.wsman_code = wsman_code if wsman_code is not None else DEFAULT_CODES.get(
            subcode, ERROR_WSMAN_WMI_PROVIDER_NOT_CAPABLE)
        self.detail = detail
        self.message = message if message is not None else reason
        self.provider = provider
        self.wmi_status = dict(wmi_status) if wmi_status else None
        self.code = code or ("s:Receiver" if subcode in RECEIVER_SUBCODES else "s:Sender")
        self.http_status = http_status

    @property
    def action(self) -> str:
        """The ``a:Action`` of the fault message, by the subcode's specification."""
        if self.subcode.startswith("a:"):
            return FAULT_ACTION_ADDRESSING
        if self.subcode.startswith("n:"):
            return FAULT_ACTION_ENUMERATION
        return FAULT_ACTION_WSMAN


def fault_from_cim_error(err: CimError, operation: str) -> WsmanFault:
    """The SOAP fault Windows would send for a WMI provider error."""
    subcode = err.subcode
    if subcode.lower() == "w:cannotprocessfilter":
        subcode = "n:CannotProcessFilter"  # Windows sends it in the WS-Enumeration namespace
    status = dict(err.wmi_status) if err.wmi_status else None
    if status is not None:
        status.setdefault("Operation", _WMI_OPERATION.get(operation, "ExecMethod"))
    return WsmanFault(
        subcode,
        err.reason,
        wsman_code=err.wsman_code,
        detail=err.detail,
        provider=True,
        wmi_status=status,
        http_status=err.http_status,
    )


_WMI_OPERATION = {"Get": "GetObject", "Enumerate": "ExecQuery", "Pull": "ExecQuery", "Invoke": "ExecMethod"}


# --- helpers ------------------------------------------------------------------------------


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def _local(el: Any) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _elements(el: Any) -> List[Any]:
    return [c for c in el if isinstance(c.tag, str)]


def _find(el: Any, ns: str, local: str) -> Any:
    for c in el:
        if isinstance(c.tag, str) and c.tag == _q(ns, local):
            return c
    return None


def _find_ci(el: Any, local: str) -> Any:
    """First child with that local name in any namespace (case-insensitive)."""
    low = local.lower()
    for c in el:
        if isinstance(c.tag, str) and _local(c).lower() == low:
            return c
    return None


def _text(el: Any) -> str | None:
    if el is None:
        return None
    return (el.text or "").strip()


def _is_nil(el: Any) -> bool:
    return (el.get(_q(NS_XSI, "nil")) or "").strip().lower() in ("true", "1")


_DURATION_RE = re.compile(
    r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?\Z"
)


def parse_duration(text: str) -> float:
    """Seconds in an xs:duration (``PT60S``, ``P1DT2H``); ValueError when malformed or negative."""
    s = text.strip()
    m = _DURATION_RE.match(s)
    if not m or s in ("P", "PT") or s.endswith("T"):
        raise ValueError(text)
    y, mo, d, h, mi, sec = m.groups()
    return (
        int(y or 0) * 365 * 86400 + int(mo or 0) * 30 * 86400 + int(d or 0) * 86400
        + int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)
    )


def format_duration(seconds: float) -> str:
    """xs:duration text of an interval, as WinRM writes ``cim:Interval`` (``P1DT2H3M4.5S``)."""
    total_us = round(seconds * 1_000_000)
    secs, us = divmod(total_us, 1_000_000)
    days, rem = divmod(secs, 86400)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    frac = f"{ss}.{us:06d}".rstrip("0").rstrip(".") if us else str(ss)
    return f"P{days}DT{hh}H{mm}M{frac}S"


def format_xs_datetime(value: _dt.datetime) -> str:
    """xs:dateTime as WinRM writes ``cim:Datetime`` (``Z`` for UTC, else ``+hh:mm``)."""
    v = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    base = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        base += f".{v.microsecond:06d}"
    off = v.utcoffset() or _dt.timedelta(0)
    minutes = int(off.total_seconds() // 60)
    if minutes == 0:
        return base + "Z"
    sign = "+" if minutes > 0 else "-"
    return f"{base}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_XS_DT_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?\Z"
)


def parse_xs_datetime(text: str) -> _dt.datetime:
    """Parse xs:dateTime (up to 7 fractional digits, as Windows writes); ValueError if malformed."""
    m = _XS_DT_RE.match(text.strip())
    if not m:
        raise ValueError(text)
    y, mo, d, hh, mi, ss = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "0")[:6].ljust(6, "0")
    tz = m.group(8)
    tzinfo = _dt.timezone.utc
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        tzinfo = _dt.timezone(sign * _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    return _dt.datetime(y, mo, d, hh, mi, ss, int(frac), tzinfo=tzinfo)


INT_TYPES = cimxml.INT_TYPES
_INT_RANGES = {
    "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
    "sint8": (-(2**7), 2**7 - 1), "sint16": (-(2**15), 2**15 - 1), "sint32": (-(2**31), 2**31 - 1),
    "sint64": (-(2**63), 2**63 - 1),
}


@dataclass
class _Target:
    """What a request addresses, for the request log."""

    operation: str = "Unknown"
    namespace: str | None = None
    class_name: str | None = None
    method: str | None = None
    message_id: str | None = None
    items: int = 0
    filter_text: str | None = None


@dataclass
class _Resource:
    """A parsed WMI resource URI."""

    uri: str
    namespace: str  # canonical, as the repository spells it
    ns_spelling: str  # as the request spelled it (used in response element namespaces)
    class_name: str | None  # canonical; None for "/*"
    class_def: ClassDef | None


@dataclass
class _Item:
    inst: CimInstance
    ref: CimRef | None


@dataclass
class _Enumeration:
    """Server-side state of one enumeration context."""

    items: Deque[_Item]
    mode: str | None
    props: Tuple[str, ...] | None
    ns_spelling: Dict[str, str]
    namespace: str
    class_name: str | None
    user: str | None
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Dispatcher:
    """Answers WS-Management requests for one simulated node.

    :param repo: the node's CIM repository.
    :param faults: shared fault plan (``WSMAN_FAULT`` rules fire here).
    :param log: request log, one record per :meth:`handle` call.
    :param max_envelope_size_kb: the server's ``MaxEnvelopeSizekb``.
    :param max_batch_items: the server's ``MaxBatchItems`` (cap per Pull).
    :param enumeration_timeout_s: idle lifetime of an enumeration context.
    """

    def __init__(
        self,
        repo: Repository,
        faults: FaultPlan,
        log: RequestLog,
        *,
        max_envelope_size_kb: int = 500,
        max_batch_items: int = 32000,
        enumeration_timeout_s: float = 240,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.faults = faults
        self.log = log
        self.max_envelope_size = max_envelope_size_kb * 1024
        self.max_batch_items = max_batch_items
        self.enumeration_timeout_s = enumeration_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._enumerations: Dict[str, _Enumeration] = {}
        # Class schemas are static for a node's lifetime; cache the inheritance walk.
        self._props_cache: Dict[Tuple[str, str], Tuple[PropDef, ...]] = {}
        self._schema_cache: Dict[Tuple[str, str], ClassDef | None] = {}
        self._parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)

    # ------------------------------------------------------------------ entry point

    def handle(self, body: bytes, ctx: Any = None) -> Tuple[int, bytes]:
        """Answer one request body; returns (HTTP status, response body)."""
        started = time.monotonic()
        user = getattr(ctx, "username", None) if ctx is not None else None
        target = _Target()
        outcome = OUTCOME_OK
        try:
            status, out = self._handle(body, user, target)
        except WsmanFault as fault:
            outcome = fault.subcode
            status, out = fault.http_status, self._fault_bytes(fault, target.message_id)
        except CimError as err:
            converted = fault_from_cim_error(err, target.operation)
            outcome = converted.subcode
            status, out = converted.http_status, self._fault_bytes(converted, target.message_id)
        except Exception as exc:  # a simulator bug must still answer like a server would
            log.exception("hvsim dispatcher failed on %s", target.operation)
            internal = WsmanFault("w:InternalError", TEXT_INTERNAL,
                                  message=f"{TEXT_INTERNAL}{type(exc).__name__}: {exc}", provider=True)
            outcome = internal.subcode
            status, out = 500, self._fault_bytes(internal, target.message_id)
        if status == 413:
            outcome = "http:413"
        self.log.add(RequestRecord(
            operation=target.operation, namespace=target.namespace, class_name=target.class_name,
            method=target.method, user=user, duration=time.monotonic() - started, outcome=outcome,
            items=target.items if outcome == OUTCOME_OK else 0, filter_text=target.filter_text,
        ))
        return status, out

    def _handle(self, body: bytes, user: str | None, target: _Target) -> Tuple[int, bytes]:
        if len(body) > self.max_envelope_size:
            # WinRM refuses requests above MaxEnvelopeSizekb before parsing them: HTTP 413, no body.
            return 413, b""
        try:
            root = etree.fromstring(body, self._parser)
        except etree.XMLSyntaxError as exc:
            raise WsmanFault(
                "w:SchemaValidationError",
                "The WS-Management service cannot process the request because the XML is invalid. ",
                wsman_code=ERROR_WSMAN_INVALID_XML,
                message=f"The WS-Management service cannot process the request because the XML is "
                        f"invalid: {exc}. ",
            ) from exc
        if root.tag == _q(NS_S11, "Envelope"):
            raise WsmanFault("s:VersionMismatch", "The WS-Management service does not support the SOAP "
                             "version specified in the request. ", code="s:VersionMismatch",
                             wsman_code=ERROR_WSMAN_SOAP_VERSION_MISMATCH)
        if root.tag != _q(NS_S, "Envelope"):
            raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                             "corresponding XML schema definition. Change the XML and retry. ")
        header = _find(root, NS_S, "Header")
        sbody = _find(root, NS_S, "Body")
        if sbody is None:
            raise WsmanFault("w:SchemaValidationError", "The WS-Management service cannot process the "
                             "request because the request packet does not have a valid SOAP body. ")
        payload = _elements(sbody)
        first = payload[0] if payload else None
        if first is not None and first.tag == _q(NS_WSMID, "Identify"):
            target.operation = "Identify"
            self._fire("Identify")
            return 200, self._identify()
        if header is None:
            raise WsmanFault("a:MessageInformationHeaderRequired", TEXT_HEADER_REQUIRED,
                             wsman_code=ERROR_WSMAN_MESSAGE_INFORMATION_HEADER_REQUIRED)
        target.message_id = _text(_find(header, NS_A, "MessageID")) or None
        action = _text(_find(header, NS_A, "Action"))
        if not action or not target.message_id:
            missing = "Action" if not action else "MessageID"
            raise WsmanFault("a:MessageInformationHeaderRequired", TEXT_HEADER_REQUIRED,
                             wsman_code=ERROR_WSMAN_MESSAGE_INFORMATION_HEADER_REQUIRED,
                             message=f"{TEXT_HEADER_REQUIRED}The a:{missing} header is missing. ")
        timeout_text = _text(_find(header, NS_W, "OperationTimeout"))
        if timeout_text:
            try:
                parse_duration(timeout_text)
            except ValueError:
                raise WsmanFault(
                    "a:InvalidMessageInformationHeader", TEXT_INVALID_HEADER,
                    wsman_code=ERROR_WSMAN_INVALID_MESSAGE_INFORMATION_HEADER,
                    message="The WS-Management service cannot process the request. The XML contains an "
                            f"invalid timeout field in the SOAP header: {timeout_text}. ",
                ) from None
        limit = self._envelope_limit(header)
        uri = _text(_find(header, NS_W, "ResourceURI")) or ""
        selectors = self._selectors(_find(header, NS_W, "SelectorSet"))

        op, method = self._classify(action, uri)
        target.operation = op
        target.method = method
        self._fire(method or op)

        if op == "Pull":
            return 200, self._pull(first, header, action, target, limit=limit, user=user)
        if op == "Release":
            return 200, self._release(first, action, target)
        if op in ("Put", "Create", "Delete"):
            raise WsmanFault("a:ActionNotSupported", TEXT_ACTION_NOT_SUPPORTED,
                             message=f"{TEXT_ACTION_NOT_SUPPORTED}The simulator is read-only for {op}. ")
        res = self._resource(uri)
        target.namespace = res.namespace
        target.class_name = res.class_name
        if op == "Get":
            return 200, self._get(res, selectors, action, target, limit)
        if op == "Enumerate":
            return 200, self._enumerate(res, first, action, target, limit=limit, user=user)
        assert method is not None
        return 200, self._invoke(res, method, selectors, req=first, action=action, target=target, limit=limit)

    # ------------------------------------------------------------------ request parsing

    def _fire(self, name: str) -> None:
        rule = self.faults.fire(WSMAN_FAULT, name)
        if rule is not None:
            raise self._injected(rule, name)
        rule = self.faults.fire(QUOTA_LIMIT, name)
        if rule is not None:
            raise self._quota_fault(rule)

    def _behaviour(self) -> WinrmBehaviour:
        """The node's WinRM choices (defaults for a repository that has none)."""
        found = getattr(self.repo, "winrm", None)
        return found if isinstance(found, WinrmBehaviour) else WinrmBehaviour()

    @staticmethod
    def _quota_fault(rule: FaultRule) -> WsmanFault:
        """WinRM's per-user quota fault (MaxConcurrentOperationsPerUser / MaxShellsPerUser exceeded).

        ``shape="wmierror"`` (default) is the fault pywinrm recorded: ``w:InternalError`` whose
        ``s:Detail`` holds only ``MSFT_WmiError`` with CIMStatusCode 27 and error_Code 0x803381A6
        (pywinrm tests/test_exceptions.py).  ``shape="wsmanfault"`` is the DSP0226 / [MS-WSMV]
        3.1.4.5.2.1 ``w:QuotaLimit`` fault carrying the code in ``f:WSManFault`` as hashicorp/vagrant#7489
        shows it (``[WSMAN ERROR CODE: 2150859173]``; the subcode there is not shown).
        """
        shells = str(rule.params.get("quota", "operations")) == "shells"
        code = ERROR_WSMAN_QUOTA_MAX_SHELLS if shells else ERROR_WSMAN_QUOTA_MAX_OPERATIONS
        text = TEXT_QUOTA_SHELLS if shells else TEXT_QUOTA_OPERATIONS
        if str(rule.params.get("shape", "wmierror")) == "wsmanfault":
            return WsmanFault("w:QuotaLimit", text, wsman_code=code, provider=False)
        return WsmanFault("w:InternalError", text, wsman_code=code, provider=False, placement="detail_wmierror",
                          wmi_status={"StatusCode": code, "CIMStatusCode": 27, "error_Category": 30,
                                      "Message": text.strip(), "Description": text.strip()})

    def _injected(self, rule: FaultRule, name: str) -> WsmanFault:
        p = rule.params
        subcode = str(p.get("subcode", "w:InternalError"))
        reason = str(p.get("reason", TEXT_INTERNAL))
        status = p.get("wmi_status")
        provider = bool(p.get("provider", True))
        if status is None and provider and subcode == "w:InternalError":
            status = {"Description": f"Injected fault on {name}", "Operation": "ExecMethod",
                      "ParameterInfo": name, "ProviderName": "WinMgmt", "StatusCode": None}
        return WsmanFault(
            subcode, reason, wsman_code=p.get("wsman_code"), detail=p.get("detail"),
            message=p.get("message"), provider=provider, wmi_status=status, code=p.get("code"),
            http_status=int(p.get("http_status", 500)),
        )

    def _envelope_limit(self, header: Any) -> int:
        text = _text(_find(header, NS_W, "MaxEnvelopeSize"))
        if not text:
            return self.max_envelope_size
        try:
            requested = int(text)
        except ValueError:
            raise WsmanFault("a:InvalidMessageInformationHeader", TEXT_INVALID_HEADER,
                             wsman_code=ERROR_WSMAN_INVALID_MESSAGE_INFORMATION_HEADER,
                             message=f"{TEXT_INVALID_HEADER}MaxEnvelopeSize {text!r} is not a number. ",
                             ) from None
        if requested > self.max_envelope_size:
            raise WsmanFault("w:EncodingLimit", "The maximum envelope size in the request is too large. "
                             "Change the maximum envelope size and try the request again.  ",
                             wsman_code=ERROR_WSMAN_MAX_ENVELOPE_SIZE,
                             detail=FAULT_DETAIL + "MaxEnvelopeSize")
        if requested < MIN_ENVELOPE_SIZE:
            raise WsmanFault("w:EncodingLimit", "The WS-Management service cannot process the request "
                             "because the envelope size in the request is too small. ",
                             wsman_code=ERROR_WSMAN_MIN_ENVELOPE_SIZE,
                             detail=FAULT_DETAIL + "MinimumEnvelopeLimit")
        return requested

    @staticmethod
    def _selectors(sset: Any) -> List[Tuple[str, Any]]:
        out: List[Tuple[str, Any]] = []
        if sset is None:
            return out
        for sel in sset:
            if not isinstance(sel.tag, str) or _local(sel) != "Selector":
                continue
            epr = _find_ci(sel, "EndpointReference")
            out.append((sel.get("Name", ""), epr if epr is not None else (sel.text or "").strip()))
        return out

    @staticmethod
    def _classify(action: str, uri: str) -> Tuple[str, str | None]:
        known = {
            ACTION_GET: "Get", ACTION_ENUMERATE: "Enumerate", ACTION_PULL: "Pull",
            ACTION_RELEASE: "Release", ACTION_PUT: "Put", ACTION_CREATE: "Create", ACTION_DELETE: "Delete",
        }
        if action in known:
            return known[action], None
        if uri and action.lower().startswith(uri.lower().rstrip("/") + "/"):
            method = action[len(uri.rstrip("/")) + 1:]
            if method and "/" not in method:
                return "Invoke", method
        raise WsmanFault("a:ActionNotSupported", TEXT_ACTION_NOT_SUPPORTED,
                         message=f"{TEXT_ACTION_NOT_SUPPORTED}Action: {action} ")

    def _resource(self, uri: str) -> _Resource:
        if not uri:
            raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                             wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                             detail=FAULT_DETAIL + "InvalidResourceURI")
        base = uri.split("?", 1)[0].rstrip("/")
        if not base.lower().startswith(WMI_URI_PREFIX.lower()):
            raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                             wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                             detail=FAULT_DETAIL + "InvalidResourceURI",
                             message=f"{TEXT_INVALID_URI}The simulator serves WMI URIs only: {uri} ")
        rest = base[len(WMI_URI_PREFIX):]
        if "/" not in rest:
            raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                             wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                             detail=FAULT_DETAIL + "InvalidResourceURI")
        ns_spelling, cls = rest.rsplit("/", 1)
        namespace = self._canonical_namespace(ns_spelling)
        rights = getattr(self.repo, "rights", None)
        if self._behaviour().denies(namespace) or (isinstance(rights, AccountRights)
                                                    and rights.denies_namespace(namespace)):
            raise self._access_denied(namespace)
        if cls == "*":
            return _Resource(uri, namespace, ns_spelling, None, None)
        cdef = self.repo.class_def(namespace, cls)
        if cdef is None:
            raise self._not_found(f"The WS-Management service cannot process the request. The WMI service "
                                  f"returned an 'invalid class' error. ({namespace}:{cls}) ")
        return _Resource(uri, namespace, ns_spelling, cdef.name, cdef)

    def _canonical_namespace(self, spelled: str) -> str:
        want = spelled.replace("\\", "/").strip("/").lower()
        for ns in self.repo.namespaces():
            if ns.replace("\\", "/").lower() == want:
                return ns
        raise self._missing_namespace(spelled)

    def _missing_namespace(self, spelled: str) -> WsmanFault:
        """WBEM_E_INVALID_NAMESPACE as this node's WinRM words it (hvsim.behaviour.MISSING_NAMESPACE)."""
        variant = self._behaviour().missing_namespace
        ns = spelled.replace("\\", "/").strip("/")
        # the wording azure-docs#55006 quotes from a real host (WinRM over the MI-based WMI plugin)
        text = f"The WS-Management service cannot process the request. The CIM namespace {ns} is invalid. "
        status: Dict[str, Any] = {"Description": f"The CIM namespace {ns} is invalid.", "ParameterInfo": ns,
                                  "ProviderName": "WinMgmt", "StatusCode": WBEM_E_INVALID_NAMESPACE}
        if variant == "wsman_destination_unreachable":
            return WsmanFault("w:DestinationUnreachable", TEXT_NOT_FOUND, wsman_code=ERROR_WSMAN_RESOURCE_NOT_FOUND,
                              detail=FAULT_DETAIL + "InvalidResourceURI", message=f"{TEXT_NOT_FOUND}({ns}) ")
        if variant == "invalid_namespace_code":
            return WsmanFault("w:InternalError", text, wsman_code=WBEM_E_INVALID_NAMESPACE, provider=True)
        if variant == "invalid_namespace_extended":
            return WsmanFault("w:InternalError", TEXT_INTERNAL, wsman_code=ERROR_WSMAN_WMI_PROVIDER_NOT_CAPABLE,
                              provider=True, message=text, wmi_status=status, placement="extended")
        if variant == "invalid_namespace_wmierror":
            return WsmanFault("w:InternalError", text, provider=True, placement="detail_wmierror",
                              wmi_status={**status, "CIMStatusCode": 3, "Message": status["Description"]})
        # "destination_unreachable": the historical answer, WMI's invalid namespace as "not found"
        return self._not_found(f"The WS-Management service cannot process the request. The WMI service "
                               f"returned an 'invalid namespace' error. ({spelled}) ")

    def _access_denied(self, namespace: str) -> WsmanFault:
        """The account may not use ``namespace`` here (hvsim.behaviour.ACCESS_DENIED)."""
        if self._behaviour().access_denied == "wmierror":
            return WsmanFault("w:InternalError", "Access denied ", provider=True, placement="detail_wmierror",
                              wmi_status={"Description": "Access denied", "Message": "Access denied",
                                          "ParameterInfo": namespace, "ProviderName": "WinMgmt",
                                          "StatusCode": WBEM_E_ACCESS_DENIED, "CIMStatusCode": 2})
        return WsmanFault("w:AccessDenied", "Access is denied. ", wsman_code=ERROR_ACCESS_DENIED)

    def _not_found(self, message: str) -> WsmanFault:
        return WsmanFault("a:DestinationUnreachable", TEXT_NOT_FOUND, message=message, provider=True)

    def _ns_uri(self, namespace: str, spellings: Mapping[str, str]) -> str:
        return spellings.get(namespace.lower(), namespace.lower())

    def _all_props(self, namespace: str, class_name: str) -> Tuple[PropDef, ...]:
        """Schema properties of a class including any its ClassDef leaves to superclasses."""
        key = (namespace.lower(), class_name.lower())
        cached = self._props_cache.get(key)
        if cached is not None:
            return cached
        props: List[PropDef] = []
        seen: set[str] = set()
        cdef = self.repo.class_def(namespace, class_name)
        chain: List[ClassDef] = []
        while cdef is not None and len(chain) < 32:
            chain.append(cdef)
            cdef = self.repo.class_def(namespace, cdef.superclass) if cdef.superclass else None
        for c in chain:
            for p in c.properties:
                if p.name.lower() not in seen:
                    seen.add(p.name.lower())
                    props.append(p)
        result = tuple(props)
        self._props_cache[key] = result
        return result

    def _canonical_ref(self, ref: CimRef) -> CimRef:
        """Class and key names as the schema spells them, keys in declaration order."""
        ns = ref.namespace
        try:
            ns = self._canonical_namespace(ref.namespace)
        except WsmanFault:
            return ref
        cdef = self.repo.class_def(ns, ref.class_name)
        if cdef is None:
            return CimRef(ns, ref.class_name, ref.keys)
        given = {k.lower(): v for k, v in ref.keys}
        keys: List[Tuple[str, str]] = []
        for k in cdef.keys:
            if k.lower() in given:
                keys.append((k, given.pop(k.lower())))
        keys.extend((k, v) for k, v in ref.keys if k.lower() in given)
        return CimRef(ns, cdef.name, tuple(keys))

    def _ref_from_selectors(self, res: _Resource, selectors: Sequence[Tuple[str, Any]]) -> CimRef:
        cdef = res.class_def
        assert cdef is not None
        if not selectors and cdef.keys:
            raise WsmanFault(
                "w:InvalidSelectors", TEXT_INSUFFICIENT_SELECTORS,
                wsman_code=ERROR_WSMAN_INVALID_URI_WMI_SINGLETON,
                detail=FAULT_DETAIL + "InsufficientSelectors", provider=True,
                message="The WinRM client cannot process the request. The resource URI is not valid: it does "
                        "not contain keys, but the class selected is not a singleton. ",
            )
        given: Dict[str, Tuple[str, Any]] = {}
        for name, value in selectors:
            if name.lower() in given:
                raise WsmanFault("w:InvalidSelectors", "The WS-Management service cannot process the request "
                                 "because the request contains duplicate selectors. ",
                                 detail=FAULT_DETAIL + "DuplicateSelectors", provider=True)
            given[name.lower()] = (name, value)
        unexpected = [n for low, (n, _) in given.items() if low not in {k.lower() for k in cdef.keys}]
        if unexpected:
            raise WsmanFault("w:InvalidSelectors", TEXT_INVALID_SELECTORS,
                             wsman_code=ERROR_WSMAN_UNEXPECTED_SELECTORS,
                             detail=FAULT_DETAIL + "UnexpectedSelectors", provider=True,
                             message=f"{TEXT_INVALID_SELECTORS}Unexpected: {', '.join(unexpected)} ")
        missing = [k for k in cdef.keys if k.lower() not in given]
        if missing:
            raise WsmanFault("w:InvalidSelectors", TEXT_INSUFFICIENT_SELECTORS,
                             wsman_code=ERROR_WSMAN_INSUFFICIENT_SELECTORS,
                             detail=FAULT_DETAIL + "InsufficientSelectors", provider=True,
                             message=f"{TEXT_INSUFFICIENT_SELECTORS}Missing: {', '.join(missing)} ")
        keys: List[Tuple[str, str]] = []
        for k in cdef.keys:
            value = given[k.lower()][1]
            if not isinstance(value, str):
                value = self._ref_from_epr(value).wmi_path(self.repo.hostname)
            keys.append((k, value))
        return CimRef(res.namespace, cdef.name, tuple(keys))

    def _ref_from_epr(self, el: Any) -> CimRef:
        """CimRef from an EPR element (``a:Address`` + ``a:ReferenceParameters``, or a WMI path text)."""
        inner = _find_ci(el, "EndpointReference")
        if inner is not None:
            el = inner
        rp = _find(el, NS_A, "ReferenceParameters")
        holder = rp if rp is not None else el
        uri_el = _find(holder, NS_W, "ResourceURI")
        if uri_el is None:
            text = (el.text or "").strip()
            if text:
                try:
                    return self._canonical_ref(parse_object_path(text).to_ref(self._default_ns()))
                except WqlError as exc:
                    raise self._invalid_value(f"{_local(el)} is not an EPR or object path: {exc}") from exc
            raise self._invalid_value(f"{_local(el)} is not an endpoint reference")
        uri = (uri_el.text or "").strip()
        if not uri.lower().startswith(WMI_URI_PREFIX.lower()) or "/" not in uri[len(WMI_URI_PREFIX):]:
            raise self._invalid_value(f"EPR resource URI {uri!r} is not a WMI class URI")
        ns_sp, cls = uri[len(WMI_URI_PREFIX):].rstrip("/").rsplit("/", 1)
        keys = tuple((n, v if isinstance(v, str) else self._ref_from_epr(v).wmi_path(self.repo.hostname))
                     for n, v in self._selectors(_find(holder, NS_W, "SelectorSet")))
        return self._canonical_ref(CimRef(ns_sp.replace("\\", "/"), cls, keys))

    def _default_ns(self) -> str:
        names = list(self.repo.namespaces())
        return names[0] if names else "root/virtualization/v2"

    def _invalid_value(self, message: str) -> WsmanFault:
        return WsmanFault("w:InvalidParameter", TEXT_INVALID_PARAMETER,
                          wsman_code=ERROR_WSMAN_WMI_INVALID_VALUE,
                          detail=FAULT_DETAIL + "InvalidValue", provider=True, message=message + " ")

    # ------------------------------------------------------------------ responses

    def _envelope(self, action: str, relates_to: str | None) -> Tuple[Any, Any, Any]:
        env = etree.Element(_q(NS_S, "Envelope"), nsmap=ENVELOPE_NSMAP)
        env.set(_q(NS_XML, "lang"), "en-US")
        header = etree.SubElement(env, _q(NS_S, "Header"))
        etree.SubElement(header, _q(NS_A, "Action")).text = action
        etree.SubElement(header, _q(NS_A, "MessageID")).text = "uuid:" + str(uuid.uuid4()).upper()
        etree.SubElement(header, _q(NS_A, "To")).text = ANONYMOUS
        if relates_to:
            etree.SubElement(header, _q(NS_A, "RelatesTo")).text = relates_to
        body = etree.SubElement(env, _q(NS_S, "Body"))
        return env, header, body

    @staticmethod
    def _serialize(env: Any) -> bytes:
        return bytes(etree.tostring(env, encoding="utf-8", xml_declaration=False))

    def _checked(self, env: Any, limit: int) -> bytes:
        data = self._serialize(env)
        if len(data) > limit:
            raise self._encoding_limit(len(data), limit)
        return data

    @staticmethod
    def _encoding_limit(size: int, limit: int) -> WsmanFault:
        return WsmanFault("w:EncodingLimit", TEXT_ENVELOPE_EXCEEDED,
                          wsman_code=ERROR_WSMAN_MAX_ENVELOPE_SIZE_EXCEEDED,
                          detail=FAULT_DETAIL + "MaxEnvelopeSize",
                          message=f"{TEXT_ENVELOPE_EXCEEDED}({size} bytes > {limit}) ")

    def _fault_bytes(self, fault: WsmanFault, relates_to: str | None) -> bytes:
        env, _header, body = self._envelope(fault.action, relates_to)
        f = etree.SubElement(body, _q(NS_S, "Fault"))
        code = etree.SubElement(f, _q(NS_S, "Code"))
        etree.SubElement(code, _q(NS_S, "Value")).text = fault.code
        if fault.subcode != fault.code:
            sub = etree.SubElement(code, _q(NS_S, "Subcode"))
            etree.SubElement(sub, _q(NS_S, "Value")).text = fault.subcode
        reason = etree.SubElement(f, _q(NS_S, "Reason"))
        rt = etree.SubElement(reason, _q(NS_S, "Text"))
        rt.set(_q(NS_XML, "lang"), "en-US")
        rt.text = fault.reason
        detail = etree.SubElement(f, _q(NS_S, "Detail"))
        if fault.detail:
            etree.SubElement(detail, _q(NS_W, "FaultDetail")).text = fault.detail
        status = fault.wmi_status
        placement = fault.placement or self._behaviour().wmi_error_placement
        if status is not None and placement == "detail_wmierror":
            # pywinrm's recorded WinRM fault: s:Detail holds the WMI error object and nothing else
            detail.append(self._msft_wmi_error(status, MSFT_WMIERROR_URI))
            return self._serialize(env)
        machine = self.repo.hostname
        wf = etree.SubElement(detail, _q(NS_F, "WSManFault"), nsmap={"f": NS_F})
        wf.set("Code", str(fault.wsman_code))
        wf.set("Machine", machine)
        msg = etree.SubElement(wf, _q(NS_F, "Message"))
        if not fault.provider:
            msg.text = fault.message
        else:
            pf = etree.SubElement(msg, _q(NS_F, "ProviderFault"))
            pf.set("provider", WMI_PROVIDER_NAME)
            pf.set("path", WMI_PROVIDER_PATH)
            inner = etree.SubElement(pf, _q(NS_F, "WSManFault"), nsmap={"f": NS_F})
            inner.set("Code", str(fault.wsman_code))
            inner.set("Machine", machine)
            etree.SubElement(inner, _q(NS_F, "Message")).text = fault.message
            if status is not None and placement in ("extended", "extended_wmierror"):
                ext = etree.SubElement(pf, _q(NS_F, "ExtendedError"))
                if placement == "extended":
                    ext.append(self._extended_status(status))
                else:
                    uri = f"{WMI_URI_PREFIX}{self._default_ns().lower()}/MSFT_WmiError"
                    ext.append(self._msft_wmi_error(status, uri))
        if status is not None and placement == "detail_extended_status":
            detail.append(self._extended_status(status))
        return self._serialize(env)

    def _msft_wmi_error(self, status: Mapping[str, Any], uri: str) -> Any:
        """``MSFT_WmiError`` from the ``__ExtendedStatus`` fields of ``status``.

        Element, attributes, member order and ``xsi:type`` per member follow the fault pywinrm
        recorded (pywinrm tests/test_exceptions.py); ``status`` may also name members directly
        (``CIMStatusCode``, ``Message``, ``MessageID``, ``error_Category``).
        """
        code = status.get("StatusCode")
        message = status.get("Message", status.get("Description"))
        hresult = int(code) if isinstance(code, int) else None
        members: List[Tuple[str, str, Any]] = [
            ("CIMStatusCode", "cimUnsignedInt",
             status.get("CIMStatusCode", CIM_STATUS_OF_HRESULT.get(hresult or 0, 1))),
            ("CIMStatusCodeDescription", "cimString", None),
            ("ErrorSource", "cimString", status.get("ParameterInfo") or None),
            ("ErrorSourceFormat", "cimUnsignedShort", 0),
            ("ErrorType", "cimUnsignedShort", 0),
            ("Message", "cimString", message),
            ("MessageID", "cimString",
             status.get("MessageID", f"HRESULT 0x{hresult:08x}" if hresult is not None else None)),
            ("OtherErrorSourceFormat", "cimString", None),
            ("OtherErrorType", "cimString", None),
            ("OwningEntity", "cimString", status.get("ProviderName") or None),
            ("PerceivedSeverity", "cimUnsignedShort", 0),
            ("ProbableCause", "cimUnsignedShort", 0),
            ("ProbableCauseDescription", "cimString", None),
            ("error_Category", "cimUnsignedInt", status.get("error_Category", 0)),
            ("error_Code", "cimUnsignedInt", hresult),
            ("error_Type", "cimString", "HRESULT"),
            ("error_WindowsErrorMessage", "cimString", status.get("Description", message)),
        ]
        el = etree.Element(_q(uri, "MSFT_WmiError"), nsmap={"b": NS_B, "p": uri, "cim": NS_CIM, "xsi": NS_XSI})
        el.set(_q(NS_B, "IsCIM_Error"), "true")
        el.set(_q(NS_XSI, "type"), "p:MSFT_WmiError_Type")
        for name, typ, value in members:
            child = etree.SubElement(el, _q(uri, name))
            child.set(_q(NS_XSI, "type"), f"cim:{typ}")
            if value is None:
                child.set(_q(NS_XSI, "nil"), "true")
            else:
                child.text = str(value)
        return el

    def _extended_status(self, status: Mapping[str, Any]) -> Any:
        ns = self._default_ns()
        p_uri = f"{WMI_URI_PREFIX}{ns.lower()}/__ExtendedStatus"
        el = etree.Element(_q(p_uri, "__ExtendedStatus"), nsmap={"p": p_uri, "cim": NS_CIM, "xsi": NS_XSI})
        el.set(_q(NS_XSI, "type"), "p:__ExtendedStatus_Type")
        order = ["Description", "Operation", "ParameterInfo", "ProviderName", "StatusCode"]
        names = order + sorted(k for k in status if k not in order)
        for name in names:
            value = status.get(name)
            child = etree.SubElement(el, _q(p_uri, name))
            if value is None:
                child.set(_q(NS_XSI, "nil"), "true")
            else:
                child.text = str(value)
        return el

    def _identify(self) -> bytes:
        env = etree.Element(_q(NS_S, "Envelope"), nsmap={"s": NS_S})
        env.set(_q(NS_XML, "lang"), "en-US")
        etree.SubElement(env, _q(NS_S, "Header"))
        body = etree.SubElement(env, _q(NS_S, "Body"))
        resp = etree.SubElement(body, _q(NS_WSMID, "IdentifyResponse"), nsmap={"wsmid": NS_WSMID})
        etree.SubElement(resp, _q(NS_WSMID, "ProtocolVersion")).text = PROTOCOL_VERSION
        etree.SubElement(resp, _q(NS_WSMID, "ProductVendor")).text = PRODUCT_VENDOR
        version = getattr(self.repo, "product_version", None) or DEFAULT_PRODUCT_VERSION
        etree.SubElement(resp, _q(NS_WSMID, "ProductVersion")).text = str(version)
        profiles = etree.SubElement(resp, _q(NS_WSMID, "SecurityProfiles"))
        etree.SubElement(profiles, _q(NS_WSMID, "SecurityProfileName")).text = (
            "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/spnego-kerberos")
        return self._serialize(env)

    # ------------------------------------------------------------------ value rendering

    def _class_lookup(self, namespace: str) -> Callable[[str], ClassDef | None]:
        return lambda name: self.repo.class_def(namespace, name)

    def _append_value(self, parent: Any, tag: str, pdef: PropDef | None, value: Any, namespace: str, *,
                      embedded: str = "cimxml") -> None:
        """One property (or out parameter) element; ``embedded`` says how an embedded object is rendered.

        Method outputs keep ``cimxml`` (embedded-instance *strings*, GetErrorEx); instance
        properties of object type follow the node's ``winrm.embedded_objects``.
        """
        if value is None:
            el = etree.SubElement(parent, tag)
            el.set(_q(NS_XSI, "nil"), "true")
            return
        if isinstance(value, list):
            for v in value:
                self._append_value(parent, tag, pdef, v, namespace, embedded=embedded)
            return
        el = etree.SubElement(parent, tag)
        if isinstance(value, CimRef):
            self._fill_epr(el, value)
        elif isinstance(value, CimInstance) and embedded != "cimxml":
            self._fill_embedded_object(el, value, namespace, embedded)
        elif isinstance(value, CimInstance):
            lookup = self._class_lookup(value.namespace or namespace)
            el.text = cimxml.produce_instance(value, lookup(value.class_name), class_lookup=lookup)
        elif isinstance(value, _dt.datetime):
            etree.SubElement(el, _q(NS_CIM, "Datetime")).text = format_xs_datetime(value)
        elif isinstance(value, CimInterval):
            etree.SubElement(el, _q(NS_CIM, "Interval")).text = format_duration(value.seconds)
        elif isinstance(value, bool):
            el.text = "true" if value else "false"
        elif isinstance(value, float):
            el.text = repr(value)
        else:
            el.text = str(value)

    def _fill_embedded_object(self, el: Any, value: CimInstance, namespace: str, embedded: str) -> None:
        """An embedded object as nested XML (hvsim.behaviour.EMBEDDED_OBJECTS) or as nil."""
        if embedded == "nil":
            el.set(_q(NS_XSI, "nil"), "true")
            return
        ns = value.namespace or namespace
        uri = f"{WMI_URI_PREFIX}{ns.lower()}/{value.class_name}"
        holder = el
        if embedded == "nested_class":
            holder = etree.SubElement(el, _q(uri, value.class_name), nsmap={"e": uri})
            holder.set(_q(NS_XSI, "type"), f"e:{value.class_name}_Type")
        schema = self._all_props(ns, value.class_name)
        seen = {p.name.lower() for p in schema}
        for p in schema:
            self._append_value(holder, _q(uri, p.name), p, value.get(p.name), ns, embedded=embedded)
        for name, item in value.properties.items():
            if name.lower() not in seen:
                self._append_value(holder, _q(uri, name), None, item, ns, embedded=embedded)

    def _fill_epr(self, el: Any, ref: CimRef) -> None:
        etree.SubElement(el, _q(NS_A, "Address")).text = ANONYMOUS
        rp = etree.SubElement(el, _q(NS_A, "ReferenceParameters"))
        etree.SubElement(rp, _q(NS_W, "ResourceURI")).text = ref.resource_uri()
        sset = etree.SubElement(rp, _q(NS_W, "SelectorSet"))
        for k, v in ref.keys:
            sel = etree.SubElement(sset, _q(NS_W, "Selector"))
            sel.set("Name", k)
            sel.text = v

    def _instance_element(self, inst: CimInstance, spellings: Mapping[str, str],
                          props: Tuple[str, ...] | None = None) -> Any:
        schema = self._all_props(inst.namespace, inst.class_name)
        embedded = self._behaviour().embedded_objects
        if props is not None:
            frag = etree.Element(_q(NS_W, "XmlFragment"),
                                 nsmap={"xsi": NS_XSI, "w": NS_W, "m": NS_P, "cim": NS_CIM})
            projected = project(inst, props, None if not schema else _schema_view(schema))
            by_name = {p.name.lower(): p for p in schema}
            for name, value in projected.properties.items():
                self._append_value(frag, name, by_name.get(name.lower()), value, inst.namespace,
                                   embedded=embedded)
            return frag
        class_uri = f"{WMI_URI_PREFIX}{self._ns_uri(inst.namespace, spellings)}/{inst.class_name}"
        nsmap = {"p": class_uri, "cim": NS_CIM, "xsi": NS_XSI}
        el = etree.Element(_q(class_uri, inst.class_name), nsmap=nsmap)
        el.set(_q(NS_XSI, "type"), f"p:{inst.class_name}_Type")
        seen: set[str] = set()
        for p in schema:
            seen.add(p.name.lower())
            self._append_value(el, _q(class_uri, p.name), p, inst.get(p.name), inst.namespace,
                               embedded=embedded)
        for name, value in inst.properties.items():
            if name.lower() not in seen and not name.startswith("__"):
                self._append_value(el, _q(class_uri, name), None, value, inst.namespace, embedded=embedded)
        return el

    def _item_element(self, item: _Item, mode: str | None, spellings: Mapping[str, str],
                      props: Tuple[str, ...] | None) -> Any:
        if mode == "EnumerateEPR":
            epr = etree.Element(_q(NS_A, "EndpointReference"), nsmap={"a": NS_A, "w": NS_W})
            self._fill_epr(epr, item.ref or self._path_of(item.inst))
            return epr
        inst_el = self._instance_element(item.inst, spellings, props)
        if mode != "EnumerateObjectAndEPR":
            return inst_el
        wrapper = etree.Element(_q(NS_W, "Item"), nsmap={"w": NS_W, "a": NS_A})
        wrapper.append(inst_el)
        epr = etree.SubElement(wrapper, _q(NS_A, "EndpointReference"))
        self._fill_epr(epr, item.ref or self._path_of(item.inst))
        return wrapper

    def _path_of(self, inst: CimInstance) -> CimRef:
        if inst.path is not None:
            return inst.path
        cdef = self.repo.class_def(inst.namespace, inst.class_name)
        keys = tuple((k, str(inst.get(k, ""))) for k in (cdef.keys if cdef else ()))
        return CimRef(inst.namespace, inst.class_name, keys)

    # ------------------------------------------------------------------ Get

    def _get(self, res: _Resource, selectors: Sequence[Tuple[str, Any]], action: str, target: _Target,
             limit: int) -> bytes:
        if res.class_def is None:
            raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                             wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                             detail=FAULT_DETAIL + "InvalidResourceURI",
                             message=f"{TEXT_INVALID_URI}Get needs a class resource URI, not '/*'. ")
        ref = self._ref_from_selectors(res, selectors)
        inst = self.repo.get(ref)
        if not self.repo.is_a(res.namespace, inst.class_name, res.class_def.name):
            raise self._not_found(TEXT_NOT_FOUND)
        env, _h, body = self._envelope(action + "Response", target.message_id)
        body.append(self._instance_element(inst, {res.namespace.lower(): res.ns_spelling}))
        target.items = 1
        return self._checked(env, limit)

    # ------------------------------------------------------------------ Enumerate / Pull / Release

    def _enumerate(self, res: _Resource, req: Any, action: str, target: _Target, *, limit: int,
                   user: str | None) -> bytes:
        if req is None or req.tag != _q(NS_N, "Enumerate"):
            raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                             "corresponding XML schema definition. Change the XML and retry. ",
                             message="WinRM cannot process the request because the request is missing the "
                                     "element titled 'Enumerate'. ")
        optimize = _find(req, NS_W, "OptimizeEnumeration") is not None
        max_elements = self._max_elements(_find(req, NS_W, "MaxElements"))
        mode_text = _text(_find(req, NS_W, "EnumerationMode"))
        mode: str | None = None
        if mode_text:
            if mode_text not in ("EnumerateObjectAndEPR", "EnumerateEPR"):
                raise WsmanFault("w:UnsupportedFeature", "The WS-Management service does not support the "
                                 "specified enumeration mode. ",
                                 wsman_code=ERROR_WSMAN_ENUMERATION_MODE_UNSUPPORTED,
                                 detail=FAULT_DETAIL + "EnumerationMode")
            mode = mode_text
        filt = _find(req, NS_W, "Filter")
        if filt is None:
            filt = _find(req, NS_N, "Filter")
        props: Tuple[str, ...] | None = None
        if filt is None:
            if res.class_name is None:
                raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                                 wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                                 detail=FAULT_DETAIL + "InvalidResourceURI",
                                 message=f"{TEXT_INVALID_URI}An enumeration of '/*' needs a filter. ")
            items = [_Item(i, i.path) for i in self.repo.instances(res.namespace, res.class_name)]
        else:
            dialect = (filt.get("Dialect") or DIALECT_WQL).strip()
            if dialect.lower() == DIALECT_WQL.lower():
                text = (filt.text or "").strip()
                target.filter_text = text
                if res.class_name is not None:
                    # ERROR_WSMAN_INVALID_URI_WMI_ENUM_WQL; the WMI plugin's URI errors reach clients
                    # as w:InternalError (seen for its other URI check in microsoft/omi#398).
                    raise WsmanFault(
                        "w:InternalError", TEXT_INTERNAL, wsman_code=ERROR_WSMAN_INVALID_URI_WMI_ENUM_WQL,
                        provider=True,
                        message="The WinRM client cannot process the request. The resource URI for an "
                                "enumeration operation with WQL filter must not contain keys and the class "
                                "name must be '*' (star). ",
                    )
                items, props = self._run_wql(res, text, target)
            elif dialect.lower() == DIALECT_ASSOCIATION.lower():
                items = self._run_association_filter(res, filt, target)
            elif dialect.lower() == DIALECT_SELECTOR.lower():
                if res.class_name is None or res.class_def is None:
                    raise self._filter_fault("SelectorFilter needs a class resource URI", None)
                items = self._run_selector_filter(res, filt)
            else:
                raise WsmanFault("n:FilterDialectRequestedUnavailable", "The filter dialect (the type "
                                 "associated with the filter) was not supported for this resource. ",
                                 wsman_code=ERROR_WSMAN_FILTER_DIALECT_REQUESTED_UNAVAILABLE,
                                 message=f"Unsupported filter dialect {dialect} ")
        spellings = {res.namespace.lower(): res.ns_spelling}
        enum = _Enumeration(deque(items), mode, props, spellings, res.namespace, target.class_name, user,
                            self._clock())
        context = "uuid:" + str(uuid.uuid4()).upper()
        if not optimize:
            with self._lock:
                self._sweep()
                self._enumerations[context] = enum
            env, _h, body = self._envelope(action + "Response", target.message_id)
            resp = etree.SubElement(body, _q(NS_N, "EnumerateResponse"))
            etree.SubElement(resp, _q(NS_N, "EnumerationContext")).text = context
            return self._checked(env, limit)

        def build(batch: List[Any], done: bool) -> Any:
            env, _h, body = self._envelope(action + "Response", target.message_id)
            resp = etree.SubElement(body, _q(NS_N, "EnumerateResponse"))
            # Windows sends an empty context when the optimized response holds everything.
            etree.SubElement(resp, _q(NS_N, "EnumerationContext")).text = "" if done else context
            its = etree.SubElement(resp, _q(NS_W, "Items"))
            for el in batch:
                its.append(el)
            if done:
                etree.SubElement(resp, _q(NS_W, "EndOfSequence"))
            return env

        data, sent = self._fit(enum, max_elements, limit, build, allow_empty=True)
        target.items = sent
        if enum.items:
            with self._lock:
                self._sweep()
                self._enumerations[context] = enum
        return data

    def _max_elements(self, el: Any) -> int:
        if el is None:
            return 1
        try:
            n = int((el.text or "").strip())
        except ValueError:
            raise WsmanFault("w:InvalidParameter", TEXT_INVALID_PARAMETER,
                             wsman_code=ERROR_WSMAN_INVALID_PARAMETER, detail=FAULT_DETAIL + "InvalidValue",
                             message=f"MaxElements {el.text!r} is not a number. ") from None
        if n < 1:
            raise WsmanFault("w:InvalidParameter", TEXT_INVALID_PARAMETER,
                             wsman_code=ERROR_WSMAN_INVALID_PARAMETER, detail=FAULT_DETAIL + "InvalidValue",
                             message=f"MaxElements must be at least 1, not {n}. ")
        return min(n, self.max_batch_items)

    def _fit(self, enum: _Enumeration, max_elements: int, limit: int,
             build: Callable[[List[Any], bool], Any], *, allow_empty: bool) -> Tuple[bytes, int]:
        """Serialize as many items as fit in ``limit`` bytes (WinRM shortens batches rather than fail)."""
        count = min(max_elements, len(enum.items))
        rendered = [self._item_element(enum.items[i], enum.mode, enum.ns_spelling, enum.props)
                    for i in range(count)]
        sizes = [len(etree.tostring(el)) for el in rendered]
        overhead = len(self._serialize(build([], False))) + 64
        k = 0
        total = overhead
        while k < count and total + sizes[k] <= limit:
            total += sizes[k]
            k += 1
        if k == 0 and count > 0 and not allow_empty:
            raise self._encoding_limit(overhead + sizes[0], limit)
        while True:
            done = k == len(enum.items)
            data = self._serialize(build(rendered[:k], done))
            if len(data) <= limit:
                break
            if k == 0 or (k == 1 and not allow_empty):
                raise self._encoding_limit(len(data), limit)
            k -= 1
        for _ in range(k):
            enum.items.popleft()
        return data, k

    def _sweep(self) -> None:
        """Drop contexts idle longer than EnumerationTimeoutms (caller holds the lock)."""
        now = self._clock()
        idle = self.enumeration_timeout_s
        for key in [k for k, e in self._enumerations.items() if now - e.last_used > idle]:
            del self._enumerations[key]

    def _take_context(self, req: Any, name: str) -> Tuple[str, _Enumeration]:
        if req is None or req.tag != _q(NS_N, name):
            raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                             "corresponding XML schema definition. Change the XML and retry. ",
                             message=f"WinRM cannot process the request because the request is missing the "
                                     f"element titled '{name}'. ")
        context = _text(_find(req, NS_N, "EnumerationContext")) or ""
        with self._lock:
            self._sweep()
            enum = self._enumerations.get(context)
            if enum is None:
                raise WsmanFault("n:InvalidEnumerationContext", TEXT_INVALID_CONTEXT,
                                 wsman_code=ERROR_WSMAN_INVALID_ENUMERATION_CONTEXT)
            enum.last_used = self._clock()
        return context, enum

    def _pull(self, req: Any, header: Any, action: str, target: _Target, *, limit: int,
              user: str | None) -> bytes:
        context, enum = self._take_context(req, "Pull")
        target.namespace = enum.namespace
        target.class_name = enum.class_name
        max_elements = self._max_elements(_find(req, NS_N, "MaxElements"))

        def build(batch: List[Any], done: bool) -> Any:
            env, _h, body = self._envelope(action + "Response", target.message_id)
            resp = etree.SubElement(body, _q(NS_N, "PullResponse"))
            if not done:
                etree.SubElement(resp, _q(NS_N, "EnumerationContext")).text = context
            its = etree.SubElement(resp, _q(NS_N, "Items"))
            for el in batch:
                its.append(el)
            if done:
                etree.SubElement(resp, _q(NS_N, "EndOfSequence"))
            return env

        with enum.lock:
            data, sent = self._fit(enum, max_elements, limit, build, allow_empty=False)
            exhausted = not enum.items
        with self._lock:
            if exhausted:
                self._enumerations.pop(context, None)
            else:
                enum.last_used = self._clock()
        target.items = sent
        return data

    def _release(self, req: Any, action: str, target: _Target) -> bytes:
        context, enum = self._take_context(req, "Release")
        target.namespace = enum.namespace
        target.class_name = enum.class_name
        with self._lock:
            self._enumerations.pop(context, None)
        env, _h, _body = self._envelope(action + "Response", target.message_id)
        return self._serialize(env)

    def open_enumerations(self) -> int:
        """Number of live enumeration contexts (tests check that clients release them)."""
        with self._lock:
            self._sweep()
            return len(self._enumerations)

    # ------------------------------------------------------------------ filters

    def _filter_fault(self, message: str, query: str | None, *, class_missing: bool = False) -> WsmanFault:
        status = None
        if query is not None:
            status = {"Description": None, "Operation": "ExecQuery", "ParameterInfo": query,
                      "ProviderName": "WinMgmt", "StatusCode": None}
        return WsmanFault("n:CannotProcessFilter", TEXT_CANNOT_PROCESS_FILTER,
                          wsman_code=ERROR_WSMAN_CANNOT_PROCESS_FILTER, provider=True,
                          message=TEXT_CLASS_NOT_FOUND if class_missing else message, wmi_status=status)

    def _run_wql(
        self, res: _Resource, text: str, target: _Target,
    ) -> Tuple[List[_Item], Tuple[str, ...] | None]:
        try:
            query = parse_wql(text)
        except WqlError as exc:
            raise self._filter_fault(f"The query is not valid: {exc}. ", text) from exc
        if isinstance(query, SelectQuery):
            cdef = self.repo.class_def(res.namespace, query.class_name)
            if cdef is None:
                raise self._filter_fault("", text, class_missing=True)
            target.class_name = cdef.name
            schema = _schema_view(self._all_props(res.namespace, cdef.name), cdef)
            try:
                check_properties(query.where, query.props, schema)
                items = [
                    _Item(i, i.path) for i in self.repo.instances(res.namespace, cdef.name)
                    if evaluate(query.where, i, self._schema_of(i), self._is_a(i.namespace))
                ]
            except WqlError as exc:
                raise self._filter_fault(f"The query is not valid: {exc}. ", text) from exc
            return items, query.props
        try:
            src_ns = query.path.namespace or res.namespace
            src = query.path.to_ref(src_ns, self._keys_of(src_ns, query.path.class_name))
        except WqlError as exc:
            raise self._filter_fault(f"The object path is not valid: {exc}. ", text) from exc
        src = self._canonical_ref(src)
        if isinstance(query, AssociatorsQuery):
            target.class_name = query.result_class or query.assoc_class or src.class_name
            return self._associators(src, query.assoc_class, query.result_class, role=query.role,
                                     result_role=query.result_role, query=text), None
        assert isinstance(query, ReferencesQuery)
        target.class_name = query.result_class or src.class_name
        return self._references(src, query.result_class, query.role, text), None

    def _keys_of(self, namespace: str, class_name: str) -> Tuple[str, ...]:
        try:
            cdef = self.repo.class_def(self._canonical_namespace(namespace), class_name)
        except WsmanFault:
            return ()
        return cdef.keys if cdef else ()

    def _schema_of(self, inst: CimInstance) -> ClassDef | None:
        key = (inst.namespace.lower(), inst.class_name.lower())
        if key in self._schema_cache:
            return self._schema_cache[key]
        cdef = self.repo.class_def(inst.namespace, inst.class_name)
        view = None if cdef is None else _schema_view(self._all_props(inst.namespace, inst.class_name), cdef)
        self._schema_cache[key] = view
        return view

    def _is_a(self, namespace: str) -> Callable[[str, str], bool]:
        return lambda cls, base: self.repo.is_a(namespace, cls, base)

    def _run_association_filter(self, res: _Resource, filt: Any, target: _Target) -> List[_Item]:
        node = _find(filt, NS_B, "AssociatedInstances")
        kind = "AssociatedInstances"
        if node is None:
            node = _find(filt, NS_B, "AssociationInstances")
            kind = "AssociationInstances"
        if node is None:
            raise self._filter_fault("The association filter needs b:AssociatedInstances or "
                                     "b:AssociationInstances. ", None)
        obj = _find(node, NS_B, "Object")
        if obj is None:
            raise self._filter_fault("The association filter needs b:Object. ", None)
        src = self._ref_from_epr(obj)

        def opt(name: str) -> str | None:
            return _text(_find(node, NS_B, name)) or None

        target.filter_text = f"{kind} of {src.class_name}"
        if kind == "AssociatedInstances":
            target.class_name = opt("ResultClassName") or opt("AssociationClassName") or src.class_name
            return self._associators(src, opt("AssociationClassName"), opt("ResultClassName"),
                                     role=opt("Role"), result_role=opt("ResultRole"), query=None)
        target.class_name = opt("ResultClassName") or src.class_name
        return self._references(src, opt("ResultClassName"), opt("Role"), None)

    def _run_selector_filter(self, res: _Resource, filt: Any) -> List[_Item]:
        sset = _find(filt, NS_W, "SelectorSet")
        wanted = [(n.lower(), v) for n, v in self._selectors(sset) if isinstance(v, str)]
        assert res.class_name is not None
        return [
            _Item(i, i.path) for i in self.repo.instances(res.namespace, res.class_name)
            if all(str(i.get(n, "")) == v for n, v in wanted)
        ]

    def _check_class(self, namespace: str, name: str | None, query: str | None) -> str | None:
        if name is None:
            return None
        cdef = self.repo.class_def(namespace, name)
        if cdef is None:
            raise self._filter_fault("", query, class_missing=True)
        return cdef.name

    def _link_instances(
        self, namespace: str, assoc_class: str | None, query: str | None,
    ) -> List[CimInstance]:
        if assoc_class is not None:
            return list(self.repo.instances(namespace, assoc_class))
        names: Iterable[str] | None = None
        lister = getattr(self.repo, "class_names", None)
        if callable(lister):
            names = lister(namespace)
        if names is None:
            raise self._filter_fault("The simulator needs an association class name (AssocClass) here: its "
                                     "repository does not list classes. ", query)
        out: List[CimInstance] = []
        seen: set[int] = set()
        for n in names:
            cdef = self.repo.class_def(namespace, n)
            if cdef is None or not cdef.is_association:
                continue
            for inst in self.repo.instances(namespace, cdef.name):
                if id(inst) not in seen:
                    seen.add(id(inst))
                    out.append(inst)
        return out

    def _ref_props(self, link: CimInstance) -> List[str]:
        schema = self._all_props(link.namespace, link.class_name)
        names = [p.name for p in schema if p.cim_type == "reference"]
        if not names:
            names = [k for k, v in link.properties.items() if isinstance(v, CimRef)]
        return names

    def _source_exists(self, src: CimRef) -> None:
        try:
            self.repo.get(src)
        except CimError as err:
            fault = fault_from_cim_error(err, "Enumerate")
            raise fault from err

    def _associators(self, src: CimRef, assoc_class: str | None, result_class: str | None, *,
                     role: str | None, result_role: str | None, query: str | None) -> List[_Item]:
        ns = src.namespace
        assoc_class = self._check_class(ns, assoc_class, query)
        result_class = self._check_class(ns, result_class, query)
        self._source_exists(src)
        out: List[_Item] = []
        seen: List[CimRef] = []
        for link in self._link_instances(ns, assoc_class, query):
            ref_names = self._ref_props(link)
            src_roles = [n for n in ref_names
                         if isinstance(link.get(n), CimRef) and link.get(n).same_as(src)
                         and (role is None or n.lower() == role.lower())]
            if not src_roles:
                continue
            for n in ref_names:
                if n in src_roles and len(src_roles) == 1:
                    continue
                if result_role is not None and n.lower() != result_role.lower():
                    continue
                far = link.get(n)
                if not isinstance(far, CimRef) or any(far.same_as(s) for s in seen):
                    continue
                try:
                    inst = self.repo.get(far)
                except CimError:
                    continue  # a dangling link end: WMI skips it
                if result_class is not None and not self.repo.is_a(
                        inst.namespace, inst.class_name, result_class):
                    continue
                seen.append(far)
                out.append(_Item(inst, inst.path or far))
        return out

    def _references(self, src: CimRef, result_class: str | None, role: str | None,
                    query: str | None) -> List[_Item]:
        ns = src.namespace
        result_class = self._check_class(ns, result_class, query)
        self._source_exists(src)
        out: List[_Item] = []
        for link in self._link_instances(ns, result_class, query):
            for n in self._ref_props(link):
                v = link.get(n)
                if isinstance(v, CimRef) and v.same_as(src) and (role is None or n.lower() == role.lower()):
                    out.append(_Item(link, link.path))
                    break
        return out

    # ------------------------------------------------------------------ Invoke

    def _invoke(self, res: _Resource, method: str, selectors: Sequence[Tuple[str, Any]], *, req: Any,
                action: str,
                target: _Target, limit: int) -> bytes:
        cdef = res.class_def
        if cdef is None:
            raise WsmanFault("a:DestinationUnreachable", TEXT_INVALID_URI,
                             wsman_code=ERROR_WSMAN_INVALID_RESOURCE_URI,
                             detail=FAULT_DETAIL + "InvalidResourceURI",
                             message=f"{TEXT_INVALID_URI}Invoke needs a class resource URI. ")
        mdef = self._method_def(res.namespace, cdef, method)
        if mdef is None:
            raise WsmanFault("a:ActionNotSupported", TEXT_ACTION_NOT_SUPPORTED, provider=True,
                             message=f"The WS-Management service cannot process the request. The WMI service "
                                     f"returned an 'invalid method' error. ({cdef.name}.{method}) ")
        target.method = mdef.name
        if mdef.static:
            ref = CimRef(res.namespace, cdef.name, ())
        else:
            ref = self._ref_from_selectors(res, selectors)
            inst = self.repo.get(ref)
            ref = inst.path or ref
        params = self._decode_inputs(res, mdef, req)
        outcome = self.repo.invoke(ref, mdef.name, params)
        if mdef.void and outcome.return_value != 0:
            # A void method cannot return a code: the provider's failure becomes a fault.
            raise CimError("w:InternalError", TEXT_INTERNAL, wsman_code=2150859010, wmi_status={
                "Description": f"{mdef.name} failed with error {outcome.return_value}",
                "Operation": "ExecMethod", "ProviderName": "MS_CLUSTER_PROVIDER",
                "StatusCode": outcome.return_value})
        env, _h, body = self._envelope(action + "Response", target.message_id)
        out_el = etree.SubElement(body, _q(res.uri.split("?", 1)[0], f"{mdef.name}_OUTPUT"),
                                  nsmap={"p": res.uri.split("?", 1)[0], "cim": NS_CIM, "xsi": NS_XSI})
        class_uri = res.uri.split("?", 1)[0]
        out_values = {k.lower(): v for k, v in outcome.out.items()}
        for p in mdef.out_params:
            if p.name.lower() == "returnvalue":
                continue
            value = out_values.get(p.name.lower())
            self._append_value(out_el, _q(class_uri, p.name), p, value, res.namespace)
        if not mdef.void:
            etree.SubElement(out_el, _q(class_uri, "ReturnValue")).text = str(int(outcome.return_value))
        return self._checked(env, limit)

    def _method_def(self, namespace: str, cdef: ClassDef, method: str) -> MethodDef | None:
        c: ClassDef | None = cdef
        depth = 0
        while c is not None and depth < 32:
            m = c.method(method)
            if m is not None:
                return m
            c = self.repo.class_def(namespace, c.superclass) if c.superclass else None
            depth += 1
        return None

    def _decode_inputs(self, res: _Resource, mdef: MethodDef, req: Any) -> Dict[str, Any]:
        want = f"{mdef.name}_INPUT".lower()
        if req is None:
            if mdef.in_params:
                raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                                 "corresponding XML schema definition. Change the XML and retry. ",
                                 message=f"The body must hold p:{mdef.name}_INPUT. ")
            return {}
        if _local(req).lower() != want:
            raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                             "corresponding XML schema definition. Change the XML and retry. ",
                             message=f"The body holds {_local(req)}, expected {mdef.name}_INPUT. ")
        grouped: Dict[str, List[Any]] = {}
        defs: Dict[str, PropDef] = {}
        for el in _elements(req):
            name = _local(el)
            pdef = next((p for p in mdef.in_params if p.name.lower() == name.lower()), None)
            if pdef is None:
                raise WsmanFault("w:InvalidParameter", TEXT_INVALID_PARAMETER,
                                 wsman_code=ERROR_WSMAN_INVALID_PARAMETER_NAME,
                                 detail=FAULT_DETAIL + "InvalidName",
                                 provider=True,
                                 message=f"The WS-Management service cannot process the request. A parameter "
                                         f"name is invalid: {name} is not a parameter of {mdef.name}. ")
            defs[pdef.name] = pdef
            grouped.setdefault(pdef.name, []).append(el)
        params: Dict[str, Any] = {}
        for name, els in grouped.items():
            pdef = defs[name]
            if not pdef.is_array and len(els) > 1:
                raise self._invalid_value(f"Parameter {name} of {mdef.name} is not an array but was sent "
                                          f"{len(els)} times.")
            values = [self._decode_param(e, pdef, res.namespace) for e in els]
            if pdef.is_array:
                nil_array = len(values) == 1 and values[0] is None and _is_nil(els[0])
                params[name] = None if nil_array else values
            else:
                params[name] = values[0]
        return params

    def _decode_param(self, el: Any, pdef: PropDef, namespace: str) -> Any:
        if _is_nil(el):
            return None
        t = pdef.cim_type
        try:
            if t == "reference":
                if not _elements(el):
                    # A REF parameter is an EPR in the method's schema (hyperv-wmi.md trap 3); a WMI
                    # object-path string there, which DCOM clients such as os-win pass, is refused.
                    raise WsmanFault("w:SchemaValidationError", TEXT_SCHEMA_VALIDATION,
                                     wsman_code=ERROR_WSMAN_SCHEMA_VALIDATION_ERROR,
                                     message=f"Parameter {pdef.name} is a reference: it needs an endpoint "
                                             f"reference (a:Address and a:ReferenceParameters), not text. ")
                return self._ref_from_epr(el)
            if t == "instance":
                return self._decode_embedded(el, pdef, namespace)
            if t == "datetime":
                dt_el = _find(el, NS_CIM, "Datetime")
                if dt_el is not None:
                    return parse_xs_datetime(dt_el.text or "")
                iv_el = _find(el, NS_CIM, "Interval")
                if iv_el is not None:
                    return CimInterval(parse_duration(iv_el.text or ""))
                text = (el.text or "").strip()
                try:
                    return cimxml.parse_datetime(text)
                except cimxml.CimXmlError:
                    return parse_xs_datetime(text)
            text = el.text or ""
            value = cimxml.parse_scalar(text, t)
            if t in INT_TYPES:
                lo, hi = _INT_RANGES[t]
                if not lo <= value <= hi:
                    raise ValueError(f"{value} is out of range for {t}")
            return value
        except (ValueError, cimxml.CimXmlError) as exc:
            raise self._invalid_value(
                f"The value of parameter {pdef.name} is not a valid {t}: {exc}.") from exc

    def _decode_embedded(self, el: Any, pdef: PropDef, namespace: str) -> CimInstance | None:
        kids = _elements(el)
        lookup = self._class_lookup(namespace)
        if kids:
            node = kids[0]
            if _local(node).upper() == "INSTANCE":
                return cimxml.parse_instance(node, namespace=namespace, class_lookup=lookup)
            # A WS-Man element tree (<p:Class><p:Prop>...) is not an embedded instance to Windows:
            # it answers SchemaValidationError (hyperv-wmi.md §1.10, trap 2).
            raise WsmanFault("w:SchemaValidationError", TEXT_SCHEMA_VALIDATION,
                             wsman_code=ERROR_WSMAN_SCHEMA_VALIDATION_ERROR,
                             message=f"Parameter {pdef.name} must hold CIM-XML INSTANCE text, not the element "
                                     f"{_local(node)}. ")
        text = (el.text or "").strip()
        if not text:
            return None
        try:
            return cimxml.parse_instance(text, namespace=namespace, class_lookup=lookup)
        except cimxml.CimXmlError as exc:
            raise WsmanFault("w:SchemaValidationError", "The SOAP XML in the message does not match the "
                             "corresponding XML schema definition. Change the XML and retry. ",
                             provider=True,
                             message=f"Parameter {pdef.name} must hold a CIM-XML INSTANCE: {exc}. ") from exc


def _schema_view(props: Tuple[PropDef, ...], base: ClassDef | None = None) -> ClassDef:
    """A ClassDef whose ``properties`` include inherited ones (for WQL checks and projection)."""
    if base is None:
        return ClassDef(name="", superclass=None, keys=(), properties=props)
    return dataclasses.replace(base, properties=props)
