"""Failover cluster facts over ``root/MSCluster``: nodes, shared volumes, VM roles and owners.

A VM's Hyper-V objects exist only on its owner node, so everything that touches a
clustered VM first asks the cluster where the VM lives (``hyperv-wmi.md`` §7.3).

Two answers here must never be guessed, because a wrong guess sends the rest of a job
to the wrong node without saying so:

* whether a host is a cluster node (:func:`cluster_of`): only the faults that mean "no
  such namespace or provider" make it standalone; access denied and anything else are
  errors naming the host;
* which node owns a VM (:func:`owner_node`): when the cluster's VM resources cannot be
  read, the lookup fails with a :class:`ClusterLookupError` instead of answering "not
  clustered".
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.model.cluster import ClusterFacts, ClusterNode, NodeState, SharedVolume, VmGroup
from bareos_hyperv.wsman.cim import CimInstance, CimValue, EndpointReference, parse_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import (
    AccessDeniedFault,
    CimDataError,
    InvalidFilterFault,
    NotFoundFault,
    QuotaLimitFault,
    TimedOutFault,
    WsmanFault,
)

log = logging.getLogger("bareos_hyperv.hyperv.cluster")

_MB = 1024 * 1024

# MSCluster_ResourceGroup.State (hyperv-wmi.md 7.1)
GROUP_ONLINE = 0
GROUP_OFFLINE = 1
GROUP_FAILED = 2
GROUP_PARTIAL_ONLINE = 3
GROUP_PENDING = 4
DESTROY_GROUP_NONE = 1  # DestroyGroup(Options): 1 None, 2 PerformCleanup (os-win passes 1)
DEFAULT_ROLE_TIMEOUT = 300.0


class ClusterRoleError(HyperVError):
    """Making a VM highly available, moving its role or removing the role failed."""


class ClusterAccessError(HyperVError):
    """The account may not read the failover cluster's WMI namespace on a node."""


class ClusterQueryError(HyperVError):
    """A node's answer about the cluster could not be understood (not a "not clustered" answer)."""


class ClusterLookupError(HyperVError):
    """The cluster could not tell which node owns a VM, although the VM may be clustered."""


def cluster_of(client: CimClient) -> Optional[CimInstance]:
    """The ``MSCluster_Cluster`` instance, or None when the host is not a cluster node.

    A standalone host has no ``root/MSCluster`` namespace.  WinRM says so in several
    ways (``a:`` or ``w:DestinationUnreachable``; ``w:InternalError`` carrying WMI's
    invalid-namespace 0x8004100E as the WSManFault code, in ``__ExtendedStatus`` or in an
    ``MSFT_WmiError`` directly under ``s:Detail``; ``CannotProcessFilter`` for a missing
    class); :mod:`bareos_hyperv.wsman.faults` files all of them under NotFound or
    InvalidFilter, and only those mean "not clustered".

    :raises ClusterAccessError: the account lacks rights on ``root/MSCluster`` (all failover
        cluster WMI needs local Administrators on the node, hyperv-wmi.md §7.5).
    :raises QuotaLimitFault: WinRM's per-user quota is exhausted (its own category and advice,
        passed on unchanged: it says nothing about the cluster and a later attempt may succeed).
    :raises ClusterQueryError: any other fault, naming the host; guessing "standalone" here would
        back up a clustered VM from the wrong node, or miss its owner's changes.
    """
    try:
        found = client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER}")
    except (NotFoundFault, InvalidFilterFault) as exc:
        log.debug("%s has no failover cluster namespace (%s): standalone host", client.host,
                  exc.subcode or exc.wsman_code)
        return None
    except AccessDeniedFault as exc:
        raise ClusterAccessError(
            f"the account may not read the failover cluster namespace root/MSCluster on {client.host}, so "
            f"whether {client.host} is a cluster node cannot be told",
            context={"host": client.host, "fault": exc.subcode or exc.code, "wsman_code": exc.wsman_code,
                     "wmi_error": exc.wmi_error.summary() if exc.wmi_error else None},
            what_to_do="use an account that is a local Administrator on every cluster node (failover cluster "
            "WMI requires it; Hyper-V Administrators is not enough); a local (non-domain) account also needs "
            "LocalAccountTokenFilterPolicy=1 on each node, else UAC strips its administrator rights over the "
            "network: use a domain account or set it",
        ) from exc
    except QuotaLimitFault:
        raise
    except WsmanFault as exc:
        raise ClusterQueryError(
            f"could not tell whether {client.host} is a failover cluster node: {exc.message}",
            context={"host": client.host},
            what_to_do=exc.what_to_do,
        ) from exc
    return found[0] if found else None


def _node_state(value: Optional[int]) -> NodeState:
    try:
        return NodeState(value if value is not None else -1)
    except ValueError:
        return NodeState.UNKNOWN


def _int_or(value: Optional[int], default: int) -> int:
    return default if value is None else value


# The member of MSCluster_Resource.PrivateProperties naming the VM: spelled VmID by the cluster
# and by Hyper-V Manager (Microsoft.Virtualization.Client.Management, MSClusterResourceBaseView:
# VMComputerSystemInstanceId = "VmID"), VmId by Microsoft's private-properties page; CIM names
# are case-insensitive and so is the lookup.
_VM_ID = "VmID"


def _private_vm_id(value: CimValue, depth: int = 0) -> Optional[str]:
    """The VM GUID inside one rendering of PrivateProperties, or None.

    ``PrivateProperties`` is an embedded ``MSCluster_Property`` object.  WinRM renders it as
    CIM-XML ``INSTANCE`` text (escaped), as a nested element whose children are the members,
    or as a nested element wrapping one element named after the class; all are read here.
    """
    if isinstance(value, list):
        return next((v for v in (_private_vm_id(item, depth) for item in value) if v), None)
    if isinstance(value, str):
        if not value.lstrip().startswith("<"):
            return None
        try:
            value = parse_cimxml(value)
        except CimDataError:
            return None
    if not isinstance(value, CimInstance):
        return None
    direct = value.get(_VM_ID)
    if isinstance(direct, str) and direct.strip():
        return direct.strip().strip("{}").upper()
    if depth < 2:  # the class-named wrapper, at most once more
        for _name, inner in value.items():
            found = _private_vm_id(inner, depth + 1)
            if found:
                return found
    return None


def _vm_id(resource: CimInstance) -> Optional[str]:
    """The GUID of the VM a ``Virtual Machine`` resource stands for (None: not readable)."""
    return _private_vm_id(resource.get("PrivateProperties"))


def _vm_resources(client: CimClient) -> list[CimInstance]:
    return client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_RESOURCE} WHERE Type = "
                        f"{C.wql_literal(C.RESOURCE_TYPE_VM)}")


def vm_groups(client: CimClient) -> list[VmGroup]:
    """Every VM role of the cluster with its VM GUID and owner node (two round trips).

    A role whose VM resource carries no readable VM id keeps ``vm_guid=None`` and is logged
    as a warning, so that the gap never passes unnoticed.
    """
    groups = client.query(C.NS_CLUSTER, f"SELECT * FROM {C.CLUSTER_GROUP} WHERE GroupType = "
                          f"{C.wql_literal(C.GROUP_TYPE_VIRTUAL_MACHINE)}")
    resources = _vm_resources(client)
    vm_of_group: dict[str, str] = {}
    names_of_group: dict[str, list[str]] = {}
    for res in resources:
        group = (res.opt_str("OwnerGroup") or "").lower()
        names_of_group.setdefault(group, []).append(res.opt_str("Name") or "")
        vm_id = _vm_id(res)
        if vm_id:
            vm_of_group[group] = vm_id
        else:
            log.warning("cluster resource '%s' on %s carries no readable VM id (PrivateProperties.%s): its "
                        "role's VM is unknown", res.opt_str("Name"), client.host, _VM_ID)
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
    """The node that currently owns a clustered VM, or None when the VM is not clustered.

    Found the way other clients do it (os-win ``ClusterUtils.get_vm_host``): the VM's
    resource group, and that group's ``OwnerNode``.  The group is the VM's ``Virtual
    Machine`` resource's ``OwnerGroup``, the resource the one whose ``PrivateProperties``
    name the VM (two round trips).  None is answered only when every VM resource could be
    read and none is this VM's.

    :raises ClusterLookupError: a VM resource's VM id cannot be read (so this VM may be
        clustered), or the group of the VM's resource cannot be found.
    """
    wanted = vm_guid.strip().strip("{}").upper()
    unreadable: list[str] = []
    group_name: Optional[str] = None
    for res in _vm_resources(client):
        vm_id = _vm_id(res)
        if vm_id is None:
            unreadable.append(res.opt_str("Name") or "?")
        elif vm_id == wanted:
            group_name = res.opt_str("OwnerGroup") or ""
            break
    context = {"host": client.host, "vm": vm_guid}
    if group_name is None:
        if unreadable:
            raise ClusterLookupError(
                f"cannot tell which cluster node owns VM {vm_guid}: the VM id (PrivateProperties.{_VM_ID}) of "
                f"cluster resource(s) {', '.join(repr(n) for n in unreadable)} cannot be read on {client.host}",
                context=context,
                what_to_do="check the VM roles in Failover Cluster Manager and that WinRM on the node returns "
                "MSCluster_Resource.PrivateProperties; report the host's Windows version if it does",
            )
        return None
    try:
        group = client.get(_group_ref(group_name)) if group_name else None
    except NotFoundFault:
        group = None
    owner = (group.opt_str("OwnerNode") or "").upper() if group is not None else ""
    if not owner:
        raise ClusterLookupError(
            f"VM {vm_guid} belongs to cluster role '{group_name}', whose owner node {client.host} could not read",
            context={**context, "role": group_name},
            what_to_do="the role may be moving or being removed: check it in Failover Cluster Manager and retry",
        )
    return owner


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


# --------------------------------------------------------------------------- VM roles
#
# The MSCluster_* methods are void: WinRM answers them without ReturnValue and reports a
# failure as a SOAP fault carrying __ExtendedStatus (hyperv-wmi.md 7.4), so every fault of
# these calls is the cluster's answer and is turned into a ClusterRoleError in words.


def _fault_text(exc: WsmanFault) -> str:
    """The most specific text a cluster fault carries (the provider's description first)."""
    if exc.wmi_error is not None and exc.wmi_error.description:
        return exc.wmi_error.description
    return exc.provider_message or exc.reason or exc.message


def _group_ref(group_name: str) -> EndpointReference:
    return EndpointReference.build(C.NS_CLUSTER, C.CLUSTER_GROUP, {"Name": group_name})


def _get_group(client: CimClient, group_name: str) -> CimInstance:
    try:
        return client.get(_group_ref(group_name))
    except NotFoundFault as exc:
        raise ClusterRoleError(
            f"the cluster has no role named '{group_name}'",
            context={"host": client.host, "role": group_name},
            what_to_do="list the cluster's VM roles (bareos-hyperv list) and use the role's exact name",
        ) from exc


def add_vm_role(client: CimClient, cluster_name: str, vm_guid: str) -> VmGroup:
    """Make a VM highly available: ``MSCluster_Cluster.AddVirtualMachine``, then its new role.

    The VM is named by its GUID, which is unique where names are not (os-win passes the
    name; which forms a Windows cluster accepts is to be verified on a lab host).
    The VM must be registered on a node of the cluster, its files on cluster storage.

    :raises ClusterRoleError: the cluster refused (the fault's text says why), or no role
        holds the VM afterwards.
    """
    ref = EndpointReference.build(C.NS_CLUSTER, C.CLUSTER, {"Name": cluster_name})
    context = {"host": client.host, "cluster": cluster_name, "vm": vm_guid}
    try:
        result = client.invoke(ref, "AddVirtualMachine", [("VirtualMachine", vm_guid)])
    except WsmanFault as exc:
        raise ClusterRoleError(
            f"cluster {cluster_name} could not make VM {vm_guid} highly available: {_fault_text(exc)}",
            context=context,
            what_to_do="check that the VM is registered on a node of this cluster, is not already a "
            "cluster role, and keeps its files on cluster shared volumes",
        ) from exc
    if result.return_value != 0:  # void by declaration; a value other than 0 would still be a refusal
        raise ClusterRoleError(
            f"cluster {cluster_name} could not make VM {vm_guid} highly available "
            f"(return value {result.return_value})",
            context=context,
            what_to_do="see the FailoverClustering event log on the node",
        )
    wanted = vm_guid.strip("{}").upper()
    group = next((g for g in vm_groups(client) if (g.vm_guid or "").upper() == wanted), None)
    if group is None:
        raise ClusterRoleError(
            f"cluster {cluster_name} accepted VM {vm_guid} but no VM role holds it",
            context=context,
            what_to_do="check the roles in Failover Cluster Manager; the role may still be being created",
        )
    return group


def move_role(client: CimClient, group_name: str, node: str, *, timeout: float = DEFAULT_ROLE_TIMEOUT,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Move a cluster role to ``node`` (``MSCluster_ResourceGroup.MoveToNewNode``) and wait for it.

    The cluster moves a VM role as a quick migration (save, move, resume).  When the
    WS-Man operation times out before the move ends, the role's owner is polled until
    ``timeout`` seconds have passed.

    :raises ClusterRoleError: unknown role or node, the cluster refused, or the role is not
        owned by ``node`` within ``timeout``.
    """
    target = node.upper()
    context = {"host": client.host, "role": group_name, "node": target}
    _get_group(client, group_name)
    try:
        client.invoke(_group_ref(group_name), "MoveToNewNode",
                      [("NodeName", target), ("TimeOut", max(1, int(timeout)))])
    except TimedOutFault:
        log.info("moving cluster role %s to %s outlasted the WS-Man operation; waiting for it", group_name, target)
    except WsmanFault as exc:
        raise ClusterRoleError(
            f"could not move cluster role '{group_name}' to {target}: {_fault_text(exc)}",
            context=context,
            what_to_do="check that the node is up, a possible owner of the role, and has the VM's "
            "switches and storage",
        ) from exc
    deadline = clock() + timeout
    while True:
        group = _get_group(client, group_name)
        owner = (group.opt_str("OwnerNode") or "").upper()
        if owner == target and group.opt_int("State") != GROUP_PENDING:
            return
        if clock() >= deadline:
            raise ClusterRoleError(
                f"cluster role '{group_name}' is owned by {owner or 'no node'}, not {target}, "
                f"{timeout:g}s after the move was asked for",
                context=context,
                what_to_do="see the FailoverClustering event log; the move may have failed or still be running",
            )
        sleep(1.0)


def remove_vm_role(client: CimClient, group_name: str, *, timeout: float = DEFAULT_ROLE_TIMEOUT) -> None:
    """Remove a VM's cluster role; the VM itself stays registered on its node.

    The role is taken offline first (the VM resource's OfflineAction applies: by default the
    VM is *saved*), then destroyed with its resources (``DestroyGroup(1)``; hyperv-wmi.md 7.4,
    trap 18).  A role that does not exist counts as removed.  Only VM roles (GroupType 111) are
    touched, so a wrong name can never destroy another role (the core cluster group, a file server).

    :raises ClusterRoleError: the group is not a VM role, or the cluster refused.
    """
    try:
        group = client.get(_group_ref(group_name))
    except NotFoundFault:
        log.debug("cluster role %s does not exist (any more): nothing to remove", group_name)
        return
    context = {"host": client.host, "role": group_name}
    if group.opt_int("GroupType") != C.GROUP_TYPE_VIRTUAL_MACHINE:
        raise ClusterRoleError(
            f"cluster role '{group_name}' is not a virtual machine role (GroupType {group.opt_int('GroupType')})",
            context=context,
            what_to_do="name the VM's role; other roles are never removed by this plugin",
        )
    state = group.opt_int("State")
    try:
        # an offline role needs no TakeOffline, and a failed one (its VM is gone) cannot be taken offline
        if state not in (GROUP_OFFLINE, GROUP_FAILED):
            client.invoke(_group_ref(group_name), "TakeOffline", [("TimeOut", max(1, int(timeout)))])
        client.invoke(_group_ref(group_name), "DestroyGroup", [("Options", DESTROY_GROUP_NONE)])
    except NotFoundFault:
        return  # removed meanwhile
    except WsmanFault as exc:
        raise ClusterRoleError(
            f"could not remove cluster role '{group_name}': {_fault_text(exc)}",
            context=context,
            what_to_do="see the FailoverClustering event log on the node; the role can also be removed "
            "in Failover Cluster Manager (Remove, keeping the VM)",
        ) from exc
