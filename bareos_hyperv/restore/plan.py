r"""The restore planner: from a manifest, the restore options and the destination's facts, a typed plan.

Pure code over data: no sockets, files or clocks.  :mod:`bareos_hyperv.restore.facts` gathers the
destination (hosts, cluster, VMs, files in the folders that matter); :func:`make_plan` decides
everything a restore does before it writes a byte, and lists every blocking problem at once, so an
operator fixes the options in one round (``restore_dry_run=yes`` shows exactly this plan).

Decisions, in the order :func:`make_plan` takes them:

* **Owner node**: ``restore_node``; else the node ``restore_host`` names; else the VM's original owner
  when it is a node of the destination cluster and up; else the up node with the most memory.  A
  standalone destination is its own node.  ``restore_node`` outside the destination, or a node that
  is not up, is a problem.
* **Cluster role**: ``restore_cluster_role``, by default yes when the destination is a cluster;
  ``yes`` towards a standalone host is a problem.
* **ID**: kept when no VM at the destination has it; when one does, ``restore_new_id=yes`` gives a
  copy a new ID, ``restore_overwrite=yes`` replaces that VM (which must be off unless
  ``restore_force_off=yes``; it and its disks are removed only after the new disks are written and
  verified), and without either the restore is refused.  Both at once is a contradiction.
* **Name**: ``restore_vm_name`` or the backed-up name; a cluster role of that name already in the
  destination cluster is a problem (role names are unique), another VM of that name a note.
* **Folders** (configuration and each disk chain): ``restore_disk_map`` (per disk) or
  ``restore_storage`` (``<storage>\<vm>`` and ``<storage>\<vm>\Virtual Hard Disks``) when given;
  else the backed-up folder when the destination has its volume; a CSV the destination cluster
  lacks becomes the destination CSV with the most free space (same relative path under it); a CSV
  path restored to a standalone host goes to the host's default folders ``\<vm>``; local storage of
  a VM that becomes highly available goes to the CSV with the most free space.  All files of one
  differencing chain go to the folder of the chain's first file.
* **File names**: a name that exists at the destination becomes ``<stem>-restored-<jobid><ext>``,
  unless the file belongs to the VM being overwritten (it is then replaced after verification).
* **Space** per volume (CSV free space from the cluster, other volumes when known), switches,
  configuration version, generation, processors and memory against the owner node, and devices
  that cannot come back (pass-through disks, skipped VHD Sets, missing ISO images).

The planner only ever places files under the folders it chose; :func:`safety.placement_problems`
checks that on the finished plan.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

from bareos_hyperv.hyperv.host import supported_versions
from bareos_hyperv.manifest.document import Manifest
from bareos_hyperv.model.backup import DiskBackup, PartKind
from bareos_hyperv.model.cluster import ClusterFacts, NodeState, SharedVolume
from bareos_hyperv.model.host import HostFacts
from bareos_hyperv.model.restore import DiskMapping, MissingSwitch, RestoreOptions
from bareos_hyperv.model.vm import Drive, DriveKind, DriveSlot, Generation, NetworkAdapter, PowerState, VmRef
from bareos_hyperv.restore import safety
from bareos_hyperv.restore.safety import Problem, join_host_path, name_key, path_key, shown, win_basename, win_dirname

__all__ = [
    "STAGING_PREFIX",
    "AdapterPlan",
    "CandidateFolder",
    "ConfigPlacement",
    "Destination",
    "DestinationHost",
    "DeviceAction",
    "DiskPlacement",
    "DiskReason",
    "DroppedDevice",
    "ExistingVm",
    "Problem",
    "SwitchDecision",
    "VmPlan",
    "VolumeUse",
    "candidate_folders",
    "default_entry",
    "format_size",
    "make_plan",
    "windows_versions_running",
]

STAGING_PREFIX = ".bareos-hyperv-restore-"  # + job id: where configuration files wait for the import
VHD_FOLDER = "Virtual Hard Disks"  # Hyper-V's own name for a VM's disk folder
VM_FOLDER = "Virtual Machines"  # where Hyper-V keeps <guid>.vmcx below a configuration root
RENAMED_INFIX = "-restored-"

# Windows Server releases by build, to name the ones that run a configuration version.
_WINDOWS_BUILDS: Tuple[Tuple[int, str], ...] = (
    (9200, "Windows Server 2012"),
    (9600, "Windows Server 2012 R2"),
    (14393, "Windows Server 2016"),
    (17763, "Windows Server 2019"),
    (20348, "Windows Server 2022"),
    (26100, "Windows Server 2025"),
)
_GEN2_MIN_BUILD = 9600  # generation 2 VMs exist since Windows Server 2012 R2
_BUILD = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_RESOLVE_MANIFEST = (
    "this save set was not written by bareos-hyperv as it is, or it was changed: restore another "
    "backup job of this VM, or restore the files alone to a directory (restore_local=yes) and inspect them"
)


# --------------------------------------------------------------------------- the destination


@dataclass(frozen=True)
class DestinationHost:
    """One Hyper-V host of the destination; processor and memory counts are None when unknown."""

    facts: HostFacts
    logical_processors: Optional[int]
    memory_mb: Optional[int]
    up: bool = True

    @property
    def name(self) -> str:
        """The host (node) name."""
        return self.facts.name


@dataclass(frozen=True)
class ExistingVm:
    """A VM registered at the destination; ``group`` is its cluster role name (None: not clustered).

    ``disk_paths`` are the files its drives point at (not their parents).
    """

    guid: str
    name: str
    node: str
    state: PowerState
    config_root: str
    disk_paths: Tuple[str, ...]
    group: Optional[str]

    def __str__(self) -> str:
        return f"{self.name} ({self.guid}) on {self.node}"


@dataclass(frozen=True)
class Destination:
    r"""What the restore goes into, as :func:`restore.facts.gather_destination` read it.

    ``entry`` is what ``restore_host`` named (or the source scope).  ``existing_files`` holds
    :func:`safety.path_key` keys of every entry of the folders :func:`candidate_folders` named
    that exist.  ``volume_free`` maps non-CSV volume roots (``C:\``, ``\\server\share``) to free
    bytes when known.  ``unlisted`` maps folders that could not be listed to the reason.
    """

    entry: str
    cluster: Optional[ClusterFacts]
    hosts: Tuple[DestinationHost, ...]
    vms: Tuple[ExistingVm, ...] = ()
    existing_files: FrozenSet[str] = frozenset()
    volume_free: Mapping[str, int] = field(default_factory=dict)
    unlisted: Mapping[str, str] = field(default_factory=dict)

    def host(self, name: str) -> Optional[DestinationHost]:
        """The host of this name (case-insensitive), if the destination has it."""
        key = name_key(name)
        return next((h for h in self.hosts if name_key(h.name) == key), None)

    def exists(self, path: str) -> bool:
        """Whether a file or folder exists at this host path (as far as the listed folders tell)."""
        return path_key(path) in self.existing_files


@dataclass(frozen=True)
class CandidateFolder:
    """A destination folder whose entries the planner needs, and the node to list it through."""

    node: str
    path: str


# --------------------------------------------------------------------------- the plan


class DiskReason(enum.Enum):
    """Why a disk file goes where it goes (the value is what the plan table shows)."""

    SAME_PATH_FREE = "same path as at backup, free"
    MAPPED = "restore_disk_map"
    STORAGE = "restore_storage"
    CSV_BY_FREE_SPACE = "CSV with the most free space"
    DEFAULT_PATH = "host's default folder"
    CHAIN_FOLDER = "kept with its differencing chain"
    RENAMED_EXISTS = "renamed: a file of that name exists"
    RENAMED_DUPLICATE = "renamed: another file of this VM has that name there"
    REPLACES_OVERWRITTEN = "replaces the overwritten VM's file after verification"


@dataclass(frozen=True)
class DiskPlacement:
    """One disk file: where it came from, where it goes and why.

    ``reason`` is the decision for the file itself; ``folder_reason`` why its chain went to that
    folder; ``dest_root`` the folder the planner chose (the file lies under it);
    ``chain_position`` 0 for the file the drive uses, 1 for its parent, ...
    """

    slot: DriveSlot
    settings_id: str
    file_index: int
    source_path: str
    dest_path: str
    size: int
    sha256: Optional[str]
    reason: DiskReason
    parent_dest_path: Optional[str]
    folder_reason: DiskReason = DiskReason.SAME_PATH_FREE
    dest_root: str = ""
    chain_position: int = 0


class SwitchDecision(enum.Enum):
    """What happens to a network adapter's connection."""

    KEPT = "kept"
    MAPPED = "mapped (restore_switch_map)"
    DISCONNECTED = "disconnected: switch missing (restore_missing_switch=disconnect)"
    WAS_DISCONNECTED = "not connected at backup"
    MISSING = "switch missing: refused (restore_missing_switch=fail)"


@dataclass(frozen=True)
class AdapterPlan:
    """One network adapter and the switch it is connected to at the destination (None: none)."""

    name: str
    mac: str
    source_switch: Optional[str]
    dest_switch: Optional[str]
    decision: SwitchDecision
    static_mac: bool = False
    settings_id: str = ""


class DeviceAction(enum.Enum):
    """What happens to a device that cannot come back as it was."""

    REMOVED = "left out"
    EMPTIED = "restored empty"


@dataclass(frozen=True)
class DroppedDevice:
    """A drive that is left out or restored empty, and why."""

    slot_or_name: str
    settings_id: str
    reason: str
    action: DeviceAction = DeviceAction.REMOVED


@dataclass(frozen=True)
class VolumeUse:
    """Bytes the restore writes to one volume, and the volume's free bytes (None: unknown)."""

    volume: str
    needed: int
    free: Optional[int]

    @property
    def short(self) -> bool:
        """Whether the volume is known to have too little free space."""
        return self.free is not None and self.needed > self.free


@dataclass(frozen=True)
class ConfigPlacement:
    """One configuration file of the save set and where it is staged before the import."""

    part: str
    dest_path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VmPlan:
    """Everything a restore of one VM will do, or the problems that keep it from starting."""

    source: VmRef
    name: str
    keep_id: bool
    node: str
    cluster: Optional[str]
    cluster_role: bool
    config_root: str
    staging_folder: str
    disks: Tuple[DiskPlacement, ...]
    adapters: Tuple[AdapterPlan, ...]
    dropped: Tuple[DroppedDevice, ...]
    volumes: Tuple[VolumeUse, ...]
    overwrite: Optional[ExistingVm]
    config_version: str
    problems: Tuple[Problem, ...]
    notes: Tuple[str, ...]
    entry: str = ""
    job_id: int = 0
    backup_job_id: int = 0
    node_reason: str = ""
    config_reason: DiskReason = DiskReason.SAME_PATH_FREE
    config_files: Tuple[ConfigPlacement, ...] = ()
    removed_files: Tuple[str, ...] = ()
    force_off: bool = False
    start: bool = False
    generation: Generation = Generation.GEN1
    processors: int = 0
    memory_mb: int = 0
    dynamic_memory: bool = False
    host_logical_processors: Optional[int] = None
    host_memory_mb: Optional[int] = None
    host_config_versions: Tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing blocks the restore."""
        return not self.problems


# --------------------------------------------------------------------------- helpers


def default_entry(manifest: Manifest, options: RestoreOptions) -> str:
    """What to gather the destination through: ``restore_host``, else the cluster or host the VM was on."""
    if options.host:
        return options.host
    return manifest.cluster.name if manifest.cluster is not None else manifest.host.name


def host_build(os_version: str) -> Optional[int]:
    """The Windows build of ``HostFacts.os_version`` (``10.0.17763`` -> 17763), None when unknown."""
    match = _BUILD.search(os_version or "")
    return int(match.group(3)) if match else None


def windows_versions_running(version: str) -> List[str]:
    """Windows Server releases whose Hyper-V runs this configuration version (Microsoft's table)."""
    return [name for build, name in _WINDOWS_BUILDS if version in supported_versions(build)]


def format_size(size: int) -> str:
    """Bytes as a short human-readable size (binary units)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable; keeps type checkers content


def _version_tuple(version: str) -> Tuple[int, int]:
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor or "0")
    except ValueError:
        return (0, 0)


def _split_ext(name: str) -> Tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def _unique(items: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(items))


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def _clean_name(name: str, extensions: Sequence[str]) -> bool:
    return not safety.file_name_problems(name, what="", extensions=extensions, resolve="")


def _adapter_plan(adapter: NetworkAdapter, dest: Optional[str], decision: SwitchDecision) -> AdapterPlan:
    return AdapterPlan(adapter.name, adapter.mac, adapter.switch_name, dest, decision, adapter.static_mac,
                       adapter.settings_id)


# --------------------------------------------------------------------------- the planner


class _Planner:
    """One planning run; collects problems and notes while it decides (see module docstring)."""

    def __init__(self, manifest: Manifest, options: RestoreOptions, destination: Destination, job_id: int) -> None:
        self.m = manifest
        self.o = options
        self.d = destination
        self.job_id = job_id
        self.problems: List[Problem] = []
        self.notes: List[str] = []
        self.planned: Set[str] = set()  # path keys of every file this plan writes
        self.usage: Dict[str, int] = {}  # CSV path key -> bytes already planned there
        self.host: Optional[DestinationHost] = None
        self.node_reason = ""
        self.role = False
        self.overwrite: Optional[ExistingVm] = None
        self.name = options.vm_name or manifest.vm.ref.name
        self.folder = safety.folder_component(self.name)

    def problem(self, message: str, resolve: str) -> None:
        self.problems.append(Problem(message, resolve))

    # ------------------------------------------------------------ the run

    def run(self) -> VmPlan:
        m, o, d = self.m, self.o, self.d
        self.problems += safety.manifest_problems(m)
        what = "restore_vm_name" if o.vm_name else "the VM's name"
        self.problems += safety.vm_name_problems(
            self.name, what=what, resolve="set restore_vm_name to a name of at most 100 printable characters")
        self._check_options()
        self.host = self._choose_node()
        self.role = self._cluster_role()
        keep_id, force_off = self._identity()
        self._check_name()
        config_root, config_root_base, config_reason = self._config_root()
        staging = join_host_path(config_root, f"{STAGING_PREFIX}{self.job_id}") if config_root else ""
        config_files = self._config_files(staging)
        self._check_config_folder(config_root, staging, keep_id)
        disks = self._disks()
        dropped = self._dropped()
        adapters = self._adapters(keep_id)
        self._check_host()
        volumes = self._volumes(disks, config_root, config_files)
        removed: Tuple[str, ...] = ()
        if self.overwrite is not None:
            written = {path_key(p.dest_path) for p in disks}
            removed = tuple(p for p in self.overwrite.disk_paths if path_key(p) not in written)
        checks: List[Tuple[str, str, str]] = []
        if config_root and path_key(config_root) != path_key(config_root_base):
            checks.append(("the configuration folder", config_root, config_root_base))
        if staging:
            checks.append(("the staging folder", staging, config_root))
        checks += [(f"configuration file {shown(c.part)}", c.dest_path, staging) for c in config_files]
        checks += [(f"disk file {p.file_index} ({p.slot})", p.dest_path, p.dest_root) for p in disks if p.dest_path]
        self.problems += safety.placement_problems(checks)
        for folder, reason in sorted(d.unlisted.items()):
            self.notes.append(f"{folder} could not be listed ({reason}): a file there with a planned name stops "
                              "the restore rather than being overwritten")
        host = self.host
        return VmPlan(
            source=m.vm.ref,
            name=self.name,
            keep_id=keep_id,
            node=host.name if host is not None else "",
            cluster=d.cluster.name if d.cluster is not None else None,
            cluster_role=self.role,
            config_root=config_root,
            staging_folder=staging,
            disks=tuple(disks),
            adapters=tuple(adapters),
            dropped=tuple(dropped),
            volumes=tuple(volumes),
            overwrite=self.overwrite,
            config_version=m.vm.version,
            problems=tuple(dict.fromkeys(self.problems)),
            notes=tuple(_unique(self.notes)),
            entry=d.entry,
            job_id=self.job_id,
            backup_job_id=m.backup.job_id,
            node_reason=self.node_reason,
            config_reason=config_reason,
            config_files=tuple(config_files),
            removed_files=removed,
            force_off=force_off,
            start=o.start,
            generation=m.vm.generation,
            processors=m.vm.processors,
            memory_mb=m.vm.memory_mb,
            dynamic_memory=m.vm.dynamic_memory,
            host_logical_processors=host.logical_processors if host is not None else None,
            host_memory_mb=host.memory_mb if host is not None else None,
            host_config_versions=tuple(host.facts.supported_config_versions) if host is not None else (),
        )

    # ------------------------------------------------------------ options

    def _check_options(self) -> None:
        o = self.o
        if o.overwrite and o.new_id:
            self.problem("restore_overwrite=yes replaces the VM that has the same ID, restore_new_id=yes restores "
                         "a copy with a new ID: the two contradict each other",
                         "set only one of restore_overwrite=yes and restore_new_id=yes")
        example = "C:\\ClusterStorage\\Volume1\\VMs or D:\\Hyper-V"
        if o.storage:
            self.problems += safety.host_path_problems(
                o.storage, what="restore_storage",
                resolve=f"set restore_storage to an absolute folder such as {example}")
        for mapping in o.disk_map:
            self.problems += safety.host_path_problems(
                mapping.folder, what=f"restore_disk_map target of {shown(mapping.source)}",
                resolve=f"map the disk to an absolute folder such as {example}, or to a file path ending in .vhdx")

    # ------------------------------------------------------------ node, role, identity, name

    def _usable(self, name: str) -> Optional[DestinationHost]:
        host = self.d.host(name)
        cluster = self.d.cluster
        if host is None or not host.up:
            return None
        if cluster is not None:
            node = next((n for n in cluster.nodes if name_key(n.name) == name_key(name)), None)
            if node is not None and node.state is not NodeState.UP:
                return None
        return host

    def _node_state(self, name: str) -> str:
        cluster = self.d.cluster
        node = None if cluster is None else next((n for n in cluster.nodes if name_key(n.name) == name_key(name)), None)
        if node is not None and node.state is not NodeState.UP:
            return node.state.name.lower()
        host = self.d.host(name)
        return "not up" if host is None or not host.up else "up"

    def _choose_node(self) -> Optional[DestinationHost]:
        d, o = self.d, self.o
        cluster = d.cluster
        if cluster is None:
            host = d.hosts[0] if d.hosts else None
            if host is None:
                self.problem(f"the destination {shown(d.entry)} reported no Hyper-V host",
                             "check restore_host: it must name a Hyper-V host, a cluster node or a cluster")
                return None
            if o.node and name_key(o.node) != name_key(host.name):
                self.problem(f"restore_node={o.node} is not a node of the destination: {host.name} is a "
                             "standalone host",
                             "leave restore_node empty, or set restore_host to the cluster that has this node")
            self.node_reason = "the standalone host"
            return host
        names = [n.name for n in cluster.nodes]
        up = [h.name for h in sorted(d.hosts, key=lambda h: name_key(h.name)) if self._usable(h.name)]
        up_text = ", ".join(up) or "none"
        if o.node:
            if all(name_key(n) != name_key(o.node) for n in names):
                self.problem(f"restore_node={o.node} is not a node of cluster {cluster.name} "
                             f"(its nodes: {', '.join(names)})", f"set restore_node to a node that is up: {up_text}")
            else:
                host = self._usable(o.node)
                if host is not None:
                    self.node_reason = "restore_node"
                    return host
                self.problem(f"restore_node={o.node} is {self._node_state(o.node)} in cluster {cluster.name}",
                             f"set restore_node to a node that is up ({up_text}), or bring {o.node} up")
        elif any(name_key(n) == name_key(d.entry) for n in names):
            host = self._usable(d.entry)
            if host is not None:
                self.node_reason = "named by restore_host"
                return host
            self.problem(f"restore_host={d.entry} is {self._node_state(d.entry)} in cluster {cluster.name}",
                         f"set restore_host to the cluster {cluster.name} or to a node that is up ({up_text})")
        group = self.m.cluster.group_of(self.m.vm.ref.guid) if self.m.cluster is not None else None
        original = group.owner_node if group is not None else self.m.host.name
        if not o.node and original and any(name_key(n) == name_key(original) for n in names):
            host = self._usable(original)
            if host is not None:
                self.node_reason = "the original owner"
                return host
        candidates = [h for h in sorted(d.hosts, key=lambda h: name_key(h.name)) if self._usable(h.name)]
        if not candidates:
            self.problem(f"no node of cluster {cluster.name} is up", "bring a node up and restore again")
            return None
        best = max(candidates, key=lambda h: -1 if h.memory_mb is None else h.memory_mb)
        self.node_reason = "the up node with the most memory"
        if best.memory_mb is None:
            self.node_reason = "the first node that is up (memory of the nodes unknown)"
        return best

    def _cluster_role(self) -> bool:
        if self.d.cluster is None:
            if self.o.cluster_role:
                self.problem(f"restore_cluster_role=yes, but the destination {self.d.entry} is a standalone host, "
                             "not a cluster", "set restore_cluster_role=no, or set restore_host to a cluster")
            return False
        return True if self.o.cluster_role is None else self.o.cluster_role

    def _identity(self) -> Tuple[bool, bool]:
        """(keep the ID, turn the overwritten VM off) and ``self.overwrite``."""
        o, d = self.o, self.d
        guid = self.m.vm.ref.guid
        key = name_key(guid.strip("{}"))
        existing = next((v for v in d.vms if name_key(v.guid.strip("{}")) == key), None)
        role = None
        if existing is None and d.cluster is not None:
            # A VM on a node that is down is not in the inventory, but its cluster role still is.
            role = next((g for g in d.cluster.groups if name_key((g.vm_guid or "").strip("{}")) == key), None)
        if role is not None and not o.new_id:
            self.problem(f"cluster {d.cluster.name if d.cluster else ''} has the role {shown(role.name)} for a VM "
                         f"with the ID {guid} (owner {role.owner_node}), but its node did not report the VM",
                         f"bring {role.owner_node} up and restore again (restore_overwrite=yes can then replace "
                         "it), or set restore_new_id=yes to restore a copy")
            return True, False
        if existing is None:
            if role is not None:
                self.notes.append(f"cluster role {shown(role.name)} holds a VM with ID {guid}: the restored VM gets "
                                  "a new ID (restore_new_id=yes)")
                return False, False
            if o.overwrite:
                self.notes.append(f"restore_overwrite=yes: no VM with ID {guid} exists at {d.entry}; "
                                  "nothing is replaced")
            return o.new_id is not True, False
        state = existing.state.value
        if o.overwrite and not o.new_id:
            self.overwrite = existing
            force_off = False
            if existing.state is not PowerState.OFF:
                if o.force_off:
                    force_off = True
                    self.notes.append(f"{existing} is {state}: it is turned off (restore_force_off=yes) after the "
                                      "restored disks are written and verified")
                else:
                    self.problem(f"the VM to overwrite, {existing}, is {state}; restore_overwrite=yes replaces only "
                                 "a VM that is off",
                                 "shut the VM down and restore again, or set restore_force_off=yes to turn it off "
                                 "(the guest is not shut down cleanly)")
            self.notes.append(f"{existing} is replaced: it and its disk files are removed only after the restored "
                              "disks are written and verified")
            return True, force_off
        if o.new_id:
            self.notes.append(f"a VM with ID {guid} exists ({existing}): the restored VM gets a new ID "
                              "(restore_new_id=yes)")
            return False, False
        asked = " and restore_new_id=no keeps the ID" if o.new_id is False else ""
        self.problem(f"a VM with the ID {guid} already exists at {d.entry}: {existing}, {state}{asked}",
                     "set restore_new_id=yes to restore a copy with a new ID, or restore_overwrite=yes to replace "
                     "the existing VM")
        return True, False

    def _check_name(self) -> None:
        d = self.d
        key = name_key(self.name)
        replaced = self.overwrite
        if self.role and d.cluster is not None:
            taken = [g for g in d.cluster.groups if name_key(g.name) == key
                     and (replaced is None or name_key(g.vm_guid or "") != name_key(replaced.guid))]
            if taken:
                self.problem(f"cluster {d.cluster.name} already has a role named {shown(self.name)} "
                             f"(owner {taken[0].owner_node}); cluster role names are unique",
                             "set restore_vm_name to another name, or restore_cluster_role=no")
                return
        others = [v for v in d.vms if name_key(v.name) == key and v is not replaced]
        if others:
            self.notes.append(f"another VM named {shown(self.name)} exists at {d.entry} ({others[0]}): the restored "
                              "VM has the same name (set restore_vm_name to tell them apart)")

    # ------------------------------------------------------------ folders

    def _csv_of(self, path: str) -> Optional[Tuple[str, List[str]]]:
        r"""(CSV path, components below it) when ``path`` lies on a cluster shared volume (source or destination)."""
        parsed = safety.split_host_path(path)
        if parsed is None or parsed[0].startswith("\\\\"):
            return None
        root, comps = parsed
        known: List[str] = []
        roots: List[str] = ["C:\\ClusterStorage"]
        for cluster in (self.m.cluster, self.d.cluster):
            if cluster is not None:
                known += [v.path for v in cluster.volumes]
                roots.append(cluster.shared_volumes_root)
        for volume in sorted(known, key=len, reverse=True):
            hit = self._below(root, comps, volume, strict=False)
            if hit is not None:
                return volume, hit
        for base in roots:
            hit = self._below(root, comps, base, strict=True)
            if hit is not None:
                return join_host_path(base, hit[0]), hit[1:]
        return None

    @staticmethod
    def _below(root: str, comps: List[str], folder: str, *, strict: bool) -> Optional[List[str]]:
        parsed = safety.split_host_path(folder)
        if parsed is None or name_key(parsed[0]) != name_key(root):
            return None
        prefix = parsed[1]
        if len(comps) < len(prefix) + (1 if strict else 0):
            return None
        if any(name_key(a) != name_key(b) for a, b in zip(comps, prefix)):
            return None
        return comps[len(prefix):]

    def _dest_csv(self, path: str) -> Optional[SharedVolume]:
        """The destination CSV whose root is ``path``."""
        cluster = self.d.cluster
        if cluster is None:
            return None
        return next((v for v in cluster.volumes if path_key(v.path) == path_key(path)), None)

    def _best_csv(self) -> Optional[SharedVolume]:
        """The destination CSV with the most free space left after what this plan already put there."""
        cluster = self.d.cluster
        if cluster is None or not cluster.volumes:
            return None
        ordered = sorted(cluster.volumes, key=lambda v: path_key(v.path))
        return max(ordered, key=lambda v: v.free_bytes - self.usage.get(path_key(v.path), 0))

    def _no_csv(self, what: str) -> None:
        cluster = self.d.cluster
        name = cluster.name if cluster is not None else self.d.entry
        self.problem(f"{what} needs a cluster shared volume, and cluster {name} reports none",
                     "set restore_storage (or restore_disk_map) to a folder on shared storage of the cluster, "
                     "or restore_cluster_role=no")

    def _default(self, disk: bool, what: str, why: str) -> Tuple[str, str, DiskReason]:
        host = self.host
        if host is None:
            return "", "", DiskReason.DEFAULT_PATH  # no destination host: that problem is already listed
        base = host.facts.default_vhd_path if disk else host.facts.default_vm_path
        kind = "virtual hard disk" if disk else "virtual machine"
        if not base or safety.split_host_path(base) is None:
            self.problem(f"{what}: {why}, and {host.name} reports no usable default {kind} folder ({shown(base)})",
                         f"set restore_storage (or restore_disk_map) to a folder on {host.name}")
            return "", "", DiskReason.DEFAULT_PATH
        self.notes.append(f"{what}: {why}; it goes to the default {kind} folder of {host.name}, {base}")
        return join_host_path(base, self.folder), base, DiskReason.DEFAULT_PATH

    def _place(self, source_folder: str, *, disk: bool, what: str) -> Tuple[str, str, DiskReason]:
        """(folder, the destination root it lies under, reason) for files that were in ``source_folder``."""
        d, o = self.d, self.o
        sub = [self.folder, VHD_FOLDER] if disk else [self.folder]
        if o.storage:
            if safety.split_host_path(o.storage) is None:
                return "", "", DiskReason.STORAGE  # listed by the option checks; nothing placed there
            base = o.storage.replace("/", "\\").rstrip("\\")
            return join_host_path(base, *sub), base, DiskReason.STORAGE
        if safety.split_host_path(source_folder) is None:
            # A forged or empty folder: its problem is listed; never derive a destination from it.
            return self._default(disk, what, "the backed-up folder is not a usable path")
        csv = self._csv_of(source_folder)
        if csv is not None:
            volume, relative = csv
            if d.cluster is None:
                why = f"{volume} is a cluster shared volume and {d.entry} is a standalone host"
                return self._default(disk, what, why)
            same = self._dest_csv(volume)
            if same is not None:
                return source_folder, same.path, DiskReason.SAME_PATH_FREE
            best = self._best_csv()
            if best is None:
                self._no_csv(what)
                return "", "", DiskReason.CSV_BY_FREE_SPACE
            self.notes.append(f"{what}: cluster {d.cluster.name} has no {volume}; it goes to {best.path}, "
                              "the CSV with the most free space")
            return join_host_path(best.path, *relative), best.path, DiskReason.CSV_BY_FREE_SPACE
        if source_folder.startswith("\\\\"):
            return source_folder, source_folder, DiskReason.SAME_PATH_FREE
        if self.role and d.cluster is not None:
            best = self._best_csv()
            if best is None:
                self._no_csv(what)
                return "", "", DiskReason.CSV_BY_FREE_SPACE
            self.notes.append(f"{what} was on local storage ({source_folder}); a highly available VM needs shared "
                              f"storage, so it goes to {best.path}, the CSV with the most free space")
            return join_host_path(best.path, *sub), best.path, DiskReason.CSV_BY_FREE_SPACE
        drive = source_folder[:3]
        if d.volume_free and all(path_key(v) != path_key(drive) for v in d.volume_free):
            host = self.host.name if self.host is not None else d.entry
            return self._default(disk, what, f"{host} has no volume {drive}")
        return source_folder, source_folder, DiskReason.SAME_PATH_FREE

    def _check_target(self, path: str, option: str) -> None:
        """A folder the operator named must be somewhere the destination can use."""
        d = self.d
        if safety.split_host_path(path) is None or d.cluster is None:
            return
        csv = self._csv_of(path)
        volumes = ", ".join(v.path for v in d.cluster.volumes) or "none"
        if csv is not None and self._dest_csv(csv[0]) is None:
            self.problem(f"{option} {shown(path)} is on {csv[0]}, which is not a cluster shared volume of "
                         f"{d.cluster.name} (its CSVs: {volumes})", f"set {option} to a folder on one of its CSVs")
        elif csv is None and not path.startswith("\\\\") and self.role:
            self.problem(f"{option} {shown(path)} is local storage of one node; a highly available VM needs its "
                         "files on a cluster shared volume or an SMB share",
                         f"set {option} to a folder on a CSV ({volumes}), or restore_cluster_role=no")

    def _config_root(self) -> Tuple[str, str, DiskReason]:
        if self.o.storage:
            self._check_target(self.o.storage, "restore_storage")
        source = self.m.vm.config_root
        what = "the configuration"
        if not source:
            folder, base, reason = self._default(False, what, "the manifest names no configuration folder")
        else:
            folder, base, reason = self._place(source, disk=False, what=what)
        need = 2 * self._config_bytes()  # staged copy and imported copy exist at the same time
        volume = self._dest_volume(folder)
        if volume is not None:
            self.usage[path_key(volume.path)] = self.usage.get(path_key(volume.path), 0) + need
        return folder, base, reason

    def _config_bytes(self) -> int:
        return sum(p.size for p in self.m.backup.parts if p.kind is PartKind.CONFIG)

    def _config_files(self, staging: str) -> List[ConfigPlacement]:
        out: List[ConfigPlacement] = []
        for part in self.m.backup.parts:
            if part.kind is not PartKind.CONFIG:
                continue
            name = safety.config_file_name(part.name)
            if name is None or not staging or not _clean_name(name, safety.CONFIG_EXTENSIONS):
                continue  # never placed: the manifest checks list it (or no folder: listed elsewhere)
            # The export layout Hyper-V imports from: definition and state files in "Virtual Machines".
            out.append(ConfigPlacement(part.name, join_host_path(staging, VM_FOLDER, name), part.size, part.sha256))
        names = [safety.config_file_name(p.name) or "" for p in self.m.backup.parts if p.kind is PartKind.CONFIG]
        if not any(n.casefold().endswith((".vmcx", ".xml")) for n in names):
            self.problem(f"the manifest of {self.m.vm.ref} lists no configuration file (.vmcx/.xml) to import",
                         _RESOLVE_MANIFEST)
        return out

    def _check_config_folder(self, config_root: str, staging: str, keep_id: bool) -> None:
        d = self.d
        if staging and d.exists(staging):
            self.problem(f"the staging folder {staging} exists (left by an interrupted restore with job id "
                         f"{self.job_id})", f"remove {staging} and restore again")
        if not config_root or not keep_id or self.overwrite is not None:
            return
        guid = self.m.vm.ref.guid.strip("{}")
        for ext in (".vmcx", ".xml"):
            path = join_host_path(config_root, VM_FOLDER, guid + ext)
            if d.exists(path):
                self.problem(f"configuration files of a VM with the ID {guid} are in {path}, but no such VM is "
                             "registered (left by a deleted or unregistered VM)",
                             f"remove {join_host_path(config_root, VM_FOLDER)}\\{guid}.* first, or set "
                             "restore_new_id=yes, or restore_storage to another folder")

    # ------------------------------------------------------------ disks

    def _drive_index(self) -> Dict[str, Drive]:
        return {name_key(d.settings_id): d for d in self.m.vm.drives}

    def _mappings(self, drives: Dict[str, Drive]) -> Dict[str, Tuple[DiskMapping, Optional[int]]]:
        """settings ID key -> (mapping, index of the file a file-path mapping renames)."""
        chosen: Dict[str, Tuple[DiskMapping, Optional[int]]] = {}
        disks = [d for d in self.m.disks if d.chain]
        for mapping in self.o.disk_map:
            key = name_key(mapping.source)
            hits: List[Tuple[DiskBackup, int]] = []
            for disk in disks:
                drive = drives.get(name_key(disk.settings_id))
                if drive is not None and key in (name_key(str(drive.slot)), path_key(drive.path or "")):
                    hits.append((disk, disk.chain[0].index))
                    continue
                for file in disk.chain:
                    if key in (path_key(file.info.path), name_key(win_basename(file.info.path))):
                        hits.append((disk, file.index))
                        break
            if not hits:
                known = "; ".join(
                    f"{drives[name_key(d.settings_id)].slot if name_key(d.settings_id) in drives else '?'} "
                    f"{win_basename(d.chain[0].info.path)}" for d in disks)
                self.problem(f"restore_disk_map: {shown(mapping.source)} matches no disk of {self.m.vm.ref}",
                             f"name a disk by its file name, source path or slot: {known or 'the VM has no disks'}")
                continue
            is_file = mapping.folder.casefold().endswith(safety.DISK_EXTENSIONS)
            if is_file and len(hits) > 1:
                self.problem(f"restore_disk_map: {shown(mapping.source)} matches {len(hits)} disks, but "
                             f"{shown(mapping.folder)} names a single file",
                             "name each disk by its source path or slot, or map them to a folder")
                continue
            for disk, index in hits:
                key_id = name_key(disk.settings_id)
                if key_id in chosen and chosen[key_id][0] != mapping:
                    self.problem(f"restore_disk_map maps the disk {win_basename(disk.chain[0].info.path)} twice "
                                 f"({shown(chosen[key_id][0].folder)} and {shown(mapping.folder)})",
                                 "keep one restore_disk_map entry per disk")
                    continue
                source = next(f.info.path for f in disk.chain if f.index == index)
                if is_file and _split_ext(win_basename(mapping.folder))[1].casefold() != \
                        _split_ext(win_basename(source))[1].casefold():
                    self.problem(f"restore_disk_map maps {shown(win_basename(source))} to {shown(mapping.folder)}, "
                                 "a file of another format",
                                 f"keep the extension {_split_ext(win_basename(source))[1]} or map it to a folder")
                chosen[key_id] = (mapping, index if is_file else None)
        return chosen

    def _disks(self) -> List[DiskPlacement]:
        drives = self._drive_index()
        mappings = self._mappings(drives)
        for mapping, _ in {id(m): m for m in mappings.values()}.values():
            target = win_dirname(mapping.folder) if mapping.folder.casefold().endswith(safety.DISK_EXTENSIONS) \
                else mapping.folder
            self._check_target(target, "restore_disk_map")
        out: List[DiskPlacement] = []
        for disk in self.m.disks:
            if not disk.chain:
                continue
            drive = drives.get(name_key(disk.settings_id))
            if drive is None or drive.kind is not DriveKind.VIRTUAL_DISK:
                self.problem(f"the manifest has files of disk {shown(disk.settings_id)}, but the VM has no virtual "
                             "hard disk drive with that ID", _RESOLVE_MANIFEST)
                continue
            out += self._chain(disk, drive, mappings.get(name_key(disk.settings_id)))
        return out

    def _chain(self, disk: DiskBackup, drive: Drive,
               mapped: Optional[Tuple[DiskMapping, Optional[int]]]) -> List[DiskPlacement]:
        leaf_folder = win_dirname(disk.chain[0].info.path)
        what = f"disk {drive.slot}"
        if mapped is not None:
            mapping, _ = mapped
            is_file = mapping.folder.casefold().endswith(safety.DISK_EXTENSIONS)
            folder = (win_dirname(mapping.folder) if is_file else mapping.folder).replace("/", "\\").rstrip("\\")
            if safety.split_host_path(folder) is None:
                folder = ""  # listed by the option checks; nothing placed there
            base, reason = folder, DiskReason.MAPPED
        else:
            folder, base, reason = self._place(leaf_folder, disk=True, what=what)
        need = sum(f.file_size for f in disk.chain)
        volume = self._dest_volume(folder)
        if volume is not None:
            self.usage[path_key(volume.path)] = self.usage.get(path_key(volume.path), 0) + need
        if len({path_key(win_dirname(f.info.path)) for f in disk.chain}) > 1:
            self.notes.append(f"{what}: the files of its differencing chain were in several folders; they are "
                              f"restored together into {folder or 'one folder'}")
        dests: List[Tuple[str, DiskReason]] = []
        for file in disk.chain:
            name = win_basename(file.info.path)
            if mapped is not None and mapped[1] == file.index:
                name = win_basename(mapped[0].folder)
            file_reason = reason
            if reason is DiskReason.SAME_PATH_FREE and path_key(win_dirname(file.info.path)) != path_key(folder):
                file_reason = DiskReason.CHAIN_FOLDER
            if folder and _clean_name(name, safety.DISK_EXTENSIONS):
                dests.append(self._free_name(folder, name, file.index, file_reason))
            else:  # no folder, or a forged name (listed by the manifest checks): placed nowhere
                dests.append(("", file_reason))
        out: List[DiskPlacement] = []
        for position, file in enumerate(disk.chain):
            parent = dests[position + 1][0] if position + 1 < len(dests) else None
            out.append(DiskPlacement(
                slot=drive.slot, settings_id=drive.settings_id, file_index=file.index, source_path=file.info.path,
                dest_path=dests[position][0], size=file.file_size, sha256=file.sha256, reason=dests[position][1],
                parent_dest_path=parent or None, folder_reason=reason, dest_root=base, chain_position=position))
        return out

    def _free_name(self, folder: str, name: str, index: int, reason: DiskReason) -> Tuple[str, DiskReason]:
        """A destination path for ``name`` in ``folder`` that neither exists nor is planned twice."""
        dest = join_host_path(folder, name)
        key = path_key(dest)
        stem, ext = _split_ext(name)
        if key in self.planned:
            dest, reason = self._unused(folder, f"{stem}-{index}", ext), DiskReason.RENAMED_DUPLICATE
        elif key in self.d.existing_files:
            replaced = self.overwrite
            if replaced is not None and key in {path_key(p) for p in replaced.disk_paths}:
                reason = DiskReason.REPLACES_OVERWRITTEN
            else:
                dest = self._unused(folder, f"{stem}{RENAMED_INFIX}{self.job_id}", ext)
                reason = DiskReason.RENAMED_EXISTS
        self.planned.add(path_key(dest))
        return dest, reason

    def _unused(self, folder: str, stem: str, ext: str) -> str:
        number = 1
        while True:  # ends: the existing and planned sets are finite
            candidate = join_host_path(folder, f"{stem}{'' if number == 1 else f'-{number}'}{ext}")
            key = path_key(candidate)
            if key not in self.planned and key not in self.d.existing_files:
                return candidate
            number += 1

    # ------------------------------------------------------------ devices, adapters, host limits

    def _dropped(self) -> List[DroppedDevice]:
        out: List[DroppedDevice] = []
        backed = {name_key(d.settings_id): d for d in self.m.disks}
        for drive in self.m.vm.drives:
            slot = str(drive.slot)
            if drive.kind is DriveKind.PASS_THROUGH:
                out.append(DroppedDevice(slot, drive.settings_id,
                                         "pass-through disk: checkpoints do not include physical disks, so it was "
                                         "not backed up; attach the host disk again after the restore"))
            elif drive.kind is DriveKind.SHARED_DISK:
                out.append(DroppedDevice(slot, drive.settings_id,
                                         f"VHD Set {shown(drive.path or '')}: shared disks are skipped at backup; "
                                         "attach the VHD Set again after the restore"))
            elif drive.kind is DriveKind.VIRTUAL_DISK:
                disk = backed.get(name_key(drive.settings_id))
                if disk is None:
                    self.problem(f"drive {slot} ({shown(drive.path or '')}) of the VM is not in the manifest's list "
                                 "of disks", _RESOLVE_MANIFEST)
                elif not disk.chain:
                    out.append(DroppedDevice(slot, drive.settings_id,
                                             f"not backed up: {disk.not_backed_up or 'no reason recorded'}"))
            elif drive.path:
                out += self._media(drive, slot)
        return out

    def _media(self, drive: Drive, slot: str) -> List[DroppedDevice]:
        media = drive.path or ""
        kind = "ISO image" if drive.kind is DriveKind.DVD else "floppy image"
        if safety.split_host_path(media) is None:
            reason = f"{kind} {shown(media)} is not a usable path"
        elif self.d.exists(media):
            return []
        elif any(path_key(k) == path_key(win_dirname(media)) for k in self.d.unlisted):
            reason = f"{kind} {media} could not be checked on the destination"
        else:
            reason = f"{kind} {media} is not on the destination"
        return [DroppedDevice(slot, drive.settings_id, reason, DeviceAction.EMPTIED)]

    def _adapters(self, keep_id: bool) -> List[AdapterPlan]:
        o, host = self.o, self.host
        out: List[AdapterPlan] = []
        used: Set[str] = set()
        for adapter in self.m.vm.adapters:
            source = adapter.switch_name
            plan = functools.partial(_adapter_plan, adapter)
            if not adapter.connected or source is None:
                out.append(plan(None, SwitchDecision.WAS_DISCONNECTED))
                continue
            mapped = o.mapped_switch(source)
            if mapped is not None:
                used.add(name_key(source))
            target = mapped if mapped is not None else source
            decision = SwitchDecision.MAPPED if mapped is not None else SwitchDecision.KEPT
            if host is None:
                out.append(plan(target, decision))
                continue
            switch = host.facts.switch_named(target)
            if switch is None:
                label = f"network adapter {shown(adapter.name)} ({adapter.mac})"
                via = f" (restore_switch_map {source}={target})" if mapped is not None else ""
                if o.missing_switch is MissingSwitch.DISCONNECT:
                    out.append(plan(None, SwitchDecision.DISCONNECTED))
                    self.notes.append(f"{label}: {host.name} has no switch {shown(target)}{via}; the adapter is "
                                      "restored disconnected (restore_missing_switch=disconnect)")
                else:
                    names = ", ".join(s.name for s in host.facts.switches) or "no switches"
                    out.append(plan(None, SwitchDecision.MISSING))
                    self.problem(f"could not find Ethernet switch {shown(target)} on {host.name} for {label}{via}",
                                 f"set restore_switch_map={source}=<switch> to a switch of {host.name} ({names}), "
                                 "or restore_missing_switch=disconnect")
                continue
            out.append(plan(switch.name, decision))
            if self.role and self.d.cluster is not None:
                lacking = [h.name for h in self.d.hosts
                           if h is not host and h.up and h.facts.switch_named(target) is None]
                if lacking:
                    self.notes.append(f"network adapter {shown(adapter.name)}: {', '.join(lacking)} has no switch "
                                      f"{shown(switch.name)}; after a failover there the adapter is disconnected")
            if not keep_id and adapter.static_mac:
                self.notes.append(f"network adapter {shown(adapter.name)} keeps its static MAC address {adapter.mac}; "
                                  "change it if the original VM runs on the same network")
        for entry in o.switch_map:
            if name_key(entry.source) not in used:
                self.notes.append(f"restore_switch_map: no network adapter of the VM is connected to "
                                  f"{shown(entry.source)}; the entry {entry.source}={entry.target} is not used")
        return out

    def _check_host(self) -> None:
        host = self.host
        if host is None:
            return
        vm = self.m.vm
        name = host.name
        version = vm.version
        supported = list(host.facts.supported_config_versions)
        build = host_build(host.facts.os_version)
        if not supported:
            self.notes.append(f"{name} did not say which configuration versions it runs "
                              f"(OS {host.facts.os_version or '?'}); version {version} is not checked")
        elif version not in supported:
            windows = windows_versions_running(version)
            able = [h.name for h in self.d.hosts
                    if h is not host and self._usable(h.name) and version in h.facts.supported_config_versions]
            resolve = f"restore to a host that runs configuration version {version}"
            resolve += f" ({', '.join(windows)})" if windows else " (no Windows Server release known to bareos-hyperv)"
            if able:
                resolve += f"; in this cluster {', '.join(able)} can: set restore_node={able[0]}"
            else:
                resolve += " with restore_host"
            if _version_tuple(version) < min(_version_tuple(v) for v in supported):
                resolve += (f"; or restore it to an older host first and upgrade its configuration version there "
                            f"(Update-VMVersion) to one {name} runs")
            self.problem(f"the VM's configuration version {version} cannot run on {name} "
                         f"(build {build if build is not None else '?'}, runs {', '.join(supported)})", resolve)
        if vm.generation is Generation.GEN2 and build is not None and build < _GEN2_MIN_BUILD:
            self.problem(f"the VM is generation 2; {name} (build {build}) runs only generation 1 VMs",
                         "restore to a host running Windows Server 2012 R2 or later (restore_host / restore_node)")
        if host.logical_processors is None:
            self.notes.append(f"{name} did not report its logical processors; the VM's "
                              f"{_count(vm.processors, 'virtual processor')} are not checked")
        elif vm.processors > host.logical_processors:
            self.problem(f"the VM has {vm.processors} virtual processors; {name} has {host.logical_processors} "
                         "logical processors",
                         f"restore to a host with at least {vm.processors} logical processors "
                         "(restore_host / restore_node)")
        startup = " at startup" if vm.dynamic_memory else ""
        if host.memory_mb is None:
            self.notes.append(f"{name} did not report its memory; the VM's {vm.memory_mb} MB{startup} are not checked")
        elif vm.memory_mb > host.memory_mb:
            self.problem(f"the VM needs {vm.memory_mb} MB of memory{startup}; {name} has {host.memory_mb} MB",
                         f"restore to a host with more than {vm.memory_mb} MB of memory (restore_host / restore_node)")

    # ------------------------------------------------------------ space

    def _dest_volume(self, path: str) -> Optional[SharedVolume]:
        """The destination CSV that holds ``path``."""
        cluster = self.d.cluster
        parsed = safety.split_host_path(path) if path else None
        if cluster is None or parsed is None:
            return None
        for volume in sorted(cluster.volumes, key=lambda v: len(v.path), reverse=True):
            if self._below(parsed[0], parsed[1], volume.path, strict=False) is not None:
                return volume
        return None

    def _volume_key(self, path: str) -> Tuple[str, Optional[int]]:
        csv = self._dest_volume(path)
        if csv is not None:
            return csv.path, csv.free_bytes
        parsed = safety.split_host_path(path)
        root = parsed[0] if parsed is not None else path
        label = root if root.startswith("\\\\") else f"{root}\\"
        free = next((v for k, v in self.d.volume_free.items() if path_key(k) == path_key(label)), None)
        return label, free

    def _volumes(self, disks: Sequence[DiskPlacement], config_root: str,
                 config_files: Sequence[ConfigPlacement]) -> List[VolumeUse]:
        needed: Dict[str, Tuple[str, int, Optional[int]]] = {}

        def add(path: str, size: int) -> None:
            if not path:
                return
            label, free = self._volume_key(path)
            key = path_key(label)
            _, total, _ = needed.get(key, (label, 0, free))
            needed[key] = (label, total + size, free)

        add(config_root, 2 * sum(c.size for c in config_files))
        for placement in disks:
            add(placement.dest_path, placement.size)
        out: List[VolumeUse] = []
        for label, total, free in needed.values():
            use = VolumeUse(label, total, free)
            out.append(use)
            if free is None:
                # A file share of Hyper-V over SMB (\\server\share): neither Hyper-V nor the cluster
                # reports its free space, so it is not checked; a full share fails the write (disk full).
                why = " (an SMB file share: Hyper-V does not report its free space)" if label.startswith("\\\\") else ""
                self.notes.append(f"free space on {label} is not known{why}; the restore writes {format_size(total)} "
                                  "there")
            elif use.short:
                other = "another CSV, " if self.d.cluster is not None else ""
                self.problem(f"not enough space on {label}: the restore writes {format_size(total)}, "
                             f"{format_size(free)} is free",
                             f"free space on {label}, or put files on {other}another volume with restore_storage "
                             "or restore_disk_map")
        return out


# --------------------------------------------------------------------------- entry points


def make_plan(manifest: Manifest, options: RestoreOptions, destination: Destination, *, job_id: int) -> VmPlan:
    """Plan the restore of the VM in ``manifest`` into ``destination`` (pure; see module docstring).

    Never raises for a problem of the manifest, the options or the destination: every blocking
    problem is in ``VmPlan.problems`` (``plan.ok`` is False), every decision worth knowing in
    ``VmPlan.notes``.
    """
    return _Planner(manifest, options, destination, job_id).run()


def candidate_folders(manifest: Manifest, options: RestoreOptions,
                      destination_without_files: Destination) -> Tuple[CandidateFolder, ...]:
    r"""The destination folders whose entries :func:`make_plan` needs, and the node to list each through.

    The folders do not depend on which files exist (only names inside a folder do), so they are
    those of a plan made without files: the configuration folder (it holds the staging folder)
    and its ``Virtual Machines`` folder (left-over configuration of the same ID), every disk
    chain's folder, and the folders of ISO/floppy images.  Paths that are not clean absolute
    paths are left out: nothing from a forged manifest is ever listed.
    """
    bare = dataclasses.replace(destination_without_files, existing_files=frozenset(), unlisted={})
    plan = make_plan(manifest, options, bare, job_id=0)
    node = plan.node or bare.entry
    folders: List[str] = []
    if plan.config_root:
        folders += [plan.config_root, join_host_path(plan.config_root, VM_FOLDER)]
    folders += [win_dirname(p.dest_path) for p in plan.disks if p.dest_path]
    folders += [win_dirname(d.path) for d in manifest.vm.drives
                if d.kind in (DriveKind.DVD, DriveKind.FLOPPY) and d.path]
    out: Dict[str, CandidateFolder] = {}
    for folder in folders:
        if folder and safety.split_host_path(folder) is not None:
            out.setdefault(path_key(folder), CandidateFolder(node, folder))
    return tuple(out.values())
