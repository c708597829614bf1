"""A tiny WS-Man endpoint for client tests: real HTTP on 127.0.0.1, Basic auth, canned answers.

Not a simulator: each test gives a ``responder`` that maps the parsed request envelope
to a :class:`Reply`.  The server checks the Authorization header (HTTP 401 otherwise),
records every request, can drop a connection without answering, and fills the
``{relates_to}`` placeholder with the request's MessageID so that answers pass the
client's RelatesTo check unless a test wants otherwise.

Loaded by path (tests use ``--import-mode=importlib``): see ``load()`` callers.
"""

from __future__ import annotations

import base64
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, List

from lxml import etree

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "n": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "b": "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "cim": "http://schemas.dmtf.org/wbem/wscim/1/common",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd",
}
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"
FIXTURES = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared")


@dataclass
class Reply:
    """What the server answers: a body (``{relates_to}`` substituted), a status, or a dropped connection."""

    body: str = ""
    status: int = 200
    drop: bool = False


@dataclass
class Request:
    """One recorded request."""

    envelope: etree._Element
    raw: bytes

    def text(self, path: str) -> str | None:
        """Text at an XPath (``NS`` prefixes) or None."""
        found = self.envelope.xpath(path, namespaces=NS)
        if not found:
            return None
        first = found[0]
        return first if isinstance(first, str) else first.text

    @property
    def action(self) -> str:
        return self.text("/s:Envelope/s:Header/a:Action") or ("Identify" if self.is_identify else "")

    @property
    def resource_uri(self) -> str | None:
        return self.text("/s:Envelope/s:Header/w:ResourceURI")

    @property
    def message_id(self) -> str | None:
        return self.text("/s:Envelope/s:Header/a:MessageID")

    @property
    def is_identify(self) -> bool:
        return bool(self.envelope.xpath("/s:Envelope/s:Body/wsmid:Identify", namespaces=NS))

    @property
    def body(self) -> etree._Element:
        return self.envelope.xpath("/s:Envelope/s:Body", namespaces=NS)[0]


Responder = Callable[[Request], Reply]


@dataclass
class ReplayServer:
    """HTTP(S) server on 127.0.0.1:<ephemeral>; ``with`` starts and stops it."""

    responder: Responder
    username: str = "hvbackup"
    password: str = "S3cret!pw"
    certfile: str | None = None
    keyfile: str | None = None
    requests: List[Request] = field(default_factory=list)
    auth_failures: int = 0

    def __enter__(self) -> ReplayServer:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                if self.headers.get("Authorization") != expected:
                    server.auth_failures += 1
                    self._send(401, b"", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
                    return
                envelope = etree.fromstring(data)
                request = Request(envelope, data)
                server.requests.append(request)
                reply = server.responder(request)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = reply.body.replace("{relates_to}", request.message_id or "").encode("utf-8")
                self._send(reply.status, body, {"Content-Type": "application/soap+xml;charset=UTF-8"})

            def _send(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certfile, self.keyfile)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])


def envelope(
    body: str,
    action: str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse",
    relates_to: str = "{relates_to}",
) -> str:
    """A response envelope around ``body`` (all NS prefixes declared)."""
    decls = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())
    return (
        f"<s:Envelope {decls}><s:Header><a:Action>{action}</a:Action>"
        f"<a:MessageID>uuid:11111111-2222-3333-4444-555555555555</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def fixture_reply(name: str, status: int = 500) -> Reply:
    """A fixture envelope from shared/fixtures/wsman-soap with its RelatesTo pointed at the request."""
    text = (FIXTURES / "wsman-soap" / name).read_text(encoding="utf-8")
    text = re.sub(r"<\?xml[^>]*\?>", "", text)
    text = re.sub(r"<a:RelatesTo>[^<]*</a:RelatesTo>", "<a:RelatesTo>{relates_to}</a:RelatesTo>", text)
    return Reply(text, status=status)


def epr_xml(class_name: str, selectors: dict, namespace_uri: str = V2) -> str:
    """``a:Address`` + ``a:ReferenceParameters`` content for an EPR."""
    sels = "".join(f'<w:Selector Name="{k}">{v}</w:Selector>' for k, v in selectors.items())
    return (
        "<a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address>"
        f"<a:ReferenceParameters><w:ResourceURI>{namespace_uri}/{class_name}</w:ResourceURI>"
        f"<w:SelectorSet>{sels}</w:SelectorSet></a:ReferenceParameters>"
    )


def instance_xml(class_name: str, props: dict, namespace_uri: str = V2) -> str:
    """A WS-Man instance element; list values repeat, None is xsi:nil, text is inserted raw."""
    parts = []
    for key, value in props.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None:
                parts.append(f'<p:{key} xsi:nil="true"/>')
            else:
                parts.append(f"<p:{key}>{v}</p:{key}>")
    return f'<p:{class_name} xmlns:p="{namespace_uri}/{class_name}">{"".join(parts)}</p:{class_name}>'


def item_xml(class_name: str, props: dict, selectors: dict) -> str:
    """A ``w:Item`` with instance and EPR (EnumerateObjectAndEPR)."""
    return (
        f"<w:Item>{instance_xml(class_name, props)}"
        f"<a:EndpointReference>{epr_xml(class_name, selectors)}</a:EndpointReference></w:Item>"
    )
