"""hvsim.world checkpoints on real VHD/VHDX files: differencing children, merges, reference points, RCT."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hvsim import disks
from hvsim.cim import NS_VIRT, CimInstance, CimRef
from hvsim.world import NodeRepository, World
from hvsim.world.testing import (
    Clock,
    associated,
    call,
    devices,
    embedded,
    job_results,
    make_world,
    ok,
    service,
    settings_of,
    vm_inst,
)

SNAP = "Msvm_VirtualSystemSnapshotService"
IMS = "Msvm_ImageManagementService"
RPS = "Msvm_VirtualSystemReferencePointService"
MiB = 1 << 20


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    return make_world(tmp_path, clock, files=True)


def _snapshot(repo: NodeRepository, clock: Clock, name: str, stype: int = 32768, level: int = 1,
              ignore: bool = False) -> tuple[CimInstance, CimInstance]:
    """CreateSnapshot; returns (job, resulting snapshot VSSD found through the job)."""
    vm = vm_inst(repo, name)
    settings = embedded("Msvm_VirtualSystemSnapshotSettingData", ConsistencyLevel=level,
                        IgnoreNonSnapshottableDisks=ignore)
    out, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path,
                    SnapshotSettings=settings, SnapshotType=stype)
    assert job is not None
    if job.get("JobState") != 7:
        return job, job
    (snap,) = job_results(repo, out, "Msvm_VirtualSystemSettingData")
    return job, snap


def _disk_paths(repo: NodeRepository, vssd: CimInstance) -> list[str]:
    return [s.get("HostResource")[0] for s in devices(repo, vssd, "Msvm_StorageAllocationSettingData")
            if s.get("ResourceSubType") == "Microsoft:Hyper-V:Virtual Hard Disk"]


def test_recovery_checkpoint_creates_avhdx_children(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "web01")
    before = _disk_paths(repo, settings_of(repo, vm))
    _job, snap = _snapshot(repo, clock, "web01")
    assert snap.get("VirtualSystemType") == "Microsoft:Hyper-V:Snapshot:Recovery"
    assert snap.get("VirtualSystemIdentifier") == vm.get("Name")
    assert "Backup" in snap.get("ElementName")
    assert [s.get("InstanceID") for s in associated(repo, vm.path, "Msvm_SnapshotOfVirtualSystem")] == [  # type: ignore[arg-type]
        snap.get("InstanceID")]
    (current,) = associated(repo, vm.path, "Msvm_MostCurrentSnapshotInBranch")  # type: ignore[arg-type]
    assert current.get("InstanceID") == snap.get("InstanceID")
    assert snap.path is not None
    assert settings_of(repo, vm).get("Parent") == snap.path.wmi_path("HV01")
    assert snap.get("Parent") is None
    # snapshot SASDs keep the frozen parents; the live VM now writes to .avhdx children next to them
    assert _disk_paths(repo, snap) == before
    live = _disk_paths(repo, settings_of(repo, vm))
    for parent, child in zip(before, live):
        assert child.endswith(".avhdx")
        assert child.rsplit("\\", 1)[0] == parent.rsplit("\\", 1)[0]
        stem = parent.rsplit("\\", 1)[1][:-len(".vhdx")]
        assert child.rsplit("\\", 1)[1].startswith(stem + "_") and len(child.rsplit("\\", 1)[1]) == len(
            stem) + 1 + 36 + len(".avhdx")
        info = disks.disk_info(world.local("HV01", child))
        assert info.kind == "differencing" and info.parent_path == parent
        out = repo.invoke(service(repo, IMS), "GetVirtualHardDiskSettingData", {"Path": child})
        sd = out.out["SettingData"]
        assert out.return_value == 0 and sd.get("Type") == 4 and sd.get("Format") == 3
        assert sd.get("ParentPath") == parent
        state = repo.invoke(service(repo, IMS), "GetVirtualHardDiskState", {"Path": child}).out["State"]
        assert state.get("InUse") is True
        assert repo.invoke(service(repo, IMS), "GetVirtualHardDiskState",
                           {"Path": parent}).out["State"].get("InUse") is False
    assert repo.invoke(service(repo, IMS), "GetVirtualHardDiskSettingData",
                       {"Path": "C:\\ClusterStorage\\Volume1\\nope.vhdx"}).return_value == 32779


def test_guest_writes_go_to_the_child_and_merge_back(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    base = world.vm("web01").config.vhds()[0].host_resource[0]
    base_local = world.local("HV01", base)
    original = disks.read_virtual(base_local, 2 * MiB, 4096)
    _, snap = _snapshot(repo, clock, "web01")
    world.guest_write("web01", 0, 2 * MiB, b"\xab" * 4096)
    assert disks.read_virtual(base_local, 2 * MiB, 4096) == original
    leaf = world.local("HV01", world.vm("web01").config.vhds()[0].host_resource[0])
    assert disks.read_virtual(leaf, 2 * MiB, 4096) == b"\xab" * 4096
    ok(repo, clock, service(repo, SNAP), "DestroySnapshot", AffectedSnapshot=snap.path)
    assert not leaf.exists()
    assert world.vm("web01").config.vhds()[0].host_resource[0] == base
    assert disks.read_virtual(base_local, 2 * MiB, 4096) == b"\xab" * 4096
    assert world.snapshots("web01") == []
    assert associated(repo, vm_inst(repo, "web01").path, "Msvm_MostCurrentSnapshotInBranch") == []  # type: ignore[arg-type]


@pytest.mark.qemu
def test_merged_parent_passes_qemu_img_check(world: World, clock: Clock) -> None:
    qemu = shutil.which("qemu-img")
    if qemu is None:
        pytest.skip("qemu-img not installed")
    repo = NodeRepository(world, "HV01")
    _, snap = _snapshot(repo, clock, "web01")
    world.guest_write("web01", 1, 3 * MiB + 512, b"z" * 70000)
    ok(repo, clock, service(repo, SNAP), "DestroySnapshot", AffectedSnapshot=snap.path)
    for s in world.vm("web01").config.vhds():
        res = subprocess.run([qemu, "check", "-f", "vhdx", str(world.local("HV01", s.host_resource[0]))],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


def test_reference_points_and_changed_ranges(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    ims = service(repo, IMS)
    vm = vm_inst(repo, "web01")
    disks_before = _disk_paths(repo, settings_of(repo, vm))
    _, s1 = _snapshot(repo, clock, "web01")
    out = ok(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=s1.path)
    (r1,) = job_results(repo, out, "Msvm_VirtualSystemReferencePoint")
    assert world.snapshots("web01") == []
    assert _disk_paths(repo, settings_of(repo, vm)) == disks_before
    assert r1.get("ReferencePointType") == 2 and r1.get("ConsistencyLevel") == 1
    assert r1.get("VirtualSystemIdentifier") == vm.get("Name")
    rct1 = r1.get("ResilientChangeTrackingIdentifiers")
    sasd_ids = [s.get("InstanceID") for s in devices(repo, settings_of(repo, vm),
                                                     "Msvm_StorageAllocationSettingData")]
    assert r1.get("VirtualDiskIdentifiers") == sasd_ids and len(rct1) == 2 and all(rct1)
    assert [r.get("InstanceID") for r in associated(repo, vm.path, "Msvm_ReferencePointOfVirtualSystem")] == [  # type: ignore[arg-type]
        r1.get("InstanceID")]

    world.guest_write("web01", 0, 1 * MiB + 100, b"a" * 4000)   # -> block 1 MiB .. +64 KiB
    world.guest_write("web01", 1, 5 * MiB, b"b" * 200000)       # spans 4 RCT blocks
    _, s2 = _snapshot(repo, clock, "web01")
    world.guest_write("web01", 0, 8 * MiB, b"c" * 10)            # after S2: not part of the S1..S2 delta
    frozen = _disk_paths(repo, s2)
    size = 16 * MiB

    def changes(path: str, limit: str, offset: int = 0, length: int = size) -> tuple[int, list[int],
                                                                                     list[int]]:
        out = repo.invoke(ims, "GetVirtualDiskChanges", {"Path": path, "LimitId": limit,
                                                         "TargetSnapshotId": None,
                                                         "ByteOffset": offset, "ByteLength": length})
        assert out.return_value == 0, out.return_value
        return out.out["ProcessedByteLength"], out.out["ChangedByteOffsets"], out.out["ChangedByteLengths"]

    assert changes(frozen[0], rct1[0]) == (size, [1 * MiB], [64 * 1024])
    assert changes(frozen[1], rct1[1]) == (size, [5 * MiB], [4 * 64 * 1024])
    # through the live leaf the post-S2 write shows too
    leaf = _disk_paths(repo, settings_of(repo, vm))[0]
    assert changes(leaf, rct1[0])[1] == [1 * MiB, 8 * MiB]
    # a window and a per-call limit (clients must loop on ProcessedByteLength)
    world.rct_max_bytes_per_call = 4 * MiB
    assert changes(frozen[1], rct1[1], 4 * MiB, 12 * MiB) == (4 * MiB, [5 * MiB], [4 * 64 * 1024])
    assert changes(frozen[1], rct1[1], 0, 4 * MiB) == (4 * MiB, [], [])
    world.rct_max_bytes_per_call = 1 << 40
    assert repo.invoke(ims, "GetVirtualDiskChanges", {"Path": frozen[0], "LimitId": "rctX:bogus",
                                                      "ByteOffset": 0,
                                                          "ByteLength": size}).return_value == 32773
    assert repo.invoke(ims, "GetVirtualDiskChanges", {"Path": frozen[0], "LimitId": rct1[0],
                                                      "ByteOffset": 0,
                                                          "ByteLength": size + 1}).return_value == 32773

    out = ok(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=s2.path)
    (r2,) = job_results(repo, out, "Msvm_VirtualSystemReferencePoint")
    rct2 = r2.get("ResilientChangeTrackingIdentifiers")
    assert set(rct2).isdisjoint(rct1)
    assert changes(disks_before[0], rct2[0])[1:] == ([8 * MiB], [64 * 1024])
    assert changes(disks_before[0], rct1[0])[1] == [1 * MiB, 8 * MiB]
    assert changes(disks_before[1], rct2[1])[1:] == ([], [])
    ok(repo, clock, service(repo, RPS), "DestroyReferencePoint", AffectedReferencePoint=r1.path)
    assert [r.id for r in world.reference_points("web01")] == [str(r2.get("InstanceID")).split(":")[1]]
    assert repo.invoke(ims, "GetVirtualDiskChanges", {"Path": disks_before[0], "LimitId": rct1[0],
                                                      "ByteOffset": 0,
                                                          "ByteLength": size}).return_value == 32773
    # losing the .rct side files invalidates every id
    world.lose_change_tracking("web01")
    assert repo.invoke(ims, "GetVirtualDiskChanges", {"Path": disks_before[0], "LimitId": rct2[0],
                                                      "ByteOffset": 0,
                                                          "ByteLength": size}).return_value == 32773


def test_only_recovery_checkpoints_become_reference_points(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    _, snap = _snapshot(repo, clock, "web01", stype=2)
    assert snap.get("VirtualSystemType") == "Microsoft:Hyper-V:Snapshot:Realized"
    _, job = call(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=snap.path)
    assert job is not None and job.get("JobState") == 10
    assert "recovery" in job.get("ErrorDescription")
    assert len(world.snapshots("web01")) == 1
    assert repo.invoke(service(repo, SNAP), "CreateSnapshot", {"AffectedSystem": vm_inst(repo, "web01").path,
                                                               "SnapshotType": 3}).return_value == 1


def test_application_consistency_needs_guest_vss(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    world.vm("web01").guest_vss = False
    job, _ = _snapshot(repo, clock, "web01", level=1)
    assert job.get("JobState") == 10
    assert "application-consistent" in job.get("ErrorDescription")
    assert world.snapshots("web01") == []
    assert not any(p.name.endswith(".avhdx") for p in world.fs.csv_root.rglob("*"))
    job, _snap = _snapshot(repo, clock, "web01", level=2)
    assert job.get("JobState") == 7 and world.snapshots("web01")[0].consistency == 2
    # an Off VM is consistent without the guest
    hv02 = NodeRepository(world, "HV02")
    world.vm("db01").guest_vss = False
    job, _ = _snapshot(hv02, clock, "db01", level=1)
    assert job.get("JobState") == 7


def test_gen1_vm_checkpoint_vhd_and_passthrough(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HVSTANDALONE01")
    job, _ = _snapshot(repo, clock, "legacy01")
    assert job.get("JobState") == 10 and "pass-through" in job.get("ErrorDescription")
    job, snap = _snapshot(repo, clock, "legacy01", ignore=True)
    assert job.get("JobState") == 7
    live = _disk_paths(repo, settings_of(repo, vm_inst(repo, "legacy01")))
    assert live[0].endswith(".avhd") and live[1].endswith(".avhdx") and live[2].endswith(".avhd")
    assert disks.disk_info(world.local("HVSTANDALONE01", live[0])).fmt == "vhd"
    world.guest_write("legacy01", 0, 4096, b"v" * 512)
    out = ok(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=snap.path)
    (rp,) = job_results(repo, out, "Msvm_VirtualSystemReferencePoint")
    rct = rp.get("ResilientChangeTrackingIdentifiers")
    assert rct[0] == "" and rct[1] and rct[2] == ""  # no RCT for VHD
    base = world.vm("legacy01").config.vhds()[0].host_resource[0]
    assert disks.read_virtual(world.local("HVSTANDALONE01", base), 4096, 512) == b"v" * 512
    assert repo.invoke(service(repo, IMS), "GetVirtualDiskChanges", {
        "Path": base, "LimitId": "x", "ByteOffset": 0, "ByteLength": 4096}).return_value == 32770


def test_deleting_a_middle_checkpoint_reparents_the_leaf(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    base = world.vm("web01").config.vhds()[0].host_resource[0]
    world.guest_write("web01", 0, 0, b"0" * 4096)
    _, s1 = _snapshot(repo, clock, "web01", stype=2)
    world.guest_write("web01", 0, 0, b"1" * 4096)
    _, s2 = _snapshot(repo, clock, "web01", stype=2)
    assert str(s2.get("Parent")).endswith(f'InstanceID="{s1.get("InstanceID")}"')
    world.guest_write("web01", 0, 4096, b"2" * 4096)
    mid = _disk_paths(repo, s2)[0]
    ok(repo, clock, service(repo, SNAP), "DestroySnapshot", AffectedSnapshot=s1.path)
    assert not world.local("HV01", mid).exists()
    (s2_now,) = associated(repo, vm_inst(repo, "web01").path, "Msvm_SnapshotOfVirtualSystem")  # type: ignore[arg-type]
    assert _disk_paths(repo, s2_now)[0] == base and s2_now.get("Parent") is None
    leaf = world.local("HV01", world.vm("web01").config.vhds()[0].host_resource[0])
    assert disks.disk_info(leaf).parent_path == base
    assert disks.read_virtual(leaf, 0, 8192) == b"1" * 4096 + b"2" * 4096
    assert disks.read_virtual(world.local("HV01", base), 0, 4096) == b"1" * 4096
    out, job = call(repo, clock, service(repo, IMS), "ValidateVirtualHardDisk", Path=str(
        world.vm("web01").config.vhds()[0].host_resource[0]))
    assert out.out["Job"].class_name == "Msvm_StorageJob" and job is not None and job.get("JobState") == 7
    ok(repo, clock, service(repo, SNAP), "DestroySnapshot", AffectedSnapshot=s2_now.path)
    assert disks.read_virtual(world.local("HV01", base), 0, 8192) == b"1" * 4096 + b"2" * 4096


def test_validate_virtual_hard_disk_reports_missing_parent(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    _snapshot(repo, clock, "web01")
    leaf = world.vm("web01").config.vhds()[0].host_resource[0]
    base = world.local("HV01", world.snapshots("web01")[0].config.vhds()[0].host_resource[0])
    base.chmod(0o644)
    base.rename(base.with_suffix(".moved"))
    _, job = call(repo, clock, service(repo, IMS), "ValidateVirtualHardDisk", Path=leaf)
    assert job is not None and job.get("JobState") == 10
    assert repo.invoke(service(repo, IMS), "ValidateVirtualHardDisk",
                       {"Path": "C:\\ClusterStorage\\Volume1\\gone.vhdx"}).return_value == 32779
    assert repo.invoke(service(repo, IMS), "ValidateVirtualHardDisk",
                       {"Path": "\\\\server\\share\\x.vhdx"}).return_value == 32773


def test_snapshot_of_migrated_vm_uses_new_owner(world: World, clock: Clock) -> None:
    hv01 = NodeRepository(world, "HV01")
    _snapshot(hv01, clock, "web01")
    world.migrate("web01", "HV02")
    hv02 = NodeRepository(world, "HV02")
    (snap,) = associated(hv02, vm_inst(hv02, "web01").path, "Msvm_SnapshotOfVirtualSystem")  # type: ignore[arg-type]
    assert list(hv01.instances(NS_VIRT, "Msvm_VirtualSystemSettingData")) == []
    ok(hv02, clock, service(hv02, SNAP), "DestroySnapshot", AffectedSnapshot=snap.path)
    ref = CimRef(NS_VIRT, "Msvm_VirtualSystemSettingData", (("InstanceID", snap.get("InstanceID")),))
    assert not any(i.path is not None and i.path.same_as(ref)
                   for i in hv02.instances(NS_VIRT, "Msvm_VirtualSystemSettingData"))
