"""hvsim.auth: NT hash, account database, NTLM acceptor, WinRM message framing."""

from __future__ import annotations

import base64
import os
import struct

import pytest
import spnego
from spnego.channel_bindings import GssChannelBindings

from hvsim.auth import (
    CBT_STRICT,
    NTLM_USER_FILE_ENV,
    AuthenticationFailed,
    EncryptionError,
    NegotiateAcceptor,
    UserDatabase,
    _md4,
    nt_hash,
    ntlm_sent_channel_binding,
    parse_basic,
    split_account,
)

PASSWORD = "S3cr:t-pässwörd"  # a colon and non-ASCII: both must survive the NTLM store
USERS = {"admin": PASSWORD, "CONTOSO\\svc-backup": "Dom@in-Pw1"}


def test_md4_matches_rfc1320_vectors() -> None:
    assert _md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert _md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert _md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"


def test_nt_hash_of_password_is_the_well_known_value() -> None:
    assert nt_hash("password").hex().upper() == "8846F7EAEE8FB117AD06BDD830B7586C"


def test_split_account_forms() -> None:
    assert split_account("admin") == ("", "admin")
    assert split_account("CONTOSO\\bob") == ("CONTOSO", "bob")
    assert split_account("bob@contoso.test") == ("contoso.test", "bob")


def test_local_account_aliases_and_domain_accounts() -> None:
    db = UserDatabase(USERS, node="HV01")
    for domain in ("", ".", "hv01", "HV01"):
        assert db.lookup(domain, "ADMIN") == "admin"
    assert db.lookup("OTHER", "admin") is None
    assert db.lookup("contoso", "SVC-BACKUP") == "CONTOSO\\svc-backup"
    assert db.lookup("", "svc-backup") is None


def test_basic_is_for_local_accounts_only() -> None:
    db = UserDatabase(USERS, node="HV01")
    assert db.check_basic("admin", PASSWORD) == "admin"
    assert db.check_basic(".\\admin", PASSWORD) == "admin"
    assert db.check_basic("admin", PASSWORD + "x") is None
    assert db.check_basic("CONTOSO\\svc-backup", "Dom@in-Pw1") is None


def test_invalid_user_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="invalid user name"):
        UserDatabase({"a:b": "x"}, node="HV01")


def test_repr_and_store_file_never_hold_a_password(tmp_path: object) -> None:
    db = UserDatabase(USERS, node="HV01")
    assert PASSWORD not in repr(db)
    path = os.path.join(str(tmp_path), "store")
    db.write_ntlm_store(path)
    with open(path, encoding="utf-8") as store:
        text = store.read()
    assert PASSWORD not in text and "Dom@in-Pw1" not in text
    assert nt_hash(PASSWORD).hex().upper() in text
    assert os.stat(path).st_mode & 0o077 == 0


def test_parse_basic() -> None:
    value = base64.b64encode(("admin:" + PASSWORD).encode()).decode()
    assert parse_basic(value) == ("admin", PASSWORD)
    assert parse_basic("!!!") is None
    assert parse_basic(base64.b64encode(b"no-colon").decode()) is None


def _handshake(acceptor: NegotiateAcceptor, client: spnego.ContextProxy) -> None:
    token = client.step()
    while not acceptor.complete:
        assert token is not None
        out = acceptor.step(token)
        if acceptor.complete:
            if out:
                client.step(out)
            break
        token = client.step(out)


def _acceptor(tmp_path: object, **kwargs: object) -> NegotiateAcceptor:
    db = UserDatabase(USERS, node="HV01")
    path = os.path.join(str(tmp_path), "store")
    db.write_ntlm_store(path)
    return NegotiateAcceptor(db, path, hostname="HV01", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_acceptor_authenticates_raw_and_spnego_ntlm(tmp_path: object, protocol: str) -> None:
    acceptor = _acceptor(tmp_path)
    client = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol=protocol)
    _handshake(acceptor, client)
    assert acceptor.username == "admin"


def test_acceptor_rejects_wrong_password_and_leaves_env_alone(tmp_path: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NTLM_USER_FILE_ENV, "/somebody/elses/file")
    acceptor = _acceptor(tmp_path)
    client = spnego.client("admin", "wrong", hostname="HV01", service="http", protocol="ntlm")
    with pytest.raises(AuthenticationFailed):
        _handshake(acceptor, client)
    assert os.environ[NTLM_USER_FILE_ENV] == "/somebody/elses/file"
    monkeypatch.delenv(NTLM_USER_FILE_ENV)
    acceptor = _acceptor(tmp_path)
    _handshake(acceptor, spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm"))
    assert NTLM_USER_FILE_ENV not in os.environ


def test_garbage_token_is_a_refusal(tmp_path: object) -> None:
    acceptor = _acceptor(tmp_path)
    with pytest.raises(AuthenticationFailed):
        acceptor.step(b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02junk")


def test_channel_binding_detection_and_strict_check(tmp_path: object) -> None:
    good = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x11" * 32)
    client = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm",
                           channel_bindings=good)
    acceptor = _acceptor(tmp_path, channel_binding=b"\x11" * 32, cbt_hardening=CBT_STRICT)
    negotiate = client.step()
    assert negotiate is not None
    challenge = acceptor.step(negotiate)
    authenticate = client.step(challenge)
    assert authenticate is not None and ntlm_sent_channel_binding(authenticate)
    acceptor.step(authenticate)
    assert acceptor.complete

    no_cbt = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm")
    acceptor = _acceptor(tmp_path, channel_binding=b"\x11" * 32, cbt_hardening=CBT_STRICT)
    challenge = acceptor.step(no_cbt.step() or b"")
    authenticate = no_cbt.step(challenge)
    assert authenticate is not None and not ntlm_sent_channel_binding(authenticate)
    with pytest.raises(AuthenticationFailed):
        acceptor.step(authenticate)


def _client_seal(client: spnego.ContextProxy, plaintext: bytes) -> bytes:
    wrapped = client.wrap_winrm(plaintext)
    return (b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n"
            b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n" % len(plaintext)
            + struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
            + b"--Encrypted Boundary--\r\n")


def test_seal_unseal_round_trip_and_tampering(tmp_path: object) -> None:
    acceptor = _acceptor(tmp_path)
    client = spnego.client("admin", PASSWORD, hostname="HV01", service="http", protocol="ntlm")
    _handshake(acceptor, client)
    body = _client_seal(client, b"<s:Envelope>one</s:Envelope>")
    assert b"one" not in body
    assert acceptor.unseal(body) == b"<s:Envelope>one</s:Envelope>"

    reply = acceptor.seal(b"<s:Envelope>answer</s:Envelope>")
    assert b"answer" not in reply
    payload = reply.split(b"application/octet-stream\r\n", 1)[1][:-len(b"--Encrypted Boundary--\r\n")]
    (sig_len,) = struct.unpack_from("<I", payload)
    answer = client.unwrap_winrm(payload[4:4 + sig_len], payload[4 + sig_len:])
    assert answer == b"<s:Envelope>answer</s:Envelope>"

    tampered = bytearray(_client_seal(client, b"<s:Envelope>two</s:Envelope>"))
    tampered[-30] ^= 0xFF
    with pytest.raises(EncryptionError):
        acceptor.unseal(bytes(tampered))
    with pytest.raises(EncryptionError, match="MIME boundary"):
        acceptor.unseal(b"<s:Envelope/>")
