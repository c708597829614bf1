r"""hvsim: VMs on an SMB 3 file share (Hyper-V over SMB): UNC paths, the same bytes from every node.

A VM's folder ``\\FS01\VMStore\sql01`` holds its configuration and disks; Hyper-V names every file
by its UNC path (HostResource, ConfigurationDataRoot), checkpoints put their ``.avhdx`` next to the
parent on the share, and RCT and merges work as on local volumes.  Issue #9 point 10.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hvsim.fs import ClusterFileSystem, split_unc
from hvsim.samba import SMBD
from hvsim.simulation import Simulation
from hvsim.world import NodeRepository, World
from hvsim.world.scenario import add_smb_share_vm, default_world
from hvsim.world.testing import (
    Clock,
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
MiB = 1 << 20
SHARE = "\\\\FS01\\VMStore\\sql01"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> World:
    w = make_world(tmp_path, clock, files=True)
    add_smb_share_vm(w)
    return w


def test_unc_paths_map_to_one_share_directory_whichever_node_asks(tmp_path: Path) -> None:
    fs = ClusterFileSystem(tmp_path)
    share = fs.add_file_share("FS01", "VMStore")
    assert share == tmp_path / "fileservers" / "FS01" / "VMStore" and share.is_dir()
    hv01, standalone = fs.node("HV01"), fs.node("HVSTANDALONE01", clustered=False)
    path = "\\\\FS01\\VMStore\\sql01\\Virtual Hard Disks\\a.vhdx"
    assert hv01.local(path) == standalone.local(path) == share / "sql01" / "Virtual Hard Disks" / "a.vhdx"
    # names compare as Windows compares them; a trailing backslash names the folder
    assert hv01.local("\\\\fs01\\vmstore\\sql01\\") == share / "sql01"
    assert hv01.local("\\\\FS01\\VMStore") == share
    assert fs.file_shares.servers() == {"FS01": {"VMStore": share}}
    assert fs.file_shares.read_only() == {}
    fs.add_file_share("FS01", "ReadOnly", access="read")
    assert fs.file_shares.read_only() == {"FS01": ["ReadOnly"]}


@pytest.mark.parametrize("bad", [
    "\\\\FS02\\VMStore\\a.vhdx",            # unknown server: the network path was not found
    "\\\\FS01\\Other\\a.vhdx",              # unknown share
    "\\\\FS01\\VMStore\\..\\x",             # escapes the share
    "\\\\FS01\\VMStore\\a\\\\b",            # empty component
    "\\\\?\\UNC\\FS01\\VMStore\\a.vhdx",    # device path
    "\\\\.\\pipe\\x",
    "\\\\FS01",                             # no share
    "relative\\a.vhdx",
])
def test_unc_paths_that_name_no_share_are_refused(tmp_path: Path, bad: str) -> None:
    fs = ClusterFileSystem(tmp_path)
    fs.add_file_share("FS01", "VMStore")
    with pytest.raises(ValueError):
        fs.node("HV01").local(bad)


def test_file_share_names_and_access_are_checked(tmp_path: Path) -> None:
    fs = ClusterFileSystem(tmp_path)
    with pytest.raises(ValueError, match="access"):
        fs.add_file_share("FS01", "VMStore", access="write")
    with pytest.raises(ValueError, match="server and share"):
        fs.add_file_share("FS01", "a\\b")
    with pytest.raises(ValueError):
        split_unc("C:\\x")


def test_inventory_reports_unc_paths_as_hyper_v_does(world: World) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "sql01")
    vssd = settings_of(repo, vm)
    assert vssd.get("ConfigurationDataRoot") == SHARE
    disks = [s.get("HostResource")[0] for s in devices(repo, vssd, "Msvm_StorageAllocationSettingData")
             if s.get("ResourceSubType") == "Microsoft:Hyper-V:Virtual Hard Disk"]
    assert disks == [f"{SHARE}\\Virtual Hard Disks\\sql01-system.vhdx", f"{SHARE}\\Virtual Hard Disks\\sql01-data.vhdx"]
    share = world.fs.file_shares.servers()["FS01"]["VMStore"]
    assert (share / "sql01" / "Virtual Hard Disks" / "sql01-system.vhdx").is_file()
    v = world.vm("sql01")
    assert world.local(v.node, v.live_config_file()).is_file()
    assert world.local(v.node, v.live_config_file()).is_relative_to(share)
    # the image service answers for UNC paths
    out = repo.invoke(service(repo, IMS), "GetVirtualHardDiskSettingData", {"Path": disks[0]})
    assert out.return_value == 0
    assert out.out["SettingData"].get("Path") == disks[0]


def test_checkpoints_rct_and_merges_on_the_share(world: World, clock: Clock) -> None:
    repo = NodeRepository(world, "HV01")
    vm = vm_inst(repo, "sql01")
    before = [s.host_resource[0] for s in world.vm("sql01").config.vhds()]
    settings = embedded("Msvm_VirtualSystemSnapshotSettingData", ConsistencyLevel=1)
    out, job = call(repo, clock, service(repo, SNAP), "CreateSnapshot", AffectedSystem=vm.path,
                    SnapshotSettings=settings, SnapshotType=32768)
    assert job is not None and job.get("JobState") == 7
    (s1,) = job_results(repo, out, "Msvm_VirtualSystemSettingData")
    leaves = [s.host_resource[0] for s in world.vm("sql01").config.vhds()]
    for parent, leaf in zip(before, leaves):
        # the .avhdx lies next to its parent, on the share, named by its UNC path
        assert leaf.startswith(f"{SHARE}\\Virtual Hard Disks\\") and leaf.lower().endswith(".avhdx")
        assert world.local("HV01", leaf).parent == world.local("HV01", parent).parent
        info = world.disk_info("HV01", leaf)
        assert info is not None and info.parent_path == parent
    ok(repo, clock, service(repo, SNAP), "ConvertToReferencePoint", AffectedSnapshot=s1.path)
    (rp,) = world.reference_points("sql01")
    assert all(rp.rct_ids)
    assert [s.host_resource[0] for s in world.vm("sql01").config.vhds()] == before
    assert not any(p.suffix.lower() == ".avhdx" for p in world.local("HV01", SHARE).rglob("*"))

    # guest writes are tracked on the share's files, and seen from the other node after a migration
    world.guest_write("sql01", 0, 2 * MiB + 10, b"s" * 100)
    world.migrate("sql01", "HV02")
    repo2 = NodeRepository(world, "HV02")
    changes = repo2.invoke(service(repo2, IMS), "GetVirtualDiskChanges",
                           {"Path": before[0], "LimitId": rp.rct_ids[0], "TargetSnapshotId": None,
                            "ByteOffset": 0, "ByteLength": 16 * MiB})
    assert changes.return_value == 0
    assert changes.out["ChangedByteOffsets"] == [2 * MiB]
    qemu = shutil.which("qemu-img")
    if qemu:
        for path in before:
            res = subprocess.run([qemu, "check", "-f", "vhdx", str(world.local("HV02", path))],
                                 capture_output=True, text=True, check=False)
            assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.samba
def test_simulation_serves_each_file_server_with_its_own_smbd(tmp_path: Path) -> None:
    if not (shutil.which("smbpasswd") and Path(SMBD).exists()):
        pytest.skip("Samba (smbd, smbpasswd) is not installed")
    world = default_world(tmp_path / "estate", disk_size=4 * MiB)
    add_smb_share_vm(world, disk_size=4 * MiB)
    world.fs.add_file_share("FS01", "Archive", access="read")
    with Simulation(tmp_path, world=world, samba=True, https=False) as sim:
        assert sim.samba is not None
        fs01 = sim.samba.servers["FS01"]
        share = world.fs.file_shares.servers()["FS01"]
        assert fs01.shares == {name: d.resolve() for name, d in share.items()}
        assert fs01.read_only_shares == {"Archive"}
        smb = sim.smb_map()
        assert smb["FS01"] == ("127.0.0.1", fs01.port) and smb["FS01"] not in (smb["HV01"], smb["HV02"])
        # the nodes keep serving their admin shares only; the VM's files are reached at the file server
        assert set(sim.samba.servers["HV01"].shares) == {"C$", "D$"}
