"""The whole picture of a host or a cluster: nodes, volumes, switches, VMs with disks and owners.

Used by ``bareos-hyperv list`` and the demo, and by backup to resolve the VMs a
FileSet names.  In a cluster the VM roles tell which node owns each VM; each node
is then asked for the VMs it hosts (a VM's objects exist only on its owner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from bareos_hyperv.hyperv import cluster as cl
from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.host import host_facts
from bareos_hyperv.model.cluster import ClusterFacts, NodeState
from bareos_hyperv.model.host import HostFacts
from bareos_hyperv.model.vm import VmConfig


@dataclass
class Inventory:
    """What one entry point (a standalone host, or any node / the name of a cluster) exposes."""

    entry: str
    cluster: Optional[ClusterFacts]
    hosts: list[HostFacts] = field(default_factory=list)
    vms: list[VmConfig] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)  # VM GUID -> node

    @property
    def scope(self) -> str:
        """The cluster name, or the host name for a standalone host (save-set path component)."""
        return self.cluster.name if self.cluster else self.entry.upper()


def take_inventory(connector: Connector, entry: str, *, with_vms: bool = True) -> Inventory:
    """Read the inventory through the entry host (a node name or the cluster name)."""
    client = connector.client(entry)
    cluster = cl.cluster_of(client)
    if cluster is None:
        nodes = [entry]
        facts = None
    else:
        facts = cl.cluster_facts(client, cluster)
        nodes = [n.name for n in facts.nodes if n.state in (NodeState.UP, NodeState.PAUSED)]
    inv = Inventory(entry=entry, cluster=facts)
    for node in nodes:
        node_client = connector.client(node)
        host = host_facts(node_client, name=node)
        inv.hosts.append(host)
        if not with_vms:
            continue
        for vm in vmmod.list_vms(node_client):
            settings = vmmod.read_settings(node_client, vm)
            inv.vms.append(vmmod.normalise(vm, settings, host.switches))
            inv.owner[vm.ref.guid] = node.upper()
    inv.vms.sort(key=lambda v: (v.ref.name.lower(), v.ref.guid))
    return inv
