r"""SMB3 data plane: the only module that imports smbprotocol.

One :class:`SmbStorage` per job holds that job's connections (one per server, each with one
authenticated session and its tree connects) and closes them in :meth:`SmbStorage.close`; there is
no process-global connection cache.  smbprotocol's low-level objects are used directly
(``Connection`` -> ``Session`` -> ``TreeConnect`` -> ``Open``) because its ``smbclient`` layer keeps
global state and never has more than one request in flight (``reference/performance-notes.md``).

Throughput comes from pipelining: :class:`SmbReader` keeps ``read_depth`` reads of ``read_size``
bytes outstanding (a request is sent, its response collected later, as Samba's own client does), and
:class:`SmbWriter` does the same for writes.  Each large request costs one credit per 64 KiB; the
reader asks the server for enough credits up front (an echo carrying a credit request) and every
request asks back what it spends.

A dropped connection during a read or write is repaired: reconnect, reopen, continue from the last
good offset, at most ``retries`` times in a row, with a log line per attempt.  Create, rename and
delete are not retried once sent (they are not idempotent), but a connection found dead before
sending is re-established first.

Every failure leaves this module as a :class:`~bareos_hyperv.errors.StorageError` subclass naming the
NtStatus (hex and name), server, share and path, and what to do.  The password is kept only in the
smbprotocol session object and never appears in messages or reprs.
"""

from __future__ import annotations

import errno
import hmac
import logging
import select
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Deque, Dict, List, Mapping, Sequence, Tuple, TypeVar, Union

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smbprotocol.connection import Ciphers, Connection, Request, SigningAlgorithms
from smbprotocol.exceptions import (
    NoMoreFiles,
    SMBAuthenticationError,
    SMBException,
    SMBResponseException,
)
from smbprotocol.file_info import (
    FileAttributes,
    FileEndOfFileInformation,
    FileInformationClass,
    FileRenameInformation,
)
from smbprotocol.header import Commands, NtStatus, Smb2Flags, SMB2HeaderRequest
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    DirectoryAccessMask,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2SetInfoRequest,
    SMB2SetInfoResponse,
    SMB2WriteRequest,
)
from smbprotocol.session import Session
from smbprotocol.transport import Tcp
from smbprotocol.tree import TreeConnect

from bareos_hyperv.errors import StorageError
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.storage.base import (
    Buffer,
    DirEntry,
    FileStat,
    StorageAccessDenied,
    StorageAuthError,
    StorageBusy,
    StorageConnectionError,
    StorageExists,
    StorageNotFound,
    read_through,
)
from bareos_hyperv.storage.locations import Location, SmbLocation
from bareos_hyperv.storage.smbclient_mover import (
    MIN_SIZE,
    MoverReader,
    SmbclientCommand,
    find_smbclient,
    mover_setting,
    path_is_movable,
)

__all__ = ["DEFAULT_PORT", "SmbOptions", "SmbReader", "SmbStorage", "SmbWriter"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 445
MiB = 1024 * 1024
# One SMB2 credit covers 64 KiB of payload ([MS-SMB2] 3.1.5.2).
CREDIT_PAYLOAD = 64 * 1024
# Credits we ask for beyond what the pipeline needs, for the small requests around it.
CREDIT_SLACK = 64
# The SMB2 header precedes every message; READ response DataOffset counts from its start.
SMB2_HEADER_SIZE = 64
# [MS-SMB2] 2.2.20 READ response: StructureSize(2) DataOffset(1) Reserved(1) DataLength(4) ...
_READ_RESPONSE = struct.Struct("<HBxI")
# [MS-SMB2] 2.2.22 WRITE response: StructureSize(2) Reserved(2) Count(4) ...
_WRITE_RESPONSE = struct.Struct("<HxxI")
# [MS-SMB2] 2.2.21 WRITE request without its buffer: StructureSize(2) DataOffset(2) Length(4) Offset(8)
# FileId(16) Channel(4) RemainingBytes(4) WriteChannelInfoOffset(2) WriteChannelInfoLength(2) Flags(4).
_WRITE_REQUEST = struct.Struct("<HHIQ16sIIHHI")
# The structure size counts one byte of the variable buffer ([MS-SMB2] 2.2.21).
_WRITE_STRUCTURE_SIZE = 49

# Share every open we make as widely as possible: Hyper-V reopens a frozen parent for write when it
# merges a checkpoint, and a reader without FILE_SHARE_WRITE would make that merge fail
# (reference/hyperv-wmi.md 8.2).
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
SYNCHRONIZE = 0x00100000
DELETE = 0x00010000
READ_ACCESS = FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
WRITE_ACCESS = (
    FilePipePrinterAccessMask.FILE_WRITE_DATA
    | FilePipePrinterAccessMask.FILE_APPEND_DATA
    | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
    | FilePipePrinterAccessMask.FILE_WRITE_ATTRIBUTES
    | DELETE
)

# Statuses after which the connection/session/handle is gone but a fresh one may work.
_RECONNECT_STATUSES = frozenset(
    {
        0xC00000C9,  # STATUS_NETWORK_NAME_DELETED
        0xC0000203,  # STATUS_USER_SESSION_DELETED
        0xC000035C,  # STATUS_NETWORK_SESSION_EXPIRED
        0xC0000128,  # STATUS_FILE_CLOSED
        0xC000020C,  # STATUS_CONNECTION_DISCONNECTED
        0xC000020D,  # STATUS_CONNECTION_RESET
    }
)
_STATUS_NAMES: Dict[int, str] = {
    v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_") and isinstance(v, int)
}
_STATUS_NOT_A_DIRECTORY = 0xC0000103
_STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
_STATUS_DISK_FULL = 0xC000007F
_STATUS_BAD_NETWORK_NAME = 0xC00000CC
_STATUS_ACCESS_DENIED = 0xC0000022
_STATUS_SHARING_VIOLATION = 0xC0000043
_STATUS_OBJECT_NAME_COLLISION = 0xC0000035
_STATUS_END_OF_FILE = 0xC0000011
_NOT_FOUND = frozenset({0xC0000034, 0xC000003A, 0xC000000F, _STATUS_BAD_NETWORK_NAME})  # name/path/file/share
_LOGON = frozenset({0xC000006D, 0xC000006A, 0xC0000072, 0xC0000193, 0xC0000071, 0xC0000234, 0xC000006F})

T = TypeVar("T")


#: Operations (the ``operation`` of an error's context) that create, change or remove something.
_WRITE_OPERATIONS = frozenset({"create", "open for update", "mkdir", "rename", "write", "remove", "rmdir",
                               "delete", "truncate", "resize", "flush"})


def _access_denied(loc: SmbLocation, ctx: Dict[str, object]) -> StorageAccessDenied:
    r"""STATUS_ACCESS_DENIED, with the right that is missing.

    Windows lets only a full administrator token use the admin shares (``C$``, ``D$``): members of
    Hyper-V Administrators or Remote Management Users are refused, and so is a *local* account in
    Administrators whose token UAC filters over the network (Microsoft, "User Account Control and
    remote restrictions"; "User Account Control and WMI").
    """
    share = f"\\\\{loc.server}\\{loc.share}"
    if loc.share.endswith("$"):
        return StorageAccessDenied(
            f"access denied to the administrative share {share}: the account is not a full administrator of "
            f"{loc.server}",
            context=ctx,
            what_to_do=f"add the account to the local Administrators group of {loc.server} (admin shares need it; "
            "Hyper-V Administrators is not enough); a local (non-domain) account also needs "
            "LocalAccountTokenFilterPolicy=1 on the host, else UAC strips its administrator rights over the "
            "network: use a domain account or set it",
        )
    # A file share of Hyper-V over SMB (\\fileserver\share): its hosts' computer accounts have Full Control
    # there (Microsoft, "Deploy Hyper-V over SMB"); the backup account needs read to back up and write to
    # restore (and where the staging folder and the reference-point record live).
    if str(ctx.get("operation", "")) in _WRITE_OPERATIONS:
        return StorageAccessDenied(
            f"access denied on the file share {share}: the account may not write there",
            context=ctx,
            what_to_do="grant the account Change (read and write) on the share and Modify on the folder: a restore "
            "writes the VM's files there, and a backup its staging folder and reference-point record unless "
            "staging_path= names another place; a local (non-domain) account in the server's Administrators "
            "group also needs LocalAccountTokenFilterPolicy=1",
        )
    return StorageAccessDenied(
        f"access denied on the file share {share}",
        context=ctx,
        what_to_do="grant the account Read on the share and on the VM's folder (a backup reads the VM's files "
        "there; a restore also needs write); a local (non-domain) account in the server's Administrators group "
        "also needs LocalAccountTokenFilterPolicy=1",
    )


@dataclass(frozen=True)
class SmbOptions:
    """Tuning and policy of one job's SMB access.

    :param encrypt: require SMB3 encryption on every session (shares may require it on their own).
    :param read_size: bytes per read request (capped by the negotiated maximum, 8 MiB on Samba/Windows).
    :param read_depth: read requests kept in flight.
    :param write_size: bytes per write request (capped by the negotiated maximum).
    :param write_depth: write requests kept in flight.
    :param timeout: seconds to wait for a connection or a data response.
    :param retries: reconnect attempts in a row after a dropped connection before giving up.
    :param retry_delay: seconds before the first reconnect attempt, doubling per attempt.
    :param auth_protocol: ``negotiate`` (Kerberos if available, else NTLM), ``ntlm`` or ``kerberos``.
    :param mover: who moves the bytes of a sequential read: ``smbprotocol`` (never a process),
        ``auto`` (Samba's smbclient when it is installed and the file has at least ``mover_min_size``
        bytes, else smbprotocol) or ``smbclient`` (whenever it can); default from
        :data:`~bareos_hyperv.storage.smbclient_mover.MOVER_ENV`, else ``smbprotocol``.
    :param mover_min_size: smallest file ``auto`` streams through smbclient.
    """

    encrypt: bool = False
    read_size: int = 4 * MiB
    read_depth: int = 4
    write_size: int = 4 * MiB
    write_depth: int = 4
    timeout: float = 60.0
    retries: int = 3
    retry_delay: float = 0.5
    auth_protocol: str = "negotiate"
    mover: str = field(default_factory=mover_setting)
    mover_min_size: int = MIN_SIZE


class _FastTcp(Tcp):  # type: ignore[misc]  # smbprotocol is untyped
    """smbprotocol's direct-TCP transport without its per-message copies.

    The stock receive path allocates a piece per ``recv`` and copies the pieces into a buffer and
    that buffer into ``bytes``; sending slices the remaining bytes after each partial send.  Here a
    message is received with ``recv_into`` straight into a fresh buffer and handed on as a
    memoryview (smbprotocol's structures unpack from memoryviews); a message goes out in one
    gathering ``sendmsg`` instead of a packed copy.
    """

    def send(self, header: Any) -> None:
        if not isinstance(header, (bytes, bytearray, memoryview)):
            header = header.pack()  # an encrypted message arrives as its transform-header structure
        self.send_parts([header])

    def send_parts(self, parts: Sequence[Union[bytes, Buffer]]) -> None:
        """Send one message made of ``parts`` (header, body, payload) without joining them."""
        views = [memoryview(p).cast("B") for p in parts]
        total = sum(len(v) for v in views)
        if total > self.MAX_SIZE:
            raise ValueError(f"Data to be sent over Direct TCP size {total} exceeds the max length")
        # One gathering send: the length prefix in a segment of its own would meet Nagle's
        # algorithm and the server's delayed ACK (a 40 ms stall per request).
        views.insert(0, memoryview(struct.pack(">L", total)))
        with self._sock_lock:
            while views:
                sent = self._sock.sendmsg(views)
                while sent:
                    first = views[0]
                    if sent >= len(first):
                        sent -= len(first)
                        views.pop(0)
                    else:
                        views[0] = first[sent:]
                        sent = 0
                while views and not views[0]:
                    views.pop(0)

    def recv(self, timeout: float) -> Any:
        size, timeout = self._recv(4, timeout)
        if not size:
            return b""
        return self._recv(struct.unpack(">L", size)[0], timeout)[0]

    def _recv(self, length: int, timeout: float) -> Tuple[memoryview | None, float]:
        buffer = bytearray(length)
        view = memoryview(buffer)
        offset = 0
        while offset < length:
            start = time.monotonic()
            with self._close_lock:
                if not self.connected:
                    return None, timeout
                ready = select.select([self._sock], [], [], max(timeout, 1))[0]
                elapsed = time.monotonic() - start
                timeout -= elapsed
                if not ready:
                    raise TimeoutError(f"recv idle for {elapsed:.1f}s ({offset}/{length} bytes)")
                try:
                    n = self._sock.recv_into(view[offset:], length - offset)
                except OSError as exc:
                    # A reset or shut-down socket reads as end of stream, as in smbprotocol.
                    if exc.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    n = 0
            if n == 0:
                self.close()
                return None, timeout
            offset += n
        return view, timeout


class _FastConnection(Connection):  # type: ignore[misc]  # smbprotocol is untyped
    """A Connection whose transport is :class:`_FastTcp` and whose signature check and decryption
    work on the message in place instead of on several whole-message copies.

    Only the bulk path changes; negotiation, authentication and everything else is smbprotocol's.
    Verified against smbprotocol's own ``_generate_signature`` in the tests.
    """

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_bh_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        # smbprotocol creates its Tcp inside connect(); swap in ours, same address and timeout.
        if type(value) is Tcp:
            value = _FastTcp(value.server, value.port, value.timeout)
        self.__dict__["_bh_transport"] = value

    def verify_signature(self, header: Any, session_id: int, force: bool = False) -> None:
        message_id = header["message_id"].get_value()
        flags = header["flags"]
        command = header["command"].get_value()
        if not force and (
            message_id == 0xFFFFFFFFFFFFFFFF
            or not flags.has_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
            or header["status"].get_value() == NtStatus.STATUS_PENDING
            or command == Commands.SMB2_SESSION_SETUP
        ):
            return
        session = self.session_table.get(session_id, None)
        if session is None:
            raise SMBException(f"Failed to find session {session_id} for message verification")
        expected = message_signature(
            self,
            header,
            session.signing_key,
            flags.has_flag(Smb2Flags.SMB2_FLAGS_SERVER_TO_REDIR),
        )
        if not hmac.compare_digest(expected, header["signature"].get_value()):
            raise SMBException("Server message signature could not be verified")

    def _decrypt(self, message: Any) -> Any:
        if self.cipher_id not in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM):
            return super()._decrypt(message)
        if message["flags"].get_value() != 0x0001:
            return super()._decrypt(message)  # let smbprotocol raise its error
        session = self.session_table.get(message["session_id"].get_value(), None)
        if session is None:
            return super()._decrypt(message)
        # The AAD is the transform header from the nonce on (bytes 20-52), i.e. every field but the
        # protocol id, the signature and the data.
        skip = ("protocol_id", "signature", "data")
        aad = b"".join(f.pack() for k, f in message.fields.items() if k not in skip)
        nonce = message["nonce"].get_value()[:12]
        tag = message["signature"].get_value()
        d = Cipher(algorithms.AES(session.decryption_key), modes.GCM(nonce, tag)).decryptor()
        d.authenticate_additional_data(aad)
        out = d.update(message["data"].get_value())
        d.finalize()  # raises InvalidTag if the message was altered
        # A view: smbprotocol slices the plaintext per message, which would copy bytes.
        return memoryview(out)


def message_signature(connection: Any, header: Any, key: bytes, response: bool) -> bytes:
    """SMB2/3 message signature of an unpacked header ([MS-SMB2] 3.1.4.1), computed over the message
    in pieces (64-byte header with a zero signature, then the payload) rather than over a copy."""
    head = b"".join(f.pack() for k, f in header.fields.items() if k != "data")
    return sign_parts(connection, head, [header["data"].get_value()], key,
                      message_id=header["message_id"].get_value(), command=header["command"].get_value(),
                      response=response)


def sign_parts(connection: Any, head: bytes, parts: Sequence[Union[bytes, Buffer]], key: bytes, *,
               message_id: int, command: int, response: bool) -> bytes:
    """Signature of the message whose 64-byte header is ``head`` (its signature field is ignored)
    followed by ``parts``, fed to the MAC one piece at a time so no part is copied."""
    head = bytes(head[:48]) + b"\0" * 16
    dialect = connection.dialect
    algo = getattr(connection, "signing_algorithm_id", None)
    if dialect >= 0x0311 and algo is not None:
        sign_id = algo
    elif dialect >= 0x0300:
        sign_id = SigningAlgorithms.AES_CMAC
    else:
        sign_id = SigningAlgorithms.HMAC_SHA256
    if sign_id == SigningAlgorithms.AES_GMAC:
        info = (1 if response else 0) | (2 if command == Commands.SMB2_CANCEL else 0)
        nonce = message_id.to_bytes(8, "little") + info.to_bytes(4, "little")
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(head)
        for part in parts:
            enc.authenticate_additional_data(part)
        enc.finalize()
        return bytes(enc.tag)
    if sign_id == SigningAlgorithms.AES_CMAC:
        c = cmac.CMAC(algorithms.AES(key))
        c.update(head)
        for part in parts:
            c.update(part)  # type: ignore[arg-type]  # any buffer works; the stub says bytes
        return bytes(c.finalize())
    h = hmac.new(key, head, "sha256")
    for part in parts:
        h.update(part)
    return h.digest()[:16]


def _send_write(handle: Any, offset: int, payload: memoryview) -> Any:
    """Send one SMB2 WRITE of ``payload`` at ``offset`` on ``handle``; the pending Request.

    smbprotocol's own path packs the payload into the request body, the body into the header,
    appends padding and rebuilds the message twice around the signature: six copies of every byte,
    which on this kind of machine cost more than the network and halve the write rate.  Here the
    64-byte header and the 48-byte WRITE body ([MS-SMB2] 2.2.1.2, 2.2.21) are built on their own,
    the signature is computed over the three pieces in turn and one gathering send hands them to the
    kernel: the payload is never copied in user space.  Credits and message ids are taken under the
    connection's own lock and the Request is registered exactly as smbprotocol does, so its receive
    thread matches the response as usual.  Encrypted sessions (the payload must be transformed
    anyway) and a transport that is not ours take the stock path.
    """
    conn = handle.connection
    tree = handle.tree_connect
    session = tree.session
    transport = conn.transport
    length = len(payload)
    if not isinstance(transport, _FastTcp) or session.encrypt_data or tree.encrypt_data:
        msg, _ = handle.write(bytes(payload), offset, send=False)
        return conn.send(msg, session.session_id, tree.tree_connect_id)
    if length > conn.max_write_size:
        raise SMBException(f"The requested write length {length} is greater than the maximum negotiated "
                           f"write size {conn.max_write_size}")
    body = _WRITE_REQUEST.pack(_WRITE_STRUCTURE_SIZE, SMB2_HEADER_SIZE + _WRITE_REQUEST.size, length, offset,
                               handle.file_id, 0, 0, 0, 0, 0)
    charge = (max(length, 1) - 1) // CREDIT_PAYLOAD + 1 if conn.supports_multi_credit else 0
    with conn.sequence_lock:
        low, high = conn.sequence_window["low"], conn.sequence_window["high"]
        if charge > high - low:
            raise SMBException(f"Request requires {charge} credits but only {high - low} credits are available")
        message_id = low
        conn.sequence_window["low"] += charge if charge > 0 else 1
    header = SMB2HeaderRequest()
    header["credit_charge"] = charge
    header["command"] = Commands.SMB2_WRITE
    header["credit_request"] = charge
    header["message_id"] = message_id
    header["session_id"] = session.session_id
    header["tree_id"] = tree.tree_connect_id
    header["data"] = body
    if tree.is_dfs_share:
        header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_DFS_OPERATIONS)
    if session.signing_required and session.signing_key:
        header["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
        unsigned = header.pack()
        header["signature"] = sign_parts(conn, unsigned, [body, payload], session.signing_key,
                                         message_id=message_id, command=Commands.SMB2_WRITE, response=False)
    head = header.pack()  # the 64-byte header and the WRITE body
    request = Request(header, SMB2WriteRequest, conn, session_id=session.session_id)
    conn.outstanding_requests[message_id] = request
    conn._check_worker_running()
    transport.send_parts([head, payload])
    return request


# The fast path overrides smbprotocol internals (checked on 1.17); fall back to the stock classes
# if a future smbprotocol moves them, rather than fail at run time.
_FAST_PATH = all(hasattr(Tcp, a) for a in ("_recv", "MAX_SIZE")) and all(
    hasattr(Connection, a) for a in ("verify_signature", "_decrypt", "_process_message_thread", "_check_worker_running")
)
_CONNECTION: Any = _FastConnection if _FAST_PATH else Connection


class _Retryable(Exception):
    """Internal: the connection is gone; reconnecting may help."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _status_text(status: int) -> str:
    return f"0x{status:08X} {_STATUS_NAMES.get(status, 'STATUS_UNKNOWN')}"


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, SMBResponseException):
        return exc.status in _RECONNECT_STATUSES
    if isinstance(exc, SMBAuthenticationError):
        return False
    # SMBConnectionClosed, timeouts, a dead receive worker, socket errors.
    return isinstance(exc, (SMBException, OSError, _Retryable))


class _Server:
    """One server's connection, authenticated session and tree connects."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.connection: Any | None = None
        self.session: Any | None = None
        self.trees: Dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        c = self.connection
        return c is not None and c.transport.connected and getattr(c, "_t_exc", None) is None

    def close(self, logoff: bool = True) -> None:
        c, self.connection, self.session, self.trees = self.connection, None, None, {}
        if c is None:
            return
        try:
            c.disconnect(close=logoff and c.transport.connected, timeout=5)
        except Exception as exc:  # closing a broken connection must not hide the real error
            log.debug("closing SMB connection to %s:%d: %s", self.host, self.port, exc)


class SmbStorage:
    r"""One job's SMB access (see :class:`~bareos_hyperv.storage.base.Storage`).

    :param username: account name; ``DOMAIN\user``, ``user@domain`` or plain with ``domain``.
    :param password: its password (kept in the session only).
    :param domain: optional NetBIOS/DNS domain prepended as ``DOMAIN\user``.
    :param endpoints: server name -> ``(host, port)``; names not listed connect to ``(name, 445)``.
    :param options: tuning and policy (:class:`SmbOptions`).
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        domain: str | None = None,
        endpoints: Mapping[str, Tuple[str, int]] | None = None,
        options: SmbOptions | None = None,
    ) -> None:
        self._username = f"{domain}\\{username}" if domain and "\\" not in username else username
        self._password = password
        self._endpoints = {k.lower(): v for k, v in (endpoints or {}).items()}
        self.options = options or SmbOptions()
        self._servers: Dict[str, _Server] = {}
        self.reconnects = 0
        # smbprotocol logs every message at INFO; keep that out of job logs unless someone asked.
        lib = logging.getLogger("smbprotocol")
        if lib.level == logging.NOTSET:
            lib.setLevel(logging.WARNING)

    @classmethod
    def from_credentials(
        cls,
        credentials: Credentials,
        *,
        endpoints: Mapping[str, Tuple[str, int]] | None = None,
        options: SmbOptions | None = None,
    ) -> SmbStorage:
        """Build from the job's :class:`~bareos_hyperv.model.credentials.Credentials`."""
        return cls(
            credentials.username,
            credentials.password,
            domain=credentials.domain,
            endpoints=endpoints,
            options=options,
        )

    def __repr__(self) -> str:
        return f"SmbStorage(user={self._username!r}, servers={sorted(self._servers)}, options={self.options})"

    def __enter__(self) -> SmbStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Log off and disconnect every server of this job (idempotent)."""
        servers, self._servers = self._servers, {}
        for s in servers.values():
            s.close()

    # -- connections -----------------------------------------------------------------------------

    def _endpoint(self, server: str) -> Tuple[str, int]:
        return self._endpoints.get(server.lower(), (server, DEFAULT_PORT))

    def _server(self, name: str) -> _Server:
        key = name.lower()
        s = self._servers.get(key)
        if s is not None and s.connection is not None and not s.alive:
            log.info("SMB connection to %s was lost; reconnecting", name)
            s.close(logoff=False)
        if s is None:
            host, port = self._endpoint(name)
            s = self._servers[key] = _Server(name, host, port)
        if s.connection is None:
            self._connect(s)
        return s

    def _connect(self, s: _Server) -> None:
        conn = _CONNECTION(uuid.uuid4(), s.host, s.port, require_signing=True)
        try:
            conn.connect(timeout=self.options.timeout)
        except ValueError as exc:  # smbprotocol reports a failed TCP connect as ValueError
            raise _Retryable(OSError(str(exc))) from exc
        try:
            session = Session(
                conn,
                self._username,
                self._password,
                require_encryption=self.options.encrypt,
                auth_protocol=self.options.auth_protocol,
            )
            session.connect()
        except BaseException:
            try:
                conn.disconnect(close=False)
            except Exception as exc:
                log.debug("disconnect after failed session setup: %s", exc)
            raise
        s.connection, s.session, s.trees = conn, session, {}
        log.debug(
            "SMB %s:%d dialect 0x%04x signing=%s encrypt=%s max_read=%d max_write=%d",
            s.host,
            s.port,
            conn.dialect,
            session.signing_required,
            session.encrypt_data,
            conn.max_read_size,
            conn.max_write_size,
        )

    def _tree(self, loc: SmbLocation) -> Any:
        s = self._server(loc.server)
        key = loc.share.lower()
        tree = s.trees.get(key)
        if tree is None:
            tree = TreeConnect(s.session, f"\\\\{loc.server}\\{loc.share}")
            tree.connect()
            s.trees[key] = tree
        return tree

    def _drop(self, server: str, connection: Any) -> None:
        """Forget a broken connection (only if it is still the current one)."""
        s = self._servers.get(server.lower())
        if s is not None and (connection is None or s.connection is connection):
            s.close(logoff=False)

    def connection_info(self, location: SmbLocation) -> Dict[str, object]:
        """What was negotiated with ``location``'s server and share (dialect, signing, encryption, sizes)."""
        loc = self._smb(location)
        tree = self._call("connect", loc, lambda: self._tree(loc))
        conn = tree.session.connection
        return {
            "dialect": f"0x{conn.dialect:04x}",
            "signing": bool(tree.session.signing_required and tree.session.signing_key),
            "encrypted": bool(tree.session.encrypt_data or tree.encrypt_data),
            "max_read_size": conn.max_read_size,
            "max_write_size": conn.max_write_size,
            "credits": conn.sequence_window["high"] - conn.sequence_window["low"],
        }

    def ensure_credits(self, connection: Any, wanted: int) -> None:
        """Ask the server (with an echo) for enough credits to keep ``wanted`` credits' worth in flight."""
        window = connection.sequence_window
        have = window["high"] - window["low"]
        if have >= wanted:
            return
        # The field is 16 bits; servers cap grants (Samba: 8192 by default) anyway.
        ask = min(wanted - have + CREDIT_SLACK, 0xFFFF)
        connection.echo(sid=self._session_id(connection), timeout=self.options.timeout, credit_request=ask)

    @staticmethod
    def _session_id(connection: Any) -> int:
        return int(next(iter(connection.session_table)))

    # -- errors ------------------------------------------------------------------------------------

    def _smb(self, location: Location) -> SmbLocation:
        if not isinstance(location, SmbLocation):
            raise StorageError(
                "SMB storage was given a local path",
                context={"path": str(location)},
                what_to_do="resolve paths with data=smb, or use the local storage backend",
            )
        return location

    def _error(self, exc: BaseException, op: str, loc: SmbLocation) -> StorageError:
        """Translate any failure into one StorageError naming status, server, share and path."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, _Retryable):
            exc = exc.cause
        host, port = self._endpoint(loc.server)
        ctx: Dict[str, object] = {
            "operation": op,
            "server": loc.server,
            "address": f"{host}:{port}",
            "share": loc.share,
            "path": loc.path or "\\",
            "user": self._username,
        }
        if isinstance(exc, SMBResponseException):
            status = exc.status
            ctx["status"] = _status_text(status)
            if status in _LOGON:
                return StorageAuthError(
                    "the SMB server refused the credentials",
                    context=ctx,
                    what_to_do="check the user name, domain and password in the credentials file",
                )
            if status == _STATUS_ACCESS_DENIED:
                return _access_denied(loc, ctx)
            if status == _STATUS_BAD_NETWORK_NAME:
                return StorageNotFound(
                    "the share does not exist on this server",
                    context=ctx,
                    what_to_do="check the share map; admin shares need AutoShareServer enabled on the host",
                )
            if status in _NOT_FOUND:
                return StorageNotFound("no such file or directory", context=ctx, what_to_do="check the path")
            if status == _STATUS_OBJECT_NAME_COLLISION:
                return StorageExists(
                    "the target already exists",
                    context=ctx,
                    what_to_do="remove or rename the existing file, or choose another destination",
                )
            if status == _STATUS_SHARING_VIOLATION:
                return StorageBusy(
                    "the file is in use by another process (sharing violation)",
                    context=ctx,
                    what_to_do="a running VM's active disk cannot be read; back up from a checkpoint, "
                    "or stop whatever holds the file",
                )
            if status == _STATUS_DISK_FULL:
                return StorageError(
                    "the disk is full", context=ctx, what_to_do="free space on the destination volume"
                )
            if status in (_STATUS_NOT_A_DIRECTORY, _STATUS_FILE_IS_A_DIRECTORY):
                return StorageExists(
                    "a file is in the way of a directory (or the reverse)",
                    context=ctx,
                    what_to_do="check the path",
                )
            return StorageError(f"SMB {op} failed", context=ctx, what_to_do="see the NT status above")
        if isinstance(exc, SMBAuthenticationError):
            return StorageAuthError(
                "SMB authentication failed",
                context=ctx,
                what_to_do="check the user name, domain and password in the credentials file",
            )
        ctx["error"] = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (SMBException, OSError)):
            return StorageError(
                f"unexpected failure during SMB {op}",
                context=ctx,
                what_to_do="report this as a bug with the job log",
            )
        return StorageConnectionError(
            "the SMB connection failed",
            context=ctx,
            what_to_do="check that the host is reachable on TCP port 445 from this machine and that SMB3 "
            "is enabled",
        )

    def _call(self, op: str, loc: SmbLocation, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``fn`` translating errors; reconnect and retry idempotent operations."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if isinstance(exc, StorageError):
                    raise
                if not (retry and _is_retryable(exc)) or attempt >= self.options.retries:
                    raise self._error(exc, op, loc) from None
                attempt += 1
                self._retry_pause(op, loc, exc, attempt)
                self._drop(loc.server, None)

    def _retry_pause(self, op: str, loc: SmbLocation, exc: BaseException, attempt: int) -> None:
        if isinstance(exc, _Retryable):
            exc = exc.cause
        self.reconnects += 1
        log.warning(
            "SMB %s of %s failed (%s: %s); reconnecting, attempt %d of %d",
            op,
            loc,
            type(exc).__name__,
            exc,
            attempt,
            self.options.retries,
        )
        time.sleep(self.options.retry_delay * (2 ** (attempt - 1)))

    # -- handles -----------------------------------------------------------------------------------

    def _create(
        self,
        loc: SmbLocation,
        access: int,
        disposition: int,
        options: int,
        *,
        attributes: int = 0,
        share: int = SHARE_ALL,
    ) -> Any:
        tree = self._tree(loc)
        handle = Open(tree, loc.path)
        handle.create(ImpersonationLevel.Impersonation, access, attributes, share, disposition, options)
        return handle

    @staticmethod
    def _close_handle(handle: Any) -> None:
        try:
            handle.close(get_attributes=False)
        except Exception as exc:  # a handle on a dead connection is gone anyway
            log.debug("closing SMB handle %s: %s", getattr(handle, "file_name", "?"), exc)

    # -- Storage interface -------------------------------------------------------------------------

    def open_read(self, location: Location) -> Union[SmbReader, MoverReader]:
        """Open an existing file for pipelined sequential reading (share mode read|write|delete).

        A large file's stream comes from Samba's smbclient when :attr:`SmbOptions.mover` allows it
        (``storage.smbclient_mover``); the smbprotocol handle is opened first either way.
        """
        loc = self._smb(location)
        reader = SmbReader(self, loc)
        try:
            command = self._mover_command(loc, reader.size)
        except BaseException:
            reader.close()
            raise
        if command is None:
            return reader
        log.debug("streaming %s through %s", loc, command.executable)
        return MoverReader(reader, command, timeout=self.options.timeout)

    def _mover_command(self, loc: SmbLocation, size: int) -> SmbclientCommand | None:
        """How to run smbclient for this file, or None when smbprotocol should move it."""
        choice = mover_setting(self.options.mover)
        if choice == "smbprotocol" or (choice == "auto" and size < self.options.mover_min_size):
            return None
        # Kerberos-only needs a credential cache smbclient does not share with us; odd names cannot
        # be written on its command line: both stay with smbprotocol.
        if self.options.auth_protocol == "kerberos" or not path_is_movable(loc.path):
            return None
        executable = find_smbclient()
        if executable is None:
            if choice == "smbclient":
                log.info("smbclient is not installed; reading %s with smbprotocol", loc)
            return None
        host, port = self._endpoint(loc.server)
        return SmbclientCommand(
            executable,
            server=loc.server,
            host=host,
            port=port,
            share=loc.share,
            path=loc.path,
            username=self._username,
            password=self._password,
            encrypt=self.options.encrypt,
            kerberos="off" if self.options.auth_protocol == "ntlm" else "desired",
        )

    def create(self, location: Location) -> SmbWriter:
        """Create a new file exclusively (:class:`StorageExists` if anything is there) for writing."""
        loc = self._smb(location)

        # Not retried once sent (a second FILE_CREATE would meet our own file), but a connection
        # that died while idle is replaced before sending (_server does that).
        def fn() -> Any:
            return self._create(
                loc,
                WRITE_ACCESS | SYNCHRONIZE,
                CreateDisposition.FILE_CREATE,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
                attributes=FileAttributes.FILE_ATTRIBUTE_NORMAL,
                share=ShareAccess.FILE_SHARE_READ,
            )

        handle = self._call("create", loc, fn, retry=False)
        return SmbWriter(self, loc, handle)

    def _reopen_for_write(self, loc: SmbLocation) -> Any:
        return self._create(
            loc,
            WRITE_ACCESS | SYNCHRONIZE,
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
            share=ShareAccess.FILE_SHARE_READ,
        )

    def open_update(self, location: Location) -> SmbUpdater:
        """Open an existing file for random reads and writes and resizing (applying a delta in place)."""
        loc = self._smb(location)
        handle = self._call("open for update", loc, lambda: self._open_update(loc))
        return SmbUpdater(self, loc, handle)

    def _open_update(self, loc: SmbLocation) -> Any:
        return self._create(
            loc,
            READ_ACCESS | WRITE_ACCESS | SYNCHRONIZE,
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
            share=ShareAccess.FILE_SHARE_READ,
        )

    def stat(self, location: Location) -> FileStat:
        """Size, last write time and directory flag of a file or directory."""
        loc = self._smb(location)

        def fn() -> FileStat:
            h = self._create(
                loc, FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES, CreateDisposition.FILE_OPEN, 0
            )
            try:
                is_dir = bool(int(h.file_attributes) & FileAttributes.FILE_ATTRIBUTE_DIRECTORY)
                return FileStat(int(h.end_of_file), h.last_write_time.timestamp(), is_dir)
            finally:
                self._close_handle(h)

        return self._call("stat", loc, fn)

    def exists(self, location: Location) -> bool:
        """Whether a file or directory exists at ``location``."""
        try:
            self.stat(location)
        except StorageNotFound:
            return False
        return True

    def listdir(self, location: Location) -> List[DirEntry]:
        """Entries of a directory (without ``.`` and ``..``), sorted by name."""
        loc = self._smb(location)

        def fn() -> List[DirEntry]:
            h = self._create(
                loc,
                DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_DIRECTORY_FILE,
            )
            out: List[DirEntry] = []
            try:
                while True:
                    try:
                        entries = h.query_directory(
                            "*", FileInformationClass.FILE_ID_FULL_DIRECTORY_INFORMATION
                        )
                    except NoMoreFiles:
                        break
                    for e in entries:
                        name = e["file_name"].get_value().decode("utf-16-le")
                        if name in (".", ".."):
                            continue
                        attrs = int(e["file_attributes"].get_value())
                        out.append(
                            DirEntry(
                                name,
                                int(e["end_of_file"].get_value()),
                                e["last_write_time"].get_value().timestamp(),
                                bool(attrs & FileAttributes.FILE_ATTRIBUTE_DIRECTORY),
                            )
                        )
            finally:
                self._close_handle(h)
            return sorted(out, key=lambda d: d.name)

        return self._call("list", loc, fn)

    def makedirs(self, location: Location) -> None:
        """Create a directory and its missing parents; an existing file in the way is an error."""
        loc = self._smb(location)
        parts = loc.path.split("\\") if loc.path else []
        for i in range(1, len(parts) + 1):
            sub = SmbLocation(loc.server, loc.share, "\\".join(parts[:i]))

            def fn(sub: SmbLocation = sub) -> None:
                h = self._create(
                    sub,
                    DirectoryAccessMask.FILE_READ_ATTRIBUTES,
                    CreateDisposition.FILE_OPEN_IF,
                    CreateOptions.FILE_DIRECTORY_FILE,
                    attributes=FileAttributes.FILE_ATTRIBUTE_DIRECTORY,
                )
                self._close_handle(h)

            # FILE_OPEN_IF is idempotent, so a retry after a dropped connection is safe.
            self._call("mkdir", sub, fn)

    def delete(self, location: Location, *, missing_ok: bool = False) -> None:
        """Delete a file (delete-on-close)."""
        self._delete_on_close("delete", location, CreateOptions.FILE_NON_DIRECTORY_FILE, missing_ok)

    def rmdir(self, location: Location, *, missing_ok: bool = False) -> None:
        """Remove an empty directory (delete-on-close of the directory handle)."""
        self._delete_on_close("rmdir", location, CreateOptions.FILE_DIRECTORY_FILE, missing_ok)

    def _delete_on_close(self, op: str, location: Location, kind: int, missing_ok: bool) -> None:
        loc = self._smb(location)

        def fn() -> None:
            h = self._create(
                loc,
                DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                CreateDisposition.FILE_OPEN,
                kind | CreateOptions.FILE_DELETE_ON_CLOSE,
            )
            h.close(get_attributes=False)

        try:
            # Not retried: a delete that happened before the connection dropped would then fail.
            self._call(op, loc, fn, retry=False)
        except StorageNotFound:
            if not missing_ok:
                raise

    def rename(self, source: Location, target: Location, *, replace: bool = False) -> None:
        """Rename within one share; :class:`StorageExists` if ``target`` exists and ``replace`` is false."""
        src, dst = self._smb(source), self._smb(target)
        if not src.same_share(dst):
            raise StorageError(
                "cannot rename across servers or shares",
                context={"source": str(src), "target": str(dst)},
                what_to_do="write the temporary file next to its final name",
            )

        def fn() -> None:
            h = self._create(
                src,
                DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES | SYNCHRONIZE,
                CreateDisposition.FILE_OPEN,
                0,
            )
            try:
                info = FileRenameInformation()
                info["replace_if_exists"] = replace
                # [MS-FSCC] 2.4.37.2: for SMB2 the new name is the full path from the share root.
                info["file_name"] = dst.path
                req = SMB2SetInfoRequest()
                req["info_type"] = info.INFO_TYPE
                req["file_info_class"] = info.INFO_CLASS
                req["file_id"] = h.file_id
                req["buffer"] = info
                conn = h.connection
                request = conn.send(req, h.tree_connect.session.session_id, h.tree_connect.tree_connect_id)
                response = conn.receive(request, timeout=self.options.timeout)
                SMB2SetInfoResponse().unpack(response["data"].get_value())
            finally:
                self._close_handle(h)

        try:
            self._call("rename", src, fn, retry=False)
        except StorageExists as exc:
            exc.context["target"] = str(dst)
            raise StorageExists(
                "the rename target already exists",
                context=exc.context,
                what_to_do="remove the existing file first, or restore under another name",
            ) from None


class SmbUpdater:
    """An existing file opened for update: reads and writes at offsets, resizing (one request at a time).

    Used to apply a delta to a restored file in place; every request is idempotent (a write of the
    same bytes at the same offset), so after a dropped connection the file is reopened and the
    request sent again.
    """

    def __init__(self, storage: SmbStorage, location: SmbLocation, handle: Any) -> None:
        self._st = storage
        self.location = location
        self._handle: Any = handle
        self._size = int(handle.end_of_file)
        self._closed = False

    def __repr__(self) -> str:
        return f"SmbUpdater({self.location}, size={self._size})"

    @property
    def size(self) -> int:
        """Current length."""
        return self._size

    def _live(self) -> Any:
        if self._closed:
            raise ValueError("use of a closed SmbUpdater")
        h = self._handle
        if h is None or not h.connection.transport.connected:
            self._handle = h = self._st._open_update(self.location)
        return h

    def _request(self, op: str, fn: Callable[[Any], T]) -> T:
        def once() -> T:
            try:
                return fn(self._live())
            except Exception:
                self._handle = None  # reopened (on a fresh connection when it died) by a retry
                raise

        return self._st._call(op, self.location, once)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (short only at the end of the file)."""
        parts: List[bytes] = []
        end = min(offset + length, self._size)
        pos = offset
        while pos < end:
            n = min(end - pos, self._st.options.read_size)

            def one(h: Any, pos: int = pos, n: int = n) -> bytes:
                n = min(n, h.connection.max_read_size)
                msg, _ = h.read(pos, n, send=False)
                request = h.connection.send(msg, h.tree_connect.session.session_id, h.tree_connect.tree_connect_id)
                try:
                    response = h.connection.receive(request, timeout=self._st.options.timeout)
                except SMBResponseException as exc:
                    if exc.status == _STATUS_END_OF_FILE:
                        return b""
                    raise
                return bytes(_unpack_read(response["data"].get_value()))

            data = self._request("read", one)
            if not data:
                break
            parts.append(data)
            pos += len(data)
        return b"".join(parts)

    def write_at(self, offset: int, data: Union[bytes, Buffer]) -> None:
        """Write all of ``data`` at ``offset`` (in ``write_size`` requests, ``write_depth`` in flight)."""
        with memoryview(data) as whole:
            view = whole.cast("B")
            total = len(view)

            def all_of_it(h: Any) -> None:
                conn = h.connection
                step = max(CREDIT_PAYLOAD, min(self._st.options.write_size, conn.max_write_size))
                depth = max(1, self._st.options.write_depth)
                self._st.ensure_credits(conn, ((step - 1) // CREDIT_PAYLOAD + 1) * depth)
                inflight: Deque[Tuple[int, int, Any]] = deque()
                pos = 0
                while pos < total or inflight:
                    while pos < total and len(inflight) < depth:
                        n = min(step, total - pos)
                        inflight.append((pos, n, _send_write(h, offset + pos, view[pos : pos + n])))
                        pos += n
                    at, n, request = inflight.popleft()
                    response = conn.receive(request, timeout=self._st.options.timeout)
                    _size, count = _WRITE_RESPONSE.unpack_from(response["data"].get_value(), 0)
                    if count != n:
                        raise StorageError("the server wrote fewer bytes than sent",
                                           context={"path": str(self.location), "offset": offset + at,
                                                    "sent": n, "written": count},
                                           what_to_do="check free space on the destination volume")

            if total:
                # Idempotent as a whole: after a drop every piece is sent again on a fresh handle.
                self._request("write", all_of_it)
            view.release()
        self._size = max(self._size, offset + total)

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) to ``size`` bytes ([MS-FSCC] 2.4.13 FileEndOfFileInformation)."""

        def one(h: Any) -> None:
            info = FileEndOfFileInformation()
            info["end_of_file"] = size
            req = SMB2SetInfoRequest()
            req["info_type"] = info.INFO_TYPE
            req["file_info_class"] = info.INFO_CLASS
            req["file_id"] = h.file_id
            req["buffer"] = info
            conn = h.connection
            request = conn.send(req, h.tree_connect.session.session_id, h.tree_connect.tree_connect_id)
            response = conn.receive(request, timeout=self._st.options.timeout)
            SMB2SetInfoResponse().unpack(response["data"].get_value())

        self._request("resize", one)
        self._size = size

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._closed:
            return
        try:
            if self._handle is not None:
                self._request("flush", lambda h: h.flush())
        finally:
            self._closed = True
            handle, self._handle = self._handle, None
            if handle is not None:
                self._st._close_handle(handle)

    def __enter__(self) -> SmbUpdater:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _unpack_read(raw: bytes) -> memoryview:
    """The data of an SMB2 READ response body without copying it ([MS-SMB2] 2.2.20)."""
    _size, offset, length = _READ_RESPONSE.unpack_from(raw, 0)
    start = offset - SMB2_HEADER_SIZE
    return memoryview(raw)[start : start + length]


class SmbReader:
    """Sequential reader over one SMB file with several large reads in flight.

    ``readinto``/``read`` stream from the current position; ``read_at`` reads a range directly (for
    headers and tables) without disturbing the stream.  After a dropped connection the reader
    reconnects, reopens and continues at the first byte it has not delivered.
    """

    def __init__(self, storage: SmbStorage, location: SmbLocation) -> None:
        self._st = storage
        self.location = location
        self._handle: Any = None
        self._pos = 0
        self._buf = memoryview(b"")
        self._inflight: Deque[Tuple[int, int, Any]] = deque()
        self._next = 0
        self._limit: int | None = None  # read ahead no further (set_limit)
        self.reconnects = 0
        self._handle = storage._call("open", location, self._open)
        self._size: int = int(self._handle.end_of_file)
        self._mtime: float = self._handle.last_write_time.timestamp()

    def __repr__(self) -> str:
        return f"SmbReader({self.location}, size={getattr(self, '_size', None)}, pos={self._pos})"

    def _open(self) -> Any:
        h = self._st._create(
            self.location,
            READ_ACCESS | SYNCHRONIZE,
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_SEQUENTIAL_ONLY,
        )
        conn = h.connection
        self._read_size = max(CREDIT_PAYLOAD, min(self._st.options.read_size, conn.max_read_size))
        self._depth = max(1, self._st.options.read_depth)
        charge = (self._read_size - 1) // CREDIT_PAYLOAD + 1
        self._st.ensure_credits(conn, charge * self._depth)
        return h

    @property
    def size(self) -> int:
        """File size when it was opened."""
        return self._size

    @property
    def mtime(self) -> float:
        """Last write time when it was opened (seconds since the epoch)."""
        return self._mtime

    @property
    def in_flight(self) -> int:
        """Read requests sent and not yet collected."""
        return len(self._inflight)

    # -- pipelined stream --------------------------------------------------------------------------

    def _send(self, offset: int, length: int) -> Any:
        h = self._handle
        msg, _ = h.read(offset, length, send=False)
        return h.connection.send(msg, h.tree_connect.session.session_id, h.tree_connect.tree_connect_id)

    def _receive(self, request: Any) -> memoryview:
        try:
            response = self._handle.connection.receive(request, timeout=self._st.options.timeout)
        except SMBResponseException as exc:
            if exc.status == _STATUS_END_OF_FILE:
                return memoryview(b"")
            raise
        return _unpack_read(response["data"].get_value())

    def set_limit(self, end: int | None) -> None:
        """Read ahead no further than ``end`` (None: the end of the file).

        A reader of ranges (a sparse full: only the blocks the disk's tables reference) seeks to
        each range and sets its end, so the pipeline keeps large reads in flight within the range
        and never fetches the gap after it.
        """
        self._limit = end

    def _fill(self) -> None:
        stop = self._size if self._limit is None else min(self._size, self._limit)
        while len(self._inflight) < self._depth and self._next < stop:
            length = min(self._read_size, stop - self._next)
            self._inflight.append((self._next, length, self._send(self._next, length)))
            self._next += length

    def _drain(self) -> None:
        """Collect (and drop) the responses still in flight so the connection stays in step."""
        while self._inflight:
            _off, _len, req = self._inflight.popleft()
            try:
                self._receive(req)
            except Exception as exc:
                log.debug("dropping in-flight read: %s", exc)

    def _next_chunk(self) -> memoryview:
        attempt = 0
        failure: BaseException | None = None
        while True:
            try:
                if failure is not None:
                    self._resume(failure, attempt)
                    failure = None
                self._fill()
                if not self._inflight:
                    return memoryview(b"")
                off, length, req = self._inflight.popleft()
                data = self._receive(req)
                if len(data) < length:
                    # Short read (file shrank, or a server that returns less): restart the pipeline
                    # right after what arrived so no range is skipped.
                    self._drain()
                    self._next = off + len(data)
                    if not data:
                        self._size = off
                return data
            except Exception as exc:
                if not _is_retryable(exc) or attempt >= self._st.options.retries:
                    raise self._st._error(exc, "read", self.location) from None
                attempt += 1
                failure = exc

    def _resume(self, exc: BaseException, attempt: int) -> None:
        """Reconnect and reopen, then continue at the first byte not yet delivered."""
        old = self._handle.connection if self._handle is not None else None
        self._inflight.clear()
        self._handle = None
        self._st._retry_pause(f"read at offset {self._pos + len(self._buf)}", self.location, exc, attempt)
        self._st._drop(self.location.server, old)
        self.reconnects += 1
        self._handle = self._open()
        size = int(self._handle.end_of_file)
        if size != self._size:
            raise StorageError(
                "the file changed size while it was being read",
                context={"path": str(self.location), "was": self._size, "now": size},
                what_to_do="back up from a checkpoint (a frozen parent disk does not change)",
            )
        self._next = self._pos + len(self._buf)

    def readinto(self, buf: Buffer) -> int:
        """Copy the next bytes into ``buf``; 0 at end of file."""
        out = memoryview(buf).cast("B")
        if not out:
            return 0
        if not self._buf:
            if self._pos >= self._size:
                return 0
            self._buf = self._next_chunk()
            if not self._buf:
                return 0
        n = min(len(out), len(self._buf))
        out[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (-1: to the end of the file)."""
        return read_through(self.readinto, max(0, self._size - self._pos) if size < 0 else size)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (short at end of file); the stream position is unchanged."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        parts: List[bytes] = []
        end = min(offset + length, self._size)
        pos = offset
        while pos < end:
            n = min(self._read_size, end - pos)

            def one(pos: int = pos, n: int = n) -> bytes:
                h = self._handle
                if h is None or not h.connection.transport.connected:
                    self._handle = self._st._call("reopen", self.location, self._open)
                    self._inflight.clear()
                    self._next = self._pos + len(self._buf)
                return bytes(self._receive(self._send(pos, n)))

            data = self._st._call("read", self.location, one)
            if not data:
                break
            parts.append(data)
            pos += len(data)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the stream position (``whence`` 0/1/2 as in :func:`os.lseek`)."""
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError("negative seek position")
        if target != self._pos:
            if self._pos < target <= self._pos + len(self._buf):
                self._buf = self._buf[target - self._pos :]
            else:
                self._drain()
                self._buf = memoryview(b"")
                self._next = target
            self._pos = target
        return self._pos

    def tell(self) -> int:
        """The stream position."""
        return self._pos

    def close(self) -> None:
        """Collect outstanding reads and close the handle (idempotent)."""
        if self._handle is None:
            return
        self._drain()
        self._buf = memoryview(b"")
        handle, self._handle = self._handle, None
        self._st._close_handle(handle)

    def __enter__(self) -> SmbReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SmbWriter:
    """Sequential writer with several large writes in flight; resends unacknowledged data after a drop.

    Data is copied once, into a chunk buffer of ``write_size`` bytes; a full chunk is sent from that
    buffer (see :func:`_send_write`) and the buffer is kept until the server acknowledged the write,
    so that it can be resent after a reconnect, then reused for a later chunk.
    """

    def __init__(self, storage: SmbStorage, location: SmbLocation, handle: Any) -> None:
        self._st = storage
        self.location = location
        self._handle: Any = handle
        self._inflight: Deque[Tuple[int, bytearray, int, Any]] = deque()  # offset, buffer, length, request
        self._spare: List[bytearray] = []
        self._current: bytearray | None = None
        self._fill = 0
        self._sent = 0  # offset of the next chunk to send
        self._written = 0
        self._closed = False
        self.reconnects = 0
        self._setup(handle)

    def __repr__(self) -> str:
        return f"SmbWriter({self.location}, written={self._written})"

    def _setup(self, handle: Any) -> None:
        conn = handle.connection
        # After a reconnect the size may differ: buffers in flight are resent as they are, spare
        # ones are kept only at the current size.
        self._chunk = max(CREDIT_PAYLOAD, min(self._st.options.write_size, conn.max_write_size))
        self._spare = [b for b in self._spare if len(b) == self._chunk]
        self._depth = max(1, self._st.options.write_depth)
        charge = (self._chunk - 1) // CREDIT_PAYLOAD + 1
        self._st.ensure_credits(conn, charge * self._depth)

    @property
    def written(self) -> int:
        """Bytes accepted by :meth:`write` so far."""
        return self._written

    def _send(self, offset: int, buf: bytearray, length: int) -> Any:
        with memoryview(buf) as view:
            return _send_write(self._handle, offset, view[:length])

    def _ack_one(self) -> None:
        off, buf, length, req = self._inflight[0]
        response = self._handle.connection.receive(req, timeout=self._st.options.timeout)
        _size, count = _WRITE_RESPONSE.unpack_from(response["data"].get_value(), 0)
        if count != length:
            raise StorageError(
                "the server wrote fewer bytes than sent",
                context={"path": str(self.location), "offset": off, "sent": length, "written": count},
                what_to_do="check free space on the destination volume",
            )
        self._inflight.popleft()
        if len(buf) == self._chunk:
            self._spare.append(buf)

    def _with_retry(self, op: Callable[[], None]) -> None:
        attempt = 0
        failure: BaseException | None = None
        while True:
            try:
                if failure is not None:
                    self._resume(failure, attempt)
                    failure = None
                op()
                return
            except Exception as exc:
                if not _is_retryable(exc) or attempt >= self._st.options.retries:
                    raise self._st._error(exc, "write", self.location) from None
                attempt += 1
                failure = exc

    def _resume(self, exc: BaseException, attempt: int) -> None:
        """Reconnect, reopen the file we created and resend everything not yet acknowledged."""
        old = self._handle.connection if self._handle is not None else None
        self._handle = None
        first = self._inflight[0][0] if self._inflight else self._sent
        self._st._retry_pause(f"write at offset {first}", self.location, exc, attempt)
        self._st._drop(self.location.server, old)
        self.reconnects += 1
        self._handle = self._st._reopen_for_write(self.location)
        self._setup(self._handle)
        resend = list(self._inflight)
        self._inflight.clear()
        for off, buf, length, _req in resend:
            self._inflight.append((off, buf, length, self._send(off, buf, length)))

    def _push(self, buf: bytearray, length: int) -> None:
        offset = self._sent

        def op() -> None:
            while len(self._inflight) >= self._depth:
                self._ack_one()
            self._inflight.append((offset, buf, length, self._send(offset, buf, length)))

        self._with_retry(op)
        self._sent += length

    def write(self, data: Union[bytes, Buffer]) -> int:
        """Append ``data`` (sent in ``write_size`` requests as it accumulates)."""
        if self._closed:
            raise ValueError("write to a closed SmbWriter")
        view = memoryview(data).cast("B")
        n = len(view)
        pos = 0
        while pos < n:
            if self._current is None:
                self._current = self._spare.pop() if self._spare else bytearray(self._chunk)
                self._fill = 0
            take = min(len(self._current) - self._fill, n - pos)
            self._current[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == len(self._current):
                buf, self._current = self._current, None
                self._push(buf, len(buf))
        self._written += n
        return n

    def close(self) -> None:
        """Send what is left, wait for every acknowledgement, flush and close."""
        if self._closed:
            return
        try:
            if self._current is not None and self._fill:
                buf, self._current = self._current, None
                self._push(buf, self._fill)

            def drain() -> None:
                while self._inflight:
                    self._ack_one()
                self._handle.flush()

            self._with_retry(drain)
        finally:
            self._closed = True
            self._current = None
            self._spare.clear()
            handle, self._handle = self._handle, None
            if handle is not None:
                self._st._close_handle(handle)

    def discard(self) -> None:
        """Stop writing and delete the partial file."""
        self._closed = True
        self._current = None
        self._spare.clear()
        self._inflight.clear()
        handle, self._handle = self._handle, None
        if handle is not None:
            self._st._close_handle(handle)
        self._st.delete(self.location, missing_ok=True)

    def __enter__(self) -> SmbWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
