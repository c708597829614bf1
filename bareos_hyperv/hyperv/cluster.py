"""Failover cluster facts over ``root/MSCluster``: nodes, shared volumes, VM roles and owners.

A VM's Hyper-V objects exist only on its owner node, so everything that touches a
clustered VM first asks the cluster where the VM lives (``hyperv-wmi.md`` §7.3).
"""

from __future__ import annotations

from typing import Optional

from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.model.cluster import ClusterFacts, ClusterNode, NodeState, SharedVolume, VmGroup
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference, parse_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import InvalidFilterFault, NotFoundFault

_MB = 1024 * 1024


def cluster_of(client: CimClient) -> Optional[CimInstance]:
    """The ``MSCluster_Cluster`` instance, or None when the host is not a cluster node.

    A standalone host has no ``root/MSCluster`` namespace: WinRM answers with a
    fault, which here means "not clustered" rather than an error.
    """
    try:
        found = client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER}")
    except (NotFoundFault, InvalidFilterFault):
        return None
    return found[0] if found else None


def _node_state(value: Optional[int]) -> NodeState:
    try:
        return NodeState(value if value is not None else -1)
    except ValueError:
        return NodeState.UNKNOWN


def _int_or(value: Optional[int], default: int) -> int:
    return default if value is None else value


def _vm_id(resource: CimInstance) -> Optional[str]:
    # PrivateProperties is an embedded MSCluster_Property; depending on the WinRM
    # version it arrives as a nested element or as CIM-XML text.
    props = resource.get("PrivateProperties")
    if isinstance(props, str) and props.lstrip().startswith("<"):
        props = parse_cimxml(props)
    if isinstance(props, CimInstance):
        vm_id = props.opt_str("VmId")
        return vm_id.upper() if vm_id else None
    return None


def vm_groups(client: CimClient) -> list[VmGroup]:
    """Every VM role of the cluster with its VM GUID and owner node (two round trips)."""
    groups = client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_GROUP} WHERE GroupType = "
                          f"{C.wql_literal(C.GROUP_TYPE_VIRTUAL_MACHINE)}")
    resources = client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_RESOURCE} WHERE Type = "
                             f"{C.wql_literal(C.RESOURCE_TYPE_VM)}")
    vm_of_group: dict[str, str] = {}
    names_of_group: dict[str, list[str]] = {}
    for res in resources:
        group = (res.opt_str("OwnerGroup") or "").lower()
        names_of_group.setdefault(group, []).append(res.opt_str("Name") or "")
        vm_id = _vm_id(res)
        if vm_id:
            vm_of_group[group] = vm_id
    result = []
    for g in groups:
        name = g.opt_str("Name") or ""
        result.append(
            VmGroup(
                name=name,
                vm_guid=vm_of_group.get(name.lower()),
                owner_node=(g.opt_str("OwnerNode") or "").upper(),
                state=_int_or(g.opt_int("State"), -1),
                preferred_owners=tuple(n.upper() for n in g.strs("PreferredOwners")) if "PreferredOwners" in g
                else (),
                resources=tuple(names_of_group.get(name.lower(), [])),
            )
        )
    return result


def owner_node(client: CimClient, vm_guid: str) -> Optional[str]:
    """The node that currently owns a clustered VM, or None when the VM is not clustered."""
    for group in vm_groups(client):
        if (group.vm_guid or "").upper() == vm_guid.upper():
            return group.owner_node
    return None


def _links(client: CimClient, assoc_class: str) -> dict[str, list[EndpointReference]]:
    """Instances of an association class as ``GroupComponent`` key -> ``PartComponent`` references."""
    links: dict[str, list[EndpointReference]] = {}
    for link in client.enumerate(C.NS_CLUSTER, assoc_class):
        group = link.opt_ref("GroupComponent")
        part = link.opt_ref("PartComponent")
        if group is not None and part is not None:
            links.setdefault(str(group.selector("Name") or "").lower(), []).append(part)
    return links


def shared_volumes(client: CimClient, root: str) -> list[SharedVolume]:
    """Cluster shared volumes with path, size, free space and owner (four round trips in all).

    The CSV-to-partition and CSV-to-node links are enumerated as association instances
    once, rather than asked per volume, so the cost does not grow with the number of CSVs.
    """
    partitions = {
        str(p.opt_str("Path") or "").lower(): p for p in client.enumerate(C.NS_CLUSTER, C.CLUSTER_PARTITION)
    }
    to_partition = _links(client, C.CSV_TO_PARTITION)
    to_node = _links(client, C.CSV_TO_NODE)
    volumes = []
    for csv in client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_CSV}"):
        name = csv.opt_str("Name") or ""
        part = None
        for ref in to_partition.get(name.lower(), []):
            part = partitions.get(str(ref.selector("Path") or "").lower())
        path = ""
        total = free = 0
        if part is not None:
            mounts = part.strs("MountPoints") if "MountPoints" in part else []
            candidates = [m for m in [*mounts, part.opt_str("Path") or ""] if m.lower().startswith(root.lower())]
            path = candidates[0].rstrip("\\") if candidates else (part.opt_str("Path") or "")
            total = (part.opt_int("TotalSize") or 0) * _MB
            free = (part.opt_int("FreeSpace") or 0) * _MB
        owners = [str(r.selector("Name") or "").upper() for r in to_node.get(name.lower(), [])]
        volumes.append(SharedVolume(name=name, path=path, total_bytes=total, free_bytes=free,
                                    owner_node=owners[0] if owners else None))
    volumes.sort(key=lambda v: v.path.lower())
    return volumes


def cluster_facts(client: CimClient, cluster: CimInstance) -> ClusterFacts:
    """Name, nodes, shared volumes and VM roles of the cluster the client's node belongs to."""
    root = cluster.opt_str("SharedVolumesRoot") or "C:\\ClusterStorage"
    nodes = [
        ClusterNode(name=(n.opt_str("Name") or "").upper(), state=_node_state(n.opt_int("State")))
        for n in client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_NODE}")
    ]
    nodes.sort(key=lambda n: n.name)
    return ClusterFacts(
        name=(cluster.opt_str("Name") or "").upper(),
        fqdn=cluster.opt_str("Fqdn") or "",
        shared_volumes_root=root,
        nodes=nodes,
        volumes=shared_volumes(client, root),
        groups=vm_groups(client),
    )
