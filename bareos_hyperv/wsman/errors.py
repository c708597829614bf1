"""Errors of the WS-Management layer (all subclasses of :class:`bareos_hyperv.errors.WsmanError`).

SOAP faults have their own family in :mod:`bareos_hyperv.wsman.faults`; this module
holds what goes wrong before or around a fault: authentication, TLS, connection,
HTTP status without a fault, protocol violations, and CIM data problems.
None of these ever carries a password: only user names, hosts and options.
"""

from __future__ import annotations

from typing import Mapping, Optional

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
        what_to_do: Optional[str] = None,
        context: Optional[Mapping[str, object]] = None,
    ) -> None:
        self.status = status
        super().__init__(message, what_to_do=what_to_do, context=context)


class WsmanProtocolError(WsmanError):
    """The response broke the WS-Management protocol (bad XML, wrong RelatesTo, unexpected body)."""


class CimDataError(WsmanError):
    """A CIM instance, CIM-XML text or CIM value is missing, malformed or of the wrong type."""
