"""Exception hierarchy of bareos-hyperv.

One root, ``BareosHyperVError``, with keyword context fields and a ``what_to_do``
hint, plus one category base per layer.  Errors are raised where the cause is
known; the fd side translates them once into a Bareos job message.

Standard library only: the fd imports this module inside the Bareos daemon.
Never put a password (or any secret) into ``message``, ``context`` or
``what_to_do``.
"""

from __future__ import annotations

from typing import Mapping, Optional


class BareosHyperVError(Exception):
    """Root of every error this product raises on purpose.

    :param message: one sentence saying what went wrong.
    :param what_to_do: one sentence telling the operator what to check or change.
    :param context: named facts (host, VM, path, operation, ...) shown with the message.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        what_to_do: Optional[str] = None,
        context: Optional[Mapping[str, object]] = None,
    ) -> None:
        self.message = message
        self.what_to_do = what_to_do
        self.context: dict[str, object] = dict(context or {})
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [self.message]
        facts = ", ".join(f"{k}={v}" for k, v in self.context.items() if v is not None and v != "")
        if facts:
            parts.append(f"({facts})")
        if self.what_to_do:
            parts.append(f"- {self.what_to_do}")
        return " ".join(parts)


class ConfigurationError(BareosHyperVError):
    """An option, credentials file or plugin string is wrong."""

    kind = "configuration"


class WsmanError(BareosHyperVError):
    """WS-Management transport, fault or protocol problem."""

    kind = "wsman"


class HyperVError(BareosHyperVError):
    """Hyper-V or failover-cluster operation failed or found something unexpected."""

    kind = "hyperv"


class StorageError(BareosHyperVError):
    """Reading or writing disk/config files (SMB or local) failed, or a file is malformed."""

    kind = "storage"


class ManifestError(BareosHyperVError):
    """The backup manifest is missing, invalid or inconsistent."""

    kind = "manifest"


class PlanError(BareosHyperVError):
    """A restore cannot be planned onto the chosen destination."""

    kind = "plan"


class ProtocolError(BareosHyperVError):
    """The fd <-> agent protocol was violated (version mismatch, bad frame, agent died)."""

    kind = "protocol"
