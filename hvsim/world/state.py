r"""State of a simulated Hyper-V failover cluster and standalone hosts.

The :class:`World` holds nodes (each with switches, default paths, OS
version), an optional cluster (CSVs, VM groups), VMs (live configuration,
checkpoints, reference points), disk chains with resilient change tracking,
and the job engine.  All state changes happen under ``world.lock`` (an RLock:
the WS-Man server is threaded).  A VM's configuration is kept in WMI terms
(VSSD properties plus RASD-family settings) so that rendering WMI instances
and serialising exported ``.vmcx`` files are both direct.

Disk files are created and changed only through :mod:`hvsim.disks`.  A world
built with ``files=False`` keeps disk metadata in memory instead, for tests
that exercise only the WMI surface.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Callable

from hvsim import disks
from hvsim.behaviour import CheckpointBehaviour, WinrmBehaviour
from hvsim.cim import NS_VIRT, CimRef
from hvsim.configversion import LegacyBehaviour, config_extension, is_legacy
from hvsim.faults import FaultPlan
from hvsim.fs import ClusterFileSystem
from hvsim.rights import AccountRights
from hvsim.world.jobs import JobEngine, JobFailure, error_instance

# Msvm_ComputerSystem.EnabledState
VM_RUNNING = 2
VM_OFF = 3
VM_SAVED = 6
VM_PAUSED = 32768
STATE_NAMES: dict[str, int] = {"running": VM_RUNNING, "off": VM_OFF, "saved": VM_SAVED, "paused": VM_PAUSED}

VST_REALIZED = "Microsoft:Hyper-V:System:Realized"
VST_PLANNED = "Microsoft:Hyper-V:System:Planned"
VST_SNAPSHOT = "Microsoft:Hyper-V:Snapshot:Realized"
VST_RECOVERY = "Microsoft:Hyper-V:Snapshot:Recovery"

SUB_VHD = "Microsoft:Hyper-V:Virtual Hard Disk"
SUB_ISO = "Microsoft:Hyper-V:Virtual CD/DVD Disk"
SUB_PASSTHROUGH = "Microsoft:Hyper-V:Physical Disk Drive"
SUB_DISK_DRIVE = "Microsoft:Hyper-V:Synthetic Disk Drive"
SUB_DVD_DRIVE = "Microsoft:Hyper-V:Synthetic DVD Drive"
SUB_IDE = "Microsoft:Hyper-V:Emulated IDE Controller"
SUB_SCSI = "Microsoft:Hyper-V:Synthetic SCSI Controller"
SUB_NIC = "Microsoft:Hyper-V:Synthetic Ethernet Port"
SUB_CONNECTION = "Microsoft:Hyper-V:Ethernet Connection"

# Windows Server releases: build -> (caption, version, supported configuration versions, default).
OS_RELEASES: dict[int, tuple[str, str, tuple[str, ...], str]] = {
    14393: ("Microsoft Windows Server 2016 Datacenter", "10.0.14393",
            ("5.0", "6.2", "7.0", "7.1", "8.0"), "8.0"),
    17763: ("Microsoft Windows Server 2019 Datacenter", "10.0.17763",
            ("5.0", "6.2", "7.0", "7.1", "8.0", "8.1", "8.2", "8.3", "9.0"), "9.0"),
    20348: ("Microsoft Windows Server 2022 Datacenter", "10.0.20348",
            ("8.0", "8.1", "8.2", "8.3", "9.0", "9.1", "9.2", "9.3", "10.0"), "10.0"),
    26100: ("Microsoft Windows Server 2025 Datacenter", "10.0.26100",
            ("8.0", "8.1", "8.2", "8.3", "9.0", "9.1", "9.2", "9.3", "10.0", "11.0", "12.0"), "12.0"),
}

# Fixed device GUIDs Hyper-V uses in RASD InstanceIDs.
_IDE_GUID = "83F8638B-8DCA-4152-9EDA-2CA8B33039B4"
_PROC_RID = "b637f346-6a0e-4dec-af52-bd70cb80a21d\\0"
_MEM_RID = "4764334d-e001-4176-82ee-5594ec9b530e"

EXPORT_FORMAT = "hvsim-vmcx/1"
_GUID_SUFFIX = re.compile(r"_[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")

Range = tuple[int, int]


def new_guid() -> str:
    """An upper-case GUID without braces, as Hyper-V prints VM and snapshot IDs."""
    return str(uuid.uuid4()).upper()


def utcnow() -> _dt.datetime:
    """Aware UTC now (CIM datetime values)."""
    return _dt.datetime.now(_dt.timezone.utc)


def merge_ranges(*lists: list[Range]) -> list[Range]:
    """Union of (offset, length) ranges, sorted and coalesced."""
    spans = sorted((o, o + n) for lst in lists for o, n in lst if n > 0)
    out: list[list[int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e - s) for s, e in out]


@dataclass
class Switch:
    """A node's virtual switch (``Msvm_VirtualEthernetSwitch``); GUIDs differ per node."""

    name: str
    id: str = field(default_factory=new_guid)


@dataclass
class Node:
    """One Hyper-V host (cluster node or standalone)."""

    name: str
    build: int = 17763
    switches: list[Switch] = field(default_factory=list)
    default_vhd_path: str = "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks"
    default_vm_path: str = "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V"
    logical_processors: int = 16
    memory_mb: int = 131072
    cluster: str | None = None
    state: int = 0  # MSCluster_Node.State: 0 Up
    node_id: int = 1
    # how this node's WinRM answers where real hosts differ (hvsim.behaviour)
    winrm: WinrmBehaviour = field(default_factory=WinrmBehaviour)
    # who the simulation's account is on this node (hvsim.rights): denials on WMI and admin shares
    rights: AccountRights = field(default_factory=AccountRights)

    @property
    def os_caption(self) -> str:
        """Win32_OperatingSystem.Caption."""
        return OS_RELEASES[self.build][0]

    @property
    def os_version(self) -> str:
        """Win32_OperatingSystem.Version."""
        return OS_RELEASES[self.build][1]

    @property
    def supported_versions(self) -> tuple[str, ...]:
        """VM configuration versions this host runs (Get-VMHostSupportedVersion)."""
        return OS_RELEASES[self.build][2]

    @property
    def default_version(self) -> str:
        """Configuration version of new VMs."""
        return OS_RELEASES[self.build][3]

    def switch_by_id(self, sid: str) -> Switch | None:
        """Switch by GUID (case-insensitive)."""
        return next((s for s in self.switches if s.id.lower() == sid.lower()), None)

    def switch_by_name(self, name: str) -> Switch | None:
        """First switch with that friendly name."""
        return next((s for s in self.switches if s.name == name), None)


@dataclass
class Csv:
    """A cluster shared volume ``C:\\ClusterStorage\\Volume<number>``."""

    number: int
    total_bytes: int
    free_bytes: int  # free space when the volume holds no simulator files
    name: str = ""
    volume_guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    owner_node: str = ""


@dataclass
class Group:
    """A VM's cluster group (GroupType 111) with its two resources."""

    name: str
    vm_id: str
    owner_node: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    vm_resource_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    config_resource_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    offline_action: int = 1  # Save


@dataclass
class Cluster:
    """The failover cluster."""

    name: str
    domain: str = "example.test"
    nodes: list[str] = field(default_factory=list)
    csvs: list[Csv] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    shared_volumes_root: str = "C:\\ClusterStorage"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def group_for_vm(self, vm_id: str) -> Group | None:
        """The group of a VM, if it is highly available."""
        return next((g for g in self.groups if g.vm_id.lower() == vm_id.lower()), None)

    def group(self, name: str) -> Group | None:
        """Group by name (case-insensitive)."""
        return next((g for g in self.groups if g.name.lower() == name.lower()), None)


@dataclass
class Setting:
    """One RASD-family setting; InstanceID = ``Microsoft:<config id>\\<rid>``."""

    class_name: str
    rid: str
    props: dict[str, Any]
    parent: str | None = None  # rid of the parent setting (controller, drive, NIC)

    @property
    def subtype(self) -> str:
        """ResourceSubType."""
        return str(self.props.get("ResourceSubType") or "")

    @property
    def host_resource(self) -> list[str]:
        """HostResource values."""
        return list(self.props.get("HostResource") or [])


@dataclass
class Config:
    """A VM configuration (live, planned or checkpoint): VSSD properties and device settings."""

    vssd: dict[str, Any]
    settings: list[Setting]

    def clone(self) -> Config:
        """Deep copy (checkpoints freeze a copy)."""
        return copy.deepcopy(self)

    def find(self, rid: str) -> Setting | None:
        """Setting by rid (case-insensitive)."""
        low = rid.lower()
        return next((s for s in self.settings if s.rid.lower() == low), None)

    def vhds(self) -> list[Setting]:
        """Virtual hard disk SASDs, in device order (the disk index of :meth:`World.guest_write`)."""
        return [s for s in self.settings if s.subtype == SUB_VHD]

    def descendants(self, rid: str) -> list[Setting]:
        """Settings whose parent chain leads to ``rid``."""
        out: list[Setting] = []
        frontier = [rid.lower()]
        while frontier:
            cur = frontier.pop()
            for s in self.settings:
                if s.parent is not None and s.parent.lower() == cur:
                    out.append(s)
                    frontier.append(s.rid.lower())
        return out


@dataclass
class Snapshot:
    """A checkpoint: a frozen configuration and the differencing children created for it."""

    id: str
    config: Config
    vtype: str
    parent_id: str | None
    created: _dt.datetime
    consistency: int
    children: dict[str, str] = field(default_factory=dict)  # rid -> host path of the avhdx made at this point


@dataclass
class ReferencePoint:
    """An RCT-based reference point (``Msvm_VirtualSystemReferencePoint``)."""

    id: str
    vm_id: str
    consistency: int
    created: _dt.datetime
    disk_ids: list[str]
    rct_ids: list[str]
    keys: list[Path | None]  # tracked root file of each disk (None: no RCT)


@dataclass
class Vm:
    """A realized or planned VM."""

    id: str
    node: str
    config: Config
    state: int = VM_OFF
    planned: bool = False
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    current_snapshot: str | None = None
    reference_points: dict[str, ReferencePoint] = field(default_factory=dict)
    guest_vss: bool = True  # integration services backup (volume shadow copy) available in the guest
    # how this VM's host answers when the guest cannot quiesce, and when merges end (hvsim.behaviour)
    checkpoints: CheckpointBehaviour = field(default_factory=CheckpointBehaviour)
    # what the host does with this VM where configuration version 5.0 is not documented (hvsim.configversion)
    legacy: LegacyBehaviour = field(default_factory=LegacyBehaviour)
    created: _dt.datetime = field(default_factory=utcnow)
    last_change: _dt.datetime = field(default_factory=utcnow)
    state_since: float = field(default_factory=time.monotonic)
    pid: int = 0
    last_backup: _dt.datetime | None = None

    @property
    def name(self) -> str:
        """ElementName."""
        return str(self.config.vssd.get("ElementName") or "")

    @property
    def generation(self) -> int:
        """1 or 2 from VirtualSystemSubType."""
        sub = str(self.config.vssd.get("VirtualSystemSubType") or "")
        return 2 if sub.endswith(":2") else 1

    @property
    def version(self) -> str:
        """Configuration version."""
        return str(self.config.vssd.get("Version") or "")

    def live_config_file(self) -> str:
        """Host path of the VM's own ``.vmcx``."""
        root = str(self.config.vssd.get("ConfigurationDataRoot") or "")
        rel = str(self.config.vssd.get("ConfigurationFile") or f"Virtual Machines\\{self.id}.vmcx")
        return str(PureWindowsPath(root) / rel)


@dataclass
class PendingMerge:
    """A differencing disk of a removed checkpoint that Hyper-V is still merging into its parent."""

    vm_id: str
    rid: str
    child: str  # host path of the .avhdx (the VM still runs on it)
    parent: str  # host path it merges into
    due: float  # world clock time the merge ends
    polls_left: int  # requests still to answer before it ends (0: time only)


@dataclass
class RctDisk:
    """Change tracking of one root disk file: ranges written since each RCT id."""

    trackers: dict[str, list[Range]] = field(default_factory=dict)
    seq: int = 0


@dataclass
class DiskSpec:
    """A disk to create for a VM in a scenario."""

    path: str
    fmt: str = "vhdx"
    kind: str = "dynamic"
    size: int = 64 * 1024 * 1024
    controller: str = "scsi"  # "scsi" or "ide"
    fill_ratio: float = 0.25
    block_size: int = 0


def version_at_least(version: str, minimum: str) -> bool:
    """Compare ``major.minor`` configuration versions."""
    def parse(v: str) -> tuple[int, int]:
        major, _, minor = v.partition(".")
        try:
            return int(major), int(minor or 0)
        except ValueError:
            return (0, 0)
    return parse(version) >= parse(minimum)


class World:
    """Everything the simulated Windows side knows; see the module docstring.

    :param root: directory that holds every node's drives and the CSVs (:mod:`hvsim.fs`).
    :param faults: the shared fault plan (JOB_FAIL, JOB_HANG, MIGRATE_VM, RETURN_CODE are honoured here).
    :param clock: monotonic seconds; tests pass a hand-moved clock.
    :param files: False keeps disk metadata in memory instead of creating VHD/VHDX files.
    :param job_duration: seconds a job stays New/Running before it completes.
    :param time_before_removal: seconds a finished job stays visible (Windows: 300).
    :param rct_block_size: granularity of the ranges GetVirtualDiskChanges reports.
    :param rct_max_bytes_per_call: most bytes one GetVirtualDiskChanges call processes
        (clients must loop on ProcessedByteLength).
    """

    def __init__(self, root: Path, *, faults: FaultPlan | None = None,
                 clock: Callable[[], float] = time.monotonic, files: bool = True,
                 job_duration: float = 0.2, time_before_removal: float = 300.0,
                 rct_block_size: int = 64 * 1024, rct_max_bytes_per_call: int = 1 << 40) -> None:
        self.lock = threading.RLock()
        self.root = root
        self.fs = ClusterFileSystem(root)
        self.faults = faults if faults is not None else FaultPlan()
        self.clock = clock
        self.files = files
        self.nodes: dict[str, Node] = {}
        self.cluster: Cluster | None = None
        self.vms: dict[str, Vm] = {}
        self.jobs_engine = JobEngine(clock, self.faults, duration=job_duration,
                                     time_before_removal=time_before_removal)
        self.rct: dict[Path, RctDisk] = {}
        self.diff_parent: dict[Path, Path] = {}
        self.diff_writes: dict[Path, list[Range]] = {}
        self.disk_meta: dict[Path, disks.DiskInfo] = {}
        self.rct_block_size = rct_block_size
        self.rct_max_bytes_per_call = rct_max_bytes_per_call
        self.merges: list[PendingMerge] = []
        self._mac = 0x0A0000

    # ----------------------------------------------------------------- topology
    def add_node(self, name: str, *, build: int = 17763, switches: list[str] | None = None,
                 cluster: bool = False, default_vhd_path: str | None = None,
                 default_vm_path: str | None = None) -> Node:
        """Add a host; ``cluster=True`` joins it to the world's cluster (create it first)."""
        with self.lock:
            key = name.upper()
            node = Node(name=key, build=build, switches=[Switch(s) for s in (switches or [])])
            if default_vhd_path:
                node.default_vhd_path = default_vhd_path
            if default_vm_path:
                node.default_vm_path = default_vm_path
            node.node_id = len(self.nodes) + 1
            if cluster:
                if self.cluster is None:
                    raise ValueError("create the cluster before adding cluster nodes")
                node.cluster = self.cluster.name
                self.cluster.nodes.append(key)
            self.nodes[key] = node
            self.fs.node(key, clustered=cluster)
            return node

    def add_cluster(self, name: str, *, domain: str = "example.test") -> Cluster:
        """Create the (single) failover cluster of this world."""
        with self.lock:
            self.cluster = Cluster(name=name.upper(), domain=domain)
            return self.cluster

    def add_csv(self, total_bytes: int, free_bytes: int, *, owner_node: str | None = None) -> Csv:
        """Add ``C:\\ClusterStorage\\Volume<N>`` to the cluster."""
        with self.lock:
            if self.cluster is None:
                raise ValueError("no cluster")
            number = len(self.cluster.csvs) + 1
            owner = owner_node or (self.cluster.nodes[(number - 1) % len(self.cluster.nodes)]
                                   if self.cluster.nodes else "")
            csv = Csv(number=number, total_bytes=total_bytes, free_bytes=free_bytes,
                      name=f"Cluster Disk {number}", owner_node=owner.upper())
            self.cluster.csvs.append(csv)
            self.fs.csv_volume(number)
            return csv

    def node(self, name: str) -> Node:
        """Node by name (KeyError when unknown)."""
        return self.nodes[name.upper()]

    def cluster_nodes(self) -> list[Node]:
        """Nodes that belong to the cluster."""
        return [n for n in self.nodes.values() if n.cluster]

    def csv_used_bytes(self, csv: Csv) -> int:
        """Bytes the files on a CSV occupy (st_blocks; sparse files count what they use)."""
        total = 0
        for dirpath, _dirs, names in os.walk(self.fs.csv_volume(csv.number)):
            for n in names:
                try:
                    st = os.lstat(os.path.join(dirpath, n))
                except OSError:
                    continue
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
        return total

    # ---------------------------------------------------------------- VM lookup
    def vm(self, name_or_id: str, *, node: str | None = None, planned: bool | None = False) -> Vm:
        """A VM by GUID or unique name (ValueError when unknown or ambiguous)."""
        with self.lock:
            cands = [v for v in self.vms.values()
                     if (planned is None or v.planned == planned)
                     and (node is None or v.node == node.upper())]
            by_id = [v for v in cands if v.id.lower() == name_or_id.lower().strip("{}")]
            if by_id:
                return by_id[0]
            by_name = [v for v in cands if v.name == name_or_id]
            if len(by_name) == 1:
                return by_name[0]
            if not by_name:
                raise ValueError(f"no VM named or with ID {name_or_id!r}")
            raise ValueError(f"{len(by_name)} VMs are named {name_or_id!r}; use the VM ID")

    def vms_on(self, node: str, *, planned: bool = False) -> list[Vm]:
        """Realized (or planned) VMs owned by a node, in creation order."""
        return [v for v in self.vms.values() if v.node == node.upper() and v.planned == planned]

    def vm_for_config(self, config_id: str) -> tuple[Vm, Snapshot | None] | None:
        """The VM whose live configuration or checkpoint has this id."""
        low = config_id.lower()
        for v in self.vms.values():
            if v.id.lower() == low:
                return v, None
            for s in v.snapshots.values():
                if s.id.lower() == low:
                    return v, s
        return None

    # -------------------------------------------------------------------- paths
    def local(self, node: str, host_path: str) -> Path:
        """Local file for a host path on a node (ValueError for UNC / relative paths)."""
        return self.fs.node(node).local(host_path)

    def visible(self, node: str, host_path: str) -> bool:
        """Whether a host path can exist on a node (CSVs exist only on cluster nodes)."""
        n = self.nodes.get(node.upper())
        root = (self.cluster.shared_volumes_root if self.cluster else "C:\\ClusterStorage").lower() + "\\"
        return not (n is not None and not n.cluster and host_path.lower().startswith(root))

    def key(self, node: str, host_path: str) -> Path:
        """Canonical identity of a file (CSV paths are the same file on every node)."""
        return Path(os.path.realpath(self.local(node, host_path)))

    # -------------------------------------------------------------------- disks
    def create_disk(self, node: str, host_path: str, fmt: str, kind: str, size: int, *,
                    fill_ratio: float = 0.0, seed: int = 0, block_size: int = 0) -> disks.DiskInfo:
        """Create a base disk (via hvsim.disks unless the world has ``files=False``)."""
        local = self.local(node, host_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.files:
            info = disks.create_disk(local, fmt, kind, size, block_size=block_size, fill_ratio=fill_ratio,
                                     seed=seed)
        else:
            info = disks.DiskInfo(path=local, fmt=fmt, kind=kind, virtual_size=size,
                                  block_size=block_size or (0 if fmt == "vhd" and kind == "fixed"
                                                            else (2 << 20 if fmt == "vhd" else 32 << 20)),
                                  logical_sector_size=512,
                                      physical_sector_size=4096 if fmt == "vhdx" else 512,
                                  file_size=size if kind == "fixed" else 4 << 20, virtual_disk_id=new_guid())
            self.disk_meta[self.key(node, host_path)] = info
        return info

    def disk_exists(self, node: str, host_path: str) -> bool:
        """Whether a disk file exists at a host path."""
        if not self.visible(node, host_path):
            return False
        try:
            local = self.local(node, host_path)
        except ValueError:
            return False
        if local.exists():
            return True
        return not self.files and self.key(node, host_path) in self.disk_meta

    def disk_info(self, node: str, host_path: str) -> disks.DiskInfo | None:
        """Headers of a disk file (None when absent; ValueError when not a VHD/VHDX)."""
        if not self.visible(node, host_path):
            return None
        try:
            local = self.local(node, host_path)
        except ValueError:
            return None
        if local.exists():
            if not self.files and self.key(node, host_path) in self.disk_meta:
                return self.disk_meta[self.key(node, host_path)]
            return disks.disk_info(local)
        if not self.files:
            return self.disk_meta.get(self.key(node, host_path))
        return None

    def create_child(self, node: str, parent_host: str) -> str:
        """Create ``<name>_<GUID>.avhdx`` next to ``parent_host``; the parent becomes frozen."""
        parent = PureWindowsPath(parent_host)
        stem = _GUID_SUFFIX.sub("", parent.stem)
        ext = ".avhd" if parent.suffix.lower() in (".vhd", ".avhd") else ".avhdx"
        child_host = str(parent.parent / f"{stem}_{new_guid()}{ext}")
        plocal = self.local(node, parent_host)
        clocal = self.local(node, child_host)
        if self.files:
            disks.create_differencing(clocal, plocal, parent_host, child_host_path=child_host)
            _set_read_only(plocal, True)
        else:
            pinfo = self.disk_info(node, parent_host)
            if pinfo is None:
                raise JobFailure(32768, f"The disk '{parent_host}' was not found.")
            self.disk_meta[self.key(node, child_host)] = disks.DiskInfo(
                path=clocal, fmt=pinfo.fmt, kind="differencing", virtual_size=pinfo.virtual_size,
                block_size=pinfo.block_size, logical_sector_size=pinfo.logical_sector_size,
                physical_sector_size=pinfo.physical_sector_size, file_size=1 << 20,
                virtual_disk_id=pinfo.virtual_disk_id, parent_path=parent_host)
        ckey = self.key(node, child_host)
        self.diff_parent[ckey] = self.key(node, parent_host)
        self.diff_writes[ckey] = []
        return child_host

    def merge_child(self, node: str, child_host: str, parent_host: str) -> None:
        """Merge a differencing child into its parent and delete it (change tracking follows)."""
        ckey = self.key(node, child_host)
        pkey = self.key(node, parent_host)
        if self.files:
            plocal = self.local(node, parent_host)
            clocal = self.local(node, child_host)
            _set_read_only(plocal, False)
            disks.merge_into_parent(clocal, plocal)
            clocal.unlink()
        else:
            self.disk_meta.pop(ckey, None)
        written = self.diff_writes.pop(ckey, [])
        self.diff_parent.pop(ckey, None)
        if pkey in self.diff_parent:
            self.diff_writes[pkey] = merge_ranges(self.diff_writes.get(pkey, []), written)
        else:
            tracking = self.rct.get(pkey)
            if tracking is not None:
                for rid, ranges in tracking.trackers.items():
                    tracking.trackers[rid] = merge_ranges(ranges, written)

    def chain_root(self, key: Path) -> Path:
        """Root file of a differencing chain."""
        seen = set()
        while key in self.diff_parent and key not in seen:
            seen.add(key)
            key = self.diff_parent[key]
        return key

    def guest_write(self, vm: str, disk_index: int, offset: int, data: bytes) -> None:
        """Write as the guest does to disk ``disk_index`` (order of the VM's VHD SASDs).

        Goes to the current leaf (the avhdx while a checkpoint exists) and is
        recorded for resilient change tracking.
        """
        with self.lock:
            v = self.vm(vm)
            leaf = v.config.vhds()[disk_index].host_resource[0]
            if self.files:
                disks.guest_write(self.local(v.node, leaf), offset, data)
            self._record_write(v.node, leaf, offset, len(data))

    def guest_trim(self, vm: str, disk_index: int, offset: int, length: int) -> None:
        """Unmap a range as a guest TRIM does (recorded as a change)."""
        with self.lock:
            v = self.vm(vm)
            leaf = v.config.vhds()[disk_index].host_resource[0]
            if self.files:
                disks.guest_trim(self.local(v.node, leaf), offset, length)
            self._record_write(v.node, leaf, offset, length)

    def _record_write(self, node: str, leaf: str, offset: int, length: int) -> None:
        key = self.key(node, leaf)
        if key in self.diff_parent:
            self.diff_writes[key] = merge_ranges(self.diff_writes.get(key, []), [(offset, length)])
            return
        tracking = self.rct.get(key)
        if tracking is not None:
            for rid, ranges in tracking.trackers.items():
                tracking.trackers[rid] = merge_ranges(ranges, [(offset, length)])

    def changed_ranges(self, node: str, host_path: str, rct_id: str) -> list[Range] | None:
        """Ranges changed since ``rct_id`` as seen through ``host_path`` (None: unknown id)."""
        key = self.key(node, host_path)
        root = self.chain_root(key)
        tracking = self.rct.get(root)
        if tracking is None or rct_id not in tracking.trackers:
            return None
        parts = [tracking.trackers[rct_id]]
        cur = key
        while cur != root:
            parts.append(self.diff_writes.get(cur, []))
            cur = self.diff_parent[cur]
        return merge_ranges(*parts)

    def new_rct_id(self, root: Path, initial: list[Range]) -> str:
        """Start tracking a root file from now; returns the new RCT id."""
        tracking = self.rct.setdefault(root, RctDisk())
        tracking.seq += 1
        rid = f"rctX:{str(uuid.uuid4()).replace('-', ':')}:{tracking.seq:08d}"
        tracking.trackers[rid] = merge_ranges(initial)
        return rid

    def drop_rct_id(self, root: Path | None, rct_id: str) -> None:
        """Forget one RCT id (its reference point was destroyed)."""
        if root is not None and root in self.rct:
            self.rct[root].trackers.pop(rct_id, None)

    def lose_change_tracking(self, vm: str) -> None:
        """Test helper: forget every RCT id of a VM's disks (as after restoring a disk without .rct)."""
        with self.lock:
            v = self.vm(vm)
            for s in v.config.vhds():
                root = self.chain_root(self.key(v.node, s.host_resource[0]))
                self.rct.pop(root, None)

    # ---------------------------------------------------------------- VM build
    def next_mac(self) -> str:
        """A new MAC address in the Hyper-V range (no separators)."""
        self._mac += 1
        return f"00155D{self._mac:06X}"

    def add_vm(self, node: str, name: str, *, generation: int = 2, version: str | None = None,
               state: str = "off", disks_: list[DiskSpec] | None = None, iso: str | None = None,
               passthrough: bool = False, switches: list[str] | None = None, cpus: int = 2,
               memory_mb: int = 2048, vm_id: str | None = None, guest_vss: bool = True,
               root: str | None = None, seed: int = 0, clustered: bool = False) -> Vm:
        """Build a VM with its disks (created through hvsim.disks) and register it on ``node``.

        ``root`` is the VM's folder (config under it, disks in ``Virtual Hard
        Disks`` unless a DiskSpec names a path); ``clustered`` makes it highly
        available (cluster group + resources).
        """
        with self.lock:
            n = self.node(node)
            vid = (vm_id or new_guid()).upper()
            folder = root or str(PureWindowsPath(n.default_vm_path) / name)
            cfg = base_config(vid, name, generation, version or n.default_version, folder)
            add_default_devices(cfg, generation)
            set_cpu_memory(cfg, cpus, memory_mb)
            for i, spec in enumerate(disks_ or []):
                self.create_disk(n.name, spec.path, spec.fmt, spec.kind, spec.size,
                                 fill_ratio=spec.fill_ratio, seed=seed * 100 + i, block_size=spec.block_size)
                attach_disk(cfg, spec.path, controller=spec.controller)
            if iso is not None:
                iso_local = self.local(n.name, iso)
                iso_local.parent.mkdir(parents=True, exist_ok=True)
                if not iso_local.exists():
                    iso_local.write_bytes(b"\0" * 32768 + b"\x01CD001\x01" + b"\0" * 2040)
                attach_dvd(cfg, iso, controller="ide" if generation == 1 else "scsi")
            if passthrough:
                attach_passthrough(cfg, n.name, controller="scsi")
            for sw in switches or []:
                s = n.switch_by_name(sw)
                if s is None:
                    raise ValueError(f"node {n.name} has no switch {sw!r}")
                attach_nic(cfg, n.name, s, self.next_mac())
            vm = Vm(id=vid, node=n.name, config=cfg, state=VM_OFF, guest_vss=guest_vss)
            self.change_state(vm, STATE_NAMES[state])
            vm.state_since = self.clock()
            self.vms[vid] = vm
            self.write_live_config(vm)
            if clustered:
                self.make_highly_available(vm)
            return vm

    def make_highly_available(self, vm: Vm) -> Group:
        """Create the VM's cluster group and resources (what AddVirtualMachine does)."""
        if self.cluster is None or vm.node not in self.cluster.nodes:
            raise ValueError(f"{vm.node} is not a cluster node")
        existing = self.cluster.group_for_vm(vm.id)
        if existing is not None:
            return existing
        name = vm.name
        if self.cluster.group(name) is not None:
            name = f"{vm.name} ({vm.id})"
        group = Group(name=name, vm_id=vm.id, owner_node=vm.node)
        self.cluster.groups.append(group)
        return group

    def write_live_config(self, vm: Vm) -> None:
        """Write the VM's own ``.vmcx`` where VMMS keeps it (content: simulator serialisation)."""
        try:
            local = self.local(vm.node, vm.live_config_file())
        except ValueError:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(serialise_vm(vm, vm.config, "vm"), indent=1), encoding="utf-8")
        if is_legacy(vm.version):
            # 2012 R2 layout (hvsim.configversion): a <GUID> folder next to the .xml for runtime state
            state_dir = local.parent / vm.id
            state_dir.mkdir(exist_ok=True)
            if vm.state in (VM_RUNNING, VM_PAUSED):
                (state_dir / f"{vm.id}.bin").write_bytes(b"HVSIM-BIN\0" + vm.id.encode("ascii"))

    # ------------------------------------------------------------ state changes
    def set_state(self, vm: str, state: str) -> None:
        """Test helper: put a VM into ``running``/``off``/``saved``/``paused`` immediately."""
        with self.lock:
            v = self.vm(vm)
            self.change_state(v, STATE_NAMES[state])

    def change_state(self, v: Vm, state: int) -> None:
        """Apply a power state (bookkeeping shared by RequestStateChange and cluster methods)."""
        if v.state != state:
            v.state = state
            v.state_since = self.clock()
            v.pid = (4000 + len(v.id)) if state in (VM_RUNNING, VM_PAUSED) else 0

    def migrate(self, vm: str, to_node: str | None = None) -> str:
        """Live-migrate a clustered VM: its objects move to ``to_node`` (default: another node)."""
        with self.lock:
            v = self.vm(vm)
            return self.move_vm(v, to_node)

    def move_vm(self, v: Vm, to_node: str | None) -> str:
        """Move a VM to another node (switch connections follow by switch name)."""
        if self.cluster is None or v.node not in self.cluster.nodes:
            raise ValueError(f"VM {v.name} is not on a cluster node")
        if to_node is None:
            others = [n for n in self.cluster.nodes if n != v.node]
            if not others:
                raise ValueError("the cluster has a single node")
            to_node = others[0]
        target = self.node(to_node)
        if target.name not in self.cluster.nodes:
            raise ValueError(f"{target.name} is not a node of cluster {self.cluster.name}")
        v.node = target.name
        for cfg in [v.config, *(s.config for s in v.snapshots.values())]:
            for s in cfg.settings:
                if s.props.get("ResourceSubType") == SUB_CONNECTION:
                    name = s.props.get("LastKnownSwitchName")
                    sw = target.switch_by_name(str(name)) if name else None
                    if sw is not None:
                        s.props["HostResource"] = [switch_ref(target.name, sw).wmi_path(target.name)]
        group = self.cluster.group_for_vm(v.id)
        if group is not None:
            group.owner_node = target.name
        return target.name

    def files_in_use(self) -> set[Path]:
        """Local files a Windows host would keep open for writing (hyperv-wmi.md 8.2).

        The current leaf disk of every running or paused VM and every registered
        VM's own ``.vmcx``; a file server layer can refuse to open these.
        """
        with self.lock:
            out: set[Path] = set()
            for v in self.vms.values():
                if v.planned:
                    continue
                try:
                    out.add(self.key(v.node, v.live_config_file()))
                    if v.state in (VM_RUNNING, VM_PAUSED):
                        out.update(self.key(v.node, s.host_resource[0]) for s in v.config.vhds()
                                   if s.host_resource)
                except ValueError:
                    continue
            # a merge holds both files, whatever the VM's state
            for m in self.merges:
                owner = self.vms.get(m.vm_id)
                if owner is not None:
                    out.update(self.key(owner.node, p) for p in (m.child, m.parent))
            return out

    # ------------------------------------------------------------- inspection
    def snapshots(self, vm: str) -> list[Snapshot]:
        """Checkpoints of a VM (oldest first)."""
        with self.lock:
            return list(self.vm(vm).snapshots.values())

    def reference_points(self, vm: str) -> list[ReferencePoint]:
        """Reference points of a VM (oldest first)."""
        with self.lock:
            return list(self.vm(vm).reference_points.values())

    def jobs(self, node: str | None = None) -> list[Any]:
        """Jobs not yet removed (optionally of one node)."""
        with self.lock:
            self.jobs_engine.advance()
            js = list(self.jobs_engine.jobs.values())
            return [j for j in js if node is None or j.node == node.upper()]

    def advance(self) -> None:
        """Let time-driven state (jobs, merges) catch up with the clock; one call per request answered."""
        with self.lock:
            self.jobs_engine.advance()
            self._advance_merges()

    def merging(self, vm_id: str) -> bool:
        """Whether disks of the VM are still being merged (OperationalStatus 32772)."""
        with self.lock:
            return any(m.vm_id.upper() == vm_id.upper() for m in self.merges)

    def finish_merges(self, vm_id: str | None = None) -> None:
        """Test helper: end every pending merge (of one VM) now."""
        with self.lock:
            for m in [m for m in self.merges if vm_id is None or m.vm_id.upper() == vm_id.upper()]:
                self._end_merge(m)

    def _advance_merges(self) -> None:
        now = self.clock()
        for m in list(self.merges):
            if m.polls_left > 0:
                m.polls_left -= 1
                if m.polls_left == 0:
                    self._end_merge(m)
                    continue
            if now >= m.due:
                self._end_merge(m)

    def _end_merge(self, m: PendingMerge) -> None:
        """The merge is done: the child is folded into its parent and deleted; the VM runs on the parent."""
        if m in self.merges:
            self.merges.remove(m)
        v = self.vms.get(m.vm_id)
        if v is None:
            return
        self.merge_child(v.node, m.child, m.parent)
        for cfg in [v.config, *(o.config for o in v.snapshots.values())]:
            s = cfg.find(m.rid)
            if s is not None and s.host_resource and s.host_resource[0].lower() == m.child.lower():
                s.props["HostResource"] = [m.parent]
        v.last_change = utcnow()
        self.write_live_config(v)

    # ------------------------------------------------------------- checkpoints
    def take_snapshot(self, v: Vm, vtype: str, consistency: int) -> Snapshot:
        """Create a checkpoint: differencing children for every VHD, snapshot config frozen."""
        frozen = v.config.clone()
        sid = new_guid()
        children: dict[str, str] = {}
        created: list[tuple[str, str]] = []
        try:
            for s in v.config.vhds():
                leaf = s.host_resource[0]
                child = self.create_child(v.node, leaf)
                created.append((child, leaf))
                children[s.rid] = child
        except Exception:
            for child, _leaf in created:
                self._discard_child(v.node, child, _leaf)
            raise
        for s in v.config.vhds():
            s.props["HostResource"] = [children[s.rid]]
        now = utcnow()
        stamp = now.strftime("%m/%d/%Y - %I:%M:%S %p")
        label = "Backup - " if vtype == VST_RECOVERY else ""
        frozen.vssd["ElementName"] = f"{v.name} - {label}({stamp})"
        frozen.vssd["CreationTime"] = now
        frozen.vssd["IsSaved"] = v.state in (VM_RUNNING, VM_PAUSED, VM_SAVED) and vtype != VST_RECOVERY
        snap = Snapshot(id=sid, config=frozen, vtype=vtype, parent_id=v.current_snapshot, created=now,
                        consistency=consistency, children=children)
        v.snapshots[sid] = snap
        v.current_snapshot = sid
        v.last_change = now
        self._write_snapshot_config(v, snap)
        self.write_live_config(v)
        return snap

    def _discard_child(self, node: str, child: str, parent: str) -> None:
        ckey = self.key(node, child)
        self.diff_parent.pop(ckey, None)
        self.diff_writes.pop(ckey, None)
        self.disk_meta.pop(ckey, None)
        if self.files:
            local = self.local(node, child)
            if local.exists():
                local.unlink()
            _set_read_only(self.local(node, parent), False)

    def _write_snapshot_config(self, v: Vm, snap: Snapshot) -> None:
        root = str(v.config.vssd.get("SnapshotDataRoot") or v.config.vssd.get("ConfigurationDataRoot") or "")
        try:
            local = self.local(v.node, str(PureWindowsPath(root) / "Snapshots"
                                           / f"{snap.id}{config_extension(v.version)}"))
        except ValueError:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(serialise_vm(v, snap.config, "snapshot", snapshot_id=snap.id), indent=1),
                         encoding="utf-8")

    def remove_snapshot(self, v: Vm, snap: Snapshot) -> dict[str, list[Range]]:
        """Delete a checkpoint: merge the differencing child made for it into the frozen file.

        Whatever referenced that child (the live configuration or a later
        checkpoint) now references the merged file, and a grandchild is
        re-parented to it, as Hyper-V does.  Returns the ranges merged per disk.
        """
        written: dict[str, list[Range]] = {}
        behaviour = v.checkpoints
        for rid, child in snap.children.items():
            frozen = snap.config.find(rid)
            if frozen is None or not frozen.host_resource:
                continue
            parent = frozen.host_resource[0]
            ckey = self.key(v.node, child)
            written[rid] = list(self.diff_writes.get(ckey, []))
            grandchildren = [k for k, p in self.diff_parent.items() if p == ckey]
            if behaviour.merge == "async" and not grandchildren:
                # The checkpoint goes now; its .avhdx stays (the VM keeps writing to it) until
                # the merge ends (hvsim.behaviour.MERGE).
                self.merges.append(PendingMerge(
                    vm_id=v.id, rid=rid, child=child, parent=parent,
                    due=self.clock() + behaviour.merge_seconds, polls_left=behaviour.merge_polls))
                continue
            self.merge_child(v.node, child, parent)
            pkey = self.key(v.node, parent)
            for g in grandchildren:
                g_host = self._host_path_of(v, g)
                if self.files:
                    disks.reparent(g, self.local(v.node, parent), parent, child_host_path=g_host)
                self.diff_parent[g] = pkey
                meta = self.disk_meta.get(g)
                if meta is not None:
                    meta.parent_path = parent
            if grandchildren and self.files:
                _set_read_only(self.local(v.node, parent), True)
            for cfg in [v.config, *(o.config for o in v.snapshots.values() if o is not snap)]:
                s = cfg.find(rid)
                if s is not None and s.host_resource and s.host_resource[0].lower() == child.lower():
                    s.props["HostResource"] = [parent]
        del v.snapshots[snap.id]
        for other in v.snapshots.values():
            if other.parent_id == snap.id:
                other.parent_id = snap.parent_id
        if v.current_snapshot == snap.id:
            v.current_snapshot = snap.parent_id
        root = str(v.config.vssd.get("SnapshotDataRoot") or "")
        try:
            name = f"{snap.id}{config_extension(v.version)}"
            f = self.local(v.node, str(PureWindowsPath(root) / "Snapshots" / name))
            if f.exists():
                f.unlink()
        except ValueError:
            pass
        v.last_change = utcnow()
        self.write_live_config(v)
        return written

    def _host_path_of(self, v: Vm, key: Path) -> str | None:
        """Host path of a tracked disk file of a VM (live or checkpoint configuration)."""
        for cfg in [v.config, *(o.config for o in v.snapshots.values())]:
            for s in cfg.vhds():
                for hp in s.host_resource:
                    if self.key(v.node, hp) == key:
                        return hp
        for snap in v.snapshots.values():
            for hp in snap.children.values():
                if self.key(v.node, hp) == key:
                    return hp
        return None

    def convert_to_reference_point(self, v: Vm, snap: Snapshot) -> ReferencePoint:
        """Merge a recovery checkpoint and start change tracking from its instant."""
        starts: list[tuple[str, Path | None, list[Range]]] = []
        rct_capable = version_at_least(v.version, "6.2")
        for s in snap.config.vhds():
            frozen_path = s.host_resource[0]
            info = self.disk_info(v.node, frozen_path)
            root = self.chain_root(self.key(v.node, frozen_path))
            if not rct_capable or info is None or info.fmt != "vhdx":
                starts.append((s.rid, None, []))
                continue
            child = snap.children.get(s.rid)
            initial = list(self.diff_writes.get(self.key(v.node, child), [])) if child else []
            starts.append((s.rid, root, initial))
        self.remove_snapshot(v, snap)
        rp = ReferencePoint(id=new_guid(), vm_id=v.id, consistency=snap.consistency, created=snap.created,
                            disk_ids=[], rct_ids=[], keys=[])
        for rid, tracked, initial in starts:
            rp.disk_ids.append(f"Microsoft:{v.id}\\{rid}")
            if tracked is None:
                rp.rct_ids.append("")
                rp.keys.append(None)
            else:
                rp.rct_ids.append(self.new_rct_id(tracked, initial))
                rp.keys.append(tracked)
        v.reference_points[rp.id] = rp
        return rp

    def destroy_reference_point(self, v: Vm, rp: ReferencePoint) -> None:
        """Forget a reference point and its RCT ids."""
        for root, rid in zip(rp.keys, rp.rct_ids):
            self.drop_rct_id(root, rid)
        del v.reference_points[rp.id]


def _set_read_only(path: Path, read_only: bool) -> None:
    try:
        mode = path.stat().st_mode
        path.chmod((mode & ~0o222) if read_only else (mode | 0o200))
    except OSError:
        pass


# ---------------------------------------------------------------- config building
def base_config(vm_id: str, name: str, generation: int, version: str, folder: str) -> Config:
    """VSSD properties of a new VM whose files live under ``folder``."""
    vssd: dict[str, Any] = {
        "Caption": "Virtual Machine Settings",
        "Description": "Active settings for the virtual machine.",
        "ElementName": name,
        "VirtualSystemSubType": f"Microsoft:Hyper-V:SubType:{generation}",
        "Version": version,
        "Notes": [""],
        "CreationTime": utcnow(),
        "ConfigurationID": vm_id,
        "ConfigurationDataRoot": folder,
        "ConfigurationFile": f"Virtual Machines\\{vm_id}{config_extension(version)}",
        "SnapshotDataRoot": folder,
        "SuspendDataRoot": folder,
        "SwapFileDataRoot": folder,
        "LogDataRoot": folder,
        "GuestStateDataRoot": folder if generation == 2 else None,
        "GuestStateFile": f"Virtual Machines\\{vm_id}.vmgs" if generation == 2 else None,
        "AutomaticStartupAction": 3,
        "AutomaticShutdownAction": 3,
        "AutomaticCriticalErrorAction": 1,
        "UserSnapshotType": 3,
        "IncrementalBackupEnabled": False,
        "IsSaved": False,
        "BootOrder": [1, 2, 3, 0] if generation == 1 else [],
        "BootSourceOrder": [],
        "SecureBootEnabled": generation == 2,
        "SecureBootTemplateId": "1734c6e8-3154-4dda-ba5f-a874cc483422" if generation == 2 else None,
        "BIOSGUID": "{" + str(uuid.uuid4()).upper() + "}",
        "BIOSSerialNumber": f"{uuid.uuid4().int % 10**20:020d}",
        "BaseBoardSerialNumber": f"{uuid.uuid4().int % 10**20:020d}",
        "ChassisSerialNumber": f"{uuid.uuid4().int % 10**20:020d}",
        "ChassisAssetTag": f"{uuid.uuid4().int % 10**20:020d}",
        "VirtualNumaEnabled": True,
        "LowMmioGapSize": 128,
        "HighMmioGapSize": 512,
        "Architecture": "x64",
        "EnhancedSessionTransportType": 0,
    }
    return Config(vssd=vssd, settings=[])


def _rasd(rtype: int, subtype: str, element: str, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "Caption": element, "Description": f"Microsoft {element} settings.", "ElementName": element,
        "ResourceType": rtype, "ResourceSubType": subtype, "PoolID": "", "ConsumerVisibility": 3,
        "HostResource": [], "AllocationUnits": "count", "VirtualQuantity": 1, "Reservation": 0, "Limit": 1,
        "Weight": 0, "AutomaticAllocation": True, "AutomaticDeallocation": True, "Connection": [],
        "Address": None, "AddressOnParent": None, "VirtualQuantityUnits": "count",
    }
    props.update(extra)
    return props


def add_default_devices(cfg: Config, generation: int) -> None:
    """Processor, memory and the default controllers (2 IDE for Gen 1, 1 SCSI for Gen 2)."""
    cfg.settings.append(Setting("Msvm_ProcessorSettingData", _PROC_RID, _rasd(
        3, "Microsoft:Hyper-V:Processor", "Processor", AllocationUnits="percent / 1000", Limit=100000,
        Reservation=0, Weight=100, VirtualQuantityUnits="count", MaxProcessorsPerNumaNode=16,
        HwThreadsPerCore=0)))
    cfg.settings.append(Setting("Msvm_MemorySettingData", _MEM_RID, _rasd(
        4, "Microsoft:Hyper-V:Memory", "Memory", AllocationUnits="byte * 2^20", DynamicMemoryEnabled=False,
        TargetMemoryBuffer=20, IsVirtualized=True, VirtualQuantityUnits="byte * 2^20",
        MaxMemoryBlocksPerNumaNode=131072)))
    if generation == 1:
        for i in (0, 1):
            cfg.settings.append(Setting("Msvm_ResourceAllocationSettingData", f"{_IDE_GUID}\\{i}", _rasd(
                5, SUB_IDE, f"IDE Controller {i}", Address=str(i))))
    else:
        add_scsi_controller(cfg)


def add_scsi_controller(cfg: Config) -> Setting:
    """Append a SCSI controller."""
    s = Setting("Msvm_ResourceAllocationSettingData", f"{new_guid()}\\0", _rasd(
        6, SUB_SCSI, "SCSI Controller", VirtualSystemIdentifiers=["{" + str(uuid.uuid4()) + "}"]))
    cfg.settings.append(s)
    return s


def set_cpu_memory(cfg: Config, cpus: int, memory_mb: int) -> None:
    """Set processor count and startup memory."""
    for s in cfg.settings:
        if s.class_name == "Msvm_ProcessorSettingData":
            s.props["VirtualQuantity"] = cpus
        elif s.class_name == "Msvm_MemorySettingData":
            s.props.update(VirtualQuantity=memory_mb, Reservation=memory_mb, Limit=memory_mb)


def _controllers(cfg: Config, kind: str) -> list[Setting]:
    sub = SUB_IDE if kind == "ide" else SUB_SCSI
    return [s for s in cfg.settings if s.subtype == sub]


def _free_slot(cfg: Config, kind: str) -> tuple[Setting, int]:
    ctrls = _controllers(cfg, kind)
    if not ctrls and kind == "scsi":
        ctrls = [add_scsi_controller(cfg)]
    limit = 2 if kind == "ide" else 64
    for c in ctrls:
        used = {str(s.props.get("AddressOnParent")) for s in cfg.settings if s.parent == c.rid}
        for slot in range(limit):
            if str(slot) not in used:
                return c, slot
    raise ValueError(f"no free {kind} slot")


def _drive(cfg: Config, kind: str, subtype: str, element: str) -> Setting:
    ctrl, slot = _free_slot(cfg, kind)
    drive = Setting("Msvm_ResourceAllocationSettingData", f"{ctrl.rid}\\{slot}\\D", _rasd(
        16 if subtype == SUB_DVD_DRIVE else 17, subtype, element, AddressOnParent=str(slot)), parent=ctrl.rid)
    cfg.settings.append(drive)
    return drive


def attach_disk(cfg: Config, host_path: str, *, controller: str = "scsi") -> Setting:
    """Add a synthetic disk drive with a VHD/VHDX SASD; returns the SASD."""
    drive = _drive(cfg, controller, SUB_DISK_DRIVE, "Hard Drive")
    sasd = Setting("Msvm_StorageAllocationSettingData", drive.rid[:-1] + "L", _rasd(
        31, SUB_VHD, "Hard Disk Image", HostResource=[host_path], Access=3, IOPSLimit=0, IOPSReservation=0,
        IOPSAllocationUnits="count of 8 KB IOs per second", PersistentReservationsSupported=False,
        CachingMode=0, StorageQoSPolicyID="00000000-0000-0000-0000-000000000000", IgnoreFlushes=False,
        WriteHardeningMethod=0, VirtualResourceBlockSize=1, HostResourceBlockSize=1), parent=drive.rid)
    cfg.settings.append(sasd)
    return sasd


def attach_dvd(cfg: Config, iso_path: str, *, controller: str = "ide") -> Setting:
    """Add a DVD drive with an ISO; returns the ISO SASD."""
    drive = _drive(cfg, controller, SUB_DVD_DRIVE, "DVD Drive")
    sasd = Setting("Msvm_StorageAllocationSettingData", drive.rid[:-1] + "L", _rasd(
        31, SUB_ISO, "ISO Disk Image", HostResource=[iso_path], Access=1), parent=drive.rid)
    cfg.settings.append(sasd)
    return sasd


def attach_passthrough(cfg: Config, host: str, *, controller: str = "scsi", disk_number: int = 2) -> Setting:
    """Add a pass-through (physical) disk drive."""
    ctrl, slot = _free_slot(cfg, controller)
    path = (f'\\\\{host}\\root\\virtualization\\v2:Msvm_DiskDrive.CreationClassName="Msvm_DiskDrive",'
            f'DeviceID="Microsoft:{new_guid()}\\\\{disk_number}",SystemCreationClassName='
            f'"Msvm_ComputerSystem",SystemName="{host}"')
    drive = Setting("Msvm_ResourceAllocationSettingData", f"{ctrl.rid}\\{slot}\\D", _rasd(
        17, SUB_PASSTHROUGH, "Hard Drive", AddressOnParent=str(slot), HostResource=[path]), parent=ctrl.rid)
    cfg.settings.append(drive)
    return drive


def switch_ref(host: str, sw: Switch) -> CimRef:
    """Reference to a switch (``host`` is where the path will be rendered; EPRs carry no host)."""
    return CimRef(NS_VIRT, "Msvm_VirtualEthernetSwitch",
                  (("CreationClassName", "Msvm_VirtualEthernetSwitch"), ("Name", sw.id)))


def attach_nic(cfg: Config, host: str, sw: Switch | None, mac: str) -> Setting:
    """Add a synthetic NIC connected to ``sw`` (or disconnected); returns the EPASD."""
    port = new_guid()
    nic = Setting("Msvm_SyntheticEthernetPortSettingData", port, _rasd(
        10, SUB_NIC, "Network Adapter", Address=mac, StaticMacAddress=False,
        VirtualSystemIdentifiers=["{" + port.lower() + "}"], ClusterMonitored=True, DeviceNamingEnabled=False,
        InterruptModeration=True))
    cfg.settings.append(nic)
    conn = Setting("Msvm_EthernetPortAllocationSettingData", f"{port}\\C", _rasd(
        33, SUB_CONNECTION, "Dynamic Ethernet Switch Port",
        HostResource=[switch_ref(host, sw).wmi_path(host)] if sw else [],
        EnabledState=2 if sw else 3, LastKnownSwitchName=sw.name if sw else "", RequiredFeatures=[]),
        parent=port)
    cfg.settings.append(conn)
    return conn


# ------------------------------------------------------------- serialisation
def _jsonable(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return {"$dt": value.isoformat()}
    return value


def _unjson(value: Any) -> Any:
    if isinstance(value, dict) and "$dt" in value:
        return _dt.datetime.fromisoformat(value["$dt"])
    return value


def serialise_vm(vm: Vm, cfg: Config, kind: str, *, snapshot_id: str | None = None,
                 snapshots: list[str] | None = None) -> dict[str, Any]:
    """The simulator's ``.vmcx`` content (real ones are binary; this one is JSON)."""
    return {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "vm_id": vm.id,
        "snapshot_id": snapshot_id,
        "generation": vm.generation,
        "vssd": {k: _jsonable(v) for k, v in cfg.vssd.items()},
        "settings": [{"class": s.class_name, "rid": s.rid, "parent": s.parent,
                      "props": {k: _jsonable(v) for k, v in s.props.items()}} for s in cfg.settings],
        "snapshots": list(snapshots or []),
    }


def deserialise_config(doc: dict[str, Any]) -> Config:
    """Config from :func:`serialise_vm` output (ValueError when it is not one)."""
    if doc.get("format") != EXPORT_FORMAT:
        raise ValueError("not a simulator configuration file")
    vssd = {k: _unjson(v) for k, v in dict(doc["vssd"]).items()}
    settings = [Setting(str(s["class"]), str(s["rid"]), {k: _unjson(v) for k, v in dict(s["props"]).items()},
                        s.get("parent")) for s in doc["settings"]]
    return Config(vssd=vssd, settings=settings)


def job_error(message: str, source: str = "", code: int = 32768) -> dict[str, Any]:
    """Shorthand for one Msvm_Error."""
    return error_instance(message, code, source=source)
