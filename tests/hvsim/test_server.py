"""hvsim.server: the WinRM listener driven by pywinrm's real transport over real sockets."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from typing import Iterator, List, Tuple

import pytest
import requests
import spnego
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError
from winrm.transport import Transport

from hvsim.faults import AUTH_FAILURE, DROP_CONNECTION, SLOW_RESPONSE, FaultPlan
from hvsim.server import RequestContext, WsmanServer, sniff_operation
from hvsim.tls import CertificateAuthority

PASSWORD = "Pa55:w0rd-§ecret"
USERS = {"admin": PASSWORD, "CONTOSO\\svc-backup": "D0main:Pass"}

NS_ENUM = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
WMI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"


def envelope(action: str, marker: str = "") -> bytes:
    """A minimal WS-Man request envelope carrying a recognisable marker in its body."""
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing">'
        f'<s:Header><a:Action s:mustUnderstand="true">{action}</a:Action></s:Header>'
        f"<s:Body><Marker>{marker}</Marker></s:Body></s:Envelope>"
    ).encode()


IDENTIFY = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            b'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
            b"<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>")


class Recorder:
    """Dispatcher for the tests: answers with the request wrapped in <Echo>, or a canned answer."""

    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, RequestContext]] = []
        self.lock = threading.Lock()
        self.status = 200

    def __call__(self, body: bytes, ctx: RequestContext) -> Tuple[int, bytes]:
        with self.lock:
            self.calls.append((body, ctx))
        return self.status, b"<Echo>" + body + b"</Echo>"

    @property
    def bodies(self) -> List[bytes]:
        with self.lock:
            return [b for b, _ in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def plan() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def server(recorder: Recorder, plan: FaultPlan) -> Iterator[WsmanServer]:
    with WsmanServer(recorder, users=USERS, node="HV01", faults=plan) as srv:
        yield srv


def ntlm(url: str, srv: WsmanServer, user: str = "admin", password: str = PASSWORD,
         encryption: str = "auto", **kwargs: object) -> Transport:
    return Transport(url, username=user, password=password, auth_method="ntlm",
                     message_encryption=encryption, ca_trust_path=srv.ca_cert_path, **kwargs)


class RecordingProxy:
    """A TCP relay that keeps every byte each way, to look at what travels on the wire."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/wsman"
        self.upstream = bytearray()
        self.downstream = bytearray()
        self.connections = 0
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        self._threads.append(accept)
        accept.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready:
                continue
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            self.connections += 1
            pump = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([client, upstream], [], [], 0.05)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    self.upstream += data
                    upstream.sendall(data)
                else:
                    self.downstream += data
                    client.sendall(data)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for sock in [*self._socks, self.listener]:
            sock.close()


@pytest.fixture
def proxy(server: WsmanServer) -> Iterator[RecordingProxy]:
    assert server.port_http is not None
    relay = RecordingProxy(server.port_http)
    yield relay
    relay.close()


# --- NTLM and message encryption --------------------------------------------------------------


def test_ntlm_encrypted_round_trip_over_http(server: WsmanServer, recorder: Recorder,
                                             proxy: RecordingProxy) -> None:
    request = envelope(NS_TRANSFER + "/Get", marker="plaintext-marker-1234")
    client = ntlm(proxy.url, server, encryption="always")

    answer = client.send_message(request)

    assert answer == b"<Echo>" + request + b"</Echo>"
    assert recorder.bodies == [request]
    ctx = recorder.calls[0][1]
    assert (ctx.node, ctx.username, ctx.transport, ctx.auth_scheme, ctx.encrypted) == (
        "HV01", "admin", "http", "negotiate", True)
    # What crossed the wire: encrypted both ways, never the SOAP text.
    assert b'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"' in proxy.upstream
    assert b'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"' in proxy.downstream
    original = b"OriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d" % len(request)
    assert original in proxy.upstream
    assert b"plaintext-marker-1234" not in proxy.upstream
    assert b"plaintext-marker-1234" not in proxy.downstream
    assert PASSWORD.encode() not in proxy.upstream


def test_auto_encryption_over_http_and_several_requests_on_one_connection(
        server: WsmanServer, recorder: Recorder, proxy: RecordingProxy) -> None:
    client = ntlm(proxy.url, server, encryption="auto")
    for n in range(5):
        request = envelope(NS_ENUM + "/Pull", marker=f"pull-{n}")
        assert client.send_message(request) == b"<Echo>" + request + b"</Echo>"
    contexts = [ctx for _, ctx in recorder.calls]
    assert len(contexts) == 5
    assert all(ctx.encrypted for ctx in contexts)
    assert len({ctx.connection_id for ctx in contexts}) == 1
    assert proxy.connections == 1
    # One NTLM handshake for the five requests: the context belongs to the connection.
    assert proxy.upstream.count(b"Authorization: Negotiate") == 2


def test_spnego_wrapped_ntlm_on_a_raw_connection(server: WsmanServer, recorder: Recorder) -> None:
    """Windows clients (and pypsrp) wrap NTLM in SPNEGO; the sealed body and answer are checked by hand."""
    assert server.port_http is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port_http, timeout=10)
    ctx = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="negotiate")
    token = ctx.step()
    assert token is not None and token.startswith(b"\x60")  # a GSS-API/SPNEGO token, not raw NTLM
    status, headers, _ = post(conn, b"", auth_header(token))
    assert status == 401
    challenge = headers["WWW-Authenticate"].split(" ", 1)[1]
    token = ctx.step(base64.b64decode(challenge))
    status, headers, _ = post(conn, b"", auth_header(token or b""))
    assert status == 200
    if "WWW-Authenticate" in headers:
        ctx.step(base64.b64decode(headers["WWW-Authenticate"].split(" ", 1)[1]))
    assert ctx.complete

    for n in range(3):
        request = envelope(WMI + "/Msvm_VirtualSystemManagementService/DefineSystem", marker=f"raw-{n}")
        status, headers, body = post(conn, seal(ctx, request), {
            "Content-Type": 'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";'
                            'boundary="Encrypted Boundary"'})
        assert status == 200
        assert headers["Content-Type"].startswith("multipart/encrypted")
        assert b"raw-%d" % n not in body
        assert unseal(ctx, body) == b"<Echo>" + request + b"</Echo>"
    assert len({c.connection_id for _, c in recorder.calls}) == 1
    conn.close()


def auth_header(token: bytes | None) -> dict:
    return {"Authorization": "Negotiate " + base64.b64encode(token or b"").decode()}


def post(conn: http.client.HTTPConnection, body: bytes,
         headers: dict) -> Tuple[int, http.client.HTTPMessage, bytes]:
    conn.request("POST", "/wsman", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.msg, response.read()


def seal(ctx: spnego.ContextProxy, plaintext: bytes) -> bytes:
    wrapped = ctx.wrap_winrm(plaintext)
    return (b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n"
            b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n" % len(plaintext)
            + struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
            + b"--Encrypted Boundary--\r\n")


def unseal(ctx: spnego.ContextProxy, body: bytes) -> bytes:
    head, payload = body.split(b"\tContent-Type: application/octet-stream\r\n", 1)
    length = int(head.split(b"Length=")[1].split(b"\r\n")[0])
    assert payload.endswith(b"--Encrypted Boundary--\r\n")
    payload = payload[:-len(b"--Encrypted Boundary--\r\n")]
    (sig_len,) = struct.unpack_from("<I", payload)
    plaintext = ctx.unwrap_winrm(payload[4:4 + sig_len], payload[4 + sig_len:])
    assert len(plaintext) == length
    return plaintext


def test_unencrypted_soap_over_http_is_refused_with_empty_500(server: WsmanServer,
                                                              recorder: Recorder) -> None:
    client = ntlm(server.url_http or "", server, encryption="never")
    with pytest.raises(WinRMTransportError) as info:
        client.send_message(envelope(NS_TRANSFER + "/Get"))
    assert info.value.code == 500
    assert info.value.response_text == ""
    assert recorder.calls == []


def test_unencrypted_soap_over_http_when_allowed(recorder: Recorder) -> None:
    with WsmanServer(recorder, users=USERS, https=False, allow_unencrypted=True) as srv:
        client = ntlm(srv.url_http or "", srv, encryption="never")
        assert client.send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"
    assert recorder.calls[0][1].encrypted is False


def test_dispatcher_status_and_fault_come_back_encrypted(server: WsmanServer, recorder: Recorder,
                                                         proxy: RecordingProxy) -> None:
    recorder.status = 500
    client = ntlm(proxy.url, server)
    request = envelope(NS_TRANSFER + "/Get", marker="fault-marker")
    with pytest.raises(WinRMTransportError) as info:
        client.send_message(request)
    assert info.value.code == 500
    assert "fault-marker" in info.value.response_text  # pywinrm decrypted the error body
    assert b"fault-marker" not in proxy.downstream


def test_malformed_bodies_reach_the_dispatcher(server: WsmanServer, recorder: Recorder) -> None:
    junk = b"this is not XML \x00\xff<<"
    client = ntlm(server.url_http or "", server)
    assert client.send_message(junk) == b"<Echo>" + junk + b"</Echo>"
    assert recorder.bodies == [junk]


# --- HTTPS, Basic, certificates ----------------------------------------------------------------


def test_basic_over_https_with_the_generated_ca(server: WsmanServer, recorder: Recorder) -> None:
    assert server.ca_cert_path is not None and os.path.exists(server.ca_cert_path)
    client = Transport(server.url_https or "", username="admin", password=PASSWORD, auth_method="basic",
                       server_cert_validation="validate", ca_trust_path=server.ca_cert_path)
    request = envelope(NS_ENUM + "/Enumerate")
    assert client.send_message(request) == b"<Echo>" + request + b"</Echo>"
    ctx = recorder.calls[0][1]
    assert (ctx.username, ctx.transport, ctx.auth_scheme, ctx.encrypted) == ("admin", "https", "basic", False)


def test_ntlm_over_https_with_channel_binding(recorder: Recorder) -> None:
    with WsmanServer(recorder, users=USERS, http=False, cbt_hardening="strict") as srv:
        client = ntlm(srv.url_https or "", srv, user="CONTOSO\\svc-backup", password="D0main:Pass")
        assert client.send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"
        # A client that binds to another certificate (a TLS interceptor) is refused.
        ctx = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm",
                            channel_bindings=spnego.channel_bindings.GssChannelBindings(
                                application_data=b"tls-server-end-point:" + b"\x00\x01" * 16))
        context = ssl.create_default_context(cafile=srv.ca_cert_path)
        assert srv.port_https is not None
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port_https, context=context, timeout=10)
        status, headers, _ = post(conn, b"", auth_header(ctx.step() or b""))
        assert status == 401
        token = ctx.step(base64.b64decode(headers["WWW-Authenticate"].split(" ", 1)[1]))
        status, headers, _ = post(conn, b"", auth_header(token or b""))
        assert status == 401
        assert headers["WWW-Authenticate"] == "Negotiate, Basic realm=\"WSMAN\"" or \
            headers.get_all("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
        conn.close()
    ctx_seen = recorder.calls[0][1]
    seen = (ctx_seen.username, ctx_seen.transport, ctx_seen.encrypted)
    assert seen == ("CONTOSO\\svc-backup", "https", False)


def test_untrusted_ca_fails_verification(server: WsmanServer, recorder: Recorder, tmp_path: object) -> None:
    other = CertificateAuthority(os.path.join(str(tmp_path), "other-ca"), name="not the simulator's CA")
    client = Transport(server.url_https or "", username="admin", password=PASSWORD, auth_method="basic",
                       server_cert_validation="validate", ca_trust_path=other.cert_path)
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client.send_message(IDENTIFY)
    assert recorder.calls == []


def test_one_ca_can_serve_a_whole_cluster(recorder: Recorder, tmp_path: object) -> None:
    ca = CertificateAuthority(os.path.join(str(tmp_path), "cluster-ca"))
    with WsmanServer(recorder, users=USERS, node="HV01", ca=ca, http=False) as one, \
            WsmanServer(recorder, users=USERS, node="HV02", ca=ca, http=False) as two:
        for srv in (one, two):
            assert srv.ca_cert_path == ca.cert_path
            client = Transport(srv.url_https or "", username="admin", password=PASSWORD, auth_method="basic",
                               ca_trust_path=ca.cert_path)
            client.send_message(IDENTIFY)
    assert [ctx.node for _, ctx in recorder.calls] == ["HV01", "HV02"]


# --- refusals ---------------------------------------------------------------------------------


def test_wrong_password_is_401(server: WsmanServer, recorder: Recorder) -> None:
    for url in (server.url_http, server.url_https):
        client = ntlm(url or "", server, password="wrong")
        with pytest.raises(InvalidCredentialsError):
            client.send_message(IDENTIFY)
    client = Transport(server.url_https or "", username="admin", password="wrong", auth_method="basic",
                       ca_trust_path=server.ca_cert_path)
    with pytest.raises(InvalidCredentialsError):
        client.send_message(IDENTIFY)
    assert recorder.calls == []


def test_unknown_user_and_domain_account_over_basic_are_401(server: WsmanServer) -> None:
    for user, password in (("nobody", PASSWORD), ("CONTOSO\\svc-backup", "D0main:Pass")):
        client = Transport(server.url_https or "", username=user, password=password, auth_method="basic",
                           ca_trust_path=server.ca_cert_path)
        with pytest.raises(InvalidCredentialsError):
            client.send_message(IDENTIFY)


def test_basic_over_http_is_refused_unless_configured(server: WsmanServer, recorder: Recorder) -> None:
    client = Transport(server.url_http or "", username="admin", password=PASSWORD, auth_method="basic",
                       ca_trust_path=None)
    with pytest.raises(InvalidCredentialsError):
        client.send_message(IDENTIFY)
    assert recorder.calls == []
    with WsmanServer(recorder, users=USERS, https=False, basic_over_http=True, allow_unencrypted=True) as srv:
        client = Transport(srv.url_http or "", username="admin", password=PASSWORD, auth_method="basic",
                           ca_trust_path=None)
        assert client.send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"


def test_no_credentials_gets_the_offered_schemes(server: WsmanServer) -> None:
    assert server.port_http is not None and server.port_https is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port_http, timeout=10)
    status, headers, _ = post(conn, IDENTIFY, {"Content-Type": "application/soap+xml;charset=UTF-8"})
    assert status == 401
    assert headers.get_all("WWW-Authenticate") == ["Negotiate"]  # no Basic over HTTP
    assert headers["Server"] == "Microsoft-HTTPAPI/2.0"
    conn.close()
    https = http.client.HTTPSConnection("127.0.0.1", server.port_https, timeout=10,
                                        context=ssl.create_default_context(cafile=server.ca_cert_path))
    status, headers, _ = post(https, IDENTIFY, {})
    assert status == 401
    assert headers.get_all("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
    https.close()


@pytest.mark.parametrize("scheme", ["Kerberos", "CredSSP"])
def test_kerberos_and_credssp_are_refused_clearly(server: WsmanServer, recorder: Recorder,
                                                  scheme: str) -> None:
    assert server.port_http is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port_http, timeout=10)
    credentials = {"Authorization": scheme + " " + base64.b64encode(b"x" * 40).decode()}
    status, headers, body = post(conn, IDENTIFY, credentials)
    assert status == 401
    assert b"not supported by this simulator" in body and scheme.lower().encode() in body
    assert headers.get_all("WWW-Authenticate") == ["Negotiate"]
    conn.close()
    assert recorder.calls == []


def test_kerberos_inside_negotiate_is_refused(server: WsmanServer, recorder: Recorder) -> None:
    assert server.port_http is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port_http, timeout=10)
    krb5_ap_req = b"\x60\x2a\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00" + b"\x6e\x1a" + b"\x00" * 26
    status, headers, _ = post(conn, IDENTIFY, auth_header(krb5_ap_req))
    assert status == 401
    assert headers.get_all("WWW-Authenticate") == ["Negotiate"]
    # The connection stays usable: a proper handshake on it still works.
    ctx = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm")
    status, headers, _ = post(conn, b"", auth_header(ctx.step() or b""))
    assert status == 401
    token = ctx.step(base64.b64decode(headers["WWW-Authenticate"].split(" ", 1)[1]))
    status, _, _ = post(conn, b"", auth_header(token or b""))
    assert status == 200
    conn.close()
    assert recorder.calls == []


# --- fault injection ---------------------------------------------------------------------------


def test_drop_connection_before_dispatch(server: WsmanServer, recorder: Recorder, plan: FaultPlan) -> None:
    rule = plan.add(DROP_CONNECTION, "Enumerate")
    client = ntlm(server.url_http or "", server)
    client.send_message(IDENTIFY)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send_message(envelope(NS_ENUM + "/Enumerate", marker="dropped"))
    assert rule.fired == 1
    assert not any(b"dropped" in body for body in recorder.bodies)
    # The next client gets through: the rule fired once.
    fresh = ntlm(server.url_http or "", server)
    request = envelope(NS_ENUM + "/Enumerate", marker="second")
    assert fresh.send_message(request) == b"<Echo>" + request + b"</Echo>"


def test_drop_connection_after_dispatch_loses_the_reply(server: WsmanServer, recorder: Recorder,
                                                        plan: FaultPlan) -> None:
    plan.add(DROP_CONNECTION, "Invoke", dispatch=True)
    client = ntlm(server.url_https or "", server)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send_message(envelope(WMI + "/Msvm_VirtualSystemSnapshotService/CreateSnapshot",
                                     marker="done"))
    assert len(recorder.calls) == 1 and b"done" in recorder.bodies[0]


def test_slow_response_holds_the_answer(server: WsmanServer, recorder: Recorder, plan: FaultPlan) -> None:
    plan.add(SLOW_RESPONSE, "Get", seconds=0.6)
    client = ntlm(server.url_http or "", server)
    client.send_message(IDENTIFY)  # not a Get: answered at once
    start = time.monotonic()
    request = envelope(NS_TRANSFER + "/Get")
    assert client.send_message(request) == b"<Echo>" + request + b"</Echo>"
    assert time.monotonic() - start >= 0.6
    start = time.monotonic()
    client.send_message(request)  # fired once only
    assert time.monotonic() - start < 0.5


def test_slow_response_times_out_the_client_and_stop_cuts_it_short(recorder: Recorder,
                                                                   plan: FaultPlan) -> None:
    plan.add(SLOW_RESPONSE, None, seconds=60)
    srv = WsmanServer(recorder, users=USERS, faults=plan, https=False).start()
    try:
        client = ntlm(srv.url_http or "", srv, read_timeout_sec=1)
        with pytest.raises(requests.exceptions.ReadTimeout):
            client.send_message(IDENTIFY)
    finally:
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 5


def test_auth_failure_with_good_credentials(server: WsmanServer, recorder: Recorder, plan: FaultPlan) -> None:
    rule = plan.add(AUTH_FAILURE)
    with pytest.raises(InvalidCredentialsError):
        ntlm(server.url_http or "", server).send_message(IDENTIFY)
    assert rule.fired == 1
    assert recorder.calls == []
    assert ntlm(server.url_http or "", server).send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"


def test_auth_failure_on_an_authenticated_connection(server: WsmanServer, recorder: Recorder,
                                                     plan: FaultPlan) -> None:
    plan.add(AUTH_FAILURE, "Pull")
    client = ntlm(server.url_http or "", server)
    client.send_message(envelope(NS_ENUM + "/Enumerate"))
    with pytest.raises(InvalidCredentialsError):
        client.send_message(envelope(NS_ENUM + "/Pull", marker="refused"))
    assert not any(b"refused" in body for body in recorder.bodies)
    assert ntlm(server.url_http or "", server).send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"


def test_auth_failure_with_basic(server: WsmanServer, recorder: Recorder, plan: FaultPlan) -> None:
    plan.add(AUTH_FAILURE, "Get")
    client = Transport(server.url_https or "", username="admin", password=PASSWORD, auth_method="basic",
                       ca_trust_path=server.ca_cert_path)
    client.send_message(IDENTIFY)
    with pytest.raises(InvalidCredentialsError):
        client.send_message(envelope(NS_TRANSFER + "/Get"))
    assert len(recorder.calls) == 1


def test_sniff_operation() -> None:
    assert sniff_operation(envelope(NS_TRANSFER + "/Get")) == "Get"
    assert sniff_operation(envelope(NS_ENUM + "/Enumerate")) == "Enumerate"
    assert sniff_operation(envelope(NS_ENUM + "/Pull")) == "Pull"
    assert sniff_operation(envelope(WMI + "/Msvm_VirtualSystemSnapshotService/CreateSnapshot")) == "Invoke"
    assert sniff_operation(IDENTIFY) == "Identify"
    assert sniff_operation(b"not xml") is None
    assert sniff_operation(b"") is None


# --- lifecycle and hygiene ----------------------------------------------------------------------


def test_stop_leaves_no_threads_and_closes_every_socket(recorder: Recorder) -> None:
    before = {t.ident for t in threading.enumerate()}
    srv = WsmanServer(recorder, users=USERS).start()
    assert srv.port_http is not None and srv.port_https is not None
    ports = (srv.port_http, srv.port_https)
    ca_path = srv.ca_cert_path
    client = ntlm(srv.url_http or "", srv)
    client.send_message(IDENTIFY)  # an authenticated keep-alive connection stays open
    idle_http = socket.create_connection(("127.0.0.1", ports[0]))
    half_tls = socket.create_connection(("127.0.0.1", ports[1]))  # TLS handshake never started
    time.sleep(0.2)
    assert len({t.ident for t in threading.enumerate()} - before) >= 5

    srv.stop()

    assert {t.ident for t in threading.enumerate()} - before == set()
    for sock in (idle_http, half_tls):
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed its end
        sock.close()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert ca_path is not None and not os.path.exists(ca_path)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send_message(IDENTIFY)
    client.close_session()


def test_start_twice_is_an_error_and_restart_after_stop_works(recorder: Recorder) -> None:
    srv = WsmanServer(recorder, users=USERS, https=False)
    with srv, pytest.raises(RuntimeError, match="already started"):
        srv.start()
    with srv:
        assert ntlm(srv.url_http or "", srv).send_message(IDENTIFY) == b"<Echo>" + IDENTIFY + b"</Echo>"


def test_credentials_never_appear_in_logs(server: WsmanServer, plan: FaultPlan,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ntlm(server.url_http or "", server).send_message(IDENTIFY)
    with pytest.raises(InvalidCredentialsError):
        ntlm(server.url_http or "", server, password=PASSWORD + "-typo").send_message(IDENTIFY)
    basic = Transport(server.url_https or "", username="admin", password=PASSWORD, auth_method="basic",
                      ca_trust_path=server.ca_cert_path)
    basic.send_message(IDENTIFY)
    plan.add(AUTH_FAILURE)
    with pytest.raises(InvalidCredentialsError):
        basic.send_message(IDENTIFY)
    text = caplog.text
    assert "hvsim.server" in text  # the server did log
    for secret in (PASSWORD, PASSWORD + "-typo", base64.b64encode(("admin:" + PASSWORD).encode()).decode()):
        assert secret not in text


def test_envelope_context_for_both_listeners(server: WsmanServer, recorder: Recorder) -> None:
    ntlm(server.url_http or "", server).send_message(IDENTIFY)
    ntlm(server.url_https or "", server).send_message(IDENTIFY)
    transports = [(ctx.transport, ctx.encrypted) for _, ctx in recorder.calls]
    assert transports == [("http", True), ("https", False)]
    ids = {ctx.connection_id for _, ctx in recorder.calls}
    assert len(ids) == 2
