r"""Manifests and destinations for the restore planner tests.

The source estate mirrors hvsim's default one: cluster HVCLUSTER01 (HV01, HV02; CSVs Volume1 and
Volume2; switches External-LAN and Internal-Backup) with the clustered VM ``web01``, and the
standalone host HVSTANDALONE01 (switch LAN, storage on D:) with ``legacy01``.  Tests change the
returned objects (they are fresh each call) to build the shape they need.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from bareos_hyperv.hyperv.host import supported_versions
from bareos_hyperv.manifest import Manifest, VmSettings
from bareos_hyperv.model.backup import (
    BackupFacts,
    BackupLevel,
    CapturedSettings,
    Consistency,
    ConsistencyMode,
    Controller,
    DiskBackup,
    DiskFile,
    PartKind,
    SaveSetPart,
)
from bareos_hyperv.model.cluster import ClusterFacts, ClusterNode, NodeState, SharedVolume, VmGroup
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.model.host import HostFacts, Switch
from bareos_hyperv.model.vm import (
    ControllerKind,
    Drive,
    DriveKind,
    DriveSlot,
    Generation,
    NetworkAdapter,
    PowerState,
    VmConfig,
    VmRef,
)
from bareos_hyperv.restore.plan import Destination, DestinationHost, ExistingVm
from bareos_hyperv.restore.safety import path_key

GiB = 1 << 30
MiB = 1 << 20
TiB = 1 << 40
JOB = 77

WEB01 = "5B2C8E61-0F3A-4C5D-9E7B-1A2B3C4D5E6F"
LEGACY01 = "D99A57FE-9F2F-44EE-B15F-BF6C5D740D1C"
OTHER = "11111111-2222-3333-4444-555555555555"
CSV1 = "C:\\ClusterStorage\\Volume1"
CSV2 = "C:\\ClusterStorage\\Volume2"
WEB_ROOT = f"{CSV1}\\web01"
WEB_SYSTEM = f"{CSV1}\\web01\\Virtual Hard Disks\\web01-system.vhdx"
WEB_DATA_LEAF = f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data_1A2B.avhdx"
WEB_DATA_BASE = f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data.vhdx"
WEB_ISO = f"{CSV1}\\ISO\\tools.iso"
LEGACY_ROOT = "D:\\Hyper-V\\legacy01"
LEGACY_SYSTEM = "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-system.vhd"
LEGACY_DATA = "D:\\Hyper-V\\legacy01\\Virtual Hard Disks\\legacy01-data.vhdx"


def sha(seed: str) -> str:
    """A well-formed SHA-256 digest, distinct per seed."""
    return hashlib.sha256(seed.encode()).hexdigest()


def disk_file(index: int, path: str, size: int, *, parent: Optional[str] = None,
              fmt: DiskFormat = DiskFormat.VHDX) -> DiskFile:
    """One chain file; differencing when it has a parent."""
    kind = DiskType.DIFFERENCING if parent else DiskType.DYNAMIC
    info = VirtualDiskInfo(path, fmt, kind, 100 * GiB, 32 * MiB, 512, 4096, parent_path=parent)
    return DiskFile(index=index, info=info, file_size=size, sha256=sha(path))


def _parts(guid: str, files: Iterable[DiskFile], config: Sequence[str]) -> List[SaveSetPart]:
    parts = [SaveSetPart(PartKind.CONFIG, f"config/{name}", MiB, sha(name)) for name in config]
    for f in files:
        name = f.info.path.rsplit("\\", 1)[1]
        parts.append(SaveSetPart(PartKind.DISK, f"disks/{f.index}-{name}", f.file_size, sha(f.info.path),
                                 f.index, f.info.path))
    return parts


def host_facts(name: str, *, build: int = 17763, switches: Sequence[str] = ("External-LAN", "Internal-Backup"),
               default_vhd: str = "", default_vm: str = "") -> HostFacts:
    """Host facts with the configuration versions Microsoft's table gives the build."""
    return HostFacts(name=name, os_version=f"10.0.{build}", supported_config_versions=supported_versions(build),
                     default_vhd_path=default_vhd, default_vm_path=default_vm,
                     switches=[Switch(s, f"{name}-{s}".upper()) for s in switches])


def web01_manifest() -> Manifest:
    """``web01``: clustered gen2 VM, system disk on Volume1, a differencing data disk on Volume2, an ISO."""
    guid = WEB01
    system, data, dvd = (f"Microsoft:{guid}\\SCSI-0-{n}\\D" for n in range(3))
    vm = VmConfig(
        ref=VmRef(guid, "web01"), generation=Generation.GEN2, version="9.0", state=PowerState.RUNNING,
        processors=4, memory_mb=4096, dynamic_memory=True, config_root=WEB_ROOT, snapshot_root=WEB_ROOT,
        drives=[
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.SCSI, 0, 0), WEB_SYSTEM, system),
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.SCSI, 0, 1), WEB_DATA_LEAF, data),
            Drive(DriveKind.DVD, DriveSlot(ControllerKind.SCSI, 0, 2), WEB_ISO, dvd),
        ],
        adapters=[
            NetworkAdapter("Network Adapter", "00155D010203", True, False, "External-LAN", "S1", True, "nic-1"),
            NetworkAdapter("Backup NIC", "00155D010204", False, False, "Internal-Backup", "S2", True, "nic-2"),
            NetworkAdapter("Spare", "000000000000", False, False, None, None, False, "nic-3"),
        ],
        secure_boot=True,
    )
    chain_system = [disk_file(0, WEB_SYSTEM, 10 * GiB)]
    chain_data = [disk_file(1, WEB_DATA_LEAF, GiB, parent=WEB_DATA_BASE), disk_file(2, WEB_DATA_BASE, 20 * GiB)]
    disks = [DiskBackup(system, chain_system), DiskBackup(data, chain_data)]
    cluster = ClusterFacts(
        name="HVCLUSTER01", fqdn="hvcluster01.example.test", shared_volumes_root="C:\\ClusterStorage",
        nodes=[ClusterNode("HV01", NodeState.UP), ClusterNode("HV02", NodeState.UP)],
        volumes=[SharedVolume("Cluster Disk 1", CSV1, 2 * TiB, 1200 * GiB, "HV01"),
                 SharedVolume("Cluster Disk 2", CSV2, TiB, 800 * GiB, "HV02")],
        groups=[VmGroup("web01", guid, "HV01", 0)],
    )
    return Manifest(
        backup=BackupFacts(BackupLevel.FULL, 4711, datetime(2025, 1, 31, 22, 5, tzinfo=timezone.utc),
                           ConsistencyMode.APPLICATION, Consistency.APPLICATION, "0.1.0",
                           parts=_parts(guid, chain_system + chain_data, [f"{guid}.vmcx", f"{guid}.vmgs"])),
        vm=vm,
        host=host_facts("HV01"),
        settings=VmSettings(system=CapturedSettings("Msvm_VirtualSystemSettingData", f"Microsoft:{guid}", "<x/>")),
        controllers=[Controller(ControllerKind.SCSI, 0, f"Microsoft:{guid}\\SCSI-0")],
        disks=disks,
        cluster=cluster,
    )


def legacy01_manifest() -> Manifest:
    """``legacy01``: standalone gen1 VM on D:, a pass-through disk and a skipped VHD Set."""
    guid = LEGACY01
    system, data, passthrough, vhds = (f"Microsoft:{guid}\\D{n}" for n in range(4))
    vm = VmConfig(
        ref=VmRef(guid, "legacy01"), generation=Generation.GEN1, version="9.0", state=PowerState.OFF,
        processors=2, memory_mb=2048, dynamic_memory=False, config_root=LEGACY_ROOT, snapshot_root=LEGACY_ROOT,
        drives=[
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.IDE, 0, 0), LEGACY_SYSTEM, system),
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.IDE, 0, 1), LEGACY_DATA, data),
            Drive(DriveKind.PASS_THROUGH, DriveSlot(ControllerKind.SCSI, 0, 1), None, passthrough,
                  host_resource='\\\\HVSTANDALONE01\\root\\virtualization\\v2:Msvm_DiskDrive.DeviceID="X"'),
            Drive(DriveKind.SHARED_DISK, DriveSlot(ControllerKind.SCSI, 0, 2), "D:\\Shared\\quorum.vhds", vhds),
        ],
        adapters=[NetworkAdapter("Legacy Network Adapter", "00155D01AB02", False, True, "LAN", "S9", True, "nic")],
    )
    chain_system = [disk_file(0, LEGACY_SYSTEM, 8 * GiB, fmt=DiskFormat.VHD)]
    chain_data = [disk_file(1, LEGACY_DATA, 2 * GiB)]
    disks = [DiskBackup(system, chain_system), DiskBackup(data, chain_data),
             DiskBackup(passthrough, [], "pass-through disk: checkpoints do not include it"),
             DiskBackup(vhds, [], "VHD Set: not backed up")]
    host = host_facts("HVSTANDALONE01", build=20348, switches=["LAN"], default_vhd="D:\\Hyper-V\\Virtual Hard Disks",
                      default_vm="D:\\Hyper-V")
    return Manifest(
        backup=BackupFacts(BackupLevel.FULL, 12, datetime(2025, 2, 1, 3, 4, 5, tzinfo=timezone.utc),
                           ConsistencyMode.APPLICATION, Consistency.COLD, "0.1.0",
                           parts=_parts(guid, chain_system + chain_data, [f"{guid}.vmcx", f"{guid}.vmrs"])),
        vm=vm,
        host=host,
        settings=VmSettings(system=CapturedSettings("Msvm_VirtualSystemSettingData", f"Microsoft:{guid}", "<x/>")),
        disks=disks,
    )


def node(name: str, *, build: int = 17763, switches: Sequence[str] = ("External-LAN", "Internal-Backup"),
         memory_mb: Optional[int] = 64 * 1024, cpus: Optional[int] = 16, up: bool = True,
         default_vhd: str = f"{CSV1}\\Virtual Hard Disks", default_vm: str = CSV1) -> DestinationHost:
    """A destination host."""
    facts = host_facts(name, build=build, switches=switches, default_vhd=default_vhd, default_vm=default_vm)
    return DestinationHost(facts=facts, logical_processors=cpus, memory_mb=memory_mb, up=up)


def cluster_facts(name: str = "HVCLUSTER01", nodes: Sequence[Tuple[str, NodeState]] = (("HV01", NodeState.UP),
                                                                                         ("HV02", NodeState.UP)),
                  volumes: Sequence[Tuple[str, int]] = ((CSV1, 1200 * GiB), (CSV2, 800 * GiB)),
                  groups: Sequence[VmGroup] = ()) -> ClusterFacts:
    """A destination cluster's facts."""
    return ClusterFacts(
        name=name, fqdn=f"{name.lower()}.example.test", shared_volumes_root="C:\\ClusterStorage",
        nodes=[ClusterNode(n, s) for n, s in nodes],
        volumes=[SharedVolume(f"Cluster Disk {i + 1}", p, 2 * TiB, free, None) for i, (p, free) in enumerate(volumes)],
        groups=list(groups),
    )


def existing(guid: str = WEB01, name: str = "web01", *, node_name: str = "HV01",
             state: PowerState = PowerState.OFF, config_root: str = WEB_ROOT,
             disks: Sequence[str] = (WEB_SYSTEM, WEB_DATA_LEAF), group: Optional[str] = "web01") -> ExistingVm:
    """A VM registered at the destination."""
    return ExistingVm(guid=guid, name=name, node=node_name, state=state, config_root=config_root,
                      disk_paths=tuple(disks), group=group)


def destination(entry: str, cluster: Optional[ClusterFacts], hosts: Sequence[DestinationHost], *,
                vms: Sequence[ExistingVm] = (), files: Iterable[str] = (),
                volume_free: Optional[Dict[str, int]] = None, unlisted: Optional[Dict[str, str]] = None
                ) -> Destination:
    """A destination; ``files`` are host paths that exist (keys are made here)."""
    return Destination(entry=entry, cluster=cluster, hosts=tuple(hosts), vms=tuple(vms),
                       existing_files=frozenset(path_key(f) for f in files), volume_free=volume_free or {},
                       unlisted=unlisted or {})


def same_cluster(*, vms: Sequence[ExistingVm] = (), files: Iterable[str] = (WEB_ISO,),
                 hosts: Optional[Sequence[DestinationHost]] = None, entry: str = "HVCLUSTER01",
                 cluster: Optional[ClusterFacts] = None) -> Destination:
    """HVCLUSTER01 as the source saw it; groups follow the VMs given."""
    groups = [VmGroup(v.group, v.guid, v.node, 0) for v in vms if v.group]
    return destination(entry, cluster or cluster_facts(groups=groups),
                       hosts if hosts is not None else [node("HV01"), node("HV02", memory_mb=128 * 1024)],
                       vms=vms, files=files)


def standalone(*, name: str = "HVSTANDALONE01", switches: Sequence[str] = ("LAN",), build: int = 20348,
               vms: Sequence[ExistingVm] = (), files: Iterable[str] = (),
               volume_free: Optional[Dict[str, int]] = None, default_vhd: str = "D:\\Hyper-V\\Virtual Hard Disks",
               default_vm: str = "D:\\Hyper-V", memory_mb: Optional[int] = 32 * 1024,
               cpus: Optional[int] = 8) -> Destination:
    """A standalone host."""
    host = node(name, build=build, switches=switches, default_vhd=default_vhd, default_vm=default_vm,
                memory_mb=memory_mb, cpus=cpus)
    return destination(name, None, [host], vms=vms, files=files, volume_free=volume_free)
