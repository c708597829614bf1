"""The job's connections to Hyper-V (WinRM) and to its storage (SMB or local), built from the typed options.

The one place that turns :class:`~bareos_hyperv.model.options.ConnectionOptions` into clients: the
backup (through its :class:`~bareos_hyperv.backup.context.SourceContext`), the restore, the cleanup
and the command line all come here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.options import ConnectionOptions, DataPlane, endpoint_map
from bareos_hyperv.storage.base import Storage
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocationResolver
from bareos_hyperv.wsman.transport import TransportOptions

__all__ = ["SMB_PORT", "Connections", "connect", "make_connector"]

SMB_PORT = 445


@dataclass
class Connections:
    """WinRM clients per node, the data plane, and how host paths map onto it."""

    connector: Connector
    storage: Storage
    resolver: LocationResolver

    def close(self) -> None:
        """Disconnect both planes (idempotent)."""
        try:
            self.storage.close()
        finally:
            self.connector.close()


def make_connector(options: ConnectionOptions, credentials: Credentials) -> Connector:
    """The WinRM connector the options describe (nothing is contacted yet)."""
    transport = TransportOptions(transport=options.transport.value, cert_validation=options.cert_validation,
                                 ca_trust_path=options.ca_trust_path)
    if options.operation_timeout is not None:
        transport = dataclasses.replace(transport, operation_timeout=options.operation_timeout)
    return Connector(credentials, transport, https=options.https, port=options.port,
                     host_map=endpoint_map(options.host_map))


def connect(options: ConnectionOptions, credentials: Credentials) -> Connections:
    """Connections as the options describe them (nothing is contacted yet)."""
    local = options.data is DataPlane.LOCAL
    resolver = LocationResolver(options.share_map, options.path_map, local=local)
    storage: Storage
    if local:
        storage = LocalStorage()
    else:
        from bareos_hyperv.storage.smb import SmbOptions, SmbStorage  # smbprotocol only when used

        smb_options = SmbOptions(encrypt=options.smb_encrypt)
        if options.smb_mover is not None:  # unset: the agent's environment or smbprotocol decides
            smb_options = SmbOptions(encrypt=options.smb_encrypt, mover=options.smb_mover.value)
        smb_map = {node: (address, port or SMB_PORT)
                   for node, (address, port) in endpoint_map(options.smb_host_map).items()}
        storage = SmbStorage.from_credentials(credentials, endpoints=smb_map, options=smb_options)
    return Connections(make_connector(options, credentials), storage, resolver)
