"""Throwaway certificate authority and server certificates for the simulator's HTTPS listeners.

A Windows host answers WinRM over HTTPS (port 5986) with a certificate that its clients must
trust; the simulator does the same with a CA generated per test run. The CA certificate is
written to a file so that a client can be pointed at it (pywinrm's ``ca_trust_path``), and a
second, unrelated CA makes verification fail the way an unknown issuer does.

One :class:`CertificateAuthority` may sign the certificates of every node of a simulated
cluster, so a single trust file covers the whole cluster.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# ECDSA P-256 keys: generating one takes a millisecond (RSA-2048 takes tens), and tests create
# many servers. The signature hash (SHA-256) is also what the client hashes for NTLM channel
# binding (RFC 5929 tls-server-end-point), so CBT is exercised with a realistic value.
_CURVE = ec.SECP256R1()
_SIGNATURE_HASH = hashes.SHA256()
# Backdate validity a little so that a clock a few seconds apart never makes a fresh cert "not yet valid".
_BACKDATE = _dt.timedelta(hours=1)
CA_VALIDITY = _dt.timedelta(days=30)
SERVER_VALIDITY = _dt.timedelta(days=7)
# Names every server certificate carries besides the node's own, because tests reach the
# simulator through the loopback interface.
LOOPBACK_DNS_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write_private(path: str, data: bytes) -> None:
    """Write ``data`` to a new file readable by the owner only (private keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate and key on disk, and the CA certificate that signed it."""

    cert_path: str
    key_path: str
    ca_cert_path: str
    cert_der: bytes

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for a listening socket that presents this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def channel_binding_hash(self) -> bytes:
        """RFC 5929 ``tls-server-end-point`` hash of the certificate, as NTLM channel binding uses it."""
        cert = x509.load_der_x509_certificate(self.cert_der)
        algorithm = cert.signature_hash_algorithm
        # RFC 5929 4.1: MD5 and SHA-1 signatures are hashed with SHA-256 instead.
        if algorithm is None or algorithm.name in ("md5", "sha1"):
            algorithm = hashes.SHA256()
        digest = hashes.Hash(algorithm)
        digest.update(self.cert_der)
        return digest.finalize()


class CertificateAuthority:
    """A self-signed CA that lives in ``directory`` and issues server certificates."""

    def __init__(self, directory: str, name: str = "hvsim test CA") -> None:
        self.directory = directory
        self.name = name
        os.makedirs(directory, exist_ok=True)
        self._key = ec.generate_private_key(_CURVE)
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hvsim"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        public_key = self._key.public_key()
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, _SIGNATURE_HASH)
        )
        self.cert_path = os.path.join(directory, "ca.pem")
        with open(self.cert_path, "wb") as out:
            out.write(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue_server_certificate(self, node: str, extra_names: Sequence[str] = (),
                                 file_stem: str | None = None) -> ServerCertificate:
        """Issue a TLS server certificate for ``node`` (plus loopback names) and write it next to the CA.

        ``extra_names`` are added as DNS names, or as IP addresses when they parse as one.
        """
        key = ec.generate_private_key(_CURVE)
        dns_names: list[str] = []
        ips: list[str] = []
        for name in (node, *extra_names, *LOOPBACK_DNS_NAMES, *LOOPBACK_IPS):
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if name not in dns_names:
                    dns_names.append(name)
            else:
                if name not in ips:
                    ips.append(name)
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        now = _now()
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + SERVER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(self._key, _SIGNATURE_HASH)
        )
        stem = file_stem or _safe_file_stem(node)
        cert_path = os.path.join(self.directory, stem + ".crt.pem")
        key_path = os.path.join(self.directory, stem + ".key.pem")
        with open(cert_path, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return ServerCertificate(cert_path=cert_path, key_path=key_path, ca_cert_path=self.cert_path,
                                 cert_der=cert.public_bytes(serialization.Encoding.DER))


def _safe_file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "server"
