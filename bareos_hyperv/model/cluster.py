"""Facts about a failover cluster, from ``root/MSCluster``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class NodeState(enum.IntEnum):
    """``MSCluster_Node.State``."""

    UNKNOWN = -1
    UP = 0
    DOWN = 1
    PAUSED = 2
    JOINING = 3


@dataclass(frozen=True)
class ClusterNode:
    """One node and its cluster state."""

    name: str
    state: NodeState


@dataclass(frozen=True)
class SharedVolume:
    r"""A cluster shared volume: its path (``C:\ClusterStorage\VolumeN``), size and owner."""

    name: str
    path: str
    total_bytes: int
    free_bytes: int
    owner_node: Optional[str]


@dataclass(frozen=True)
class VmGroup:
    """The cluster role (resource group, GroupType 111) that makes a VM highly available."""

    name: str
    vm_guid: Optional[str]
    owner_node: str
    state: int
    preferred_owners: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()


@dataclass
class ClusterFacts:
    """The cluster as a backup manifest records it and a restore plan checks it."""

    name: str
    fqdn: str
    shared_volumes_root: str
    nodes: list[ClusterNode] = field(default_factory=list)
    volumes: list[SharedVolume] = field(default_factory=list)
    groups: list[VmGroup] = field(default_factory=list)

    def group_of(self, vm_guid: str) -> Optional[VmGroup]:
        """The VM role holding this VM, if the VM is clustered."""
        low = vm_guid.lower()
        return next((g for g in self.groups if (g.vm_guid or "").lower() == low), None)
