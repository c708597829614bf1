"""HTTP(S) transport for WS-Management envelopes, built on pywinrm's ``winrm.transport.Transport``.

pywinrm does the authentication (NTLM, Kerberos, CredSSP, Basic) and WinRM message
encryption over HTTP; this module adds what the product needs around it:

* option checking (Basic only over HTTPS unless explicitly allowed, HTTP read
  timeout above the WS-Man OperationTimeout, certificate validation on by default);
* bounded retries of idempotent operations on connection errors, each on a fresh
  pywinrm transport (NTLM message encryption is bound to the TCP connection, so a
  reconnect needs a new handshake); Invoke is never retried;
* translation of pywinrm/requests errors into :mod:`bareos_hyperv.wsman.errors`
  classes naming the host, user and option to fix, never the password;
* debug logging of envelopes, truncated and redacted.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, List, Literal, Tuple

import requests
from winrm import transport as winrm_transport
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError
from winrm.transport import Transport

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.errors import AuthenticationError, TlsVerificationError, WsmanConnectionError

log = logging.getLogger("bareos_hyperv.wsman")

AUTH_METHODS = ("ntlm", "basic", "kerberos", "credssp")
DEFAULT_HTTP_PORT = 5985
DEFAULT_HTTPS_PORT = 5986
# Elements whose content is never logged, whatever the caller puts in them.
REDACTED_ELEMENTS = ("Password", "Credential", "Secret")


@dataclass(frozen=True)
class Endpoint:
    """Where WinRM listens: ``http(s)://host:port/path``.

    ``name`` is the host's own name when ``host`` is only an address to reach it by
    (a host map, NAT): messages then name the node the operator knows.
    """

    host: str
    port: int = DEFAULT_HTTP_PORT
    https: bool = False
    path: str = "/wsman"
    name: str | None = None

    @property
    def url(self) -> str:
        """The listener URL (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        path = self.path if self.path.startswith("/") else "/" + self.path
        return f"{'https' if self.https else 'http'}://{host}:{self.port}{path}"

    @property
    def hostport(self) -> str:
        """``host:port`` for messages, prefixed with the host's name when it differs from the address."""
        where = f"{self.host}:{self.port}"
        if self.name and self.name.lower() != self.host.lower():
            return f"{self.name} ({where})"
        return where


@dataclass(frozen=True)
class TransportOptions:
    """Connection and protocol options of a :class:`~bareos_hyperv.wsman.client.CimClient`.

    :param transport: ``ntlm`` (default; over HTTP with WinRM message encryption),
        ``basic`` (HTTPS only unless ``allow_unencrypted_basic``), ``kerberos``, ``credssp``.
    :param cert_validation: verify the HTTPS certificate (default on).
    :param ca_trust_path: CA bundle file or directory for HTTPS verification; None = system store.
    :param allow_unencrypted_basic: permit Basic over plain HTTP (password readable on the wire;
        only for test hosts with ``AllowUnencrypted=true``).
    :param operation_timeout: WS-Man ``OperationTimeout`` in seconds.
    :param read_timeout: HTTP read timeout; default ``operation_timeout + 10``; must exceed it.
    :param connect_attempts: attempts for idempotent operations on connection errors (>= 1).
    :param retry_delay: pause before the first retry, doubled each time.
    :param max_envelope_size: ``w:MaxEnvelopeSize`` in bytes (server default cap 512000).
    :param max_elements: items per Enumerate/Pull page.
    :param locale: ``w:Locale``/``p:DataLocale`` (fault texts and job errors in this language).
    :param proxy: HTTP proxy URL; None = no proxy (environment proxies are ignored).
    :param kerberos_service: SPN service for Kerberos (pywinrm ``service``), default HTTP.
    :param kerberos_hostname_override: host name for the Kerberos SPN when connecting by IP.
    :param log_body_limit: characters of each envelope shown in debug logs.
    """

    transport: str = "ntlm"
    cert_validation: bool = True
    ca_trust_path: str | None = None
    allow_unencrypted_basic: bool = False
    operation_timeout: float = 60.0
    read_timeout: float | None = None
    connect_attempts: int = 3
    retry_delay: float = 0.5
    max_envelope_size: int = 512000
    max_elements: int = 100
    locale: str = "en-US"
    proxy: str | None = None
    kerberos_service: str | None = None
    kerberos_hostname_override: str | None = None
    log_body_limit: int = 2000

    @property
    def effective_read_timeout(self) -> float:
        """HTTP read timeout actually used."""
        return self.read_timeout if self.read_timeout is not None else self.operation_timeout + 10.0

    def validate(self, endpoint: Endpoint) -> None:
        """Refuse inconsistent options with a message naming the option.

        :raises ConfigurationError: see the individual checks.
        """
        if self.transport not in AUTH_METHODS:
            raise ConfigurationError(
                f"unknown transport {self.transport!r}",
                what_to_do=f"set transport= to one of {', '.join(AUTH_METHODS)}",
            )
        if self.transport == "basic" and not endpoint.https and not self.allow_unencrypted_basic:
            raise ConfigurationError(
                f"transport=basic over plain HTTP would send the password readable to {endpoint.hostport}",
                what_to_do="use HTTPS (port 5986), or transport=ntlm, or allow it explicitly for a test host",
            )
        if self.operation_timeout <= 0:
            raise ConfigurationError(
                "operation_timeout must be positive", what_to_do="set operation_timeout to seconds, e.g. 60"
            )
        if self.effective_read_timeout <= self.operation_timeout:
            raise ConfigurationError(
                f"read_timeout ({self.effective_read_timeout:g}s) must exceed operation_timeout "
                f"({self.operation_timeout:g}s), or the HTTP layer gives up before WinRM answers",
                what_to_do="raise read_timeout or leave it unset",
            )
        if self.connect_attempts < 1 or self.max_elements < 1 or self.max_envelope_size < 8192:
            raise ConfigurationError(
                "connect_attempts and max_elements must be >= 1 and max_envelope_size >= 8192",
                what_to_do="fix the transport options",
            )


class Redactor:
    """Removes secrets from text before it is logged."""

    def __init__(self, secrets: List[str], limit: int) -> None:
        self._secrets = [s for s in secrets if s]
        self._limit = limit
        names = "|".join(REDACTED_ELEMENTS)
        self._element = re.compile(
            rf"(<(?:[\w.-]+:)?(?:\w*(?:{names})\w*)(?:\s[^>]*)?>)(.*?)(</(?:[\w.-]+:)?\w+>)",
            re.IGNORECASE | re.DOTALL,
        )

    def __call__(self, text: str) -> str:
        """Redacted and truncated text."""
        text = self._element.sub(r"\1***\3", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if len(text) > self._limit:
            text = f"{text[: self._limit]}... [{len(text) - self._limit} more characters]"
        return text


def _secrets_of(credentials: Credentials) -> List[str]:
    password = credentials.password
    forms = [password]
    for user in {credentials.username, credentials.principal}:
        forms.append(base64.b64encode(f"{user}:{password}".encode()).decode())
    return forms


class WsmanTransport:
    """Sends one envelope and returns ``(http_status, body)``; owns the pywinrm transport.

    Non-2xx answers are returned, not raised (they usually carry a SOAP fault);
    authentication, TLS and connection failures raise the typed errors.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        options: TransportOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        options.validate(endpoint)
        self.endpoint = endpoint
        self.options = options
        self._credentials = credentials
        self._sleep = sleep
        self._pywinrm: Transport | None = None
        self.redact = Redactor(_secrets_of(credentials), options.log_body_limit)
        self.request_count = 0

    def _new_pywinrm(self) -> Transport:
        opts = self.options
        missing = {"kerberos": ("HAVE_KERBEROS", "pywinrm[kerberos]"), "credssp": ("HAVE_CREDSSP", "pywinrm[credssp]")}
        if opts.transport in missing:
            flag, extra = missing[opts.transport]
            if not getattr(winrm_transport, flag, False):
                raise ConfigurationError(
                    f"transport={opts.transport} needs Python support that is not installed on this machine",
                    context={"host": self.endpoint.hostport},
                    what_to_do=f"install it into the agent's Python (pip install '{extra}') or use transport=ntlm",
                )
        auth: Literal["ntlm", "basic", "kerberos", "credssp"] = opts.transport  # type: ignore[assignment]  # validated
        try:
            return Transport(
                endpoint=self.endpoint.url,
                username=self._credentials.principal,
                password=self._credentials.password,
                auth_method=auth,
                # "auto" wraps NTLM/Kerberos/CredSSP messages over HTTP, as WinRM requires
                # with AllowUnencrypted=false; HTTPS relies on TLS.
                message_encryption="auto",
                server_cert_validation="validate" if opts.cert_validation else "ignore",
                # None (not pywinrm's "legacy_requests") so that REQUESTS_CA_BUNDLE cannot
                # silently replace the trust the operator configured.
                ca_trust_path=opts.ca_trust_path,  # type: ignore[arg-type]  # pywinrm handles None
                read_timeout_sec=math.ceil(opts.effective_read_timeout),
                proxy=opts.proxy,
                service=opts.kerberos_service,
                kerberos_hostname_override=opts.kerberos_hostname_override,
            )
        except WinRMError as exc:
            raise ConfigurationError(
                f"cannot set up transport={opts.transport} to {self.endpoint.hostport}: "
                f"{self.redact(str(exc))}",
                what_to_do="check the transport option and that its Python support (pykerberos, "
                "requests-credssp) is installed",
            ) from None

    def close(self) -> None:
        """Close the HTTP session (a new one is opened on the next request)."""
        if self._pywinrm is not None:
            self._pywinrm.close_session()
            self._pywinrm = None

    def _reset(self) -> None:
        try:
            self.close()
        except Exception:
            self._pywinrm = None

    def send(self, data: bytes, *, operation: str, idempotent: bool) -> Tuple[int, bytes]:
        """Send one envelope; retry connection failures of idempotent operations.

        :param operation: label for logs and errors (``Get Msvm_ComputerSystem``).
        :raises AuthenticationError: HTTP 401.
        :raises TlsVerificationError: the certificate could not be verified.
        :raises WsmanConnectionError: connection failed (after the allowed attempts).
        """
        attempts = self.options.connect_attempts if idempotent else 1
        delay = self.options.retry_delay
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "-> %s %s: %s",
                self.endpoint.hostport,
                operation,
                self.redact(data.decode("utf-8", "replace")),
            )
        for attempt in range(1, attempts + 1):
            try:
                status, body = self._send_once(data)
            except requests.exceptions.SSLError as exc:
                self._reset()
                raise TlsVerificationError(
                    f"the HTTPS certificate of {self.endpoint.hostport} could not be verified "
                    f"({self._reason(exc)})",
                    what_to_do="set ca_trust_path= to the CA bundle that signed the host's WinRM "
                    "certificate, "
                    "or cert_validation=no to skip the check (not recommended)",
                    context={"host": self.endpoint.hostport},
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                self._reset()
                reason = self._reason(exc)
                if attempt < attempts:
                    log.warning(
                        "%s to %s failed (%s); attempt %d of %d in %.1fs",
                        operation,
                        self.endpoint.hostport,
                        reason,
                        attempt + 1,
                        attempts,
                        delay,
                    )
                    self._sleep(delay)
                    delay *= 2
                    continue
                hint = (
                    "check that the host is up and WinRM listens on this port (winrm quickconfig; firewall)"
                )
                if not idempotent:
                    hint = (
                        "the call may or may not have been carried out: check the object's state "
                        "on the host before repeating it; " + hint
                    )
                raise WsmanConnectionError(
                    f"{operation} to {self.endpoint.hostport} failed: {reason}"
                    + (f" (after {attempts} attempts)" if attempts > 1 else ""),
                    what_to_do=hint,
                    context={"host": self.endpoint.hostport},
                ) from None
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "<- %s %s: HTTP %d: %s",
                    self.endpoint.hostport,
                    operation,
                    status,
                    self.redact(body.decode("utf-8", "replace")),
                )
            return status, body
        raise AssertionError("unreachable")  # pragma: no cover - loop always returns or raises

    def _send_once(self, data: bytes) -> Tuple[int, bytes]:
        if self._pywinrm is None:
            self._pywinrm = self._new_pywinrm()
        self.request_count += 1
        try:
            return 200, self._pywinrm.send_message(data)
        except InvalidCredentialsError:
            self._reset()
            raise AuthenticationError(
                f"{self.endpoint.name or self.endpoint.host} rejected the credentials of user "
                f"{self._credentials.principal} "
                f"(HTTP 401, transport={self.options.transport})",
                what_to_do="check user name, password and domain in the credentials file, and that the "
                "host allows this authentication method (winrm get winrm/config/service/auth)",
                context={"host": self.endpoint.hostport},
            ) from None
        except WinRMTransportError as exc:
            text = exc.response_text
            return int(exc.code), text.encode("utf-8") if isinstance(text, str) else bytes(text or b"")
        except WinRMError as exc:
            self._reset()
            raise WsmanConnectionError(
                f"WinRM transport to {self.endpoint.hostport} failed: {self.redact(str(exc))}",
                what_to_do="check the transport option and the host's WinRM listener configuration",
                context={"host": self.endpoint.hostport},
            ) from None

    def _reason(self, exc: BaseException) -> str:
        """A short, password-free reason from a requests/urllib3 exception chain."""
        inner: BaseException | None = exc
        text = str(exc)
        while inner is not None:
            if isinstance(inner, ConnectionRefusedError):
                return "connection refused"
            args = getattr(inner, "args", ())
            # urllib3 wraps the cause in args[0]; requests chains it as __cause__/__context__.
            inner = args[0] if args and isinstance(args[0], BaseException) else inner.__cause__ or inner.__context__
            if inner is not None and str(inner):
                text = str(inner)
        return self.redact(text)[:300]
