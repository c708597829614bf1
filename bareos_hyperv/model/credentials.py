"""Credentials for the Hyper-V hosts (standard library only).

Sources, in the order :meth:`Credentials.load` tries them:

1. a credentials file (``credentials_file=`` plugin option), lines of ``key=value``:
   ``username``, ``password``, ``domain`` (optional); ``#`` starts a comment line;
   the value is everything after the first ``=`` with surrounding blanks removed,
   and a value wrapped in double quotes keeps its inner blanks;
2. the environment: ``BAREOS_HYPERV_USERNAME``, ``BAREOS_HYPERV_PASSWORD``,
   ``BAREOS_HYPERV_DOMAIN``.

Decision (documented in the module and the error): a credentials file that group
or others can read is **refused**, like ssh refuses such private keys: a warning
would be lost in a job log while the password stays exposed.  ``chmod 600`` fixes it.

The password never appears in ``repr``/``str`` of the object, in error messages or logs.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, Mapping

from bareos_hyperv.errors import ConfigurationError

ENV_USERNAME = "BAREOS_HYPERV_USERNAME"
ENV_PASSWORD = "BAREOS_HYPERV_PASSWORD"  # noqa: S105 - the variable name, not a password
ENV_DOMAIN = "BAREOS_HYPERV_DOMAIN"

_KEYS = ("username", "password", "domain")


class Credentials:
    """User name, password and optional domain of the account used on the Hyper-V hosts.

    ``username`` may be given as ``DOMAIN\\user`` (the domain is split off) or as a
    UPN ``user@domain`` (kept whole: NTLM and Kerberos both accept it).
    """

    __slots__ = ("_password", "domain", "username")

    def __init__(self, username: str, password: str, domain: str | None = None) -> None:
        if not username:
            raise ConfigurationError(
                "the Hyper-V user name is empty", what_to_do="set username= in the credentials file"
            )
        if "\\" in username and domain is None:
            domain, username = username.split("\\", 1)
        self.username = username
        self.domain = domain or None
        self._password = password

    @property
    def password(self) -> str:
        """The password (never logged; keep it out of messages)."""
        return self._password

    @property
    def principal(self) -> str:
        """``DOMAIN\\user`` when a domain is set, else the user name as given (the form pywinrm takes)."""
        return f"{self.domain}\\{self.username}" if self.domain else self.username

    def __repr__(self) -> str:
        return f"Credentials(username={self.principal!r}, password='***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.principal.lower(), self._password) == (other.principal.lower(), other._password)

    def __hash__(self) -> int:
        return hash(self.principal.lower())

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str) -> Credentials:
        """Read a credentials file (see module docstring).

        :raises ConfigurationError: missing/unreadable file, group/other-readable file,
            unknown key, or no user name/password.
        """
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open the credentials file {path}: {exc.strerror}",
                what_to_do="check credentials_file= and that the file exists and is readable by the fd user",
            ) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigurationError(
                    f"the credentials file {path} is not a regular file",
                    what_to_do="point credentials_file= at a regular file",
                )
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigurationError(
                    f"the credentials file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}), so the password is exposed; it was not used",
                    what_to_do=f"run: chmod 600 {path}",
                )
            with os.fdopen(fd, "r", encoding="utf-8") as handle:
                fd = -1
                text = handle.read()
        finally:
            if fd >= 0:
                os.close(fd)
        values = _parse_lines(text, path)
        missing = [k for k in ("username", "password") if not values.get(k)]
        if missing:
            raise ConfigurationError(
                f"the credentials file {path} has no {' and no '.join(missing)}",
                what_to_do="write lines username=DOMAIN\\user and password=... into the file",
            )
        return cls(values["username"], values["password"], values.get("domain"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Read ``BAREOS_HYPERV_USERNAME`` / ``_PASSWORD`` / ``_DOMAIN``.

        :raises ConfigurationError: user name or password not set.
        """
        env = os.environ if environ is None else environ
        username = env.get(ENV_USERNAME, "")
        password = env.get(ENV_PASSWORD)
        if not username or password is None:
            raise ConfigurationError(
                "no Hyper-V credentials: neither a credentials file nor the environment variables "
                f"{ENV_USERNAME} and {ENV_PASSWORD} are set",
                what_to_do="set credentials_file= in the plugin options (file mode 600)",
            )
        return cls(username, password, env.get(ENV_DOMAIN) or None)

    @classmethod
    def load(
        cls, credentials_file: str | None = None, environ: Mapping[str, str] | None = None
    ) -> Credentials:
        """From ``credentials_file`` when given, else from the environment."""
        if credentials_file:
            return cls.from_file(credentials_file)
        return cls.from_env(environ)


def _parse_lines(text: str, path: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS:
            # Never echo the line: it may be a password written without its key.
            raise ConfigurationError(
                f"line {number} of the credentials file {path} is not username=, password= or domain=",
                what_to_do="use one key=value per line with keys username, password, domain",
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        values[key] = value
    return values
