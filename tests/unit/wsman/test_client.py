"""CimClient over real HTTP(S) through pywinrm, against tests/unit/wsman/replay_server.py."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import socket
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, List

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.cim import EmbeddedInstance, EndpointReference, to_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import (
    AuthenticationError,
    EncodingLimitFault,
    InvalidSelectorsFault,
    NotFoundFault,
    TimedOutFault,
    TlsVerificationError,
    WsmanConnectionError,
    WsmanHttpError,
    WsmanProtocolError,
)
from bareos_hyperv.wsman.transport import Endpoint, TransportOptions

USER = "hvbackup"
PASSWORD = "S3cret!pw"
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"
ENUM_NS = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
VM = EndpointReference.build(
    "root/virtualization/v2",
    "Msvm_ComputerSystem",
    {"CreationClassName": "Msvm_ComputerSystem", "Name": "VM-GUID-1"},
)
OPTIONS = TransportOptions(
    transport="basic",
    allow_unencrypted_basic=True,
    retry_delay=0.01,
    operation_timeout=5,
    read_timeout=10,
    max_elements=2,
)


def _client(server: object, password: str = PASSWORD, **opts: object) -> CimClient:
    options = TransportOptions(**{**OPTIONS.__dict__, **opts})  # type: ignore[arg-type]
    https = bool(getattr(server, "certfile", None))
    return CimClient(
        Endpoint("127.0.0.1", server.port, https=https),
        Credentials(USER, password),  # type: ignore[attr-defined]
        options,
    )


def _vm_item(rs: ModuleType, n: int) -> str:
    return rs.item_xml(
        "Msvm_ComputerSystem",
        {"Name": f"VM-{n}", "ElementName": f"web{n:02d}", "EnabledState": 2},
        {"CreationClassName": "Msvm_ComputerSystem", "Name": f"VM-{n}"},
    )


def _paging_responder(rs: ModuleType, total: int) -> Callable[[object], object]:
    """Enumerate answers the first page; Pulls hand out the rest, page size as requested."""
    state = {"next": 0}

    def page(req: object) -> str:
        size = int(req.body.xpath(".//w:MaxElements/text()|.//n:MaxElements/text()", namespaces=rs.NS)[0])  # type: ignore[attr-defined]
        start = state["next"]
        state["next"] = min(total, start + size)
        items = "".join(_vm_item(rs, n) for n in range(start, state["next"]))
        return items, state["next"] >= total

    def respond(req: object) -> object:
        action = req.action  # type: ignore[attr-defined]
        if action.endswith("/Enumerate"):
            items, done = page(req)
            eos = "<w:EndOfSequence/>" if done else ""
            return rs.Reply(
                rs.envelope(
                    f"<n:EnumerateResponse><n:EnumerationContext>uuid:C1</n:EnumerationContext>"
                    f"<w:Items>{items}</w:Items>{eos}</n:EnumerateResponse>"
                )
            )
        if action.endswith("/Pull"):
            items, done = page(req)
            tail = "<n:EndOfSequence/>" if done else "<n:EnumerationContext>uuid:C2</n:EnumerationContext>"
            return rs.Reply(rs.envelope(f"<n:PullResponse><n:Items>{items}</n:Items>{tail}</n:PullResponse>"))
        raise AssertionError(action)

    return respond


def test_identify(rs: ModuleType) -> None:
    body = (
        "<wsmid:IdentifyResponse><wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
        "</wsmid:ProtocolVersion><wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor>"
        "<wsmid:ProductVersion>OS: 10.0.20348 SP: 0.0 Stack: 3.0</wsmid:ProductVersion>"
        "<wsmid:SecurityProfiles><wsmid:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/"
        "secprofile/http/spnego-kerberos</wsmid:SecurityProfileName></wsmid:SecurityProfiles>"
        "</wsmid:IdentifyResponse>"
    )
    with rs.ReplayServer(lambda req: rs.Reply(rs.envelope(body, relates_to=""))) as server:
        client = _client(server)
        ident = client.identify()
        assert ident.product_vendor == "Microsoft Corporation"
        assert ident.product_version.startswith("OS: 10.0.20348")
        assert ident.security_profiles[0].endswith("spnego-kerberos")
        assert server.requests[0].is_identify and client.request_count == 1


def test_enumerate_pages_with_pull_to_the_same_uri(rs: ModuleType) -> None:
    with rs.ReplayServer(_paging_responder(rs, total=5)) as server:
        client = _client(server)
        vms = client.enumerate("root\\virtualization\\v2", "Msvm_ComputerSystem")
        assert [v.str("ElementName") for v in vms] == [f"web{n:02d}" for n in range(5)]
        assert all(v.epr is not None and v.epr.str_selector("Name") == v.str("Name") for v in vms)
        assert vms[0].namespace == "root/virtualization/v2" and vms[0].int("EnabledState") == 2
        actions = [r.action.rsplit("/", 1)[-1] for r in server.requests]
        assert actions == ["Enumerate", "Pull", "Pull"] and client.request_count == 3
        assert {r.resource_uri for r in server.requests} == {f"{V2}/Msvm_ComputerSystem"}
        contexts = [r.text(".//n:Pull/n:EnumerationContext") for r in server.requests[1:]]
        assert contexts == ["uuid:C1", "uuid:C2"]


def test_query_and_associations_use_wildcard_uri(rs: ModuleType) -> None:
    with rs.ReplayServer(_paging_responder(rs, total=1)) as server:
        client = _client(server, max_elements=50)
        assert len(client.query("root/virtualization/v2", "SELECT * FROM Msvm_ComputerSystem")) == 1
        cluster_group = EndpointReference.build(
            "root/MSCluster", "MSCluster_ResourceGroup", {"Name": "web01"}
        )
        client.associators(
            cluster_group,
            assoc_class="MSCluster_ResourceGroupToResource",
            result_class="MSCluster_Resource",
            role="GroupComponent",
            result_role="PartComponent",
        )
        client.references(VM, result_class="Msvm_SettingsDefineState", role="ManagedElement")
        uris = [r.resource_uri for r in server.requests]
        assert uris == [
            f"{V2}/*",
            "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/MSCluster/*",
            f"{V2}/*",
        ]
        wql, assoc, refs = server.requests
        assert wql.text(".//w:Filter") == "SELECT * FROM Msvm_ComputerSystem"
        assert wql.text(".//w:MaxElements") == "50"
        assert (
            assoc.text(".//b:AssociatedInstances/b:Object/a:ReferenceParameters/w:SelectorSet/w:Selector")
            == "web01"
        )
        assert assoc.text(".//b:AssociatedInstances/b:ResultRole") == "PartComponent"
        assert refs.text(".//b:AssociationInstances/b:ResultClassName") == "Msvm_SettingsDefineState"


def test_get_returns_instance_with_epr(rs: ModuleType) -> None:
    reply = rs.Reply(
        rs.envelope(
            rs.instance_xml(
                "Msvm_ComputerSystem",
                {"Name": "VM-GUID-1", "ElementName": "web01", "Notes": ["a", "b"], "OnTime": None},
            )
        )
    )
    with rs.ReplayServer(lambda req: reply) as server:
        vm = _client(server).get(VM)
        assert vm.epr == VM and vm.str("elementname") == "web01" and vm.strs("Notes") == ["a", "b"]
        assert vm.opt_datetime("OnTime") is None
        req = server.requests[0]
        assert req.action == "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
        assert req.envelope.xpath("//w:SelectorSet/w:Selector/@Name", namespaces=rs.NS) == [
            "CreationClassName",
            "Name",
        ]


def test_invoke_decodes_outputs(rs: ModuleType) -> None:
    err = to_cimxml(
        __import__("bareos_hyperv.wsman.cim", fromlist=["CimInstance"]).CimInstance(
            "Msvm_Error", {"Message": "disk <busy>", "MessageID": "32768"}
        )
    )
    escaped = err.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = (
        f'<p:GetVirtualDiskChanges_OUTPUT xmlns:p="{V2}/Msvm_ImageManagementService">'
        f"<p:Job>{rs.epr_xml('Msvm_StorageJob', {'InstanceID': 'JOB-1'})}</p:Job>"
        "<p:ChangedByteOffsets>0</p:ChangedByteOffsets><p:ChangedByteOffsets>18446744073709551615"
        "</p:ChangedByteOffsets><p:ChangedByteLengths>4096</p:ChangedByteLengths>"
        f"<p:Errors>{escaped}</p:Errors><p:Errors>{escaped}</p:Errors>"
        "<p:ReturnValue>4096</p:ReturnValue></p:GetVirtualDiskChanges_OUTPUT>"
    )
    with rs.ReplayServer(lambda req: rs.Reply(rs.envelope(body))) as server:
        svc = EndpointReference.build(
            "root/virtualization/v2",
            "Msvm_ImageManagementService",
            {"CreationClassName": "Msvm_ImageManagementService", "Name": "vhdsvc"},
        )
        res = _client(server).invoke(
            svc,
            "GetVirtualDiskChanges",
            [
                ("Path", "C:\\disk.vhdx"),
                ("LimitId", "rct:1"),
                ("TargetSize", 2**40),
                ("Settings", EmbeddedInstance(err)),
            ],
            out_types={"ChangedByteOffsets": "uint64[]", "ChangedByteLengths": "uint64[]"},
        )
        assert res.return_value == 4096
        assert res.outputs.ref("Job").str_selector("InstanceID") == "JOB-1"
        assert res.outputs["ChangedByteOffsets"] == [0, 2**64 - 1]
        assert res.outputs["ChangedByteLengths"] == [4096]
        errors = res.outputs.instances("Errors")
        assert [e.str("Message") for e in errors] == ["disk <busy>"] * 2
        req = server.requests[0]
        assert req.action == f"{V2}/Msvm_ImageManagementService/GetVirtualDiskChanges"
        names = [c.tag.split("}")[1] for c in req.body[0]]
        assert names == ["Path", "LimitId", "TargetSize", "Settings"]
        assert b"<![CDATA[<INSTANCE" in req.raw


def test_wrong_password_gives_authentication_error(rs: ModuleType) -> None:
    with rs.ReplayServer(lambda req: rs.Reply("")) as server:
        client = _client(server, password="wrong-password-123")
        with pytest.raises(AuthenticationError) as info:
            client.get(VM)
        text = str(info.value)
        assert USER in text and "127.0.0.1" in text and "401" in text
        assert "wrong-password-123" not in text
        assert server.auth_failures == 1  # a rejected login is not retried


@pytest.mark.parametrize(
    ("fixture", "cls"),
    [
        (
            "pypsrp-extracted-test_psrp_is_alive_invalid_selectors-msg4-fault-w_InvalidSelectors.xml",
            InvalidSelectorsFault,
        ),
        ("pypsrp-extracted-test_winrs_operation_timeout-msg3-fault-w_TimedOut.xml", TimedOutFault),
    ],
)
def test_fault_over_http(rs: ModuleType, fixture: str, cls: type) -> None:
    with rs.ReplayServer(lambda req: rs.fixture_reply(fixture)) as server:
        with pytest.raises(cls) as info:
            _client(server).get(VM)
        fault = info.value
        assert fault.http_status == 500 and fault.host == "127.0.0.1"
        assert fault.resource_uri == VM.resource_uri and fault.action.endswith("/Get")
        assert len(server.requests) == 1  # faults are answers, not connection errors: no retry


def test_dropped_connection_retries_idempotent_get(rs: ModuleType) -> None:
    calls: List[int] = []

    def respond(req: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            return rs.Reply(drop=True)
        return rs.Reply(rs.envelope(rs.instance_xml("Msvm_ComputerSystem", {"Name": "VM-GUID-1"})))

    with rs.ReplayServer(respond) as server:
        client = _client(server)
        assert client.get(VM).str("Name") == "VM-GUID-1"
        assert len(server.requests) == 2 and client.request_count == 2


def test_dropped_connection_never_retries_invoke(rs: ModuleType) -> None:
    with rs.ReplayServer(lambda req: rs.Reply(drop=True)) as server:
        client = _client(server)
        with pytest.raises(WsmanConnectionError, match="may or may not have been carried out"):
            client.invoke(VM, "RequestStateChange", [("RequestedState", 2)])
        assert len(server.requests) == 1


def test_retries_are_bounded(rs: ModuleType) -> None:
    with rs.ReplayServer(lambda req: rs.Reply(drop=True)) as server:
        client = _client(server, connect_attempts=3)
        with pytest.raises(WsmanConnectionError, match="after 3 attempts"):
            client.get(VM)
        assert len(server.requests) == 3


def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = CimClient(
        Endpoint("127.0.0.1", port),
        Credentials(USER, PASSWORD),
        TransportOptions(**{**OPTIONS.__dict__, "connect_attempts": 2}),
    )
    with pytest.raises(WsmanConnectionError, match="refused") as info:
        client.identify()
    assert "WinRM listens" in str(info.value)


def test_relates_to_mismatch_is_refused(rs: ModuleType) -> None:
    reply = rs.Reply(
        rs.envelope(
            rs.instance_xml("Msvm_ComputerSystem", {"Name": "x"}),
            relates_to="uuid:00000000-0000-0000-0000-000000000000",
        )
    )
    with rs.ReplayServer(lambda req: reply) as server:  # noqa: SIM117 - Python 3.9 syntax
        with pytest.raises(WsmanProtocolError, match="another request"):
            _client(server).get(VM)


def test_encoding_limit_halves_page_size(rs: ModuleType) -> None:
    fault = (
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:EncodingLimit</s:Value>"
        "</s:Subcode></s:Code><s:Reason><s:Text>The response that the WS-Management service computed "
        "exceeds the maximum envelope size.</s:Text></s:Reason></s:Fault>"
    )
    inner = _paging_responder(rs, total=3)
    sizes: List[str] = []

    def respond(req: object) -> object:
        size = req.body.xpath(".//w:MaxElements/text()|.//n:MaxElements/text()", namespaces=rs.NS)[0]  # type: ignore[attr-defined]
        sizes.append(size)
        if int(size) > 2:
            return rs.Reply(rs.envelope(fault), status=500)
        return inner(req)

    with rs.ReplayServer(respond) as server:
        vms = _client(server, max_elements=8).query(
            "root/virtualization/v2", "SELECT * FROM Msvm_ComputerSystem"
        )
        assert len(vms) == 3
        assert sizes == ["8", "4", "2", "2"]
        assert server.requests[-1].action.endswith("/Pull")

    with rs.ReplayServer(lambda req: rs.Reply(rs.envelope(fault), status=500)) as server:
        with pytest.raises(EncodingLimitFault):
            _client(server, max_elements=2).enumerate("root/virtualization/v2", "Msvm_ComputerSystem")
        assert len(server.requests) == 2  # 2, then 1, then give up


def test_failed_pull_releases_the_context(rs: ModuleType) -> None:
    def respond(req: object) -> object:
        action = req.action  # type: ignore[attr-defined]
        if action.endswith("/Enumerate"):
            return rs.Reply(
                rs.envelope(
                    "<n:EnumerateResponse><n:EnumerationContext>uuid:C9</n:EnumerationContext>"
                    f"<w:Items>{_vm_item(rs, 1)}</w:Items></n:EnumerateResponse>"
                )
            )
        if action.endswith("/Pull"):
            return rs.fixture_reply(
                "pypsrp-extracted-test_psrp_is_alive_invalid_selectors-msg4-fault-w_InvalidSelectors.xml"
            )
        return rs.Reply(
            rs.envelope("", action="http://schemas.xmlsoap.org/ws/2004/09/enumeration/ReleaseResponse")
        )

    with rs.ReplayServer(respond) as server:
        with pytest.raises(InvalidSelectorsFault):
            _client(server).enumerate("root/virtualization/v2", "Msvm_ComputerSystem")
        assert [r.action.rsplit("/", 1)[-1] for r in server.requests] == ["Enumerate", "Pull", "Release"]
        assert server.requests[-1].text(".//n:Release/n:EnumerationContext") == "uuid:C9"


def test_http_errors_without_fault(rs: ModuleType) -> None:
    with rs.ReplayServer(lambda req: rs.Reply("", status=500)) as server:
        with pytest.raises(WsmanHttpError, match="empty body") as info:
            _client(server).get(VM)
        assert info.value.status == 500 and "unencrypted" in str(info.value)
    with rs.ReplayServer(lambda req: rs.Reply("<html>no</html>", status=404)) as server:  # noqa: SIM117
        with pytest.raises(WsmanHttpError, match="HTTP 404"):
            _client(server).get(VM)


def test_not_found_fault_from_get(rs: ModuleType) -> None:
    fault = (
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>a:DestinationUnreachable</s:Value>"
        "</s:Subcode></s:Code><s:Reason><s:Text>No route can be determined to reach the destination role "
        "defined by the WS-Addressing To.</s:Text></s:Reason><s:Detail><f:WSManFault "
        'xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858752" Machine="hv01">'
        "<f:Message>The WS-Management service cannot process the request because the object was not found."
        "</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    with rs.ReplayServer(lambda req: rs.Reply(rs.envelope(fault), status=500)) as server:
        with pytest.raises(NotFoundFault) as info:
            _client(server).get(VM)
        assert info.value.wsman_code == 2150858752 and "object was not found" in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_password_never_logged_nor_in_exceptions(rs: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Pw-Z9!never-in-logs"
    forms = [secret, base64.b64encode(f"{USER}:{secret}".encode()).decode()]
    texts: List[str] = []
    caplog.set_level(logging.DEBUG)
    for name in ("", "bareos_hyperv", "winrm", "requests", "urllib3", "requests_ntlm", "spnego"):
        logging.getLogger(name).setLevel(logging.DEBUG)

    def respond(req: object) -> object:
        if req.is_identify:  # type: ignore[attr-defined]
            return rs.Reply("", status=500)
        if req.action.endswith("/Get"):  # type: ignore[attr-defined]
            return rs.fixture_reply("winrb-soap_fault_v2.xml")
        return rs.Reply(
            rs.envelope(f'<p:X_OUTPUT xmlns:p="{V2}/Msvm_X"><p:ReturnValue>0</p:ReturnValue></p:X_OUTPUT>')
        )

    with rs.ReplayServer(respond, password=secret) as server:
        client = _client(server, password=secret)
        # The password even travels inside a request body here: it must be redacted there too.
        client.invoke(VM, "X", [("Password", secret), ("Other", f"prefix {secret} suffix")])
        for call in (client.identify, lambda: client.get(VM)):
            with pytest.raises(Exception) as info:
                call()
            texts.append("".join(traceback.format_exception(info.type, info.value, info.tb)))
        bad = _client(server, password=secret + "x")
        with pytest.raises(AuthenticationError) as info:
            bad.get(VM)
        texts.append("".join(traceback.format_exception(info.type, info.value, info.tb)))
        texts.append(repr(Credentials(USER, secret)) + str(Credentials(USER, secret)))
    assert caplog.records, "debug logging must have produced records"
    assert any("X_INPUT" in r.getMessage() for r in caplog.records)  # bodies are logged, redacted
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for form in [*forms, forms[1].replace("=", ""), base64.b64encode(f"{USER}:{secret}x".encode()).decode()]:
        assert form not in logged
        for text in texts:
            assert form not in text
    assert (secret + "x") not in logged


# --------------------------------------------------------------------------- TLS and options


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    d: Path = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    yield str(d / "cert.pem"), str(d / "key.pem")


def test_tls_verification_on_by_default(rs: ModuleType, tls_files: tuple) -> None:
    cert, key = tls_files
    reply = rs.Reply(rs.envelope(rs.instance_xml("Msvm_ComputerSystem", {"Name": "VM-GUID-1"})))
    with rs.ReplayServer(lambda req: reply, certfile=cert, keyfile=key) as server:
        with pytest.raises(TlsVerificationError) as info:
            _client(server, transport="basic", allow_unencrypted_basic=False).get(VM)
        assert "127.0.0.1" in str(info.value) and "ca_trust_path" in str(info.value)
        assert len(server.requests) == 0
        ok = _client(server, allow_unencrypted_basic=False, ca_trust_path=cert).get(VM)
        assert ok.str("Name") == "VM-GUID-1"
        assert (
            _client(server, allow_unencrypted_basic=False, cert_validation=False).get(VM).str("Name")
            == "VM-GUID-1"
        )


def test_option_checks() -> None:
    creds = Credentials(USER, PASSWORD)
    with pytest.raises(ConfigurationError, match="basic over plain HTTP"):
        CimClient(Endpoint("hv01"), creds, TransportOptions(transport="basic"))
    CimClient(Endpoint("hv01", 5986, https=True), creds, TransportOptions(transport="basic"))
    with pytest.raises(ConfigurationError, match="must exceed operation_timeout"):
        CimClient(Endpoint("hv01"), creds, TransportOptions(operation_timeout=60, read_timeout=60))
    with pytest.raises(ConfigurationError, match="unknown transport"):
        CimClient(Endpoint("hv01"), creds, TransportOptions(transport="digest"))
    assert Endpoint("fe80::1", 5986, https=True).url == "https://[fe80::1]:5986/wsman"
    assert Endpoint("hv01").url == "http://hv01:5985/wsman"
    assert TransportOptions().transport == "ntlm" and TransportOptions().cert_validation is True
