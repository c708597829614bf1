"""Checks of untrusted manifest values: names, paths, duplicates, sizes, and where the plan puts files."""

from __future__ import annotations

import dataclasses

import pytest

from bareos_hyperv.errors import ConfigurationError, ManifestError
from bareos_hyperv.model.backup import PartKind, SaveSetPart
from bareos_hyperv.restore import safety
from bareos_hyperv.restore.safety import (
    CONFIG_EXTENSIONS,
    DISK_EXTENSIONS,
    Problem,
    check_manifest,
    config_file_name,
    duplicate_name_problems,
    file_name_problems,
    folder_component,
    host_path_problems,
    is_under,
    join_host_path,
    manifest_problems,
    path_key,
    placement_problems,
    raise_for,
    shown,
    split_host_path,
    vm_name_problems,
    win_basename,
    win_dirname,
)
from tests.unit.manifest.conftest import cluster_manifest, standalone_manifest

from .builders import legacy01_manifest, sha, web01_manifest


def disk_name(name: str) -> list[Problem]:
    return file_name_problems(name, what="disk file", extensions=DISK_EXTENSIONS, resolve="fix it")


@pytest.mark.parametrize("name", ["web01.vhdx", "a.VHD", "x_1A2B.avhdx", "old.avhd", "with space.vhdx",
                                  "\u4e2d\u6587.vhdx", "con-tent.vhdx", "COM10.vhdx", "nul_.vhdx"])
def test_plain_disk_names_pass(name: str) -> None:
    assert disk_name(name) == []


@pytest.mark.parametrize(("name", "expected"), [
    ("", "is empty"),
    ("..", "'..' component"),
    (".", "'.' component"),
    ("..\\evil.vhdx", "path separator"),
    ("a/b.vhdx", "path separator"),
    ("C:\\x.vhdx", "alternate data stream"),
    ("\\\\server\\share\\x.vhdx", "path separator"),
    ("disk.vhdx:stream", "alternate data stream"),
    ("disk.vhdx::$DATA", "alternate data stream"),
    ("CON", "device name 'CON'"),
    ("con.vhdx", "device name 'CON'"),
    ("Nul .vhdx", "device name 'NUL'"),
    ("COM1.vhdx", "device name 'COM1'"),
    ("lpt9.avhdx", "device name 'LPT9'"),
    ("COM\u00b9.vhdx", "device name"),
    ("CONOUT$.vhdx", "device name 'CONOUT$'"),
    ("disk.vhdx.", "ends with a dot or a space"),
    ("disk.vhdx ", "ends with a dot or a space"),
    ("dis\nk.vhdx", "U+000A"),
    ("dis\x00k.vhdx", "U+0000"),
    ("evil\u202exdhv.exe", "U+202E"),
    ("zero\u200bwidth.vhdx", "U+200B"),
    ("a*b.vhdx", "'*'"),
    ("x" * 256 + ".vhdx", "longer than 255"),
    ("disk.exe", "does not end with .vhd/.vhdx/.avhd/.avhdx"),
    ("disk.vhdx.exe", "does not end with"),
    ("disk.iso", "does not end with"),
])
def test_hostile_disk_names_are_refused(name: str, expected: str) -> None:
    (problem,) = disk_name(name)
    assert expected in problem.message
    assert problem.message.startswith("disk file ") and problem.resolve == "fix it"


def test_configuration_extensions() -> None:
    for ext in CONFIG_EXTENSIONS:
        assert file_name_problems(f"5B2C{ext}", what="c", extensions=CONFIG_EXTENSIONS, resolve="") == []
    assert file_name_problems("x.vhdx", what="c", extensions=CONFIG_EXTENSIONS, resolve="")


@pytest.mark.parametrize("path", [
    "C:\\ClusterStorage\\Volume1\\web01\\a.vhdx", "d:/VMs/a.vhdx", "\\\\sofs\\vmstore\\web01\\a.vhdx", "C:\\",
    "C:\\a\\\\b.vhdx",
])
def test_clean_host_paths(path: str) -> None:
    assert host_path_problems(path, what="p", resolve="") == []
    assert split_host_path(path) is not None


@pytest.mark.parametrize(("path", "expected"), [
    ("", "is empty"),
    ("relative\\a.vhdx", "not an absolute path"),
    ("C:a.vhdx", "not an absolute path"),
    ("\\a.vhdx", "not an absolute path"),
    ("\\\\?\\C:\\a.vhdx", "device or extended-length path"),
    ("\\\\.\\PhysicalDrive0", "device or extended-length path"),
    ("\\??\\C:\\a", "device or extended-length path"),
    ("\\\\server", "without a server and a share"),
    ("C:\\VMs\\..\\Windows\\a.vhdx", "'..' component"),
    ("C:\\VMs\\.\\a.vhdx", "'.' component"),
    ("C:\\VMs\\a.vhdx:evil", "alternate data stream"),
    ("C:\\VMs\\AUX\\a.vhdx", "device name 'AUX'"),
    ("C:\\VMs.\\a.vhdx", "ends with a dot or a space"),
    ("C:\\VMs\\a\tb.vhdx", "U+0009"),
    ("C:\\" + "a\\" * 20000, "longer than 32767"),
])
def test_hostile_host_paths(path: str, expected: str) -> None:
    (problem,) = host_path_problems(path, what="the path", resolve="do this")
    assert expected in problem.message and problem.message.startswith("the path")
    assert split_host_path(path) is None


def test_unc_refused_where_a_local_path_is_expected_and_extensions() -> None:
    assert "is a UNC path" in host_path_problems("\\\\s\\share\\x", what="p", resolve="", allow_unc=False)[0].message
    assert host_path_problems("C:\\VMs", what="p", resolve="", extensions=DISK_EXTENSIONS)[0].message.endswith(
        "does not end with .vhd/.vhdx/.avhd/.avhdx")
    assert "names no file" in host_path_problems("C:\\", what="p", resolve="", extensions=DISK_EXTENSIONS)[0].message


def test_is_under_compares_as_windows_does() -> None:
    assert is_under("C:\\ClusterStorage\\Volume1\\web01\\a.vhdx", "c:\\clusterstorage\\VOLUME1")
    assert is_under("C:\\A\\b", "C:\\")
    assert is_under("\\\\S\\Share\\x\\y", "\\\\s\\share")
    assert not is_under("C:\\A", "C:\\A")  # strictly inside
    assert not is_under("C:\\AB\\x", "C:\\A")
    assert not is_under("D:\\A\\x", "C:\\A")
    assert not is_under("C:\\A\\..\\..\\x", "C:\\A")
    assert not is_under("C:\\A\\x", "relative")


def test_path_helpers() -> None:
    assert path_key("C:/VMs/Web01\\") == "c:\\vms\\web01"
    assert path_key("C:\\Caf\u0065\u0301") == path_key("c:\\CAF\u00c9")
    assert win_basename("C:\\a\\b.vhdx") == "b.vhdx" and win_basename("C:/a/b/") == "b"
    assert win_dirname("C:\\a\\b.vhdx") == "C:\\a" and win_dirname("C:\\a") == "C:\\"
    assert join_host_path("C:\\", "a", "b") == "C:\\a\\b" and join_host_path("C:\\x\\", "y") == "C:\\x\\y"
    assert shown("a\nb") == "'a\\nb'"
    assert len(shown("x" * 10000)) < 130


@pytest.mark.parametrize(("name", "folder"), [
    ("web01", "web01"), ("web01 / prod", "web01 _ prod"), ("a:b*c?", "a_b_c_"), ("CON", "CON_"),
    ("nul.x", "nul_.x"), ("Com1 .b", "Com1_.b"), ("..", "vm"), ("", "vm"), ("trailing. . ", "trailing"),
    ("bi\u202edi", "bi_di"),
    ("x" * 300, "x" * 100),
])
def test_folder_component_is_always_one_safe_component(name: str, folder: str) -> None:
    assert folder_component(name) == folder
    assert file_name_problems(folder, what="f", extensions=("",), resolve="") == []


def test_vm_name_problems() -> None:
    assert vm_name_problems("web01 / prod \u00e9", what="n", resolve="") == []
    assert "is empty" in vm_name_problems("  ", what="n", resolve="")[0].message
    assert "longer than 100" in vm_name_problems("x" * 101, what="n", resolve="")[0].message
    assert "U+001B" in vm_name_problems("red\x1b[31m", what="n", resolve="")[0].message


def test_duplicates_by_case_normalisation_and_repeats() -> None:
    assert duplicate_name_problems(["C:\\a\\disk.vhdx", "C:\\b\\disk.vhdx"], what="w") == []
    (case,) = duplicate_name_problems(["C:\\a\\Disk.vhdx", "C:\\b\\disk.vhdx"], what="w")
    assert "'Disk.vhdx' and 'disk.vhdx' differ only by case" in case.message
    (nfc,) = duplicate_name_problems(["C:\\a\\caf\u00e9.vhdx", "C:\\b\\cafe\u0301.vhdx"], what="w")
    assert "Unicode normalisation" in nfc.message
    (twice,) = duplicate_name_problems(["C:\\a\\x.vhdx", "c:\\A\\x.vhdx"], what="w")
    assert "is listed 2 times" in twice.message


def test_real_manifests_have_no_problems() -> None:
    for manifest in (cluster_manifest(), standalone_manifest(), web01_manifest(), legacy01_manifest()):
        assert manifest_problems(manifest) == []
        check_manifest(manifest)


def test_check_manifest_raises_one_error_naming_every_problem() -> None:
    manifest = web01_manifest()
    manifest.vm.drives[0].path = "C:\\x\\..\\CON.vhdx"
    manifest.vm.adapters[0].mac = "zz"
    with pytest.raises(ManifestError) as caught:
        check_manifest(manifest)
    text = str(caught.value)
    assert "the manifest of VM 'web01'" in text and "'..' component" in text and "MAC address 'zz'" in text
    assert caught.value.what_to_do and "restore_local=yes" in caught.value.what_to_do


def test_manifest_counts_and_numbers_are_bounded() -> None:
    manifest = web01_manifest()
    manifest.vm.drives = manifest.vm.drives * 400
    problems = manifest_problems(manifest)
    assert any("at most 1024 each" in p.message for p in problems)
    manifest = web01_manifest()
    manifest.vm.memory_mb = -1
    manifest.vm.version = "9.0; rm -rf"
    manifest.vm.ref = dataclasses.replace(manifest.vm.ref, name="n" * 5000)
    text = " ".join(p.message for p in manifest_problems(manifest))
    assert "memory -1 MB is outside" in text and "is not major.minor" in text and "longer than 1024" in text
    assert len(text) < 2000  # values are shortened in messages


def test_manifest_part_checks() -> None:
    manifest = web01_manifest()
    manifest.backup.parts.append(SaveSetPart(PartKind.DISK, "disks/9-ghost.vhdx", 1, sha("g"), 9))
    manifest.backup.parts.append(SaveSetPart(PartKind.CONFIG, "config/Web01.vmcx", 1, "not-a-digest"))
    manifest.disks[0].chain[0] = dataclasses.replace(manifest.disks[0].chain[0], index=1)
    text = " ".join(p.message for p in manifest_problems(manifest))
    assert "names disk file 9, which the manifest does not list" in text
    assert "SHA-256 of save-set file 'config/Web01.vmcx' is not 64 hex digits" in text
    assert "numbers 2 disk files 1" in text


def test_config_file_name() -> None:
    assert config_file_name("config/5B2C.vmcx") == "5B2C.vmcx"
    assert config_file_name("config/a%25b.vmcx") == "a%b.vmcx"
    assert config_file_name("config/a%5Cb.vmcx") == "a\\b.vmcx"  # the name check then refuses it
    for bad in ("disks/x.vmcx", "config", "config/", "config/a/b.vmcx", "config/.hidden", "config/x\\y"):
        assert config_file_name(bad) is None, bad


def test_placement_problems() -> None:
    ok = [("disk 0", "C:\\ClusterStorage\\Volume1\\web01\\a.vhdx", "C:\\ClusterStorage\\Volume1")]
    assert placement_problems(ok) == []
    (outside,) = placement_problems([("disk 0", "C:\\ClusterStorage\\Volume2\\a.vhdx", "C:\\ClusterStorage\\Volume1")])
    assert "outside the destination folder" in outside.message and "bug" in outside.resolve
    (bad,) = placement_problems([("disk 0", "C:\\ClusterStorage\\Volume1\\..\\..\\a.vhdx", "C:\\ClusterStorage")])
    assert "'..' component" in bad.message


def test_raise_for() -> None:
    raise_for([])
    with pytest.raises(ConfigurationError) as caught:
        raise_for([Problem("a", "do x"), Problem("b", "do x"), Problem("c", "do y")], ConfigurationError, what="opts")
    assert caught.value.message == "opts: a; b; c" and caught.value.what_to_do == "do x do y"
    assert safety.MAX_VM_NAME == 100
