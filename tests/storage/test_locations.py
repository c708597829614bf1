"""bareos_hyperv.storage.locations: host paths -> SMB or local locations."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.storage.locations import (
    InvalidPathError,
    LocalLocation,
    LocationResolver,
    SmbLocation,
    parse_path_map,
    parse_share_map,
    split_windows_path,
)


def test_drive_path_goes_to_the_nodes_admin_share() -> None:
    r = LocationResolver()
    loc = r.resolve(r"C:\ClusterStorage\Volume1\vm\disk.vhdx", "HV01")
    assert loc == SmbLocation("HV01", "C$", r"ClusterStorage\Volume1\vm\disk.vhdx")
    assert str(loc) == r"\\HV01\C$\ClusterStorage\Volume1\vm\disk.vhdx"
    assert r.resolve(r"d:\VMs\a b [1].vhdx", "hv02") == SmbLocation("hv02", "D$", r"VMs\a b [1].vhdx")
    assert r.resolve("E:/VMs//x.vhdx", "HV01") == SmbLocation("HV01", "E$", r"VMs\x.vhdx")


def test_unc_path_is_used_verbatim() -> None:
    loc = LocationResolver().resolve(r"\\sofs\vmstore\web01\Virtual Hard Disks\web01.vhdx", "HV01")
    assert loc == SmbLocation("sofs", "vmstore", r"web01\Virtual Hard Disks\web01.vhdx")
    assert LocationResolver().resolve(r"\\sofs\vmstore") == SmbLocation("sofs", "vmstore", "")


def test_share_map_overrides_longest_prefix_first_case_insensitive() -> None:
    r = LocationResolver(
        parse_share_map(
            [
                r"C:\ClusterStorage=\\fileserver\csv",
                r"C:\ClusterStorage\Volume2=\\other\v2\sub",
                r"HV01:D:\VMs=\\hv01\vms",
            ]
        )
    )
    assert r.resolve(r"c:\clusterstorage\Volume1\vm\d.vhdx", "HV02") == SmbLocation(
        "fileserver", "csv", r"Volume1\vm\d.vhdx"
    )
    assert r.resolve(r"C:\ClusterStorage\VOLUME2\d.vhdx", "HV02") == SmbLocation("other", "v2", r"sub\d.vhdx")
    assert r.resolve(r"D:\VMs\x.vhdx", "hv01") == SmbLocation("hv01", "vms", "x.vhdx")
    # the node-specific entry does not apply to another node, nor does a partial component match
    assert r.resolve(r"D:\VMs\x.vhdx", "HV02") == SmbLocation("HV02", "D$", r"VMs\x.vhdx")
    assert r.resolve(r"C:\ClusterStorageX\y", "HV02") == SmbLocation("HV02", "C$", r"ClusterStorageX\y")


def test_share_map_can_redirect_a_unc_path() -> None:
    r = LocationResolver(parse_share_map([r"\\sofs\vmstore=\\sofs-b\vmstore"]))
    assert r.resolve(r"\\SOFS\VMSTORE\a.vhdx") == SmbLocation("sofs-b", "vmstore", "a.vhdx")


def test_local_mode_uses_the_path_map() -> None:
    r = LocationResolver(
        path_map=parse_path_map([r"C:\ClusterStorage\Volume1=/mnt/csv1", r"\\sofs\vmstore=/mnt/sofs"]),
        local=True,
    )
    assert r.resolve(r"C:\ClusterStorage\Volume1\vm\Grüße [1].vhdx", "HV01") == LocalLocation(
        PurePosixPath("/mnt/csv1/vm/Grüße [1].vhdx")
    )
    assert r.resolve(r"\\sofs\vmstore\a.vhdx") == LocalLocation(PurePosixPath("/mnt/sofs/a.vhdx"))
    with pytest.raises(InvalidPathError, match="no path map entry") as ei:
        r.resolve(r"C:\ClusterStorage\Volume2\x.vhdx", "HV01")
    assert "Volume2" in str(ei.value) and "/mnt/csv1" in (ei.value.what_to_do or "")


@pytest.mark.parametrize(
    "path",
    [
        r"vm\disk.vhdx",
        r"C:disk.vhdx",
        r"C:\vm\..\..\Windows\x",
        r"C:\vm\.\x",
        r"\\sofs\share\..\other\x",
        r"\\?\C:\vm\x.vhdx",
        r"\\.\PhysicalDrive0",
        r"\\server",
        r"C:\vm\disk.vhdx:stream",
        "",
        "/etc/passwd",
    ],
)
def test_refused_paths(path: str) -> None:
    with pytest.raises(InvalidPathError) as ei:
        LocationResolver().resolve(path, "HV01")
    assert ei.value.what_to_do


def test_drive_path_without_node_is_refused() -> None:
    with pytest.raises(InvalidPathError, match="needs the node"):
        LocationResolver().resolve(r"C:\vm\x.vhdx")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("no-equals-sign", "not 'prefix=target'"),
        (r"relative\path=\\srv\share", "not an absolute Windows path"),
        (r"C:\x=/local/dir", "not a UNC path"),
        (r"C:\x=\\srvonly", "not a UNC path"),
        (r"C:\x\..=\\srv\share", "not an absolute Windows path"),
    ],
)
def test_bad_share_map_entries(entry: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as ei:
        parse_share_map([entry])
    assert ei.value.what_to_do


@pytest.mark.parametrize("entry", [r"C:\x=relative/dir", r"C:\x=/mnt/../etc", r"C:\x=\\srv\share"])
def test_bad_path_map_entries(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="absolute local directory"):
        parse_path_map([entry])


def test_parse_node_qualifier_and_blank_entries() -> None:
    entries = parse_share_map(["", r"HV-01.corp:D:\VMs=\\hv01\vms", r"C:\A=\\s\t"])
    assert [(e.node, e.prefix, e.target) for e in entries] == [
        ("HV-01.corp", r"D:\VMs", r"\\hv01\vms"),
        (None, r"C:\A", r"\\s\t"),
    ]


def test_split_and_location_helpers() -> None:
    assert split_windows_path(r"c:\A\\b\ ") == ("C:", ["A", "b", " "])
    assert split_windows_path(r"\\srv\share\x") == (r"\\srv\share", ["x"])
    loc = SmbLocation("HV01", "C$", r"a\b.vhdx")
    assert loc.name == "b.vhdx"
    assert loc.parent == SmbLocation("HV01", "C$", "a")
    assert loc.parent.parent == SmbLocation("HV01", "C$", "")
    assert loc.parent.child("c [1].vhdx") == SmbLocation("HV01", "C$", r"a\c [1].vhdx")
    assert SmbLocation("HV01", "C$", "").child("x").path == "x"
    assert loc.same_share(SmbLocation("hv01", "c$", "z"))
    assert not loc.same_share(SmbLocation("HV02", "C$", "z"))
    for bad in ("..", "a\\b", "a/b", "x:y", ""):
        with pytest.raises(InvalidPathError):
            loc.child(bad)
    local = LocalLocation(PurePosixPath("/mnt/a/b"))
    assert local.child("c").path == PurePosixPath("/mnt/a/b/c")
    assert local.parent.path == PurePosixPath("/mnt/a")
    with pytest.raises(InvalidPathError):
        local.child("../x")


def test_unc_path_of_a_file_server_is_the_same_from_every_node() -> None:
    # Hyper-V over SMB: \\FS01\VMStore is a file server's share, not a node's admin share; whichever node
    # reports the path, it resolves to that server (its SMB endpoint comes from smb_host_map like a node's).
    r = LocationResolver(parse_share_map([r"HV01:D:\VMs=\\hv01\vms", r"C:\ClusterStorage=\\FILESERVER\csv"]))
    path = r"\\FS01\VMStore\sql01\Virtual Hard Disks\sql01-system.vhdx"
    expected = SmbLocation("FS01", "VMStore", r"sql01\Virtual Hard Disks\sql01-system.vhdx")
    assert r.resolve(path, "HV01") == r.resolve(path, "HV02") == r.resolve(path) == expected
    assert r.resolve(r"\\FS01\VMStore\sql01", "HV01").child("Virtual Machines") == SmbLocation(
        "FS01", "VMStore", r"sql01\Virtual Machines")
