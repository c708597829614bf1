"""CIM property types of the settings classes, and typing of WS-Man (text-only) instances."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.schema import (
    UnknownClassSchema,
    known_classes,
    property_types,
    source_of,
    to_typed_cimxml,
    typed,
)
from bareos_hyperv.wsman.cim import KNOWN_TYPES, CimInstance, parse_cimxml, parse_wsman_instance, secure_parser
from bareos_hyperv.wsman.namespaces import NS_CIM_COMMON, NS_XSI

FIXTURES = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared")
# Real GetText_(1) output of a v2 SASD from a Windows Server 2012 host (PROVENANCE.md): every
# property carries the TYPE Hyper-V declares, an independent check of the table.
REAL_SASD = FIXTURES / "cim-xml" / "nova-hv12osdemo1-Msvm_StorageAllocationSettingData-vhd-v2-a.xml"
WMI_URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"

# The classes the product captures (manifest) or sends (DefineSystem, Add/ModifyResourceSettings,
# CreateSnapshot, ExportSystemDefinition, image service) - the brief of this module.
REQUIRED = (
    C.VSSD, C.RASD, C.SASD, C.EPASD, C.SYNTHETIC_NIC_SD, C.EMULATED_NIC_SD, C.PROCESSOR_SD, C.MEMORY_SD,
    "Msvm_VirtualSystemSnapshotSettingData", "Msvm_VirtualSystemExportSettingData",
    "Msvm_VirtualHardDiskSettingData", "Msvm_SerialPortSettingData",
    "CIM_ResourceAllocationSettingData", "CIM_SettingData",
)
SETTING_DATA = {"Caption": "string", "Description": "string", "ElementName": "string", "InstanceID": "string"}


def _wsman(class_name: str, body: str) -> CimInstance:
    """A WS-Man instance element as WinRM sends it (text only, arrays as repeated elements)."""
    text = (f'<p:{class_name} xmlns:p="{WMI_URI}{class_name}" xmlns:xsi="{NS_XSI}" xmlns:cim="{NS_CIM_COMMON}">'
            f"{body}</p:{class_name}>")
    return parse_wsman_instance(etree.fromstring(text.encode(), parser=secure_parser()))


@pytest.mark.parametrize("class_name", REQUIRED)
def test_required_classes_have_valid_types_for_every_property(class_name: str) -> None:
    types = property_types(class_name)
    assert len(types) >= len(SETTING_DATA)
    for name, cim_type in types.items():
        base = cim_type[:-2] if cim_type.endswith("[]") else cim_type
        assert base in KNOWN_TYPES and base != "reference", f"{class_name}.{name}: {cim_type}"
    for name, cim_type in SETTING_DATA.items():
        assert types[name] == cim_type, f"{class_name} lacks the CIM_SettingData property {name}"
    assert source_of(class_name)


def test_every_table_entry_resolves_and_names_a_source() -> None:
    for class_name in known_classes():
        assert property_types(class_name)
        assert "[" in source_of(class_name), f"{class_name} cites no source"


def test_subclasses_inherit_the_cim_bases() -> None:
    rasd = property_types("CIM_ResourceAllocationSettingData")
    for cls in (C.RASD, C.SASD, C.EPASD, C.SYNTHETIC_NIC_SD, C.PROCESSOR_SD, C.MEMORY_SD,
                "Msvm_SerialPortSettingData"):
        types = property_types(cls)
        assert {k: types[k] for k in rasd} == dict(rasd), cls
    assert property_types(C.SASD)["HostResource"] == "string[]"
    assert property_types(C.SASD)["IOPSLimit"] == "uint64"
    assert property_types(C.SASD)["HostExtentStartingAddress"] == "uint64"  # CIM_StorageAllocationSettingData
    assert property_types(C.SYNTHETIC_NIC_SD)["DesiredVLANEndpointMode"] == "uint16"  # CIM_EPASD
    assert property_types(C.EPASD)["EnabledState"] == "uint16"
    # derive from the CIM base directly, so no Msvm_RASD VirtualSystemIdentifiers
    assert "VirtualSystemIdentifiers" not in property_types("Msvm_SerialPortSettingData")
    assert "VirtualSystemIdentifiers" not in property_types(C.EMULATED_NIC_SD)
    vssd = property_types(C.VSSD)
    assert vssd["CreationTime"] == "datetime" and vssd["BootOrder"] == "uint16[]" and vssd["Notes"] == "string[]"
    assert property_types("Msvm_VirtualSystemSnapshotSettingData")["ConsistencyLevel"] == "uint8"
    assert property_types("Msvm_VirtualSystemExportSettingData")["ExcludedVirtualHardDisks"] == "string[]"
    assert property_types("Msvm_VirtualHardDiskSettingData")["ParentTimestamp"] == "datetime"


def test_properties_are_listed_base_first_in_declaration_order() -> None:
    names = list(property_types(C.SASD))
    assert names[:4] == ["Caption", "Description", "ElementName", "InstanceID"]
    assert names.index("ResourceType") < names.index("VirtualResourceBlockSize") < names.index("IOPSLimit")


def test_class_names_match_case_insensitively_and_unknown_ones_fail_clearly() -> None:
    assert property_types("msvm_memorysettingdata") == property_types(C.MEMORY_SD)
    with pytest.raises(UnknownClassSchema) as info:
        property_types("Msvm_NoSuchSettingData")
    assert "Msvm_NoSuchSettingData" in str(info.value) and "schema.py" in str(info.value)


def test_table_agrees_with_the_types_of_a_real_hyper_v_instance() -> None:
    real = parse_cimxml(REAL_SASD.read_bytes())
    assert real.class_name == C.SASD
    table = property_types(C.SASD)
    compared = 0
    for name in real.names():
        if name.startswith("__"):  # WMI system properties are not class properties
            continue
        assert table.get(name) == real.type_of(name), f"{name}: table {table.get(name)}, host {real.type_of(name)}"
        compared += 1
    assert compared == 32  # the host's __PROPERTY_COUNT


def test_a_wsman_copy_of_the_real_instance_comes_back_with_the_real_types() -> None:
    real = parse_cimxml(REAL_SASD.read_bytes())
    # what the same instance looks like over WS-Man: text values, one-element arrays as scalars
    body = []
    for name, value in real.items():
        if name.startswith("__"):
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is None:
                body.append(f'<p:{name} xsi:nil="true"/>')
            else:
                text = str(item).lower() if isinstance(item, bool) else str(item)
                body.append(f"<p:{name}>{_esc(text)}</p:{name}>")
    untyped = _wsman(C.SASD, "".join(body))
    assert untyped["HostResource"] == real["HostResource"][0]  # type: ignore[index]  # scalar on the wire
    again = parse_cimxml(to_typed_cimxml(untyped))
    for name in untyped.names():
        assert again.type_of(name) == real.type_of(name), name
        assert again[name] == real[name], name
    assert isinstance(again["HostResource"], list) and len(again["HostResource"]) == 1


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_typed_converts_wsman_text_and_keeps_one_element_arrays() -> None:
    sasd = _wsman(C.SASD, (
        "<p:InstanceID>Microsoft:6A1C0B7E-3D55-4B6F-9F0A-2C7E51D4A9B3\\83F8638B\\0\\0\\L</p:InstanceID>"
        "<p:ResourceType>31</p:ResourceType>"
        "<p:HostResource>C:\\VMs\\web01.vhdx</p:HostResource>"
        "<p:AutomaticAllocation>true</p:AutomaticAllocation>"
        "<p:PersistentReservationsSupported>FALSE</p:PersistentReservationsSupported>"
        "<p:IOPSLimit>18446744073709551615</p:IOPSLimit>"
        '<p:Connection xsi:nil="true"/>'
        "<p:VirtualSystemIdentifiers>{a}</p:VirtualSystemIdentifiers>"
        "<p:VirtualSystemIdentifiers>{b}</p:VirtualSystemIdentifiers>"
    ))
    out = typed(sasd)
    assert out["ResourceType"] == 31 and out.type_of("ResourceType") == "uint16"
    assert out["HostResource"] == ["C:\\VMs\\web01.vhdx"] and out.type_of("HostResource") == "string[]"
    assert out["AutomaticAllocation"] is True and out["PersistentReservationsSupported"] is False
    assert out["IOPSLimit"] == 2**64 - 1
    assert out["Connection"] is None and out.type_of("Connection") == "string[]"
    # not in the SASD class (it is Msvm_RASD's): left as the wire gave it, type inferred later
    assert out["VirtualSystemIdentifiers"] == ["{a}", "{b}"] and out.type_of("VirtualSystemIdentifiers") is None
    # the input is not changed
    assert sasd["ResourceType"] == "31" and sasd["HostResource"] == "C:\\VMs\\web01.vhdx"
    assert sasd.type_of("ResourceType") is None

    text = to_typed_cimxml(sasd)
    assert '<PROPERTY NAME="ResourceType" TYPE="uint16"><VALUE>31</VALUE></PROPERTY>' in text
    assert ('<PROPERTY.ARRAY NAME="HostResource" TYPE="string"><VALUE.ARRAY><VALUE>C:\\VMs\\web01.vhdx</VALUE>'
            "</VALUE.ARRAY></PROPERTY.ARRAY>") in text
    assert '<PROPERTY.ARRAY NAME="Connection" TYPE="string"/>' in text
    assert '<PROPERTY NAME="AutomaticAllocation" TYPE="boolean"><VALUE>TRUE</VALUE></PROPERTY>' in text
    back = parse_cimxml(text)
    assert back["HostResource"] == ["C:\\VMs\\web01.vhdx"] and back["IOPSLimit"] == 2**64 - 1


def test_datetimes_and_intervals_become_dmtf_text() -> None:
    vssd = _wsman(C.VSSD, (
        "<p:InstanceID>Microsoft:6A1C0B7E-3D55-4B6F-9F0A-2C7E51D4A9B3</p:InstanceID>"
        "<p:CreationTime><cim:Datetime>2024-05-01T10:11:12.123Z</cim:Datetime></p:CreationTime>"
        "<p:AutomaticStartupActionDelay><cim:Interval>PT30S</cim:Interval></p:AutomaticStartupActionDelay>"
        "<p:AutomaticCriticalErrorActionTimeout>00000000001000.000000:000</p:AutomaticCriticalErrorActionTimeout>"
        "<p:BootOrder>2</p:BootOrder>"
        "<p:Notes>only note</p:Notes>"
        "<p:UserSnapshotType>3</p:UserSnapshotType>"
    ))
    out = typed(vssd)
    assert out["CreationTime"] == datetime(2024, 5, 1, 10, 11, 12, 123000, tzinfo=timezone.utc)
    assert out["AutomaticStartupActionDelay"] == timedelta(seconds=30)
    assert out["AutomaticCriticalErrorActionTimeout"] == timedelta(minutes=10)
    assert out["BootOrder"] == [2] and out["Notes"] == ["only note"] and out["UserSnapshotType"] == 3
    text = to_typed_cimxml(vssd)
    assert '<PROPERTY NAME="CreationTime" TYPE="datetime"><VALUE>20240501101112.123000+000</VALUE>' in text
    assert '<VALUE>00000000000030.000000:000</VALUE>' in text
    assert '<PROPERTY.ARRAY NAME="BootOrder" TYPE="uint16"><VALUE.ARRAY><VALUE>2</VALUE>' in text


def test_unknown_properties_keep_their_value_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    mem = _wsman(C.MEMORY_SD, "<p:VirtualQuantity>4096</p:VirtualQuantity><p:FutureKnob>7</p:FutureKnob>")
    with caplog.at_level(logging.DEBUG, logger="bareos_hyperv.hyperv.schema"):
        out = typed(mem)
    assert out["VirtualQuantity"] == 4096 and out["FutureKnob"] == "7" and out.type_of("FutureKnob") is None
    assert any("FutureKnob" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert '<PROPERTY NAME="FutureKnob" TYPE="string"><VALUE>7</VALUE>' in to_typed_cimxml(mem)


def test_a_value_that_does_not_fit_its_type_is_kept_as_text_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    cpu = _wsman(C.PROCESSOR_SD, "<p:VirtualQuantity>four</p:VirtualQuantity><p:Weight>100</p:Weight>"
                                 "<p:ResourceType>3</p:ResourceType><p:ResourceType>4</p:ResourceType>")
    with caplog.at_level(logging.WARNING, logger="bareos_hyperv.hyperv.schema"):
        out = typed(cpu)
    assert out["VirtualQuantity"] == "four" and out.type_of("VirtualQuantity") is None
    assert out["Weight"] == 100
    assert out["ResourceType"] == ["3", "4"] and out.type_of("ResourceType") is None  # scalar sent as array
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "VirtualQuantity" in messages and "'four'" in messages and "uint64" in messages
    assert "ResourceType" in messages
    text = to_typed_cimxml(cpu)
    assert '<PROPERTY NAME="VirtualQuantity" TYPE="string"><VALUE>four</VALUE>' in text


def test_classes_outside_the_table_get_their_cim_base_types(caplog: pytest.LogCaptureFixture) -> None:
    dev = _wsman("Msvm_FutureDeviceSettingData", "<p:ResourceType>42</p:ResourceType>"
                                                 "<p:HostResource>x</p:HostResource><p:Knob>1</p:Knob>")
    with caplog.at_level(logging.DEBUG, logger="bareos_hyperv.hyperv.schema"):
        out = typed(dev)
    assert out["ResourceType"] == 42 and out["HostResource"] == ["x"] and out["Knob"] == "1"
    assert any("Msvm_FutureDeviceSettingData" in r.getMessage() for r in caplog.records)
    other = typed(_wsman("Msvm_FutureSettingData", "<p:InstanceID>i</p:InstanceID><p:Count>3</p:Count>"))
    assert other.type_of("InstanceID") == "string" and other["Count"] == "3"


def test_types_an_instance_already_carries_win_over_the_table() -> None:
    # CIM-XML from Hyper-V itself (GetText) knows the declared types; typed() must not overrule them
    inst = CimInstance(C.PROCESSOR_SD, {"InstanceID": "i", "Limit": "100000", "Reservation": "5"},
                       types={"Limit": "uint32"})
    out = typed(inst)
    assert out.type_of("Limit") == "uint32" and out["Limit"] == 100000
    assert out.type_of("Reservation") == "uint64" and out["Reservation"] == 5


def test_booleans_and_numbers_written_into_string_properties_become_text() -> None:
    inst = CimInstance(C.SYNTHETIC_NIC_SD, {"Address": 155, "ElementName": True, "StaticMacAddress": "True"})
    out = typed(inst)
    assert out["Address"] == "155" and out["ElementName"] == "true" and out["StaticMacAddress"] is True
