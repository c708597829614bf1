"""The job's connections to Hyper-V (WinRM) and to its storage (SMB or local), built from the options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Mapping

from bareos_hyperv.hyperv.connection import Connector, parse_host_map
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.storage.base import Storage
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocationResolver, parse_path_map, parse_share_map
from bareos_hyperv.wsman.transport import TransportOptions

__all__ = ["Connections", "connect"]


def _split(value: str, sep: str = ",") -> List[str]:
    return [p.strip() for p in value.split(sep) if p.strip()]


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


def connect(opts: Mapping[str, str], credentials: Credentials) -> Connections:
    """Connections as the options describe them (nothing is contacted yet)."""
    transport = TransportOptions(
        transport=opts.get("transport", "ntlm"),
        cert_validation=opts.get("cert_validation", "yes") == "yes",
        ca_trust_path=opts.get("ca_trust_path") or None,
    )
    port = opts.get("port")
    connector = Connector(credentials, transport, https=opts.get("https", "no") == "yes",
                          port=int(port) if port else None, host_map=parse_host_map(opts.get("host_map", "")))
    local = opts.get("data", "smb") == "local"
    resolver = LocationResolver(parse_share_map(_split(opts.get("share_map", ""), ";")),
                                parse_path_map(_split(opts.get("path_map", ""), ";")), local=local)
    storage: Storage
    if local:
        storage = LocalStorage()
    else:
        from bareos_hyperv.storage.smb import SmbOptions, SmbStorage  # smbprotocol only when used

        smb_options = SmbOptions(encrypt=opts.get("smb_encrypt", "no") == "yes")
        if opts.get("smb_mover"):
            smb_options = dataclasses.replace(smb_options, mover=opts["smb_mover"])
        smb_map = {k: (a, p or 445) for k, (a, p) in parse_host_map(opts.get("smb_host_map", "")).items()}
        storage = SmbStorage.from_credentials(credentials, endpoints=smb_map, options=smb_options)
    return Connections(connector, storage, resolver)
