"""One CIM client per Hyper-V node, reached through an explicit host-name -> endpoint map.

In a cluster the product talks to several nodes during one job (the VM's owner,
the node it migrated to).  Real deployments resolve node names by DNS and use the
WinRM default ports; NAT set-ups and the simulator put each node at its own
address and port.  ``host_map`` covers both: ``NODE=address[:port]`` entries,
anything unmapped goes to ``NODE:5985`` (HTTP) or ``NODE:5986`` (HTTPS).
"""

from __future__ import annotations

from typing import Mapping, Optional

from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.options import parse_host_map  # re-exported: the parser is pure, the fd uses it too
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.transport import Endpoint, TransportOptions

__all__ = ["DEFAULT_HTTPS_PORT", "DEFAULT_HTTP_PORT", "Connector", "parse_host_map"]

DEFAULT_HTTP_PORT = 5985
DEFAULT_HTTPS_PORT = 5986


class Connector:
    """Creates and caches one :class:`CimClient` per node for the duration of a job.

    :param credentials: account valid on every node (a cluster uses one domain account).
    :param options: transport options shared by all nodes.
    :param https: use HTTPS (port 5986 by default) instead of HTTP with message encryption.
    :param port: WinRM port for nodes that the map does not give one.
    :param host_map: explicit endpoints by node name (see :func:`parse_host_map`).
    """

    def __init__(
        self,
        credentials: Credentials,
        options: TransportOptions,
        *,
        https: bool = False,
        port: Optional[int] = None,
        host_map: Optional[Mapping[str, tuple[str, Optional[int]]]] = None,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.https = https
        self.port = port or (DEFAULT_HTTPS_PORT if https else DEFAULT_HTTP_PORT)
        self.host_map = {k.upper(): v for k, v in (host_map or {}).items()}
        self._clients: dict[str, CimClient] = {}

    def endpoint(self, host: str) -> Endpoint:
        """Where the node's WinRM listener is."""
        address, port = self.host_map.get(host.upper(), (host, None))
        return Endpoint(host=address, port=port or self.port, https=self.https, name=host.upper())

    def client(self, host: str) -> CimClient:
        """The client for a node (one per node and job; connections are reused)."""
        key = host.upper()
        if key not in self._clients:
            self._clients[key] = CimClient(self.endpoint(host), self.credentials, self.options)
        return self._clients[key]

    @property
    def round_trips(self) -> int:
        """SOAP requests sent through every client of this connector."""
        return sum(c.request_count for c in self._clients.values())

    def close(self) -> None:
        """Close every client's HTTP session."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
