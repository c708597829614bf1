"""WMI error objects wherever WinRM places them, and categories refined by the codes a fault carries.

The envelopes are written for these tests in the shapes WinRM is known to send (see
``hvsim/behaviour.py`` for the sources): ``MSFT_WmiError`` directly under ``s:Detail``
with no ``f:WSManFault`` (the placement pywinrm 0.5.0 reads), ``__ExtendedStatus`` there,
and the WMI HRESULT used as the ``f:WSManFault`` code.
"""

from __future__ import annotations

import pytest
from lxml import etree

from bareos_hyperv.wsman.errors import (
    AccessDeniedFault,
    InternalErrorFault,
    NotFoundFault,
    QuotaLimitFault,
    WsmanFault,
)
from bareos_hyperv.wsman.faults import find_fault, parse_fault

ENUM = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/MSCluster/*"
WMIERR = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"


def _envelope(subcode: str, detail: str, reason: str = "The service cannot process the request. ") -> etree._Element:
    xml = f"""<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
      xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
      xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"><s:Body><s:Fault>
      <s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code>
      <s:Reason><s:Text xml:lang="en-US">{reason}</s:Text></s:Reason>
      <s:Detail>{detail}</s:Detail></s:Fault></s:Body></s:Envelope>"""
    return etree.fromstring(xml.encode())


def _wmierror(cim: int, code: int, message: str) -> str:
    def member(name: str, typ: str, value: object) -> str:
        if value is None:
            return f'<p:{name} xsi:type="cim:{typ}" xsi:nil="true"/>'
        return f'<p:{name} xsi:type="cim:{typ}">{value}</p:{name}>'

    members = "".join([
        member("CIMStatusCode", "cimUnsignedInt", cim),
        member("CIMStatusCodeDescription", "cimString", None),
        member("Message", "cimString", message),
        member("MessageID", "cimString", f"HRESULT 0x{code:08x}"),
        member("OwningEntity", "cimString", None),
        member("error_Code", "cimUnsignedInt", code),
        member("error_Type", "cimString", "HRESULT"),
        member("error_WindowsErrorMessage", "cimString", message),
    ])
    return (f'<p:MSFT_WmiError b:IsCIM_Error="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" xmlns:p="{WMIERR}" '
            f'xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xsi:type="p:MSFT_WmiError_Type">'
            f"{members}</p:MSFT_WmiError>")


def _parse(root: etree._Element) -> WsmanFault:
    fault_el = find_fault(root)
    assert fault_el is not None
    return parse_fault(fault_el, host="hv01", action=ENUM, resource_uri=URI, http_status=500)


def test_msft_wmierror_directly_under_detail_is_read() -> None:
    text = "Checkpoint operation failed."
    fault = _parse(_envelope("w:InternalError", _wmierror(1, 0x80041001, text)))
    assert type(fault) is InternalErrorFault
    assert fault.wsman_code is None and fault.machine is None  # no f:WSManFault in this shape
    wmi = fault.wmi_error
    assert wmi is not None and wmi.class_name == "MSFT_WmiError"
    assert (wmi.description, wmi.status_code, wmi.cim_status_code, wmi.error_type) == (
        text, 0x80041001, 1, "HRESULT")
    message = str(fault)
    assert text in message and "HRESULT 0x80041001 WBEM_E_FAILED" in message
    assert "CIM status 1 CIM_ERR_FAILED" in message and "hv01" in message


def test_quota_in_msft_wmierror_is_its_own_category() -> None:
    text = ("The WS-Management service cannot process the request. This user is allowed a maximum number of 1500 "
            "concurrent operations, which has been exceeded.")
    fault = _parse(_envelope("w:InternalError", _wmierror(27, 0x803381A6, text), reason=text))
    assert isinstance(fault, QuotaLimitFault)
    assert 0x803381A6 in fault.codes and fault.cim_status == 27
    message = str(fault)
    assert "ERROR_WSMAN_QUOTA_MAX_OPERATIONS" in message and "CIM_ERR_SERVER_LIMITS_EXCEEDED" in message
    assert message.count("maximum number of 1500") == 1  # the reason is not repeated from the WMI error
    assert "MaxConcurrentOperationsPerUser" in (fault.what_to_do or "")


def test_quota_limit_subcode_and_quota_wsman_codes() -> None:
    plain = ('<f:WSManFault Code="2150859173" Machine="hv01"><f:Message>This user is allowed a maximum number of '
             "5 concurrent shells, which has been exceeded. </f:Message></f:WSManFault>")
    assert isinstance(_parse(_envelope("w:QuotaLimit", plain)), QuotaLimitFault)
    fault = _parse(_envelope("w:InternalError", plain))
    assert isinstance(fault, QuotaLimitFault)
    assert "0x803381A5 ERROR_WSMAN_QUOTA_MAX_SHELLS" in str(fault)


def test_extended_status_directly_under_detail_is_read() -> None:
    status = ('<p:__ExtendedStatus xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wmi/root/MSCluster/'
              '__ExtendedStatus"><p:Description>Provider load failure </p:Description>'
              "<p:Operation>ExecQuery</p:Operation><p:ProviderName>MS_CLUSTER_PROVIDER</p:ProviderName>"
              "<p:StatusCode>2147749908</p:StatusCode></p:__ExtendedStatus>")
    detail = '<f:WSManFault Code="2150859010" Machine="hv01"><f:Message>Provider failure</f:Message></f:WSManFault>'
    fault = _parse(_envelope("w:InternalError", detail + status))
    assert type(fault) is InternalErrorFault
    assert fault.wmi_error is not None and fault.wmi_error.status_code == 2147749908
    assert fault.wmi_error.operation == "ExecQuery" and fault.wmi_error.provider_name == "MS_CLUSTER_PROVIDER"
    assert "HRESULT 0x80041014" in str(fault)


@pytest.mark.parametrize("detail", [
    # the WMI HRESULT as the WSManFault code
    '<f:WSManFault Code="2147749902" Machine="hv01"><f:Message>The CIM namespace root/MSCluster is invalid. '
    "</f:Message></f:WSManFault>",
    # MSFT_WmiError: CIM_ERR_INVALID_NAMESPACE
    _wmierror(3, 0x8004100E, "The CIM namespace root/MSCluster is invalid."),
    # only the CIM status code says it
    _wmierror(3, 0x80041001, "Invalid namespace"),
    # a missing class behaves the same: the provider is not there
    _wmierror(5, 0x80041010, "Invalid class"),
])
def test_invalid_namespace_in_a_generic_fault_is_not_found(detail: str) -> None:
    assert isinstance(_parse(_envelope("w:InternalError", detail)), NotFoundFault)


@pytest.mark.parametrize("detail", [
    _wmierror(2, 0x80041003, "Access denied"),
    '<f:WSManFault Code="2147942405" Machine="hv01"><f:Message>Access is denied. </f:Message></f:WSManFault>',
])
def test_access_denied_in_a_generic_fault_is_access_denied(detail: str) -> None:
    assert isinstance(_parse(_envelope("w:InternalError", detail)), AccessDeniedFault)


def test_a_specific_subcode_is_not_overridden_by_the_codes() -> None:
    fault = _parse(_envelope("w:InvalidParameter", _wmierror(3, 0x8004100E, "x")))
    assert type(fault).__name__ == "InvalidParameterFault"


def test_hresult_from_message_id_when_error_code_is_missing() -> None:
    detail = (f'<p:MSFT_WmiError xmlns:p="{WMIERR}"><p:Message>Generic failure</p:Message>'
              "<p:MessageID>HRESULT 0x80041001</p:MessageID></p:MSFT_WmiError>")
    fault = _parse(_envelope("w:InternalError", detail))
    assert fault.wmi_error is not None and fault.wmi_error.status_code == 0x80041001
