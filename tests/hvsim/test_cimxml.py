"""CIM-XML INSTANCE parse/produce against the real WMI GetText fixtures (hyperv-wmi.md 1.10)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from hvsim.cim import NS_VIRT, CimInstance, CimInterval, CimRef, ClassDef, PropDef
from hvsim.cimxml import (
    CimXmlError,
    format_datetime,
    parse_datetime,
    parse_instance,
    produce_instance,
)

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "tests/fixtures/shared/cim-xml").glob("*.xml"))
P = PropDef


def fixture(part: str) -> str:
    return next(f for f in FIXTURES if part in f.name).read_text()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_fixture_parses_and_round_trips(path: Path) -> None:
    text = path.read_text()
    inst = parse_instance(text)
    root = etree.fromstring(text)
    assert inst.class_name == root.get("CLASSNAME")
    assert len(inst.properties) == len(root)
    again = parse_instance(produce_instance(inst))
    assert again == inst


def test_msvm_error_values() -> None:
    inst = parse_instance(fixture("Msvm_Error"))
    assert inst.get("CIMStatusCode") == 1
    assert inst.get("ErrorType") == 4
    assert inst.get("MessageID") == "21024"
    assert inst.get("MessageArguments") == [
        "openstack_unit_test_vm_4a7c7e1d-c8c9-40c3-bab5-602a02effa1e",
        "A4F9E9D1-8D5F-4CD5-83CB-8A396A63FDE9",
        "HV12OSDEMO1",
    ]
    assert inst.get("CIMStatusCodeDescription") is None  # PROPERTY without VALUE is NULL
    assert inst.get("RecommendedActions") is None  # PROPERTY.ARRAY without VALUE.ARRAY is NULL
    assert inst.path is None


def test_sasd_values_and_path() -> None:
    inst = parse_instance(fixture("StorageAllocationSettingData"))
    iid = "Microsoft:D99A57FE-9F2F-44EE-B15F-BF6C5D740D1C\\83F8638B-8DCA-4152-9EDA-2CA8B33039B4\\0\\0\\L"
    assert inst.get("InstanceID") == iid
    assert inst.get("ResourceType") == 31
    assert inst.get("AutomaticAllocation") is True
    assert inst.get("HostResource") == [
        "C:\\Hyper-V\\test\\instances\\openstack_unit_test_vm_ac172f02-305d-48c3-a153-99d634a07e1f\\"
        "openstack_unit_test_vm_ac172f02-305d-48c3-a153-99d634a07e1f.vhd"
    ]
    assert inst.get("PoolID") == ""  # an empty VALUE is the empty string, not NULL
    assert inst.get("__PROPERTY_COUNT") == 32
    assert inst.path == CimRef(
        "root/virtualization/v2", "Msvm_StorageAllocationSettingData", (("InstanceID", iid),)
    )


def test_memory_setting_data_booleans_and_uint64() -> None:
    inst = parse_instance(fixture("MemorySettingData"))
    assert inst.get("DynamicMemoryEnabled") is False
    assert inst.get("IsVirtualized") is True
    assert inst.get("Limit") == 512
    assert inst.path is not None and inst.path.namespace == "root/virtualization"


def test_migration_setting_data_array() -> None:
    inst = parse_instance(fixture("MigrationSettingData"))
    assert inst.get("DestinationIPAddressList") == [
        "192.168.209.231",
        "fe80::100:7f:fffe",
        "fe80::5efe:192.168.209.231",
        "fe80::2099:5b7c:8132:472a",
    ]
    assert inst.get("MigrationType") == 32771


def test_datetimes_and_intervals() -> None:
    value = parse_datetime("20240501101112.123456-480")
    assert value == dt.datetime(2024, 5, 1, 18, 11, 12, 123456, tzinfo=dt.timezone.utc)
    assert format_datetime(value) == "20240501101112.123456-480"
    assert format_datetime(dt.datetime(2024, 1, 2, 3, 4, 5)) == "20240102030405.000000+000"
    assert parse_datetime("00000000000500.000000:000") == CimInterval(300)
    assert format_datetime(CimInterval(93784.5)) == "00000001020304.500000:000"
    assert parse_datetime("**************.******+000") is None
    for bad in ("2024-05-01", "20240501101112.123456", "20241301101112.000000+000", "x"):
        with pytest.raises(CimXmlError):
            parse_datetime(bad)


def test_references_in_all_forms() -> None:
    text = """<INSTANCE CLASSNAME="Msvm_AffectedJobElement">
      <PROPERTY.REFERENCE NAME="A" REFERENCECLASS="CIM_Job"><VALUE.REFERENCE><INSTANCEPATH>
        <NAMESPACEPATH><HOST>HV01</HOST><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/>
        <NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH></NAMESPACEPATH>
        <INSTANCENAME CLASSNAME="Msvm_ConcreteJob"><KEYBINDING NAME="InstanceID">
        <KEYVALUE VALUETYPE="string">J1</KEYVALUE></KEYBINDING></INSTANCENAME></INSTANCEPATH>
        </VALUE.REFERENCE>
      </PROPERTY.REFERENCE>
      <PROPERTY.REFERENCE NAME="B"><VALUE.REFERENCE><LOCALINSTANCEPATH><LOCALNAMESPACEPATH>
        <NAMESPACE NAME="root"/><NAMESPACE NAME="MSCluster"/></LOCALNAMESPACEPATH>
        <INSTANCENAME CLASSNAME="MSCluster_Node"><KEYBINDING NAME="Name"><KEYVALUE>N1</KEYVALUE></KEYBINDING>
        </INSTANCENAME></LOCALINSTANCEPATH></VALUE.REFERENCE></PROPERTY.REFERENCE>
      <PROPERTY.REFERENCE NAME="C"><VALUE.REFERENCE><INSTANCENAME CLASSNAME="Msvm_ComputerSystem">
        <KEYBINDING NAME="CreationClassName"><KEYVALUE>Msvm_ComputerSystem</KEYVALUE></KEYBINDING>
        <KEYBINDING NAME="Name"><KEYVALUE>G</KEYVALUE></KEYBINDING></INSTANCENAME></VALUE.REFERENCE>
      </PROPERTY.REFERENCE>
      <PROPERTY.REFERENCE NAME="D"><VALUE.REFERENCE
        >\\\\HV01\\root\\virtualization\\v2:Msvm_X.InstanceID="a\\\\b"</VALUE.REFERENCE>
      </PROPERTY.REFERENCE>
      <PROPERTY.REFERENCE NAME="E"></PROPERTY.REFERENCE>
    </INSTANCE>"""
    inst = parse_instance(text)
    assert inst.get("A") == CimRef(NS_VIRT, "Msvm_ConcreteJob", (("InstanceID", "J1"),))
    assert inst.get("B") == CimRef("root/MSCluster", "MSCluster_Node", (("Name", "N1"),))
    assert inst.get("C") == CimRef(
        NS_VIRT, "Msvm_ComputerSystem", (("CreationClassName", "Msvm_ComputerSystem"), ("Name", "G"))
    )
    assert inst.get("D") == CimRef(NS_VIRT, "Msvm_X", (("InstanceID", "a\\b"),))
    assert inst.get("E") is None
    for host in (None, "HV01"):
        assert parse_instance(produce_instance(inst, host=host)) == inst


SETTINGS = ClassDef(
    "Msvm_VirtualSystemSnapshotSettingData",
    None,
    ("InstanceID",),
    (
        P("ConsistencyLevel", "uint8"),
        P("IgnoreNonSnapshottableDisks", "boolean"),
        P("InstanceID", "string"),
        P("When", "datetime"),
        P("Labels", "string", True),
        P("Weights", "uint64", True),
        P("Owner", "reference", ref_class="CIM_ComputerSystem"),
        P("Inner", "instance", ref_class="Msvm_Inner"),
        P("Ratio", "real32"),
    ),
)
INNER = ClassDef("Msvm_Inner", None, (), (P("Size", "uint64"), P("Flag", "boolean")))


def lookup(name: str) -> ClassDef | None:
    return {c.name.lower(): c for c in (SETTINGS, INNER)}.get(name.lower())


def test_produce_uses_schema_types_and_order() -> None:
    owner = CimRef(
        NS_VIRT, "Msvm_ComputerSystem", (("CreationClassName", "Msvm_ComputerSystem"), ("Name", "G"))
    )
    inst = CimInstance(
        SETTINGS.name,
        NS_VIRT,
        {
            "IgnoreNonSnapshottableDisks": True,
            "ConsistencyLevel": 1,
            "When": dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc),
            "Labels": ["a<b", "c&d"],
            "Weights": [2**63, 0],
            "Owner": owner,
            "Inner": CimInstance("Msvm_Inner", NS_VIRT, {"Size": 2**40, "Flag": False}),
            "Ratio": 0.25,
            "Extra": "not in the schema",
        },
    )
    text = produce_instance(inst, SETTINGS, class_lookup=lookup)
    root = etree.fromstring(text)
    assert root.get("CLASSNAME") == SETTINGS.name
    assert [(c.tag, c.get("NAME"), c.get("TYPE")) for c in root] == [
        ("PROPERTY", "ConsistencyLevel", "uint8"),
        ("PROPERTY", "IgnoreNonSnapshottableDisks", "boolean"),
        ("PROPERTY", "InstanceID", "string"),
        ("PROPERTY", "When", "datetime"),
        ("PROPERTY.ARRAY", "Labels", "string"),
        ("PROPERTY.ARRAY", "Weights", "uint64"),
        ("PROPERTY.REFERENCE", "Owner", None),
        ("PROPERTY", "Inner", "string"),
        ("PROPERTY", "Ratio", "real32"),
        ("PROPERTY", "Extra", "string"),
    ]
    assert root.find("PROPERTY[@NAME='IgnoreNonSnapshottableDisks']/VALUE").text == "TRUE"
    assert root.find("PROPERTY[@NAME='InstanceID']").find("VALUE") is None  # missing -> NULL
    assert root.find("PROPERTY[@NAME='When']/VALUE").text == "20240501000000.000000+000"
    assert root.find("PROPERTY[@NAME='Inner']").get("EmbeddedObject") == "instance"
    assert root.find("PROPERTY.REFERENCE").get("REFERENCECLASS") == "CIM_ComputerSystem"
    back = parse_instance(text, class_lookup=lookup)
    expected = dict(inst.properties)
    expected["InstanceID"] = None
    assert back.properties == expected
    assert back.get("Inner") == CimInstance("Msvm_Inner", NS_VIRT, {"Size": 2**40, "Flag": False})


def test_typeless_values_take_types_from_the_schema() -> None:
    text = (
        '<INSTANCE CLASSNAME="Msvm_VirtualSystemSnapshotSettingData"><PROPERTY NAME="ConsistencyLevel">'
        "<VALUE>2</VALUE></PROPERTY><PROPERTY NAME="
        '"IgnoreNonSnapshottableDisks"><VALUE>false</VALUE></PROPERTY>'
        '<PROPERTY NAME="Unknown"><VALUE>7</VALUE>'
        "</PROPERTY></INSTANCE>"
    )
    inst = parse_instance(text, class_lookup=lookup)
    assert inst.properties == {"ConsistencyLevel": 2, "IgnoreNonSnapshottableDisks": False, "Unknown": "7"}


def test_wmi_dtd_embedded_object_and_qualifiers() -> None:
    text = (
        '<INSTANCE CLASSNAME="Msvm_VirtualSystemSnapshotSettingData">'
        '<QUALIFIER NAME="dynamic" TYPE="boolean">'
        '<VALUE>TRUE</VALUE></QUALIFIER>'
        '<PROPERTY.OBJECT NAME="Inner" REFERENCECLASS="Msvm_Inner"><VALUE.OBJECT>'
        '<INSTANCE CLASSNAME="Msvm_Inner"><PROPERTY NAME="Size" TYPE="uint64"><VALUE>5</VALUE></PROPERTY>'
        "</INSTANCE></VALUE.OBJECT></PROPERTY.OBJECT>"
        '<PROPERTY.ARRAY NAME="Labels" TYPE="string"><VALUE.ARRAY><VALUE>x</VALUE><VALUE.NULL/></VALUE.ARRAY>'
        "</PROPERTY.ARRAY></INSTANCE>"
    )
    inst = parse_instance(text)
    assert inst.get("Inner") == CimInstance("Msvm_Inner", NS_VIRT, {"Size": 5})
    assert inst.get("Labels") == ["x", None]


@pytest.mark.parametrize(
    "text",
    [
        "<INSTANCE",
        "<CLASS NAME='x'/>",
        "<INSTANCE/>",
        '<INSTANCE CLASSNAME="X"><PROPERTY TYPE="string"/></INSTANCE>',
        '<INSTANCE CLASSNAME="X"><PROPERTY NAME="a" TYPE="uint8"><VALUE>x</VALUE></PROPERTY></INSTANCE>',
        '<INSTANCE CLASSNAME="X"><PROPERTY NAME="a" TYPE="boolean">'
        "<VALUE>maybe</VALUE></PROPERTY></INSTANCE>",
        '<INSTANCE CLASSNAME="X"><FOO NAME="a"/></INSTANCE>',
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><INSTANCE CLASSNAME="X"><PROPERTY NAME="a" '
        'TYPE="string"><VALUE>&e;</VALUE></PROPERTY><BAD/></INSTANCE>',
    ],
)
def test_bad_cim_xml_is_rejected(text: str) -> None:
    with pytest.raises(CimXmlError):
        parse_instance(text)


def test_external_entities_are_not_resolved() -> None:
    text = (
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/hostname">]><INSTANCE CLASSNAME="X">'
        '<PROPERTY NAME="a" TYPE="string"><VALUE>&e;</VALUE></PROPERTY></INSTANCE>'
    )
    try:
        inst = parse_instance(text)
    except CimXmlError:
        return
    assert not inst.get("a")


scalar_props = st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.datetimes(timezones=st.just(dt.timezone.utc)),
        st.builds(CimInterval, st.integers(min_value=0, max_value=10**9).map(float)),
        st.lists(st.text(alphabet="abc<&>\"'", max_size=5), min_size=1, max_size=3),
        st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(props=scalar_props)
def test_produce_then_parse_is_identity(props: Dict[str, Any]) -> None:
    inst = CimInstance("Msvm_Test", NS_VIRT, props)
    assert parse_instance(produce_instance(inst)) == inst
