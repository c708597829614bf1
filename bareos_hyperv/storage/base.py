"""The interface both data-plane backends (SMB and local) implement, and their error classes.

A backend is one object per job (:class:`Storage`); files are opened through it as a sequential
:class:`FileReader` (``readinto`` in large pipelined requests, resumable) or a :class:`FileWriter`.
Restores write under a temporary name created exclusively, then :meth:`Storage.rename` without
replacing, so nothing that exists is ever overwritten by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Callable, List, Protocol, Type, Union

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.locations import Location

__all__ = [
    "Buffer",
    "DirEntry",
    "FileReader",
    "FileStat",
    "FileUpdater",
    "FileWriter",
    "Storage",
    "StorageAccessDenied",
    "StorageAuthError",
    "StorageBusy",
    "StorageConnectionError",
    "StorageExists",
    "StorageNotFound",
    "remove_tree",
]

Buffer = Union[bytearray, memoryview]


class StorageNotFound(StorageError):
    """The file, directory or share does not exist."""


class StorageExists(StorageError):
    """The target already exists (exclusive create, rename without replace, mkdir over a file)."""


class StorageAccessDenied(StorageError):
    """The account may not do this on this file or share."""


class StorageAuthError(StorageError):
    """The server refused the credentials."""


class StorageBusy(StorageError):
    """The file is open elsewhere in a way that excludes us (sharing violation)."""


class StorageConnectionError(StorageError):
    """The server cannot be reached or the connection dropped (after the retries were used up)."""


@dataclass(frozen=True)
class FileStat:
    """Size in bytes, last write time (seconds since the epoch, UTC) and whether it is a directory."""

    size: int
    mtime: float
    is_dir: bool


@dataclass(frozen=True)
class DirEntry:
    """One directory entry (never ``.`` or ``..``)."""

    name: str
    size: int
    mtime: float
    is_dir: bool


def read_through(readinto: Callable[[Buffer], int], size: int) -> bytes:
    """``read(size)`` built on ``readinto``: up to ``size`` bytes, fewer only at end of file.

    Every reader implements ``readinto`` (the fast path); this gives them the same ``read``.
    """
    out = bytearray(size)
    got = 0
    with memoryview(out) as view:
        while got < size:
            n = readinto(view[got:])
            if n == 0:
                break
            got += n
    del out[got:]
    return bytes(out)


class FileReader(Protocol):
    """A file opened for sequential reading; never holds more than a few requests of data."""

    @property
    def size(self) -> int:
        """File size when it was opened."""

    def readinto(self, buf: Buffer) -> int:
        """Read the next bytes into ``buf``; 0 at end of file.  May return fewer than ``len(buf)``."""

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes from the current position (-1: to the end; keep that for small files)."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` without moving the sequential position (short at EOF)."""

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the sequential position; returns the new position."""

    def tell(self) -> int:
        """The sequential position."""

    def close(self) -> None:
        """Release the handle (idempotent)."""

    def __enter__(self) -> FileReader: ...

    def __exit__(
        self,
        exc_type: Type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class FileWriter(Protocol):
    """A file opened for sequential writing (created by :meth:`Storage.create`)."""

    @property
    def written(self) -> int:
        """Bytes accepted by :meth:`write` so far."""

    def write(self, data: Union[bytes, Buffer]) -> int:
        """Append ``data``; returns ``len(data)``."""

    def close(self) -> None:
        """Flush everything, make it durable where the backend can, and close; raises on failure."""

    def discard(self) -> None:
        """Close and delete the file (a failed or cancelled restore leaves nothing behind)."""

    def __enter__(self) -> FileWriter: ...

    def __exit__(
        self,
        exc_type: Type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class FileUpdater(Protocol):
    """An existing file opened for update (:meth:`Storage.open_update`): reads and writes at offsets.

    For applying a delta to a restored file in place; the sequential reader and writer are unchanged.
    """

    @property
    def size(self) -> int:
        """Current length."""

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (short only at the end of the file)."""

    def write_at(self, offset: int, data: Union[bytes, Buffer]) -> None:
        """Write all of ``data`` at ``offset``."""

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) to ``size`` bytes."""

    def close(self) -> None:
        """Make the changes durable and close (idempotent)."""


class Storage(Protocol):
    """A job's access to one kind of location: ``smb.SmbStorage`` or ``local.LocalStorage``."""

    def open_read(self, location: Location) -> FileReader:
        """Open an existing file for reading, sharing read, write and delete with other openers."""

    def create(self, location: Location) -> FileWriter:
        """Create a new file for writing; :class:`StorageExists` if anything exists there."""

    def open_update(self, location: Location) -> FileUpdater:
        """Open an existing file for reads and writes at offsets and resizing (shared for reading only)."""

    def rename(self, source: Location, target: Location, *, replace: bool = False) -> None:
        """Rename within one share or filesystem; :class:`StorageExists` if ``target`` exists."""

    def delete(self, location: Location, *, missing_ok: bool = False) -> None:
        """Delete a file."""

    def rmdir(self, location: Location, *, missing_ok: bool = False) -> None:
        """Remove an empty directory."""

    def stat(self, location: Location) -> FileStat:
        """Size, mtime, directory flag."""

    def exists(self, location: Location) -> bool:
        """Whether anything exists at ``location``."""

    def listdir(self, location: Location) -> List[DirEntry]:
        """Entries of a directory, sorted by name."""

    def makedirs(self, location: Location) -> None:
        """Create a directory and its missing parents (``mkdir -p``)."""

    def close(self) -> None:
        """Release every connection and handle of this job (idempotent)."""


def remove_tree(storage: Storage, location: Location) -> None:
    """Remove a directory and everything below it (``rm -r``); a missing directory is fine."""
    try:
        entries = storage.listdir(location)
    except StorageNotFound:
        return
    for entry in entries:
        child = location.child(entry.name)
        if entry.is_dir:
            remove_tree(storage, child)
        else:
            storage.delete(child, missing_ok=True)
    storage.rmdir(location, missing_ok=True)
