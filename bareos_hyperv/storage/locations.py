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

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import List, Sequence, Tuple, Union

# The pure parts (path splitting, map entries and their parsers) live in the model so that the fd can
# type the map options with the same rules; they are re-exported here for the storage's users.
from bareos_hyperv.model.options import MapEntry, parse_path_map, parse_share_map
from bareos_hyperv.model.winpath import InvalidPathError, split_windows_path
from bareos_hyperv.model.winpath import check_component as _check_component

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


def _starts_with(comps: Sequence[str], prefix: Sequence[str]) -> bool:
    return len(comps) >= len(prefix) and all(a.lower() == b.lower() for a, b in zip(comps, prefix))


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
