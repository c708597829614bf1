"""The restore destination read from the simulated estate (real HTTP, NTLM, pywinrm) and planned against.

Folders are listed through the product's LocalStorage with a path map onto the simulator's node and
CSV directories (``data=local``), the same Storage interface the agent uses over SMB.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List

from bareos_hyperv.hyperv.inventory import Inventory, take_inventory
from bareos_hyperv.manifest import Manifest, VmSettings
from bareos_hyperv.model.backup import (
    BackupFacts,
    BackupLevel,
    CapturedSettings,
    Consistency,
    ConsistencyMode,
    DiskBackup,
    DiskFile,
    PartKind,
    SaveSetPart,
)
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.model.restore import RestoreOptions
from bareos_hyperv.model.vm import DriveKind, PowerState
from bareos_hyperv.restore.facts import gather_destination, host_memory_mb, list_folders
from bareos_hyperv.restore.plan import (
    CandidateFolder,
    Destination,
    DeviceAction,
    DiskReason,
    candidate_folders,
    make_plan,
)
from bareos_hyperv.restore.safety import path_key
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocationResolver, parse_path_map
from hvsim.simulation import Simulation

from .helpers import connector

SHA = "0" * 64


def resolver(sim: Simulation, *, standalone: bool = True) -> LocationResolver:
    """Host paths of the estate -> the simulator's directories (CSVs shared, D: of the standalone host)."""
    fs = sim.world.fs
    entries = [f"C:\\ClusterStorage={fs.csv_root}"]
    if standalone:
        entries.append(f"HVSTANDALONE01:D:\\={fs.share_dir('HVSTANDALONE01', 'D')}")
    return LocationResolver(path_map=parse_path_map(entries), local=True)


def manifest_of(inventory: Inventory, name: str) -> Manifest:
    """A manifest of a VM as the inventory sees it (one full chain file per virtual disk)."""
    vm = next(v for v in inventory.vms if v.ref.name == name)
    node = inventory.owner[vm.ref.guid]
    host = next(h for h in inventory.hosts if h.name == node)
    disks: List[DiskBackup] = []
    parts = [SaveSetPart(PartKind.CONFIG, f"config/{vm.ref.guid}.vmcx", 65536, SHA)]
    for index, drive in enumerate(vm.virtual_disks):
        assert drive.path is not None
        fmt = DiskFormat.VHD if drive.path.lower().endswith(".vhd") else DiskFormat.VHDX
        info = VirtualDiskInfo(drive.path, fmt, DiskType.DYNAMIC, 8 << 20, 2 << 20, 512, 4096)
        disks.append(DiskBackup(drive.settings_id, [DiskFile(index, info, 8 << 20, SHA)]))
        parts.append(SaveSetPart(PartKind.DISK, f"disks/{index}-{drive.path.rsplit(chr(92), 1)[1]}", 8 << 20, SHA,
                                 index))
    for drive in vm.drives:
        if drive.kind is DriveKind.PASS_THROUGH:
            disks.append(DiskBackup(drive.settings_id, [], "pass-through disk"))
    backup = BackupFacts(BackupLevel.FULL, 41, datetime(2025, 3, 1, tzinfo=timezone.utc), ConsistencyMode.APPLICATION,
                         Consistency.APPLICATION, "0.1.0", parts=parts)
    settings = VmSettings(system=CapturedSettings("Msvm_VirtualSystemSettingData", f"Microsoft:{vm.ref.guid}", "<x/>"))
    return Manifest(backup=backup, vm=vm, host=host, settings=settings, disks=disks, cluster=inventory.cluster)


def test_cluster_destination_and_plans_against_it(sim: Simulation) -> None:
    with connector(sim) as conn:
        manifest = manifest_of(take_inventory(conn, "HVCLUSTER01"), "web01")
        inventory_trips = conn.round_trips
        options = RestoreOptions()
        before = conn.round_trips
        seen: List[Destination] = []

        def folders(bare: Destination) -> List[CandidateFolder]:
            seen.append(bare)
            return list(candidate_folders(manifest, options, bare))

        with LocalStorage() as storage:
            dest = gather_destination(conn, "HVCLUSTER01", storage=storage, resolver=resolver(sim),
                                      candidate_folders=folders)
        trips = conn.round_trips - before
    assert dest.entry == "HVCLUSTER01" and dest.cluster is not None and dest.cluster.name == "HVCLUSTER01"
    assert [h.name for h in dest.hosts] == ["HV01", "HV02"]
    assert all(h.up for h in dest.hosts)
    assert [h.logical_processors for h in dest.hosts] == [sim.world.nodes[n].logical_processors
                                                           for n in ("HV01", "HV02")]
    assert [h.memory_mb for h in dest.hosts] == [sim.world.nodes[n].memory_mb for n in ("HV01", "HV02")]
    assert seen and not seen[0].existing_files  # folders were chosen before any listing
    web = next(v for v in dest.vms if v.name == "web01")
    assert (web.guid, web.node, web.state, web.group) == (manifest.vm.ref.guid, "HV01", PowerState.RUNNING, "web01")
    assert list(web.disk_paths) == [d.path for d in manifest.vm.virtual_disks]
    for path in web.disk_paths:
        assert path_key(path) in dest.existing_files
    assert dest.unlisted == {}
    # the inventory, and one memory and one processor query per node
    assert trips == inventory_trips + 2 * len(dest.hosts)

    plan = make_plan(manifest, options, dest, job_id=9)
    assert not plan.ok  # web01 is still registered: keep the ID, overwrite or copy?
    assert any("restore_new_id=yes" in p.resolve for p in plan.problems)

    copy = RestoreOptions(new_id=True, vm_name="web01-copy")
    plan = make_plan(manifest, copy, dest, job_id=9)
    assert plan.ok, [p.message for p in plan.problems]
    assert (plan.node, plan.node_reason, plan.cluster_role) == ("HV01", "the original owner", True)
    assert {d.reason for d in plan.disks} == {DiskReason.RENAMED_EXISTS}
    assert all("-restored-9." in d.dest_path for d in plan.disks)
    assert all(v.free is not None for v in plan.volumes)  # CSV free space from the cluster

    manifest.vm.ref = type(manifest.vm.ref)(manifest.vm.ref.guid, "web01")
    overwrite = make_plan(manifest, RestoreOptions(overwrite=True, force_off=True), dest, job_id=9)
    assert overwrite.ok and overwrite.force_off
    assert {d.reason for d in overwrite.disks} == {DiskReason.REPLACES_OVERWRITTEN}


def test_standalone_destination_lists_its_local_folders(sim: Simulation) -> None:
    with connector(sim) as conn:
        manifest = manifest_of(take_inventory(conn, "HVSTANDALONE01"), "legacy01")
        options = RestoreOptions(new_id=True, vm_name="legacy02")
        with LocalStorage() as storage:
            dest = gather_destination(conn, "HVSTANDALONE01", storage=storage, resolver=resolver(sim),
                                      candidate_folders=lambda d: candidate_folders(manifest, options, d))
            memory = host_memory_mb(conn.client("HVSTANDALONE01"))
    assert dest.cluster is None and [h.name for h in dest.hosts] == ["HVSTANDALONE01"]
    assert dest.hosts[0].memory_mb == memory == sim.world.nodes["HVSTANDALONE01"].memory_mb
    assert [v.name for v in dest.vms] == ["legacy01"] and dest.vms[0].group is None
    iso = next(d.path for d in manifest.vm.drives if d.kind is DriveKind.DVD)
    assert iso is not None and path_key(iso) in dest.existing_files
    plan = make_plan(manifest, options, dest, job_id=5)
    assert plan.ok, [p.message for p in plan.problems]
    assert not plan.cluster_role and plan.node == "HVSTANDALONE01"
    assert {d.reason for d in plan.disks} == {DiskReason.RENAMED_EXISTS}
    assert [d.action for d in plan.dropped] == [DeviceAction.REMOVED]  # the pass-through disk; the ISO is there


def test_folders_that_cannot_be_listed_are_reported(sim: Simulation) -> None:
    folders = [CandidateFolder("HVSTANDALONE01", "D:\\Hyper-V\\legacy01"),
               CandidateFolder("HV01", "C:\\ClusterStorage\\Volume1\\no-such-folder"),
               CandidateFolder("HV01", "C:\\ClusterStorage\\Volume1\\..\\x")]
    with LocalStorage() as storage:
        existing, unlisted = list_folders(storage, resolver(sim, standalone=False), folders)
    assert existing == frozenset()
    assert set(unlisted) == {"D:\\Hyper-V\\legacy01", "C:\\ClusterStorage\\Volume1\\..\\x"}
    assert "path map" in unlisted["D:\\Hyper-V\\legacy01"]
