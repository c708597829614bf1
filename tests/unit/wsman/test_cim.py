"""CIM values, instances, EPRs and CIM-XML (bareos_hyperv.wsman.cim)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from bareos_hyperv.wsman.cim import (
    CimInstance,
    EndpointReference,
    format_cim_datetime,
    format_xs_datetime,
    format_xs_duration,
    infer_cim_type,
    parse_cim_datetime,
    parse_cimxml,
    parse_wsman_instance,
    parse_xs_datetime,
    parse_xs_duration,
    to_cimxml,
)
from bareos_hyperv.wsman.errors import CimDataError

CIMXML = sorted(((Path(__file__).resolve().parents[3] / "tests/fixtures/shared") / "cim-xml").glob("*.xml"))
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"


def test_there_are_cimxml_fixtures() -> None:
    assert len(CIMXML) >= 5


@pytest.mark.parametrize("path", CIMXML, ids=lambda p: p.name)
def test_cimxml_fixture_round_trips(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    first = parse_cimxml(text)
    produced = to_cimxml(first)
    second = parse_cimxml(produced)
    assert second == first
    assert second.items() == first.items()
    assert second.types == first.types
    # Every PROPERTY/PROPERTY.ARRAY of the source is there, with its TYPE.
    source = etree.fromstring(text.encode())
    for prop in source:
        assert first.type_of(prop.get("NAME")).rstrip("[]") == prop.get("TYPE")
        assert (first.type_of(prop.get("NAME")).endswith("[]")) == (prop.tag == "PROPERTY.ARRAY")
    assert len(first) == len(source)


def test_cimxml_values_typed_from_fixture() -> None:
    mem = parse_cimxml((CIMXML[1]).read_text())
    assert mem.class_name == "Msvm_MemorySettingData"
    assert mem["VirtualQuantity"] == 512 and mem.type_of("virtualquantity") == "uint64"
    assert mem["DynamicMemoryEnabled"] is False and mem["AutomaticAllocation"] is True
    assert mem["Address"] is None  # PROPERTY without VALUE is NULL
    assert mem["Connection"] is None and mem.type_of("Connection") == "string[]"
    assert mem.str("instanceid").startswith("Microsoft:8F9341AA")
    assert mem.strs("__DERIVATION") == [
        "CIM_ResourceAllocationSettingData",
        "CIM_SettingData",
        "CIM_ManagedElement",
    ]


def test_cimxml_empty_value_is_empty_string_not_null() -> None:
    sasd = parse_cimxml(next(p for p in CIMXML if "StorageAllocation" in p.name).read_text())
    assert sasd["PoolID"] == ""
    assert sasd["Access"] is None
    assert sasd.strs("HostResource")[0].endswith(".vhd")
    # Backslashes in InstanceID survive unescaped.
    assert sasd.str("InstanceID").endswith(r"\0\0\L")
    again = parse_cimxml(to_cimxml(sasd))
    assert again["PoolID"] == "" and again["Access"] is None


def test_msvm_error_fixture_fields() -> None:
    err = parse_cimxml(next(p for p in CIMXML if "Msvm_Error" in p.name).read_text())
    assert err.str("MessageID") == "21024"
    assert err.int("ErrorType") == 4
    assert "failed at migration source" in err.str("Message")
    assert err.strs("RecommendedActions") == []
    assert err.opt_str("ErrorSource") is None


def test_cimxml_qualifiers_and_reference_tolerated() -> None:
    text = (
        '<INSTANCE CLASSNAME="Msvm_X">'
        '<QUALIFIER NAME="dynamic" TYPE="boolean"><VALUE>TRUE</VALUE></QUALIFIER>'
        '<PROPERTY NAME="A" TYPE="uint16" PROPAGATED="true" CLASSORIGIN="CIM_X">'
        '<QUALIFIER NAME="key" TYPE="boolean"><VALUE>TRUE</VALUE></QUALIFIER><VALUE>7</VALUE></PROPERTY>'
        '<PROPERTY.REFERENCE NAME="Ref" REFERENCECLASS="Msvm_ComputerSystem"><VALUE.REFERENCE><INSTANCEPATH>'
        '<NAMESPACEPATH><HOST>hv01</HOST><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/>'
        '<NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH></NAMESPACEPATH>'
        '<INSTANCENAME CLASSNAME="Msvm_ComputerSystem"><KEYBINDING NAME="CreationClassName">'
        '<KEYVALUE VALUETYPE="string">Msvm_ComputerSystem</KEYVALUE></KEYBINDING><KEYBINDING NAME="Name">'
        '<KEYVALUE VALUETYPE="string">ABC</KEYVALUE></KEYBINDING></INSTANCENAME></INSTANCEPATH>'
        "</VALUE.REFERENCE></PROPERTY.REFERENCE>"
        '<PROPERTY NAME="When" TYPE="datetime"><VALUE>20240501101112.123000+060</VALUE></PROPERTY>'
        '<PROPERTY NAME="Keep" TYPE="datetime"><VALUE>00000000000500.000000:000</VALUE></PROPERTY>'
        '<PROPERTY.ARRAY NAME="Big" TYPE="uint64"><VALUE.ARRAY><VALUE>18446744073709551615</VALUE>'
        "<VALUE>0</VALUE></VALUE.ARRAY></PROPERTY.ARRAY></INSTANCE>"
    )
    inst = parse_cimxml(text)
    assert inst.int("a") == 7
    ref = inst.ref("Ref")
    assert ref == EndpointReference.build(
        "root\\virtualization\\v2",
        "Msvm_ComputerSystem",
        {"CreationClassName": "Msvm_ComputerSystem", "Name": "ABC"},
    )
    assert inst.datetime("When") == datetime(
        2024, 5, 1, 10, 11, 12, 123000, tzinfo=timezone(timedelta(hours=1))
    )
    assert inst.interval("Keep") == timedelta(minutes=5)
    assert inst.ints("Big") == [2**64 - 1, 0]
    again = parse_cimxml(to_cimxml(inst))
    assert again == inst and again.types == inst.types


def test_to_cimxml_type_map_inference_and_escaping() -> None:
    inst = CimInstance("Msvm_VirtualSystemSnapshotSettingData")
    inst["ConsistencyLevel"] = "1"  # text, as WS-Man delivers it
    inst["IgnoreNonSnapshottableDisks"] = True
    inst["ElementName"] = 'a <b> & "c" ]]>'
    inst["Count"] = 5
    inst["Neg"] = -1
    inst["Ratio"] = 0.5
    inst["Paths"] = ["x", "y"]
    text = to_cimxml(inst, {"consistencylevel": "uint8"})
    root = etree.fromstring(text.encode())
    types = {p.get("NAME"): (p.tag, p.get("TYPE")) for p in root}
    assert types == {
        "ConsistencyLevel": ("PROPERTY", "uint8"),
        "IgnoreNonSnapshottableDisks": ("PROPERTY", "boolean"),
        "ElementName": ("PROPERTY", "string"),
        "Count": ("PROPERTY", "uint64"),
        "Neg": ("PROPERTY", "sint64"),
        "Ratio": ("PROPERTY", "real64"),
        "Paths": ("PROPERTY.ARRAY", "string"),
    }
    back = parse_cimxml(text)
    assert back["ConsistencyLevel"] == 1 and back["IgnoreNonSnapshottableDisks"] is True
    assert back["ElementName"] == 'a <b> & "c" ]]>'
    assert back["Paths"] == ["x", "y"]


def test_to_cimxml_rejects_values_that_do_not_fit() -> None:
    inst = CimInstance("X", {"A": "not-a-number"})
    with pytest.raises(CimDataError, match="property A"):
        to_cimxml(inst, {"A": "uint16"})
    with pytest.raises(CimDataError, match="unknown CIM type"):
        to_cimxml(CimInstance("X", {"A": 1}), {"A": "uint7"})


def test_infer_types() -> None:
    assert infer_cim_type(True) == "boolean"
    assert infer_cim_type(3) == "uint64"
    assert infer_cim_type(-3) == "sint64"
    assert infer_cim_type([1, 2]) == "uint64[]"
    assert infer_cim_type(datetime(2020, 1, 1)) == "datetime"
    assert infer_cim_type("s") == "string"


def test_parse_cimxml_errors() -> None:
    with pytest.raises(CimDataError, match="not well-formed"):
        parse_cimxml("<INSTANCE")
    with pytest.raises(CimDataError, match="expected INSTANCE"):
        parse_cimxml("<FOO/>")
    with pytest.raises(CimDataError, match="not a valid uint16"):
        parse_cimxml(
            '<INSTANCE CLASSNAME="X"><PROPERTY NAME="A" TYPE="uint16"><VALUE>x</VALUE></PROPERTY></INSTANCE>'
        )


def test_parse_cimxml_accepts_wsman_element_tree() -> None:
    text = (
        f'<p:Msvm_Error xmlns:p="{V2}/Msvm_Error" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<p:Message>disk busy</p:Message><p:MessageID>32768</p:MessageID><p:ErrorSource xsi:nil="true"/>'
        "</p:Msvm_Error>"
    )
    inst = parse_cimxml(text)
    assert inst.class_name == "Msvm_Error"
    assert inst.str("message") == "disk busy" and inst.int("MessageID") == 32768
    assert inst.opt_str("ErrorSource") is None
    assert inst.namespace == "root/virtualization/v2"


def test_wsman_instance_values() -> None:
    xml = (
        f'<p:Msvm_ConcreteJob xmlns:p="{V2}/Msvm_ConcreteJob" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"'
        ' xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">'
        "<p:InstanceID>J1</p:InstanceID><p:JobState>7</p:JobState><p:Cancellable>false</p:Cancellable>"
        "<p:StartTime><cim:Datetime>2024-05-01T10:11:12.1234567Z</cim:Datetime></p:StartTime>"
        "<p:TimeBeforeRemoval><cim:Interval>P0DT0H5M0S</cim:Interval></p:TimeBeforeRemoval>"
        '<p:ErrorDescription xsi:nil="true"/><p:Empty></p:Empty>'
        "<p:Ranges>1</p:Ranges><p:Ranges>2</p:Ranges><p:Single>9</p:Single>"
        "<p:Target><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address>"
        f"<a:ReferenceParameters><w:ResourceURI>{V2}/Msvm_ComputerSystem</w:ResourceURI><w:SelectorSet>"
        '<w:Selector Name="Name">VM1</w:Selector></w:SelectorSet></a:ReferenceParameters></p:Target>'
        "</p:Msvm_ConcreteJob>"
    )
    inst = parse_wsman_instance(etree.fromstring(xml.encode()))
    assert inst.class_name == "Msvm_ConcreteJob"
    assert inst.int("jobstate") == 7 and inst.bool("Cancellable") is False
    assert inst.datetime("StartTime") == datetime(2024, 5, 1, 10, 11, 12, 123456, tzinfo=timezone.utc)
    assert inst.interval("TimeBeforeRemoval") == timedelta(minutes=5)
    assert inst.opt_str("ErrorDescription") is None and inst.str("Empty") == ""
    assert inst.ints("Ranges") == [1, 2] and inst.ints("Single") == [9] and inst.ints("Missing") == []
    assert inst.ref("Target").str_selector("name") == "VM1"
    with pytest.raises(CimDataError, match="ErrorDescription of Msvm_ConcreteJob is null"):
        inst.str("ErrorDescription")
    with pytest.raises(CimDataError, match="is missing"):
        inst.int("Nope")
    with pytest.raises(CimDataError, match="expected an integer"):
        inst.int("InstanceID")
    with pytest.raises(CimDataError, match="array of 2 values"):
        inst.int("Ranges")
    # A type map makes such an instance producible as CIM-XML with the right types.
    text = to_cimxml(inst, {"JobState": "uint16", "Cancellable": "boolean", "Ranges": "uint64[]"})
    back = parse_cimxml(text)
    assert back["JobState"] == 7 and back["Cancellable"] is False and back["Ranges"] == [1, 2]
    assert back.datetime("StartTime") == inst.datetime("StartTime")


def test_datetime_formats() -> None:
    dt = datetime(2024, 5, 1, 10, 11, 12, 5, tzinfo=timezone(timedelta(minutes=-330)))
    assert format_cim_datetime(dt) == "20240501101112.000005-330"
    assert parse_cim_datetime("20240501101112.000005-330") == dt
    assert format_cim_datetime(timedelta(days=3, seconds=7, microseconds=1)) == "00000003000007.000001:000"
    assert format_xs_datetime(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05Z"
    assert parse_xs_datetime("2024-01-02T03:04:05+02:00").utcoffset() == timedelta(hours=2)
    assert parse_xs_duration(format_xs_duration(timedelta(hours=26, seconds=1.5))) == timedelta(
        hours=26, seconds=1.5
    )
    with pytest.raises(CimDataError):
        parse_cim_datetime("2024-01-01")
    with pytest.raises(CimDataError):
        parse_xs_duration("P1Y")


def test_endpoint_reference() -> None:
    ref = EndpointReference.build(
        "root\\virtualization\\v2",
        "Msvm_ComputerSystem",
        {"CreationClassName": "Msvm_ComputerSystem", "Name": 'A"B\\C'},
    )
    assert ref.resource_uri == f"{V2}/Msvm_ComputerSystem"
    assert ref.class_name == "Msvm_ComputerSystem" and ref.namespace == "root/virtualization/v2"
    assert ref.wql_path() == 'Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="A\\"B\\\\C"'
    other = EndpointReference(
        ref.resource_uri.upper().replace("HTTP", "http"),
        [("name", 'A"B\\C'), ("creationclassname", "Msvm_ComputerSystem")],
    )
    assert other == ref and hash(other) == hash(ref)
    assert ref != EndpointReference(ref.resource_uri, {"Name": "other"})
    cluster = EndpointReference.build("root/MSCluster", "MSCluster_ResourceGroup", {"Name": "web01"})
    assert cluster.namespace == "root/MSCluster"
    holder = etree.Element("holder")
    ref.fill_element(holder)
    assert EndpointReference.from_element(holder) == ref
    with pytest.raises(CimDataError):
        EndpointReference.from_element(etree.Element("nothing"))


def test_nested_epr_selectors_round_trip() -> None:
    inner = EndpointReference.build("root/virtualization/v2", "Msvm_ConcreteJob", {"InstanceID": "J"})
    assoc = EndpointReference.build(
        "root/virtualization/v2",
        "Msvm_AffectedJobElement",
        {"AffectingElement": inner, "AffectedElement": "x"},
    )
    holder = etree.Element("holder")
    assoc.fill_element(holder)
    back = EndpointReference.from_element(holder)
    assert back == assoc and back.selector("AffectingElement") == inner
    with pytest.raises(CimDataError, match="reference"):
        assoc.wql_path()


def test_instance_mapping_behaviour() -> None:
    inst = CimInstance("X", {"Name": "a"}, types={"name": "string"})
    assert "NAME" in inst and list(inst) == ["Name"] and len(inst) == 1
    inst["name"] = "b"
    assert inst.names() == ["Name"] and inst["Name"] == "b"
    assert inst.types == {"Name": "string"}
    dup = inst.copy()
    dup["Other"] = 1
    assert "Other" not in inst
    del dup["other"]
    assert dup == inst
    assert "X" in repr(inst)
