"""The backup manifest: round trips, schema validation on write and read, versions (bareos_hyperv.manifest.document)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bareos_hyperv.errors import ManifestError
from bareos_hyperv.manifest import EXTENSION_NAMESPACE, NAMESPACE, SCHEMA_VERSION, Manifest, from_xml, to_xml
from bareos_hyperv.manifest.document import schema
from bareos_hyperv.model.backup import CapturedSettings, PartKind, SaveSetPart
from bareos_hyperv.wsman.cim import parse_cimxml

NS = {"m": NAMESPACE}
CIMXML_FILES = sorted((Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "shared" / "cim-xml").glob("*.xml"))


def _edit(data: bytes, old: str, new: str) -> bytes:
    text = data.decode("utf-8")
    assert old in text, f"test setup: {old!r} not in the manifest"
    return text.replace(old, new, 1).encode("utf-8")


# --------------------------------------------------------------------------- round trips


def test_round_trip_gives_back_the_same_tree_and_the_same_bytes(any_manifest: Manifest) -> None:
    data = to_xml(any_manifest)
    back = from_xml(data, source="manifest.xml")
    assert back == any_manifest
    assert to_xml(back) == data


def test_written_manifest_is_valid_against_the_shipped_xsd(any_manifest: Manifest) -> None:
    root = etree.fromstring(to_xml(any_manifest))
    assert schema().validate(root), schema().error_log
    assert root.get("version") == SCHEMA_VERSION
    assert etree.QName(root).namespace == NAMESPACE


def test_cluster_facts_are_written_for_a_clustered_vm_only(cluster: Manifest, standalone: Manifest) -> None:
    clustered = etree.fromstring(to_xml(cluster))
    assert clustered.xpath("m:cluster/@sharedVolumesRoot", namespaces=NS) == ["C:\\ClusterStorage"]
    assert clustered.xpath("m:cluster/m:groups/m:group/m:preferredOwner/text()", namespaces=NS) == ["HV01", "HV02"]
    assert clustered.xpath("m:cluster/m:nodes/m:node/@state", namespaces=NS) == ["up", "paused", "unknown"]
    alone = etree.fromstring(to_xml(standalone))
    assert alone.xpath("m:cluster", namespaces=NS) == []
    assert from_xml(to_xml(standalone), source="s").cluster is None


def test_standalone_gen1_records_dvd_passthrough_and_both_formats(standalone: Manifest) -> None:
    root = etree.fromstring(to_xml(standalone))
    assert root.xpath("m:vm/m:drives/m:drive[@kind='dvd']/m:path/text()", namespaces=NS) == ["D:\\iso\\setup.iso"]
    assert root.xpath("m:disks/m:disk/m:notBackedUp/text()", namespaces=NS) == [
        "pass-through disk: Hyper-V checkpoints do not include it"
    ]
    assert root.xpath("m:disks/m:disk/m:file/@format", namespaces=NS) == ["VHD", "VHDX"]
    assert root.xpath("m:vm/m:secureBoot", namespaces=NS) == []
    assert root.xpath("m:backup/m:consistency/@achieved", namespaces=NS) == ["crash"]


def test_time_is_written_as_utc(standalone: Manifest) -> None:
    root = etree.fromstring(to_xml(standalone))
    # 03:04:05 at +02:00 is 01:04:05 UTC.
    assert root.xpath("m:backup/@time", namespaces=NS) == ["2025-02-01T01:04:05Z"]
    assert from_xml(to_xml(standalone), source="s").backup.time.utcoffset() is not None


# --------------------------------------------------------------------------- captured settings


@pytest.mark.parametrize("path", CIMXML_FILES, ids=lambda p: p.name)
def test_real_cimxml_fixture_round_trips_byte_for_byte(path, standalone: Manifest) -> None:  # type: ignore[no-untyped-def]
    original = path.read_bytes()
    back = from_xml(to_xml(standalone), source="s")
    found = [c for c in back.settings.resources if c.instance_id == f"fixture:{path.name}"]
    assert len(found) == 1
    assert found[0].cimxml.encode("utf-8") == original
    assert parse_cimxml(found[0].cimxml) == parse_cimxml(original)


def test_to_cimxml_payloads_round_trip_and_still_parse(cluster: Manifest) -> None:
    back = from_xml(to_xml(cluster), source="c")
    assert back.settings.system.cimxml == cluster.settings.system.cimxml
    vssd = parse_cimxml(back.settings.system.cimxml)
    assert vssd.str("ElementName") == cluster.vm.ref.name
    epasd = parse_cimxml(back.settings.resources[0].cimxml)
    assert epasd.ref("Parent").str_selector("Name") == "A1B2C3D4-0000-1111-2222-333344445555"


@pytest.mark.parametrize(
    ("text", "encoding", "cdata"),
    [
        ('<INSTANCE CLASSNAME="X"><PROPERTY NAME="A" TYPE="string"><VALUE>a</VALUE></PROPERTY></INSTANCE>',
         "text", True),
        ("  leading and trailing blanks \n\t ", "text", True),
        ("holds ]]> which ends a CDATA section", "text", False),
        ("carriage\r\nreturns\rstay", "text", False),
        ("a control \x01 character and NUL \x00", "base64", False),
        ("a lone surrogate \ud800 here", "base64", False),
        ("", "text", False),
    ],
)
def test_payload_encoding_keeps_every_text_exact(cluster: Manifest, text: str, encoding: str, cdata: bool) -> None:
    cluster.settings.resources = [CapturedSettings("Msvm_Odd", "odd", text)]
    data = to_xml(cluster)
    element = etree.fromstring(data).find("m:settings/m:resource", NS)
    assert element is not None
    assert element.get("encoding") == encoding
    assert (b"<![CDATA[" + text.encode("utf-8", "surrogatepass") + b"]]>" in data) is cdata
    assert from_xml(data, source="c").settings.resources[0].cimxml == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=())))
def test_any_text_payload_round_trips(make: Callable[[str], Manifest], text: str) -> None:
    manifest = make("standalone")
    manifest.settings.resources = [CapturedSettings("Msvm_Any", "any", text)]
    assert from_xml(to_xml(manifest), source="h").settings.resources[0].cimxml == text


def test_changed_payload_is_refused_by_its_sha256(standalone: Manifest) -> None:
    data = _edit(to_xml(standalone), "<VALUE>HV12OSDEMO1</VALUE>", "<VALUE>HV12OSDEMO2</VALUE>")
    with pytest.raises(ManifestError, match=r"manifest job1/manifest\.xml, line \d+, element resource: .*SHA-256"):
        from_xml(data, source="job1/manifest.xml")


# --------------------------------------------------------------------------- schema errors on read


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("<processors>1</processors>", "", r"Element 'memoryMB': This element is not expected.*processors"),
        ('level="Full"', 'level="Weekly"', r"attribute 'level': \[facet 'enumeration'\] The value 'Weekly'"),
        ('size="19331"', 'size="19k"', r"attribute 'size': '19k' is not a valid value"),
        ("<memoryMB>512</memoryMB>", "<memoryMB>-1</memoryMB>", r"Element 'memoryMB': '-1' is not a valid value"),
        (
            'time="2025-02-01T01:04:05Z"',
            'time="2025-02-01T01:04:05+02:00"',
            r"attribute 'time'.*'2025-02-01T01:04:05\+02:00' is not accepted",
        ),
        ('mac="00155D01AB02"', 'mac="00-15-5D-01-AB-02"', r"attribute 'mac'"),
        ('kind="passthrough"', 'kind="teleport"', r"attribute 'kind'.*teleport"),
        ('<disk settingsId="Microsoft:D99A57FE', '<disk settingsId="nowhere:D99A57FE', r"No match found.*diskDrive"),
    ],
    ids=["missing-element", "bad-level", "non-numeric-size", "negative-memory", "non-utc-time", "bad-mac",
         "bad-drive-kind", "disk-without-drive"],
)
def test_schema_violation_is_refused_with_file_line_and_element(
    standalone: Manifest, old: str, new: str, expected: str
) -> None:
    data = _edit(to_xml(standalone), old, new)
    with pytest.raises(ManifestError) as caught:
        from_xml(data, source="@hyperv/HVSTANDALONE01/legacy/manifest.xml")
    error = caught.value
    assert "@hyperv/HVSTANDALONE01/legacy/manifest.xml" in error.message
    assert re.search(r"line \d+", error.message)
    assert re.search(expected, error.message), error.message
    assert error.what_to_do and "restore_local=yes" in error.what_to_do
    assert NAMESPACE not in error.message  # namespaces are noise for an operator


def test_delta_without_base_job_is_refused_on_read(cluster: Manifest) -> None:
    data = _edit(to_xml(cluster), ' baseJobId="4700"', "")
    with pytest.raises(ManifestError, match=r"delta part 'disks/0-web01\.vhdx\+I\+4711'.*baseJobId"):
        from_xml(data, source="m.xml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<manifest", r"not well-formed XML"),
        (b"<other/>", r"not a bareos-hyperv manifest"),
        (b'<manifest xmlns="urn:example:1" version="1.0"/>', r"not a bareos-hyperv manifest"),
        (b'<manifest xmlns="urn:bareos-hyperv:manifest:1"/>', r"has version ''"),
        (b'<manifest xmlns="urn:bareos-hyperv:manifest:1" version="1.x"/>', r"has version '1.x'"),
        (b'<manifest xmlns="urn:bareos-hyperv:manifest:1" version="2.0"/>', r"major of the namespace"),
        (b'<manifest xmlns="urn:bareos-hyperv:manifest:0" version="0.9"/>', r"version 0\.9, which no released"),
        (
            b'<!DOCTYPE m [<!ENTITY big "x">]><manifest xmlns="urn:bareos-hyperv:manifest:1" version="1.0"/>',
            r"DOCTYPE",
        ),
    ],
)
def test_foreign_or_broken_documents_are_refused(data: bytes, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected) as caught:
        from_xml(data, source="x.xml")
    assert "x.xml" in caught.value.message


# --------------------------------------------------------------------------- versions


def test_newer_major_version_is_refused_with_upgrade_advice(standalone: Manifest) -> None:
    data = to_xml(standalone).replace(NAMESPACE.encode(), b"urn:bareos-hyperv:manifest:2")
    data = _edit(data, f'version="{SCHEMA_VERSION}"', 'version="2.0"')
    with pytest.raises(ManifestError, match=r"version 2\.0, written by a newer bareos-hyperv") as caught:
        from_xml(data, source="m.xml")
    assert "at least as new" in (caught.value.what_to_do or "")


def test_newer_minor_with_extensions_in_their_namespace_is_read(cluster: Manifest) -> None:
    data = to_xml(cluster)
    assert f'xmlns:x="{EXTENSION_NAMESPACE}"'.encode() in data  # the writer declares the prefix on the root
    data = _edit(data, f'version="{SCHEMA_VERSION}"', 'version="1.3"')
    # Extensions go at the end of their parent's children (where the XSD wildcards are).
    data = _edit(data, "</warnings>", "</warnings><x:future kind='new'><x:deep/></x:future>")
    data = _edit(data, "</switches>", '</switches><x:hostExtra a="1"/>')
    data = _edit(data, '<vm guid="', '<vm x:tag="t" guid="')
    data = _edit(data, "</settings>", "</settings><x:trailer/>")
    back = from_xml(data, source="m.xml")
    assert back.version == "1.3"
    assert dataclasses.replace(back, version=SCHEMA_VERSION) == cluster
    assert f'version="{SCHEMA_VERSION}"'.encode() in to_xml(back)


def test_newer_minor_with_unknown_element_in_the_main_namespace_says_so(cluster: Manifest) -> None:
    data = _edit(to_xml(cluster), f'version="{SCHEMA_VERSION}"', 'version="1.4"')
    data = _edit(data, "<pluginVersion>", "<surprise/><pluginVersion>")
    with pytest.raises(ManifestError, match="surprise") as caught:
        from_xml(data, source="m.xml")
    assert "1.4, newer than this reader" in (caught.value.what_to_do or "")


# --------------------------------------------------------------------------- errors on write


def test_naive_time_is_refused_on_write(cluster: Manifest) -> None:
    cluster.backup.time = datetime(2025, 1, 1, 12, 0, 0)
    with pytest.raises(ManifestError, match="backup time 2025-01-01T12:00:00 has no time zone"):
        to_xml(cluster)


def test_text_xml_cannot_hold_is_refused_naming_the_field(cluster: Manifest) -> None:
    cluster.vm.ref = dataclasses.replace(cluster.vm.ref, name="bad\x07name")
    with pytest.raises(ManifestError, match=r"vm/@name 'bad\\x07name': character U\+0007"):
        to_xml(cluster)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: setattr(m.vm, "processors", -2), r"Element 'processors': '-2' is not a valid value"),
        (lambda m: m.backup.parts.append(m.backup.parts[0]), r"Duplicate key-sequence.*partName"),
        (
            lambda m: m.backup.parts.append(SaveSetPart(PartKind.DISK, "disks/9-x.vhdx", 1, "0" * 64, 9)),
            r"No match found for key-sequence \['9'\].*partFile",
        ),
        (lambda m: m.backup.parts.append(SaveSetPart(PartKind.DISK, "disks/0-x", 1, "F" * 64, 0)), r"'sha256'"),
        (lambda m: setattr(m.disks[0], "not_backed_up", "both"), r"either a file chain or a reason"),
        (lambda m: setattr(m.vm, "version", "ten"), r"configVersion"),
    ],
    ids=["negative-count", "duplicate-part", "part-without-file", "upper-case-sha", "chain-and-reason",
         "bad-config-version"],
)
def test_invalid_manifest_is_refused_on_write(cluster: Manifest, change, expected: str) -> None:  # type: ignore[no-untyped-def]
    change(cluster)
    with pytest.raises(ManifestError, match=expected) as caught:
        to_xml(cluster)
    assert "web01" in caught.value.message and "4711" in caught.value.message
    assert caught.value.what_to_do


def test_bad_vm_guid_is_refused_on_write(cluster: Manifest) -> None:
    cluster.vm.ref = dataclasses.replace(cluster.vm.ref, guid="web01")
    with pytest.raises(ManifestError, match=r"attribute 'guid'.*'web01' is not accepted"):
        to_xml(cluster)


def test_payload_sha256_is_of_the_utf8_bytes(cluster: Manifest) -> None:
    root = etree.fromstring(to_xml(cluster))
    system = root.find("m:settings/m:system", NS)
    assert system is not None
    assert system.get("sha256") == hashlib.sha256(cluster.settings.system.cimxml.encode()).hexdigest()


def test_builders_are_independent(make: Callable[[str], Manifest]) -> None:
    # The fixtures are mutated by tests; each call must give a fresh tree.
    first, second = make("cluster"), make("cluster")
    first.vm.processors = 99
    assert second.vm.processors == 4


# --------------------------------------------------------------------------- 1.1: incremental chains


def test_incremental_facts_round_trip_and_an_older_reader_validates_them(cluster: Manifest) -> None:
    from datetime import timezone

    from bareos_hyperv.model.backup import ChainPart, DeltaMethod

    digest = hashlib.sha256(b"image").hexdigest()
    parts = [dataclasses.replace(p, base_digest=digest, result_digest=digest[::-1], method=DeltaMethod.RCT)
             if p.kind is PartKind.DELTA else p for p in cluster.backup.parts]
    first = cluster.disks[0].chain[0]
    chain = (ChainPart(4700, "disks/0-web01.vhdx", PartKind.DISK, digest),
             ChainPart(4711, "disks/0-web01.vhdx+I+4711", PartKind.DELTA, digest[::-1]))
    disks = [dataclasses.replace(cluster.disks[0], chain=[dataclasses.replace(
        first, image_digest=digest[::-1], chunk_size=1 << 20, chain=chain), *cluster.disks[0].chain[1:]]),
        *cluster.disks[1:]]
    backup = dataclasses.replace(cluster.backup, parts=parts, base_job_id=4700,
                                 since=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    manifest = dataclasses.replace(cluster, backup=backup, disks=disks)
    data = to_xml(manifest)
    assert from_xml(data, source="m.xml") == manifest
    # Everything new lives in the extension namespace: the 1.0 schema (lax wildcards) accepts it.
    root = etree.fromstring(data)
    new = [e for e in root.iter() if etree.QName(e).namespace == EXTENSION_NAMESPACE]
    assert {etree.QName(e).localname for e in new} == {"chain", "part"}
    assert schema().validate(root)


def test_a_damaged_extension_digest_is_refused(cluster: Manifest) -> None:
    first = cluster.disks[0].chain[0]
    disks = [dataclasses.replace(cluster.disks[0], chain=[dataclasses.replace(
        first, image_digest=hashlib.sha256(b"x").hexdigest()), *cluster.disks[0].chain[1:]]), *cluster.disks[1:]]
    data = to_xml(dataclasses.replace(cluster, disks=disks)).replace(b'x:imageDigest="', b'x:imageDigest="Z')
    with pytest.raises(ManifestError, match="imageDigest"):
        from_xml(data, source="m.xml")
