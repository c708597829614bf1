"""Authentication and message encryption for the simulator's WinRM listener.

What a Windows WinRM service does, and so what this module does:

* ``Negotiate`` with NTLM tokens, raw (pywinrm/requests-ntlm) or wrapped in SPNEGO
  (pypsrp, Windows clients). The security context belongs to the TCP connection.
* Message encryption over HTTP ([MS-WSMV] 2.2.9.1.1): a ``multipart/encrypted`` body whose
  ``application/octet-stream`` part holds a 4-byte little-endian signature length, the
  signature and the sealed SOAP envelope.
* ``Basic`` for local accounts only (Windows refuses Basic for domain accounts).

NTLM acceptance is pyspnego's. Its acceptor reads the accounts from the file named by the
``NTLM_USER_FILE`` environment variable, both when the context is created and when it checks
the AUTHENTICATE message; it has no server-side credential object. :class:`UserDatabase`
therefore writes the accounts (NT hashes, never passwords, in smbpasswd format so that any
character may appear in a password) to a private file, and :class:`NegotiateAcceptor` sets the
variable only for the duration of each pyspnego call, under a process-wide lock, then puts
back whatever was there. No other code of the process, nor a child process started outside
those few milliseconds, sees it.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping, Tuple

import spnego
from spnego.channel_bindings import GssChannelBindings

NTLM_USER_FILE_ENV = "NTLM_USER_FILE"
# smbpasswd lines need an LM hash field; LM responses are never produced by current clients
# (LM_COMPAT_LEVEL >= 2), so no LM hash is stored.
_NO_LM_HASH = "0" * 32

# WinRM message encryption framing ([MS-WSMV] 2.2.9.1.1, as Windows and pywinrm write it).
ENCRYPTED_BOUNDARY = b"Encrypted Boundary"
SPNEGO_ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = (
    f'multipart/encrypted;protocol="{SPNEGO_ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"')
SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
_ORIGINAL_CONTENT_RE = re.compile(
    rb"OriginalContent:\s*type=([^;\r\n]+)(?:;\s*charset=([^;\r\n]+))?;\s*Length=(\d+)", re.IGNORECASE)
_OCTET_STREAM_HEADER_RE = re.compile(rb"Content-Type:\s*application/octet-stream\r\n", re.IGNORECASE)

# NTLM AUTHENTICATE message ([MS-NLMP] 2.2.1.3) and NTLMv2 response ([MS-NLMP] 2.2.2.8) layout,
# for the one thing read here: whether the client sent a channel binding (MsvAvChannelBindings).
_NTLM_AUTHENTICATE_PREFIX = b"NTLMSSP\x00\x03\x00\x00\x00"
_NT_RESPONSE_FIELDS_OFFSET = 20
_NTLMV1_RESPONSE_LENGTH = 24
_NTPROOFSTR_LENGTH = 16
_NTLMV2_CLIENT_CHALLENGE_HEADER = 28
_MSV_AV_EOL = 0x0000
_MSV_AV_CHANNEL_BINDINGS = 0x000A

# CBT hardening levels, named as WinRM's Service/Auth/CbtHardeningLevel.
CBT_NONE = "none"  # never check the channel binding
CBT_RELAXED = "relaxed"  # check it when the client sent one (Windows default)
CBT_STRICT = "strict"  # require it over HTTPS
CBT_LEVELS = (CBT_NONE, CBT_RELAXED, CBT_STRICT)

_ENV_LOCK = threading.Lock()


class AuthenticationFailed(Exception):
    """The client's token or credentials were rejected (the listener answers HTTP 401)."""


class EncryptionError(Exception):
    """An encrypted body could not be parsed or unsealed (the listener answers HTTP 400)."""


# --- accounts ---------------------------------------------------------------------------------


def _md4(data: bytes) -> bytes:
    """MD4 (RFC 1320). OpenSSL 3 no longer provides it to hashlib, and the NT hash is MD4."""

    def rotl(x: int, n: int) -> int:
        x &= 0xFFFFFFFF
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    message = bytearray(data)
    bit_length = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    message.append(0x80)
    while len(message) % 64 != 56:
        message.append(0)
    message += struct.pack("<Q", bit_length)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", bytes(message[offset:offset + 64]))
        aa, bb, cc, dd = a, b, c, d
        for i in (0, 4, 8, 12):  # round 1: F(x,y,z) = xy v not(x)z
            a = rotl(a + ((b & c) | (~b & d)) + x[i], 3)
            d = rotl(d + ((a & b) | (~a & c)) + x[i + 1], 7)
            c = rotl(c + ((d & a) | (~d & b)) + x[i + 2], 11)
            b = rotl(b + ((c & d) | (~c & a)) + x[i + 3], 19)
        for i in (0, 1, 2, 3):  # round 2: G(x,y,z) = xy v xz v yz
            a = rotl(a + ((b & c) | (b & d) | (c & d)) + x[i] + 0x5A827999, 3)
            d = rotl(d + ((a & b) | (a & c) | (b & c)) + x[i + 4] + 0x5A827999, 5)
            c = rotl(c + ((d & a) | (d & b) | (a & b)) + x[i + 8] + 0x5A827999, 9)
            b = rotl(b + ((c & d) | (c & a) | (d & a)) + x[i + 12] + 0x5A827999, 13)
        for i in (0, 2, 1, 3):  # round 3: H(x,y,z) = x xor y xor z
            a = rotl(a + (b ^ c ^ d) + x[i] + 0x6ED9EBA1, 3)
            d = rotl(d + (a ^ b ^ c) + x[i + 8] + 0x6ED9EBA1, 9)
            c = rotl(c + (d ^ a ^ b) + x[i + 4] + 0x6ED9EBA1, 11)
            b = rotl(b + (c ^ d ^ a) + x[i + 12] + 0x6ED9EBA1, 15)
        a = (a + aa) & 0xFFFFFFFF
        b = (b + bb) & 0xFFFFFFFF
        c = (c + cc) & 0xFFFFFFFF
        d = (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)


def nt_hash(password: str) -> bytes:
    """The NT one-way function of a password: MD4 of its UTF-16LE encoding ([MS-NLMP] 3.3.1)."""
    return _md4(password.encode("utf-16-le"))


def split_account(name: str) -> Tuple[str, str]:
    """Split ``DOMAIN\\user`` or ``user@domain`` into (domain, user); a bare ``user`` has domain ""."""
    if "\\" in name:
        domain, _, user = name.partition("\\")
        return domain, user
    if "@" in name:
        user, _, domain = name.rpartition("@")
        return domain, user
    return "", name


@dataclass(frozen=True)
class _Account:
    key: str  # the name as configured: what the dispatcher sees as the user
    domain: str  # "" for a local account of the node
    user: str
    password: str

    def __repr__(self) -> str:  # never show the password
        return f"_Account({self.key!r})"


class UserDatabase:
    """The accounts a simulated node accepts: ``{"user": password, "DOMAIN\\\\user": password}``.

    A name without a domain is a local account of the node; as on Windows it is also accepted
    as ``.\\user`` and ``NODE\\user``. A name with a domain is a domain account; it can log on
    with Negotiate only, like on Windows, where Basic covers local accounts only.
    """

    def __init__(self, users: Mapping[str, str], node: str) -> None:
        self.node = node
        self._accounts: dict[Tuple[str, str], _Account] = {}
        for key, password in users.items():
            domain, user = split_account(key)
            if not user or ":" in key or any(ch in key for ch in "\r\n"):
                raise ValueError(
                    f"hvsim: invalid user name {key!r}: use 'user' or 'DOMAIN\\user' without ':'")
            account = _Account(key=key, domain=domain, user=user, password=password)
            for alias in self._domain_aliases(domain):
                self._accounts[(alias.upper(), user.upper())] = account

    def __repr__(self) -> str:
        return f"UserDatabase(node={self.node!r}, users={sorted({a.key for a in self._accounts.values()})!r})"

    def _domain_aliases(self, domain: str) -> Tuple[str, ...]:
        if domain:
            return (domain,)
        return ("", ".", self.node)

    def lookup(self, domain: str, user: str) -> str | None:
        """The configured name of the account a client names as ``domain``/``user``, if any."""
        account = self._accounts.get((domain.upper(), user.upper()))
        return account.key if account else None

    def check_basic(self, username: str, password: str) -> str | None:
        """Verify Basic credentials; return the configured account name, or None when refused."""
        domain, user = split_account(username)
        account = self._accounts.get((domain.upper(), user.upper()))
        if account is None or account.domain:
            return None
        if not hmac.compare_digest(account.password.encode("utf-8"), password.encode("utf-8")):
            return None
        return account.key

    def write_ntlm_store(self, path: str) -> None:
        """Write the accounts as pyspnego's NTLM acceptor reads them (smbpasswd format, NT hashes)."""
        lines = []
        for (domain, user), account in self._accounts.items():
            name = f"{domain}\\{user}" if domain else user
            hash_hex = nt_hash(account.password).hex().upper()
            lines.append(f"{name}:0:{_NO_LM_HASH}:{hash_hex}:[U          ]:LCT-00000000\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)


@contextlib.contextmanager
def _ntlm_user_file(path: str) -> Iterator[None]:
    with _ENV_LOCK:
        previous = os.environ.get(NTLM_USER_FILE_ENV)
        os.environ[NTLM_USER_FILE_ENV] = path
        try:
            yield
        finally:
            if previous is None:
                del os.environ[NTLM_USER_FILE_ENV]
            else:
                os.environ[NTLM_USER_FILE_ENV] = previous


# --- Negotiate --------------------------------------------------------------------------------


def ntlm_sent_channel_binding(token: bytes) -> bool:
    """Whether an NTLM AUTHENTICATE token (raw or inside SPNEGO) carries a non-zero channel binding."""
    start = token.find(_NTLM_AUTHENTICATE_PREFIX)
    if start < 0:
        return False
    message = token[start:]
    if len(message) < _NT_RESPONSE_FIELDS_OFFSET + 8:
        return False
    length, _max_length, offset = struct.unpack_from("<HHI", message, _NT_RESPONSE_FIELDS_OFFSET)
    response = message[offset:offset + length]
    if len(response) <= _NTLMV1_RESPONSE_LENGTH:
        return False  # NTLMv1 has no AV pairs
    pairs = response[_NTPROOFSTR_LENGTH + _NTLMV2_CLIENT_CHALLENGE_HEADER:]
    pos = 0
    while pos + 4 <= len(pairs):
        av_id, av_len = struct.unpack_from("<HH", pairs, pos)
        pos += 4
        if av_id == _MSV_AV_EOL:
            break
        if av_id == _MSV_AV_CHANNEL_BINDINGS:
            return pairs[pos:pos + av_len].strip(b"\x00") != b""
        pos += av_len
    return False


class NegotiateAcceptor:
    """The server side of one connection's Negotiate (NTLM) security context."""

    def __init__(self, users: UserDatabase, store_path: str, hostname: str,
                 channel_binding: bytes | None = None, cbt_hardening: str = CBT_RELAXED) -> None:
        if cbt_hardening not in CBT_LEVELS:
            raise ValueError(
                f"hvsim: cbt_hardening must be one of {', '.join(CBT_LEVELS)}, not {cbt_hardening!r}")
        self._users = users
        self._store_path = store_path
        self._channel_binding = channel_binding
        self._cbt_hardening = cbt_hardening
        self.username: str | None = None
        with _ntlm_user_file(store_path):
            # 'negotiate' accepts both raw NTLM tokens and SPNEGO-wrapped ones, as Windows does;
            # without gssapi pyspnego offers NTLM only, so Kerberos is refused.
            self._context = spnego.server(hostname=hostname, service="http", protocol="negotiate")

    @property
    def complete(self) -> bool:
        """Whether the handshake has finished successfully."""
        return self.username is not None

    def step(self, token: bytes) -> bytes | None:
        """Feed one token from the client; return the token to send back (None when there is none).

        Raises :class:`AuthenticationFailed` when the token is malformed, not NTLM, or carries
        wrong credentials.
        """
        bindings = self._bindings_for(token)
        try:
            with _ntlm_user_file(self._store_path):
                out = self._context.step(token, channel_bindings=bindings)
        except Exception as err:
            # The token is whatever the client sent: any parsing failure in pyspnego is a refusal,
            # not a server error. Its messages describe the token; they never hold a password.
            raise AuthenticationFailed(str(err) or type(err).__name__) from None
        if self._context.complete:
            principal = self._context.client_principal or ""
            domain, user = split_account(principal)
            name = self._users.lookup(domain, user)
            if name is None:
                raise AuthenticationFailed(
                    f"authenticated principal {principal!r} is not a configured account")
            self.username = name
        return out

    def _bindings_for(self, token: bytes) -> GssChannelBindings | None:
        if self._channel_binding is None or self._cbt_hardening == CBT_NONE:
            return None
        if self._cbt_hardening == CBT_RELAXED and not ntlm_sent_channel_binding(token):
            return None
        return GssChannelBindings(application_data=b"tls-server-end-point:" + self._channel_binding)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt a SOAP envelope into a WinRM ``multipart/encrypted`` body."""
        if not self.complete:
            raise EncryptionError("no security context on this connection")
        wrapped = self._context.wrap_winrm(plaintext)
        boundary = b"--" + ENCRYPTED_BOUNDARY
        return b"".join([
            boundary, b"\r\n",
            b"\tContent-Type: ", SPNEGO_ENCRYPTED_PROTOCOL.encode("ascii"), b"\r\n",
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=",
            str(len(plaintext)).encode("ascii"), b"\r\n",
            boundary, b"\r\n",
            b"\tContent-Type: application/octet-stream\r\n",
            struct.pack("<I", len(wrapped.header)), wrapped.header, wrapped.data,
            boundary, b"--\r\n",
        ])

    def unseal(self, body: bytes) -> bytes:
        """Decrypt a WinRM ``multipart/encrypted`` body; raise :class:`EncryptionError` if it is not one."""
        if not self.complete:
            raise EncryptionError("no security context on this connection")
        boundary = b"--" + ENCRYPTED_BOUNDARY
        if not body.startswith(boundary):
            raise EncryptionError("encrypted body does not start with the MIME boundary")
        original = _ORIGINAL_CONTENT_RE.search(body)
        if original is None:
            raise EncryptionError("encrypted body has no OriginalContent header")
        second = body.find(boundary + b"\r\n", original.end())
        header = _OCTET_STREAM_HEADER_RE.search(body, second if second >= 0 else len(body))
        if second < 0 or header is None:
            raise EncryptionError("encrypted body has no application/octet-stream part")
        payload = body[header.end():]
        for terminator in (boundary + b"--\r\n", boundary + b"--"):
            if payload.endswith(terminator):
                payload = payload[:-len(terminator)]
                break
        else:
            raise EncryptionError("encrypted body does not end with the closing MIME boundary")
        if len(payload) < 4:
            raise EncryptionError("encrypted part is too short")
        (signature_length,) = struct.unpack_from("<I", payload)
        if signature_length > len(payload) - 4:
            raise EncryptionError("encrypted part is shorter than its signature length")
        signature = payload[4:4 + signature_length]
        sealed = payload[4 + signature_length:]
        try:
            plaintext = self._context.unwrap_winrm(signature, sealed)
        except Exception as err:  # a tampered or replayed body: anything pyspnego raises
            raise EncryptionError(f"cannot unseal the message: {err}") from None
        expected = int(original.group(3))
        if len(plaintext) != expected:
            raise EncryptionError(
                f"unsealed length {len(plaintext)} differs from OriginalContent Length {expected}")
        return plaintext


def parse_basic(value: str) -> Tuple[str, str] | None:
    """Decode the credentials of an ``Authorization: Basic`` value (after the scheme); None if malformed."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        # requests (and so pywinrm) encodes Basic credentials as Latin-1.
        decoded = raw.decode("latin-1")
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password
