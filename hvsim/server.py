"""The simulator's WinRM listener: POST /wsman over HTTP and HTTPS, as a Windows node answers it.

One :class:`WsmanServer` is one node's WinRM service. It owns the HTTP concerns only:
listeners, keep-alive connections, authentication (Negotiate/NTLM bound to the TCP connection,
Basic over HTTPS for local accounts), WinRM message encryption over HTTP, the refusal of
unencrypted SOAP over HTTP (``AllowUnencrypted=false``), and the transport-level faults of a
:class:`hvsim.faults.FaultPlan`. Every authenticated SOAP envelope, decrypted, goes to a
dispatcher callable which answers with an HTTP status and an envelope; the server encrypts the
answer when the request was encrypted. What the envelope says (including whether it is XML at
all) is the dispatcher's business.

Transport faults (``FaultPlan.fire(kind, target)``), with ``target`` the WS-Man operation sniffed
from the envelope's ``a:Action`` (``Get``, ``Enumerate``, ``Pull``, ``Invoke``...; ``Identify``
for a ``wsmid:Identify`` body) or None when there is no envelope:

* ``AUTH_FAILURE``: evaluated on every request that would pass authentication (including the
  empty POST that completes an NTLM handshake). The request gets HTTP 401, the connection loses
  its security context, and when the connection had been authenticated before, the client's
  automatic re-authentication on it is refused too, so a client sees the credentials rejected.
* ``DROP_CONNECTION``: evaluated for each envelope; the connection is closed without an answer,
  before the dispatcher runs, or after it with ``params["dispatch"]=True`` (a lost reply to an
  operation that did happen).
* ``SLOW_RESPONSE``: evaluated for each envelope; the answer is held ``params["seconds"]`` after
  the dispatcher ran (``stop()`` cuts the wait short).

Passwords, ``Authorization`` values and bodies never reach a log line.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import logging
import re
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Tuple, Type

from hvsim import faults as _faults
from hvsim.auth import (
    CBT_LEVELS,
    CBT_RELAXED,
    ENCRYPTED_CONTENT_TYPE,
    SOAP_CONTENT_TYPE,
    SPNEGO_ENCRYPTED_PROTOCOL,
    AuthenticationFailed,
    EncryptionError,
    NegotiateAcceptor,
    UserDatabase,
    parse_basic,
)
from hvsim.tls import CertificateAuthority, ServerCertificate

log = logging.getLogger(__name__)

TRANSPORT_HTTP = "http"
TRANSPORT_HTTPS = "https"
AUTH_NEGOTIATE = "negotiate"
AUTH_BASIC = "basic"

WSMAN_PATH = "/wsman"
# What HTTP.sys calls itself in the Server header of a WinRM answer.
SERVER_HEADER = "Microsoft-HTTPAPI/2.0"
BASIC_CHALLENGE = 'Basic realm="WSMAN"'
# Far above WinRM's MaxEnvelopeSizekb (500): the dispatcher enforces the SOAP limit and answers
# with a fault; this one only keeps a runaway client from filling memory.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# HTTP.sys closes an idle keep-alive connection after 120 s.
IDLE_TIMEOUT = 120.0
TLS_HANDSHAKE_TIMEOUT = 10.0
# How long stop() waits for a connection thread that is inside the dispatcher.
STOP_JOIN_TIMEOUT = 10.0
# serve_forever's poll interval bounds how long stop() waits for the accept loop.
ACCEPT_POLL_INTERVAL = 0.05
LISTEN_BACKLOG = 64

Dispatcher = Callable[[bytes, "RequestContext"], Tuple[int, bytes]]

_NS_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_NS_ENUMERATION = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/"
_NS_EVENTING = "http://schemas.xmlsoap.org/ws/2004/08/eventing/"
_ACTION_RE = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?Action(?:\s[^>]*)?>\s*([^<\s]+)\s*</", re.DOTALL)
_IDENTIFY_RE = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?Identify[\s/>]")


@dataclass(frozen=True)
class RequestContext:
    """Who sent an envelope and how; handed to the dispatcher with each request."""

    node: str
    username: str  # the account name as configured in the server's users
    transport: str  # TRANSPORT_HTTP or TRANSPORT_HTTPS
    auth_scheme: str  # AUTH_NEGOTIATE or AUTH_BASIC
    encrypted: bool  # WinRM message-level encryption was used
    client_address: Tuple[str, int]
    connection_id: int  # same value for every request on one TCP connection


def sniff_operation(envelope: bytes) -> str | None:
    """The WS-Man operation an envelope asks for, cheaply, without parsing it; None if unknown.

    Transfer and enumeration actions map to their last segment (``Get``, ``Enumerate``...),
    WMI method actions to ``Invoke``, an Action-less ``wsmid:Identify`` body to ``Identify``.
    """
    match = _ACTION_RE.search(envelope)
    if match is None:
        return "Identify" if _IDENTIFY_RE.search(envelope) else None
    action = match.group(1).decode("utf-8", "replace")
    last = action.rstrip("/").rsplit("/", 1)[-1]
    if action.startswith((_NS_TRANSFER, _NS_ENUMERATION, _NS_EVENTING)):
        return last
    if action.startswith(("http://schemas.microsoft.com/wbem/wsman/1/wmi/",
                          "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/")):
        return "Invoke"
    return last or None


class _Connection:
    """One client TCP connection and the security context bound to it."""

    def __init__(self, conn_id: int, sock: socket.socket, transport: str) -> None:
        self.id = conn_id
        self.sock = sock
        self.transport = transport
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.negotiate: NegotiateAcceptor | None = None
        # Set when AUTH_FAILURE fired on an authenticated connection: the client's automatic
        # re-authentication on this connection is refused once more.
        self.refuse_next_auth = False

    def reset_security(self) -> None:
        self.negotiate = None

    def abort(self) -> None:
        """Cut the connection from another thread: the handler's pending read returns EOF."""
        with self.lock:
            if self.closed:
                return
            # socket.socket.shutdown acts on the descriptor; SSLSocket.shutdown would also
            # drop the SSL object under the feet of the thread that is reading it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            self.sock.close()


class _Listener(socketserver.TCPServer):
    """One listening socket (HTTP or HTTPS) of a node; each connection gets its own thread."""

    allow_reuse_address = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, owner: WsmanServer, host: str, transport: str,
                 tls: ssl.SSLContext | None, channel_binding: bytes | None) -> None:
        self.owner = owner
        self.transport = transport
        self.tls = tls
        self.channel_binding = channel_binding
        super().__init__((host, 0), _Handler, bind_and_activate=True)  # type: ignore[arg-type]

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = self.owner._register(request, self.transport)
        thread = threading.Thread(
            target=self._serve_connection, args=(conn, client_address),
            name=f"hvsim-{self.owner.node}-{self.transport}-conn{conn.id}", daemon=True)
        conn.thread = thread
        thread.start()

    def _serve_connection(self, conn: _Connection, client_address: Tuple[str, int]) -> None:
        try:
            if self.tls is not None:
                with conn.lock:
                    if conn.closed:
                        return
                    conn.sock.settimeout(TLS_HANDSHAKE_TIMEOUT)
                    conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                                     do_handshake_on_connect=False)
                conn.sock.do_handshake()
            _Handler(conn.sock, client_address, self, conn)
        except (OSError, ssl.SSLError) as err:
            # A client that rejects our certificate, or vanishes, ends here; not a server error.
            if not self.owner._stopping.is_set():
                log.debug("%s %s connection %d from %s ended: %s", self.owner.node, self.transport,
                          conn.id, client_address[0], err)
        except Exception:
            log.exception("%s %s connection %d: unexpected error", self.owner.node, self.transport, conn.id)
        finally:
            conn.close()
            self.owner._unregister(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s %s: error accepting a connection", self.owner.node, self.transport)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Requests of one connection; instance attributes are the connection's state."""

    protocol_version = "HTTP/1.1"
    server_version = SERVER_HEADER
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Listener

    def __init__(self, request: Any, client_address: Any, server: _Listener, conn: _Connection) -> None:
        self.conn = conn
        super().__init__(request, client_address, server)

    def version_string(self) -> str:
        return SERVER_HEADER

    def setup(self) -> None:
        super().setup()
        # The handler writes the headers and the body in two sends; with Nagle's algorithm the body
        # then waits for the client's delayed ACK of the headers, 40 ms per request on Linux, which
        # made every WS-Man call of the simulator ~45 ms.  HTTP.sys sends a response at once.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- logging: the request line and status only (no headers, no bodies) -------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s conn %d %s: " + format, self.server.owner.node, self.server.transport,
                  self.conn.id, self.client_address[0], *args)

    # -- HTTP methods --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._read_body()
        self._send(405, b"", extra=[("Allow", "POST")])

    do_PUT = do_GET
    do_DELETE = do_GET

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if self.path.split("?", 1)[0].rstrip("/").lower() != WSMAN_PATH:
            self._send(404, b"")
            return
        self._serve_wsman(body)

    # -- the WinRM request pipeline ------------------------------------------------------------

    def _serve_wsman(self, body: bytes) -> None:
        owner = self.server.owner
        conn = self.conn
        transport = self.server.transport
        auth_header = self.headers.get("Authorization")
        scheme = ""
        username: str | None = None
        mutual_token: bytes | None = None
        just_authenticated = False
        had_context = conn.negotiate is not None and conn.negotiate.complete

        if auth_header:
            scheme, _, value = auth_header.strip().partition(" ")
            scheme = scheme.lower()
            if scheme == AUTH_NEGOTIATE:
                outcome = self._negotiate(value.strip())
                if outcome is None:
                    return
                username, mutual_token = outcome
                just_authenticated = True
                had_context = False
            elif scheme == AUTH_BASIC:
                username = self._basic(value)
                if username is None:
                    return
                just_authenticated = True
            else:
                log.info("%s %s: refused %r authentication from %s: the simulator supports Negotiate "
                         "(NTLM) and Basic only", owner.node, transport, scheme, self.client_address[0])
                self._send_401(message=f"hvsim: the {scheme} authentication scheme is not supported by this "
                                       "simulator; use Negotiate (NTLM), or Basic over HTTPS")
                return
        elif conn.negotiate is not None and conn.negotiate.complete:
            scheme = AUTH_NEGOTIATE
            username = conn.negotiate.username
        else:
            self._send_401()
            return
        assert username is not None

        encrypted = self._is_encrypted()
        if encrypted:
            if scheme != AUTH_NEGOTIATE or conn.negotiate is None:
                log.info("%s %s: encrypted body without a Negotiate security context from %s",
                         owner.node, transport, self.client_address[0])
                self._send(400, b"", close=True)
                return
            try:
                envelope = conn.negotiate.unseal(body)
            except EncryptionError as err:
                log.info("%s %s: cannot decrypt a request from %s: %s", owner.node, transport,
                         self.client_address[0], err)
                # The NTLM sequence numbers no longer agree: the context is unusable.
                conn.reset_security()
                self._send(400, b"", close=True)
                return
        else:
            envelope = body
        target = sniff_operation(envelope) if envelope else None

        if owner.faults is not None and owner.faults.fire(_faults.AUTH_FAILURE, target):
            log.info("%s %s: fault injection: refusing the credentials of %r", owner.node, transport,
                     username)
            conn.reset_security()
            conn.refuse_next_auth = scheme == AUTH_NEGOTIATE and had_context
            self._send_401()
            return

        if not envelope and just_authenticated and scheme == AUTH_NEGOTIATE:
            # The empty POST that clients send to set up message encryption.
            self._send(200, b"", mutual_token=mutual_token)
            return

        if not encrypted and transport == TRANSPORT_HTTP and not owner.allow_unencrypted:
            # Service/AllowUnencrypted=false: Windows answers an empty HTTP 500.
            log.info("%s %s: refused an unencrypted request from %s (AllowUnencrypted=false)",
                     owner.node, transport, self.client_address[0])
            self._send(500, b"", mutual_token=mutual_token)
            return

        context = RequestContext(node=owner.node, username=username, transport=transport,
                                 auth_scheme=scheme, encrypted=encrypted,
                                 client_address=(str(self.client_address[0]), int(self.client_address[1])),
                                 connection_id=conn.id)

        if owner.faults is not None:
            drop = owner.faults.fire(_faults.DROP_CONNECTION, target)
            if drop is not None:
                if drop.params.get("dispatch"):
                    owner._dispatch(envelope, context)
                log.info("%s %s: fault injection: dropping connection %d at %s", owner.node, transport,
                         conn.id, target)
                self._drop()
                return
            slow = owner.faults.fire(_faults.SLOW_RESPONSE, target)
        else:
            slow = None

        status, response = owner._dispatch(envelope, context)

        if slow is not None:
            seconds = float(slow.params.get("seconds", 0.0))
            log.info("%s %s: fault injection: holding the answer to %s for %.1f s", owner.node, transport,
                     target, seconds)
            if owner._stopping.wait(seconds):
                self._drop()
                return

        if encrypted and response:
            assert conn.negotiate is not None
            self._send(status, conn.negotiate.seal(response), content_type=ENCRYPTED_CONTENT_TYPE,
                       mutual_token=mutual_token)
        else:
            self._send(status, response, content_type=SOAP_CONTENT_TYPE if response else None,
                       mutual_token=mutual_token)

    def _negotiate(self, token_b64: str) -> Tuple[str, bytes | None] | None:
        """One Negotiate leg; returns (user, token for the client) when the handshake completed.

        Otherwise the 401 (challenge or refusal) has been sent and None is returned.
        """
        owner = self.server.owner
        conn = self.conn
        try:
            token = base64.b64decode(token_b64, validate=True)
        except ValueError:
            token = b""
        if not token:
            conn.reset_security()
            self._send_401()
            return None
        if conn.negotiate is None or conn.negotiate.complete:
            # A new handshake on the connection replaces the old context.
            conn.negotiate = owner._new_acceptor(self.server.channel_binding)
        acceptor = conn.negotiate
        try:
            out = acceptor.step(token)
        except AuthenticationFailed as err:
            log.info("%s %s: Negotiate authentication failed from %s: %s", owner.node,
                     self.server.transport, self.client_address[0], err)
            conn.reset_security()
            self._send_401()
            return None
        if not acceptor.complete:
            self._send_401(token=out)
            return None
        if conn.refuse_next_auth:
            conn.refuse_next_auth = False
            conn.reset_security()
            log.info("%s %s: fault injection: refusing the re-authentication of %r", owner.node,
                     self.server.transport, acceptor.username)
            self._send_401()
            return None
        assert acceptor.username is not None
        log.debug("%s %s conn %d: %r authenticated with Negotiate", owner.node, self.server.transport,
                  conn.id, acceptor.username)
        return acceptor.username, out

    def _basic(self, value: str) -> str | None:
        """Check Basic credentials; returns the user, or None after sending the 401."""
        owner = self.server.owner
        transport = self.server.transport
        if not owner._basic_allowed(transport):
            log.info("%s %s: refused Basic authentication from %s (Basic is %s)", owner.node, transport,
                     self.client_address[0], "disabled" if not owner.basic else "allowed over HTTPS only")
            self._send_401()
            return None
        parsed = parse_basic(value)
        user = owner._users.check_basic(*parsed) if parsed else None
        if user is None:
            log.info("%s %s: Basic authentication failed from %s for %r", owner.node, transport,
                     self.client_address[0], parsed[0] if parsed else "(malformed)")
            self._send_401()
            return None
        if self.conn.refuse_next_auth:
            self.conn.refuse_next_auth = False
            self._send_401()
            return None
        return user

    # -- helpers -------------------------------------------------------------------------------

    def _is_encrypted(self) -> bool:
        content_type = self.headers.get("Content-Type", "")
        main = content_type.split(";", 1)[0].strip().lower()
        if main == "multipart/encrypted":
            return True
        return SPNEGO_ENCRYPTED_PROTOCOL.lower() in content_type.lower()

    def _read_body(self) -> bytes | None:
        """Read the request body (Content-Length or chunked); None after answering an error."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        try:
            length = int(raw_length) if raw_length is not None else 0
        except ValueError:
            length = -1
        if length < 0:
            self._send(400, b"", close=True)
            return None
        if length > MAX_REQUEST_BYTES:
            self._send(413, b"", close=True)
            return None
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            return None
        return data

    def _read_chunked(self) -> bytes | None:
        chunks: List[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._send(400, b"", close=True)
                return None
            if size == 0:
                break
            total += size
            if total > MAX_REQUEST_BYTES:
                self._send(413, b"", close=True)
                return None
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                self.close_connection = True
                return None
            chunks.append(chunk)
            self.rfile.readline(16)  # CRLF after the chunk
        while self.rfile.readline(1024).strip():  # trailers
            pass
        return b"".join(chunks)

    def _send_401(self, token: bytes | None = None, message: str = "") -> None:
        headers: List[Tuple[str, str]] = []
        if token:
            headers.append(("WWW-Authenticate", _negotiate_value(token)))
        else:
            headers.append(("WWW-Authenticate", "Negotiate"))
            if self.server.owner._basic_allowed(self.server.transport):
                headers.append(("WWW-Authenticate", BASIC_CHALLENGE))
        body = message.encode("utf-8")
        self._send(401, body, content_type="text/plain;charset=UTF-8" if body else None, extra=headers)

    def _send(self, status: int, body: bytes, content_type: str | None = None, *,
              mutual_token: bytes | None = None, extra: List[Tuple[str, str]] | None = None,
              close: bool = False) -> None:
        self.send_response(status)
        for name, value in extra or []:
            self.send_header(name, value)
        if mutual_token:
            self.send_header("WWW-Authenticate", _negotiate_value(mutual_token))
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        self.conn.abort()


class WsmanServer:
    """A simulated node's WinRM service on 127.0.0.1 (ephemeral ports), HTTP and/or HTTPS.

    ``users`` maps account names (``user`` for a local account, ``DOMAIN\\user`` for a domain
    account) to passwords. ``ca`` signs the HTTPS certificate (share one across the nodes of a
    cluster so that one trust file covers them all); without it the server makes its own. The
    files (CA certificate, server key, NTLM account store) live in ``workdir``, a private
    temporary directory by default, removed by :meth:`stop`.

    Windows settings it mirrors: ``allow_unencrypted`` (Service/AllowUnencrypted), ``basic``
    (Service/Auth/Basic), ``cbt_hardening`` (Service/Auth/CbtHardeningLevel: none, relaxed,
    strict). ``basic_over_http`` lets Basic through on plain HTTP, which Windows only does with
    AllowUnencrypted.
    """

    def __init__(self, dispatch: Dispatcher, *, users: Mapping[str, str], node: str = "hv01",
                 http: bool = True, https: bool = True, faults: _faults.FaultPlan | None = None,
                 allow_unencrypted: bool = False, basic: bool = True, basic_over_http: bool = False,
                 ca: CertificateAuthority | None = None, workdir: str | None = None,
                 cbt_hardening: str = CBT_RELAXED, host: str = "127.0.0.1") -> None:
        if not (http or https):
            raise ValueError("hvsim: WsmanServer needs http=True, https=True or both")
        if cbt_hardening not in CBT_LEVELS:
            raise ValueError(
                f"hvsim: cbt_hardening must be one of {', '.join(CBT_LEVELS)}, not {cbt_hardening!r}")
        self.dispatch = dispatch
        self.node = node
        self.faults = faults
        self.allow_unencrypted = allow_unencrypted
        self.basic = basic
        self.basic_over_http = basic_over_http
        self.cbt_hardening = cbt_hardening
        self.host = host
        self._want_http = http
        self._want_https = https
        self._users = UserDatabase(users, node)
        self._ca = ca
        self._workdir_arg = workdir
        self._workdir: str | None = None
        self._own_workdir = False
        self._store_path = ""
        self._listeners: Dict[str, _Listener] = {}
        self._serve_threads: List[threading.Thread] = []
        self._connections: Dict[int, _Connection] = {}
        self._conn_lock = threading.Lock()
        self._conn_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._started = False
        self.certificate: ServerCertificate | None = None
        self.ca_cert_path: str | None = None
        self.port_http: int | None = None
        self.port_https: int | None = None
        self.url_http: str | None = None
        self.url_https: str | None = None

    def __repr__(self) -> str:
        return f"WsmanServer(node={self.node!r}, http={self.url_http!r}, https={self.url_https!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> WsmanServer:
        """Bind the listeners and start serving; returns self."""
        if self._started:
            raise RuntimeError(f"hvsim: WsmanServer for {self.node} is already started")
        self._started = True
        self._stopping.clear()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self._workdir_arg is None:
            self._workdir = tempfile.mkdtemp(prefix=f"hvsim-{_safe(self.node)}-")
            self._own_workdir = True
        else:
            self._workdir = self._workdir_arg
        workdir = self._workdir
        self._store_path = f"{workdir}/ntlm-users-{_safe(self.node)}"
        self._users.write_ntlm_store(self._store_path)
        if self._want_http:
            listener = _Listener(self, self.host, TRANSPORT_HTTP, None, None)
            self._listeners[TRANSPORT_HTTP] = listener
            self.port_http = listener.server_address[1]
            self.url_http = f"http://{self.host}:{self.port_http}{WSMAN_PATH}"
        if self._want_https:
            ca = self._ca or CertificateAuthority(f"{workdir}/tls", name=f"hvsim CA for {self.node}")
            self.certificate = ca.issue_server_certificate(self.node, file_stem=_safe(self.node) + "-wsman")
            self.ca_cert_path = self.certificate.ca_cert_path
            listener = _Listener(self, self.host, TRANSPORT_HTTPS, self.certificate.server_context(),
                                 self.certificate.channel_binding_hash())
            self._listeners[TRANSPORT_HTTPS] = listener
            self.port_https = listener.server_address[1]
            self.url_https = f"https://{self.host}:{self.port_https}{WSMAN_PATH}"
        for transport, listener in self._listeners.items():
            thread = threading.Thread(target=listener.serve_forever, args=(ACCEPT_POLL_INTERVAL,),
                                      name=f"hvsim-{self.node}-{transport}-accept", daemon=True)
            self._serve_threads.append(thread)
            thread.start()
        log.info("%s: WinRM listening on %s", self.node,
                 ", ".join(u for u in (self.url_http, self.url_https) if u))

    def stop(self) -> None:
        """Close the listeners and every live connection, join all threads, remove temporary files."""
        self._stopping.set()
        for listener in self._listeners.values():
            if any(t.is_alive() for t in self._serve_threads):
                listener.shutdown()
            listener.server_close()
        for thread in self._serve_threads:
            thread.join()
        self._serve_threads.clear()
        self._listeners.clear()
        with self._conn_lock:
            live = list(self._connections.values())
        for conn in live:
            conn.abort()
        for conn in live:
            if conn.thread is not None and conn.thread is not threading.current_thread():
                conn.thread.join(STOP_JOIN_TIMEOUT)
                if conn.thread.is_alive():
                    log.warning("%s: connection thread %s still busy after %.0f s", self.node,
                                conn.thread.name, STOP_JOIN_TIMEOUT)
        if self._own_workdir and self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._own_workdir = False
        self._started = False

    def __enter__(self) -> WsmanServer:
        return self.start()

    def __exit__(self, exc_type: Type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- used by the listeners and handlers ----------------------------------------------------

    def _register(self, sock: socket.socket, transport: str) -> _Connection:
        conn = _Connection(next(self._conn_ids), sock, transport)
        with self._conn_lock:
            self._connections[conn.id] = conn
        return conn

    def _unregister(self, conn: _Connection) -> None:
        with self._conn_lock:
            self._connections.pop(conn.id, None)

    def _new_acceptor(self, channel_binding: bytes | None) -> NegotiateAcceptor:
        return NegotiateAcceptor(self._users, self._store_path, hostname=self.node,
                                 channel_binding=channel_binding, cbt_hardening=self.cbt_hardening)

    def _basic_allowed(self, transport: str) -> bool:
        return self.basic and (transport == TRANSPORT_HTTPS or self.basic_over_http)

    def _dispatch(self, envelope: bytes, context: RequestContext) -> Tuple[int, bytes]:
        try:
            status, response = self.dispatch(envelope, context)
        except Exception:
            log.exception("%s: the dispatcher failed on a request from %r", self.node, context.username)
            return 500, b""
        return int(status), bytes(response)


def _negotiate_value(token: bytes) -> str:
    return "Negotiate " + base64.b64encode(token).decode("ascii")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "node"


__all__ = [
    "AUTH_BASIC",
    "AUTH_NEGOTIATE",
    "TRANSPORT_HTTP",
    "TRANSPORT_HTTPS",
    "Dispatcher",
    "RequestContext",
    "WsmanServer",
    "sniff_operation",
]
