r"""What a job asks of the agent: the plugin options, typed (standard library only).

The fd parses the plugin definition once (:mod:`bareos_hyperv.fd.options`), builds a
:class:`JobOptions` and sends it in ``StartJob.options``; the agent, the backup and the restore
read typed values and never parse option strings again.  The command line
(:mod:`bareos_hyperv.cli`) builds the same objects from its flags.

The defaults of these dataclasses are the product's defaults: the fd's option table
(``fd/options.py`` ``OPTIONS``) takes its defaults from here, so there is one place.

The value parsers of the map options live here too, so that the fd can type them with the same
rules the agent resolves by: :func:`parse_host_map` / :func:`parse_endpoints` (``host_map``,
``smb_host_map``: ``NODE=address[:port],...``), :func:`parse_share_map` (``[NODE:]prefix=\\server\share``)
and :func:`parse_path_map` (``[NODE:]prefix=/local/dir``), entries separated by ``;``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Dict, Iterable, List, Optional, Tuple

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.model.backup import ConsistencyMode
from bareos_hyperv.model.winpath import InvalidPathError, split_windows_path

__all__ = [
    "BackupOptions",
    "ConnectionOptions",
    "DataPlane",
    "FilesOptions",
    "HostEndpoint",
    "JobOptions",
    "MapEntry",
    "SmbMover",
    "SmbShareOptions",
    "WinrmTransport",
    "endpoint_map",
    "parse_endpoints",
    "parse_host_map",
    "parse_path_map",
    "parse_share_map",
    "split_list",
    "split_map",
    "split_names",
]

# "NODE:" before a drive path or UNC restricts a map entry to one node.  Node names are at least two
# characters, so they cannot be confused with a drive letter.
_MAP_ENTRY = re.compile(
    r"^(?:(?P<node>[A-Za-z0-9][A-Za-z0-9._-]+):(?=[A-Za-z]:|\\\\))?(?P<prefix>[^=]+)=(?P<target>.+)$"
)


class WinrmTransport(enum.Enum):
    """WinRM authentication (``transport=``)."""

    NTLM = "ntlm"  # over HTTP with WinRM message encryption
    KERBEROS = "kerberos"
    CREDSSP = "credssp"
    BASIC = "basic"  # HTTPS only


class DataPlane(enum.Enum):
    """How disk and configuration files are reached (``data=``)."""

    SMB = "smb"  # the nodes' admin shares or mapped shares
    LOCAL = "local"  # local mounts of the hosts' storage (``path_map``)


class SmbMover(enum.Enum):
    """Who streams whole disks over SMB (``smb_mover=``)."""

    SMBPROTOCOL = "smbprotocol"
    AUTO = "auto"  # Samba's smbclient when installed and the file is large enough
    SMBCLIENT = "smbclient"


@dataclass(frozen=True)
class HostEndpoint:
    """One ``host_map``/``smb_host_map`` entry: where node ``node`` (upper case) listens."""

    node: str
    address: str
    port: Optional[int] = None  # None: the protocol's default port


@dataclass(frozen=True)
class MapEntry:
    r"""One prefix mapping: host-path prefix -> target (a UNC root for share maps, a POSIX dir for path maps).

    ``node`` restricts the entry to paths reported by that node (``None``: every node).
    """

    prefix: str
    target: str
    node: Optional[str] = None

    def key(self) -> Tuple[str, List[str]]:
        """The prefix as (root, components), root upper-cased for drive letters."""
        return split_windows_path(self.prefix)


@dataclass(frozen=True)
class ConnectionOptions:
    """How the job reaches the Hyper-V hosts (WinRM) and their files (SMB or local mounts).

    ``port``: WinRM port for nodes the host map gives none (None: 5985, or 5986 with ``https``).
    ``smb_mover``: None leaves it to the agent's environment (``BAREOS_HYPERV_SMB_MOVER``), else
    smbprotocol.  ``operation_timeout``: WS-Man ``OperationTimeout`` in seconds (None: the
    transport's default; the command line's ``--timeout``).
    """

    transport: WinrmTransport = WinrmTransport.NTLM
    https: bool = False
    port: Optional[int] = None
    ca_trust_path: Optional[str] = None
    cert_validation: bool = True
    host_map: Tuple[HostEndpoint, ...] = ()
    data: DataPlane = DataPlane.SMB
    share_map: Tuple[MapEntry, ...] = ()
    path_map: Tuple[MapEntry, ...] = ()
    smb_host_map: Tuple[HostEndpoint, ...] = ()
    smb_encrypt: bool = False
    smb_mover: Optional[SmbMover] = None
    operation_timeout: Optional[float] = None


@dataclass(frozen=True)
class BackupOptions:
    """What the Hyper-V backup (``source=hyperv``) backs up, and how.

    ``host``: a Hyper-V host, a cluster node or the cluster name.  ``vms`` and ``exclude``: names,
    GUIDs or shell-style patterns.  ``staging_path``: host folder for the configuration export
    (None: next to the VM).
    """

    host: str = ""
    vms: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    consistency: ConsistencyMode = ConsistencyMode.APPLICATION
    staging_path: Optional[str] = None


@dataclass(frozen=True)
class FilesOptions:
    """The ``files`` diagnostics source: absolute local paths (files or directory trees)."""

    paths: Tuple[str, ...] = ()


@dataclass(frozen=True)
class SmbShareOptions:
    r"""The ``smb`` diagnostics source: paths inside one share (``\``-separated, relative to its root).

    ``address``/``port``: connect there instead of resolving ``server`` on port 445.
    """

    server: str = ""
    share: str = ""
    paths: Tuple[str, ...] = ()
    address: Optional[str] = None
    port: Optional[int] = None


@dataclass(frozen=True)
class JobOptions:
    """Everything the agent needs of the plugin options (``StartJob.options``).

    ``backup``, ``files`` and ``smb`` are set for the source that uses them (None otherwise).
    ``timeout``: seconds a Hyper-V operation (checkpoint, export, import) may take.
    ``credentials_file``: the account's file when the fd does not hand the account over.
    ``debug``: relay the agent's debug log.
    """

    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    backup: Optional[BackupOptions] = None
    files: Optional[FilesOptions] = None
    smb: Optional[SmbShareOptions] = None
    timeout: int = 1800
    credentials_file: Optional[str] = None
    debug: bool = False


# -- value parsers -----------------------------------------------------------------------------


def split_list(value: str, sep: str = ",") -> Tuple[str, ...]:
    """``a, b,,c`` -> ``("a", "b", "c")``: the entries of a list option, blanks dropped."""
    return tuple(p.strip() for p in value.split(sep) if p.strip())


def split_names(value: str) -> Tuple[str, ...]:
    r"""Split a ``vm=``/``exclude_vm=`` value at its commas.

    ``\,`` is a comma inside a name (Hyper-V allows commas in VM names) and ``\\`` a backslash;
    any other backslash stays as written.  Items are stripped and empty ones dropped.  (The
    director keeps only the character after a backslash, so in ``bareos-dir.conf`` and bconsole
    the comma is written ``\\,``: README, "Writing option values".)
    """
    items: List[str] = []
    current: List[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt in (",", "\\"):
                current.append(nxt)
            else:
                current.append(ch + nxt)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return tuple(i.strip() for i in items if i.strip())


def split_map(value: str) -> List[str]:
    """The ``;``-separated entries of a ``share_map``/``path_map`` value."""
    return list(split_list(value, ";"))


def parse_endpoints(text: str, option: str = "host_map") -> Tuple[HostEndpoint, ...]:
    """Parse ``NODE=address[:port],NODE2=address2[:port]`` (``host_map``, ``smb_host_map``).

    Node names are upper-cased (they are case-insensitive).  Raises ConfigurationError naming
    ``option`` and the bad entry.
    """
    out: List[HostEndpoint] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, eq, target = entry.partition("=")
        if not eq or not name.strip() or not target.strip():
            raise ConfigurationError(
                f"{option} entry '{entry}' is not NODE=address[:port]",
                what_to_do=f"write {option} as NODE=address[:port] pairs separated by commas",
            )
        address, colon, port_text = target.strip().rpartition(":")
        port: Optional[int]
        if not colon:
            address, port = target.strip(), None
        else:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigurationError(
                    f"{option} entry '{entry}' has an invalid port '{port_text}'",
                    what_to_do="give a TCP port between 1 and 65535 after the colon",
                )
            port = int(port_text)
        out.append(HostEndpoint(name.strip().upper(), address, port))
    return tuple(out)


def endpoint_map(entries: Iterable[HostEndpoint]) -> Dict[str, Tuple[str, Optional[int]]]:
    """Endpoints by node name (a later entry for the same node wins)."""
    return {e.node: (e.address, e.port) for e in entries}


def parse_host_map(text: str, option: str = "host_map") -> Dict[str, Tuple[str, Optional[int]]]:
    """Parse ``NODE=address[:port],NODE2=address2[:port]`` (the ``host_map`` option) into a dict.

    Names are case-insensitive (upper-cased).  Raises ConfigurationError naming the bad entry.
    """
    return endpoint_map(parse_endpoints(text, option))


def _parse_entries(entries: Iterable[str], what: str) -> List[MapEntry]:
    out: List[MapEntry] = []
    for raw in entries:
        text = raw.strip()
        if not text:
            continue
        m = _MAP_ENTRY.match(text)
        if not m:
            raise ConfigurationError(
                f"{what} entry {text!r} is not 'prefix=target'",
                what_to_do=f"write each {what} entry as e.g. C:\\ClusterStorage=\\\\fileserver\\csv",
            )
        prefix, target = m.group("prefix").strip(), m.group("target").strip()
        try:
            split_windows_path(prefix)
        except InvalidPathError as exc:
            raise ConfigurationError(
                f"{what} entry {text!r}: the prefix is not an absolute Windows path: {exc.message}",
                what_to_do="the left side must be a drive path (D:\\VMs) or a UNC path (\\\\server\\share)",
            ) from None
        out.append(MapEntry(prefix, target, m.group("node")))
    return out


def parse_share_map(entries: Iterable[str]) -> List[MapEntry]:
    r"""Parse share-map entries ``[NODE:]prefix=\\server\share[\folder]``.

    Example: ``C:\ClusterStorage=\\fileserver\csv``; ``HV01:D:\VMs=\\hv01\vms``.
    Raises :class:`ConfigurationError` naming the bad entry.
    """
    out = _parse_entries(entries, "share map")
    for e in out:
        try:
            root, _ = split_windows_path(e.target)
        except InvalidPathError:
            root = ""
        if not root.startswith("\\\\"):
            raise ConfigurationError(
                f"share map entry {e.prefix}={e.target}: the target is not a UNC path",
                what_to_do="write the target as \\\\server\\share or \\\\server\\share\\folder",
            )
    return out


def parse_path_map(entries: Iterable[str]) -> List[MapEntry]:
    r"""Parse path-map entries ``[NODE:]prefix=/local/dir`` for ``data=local``.

    Example: ``C:\ClusterStorage\Volume1=/mnt/csv1``.  The target must be an absolute POSIX path
    without ``..``.  Raises :class:`ConfigurationError` naming the bad entry.
    """
    out = _parse_entries(entries, "path map")
    for e in out:
        t = PurePosixPath(e.target)
        if not t.is_absolute() or ".." in t.parts:
            raise ConfigurationError(
                f"path map entry {e.prefix}={e.target}: the target must be an absolute local directory",
                what_to_do="write the target as an absolute path such as /mnt/csv1",
            )
    return out
