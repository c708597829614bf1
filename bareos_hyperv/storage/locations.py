r"""Where to open a file Hyper-V names by a host path.

Hyper-V reports host-local Windows paths (``C:\ClusterStorage\Volume1\vm\disk.vhdx``, ``D:\VMs\a.vhdx``)
or UNC paths for Hyper-V over SMB (``\\sofs\vmstore\a.vhdx``).  ``reference/hyperv-wmi.md`` §8.1:

* a drive path on node N is read through that node's admin share ``\\N\X$`` (the CSV root
  ``C:\ClusterStorage`` is the same on every node, so any node's ``C$`` reaches it);
* a configured share map (``C:\ClusterStorage=\\fileserver\csv``, ``HV01:D:\VMs=\\hv01\vms``) overrides that;
* a UNC path is used as it is;
* with ``data=local`` a path map (``C:\ClusterStorage\Volume1=/mnt/csv1``) says where the same tree is
  mounted on this machine, and nothing goes over SMB.

Paths are refused when they are relative, drive-relative (``C:x``), device paths (``\\?\``, ``\\.\``),
contain ``.``/``..`` components or name an alternate data stream: a path from a manifest or from the
instrumentation must never lead outside the tree it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, List, Sequence, Tuple, Union

from bareos_hyperv.errors import ConfigurationError, StorageError

__all__ = [
    "InvalidPathError",
    "LocalLocation",
    "Location",
    "LocationResolver",
    "MapEntry",
    "SmbLocation",
    "parse_path_map",
    "parse_share_map",
    "split_windows_path",
]

_DRIVE_PATH = re.compile(r"^([A-Za-z]):\\")
# "NODE:" before a drive path or UNC restricts a map entry to one node.  Node names are at least two
# characters, so they cannot be confused with a drive letter.
_MAP_ENTRY = re.compile(
    r"^(?:(?P<node>[A-Za-z0-9][A-Za-z0-9._-]+):(?=[A-Za-z]:|\\\\))?(?P<prefix>[^=]+)=(?P<target>.+)$"
)
_FORBIDDEN_IN_NAME = set(':*?"<>|\0')


class InvalidPathError(StorageError):
    """A host path cannot be turned into a location (relative, escaping, unmapped, ...)."""


@dataclass(frozen=True)
class SmbLocation:
    r"""A file or directory on an SMB share: ``\\server\share\path``.

    ``path`` is relative to the share root, components separated by ``\``; ``""`` is the share root.
    ``server`` is a name (node or file server); the SMB session maps it to an address.
    """

    server: str
    share: str
    path: str

    def __str__(self) -> str:
        tail = f"\\{self.path}" if self.path else ""
        return f"\\\\{self.server}\\{self.share}{tail}"

    @property
    def name(self) -> str:
        """Last path component (``""`` for the share root)."""
        return self.path.rsplit("\\", 1)[-1] if self.path else ""

    @property
    def parent(self) -> SmbLocation:
        """The containing directory (the share root's parent is itself)."""
        return SmbLocation(self.server, self.share, self.path.rsplit("\\", 1)[0] if "\\" in self.path else "")

    def child(self, name: str) -> SmbLocation:
        """Location of ``name`` inside this directory (one component, validated)."""
        _check_component(name, str(self))
        return SmbLocation(self.server, self.share, f"{self.path}\\{name}" if self.path else name)

    def same_share(self, other: SmbLocation) -> bool:
        """Whether both locations are on one share of one server (names compared as Windows does)."""
        return self.server.lower() == other.server.lower() and self.share.lower() == other.share.lower()


@dataclass(frozen=True)
class LocalLocation:
    """A file or directory on this machine (``data=local``)."""

    path: PurePosixPath

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        """Last path component."""
        return self.path.name

    @property
    def parent(self) -> LocalLocation:
        """The containing directory."""
        return LocalLocation(self.path.parent)

    def child(self, name: str) -> LocalLocation:
        """Location of ``name`` inside this directory (one component, validated)."""
        _check_component(name, str(self))
        return LocalLocation(self.path / name)


Location = Union[SmbLocation, LocalLocation]


def _check_component(name: str, whole: str) -> None:
    if name in ("", ".", ".."):
        raise InvalidPathError(
            f"path component {name!r} is not allowed",
            context={"path": whole},
            what_to_do="use an absolute path without '.' or '..' components",
        )
    bad = sorted(set(name) & (_FORBIDDEN_IN_NAME | {"\\", "/"}))
    if bad:
        raise InvalidPathError(
            f"path component {name!r} contains characters Windows does not allow in names: {''.join(bad)!r}",
            context={"path": whole},
            what_to_do="check the path; alternate data streams (name:stream) are not supported",
        )


def split_windows_path(path: str) -> Tuple[str, List[str]]:
    r"""Split an absolute Windows path into its root and validated components.

    The root is ``"C:"`` for a drive path or ``"\\server\share"`` for a UNC path; ``/`` is accepted as a
    separator as Windows does.  Raises :class:`InvalidPathError` for anything else.
    """
    if not isinstance(path, str) or not path:
        raise InvalidPathError(
            "empty path", what_to_do="pass an absolute Windows path such as C:\\VMs\\a.vhdx"
        )
    p = path.replace("/", "\\")
    if p.startswith(("\\\\?\\", "\\\\.\\")):
        raise InvalidPathError(
            "device and extended-length paths (\\\\?\\, \\\\.\\) are not supported",
            context={"path": path},
            what_to_do="use the plain drive or UNC path",
        )
    m = _DRIVE_PATH.match(p)
    if m:
        root = f"{m.group(1).upper()}:"
        rest = p[3:]
    elif p.startswith("\\\\"):
        parts = p[2:].split("\\", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise InvalidPathError(
                "UNC path needs a server and a share",
                context={"path": path},
                what_to_do="write it as \\\\server\\share\\folder\\file",
            )
        for comp in parts[:2]:
            _check_component(comp, path)
        root = f"\\\\{parts[0]}\\{parts[1]}"
        rest = parts[2] if len(parts) == 3 else ""
    else:
        raise InvalidPathError(
            "not an absolute Windows path "
            "(a drive path like C:\\... or a UNC path like \\\\server\\share\\...)",
            context={"path": path},
            what_to_do="pass the full path as Hyper-V reports it",
        )
    # Repeated or trailing separators are harmless on Windows; empty components are dropped.
    comps = [c for c in rest.split("\\") if c != ""]
    for c in comps:
        _check_component(c, path)
    return root, comps


def _starts_with(comps: Sequence[str], prefix: Sequence[str]) -> bool:
    return len(comps) >= len(prefix) and all(a.lower() == b.lower() for a, b in zip(comps, prefix))


@dataclass(frozen=True)
class MapEntry:
    r"""One prefix mapping: host-path prefix -> target (a UNC root for share maps, a POSIX dir for path maps).

    ``node`` restricts the entry to paths reported by that node (``None``: every node).
    """

    prefix: str
    target: str
    node: str | None = None

    def key(self) -> Tuple[str, List[str]]:
        """The prefix as (root, components), root upper-cased for drive letters."""
        return split_windows_path(self.prefix)


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


class LocationResolver:
    r"""Turns host paths into :data:`Location` values.

    :param share_map: entries from :func:`parse_share_map` (checked longest prefix first).
    :param path_map: entries from :func:`parse_path_map`; with ``local=True`` every path must match one.
    :param local: ``data=local``: resolve to local paths only.
    """

    def __init__(
        self,
        share_map: Sequence[MapEntry] = (),
        path_map: Sequence[MapEntry] = (),
        *,
        local: bool = False,
    ) -> None:
        self.local = local
        self._share_map = self._sorted(share_map)
        self._path_map = self._sorted(path_map)

    @staticmethod
    def _sorted(entries: Sequence[MapEntry]) -> List[Tuple[MapEntry, str, List[str]]]:
        keyed = [(e, *e.key()) for e in entries]
        # Longest prefix wins; a node-specific entry beats a general one of the same length.
        keyed.sort(key=lambda k: (len(k[2]), k[0].node is not None), reverse=True)
        return keyed

    @staticmethod
    def _match(
        entries: List[Tuple[MapEntry, str, List[str]]], node: str | None, root: str, comps: List[str]
    ) -> Tuple[MapEntry, List[str]] | None:
        for entry, eroot, ecomps in entries:
            if entry.node is not None and (node is None or entry.node.lower() != node.lower()):
                continue
            if eroot.lower() == root.lower() and _starts_with(comps, ecomps):
                return entry, comps[len(ecomps) :]
        return None

    def resolve(self, host_path: str, node: str | None = None) -> Location:
        r"""Location of ``host_path`` as reported by ``node`` (needed for drive paths over SMB).

        Raises :class:`InvalidPathError` for a refused path, or when nothing says where it lives.
        """
        root, comps = split_windows_path(host_path)
        if self.local:
            hit = self._match(self._path_map, node, root, comps)
            if hit is None:
                raise InvalidPathError(
                    "no path map entry covers this path (data=local)",
                    context={"path": host_path, "node": node},
                    what_to_do="add a path map entry such as C:\\ClusterStorage\\Volume1=/mnt/csv1 "
                    "for the directory where this storage is mounted",
                )
            entry, rest = hit
            return LocalLocation(PurePosixPath(entry.target).joinpath(*rest))
        hit = self._match(self._share_map, node, root, comps)
        if hit is not None:
            entry, rest = hit
            troot, tcomps = split_windows_path(entry.target)
            server, share = troot[2:].split("\\", 1)
            return SmbLocation(server, share, "\\".join(tcomps + rest))
        if root.startswith("\\\\"):
            server, share = root[2:].split("\\", 1)
            return SmbLocation(server, share, "\\".join(comps))
        if not node:
            raise InvalidPathError(
                "a drive path needs the node it belongs to",
                context={"path": host_path},
                what_to_do="resolve the path with the name of the Hyper-V host that reported it",
            )
        return SmbLocation(node, f"{root[0]}$", "\\".join(comps))
