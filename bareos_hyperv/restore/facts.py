r"""The destination of a restore as it is now: hosts, cluster, VMs, and the files in the folders that matter.

Live look-ups only; the decisions are :mod:`bareos_hyperv.restore.plan`'s.  Everything goes through
the existing layers: :func:`hyperv.inventory.take_inventory` (cluster facts, each node's host facts,
every VM with its settings), one ``Win32_OperatingSystem`` query per node for its memory, and the
job's :class:`~bareos_hyperv.storage.base.Storage` with its
:class:`~bareos_hyperv.storage.locations.LocationResolver` to list the folders the planner names
(:func:`plan.candidate_folders`).

Memory comes from ``Win32_OperatingSystem.TotalVisibleMemorySize`` (KiB), which Windows and the
simulator both offer.  Not read: the hosts' logical processor counts (Windows has
``Win32_ComputerSystem.NumberOfLogicalProcessors`` and ``Msvm_Processor``, the simulator neither, so
the code could not be tested) and the free space of non-CSV volumes (``Win32_Volume``, not in the
simulator either).  Both stay unknown (None / absent), which the plan reports as a note; CSV free
space comes from the cluster facts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Set, Tuple, Union

from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.inventory import Inventory, take_inventory
from bareos_hyperv.model.cluster import NodeState
from bareos_hyperv.model.vm import DriveKind
from bareos_hyperv.restore.plan import CandidateFolder, Destination, DestinationHost, ExistingVm
from bareos_hyperv.restore.safety import join_host_path, path_key, split_host_path
from bareos_hyperv.storage.base import Storage, StorageAccessDenied, StorageExists, StorageNotFound
from bareos_hyperv.storage.locations import InvalidPathError, LocationResolver
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import AccessDeniedFault, InvalidFilterFault, NotFoundFault

__all__ = ["FolderSource", "gather_destination", "host_logical_processors", "host_memory_mb", "list_folders"]

log = logging.getLogger(__name__)

NS_CIMV2 = "root/cimv2"
_MEMORY_QUERY = "SELECT * FROM Win32_OperatingSystem"  # TotalVisibleMemorySize: KiB, on Windows and hvsim
_PROCESSOR_QUERY = "SELECT * FROM Win32_ComputerSystem"  # NumberOfLogicalProcessors

# The folders to list: given outright, or computed from the destination read so far (the planner's
# folders depend on the cluster's CSVs and the chosen node, not on which files exist).
FolderSource = Union[Iterable[CandidateFolder], Callable[[Destination], Iterable[CandidateFolder]]]


def host_memory_mb(client: CimClient) -> Optional[int]:
    """The host's physical memory in MB (``Win32_OperatingSystem.TotalVisibleMemorySize``), None when unknown.

    One round trip.  A host that does not answer the query (namespace or class missing, access to
    ``root/cimv2`` refused) gives None: the planner then notes that memory was not checked.
    """
    try:
        found = client.query(NS_CIMV2, _MEMORY_QUERY)
    except (NotFoundFault, InvalidFilterFault, AccessDeniedFault) as exc:
        log.debug("memory of %s unknown: %s", client.host, exc)
        return None
    kib = found[0].opt_int("TotalVisibleMemorySize") if found else None
    return None if kib is None else kib // 1024


def host_logical_processors(client: CimClient) -> Optional[int]:
    """The host's logical processors (``Win32_ComputerSystem.NumberOfLogicalProcessors``), None when unknown."""
    try:
        found = client.query(NS_CIMV2, _PROCESSOR_QUERY)
    except (NotFoundFault, InvalidFilterFault, AccessDeniedFault) as exc:
        log.debug("logical processors of %s unknown: %s", client.host, exc)
        return None
    return found[0].opt_int("NumberOfLogicalProcessors") if found else None


def list_folders(storage: Storage, resolver: LocationResolver,
                 folders: Iterable[CandidateFolder]) -> Tuple[FrozenSet[str], Dict[str, str]]:
    r"""(path keys of every entry of the folders, folders that could not be listed -> why).

    A folder that does not exist has no entries (that is the usual case: a new VM's folder).  A
    folder that cannot be resolved (no path map entry with ``data=local``), may not be read, or is
    a file, is reported rather than guessed: the restore still never overwrites anything, because
    files are created exclusively.  Connection and authentication failures propagate.
    """
    existing: Set[str] = set()
    unlisted: Dict[str, str] = {}
    for folder in folders:
        if split_host_path(folder.path) is None:
            unlisted[folder.path] = "not a clean absolute path"
            continue
        try:
            location = resolver.resolve(folder.path, folder.node)
            entries = storage.listdir(location)
        except StorageNotFound:
            continue
        except (InvalidPathError, StorageAccessDenied, StorageExists) as exc:
            unlisted[folder.path] = exc.message
            continue
        for entry in entries:
            existing.add(path_key(join_host_path(folder.path, entry.name)))
    return frozenset(existing), unlisted


def _destination(connector: Connector, host: str, inventory: Inventory) -> Destination:
    cluster = inventory.cluster
    states = {n.name.upper(): n.state for n in cluster.nodes} if cluster is not None else {}
    hosts = []
    for facts in inventory.hosts:
        up = cluster is None or states.get(facts.name.upper()) is NodeState.UP
        memory = host_memory_mb(connector.client(facts.name))
        # Logical processors: no class the simulator and Hyper-V both offer (module docstring).
        processors = host_logical_processors(connector.client(facts.name))
        hosts.append(DestinationHost(facts=facts, logical_processors=processors, memory_mb=memory, up=up))
    vms = []
    for vm in inventory.vms:
        group = cluster.group_of(vm.ref.guid) if cluster is not None else None
        files = tuple(d.path for d in vm.drives
                      if d.path and d.kind in (DriveKind.VIRTUAL_DISK, DriveKind.SHARED_DISK))
        vms.append(ExistingVm(guid=vm.ref.guid, name=vm.ref.name, node=inventory.owner.get(vm.ref.guid, ""),
                              state=vm.state, config_root=vm.config_root, disk_paths=files,
                              group=group.name if group is not None else None))
    return Destination(entry=host, cluster=cluster, hosts=tuple(hosts), vms=tuple(vms))


def gather_destination(connector: Connector, host: str, *, storage: Storage, resolver: LocationResolver,
                       candidate_folders: FolderSource = ()) -> Destination:
    """Read the destination ``host`` (a node, a standalone host or a cluster name) for the planner.

    ``candidate_folders`` are the folders whose entries go into ``existing_files``: usually
    ``lambda d: plan.candidate_folders(manifest, options, d)``, called with the destination read
    so far (without files), so the inventory is read once.  Round trips: the inventory's, plus one
    per node for its memory, plus one listing per folder.
    """
    inventory = take_inventory(connector, host)
    bare = _destination(connector, host, inventory)
    folders = candidate_folders(bare) if callable(candidate_folders) else candidate_folders
    existing, unlisted = list_folders(storage, resolver, folders)
    return dataclasses.replace(bare, existing_files=existing, unlisted=unlisted)
