"""Envelope building and response reading (bareos_hyperv.wsman.envelope)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from bareos_hyperv.wsman import envelope as env
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, EndpointReference, parse_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import WsmanProtocolError
from bareos_hyperv.wsman.namespaces import Action, resource_uri, split_resource_uri, wildcard_uri

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "n": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "b": "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "cim": "http://schemas.dmtf.org/wbem/wscim/1/common",
}
SOAP = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared/wsman-soap")
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"
OPTS = env.HeaderOptions(to="http://hv01:5985/wsman", operation_timeout=60, max_envelope_size=512000)
VM = EndpointReference.build(
    "root/virtualization/v2",
    "Msvm_ComputerSystem",
    {"CreationClassName": "Msvm_ComputerSystem", "Name": "6A1C0B7E"},
)


def _x(el: etree._Element, path: str) -> list:
    return el.xpath(path, namespaces=NS)


def _round(el: etree._Element) -> etree._Element:
    return etree.fromstring(env.to_bytes(el))


def test_resource_uris() -> None:
    assert resource_uri("root\\virtualization\\v2", "Msvm_X") == f"{V2}/Msvm_X"
    assert wildcard_uri("root/MSCluster") == "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/MSCluster/*"
    assert wildcard_uri("root\\cimv2").endswith("/wmi/root/cimv2/*")
    assert split_resource_uri(f"{V2}/*") == ("root/virtualization/v2", "*")


def test_header_layout() -> None:
    e = _round(
        env.build_envelope(
            OPTS,
            action=Action.GET,
            resource_uri=VM.resource_uri,
            message_id="uuid:M1",
            selectors=VM.selectors,
        )
    )
    h = "/s:Envelope/s:Header/"
    assert _x(e, h + "a:To/text()") == ["http://hv01:5985/wsman"]
    assert _x(e, h + "w:ResourceURI[@s:mustUnderstand='true']/text()") == [VM.resource_uri]
    assert _x(e, h + "a:ReplyTo/a:Address/text()") == [
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
    ]
    assert _x(e, h + "a:Action[@s:mustUnderstand='true']/text()") == [Action.GET]
    assert _x(e, h + "w:MaxEnvelopeSize[@s:mustUnderstand='true']/text()") == ["512000"]
    assert _x(e, h + "a:MessageID/text()") == ["uuid:M1"]
    assert _x(e, h + "w:OperationTimeout/text()") == ["PT60.000S"]
    assert _x(e, h + "w:Locale/@xml:lang") == ["en-US"]
    assert _x(e, h + "p:DataLocale/@xml:lang") == ["en-US"]
    assert _x(e, h + "w:SelectorSet/w:Selector/@Name") == ["CreationClassName", "Name"]
    assert _x(e, h + "w:SelectorSet/w:Selector[@Name='Name']/text()") == ["6A1C0B7E"]
    assert _x(e, "/s:Envelope/s:Body/*") == []


def test_message_ids_are_unique_uuids() -> None:
    ids = {env.new_message_id() for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("uuid:") and len(i) == 41 for i in ids)


def test_wql_enumerate_body() -> None:
    body = env.enumerate_body(
        filter_el=env.wql_filter('SELECT * FROM Msvm_ComputerSystem WHERE Caption = "x"'), max_elements=50
    )
    e = _round(
        env.build_envelope(
            OPTS, action=Action.ENUMERATE, resource_uri=f"{V2}/*", message_id="uuid:1", body=body
        )
    )
    b = "/s:Envelope/s:Body/n:Enumerate/"
    assert [etree.QName(c).localname for c in _x(e, b + "*")] == [
        "OptimizeEnumeration",
        "MaxElements",
        "EnumerationMode",
        "Filter",
    ]
    assert _x(e, b + "w:MaxElements/text()") == ["50"]
    assert _x(e, b + "w:EnumerationMode/text()") == ["EnumerateObjectAndEPR"]
    assert _x(e, b + "w:Filter/@Dialect") == ["http://schemas.microsoft.com/wbem/wsman/1/WQL"]
    assert _x(e, b + "w:Filter/text()") == ['SELECT * FROM Msvm_ComputerSystem WHERE Caption = "x"']


@pytest.mark.parametrize("instances", [False, True])
def test_association_filter(instances: bool) -> None:
    flt = env.association_filter(
        VM,
        instances_of_association=instances,
        association_class="Msvm_SettingsDefineState",
        result_class="Msvm_VirtualSystemSettingData",
        role="ManagedElement",
        result_role="SettingData",
    )
    e = _round(flt)
    kind = "AssociationInstances" if instances else "AssociatedInstances"
    assert e.get("Dialect") == "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"
    root = _x(e, f"/w:Filter/b:{kind}")[0]
    names = [etree.QName(c).localname for c in root]
    expected = (
        ["Object", "ResultClassName", "Role"]
        if instances
        else ["Object", "AssociationClassName", "ResultClassName", "Role", "ResultRole"]
    )
    assert names == expected
    obj = _x(root, "b:Object")[0]
    assert EndpointReference.from_element(obj) == VM
    assert _x(obj, "a:ReferenceParameters/w:ResourceURI/text()") == [VM.resource_uri]


def test_pull_and_release_bodies() -> None:
    p = _round(env.pull_body("uuid:CTX", 7))
    assert _x(p, "/n:Pull/n:EnumerationContext/text()") == ["uuid:CTX"]
    assert _x(p, "/n:Pull/n:MaxElements/text()") == ["7"]
    r = _round(env.release_body("uuid:CTX"))
    assert _x(r, "/n:Release/n:EnumerationContext/text()") == ["uuid:CTX"]


def test_invoke_body_parameter_encodings_in_caller_order() -> None:
    svc = f"{V2}/Msvm_VirtualSystemSnapshotService"
    settings = CimInstance(
        "Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 1, "IgnoreNonSnapshottableDisks": True}
    )
    body = env.invoke_body(
        svc,
        "CreateSnapshot",
        [
            ("AffectedSystem", VM),
            ("SnapshotSettings", EmbeddedInstance(settings, {"ConsistencyLevel": "uint8"})),
            ("SnapshotType", 32768),
            ("Skipped", None),
            ("Flags", [True, False]),
            ("Sizes", (2**63, 1)),
            ("When", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
            ("Wait", timedelta(minutes=5)),
            ("Plain", settings),
            ("Text", "a<b"),
        ],
    )
    raw = etree.tostring(body)
    assert b"<![CDATA[<INSTANCE" in raw
    e = etree.fromstring(raw)
    assert etree.QName(e).localname == "CreateSnapshot_INPUT" and etree.QName(e).namespace == svc
    names = [etree.QName(c).localname for c in e]
    assert names == [
        "AffectedSystem",
        "SnapshotSettings",
        "SnapshotType",
        "Flags",
        "Flags",
        "Sizes",
        "Sizes",
        "When",
        "Wait",
        "Plain",
        "Text",
    ]
    assert EndpointReference.from_element(e[0]) == VM
    embedded = parse_cimxml(e[1].text)
    assert embedded.type_of("ConsistencyLevel") == "uint8" and embedded["IgnoreNonSnapshottableDisks"] is True
    assert [c.text for c in e[3:7]] == ["true", "false", str(2**63), "1"]
    assert _x(e[7], "cim:Datetime/text()") == ["2024-01-02T03:04:05Z"]
    assert _x(e[8], "cim:Interval/text()") == ["P0DT0H5M0S"]
    assert parse_cimxml(e[9].text) == settings
    assert e[10].text == "a<b"


def test_embedded_text_with_cdata_terminator_is_escaped() -> None:
    inst = CimInstance("X", {"A": "x]]>y"})
    e = etree.fromstring(etree.tostring(env.invoke_body(f"{V2}/S", "M", [("P", EmbeddedInstance(inst))])))
    assert parse_cimxml(e[0].text)["A"] == "x]]>y"


def test_identify_envelope() -> None:
    e = _round(env.build_identify())
    assert _x(e, "/s:Envelope/s:Header/*") == []
    assert (
        len(
            e.xpath(
                "/s:Envelope/s:Body/i:Identify",
                namespaces={**NS, "i": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"},
            )
        )
        == 1
    )


def test_relates_to_check() -> None:
    data = (
        SOAP / "pypsrp-extracted-test_psrp_disconnect_runspaces-msg11-EnumerateResponse-shells.xml"
    ).read_bytes()
    e = env.parse_envelope(data, host="h", action=Action.ENUMERATE)
    env.check_relates_to(e, "uuid:5e6ee511-87b0-4c03-8084-15eec39ad510", host="h", action=Action.ENUMERATE)
    with pytest.raises(WsmanProtocolError, match="for another request"):
        env.check_relates_to(
            e, "uuid:00000000-0000-0000-0000-000000000000", host="h", action=Action.ENUMERATE
        )
    opennms = env.parse_envelope(
        (SOAP / "opennms-optimized-enum-response-with-fragment.xml").read_bytes(),
        host="h",
        action=Action.ENUMERATE,
    )
    with pytest.raises(WsmanProtocolError, match=r"RelatesTo None"):
        env.check_relates_to(opennms, "uuid:1", host="h", action=Action.ENUMERATE)


def test_parse_envelope_errors() -> None:
    with pytest.raises(WsmanProtocolError, match="not XML"):
        env.parse_envelope(b"<html", host="h", action=Action.GET)
    with pytest.raises(WsmanProtocolError, match=r"not a SOAP 1\.2 envelope"):
        env.parse_envelope(b"<html/>", host="h", action=Action.GET)


def test_enumerate_response_fixtures_parse() -> None:
    data = (
        SOAP / "pypsrp-extracted-test_psrp_disconnect_runspaces-msg11-EnumerateResponse-shells.xml"
    ).read_bytes()
    resp = env.body_of(env.parse_envelope(data, host="h", action=Action.ENUMERATE))[0]
    assert env.end_of_sequence(resp) and env.enumeration_context(resp) is None
    shells = [CimClient._item(i) for i in env.items_of(resp)]
    assert [s.str("ShellId") for s in shells] == [
        "B6631D8E-65A0-49F2-9053-A1B156C95777",
        "01AA3E43-9E21-424B-A7FC-BC16AA34F4CE",
    ]
    assert shells[0].class_name == "Shell" and shells[0].int("ProcessId") == 2792

    data = (SOAP / "opennms-optimized-enum-response-with-fragment.xml").read_bytes()
    resp = env.body_of(env.parse_envelope(data, host="h", action=Action.ENUMERATE))[0]
    assert env.end_of_sequence(resp)
    assert env.enumeration_context(resp) == "uuid:7224A619-B170-420D-A625-ADECA5875BF6"
    (frag,) = [CimClient._item(i) for i in env.items_of(resp)]
    assert frag.class_name == ""
    assert frag.str("Name") == "A:" and frag.opt_int("FreeSpace") is None and frag["Size"] is None
