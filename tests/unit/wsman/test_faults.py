"""SOAP fault parsing (bareos_hyperv.wsman.faults) on every fault fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from bareos_hyperv.errors import WsmanError
from bareos_hyperv.wsman.errors import (
    InvalidFilterFault,
    InvalidHeaderFault,
    InvalidParameterFault,
    InvalidSelectorsFault,
    NotFoundFault,
    TimedOutFault,
    WsmanFault,
)
from bareos_hyperv.wsman.faults import find_fault, parse_fault

SOAP = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared/wsman-soap")
URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/Msvm_ComputerSystem"
GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"

# fixture -> (class, code, subcode, wsman_code, machine, detail, provider, substring of message)
EXPECTED = {
    "pypsrp-extracted-test_psrp_is_alive_invalid_selectors-msg4-fault-w_InvalidSelectors.xml": (
        InvalidSelectorsFault,
        "s:Sender",
        "w:InvalidSelectors",
        2150858843,
        "127.0.0.1",
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
        "Shell provider",
        "invalid selectors",
    ),
    "pypsrp-extracted-test_psrp_is_alive_other_wsman_error-msg3-fault-a_InvalidMessageInformationHeader.xml": (
        InvalidHeaderFault,
        "s:Sender",
        "a:InvalidMessageInformationHeader",
        2150858767,
        "127.0.0.1",
        None,
        None,
        "invalid timeout field in the SOAP header: PT-1S",
    ),
    "pypsrp-extracted-test_winrs_bad_cmd_id-msg2-fault-w_InvalidSelectors.xml": (
        InvalidSelectorsFault,
        "s:Sender",
        "w:InvalidSelectors",
        2150858843,
        "192.168.56.15",
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
        None,
        "command identifier that does not exist",
    ),
    "pypsrp-extracted-test_winrs_fail_poll_process-msg1-fault-w_InvalidParameter.xml": (
        InvalidParameterFault,
        "s:Sender",
        "w:InvalidParameter",
        87,
        "127.0.0.1",
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue",
        "Shell cmd plugin",
        "The parameter is incorrect.",
    ),
    "pypsrp-extracted-test_winrs_operation_timeout-msg3-fault-w_TimedOut.xml": (
        TimedOutFault,
        "s:Receiver",
        "w:TimedOut",
        2150858793,
        "192.168.56.11",
        None,
        None,
        "within the time specified in OperationTimeout",
    ),
    "winrb-soap_fault_v1.xml": (
        InvalidFilterFault,
        "s:Sender",
        "n:CannotProcessFilter",
        2150858778,
        None,
        None,
        "WMIv1 plugin for Windows Remote Management",
        "could not process the filter",
    ),
    "winrb-soap_fault_v2.xml": (
        InvalidFilterFault,
        "s:Sender",
        "n:CannotProcessFilter",
        2150858778,
        "localhost",
        None,
        "WMI Provider",
        "The specified class does not exist in the given namespace.",
    ),
}


def _fault_fixtures() -> list:
    found = []
    for path in sorted(SOAP.glob("*.xml")):
        root = etree.fromstring(path.read_bytes())
        if find_fault(root) is not None:
            found.append(path.name)
    return found


def test_every_fault_fixture_is_covered() -> None:
    assert sorted(_fault_fixtures()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fault_fixture_parses(name: str) -> None:
    cls, code, subcode, wsman_code, machine, detail, provider, text = EXPECTED[name]
    root = etree.fromstring((SOAP / name).read_bytes())
    fault = parse_fault(
        find_fault(root), host="hv01.example.test", action=GET, resource_uri=URI, http_status=500
    )
    assert type(fault) is cls
    assert isinstance(fault, WsmanFault) and isinstance(fault, WsmanError)
    assert fault.code == code and fault.subcode == subcode and fault.wsman_code == wsman_code
    assert fault.machine == machine and fault.fault_detail == detail and fault.provider == provider
    assert fault.host == "hv01.example.test" and fault.action == GET and fault.resource_uri == URI
    message = str(fault)
    assert text in message
    assert "hv01.example.test" in message and "Get" in message and URI in message
    assert subcode in message
    assert fault.what_to_do and fault.what_to_do in message
    assert "None" not in message  # only fields that are present


def test_extended_status_is_read() -> None:
    root = etree.fromstring((SOAP / "winrb-soap_fault_v2.xml").read_bytes())
    fault = parse_fault(find_fault(root), host="h", action="a/Enumerate", resource_uri=None)
    assert fault.provider_path == r"%systemroot%\system32\WsmWmiPl.dll"
    assert fault.provider_message == "The specified class does not exist in the given namespace."
    wmi = fault.wmi_error
    assert wmi is not None and wmi.class_name == "__ExtendedStatus"
    assert wmi.operation == "ExecQuery"
    assert wmi.parameter_info == 'Select * from Win32_Processa where name="sshd.exe"'
    assert wmi.provider_name == "WinMgmt"
    assert wmi.description is None and wmi.status_code is None
    assert "ExecQuery" in str(fault) and "WinMgmt" in str(fault)


def _constructed(subcode: str, code: str, extended: str = "") -> etree._Element:
    xml = f"""<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
      xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
      xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Body><s:Fault>
      <s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code>
      <s:Reason><s:Text xml:lang="en-US">The service cannot process the request. </s:Text></s:Reason>
      <s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{code}"
        Machine="hv01"><f:Message><f:ProviderFault provider="WMI Provider" path="WsmWmiPl.dll">
        <f:WSManFault Code="{code}" Machine="hv01"><f:Message>Not found </f:Message></f:WSManFault>
        <f:ExtendedError>{extended}</f:ExtendedError></f:ProviderFault></f:Message></f:WSManFault></s:Detail>
      </s:Fault></s:Body></s:Envelope>"""
    return etree.fromstring(xml.encode())


def test_destination_unreachable_is_not_found_with_msft_wmierror() -> None:
    extended = """<p:MSFT_WmiError xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/MSFT_WmiError"
        xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><p:Message>The object was not found.</p:Message>
        <p:MessageID>HRESULT 0x80041002</p:MessageID><p:error_Code>2147749890</p:error_Code>
        <p:error_WinMgmtProviderName>VmmsWmiInstanceAndMethodProvider</p:error_WinMgmtProviderName>
        </p:MSFT_WmiError>"""
    fault = parse_fault(
        find_fault(_constructed("a:DestinationUnreachable", "2150858752", extended)),
        host="hv01",
        action=GET,
        resource_uri=URI,
    )
    assert isinstance(fault, NotFoundFault)
    assert fault.wmi_error is not None
    assert fault.wmi_error.description == "The object was not found."
    assert fault.wmi_error.status_code == 2147749890
    assert fault.wmi_error.provider_name == "VmmsWmiInstanceAndMethodProvider"
    assert "0x80041002" in str(fault) and "moved to another node" in str(fault)


def test_category_from_wsman_code_when_subcode_is_generic() -> None:
    fault = parse_fault(
        find_fault(_constructed("w:InternalError", "2150858752")), host="h", action=GET, resource_uri=URI
    )
    # InternalError is a category too; the subcode wins over the code.
    assert type(fault).__name__ == "InternalErrorFault"
    fault = parse_fault(
        find_fault(_constructed("x:Unknown", "2150858752")), host="h", action=GET, resource_uri=URI
    )
    assert isinstance(fault, NotFoundFault)
