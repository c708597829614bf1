"""Errors of the WS-Management layer (all subclasses of :class:`bareos_hyperv.errors.WsmanError`).

Two families: what goes wrong before or around a SOAP exchange (authentication, TLS,
connection, HTTP status without a fault, protocol violations, CIM data problems),
and SOAP faults (:class:`WsmanFault` and its category subclasses; built by
:func:`bareos_hyperv.wsman.faults.parse_fault`).  None of these ever carries a
password: only user names, hosts, options and what the server said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping

from bareos_hyperv.errors import WsmanError


class AuthenticationError(WsmanError):
    """The host rejected the credentials (HTTP 401)."""


class TlsVerificationError(WsmanError):
    """The host's HTTPS certificate could not be verified."""


class WsmanConnectionError(WsmanError):
    """The host could not be reached, or the connection broke during a request."""


class WsmanHttpError(WsmanError):
    """The host answered with an HTTP error status and no SOAP fault."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        what_to_do: str | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.status = status
        super().__init__(message, what_to_do=what_to_do, context=context)


class WsmanProtocolError(WsmanError):
    """The response broke the WS-Management protocol (bad XML, wrong RelatesTo, unexpected body)."""


class CimDataError(WsmanError):
    """A CIM instance, CIM-XML text or CIM value is missing, malformed or of the wrong type."""


# --------------------------------------------------------------------------- SOAP faults


# CIM status codes (DSP0200 "CIM Operations over HTTP", table of CIM_ERR_* values) as they
# appear in MSFT_WmiError.CIMStatusCode; only the names a reader of an error needs.
CIM_STATUS_NAMES: Dict[int, str] = {
    1: "CIM_ERR_FAILED",
    2: "CIM_ERR_ACCESS_DENIED",
    3: "CIM_ERR_INVALID_NAMESPACE",
    4: "CIM_ERR_INVALID_PARAMETER",
    5: "CIM_ERR_INVALID_CLASS",
    6: "CIM_ERR_NOT_FOUND",
    7: "CIM_ERR_NOT_SUPPORTED",
    27: "CIM_ERR_SERVER_LIMITS_EXCEEDED",
}

# HRESULTs worth a name in messages: WMI's own (WbemCli.h, "WMI Error Constants") and the
# WinRM quota codes (wsmerror.h as PowerShell's CimChildJobBase.cs copies it).
HRESULT_NAMES: Dict[int, str] = {
    0x80041001: "WBEM_E_FAILED",
    0x80041002: "WBEM_E_NOT_FOUND",
    0x80041003: "WBEM_E_ACCESS_DENIED",
    0x80041004: "WBEM_E_PROVIDER_FAILURE",
    0x80041008: "WBEM_E_INVALID_PARAMETER",
    0x8004100E: "WBEM_E_INVALID_NAMESPACE",
    0x80041010: "WBEM_E_INVALID_CLASS",
    0x80041011: "WBEM_E_PROVIDER_NOT_FOUND",
    0x80070005: "E_ACCESSDENIED",
    0x8033803F: "ERROR_WSMAN_QUOTA_LIMIT",
    0x803381A5: "ERROR_WSMAN_QUOTA_MAX_SHELLS",
    0x803381A6: "ERROR_WSMAN_QUOTA_MAX_OPERATIONS",
    0x803381A7: "ERROR_WSMAN_QUOTA_USER",
    0x803381A8: "ERROR_WSMAN_QUOTA_SYSTEM",
    0x803381AB: "ERROR_WSMAN_QUOTA_MAX_SHELLUSERS",
}


@dataclass(frozen=True)
class WmiError:
    """The WMI error object of a fault (``__ExtendedStatus`` or ``MSFT_WmiError``), wherever it was placed.

    ``status_code`` is the HRESULT (``__ExtendedStatus.StatusCode``, ``MSFT_WmiError.error_Code``,
    or the one ``MessageID`` names); ``cim_status_code`` the DSP0200 code of ``MSFT_WmiError``.
    """

    class_name: str
    description: str | None = None
    operation: str | None = None
    parameter_info: str | None = None
    provider_name: str | None = None
    status_code: int | None = None
    message_id: str | None = None
    properties: Dict[str, object] = field(default_factory=dict, compare=False)
    cim_status_code: int | None = None
    error_type: str | None = None

    def summary(self, *, with_description: bool = True) -> str:
        """One line of the fields present: message, HRESULT, CIM status, operation, target, provider."""
        parts = []
        if self.description and with_description:
            parts.append(self.description)
        if self.status_code is not None:
            kind = self.error_type or "HRESULT"
            name = HRESULT_NAMES.get(self.status_code & 0xFFFFFFFF)
            parts.append(f"{kind} 0x{self.status_code & 0xFFFFFFFF:08X}" + (f" {name}" if name else ""))
        if self.cim_status_code is not None:
            name = CIM_STATUS_NAMES.get(self.cim_status_code)
            parts.append(f"CIM status {self.cim_status_code}" + (f" {name}" if name else ""))
        if self.operation:
            parts.append(f"operation {self.operation}")
        if self.parameter_info:
            parts.append(f"on {self.parameter_info}")
        if self.provider_name:
            parts.append(f"provider {self.provider_name}")
        return ", ".join(parts)


def _code_text(code: int | None) -> str | None:
    """A WSManFault code as Windows prints it (decimal), with its hex form and name when it is an HRESULT."""
    if code is None:
        return None
    if code & 0xFFFFFFFF <= 0xFFFF:
        return str(code)  # a Win32 error such as 5 (access denied)
    name = HRESULT_NAMES.get(code & 0xFFFFFFFF)
    return f"{code} (0x{code & 0xFFFFFFFF:08X}{' ' + name if name else ''})"


def _squash(text: str) -> str:
    return " ".join(text.split()).rstrip(". ").lower()


class WsmanFault(WsmanError):
    """A SOAP fault returned by WinRM.  Category subclasses below; this class catches them all."""

    what_to_do_default = "check the request target and the host's WinRM/WMI event logs"

    def __init__(
        self,
        *,
        host: str,
        action: str,
        resource_uri: str | None,
        http_status: int | None = None,
        code: str | None = None,
        subcode: str | None = None,
        reason: str | None = None,
        fault_detail: str | None = None,
        wsman_code: int | None = None,
        machine: str | None = None,
        wsman_message: str | None = None,
        provider: str | None = None,
        provider_path: str | None = None,
        provider_message: str | None = None,
        wmi_error: WmiError | None = None,
    ) -> None:
        self.host = host
        self.action = action
        self.resource_uri = resource_uri
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.reason = reason
        self.fault_detail = fault_detail
        self.wsman_code = wsman_code
        self.machine = machine
        self.wsman_message = wsman_message
        self.provider = provider
        self.provider_path = provider_path
        self.provider_message = provider_message
        self.wmi_error = wmi_error
        operation = action.rsplit("/", 1)[-1]
        text = (reason or wsman_message or provider_message or (wmi_error.description if wmi_error else None)
                or "no details returned by the server")
        extra: list[str] = []
        for detail in (wsman_message, provider_message):
            if not detail or detail in text:
                continue
            if text in detail:
                # WinRM often repeats the reason and then adds the useful part ("Unexpected: X").
                text = detail
            else:
                extra.append(detail)
        extra = [m for m in extra if m not in text]
        message = f"WS-Management {operation} on {host} failed: {text}"
        if extra:
            message += " " + " ".join(dict.fromkeys(extra))
        if wmi_error is not None:
            # The WMI error is often the only place that says what went wrong and with which code;
            # its message is left out when WinRM already repeated it in the reason.
            repeated = bool(wmi_error.description) and _squash(wmi_error.description or "") in _squash(message)
            summary = wmi_error.summary(with_description=not repeated)
            if summary:
                message += f" WMI error: {summary}"
        context: Dict[str, object] = {
            "resource": resource_uri,
            "fault": subcode or code,
            "detail": fault_detail.rsplit("/", 1)[-1] if fault_detail else None,
            "wsman_code": _code_text(wsman_code),
            "machine": machine,
            "provider": provider,
        }
        super().__init__(message, what_to_do=self.what_to_do_default, context=context)

    @property
    def subcode_name(self) -> str | None:
        """Local part of the subcode (``InvalidSelectors`` for ``w:InvalidSelectors``)."""
        return self.subcode.rsplit(":", 1)[-1] if self.subcode else None

    @property
    def codes(self) -> tuple[int, ...]:
        """Every error code the fault carries (WSManFault code, WMI HRESULT), unsigned 32-bit."""
        found = [self.wsman_code, self.wmi_error.status_code if self.wmi_error else None]
        return tuple(dict.fromkeys(c & 0xFFFFFFFF for c in found if c is not None))

    @property
    def cim_status(self) -> int | None:
        """The DSP0200 CIM status code of the WMI error, when the fault carries one."""
        return self.wmi_error.cim_status_code if self.wmi_error else None


class NotFoundFault(WsmanFault):
    """The URI and selectors name no instance (deleted VM, job already purged, wrong class)."""

    what_to_do_default = (
        "the object does not exist (any more) on this host; on a cluster it may have "
        "moved to another node - resolve it again"
    )


class AccessDeniedFault(WsmanFault):
    """The account may not perform this operation."""

    what_to_do_default = (
        "use an account in the host's Administrators or Hyper-V Administrators group "
        "with remote WMI access to this namespace (Hyper-V Administrators also needs Remote Management "
        "Users; a local, non-domain account in Administrators also needs LocalAccountTokenFilterPolicy=1, "
        "or use a domain account)"
    )


class InvalidSelectorsFault(WsmanFault):
    """Wrong or missing key selectors for the resource."""

    what_to_do_default = "check the key properties used to address the instance"


class InvalidParameterFault(WsmanFault):
    """A parameter value is malformed."""

    what_to_do_default = "check the parameter values sent with the request"


class TimedOutFault(WsmanFault):
    """The operation did not finish within the OperationTimeout."""

    what_to_do_default = "raise operation_timeout or check the host's load; enumerations may be retried"


class EncodingLimitFault(WsmanFault):
    """The response (or request) would exceed MaxEnvelopeSize or another encoding limit."""

    what_to_do_default = "lower max_elements or raise the host's MaxEnvelopeSizekb"


class InvalidFilterFault(WsmanFault):
    """The enumeration filter was rejected (bad WQL, unknown class or dialect)."""

    what_to_do_default = "check the class name and namespace of the query; the host may lack the role"


class SchemaValidationFault(WsmanFault):
    """The body does not match the method or instance schema."""

    what_to_do_default = "check the parameter names, their order and the embedded instance form"


class InvalidHeaderFault(WsmanFault):
    """A SOAP header was rejected (timeout, locale, size)."""

    what_to_do_default = "check operation_timeout and max_envelope_size against the host's WinRM limits"


class InternalErrorFault(WsmanFault):
    """The provider failed; the WMI error tells why."""


class QuotaLimitFault(WsmanFault):
    """The account has too many WinRM shells or operations open on the host (a per-user quota).

    WinRM reports it as ``w:QuotaLimit`` or as ``w:InternalError`` with the quota code in
    ``MSFT_WmiError.error_Code`` (0x803381A6 ERROR_WSMAN_QUOTA_MAX_OPERATIONS and relatives).
    """

    what_to_do_default = (
        "the account has too many WinRM shells or operations open on this host (other jobs, monitoring, "
        "remote PowerShell sessions): wait for them to end or close them, run fewer jobs against the host "
        "at once, or raise the quota (winrm set winrm/config/service @{MaxConcurrentOperationsPerUser=\"...\"}, "
        "winrm set winrm/config/winrs @{MaxShellsPerUser=\"...\"})"
    )
