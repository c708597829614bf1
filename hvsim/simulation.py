"""A running simulated Hyper-V estate: world + one WinRM endpoint (and optionally one smbd) per node.

Used by the integration tests and by ``make demo``::

    with Simulation(tmp_path) as sim:
        sim.host_map()          # {"HV01": ("127.0.0.1", 41234), "HVCLUSTER01": (...), ...}
        sim.user, sim.password  # one account valid on every node, as a domain account is

Each node is served on its own port (HTTP with NTLM message encryption, and HTTPS
signed by one throwaway CA whose file is :attr:`ca_path`).  The cluster name
resolves to the first node, as a cluster name lands on the node owning the core
cluster group.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hvsim.faults import FaultPlan
from hvsim.requestlog import RequestLog
from hvsim.samba import SambaCluster
from hvsim.server import WsmanServer
from hvsim.tls import CertificateAuthority
from hvsim.world.node import NodeRepository
from hvsim.world.scenario import default_world
from hvsim.world.state import World
from hvsim.wsman import Dispatcher

DEFAULT_USER = "bareos"


@dataclass
class SimNode:
    """One simulated node: its WMI view, WS-Man dispatcher and WinRM server."""

    name: str
    repo: NodeRepository
    dispatcher: Dispatcher
    server: WsmanServer


class Simulation:
    """Start and stop everything a simulated estate needs, bound to 127.0.0.1 only.

    :param root: directory for the nodes' filesystems and server state (must exist).
    :param world: the estate to serve; default :func:`hvsim.world.scenario.default_world`.
    :param samba: also start one real smbd per node serving its ``C$`` (and ``D$``), and one per
        simulated file server serving its shares (:meth:`hvsim.fs.ClusterFileSystem.add_file_share`).
    :param https: also listen with HTTPS on every node.
    :param faults: fault plan shared by servers, dispatchers and the world.
    """

    def __init__(
        self,
        root: Path,
        *,
        world: Optional[World] = None,
        samba: bool = False,
        https: bool = True,
        faults: Optional[FaultPlan] = None,
        user: str = DEFAULT_USER,
        password: Optional[str] = None,
        smb_encrypt: bool = False,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.faults = faults if faults is not None else (world.faults if world is not None else FaultPlan())
        self.world = world if world is not None else default_world(root / "estate", faults=self.faults)
        self.log = RequestLog()
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(16)
        self._want_samba = samba
        self._https = https
        self._smb_encrypt = smb_encrypt
        self.nodes: dict[str, SimNode] = {}
        self.samba: Optional[SambaCluster] = None
        self.ca: Optional[CertificateAuthority] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Simulation:
        """Start a WinRM server per node (and Samba when asked); stop all on any failure."""
        try:
            if self._https:
                ca_dir = self.root / "ca"
                ca_dir.mkdir(parents=True, exist_ok=True)
                self.ca = CertificateAuthority(str(ca_dir))
            for name in sorted(self.world.nodes):
                repo = NodeRepository(self.world, name)
                dispatcher = Dispatcher(repo, self.faults, self.log)
                server = WsmanServer(dispatcher.handle, users={self.user: self.password}, node=name,
                                     https=self._https, faults=self.faults, ca=self.ca)
                server.start()
                self.nodes[name] = SimNode(name, repo, dispatcher, server)
            if self._want_samba:
                shares = {name: self.world.fs.share_dir(name) for name in self.world.nodes}
                extra = {name: {"D$": self.world.fs.share_dir(name, "D")} for name in self.world.nodes}
                # Admin shares the account may not use on each node (hvsim.rights: not an
                # administrator there, or a local administrator whose token UAC filters).
                denied = {name: [s for s in ("C$", "D$") if self.world.nodes[name].rights.denies_share(s)]
                          for name in self.world.nodes}
                # File servers of Hyper-V over SMB (hvsim.fs): one smbd per server with its shares, so
                # \\FS01\VMStore reaches the same bytes the nodes' UNC paths name.
                for file_server, server_shares in self.world.fs.file_shares.servers().items():
                    extra.setdefault(file_server, {}).update(server_shares)
                self.samba = SambaCluster(shares, self.user, self.password, extra_shares=extra,
                                          encrypt=self._smb_encrypt, denied_shares=denied,
                                          read_only_shares=self.world.fs.file_shares.read_only())
                self.samba.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server and smbd this simulation started."""
        if self.samba is not None:
            self.samba.stop()
            self.samba = None
        for node in self.nodes.values():
            node.server.stop()
        self.nodes.clear()

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addressing

    @property
    def cluster_name(self) -> Optional[str]:
        """Name of the simulated cluster, if there is one."""
        return self.world.cluster.name if self.world.cluster else None

    def cluster_nodes(self) -> list[str]:
        """Names of the cluster's nodes."""
        return sorted(n for n, node in self.world.nodes.items() if node.cluster)

    def host_map(self, *, https: bool = False) -> dict[str, tuple[str, int]]:
        """Node (and cluster) name -> (address, port) of its WinRM listener."""
        result: dict[str, tuple[str, int]] = {}
        for name, node in self.nodes.items():
            port = node.server.port_https if https else node.server.port_http
            if port is None:
                raise RuntimeError(f"hvsim: node {name} has no {'HTTPS' if https else 'HTTP'} listener")
            result[name] = ("127.0.0.1", port)
        cluster = self.cluster_name
        members = self.cluster_nodes()
        if cluster and members:
            result[cluster] = result[members[0]]
        return result

    def host_map_option(self, *, https: bool = False) -> str:
        """The same map in the product's ``host_map`` option syntax."""
        return ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(self.host_map(https=https).items()))

    def smb_map(self) -> dict[str, tuple[str, int]]:
        """Node (and file server) name -> (address, port) of its smbd (empty without Samba)."""
        if self.samba is None:
            return {}
        return {name: ("127.0.0.1", srv.port) for name, srv in self.samba.servers.items()}

    @property
    def ca_path(self) -> Optional[str]:
        """CA certificate file that validates every node's HTTPS certificate."""
        return str(self.ca.cert_path) if self.ca is not None else None

    def write_credentials_file(self, path: Path) -> Path:
        """A credentials file in the product's format (mode 0600) for this simulation's account."""
        path.write_text(f"username = {self.user}\npassword = {self.password}\n", encoding="utf-8")
        path.chmod(0o600)
        return path
