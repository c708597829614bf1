"""Save-set path layout, escaping and the inverse parse (bareos_hyperv.manifest.layout)."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bareos_hyperv.errors import ManifestError
from bareos_hyperv.manifest.layout import (
    EntryKind,
    SaveSetPath,
    escape_component,
    parse_path,
    unescape_component,
    vm_directories,
)
from bareos_hyperv.model.vm import VmRef

GUID = "D99A57FE-9F2F-44EE-B15F-BF6C5D740D1C"
OTHER = "5B2C8E61-0F3A-4C5D-9E7B-1A2B3C4D5E6F"

# Every code point, surrogates and controls included: VM names can hold almost anything.
hostile = st.text(alphabet=st.characters(blacklist_categories=()), min_size=1, max_size=40)
guids = st.uuids().map(lambda u: str(u).upper())


def test_the_design_layout() -> None:
    assert SaveSetPath.manifest("HVCLUSTER01", "web01").path == "@hyperv/HVCLUSTER01/web01/manifest.xml"
    assert (
        SaveSetPath.config("HVCLUSTER01", "web01", f"{GUID}.vmcx").path
        == f"@hyperv/HVCLUSTER01/web01/config/{GUID}.vmcx"
    )
    assert SaveSetPath.disk("hv01", "web01", 0, "web01.vhdx").path == "@hyperv/hv01/web01/disks/0-web01.vhdx"
    delta = SaveSetPath.delta("hv01", "web01", 3, "data.avhdx", job_id=4711)
    assert delta.path == "@hyperv/hv01/web01/disks/3-data.avhdx+I+4711"
    assert delta.relative == "disks/3-data.avhdx+I+4711"
    assert str(delta) == delta.path
    sparse = SaveSetPath.sparse("hv01", "web01", 1, "data.vhdx")
    assert sparse.relative == "disks/1-data.vhdx+S" and parse_path(sparse.path).kind is EntryKind.SPARSE
    # A file named like the marker is escaped, so it never reads as a sparse full.
    assert parse_path(SaveSetPath.disk("hv01", "web01", 1, "data.vhdx+S").path).kind is EntryKind.DISK


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("web 01", "web 01"),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("100%", "100%25"),
        ("x+I+12", "x%2BI%2B12"),
        ("~tilde", "%7Etilde"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("tab\there", "tab%09here"),
        ("new\nline", "new%0Aline"),
        ("nul\x00", "nul%00"),
        ("zero\u200bwidth", "zero%E2%80%8Bwidth"),
        ("caf\u00e9 \u4e2d \U0001f600", "caf\u00e9 \u4e2d \U0001f600"),
    ],
)
def test_escaping_of_hostile_characters(name: str, escaped: str) -> None:
    assert escape_component(name) == escaped
    assert unescape_component(escaped) == name


@settings(max_examples=300, deadline=None)
@given(scope=hostile, vm=hostile, file=hostile, index=st.integers(0, 10**6), job=st.integers(1, 2**32 - 1),
       guid=st.none() | guids)
def test_every_path_parses_back_to_what_built_it(
    scope: str, vm: str, file: str, index: int, job: int, guid: Optional[str]
) -> None:
    built = [
        SaveSetPath.manifest(scope, vm, vm_guid=guid),
        SaveSetPath.config(scope, vm, file, vm_guid=guid),
        SaveSetPath.disk(scope, vm, index, file, vm_guid=guid),
        SaveSetPath.delta(scope, vm, index, file, job_id=job, vm_guid=guid),
        SaveSetPath.sparse(scope, vm, index, file, vm_guid=guid),
    ]
    for entry in built:
        path = entry.path
        assert parse_path(path) == entry
        assert parse_path("/" + path) == entry
        components = path.split("/")
        assert len(components) == (4 if entry.kind is EntryKind.MANIFEST else 5)
        assert all(c not in ("", ".", "..") for c in components)
        assert path.isprintable()


@settings(max_examples=200, deadline=None)
@given(a=hostile, b=hostile)
def test_escaping_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape_component(a) != escape_component(b)


def test_same_named_vms_get_their_guid_and_others_do_not() -> None:
    dirs = vm_directories([VmRef(GUID, "Web01"), VmRef(OTHER, "web01"), VmRef("0" * 8 + "-0000-0000-0000-" + "0" * 12,
                                                                             "db")])
    assert dirs[GUID] == f"Web01~{GUID}"
    assert dirs[OTHER] == f"web01~{OTHER}"
    assert dirs["00000000-0000-0000-0000-000000000000"] == "db"
    paths = {SaveSetPath.manifest("c", "web01", vm_guid=g).path for g in (GUID, OTHER)}
    assert len(paths) == 2


def test_unicode_forms_of_one_name_count_as_the_same_name() -> None:
    dirs = vm_directories([VmRef(GUID, "caf\u00e9"), VmRef(OTHER, "cafe\u0301")])
    assert dirs[GUID].endswith(GUID) and dirs[OTHER].endswith(OTHER)


def test_empty_vm_name_uses_the_guid() -> None:
    assert vm_directories([VmRef(GUID, "")]) == {GUID: f"~{GUID}"}
    entry = SaveSetPath.manifest("hv", "", vm_guid=GUID)
    assert entry.path == f"@hyperv/hv/~{GUID}/manifest.xml"
    assert parse_path(entry.path) == entry
    with pytest.raises(ManifestError, match="empty name needs its GUID"):
        SaveSetPath.manifest("hv", "")


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: SaveSetPath.manifest("", "vm"), "scope .* is empty"),
        (lambda: SaveSetPath.config("hv", "vm", ""), "needs a file name"),
        (lambda: SaveSetPath.disk("hv", "vm", -1, "x.vhdx"), "disk file number >= 0"),
        (lambda: SaveSetPath.delta("hv", "vm", 0, "x.vhdx", job_id=0), "job id 0"),
        (lambda: SaveSetPath.manifest("hv", "vm", vm_guid="{not-a-guid}"), "is not a GUID"),
    ],
)
def test_bad_building_blocks_are_refused(build, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError, match=expected):
        build()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/passwd", "does not have the form"),
        ("@hyperv/hv/vm", "does not have the form"),
        ("@other/hv/vm/manifest.xml", "does not have the form"),
        ("@hyperv/hv/vm/notes.txt", "below the VM directory"),
        ("@hyperv/hv/vm/disks/x-file.vhdx", "expected <n>-<file>"),
        ("@hyperv/hv/vm/disks/01-file.vhdx", "expected <n>-<file>"),
        ("@hyperv/hv/vm/disks/1-file.vhdx+I+0", "unescaped '\\+'"),
        ("@hyperv/hv/vm/disks/1-a+b.vhdx", "unescaped '\\+'"),
        ("@hyperv/hv/../manifest.xml", "starts with an unescaped '.'"),
        ("@hyperv/hv/vm%/manifest.xml", "unescaped '%'"),
        ("@hyperv/hv/vm%FF/manifest.xml", "not UTF-8"),
        ("@hyperv/hv/vm~not-a-guid/manifest.xml", "not a GUID"),
        ("@hyperv//vm/manifest.xml", "is empty"),
    ],
)
def test_foreign_paths_are_refused_with_the_path_named(path: str, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected) as caught:
        parse_path(path)
    assert repr(path) in caught.value.message
    assert caught.value.what_to_do
