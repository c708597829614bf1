"""Local data plane (``data=local``): the :class:`~bareos_hyperv.storage.base.Storage` interface on paths
of this machine, for storage mounted on the fd host and for ``restore_local``.

Same semantics as the SMB backend: readers share with other openers, :meth:`LocalStorage.create` is
exclusive, :meth:`LocalStorage.rename` refuses to replace unless asked, writers are made durable
(``fsync``) before close returns, and every failure is a ``StorageError`` naming the path and what to do.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from types import TracebackType
from typing import List, Union

from bareos_hyperv.errors import StorageError
from bareos_hyperv.storage.base import (
    Buffer,
    DirEntry,
    FileStat,
    StorageAccessDenied,
    StorageBusy,
    StorageExists,
    StorageNotFound,
    read_through,
)
from bareos_hyperv.storage.locations import LocalLocation, Location

__all__ = ["LocalReader", "LocalStorage", "LocalUpdater", "LocalWriter"]

# Large enough that the per-call cost disappears against the copy, small enough to stay in cache.
READ_CHUNK = 1024 * 1024


def _error(exc: OSError, op: str, path: str) -> StorageError:
    ctx = {"operation": op, "path": path, "error": f"[Errno {exc.errno}] {exc.strerror}"}
    if exc.errno == errno.ENOENT:
        return StorageNotFound("no such file or directory", context=ctx, what_to_do="check the path map")
    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
        return StorageExists(
            "something is in the way",
            context=ctx,
            what_to_do="remove or rename it, or choose another destination",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageAccessDenied(
            "permission denied",
            context=ctx,
            what_to_do="run the agent as a user that may read/write this mount, or mount it read-write",
        )
    if exc.errno in (errno.ETXTBSY, errno.EBUSY):
        return StorageBusy("the file is busy", context=ctx, what_to_do="stop whatever holds the file")
    if exc.errno == errno.ENOSPC:
        return StorageError("no space left", context=ctx, what_to_do="free space on the destination")
    return StorageError(f"local {op} failed", context=ctx, what_to_do="see the error above")


def _path(location: Location) -> str:
    if not isinstance(location, LocalLocation):
        raise StorageError(
            "local storage was given an SMB location",
            context={"path": str(location)},
            what_to_do="resolve paths with data=local and a path map, or use the SMB storage backend",
        )
    return str(location.path)


class LocalReader:
    """Sequential reader on a local file; ``read_at`` uses ``pread`` and leaves the position alone."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _error(exc, "open", path) from None
        st = os.fstat(self._fd)
        if stat_mod.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise StorageExists("this is a directory, not a file", context={"path": path})
        self._size = st.st_size
        self._mtime = st.st_mtime
        self._pos = 0
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def __repr__(self) -> str:
        return f"LocalReader({self.path!r}, size={self._size}, pos={self._pos})"

    @property
    def size(self) -> int:
        """File size when it was opened."""
        return self._size

    @property
    def mtime(self) -> float:
        """Last modification time when it was opened."""
        return self._mtime

    def readinto(self, buf: Buffer) -> int:
        """Read the next bytes into ``buf``; 0 at end of file."""
        try:
            n = os.preadv(self._fd, [buf], self._pos)
        except OSError as exc:
            raise _error(exc, "read", self.path) from None
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (-1: to the end of the file)."""
        return read_through(self.readinto, max(0, self._size - self._pos) if size < 0 else size)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (short at end of file)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        parts: List[bytes] = []
        while length > 0:
            try:
                data = os.pread(self._fd, min(length, 64 * READ_CHUNK), offset)
            except OSError as exc:
                raise _error(exc, "read", self.path) from None
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the stream position (``whence`` 0/1/2)."""
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        """The stream position."""
        return self._pos

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalWriter:
    """Writer on a file created exclusively; ``close`` fsyncs the file and its directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise _error(exc, "create", path) from None
        self._written = 0

    def __repr__(self) -> str:
        return f"LocalWriter({self.path!r}, written={self._written})"

    @property
    def written(self) -> int:
        """Bytes written so far."""
        return self._written

    def write(self, data: Union[bytes, Buffer]) -> int:
        """Append all of ``data``."""
        if self._fd < 0:
            raise ValueError("write to a closed LocalWriter")
        view = memoryview(data).cast("B")
        n = len(view)
        try:
            while view:
                k = os.write(self._fd, view)
                view = view[k:]
        except OSError as exc:
            raise _error(exc, "write", self.path) from None
        self._written += n
        return n

    def close(self) -> None:
        """Make the data durable and close."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _error(exc, "fsync", self.path) from None
        finally:
            os.close(fd)
        _fsync_dir(os.path.dirname(self.path) or ".")

    def discard(self) -> None:
        """Close and delete the partial file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, "delete", self.path) from None

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


class LocalUpdater:
    """An existing file opened for update: reads and writes at offsets, resizing; ``close`` fsyncs."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _error(exc, "open for update", path) from None

    def __repr__(self) -> str:
        return f"LocalUpdater({self.path!r})"

    @property
    def size(self) -> int:
        """Current length."""
        return os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (short only at the end of the file)."""
        out = bytearray()
        try:
            while len(out) < length:
                data = os.pread(self._fd, length - len(out), offset + len(out))
                if not data:
                    break
                out += data
        except OSError as exc:
            raise _error(exc, "read", self.path) from None
        return bytes(out)

    def write_at(self, offset: int, data: Union[bytes, Buffer]) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise _error(exc, "write", self.path) from None

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) to ``size`` bytes."""
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise _error(exc, "resize", self.path) from None

    def close(self) -> None:
        """fsync and close (idempotent)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _error(exc, "flush", self.path) from None
        finally:
            os.close(fd)

    def __enter__(self) -> LocalUpdater:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some filesystems do not allow opening directories; the data itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass  # directory fsync is unsupported on a few filesystems (e.g. some FUSE mounts)
    finally:
        os.close(fd)


class LocalStorage:
    """:class:`~bareos_hyperv.storage.base.Storage` on local paths."""

    def __repr__(self) -> str:
        return "LocalStorage()"

    def __enter__(self) -> LocalStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open_read(self, location: Location) -> LocalReader:
        """Open an existing file for reading."""
        return LocalReader(_path(location))

    def create(self, location: Location) -> LocalWriter:
        """Create a new file exclusively; :class:`StorageExists` if anything is there."""
        return LocalWriter(_path(location))

    def open_update(self, location: Location) -> LocalUpdater:
        """Open an existing file for random reads and writes and resizing (applying a delta in place)."""
        return LocalUpdater(_path(location))

    def rename(self, source: Location, target: Location, *, replace: bool = False) -> None:
        """Rename; without ``replace`` an existing target is an error (checked atomically where possible)."""
        src, dst = _path(source), _path(target)
        try:
            if replace:
                os.replace(src, dst)
            else:
                _rename_noreplace(src, dst)
        except OSError as exc:
            raise _error(exc, "rename", f"{src} -> {dst}") from None
        _fsync_dir(os.path.dirname(dst) or ".")

    def delete(self, location: Location, *, missing_ok: bool = False) -> None:
        """Delete a file."""
        p = _path(location)
        try:
            os.unlink(p)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise _error(exc, "delete", p) from None

    def rmdir(self, location: Location, *, missing_ok: bool = False) -> None:
        """Remove an empty directory."""
        p = _path(location)
        try:
            os.rmdir(p)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise _error(exc, "rmdir", p) from None

    def stat(self, location: Location) -> FileStat:
        """Size, mtime and directory flag (symlinks followed, as SMB does for the CSV link)."""
        p = _path(location)
        try:
            st = os.stat(p)
        except OSError as exc:
            raise _error(exc, "stat", p) from None
        return FileStat(st.st_size, st.st_mtime, stat_mod.S_ISDIR(st.st_mode))

    def exists(self, location: Location) -> bool:
        """Whether anything exists at ``location``."""
        return os.path.exists(_path(location))

    def listdir(self, location: Location) -> List[DirEntry]:
        """Entries of a directory, sorted by name."""
        p = _path(location)
        out: List[DirEntry] = []
        try:
            with os.scandir(p) as it:
                for e in it:
                    st = e.stat()
                    out.append(DirEntry(e.name, st.st_size, st.st_mtime, stat_mod.S_ISDIR(st.st_mode)))
        except OSError as exc:
            raise _error(exc, "list", p) from None
        return sorted(out, key=lambda d: d.name)

    def makedirs(self, location: Location) -> None:
        """``mkdir -p``; a file in the way is an error."""
        p = _path(location)
        try:
            os.makedirs(p, exist_ok=True)
        except OSError as exc:
            raise _error(exc, "mkdir", p) from None

    def close(self) -> None:
        """Nothing to release (files are closed by their readers and writers)."""


def _rename_noreplace(src: str, dst: str) -> None:
    # link + unlink fails with EEXIST instead of replacing, atomically; filesystems without hard
    # links fall back to check-then-rename (racy, but only against ourselves in practice).
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)
