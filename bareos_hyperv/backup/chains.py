r"""Find a differencing disk's parent when the path Hyper-V reports does not lead to it.

``Msvm_VirtualHardDiskSettingData.ParentPath`` is the path written in the child (its locator).
After a VM's files were moved or copied by hand, or when a chain was made by another tool, that
path can name a file that is not there, although the parent sits next to the child (where a
relative locator or the parent's own name finds it).  The child's header is then read over SMB
(or a local mount) with the product's own VHD/VHDX reader, and the places it names are tried in
order (:func:`bareos_hyperv.storage.vhd.parent_candidates`): locator paths, then the parent's
name next to the child and as written; each found file's identity is checked against the child's
linkage.  The error, when none is the parent, names every path tried.
"""

from __future__ import annotations

from typing import Callable

from bareos_hyperv.storage.base import FileReader, Storage, StorageNotFound
from bareos_hyperv.storage.locations import InvalidPathError, LocationResolver
from bareos_hyperv.storage.vhd import VirtualDisk, locate_parent, open_disk

__all__ = ["parent_finder", "plain_windows_path"]


def plain_windows_path(path: str) -> str:
    r"""``\\?\C:\x`` -> ``C:\x`` and ``\\?\UNC\srv\share\x`` -> ``\\srv\share\x`` (VHDX locators use them).

    Volume GUID paths (``\\?\Volume{...}\x``) stay as they are: nothing outside the host can reach them.
    """
    if path.startswith("\\\\?\\UNC\\"):
        return "\\\\" + path[8:]
    if path.startswith("\\\\?\\") and len(path) > 6 and path[5] == ":":
        return path[4:]
    return path


class _Source:
    """A storage reader as the VHD reader's source (closed with the disk)."""

    def __init__(self, reader: FileReader) -> None:
        self.reader = reader

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset``."""
        return self.reader.read_at(offset, length)

    def size(self) -> int:
        """File size."""
        return self.reader.size

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


def parent_finder(storage: Storage, resolver: LocationResolver, node: str) -> Callable[[str], str]:
    """A function ``child host path -> parent host path`` reading files as ``node`` names them.

    It raises :class:`~bareos_hyperv.storage.vhd.VhdChainError` naming every path tried when no
    candidate is the child's parent.
    """

    def open_fn(path: str) -> VirtualDisk:
        plain = plain_windows_path(path)
        try:
            location = resolver.resolve(plain, node)
            reader = storage.open_read(location)
        except (StorageNotFound, InvalidPathError) as exc:
            # Missing, or a path that cannot be reached from here (a volume GUID path): for this
            # search a place where the parent is not, so the next candidate is tried.
            raise FileNotFoundError(path) from exc
        try:
            return open_disk(_Source(reader), path, owns_source=True)
        except BaseException:
            reader.close()
            raise

    def find(child_path: str) -> str:
        return plain_windows_path(locate_parent(open_fn, child_path))

    return find
