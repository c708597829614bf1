r"""Producers: what a backup job streams, as a list of items and a reader per item.

A :class:`Source` is small on purpose: it lists the items of the save set (name in the
catalog, size, mtime, mode) and opens one item as a sequential
:class:`~bareos_hyperv.storage.base.FileReader`.  The agent does the rest (pipes, threads,
digests).  Hyper-V backup plugs in later as one more source.

Sources here:

* ``files``: local paths (``paths=/a/file,/b/dir``), items ``@files/<absolute path>``;
* ``smb``: files on one SMB share (``smb_server``, ``smb_share``, ``smb_paths``), items
  ``@smb/<server>/<share>/<path>``, read through :mod:`bareos_hyperv.storage.smb`.
"""

from __future__ import annotations

import stat as stat_mod
from pathlib import PurePosixPath
from typing import Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

from bareos_hyperv.agent.connections import SMB_PORT
from bareos_hyperv.backup.context import SourceContext
from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.protocol.messages import FileEntry
from bareos_hyperv.storage.base import FileReader, StorageNotFound
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocalLocation, SmbLocation

__all__ = ["SOURCES", "Estimating", "FilesSource", "SmbSource", "Source", "SourceContext", "make_source"]

FILES_PREFIX = "@files"
SMB_PREFIX = "@smb"
# Regular file, rw-r----- : what the catalog shows for items that are not local files.
DEFAULT_MODE = stat_mod.S_IFREG | 0o640


class Source(Protocol):
    """One backup producer.

    ``list_files`` is called repeatedly: each call returns the next batch of items, and an
    empty batch ends the job.  A source that works in stages (Hyper-V: one VM at a time,
    each VM cleaned up before the next) does one stage per batch; the next call means every
    item of the previous batch was saved.
    """

    def list_files(self) -> List[FileEntry]:
        """The next batch of items to save, in order (names unique in the job); [] when done."""

    def open(self, entry: FileEntry) -> FileReader:
        """Open one listed item for sequential reading."""

    def file_done(self, entry: FileEntry, size: int, sha256: str) -> None:
        """One item was saved completely: its size and SHA-256 as the core received them."""

    def close(self) -> None:
        """Release connections (idempotent); undo unfinished work when the job did not complete."""


@runtime_checkable
class Estimating(Protocol):
    """A source whose listing changes something on a host (a checkpoint, an export), and which can
    therefore say what it would produce without changing anything (bconsole ``estimate``).

    Sources without it (``files``, ``smb``) only read to list, so their ``list_files`` serves.
    """

    def estimate(self) -> List[FileEntry]:
        """Every item a backup would save now, with sizes as they are now; changes nothing."""


class FilesSource:
    """Local files and directory trees (regular files only, sorted, symlinks to files followed)."""

    def __init__(self, ctx: SourceContext) -> None:
        files = ctx.options.files
        self._paths = list(files.paths) if files is not None else []
        if not self._paths:
            raise ConfigurationError("source=files needs at least one path", what_to_do="set paths=/dir/or/file")
        self._storage = LocalStorage()
        self._where: Dict[str, str] = {}
        self._listed = False

    def _add(self, out: List[FileEntry], path: PurePosixPath) -> None:
        st = self._storage.stat(LocalLocation(path))
        name = f"{FILES_PREFIX}{path}"
        if st.is_dir:
            for entry in self._storage.listdir(LocalLocation(path)):
                self._add(out, path / entry.name)
            return
        if name in self._where:
            return
        self._where[name] = str(path)
        out.append(FileEntry(name=name, size=st.size, mtime=int(st.mtime), mode=DEFAULT_MODE))

    def list_files(self) -> List[FileEntry]:
        """Walk every configured path (one batch)."""
        if self._listed:
            return []
        self._listed = True
        self._where = {}
        out: List[FileEntry] = []
        for raw in self._paths:
            path = PurePosixPath(raw)
            if not path.is_absolute():
                raise ConfigurationError(f"paths= entry {raw!r} is not an absolute path",
                                         what_to_do="give absolute paths, separated by commas")
            try:
                self._add(out, path)
            except StorageNotFound:
                raise ConfigurationError(f"the path {raw} given in paths= does not exist",
                                         what_to_do="correct paths= or create the file") from None
        return out

    def open(self, entry: FileEntry) -> FileReader:
        """Open a listed file."""
        return self._storage.open_read(LocalLocation(PurePosixPath(self._where[entry.name])))

    def file_done(self, entry: FileEntry, size: int, sha256: str) -> None:
        """Nothing to record."""

    def close(self) -> None:
        """Nothing to release."""


class SmbSource:
    r"""Files on one SMB share, e.g. a node's ``C$`` (``smb_paths`` relative to the share root)."""

    def __init__(self, ctx: SourceContext) -> None:
        from bareos_hyperv.storage.smb import SmbOptions, SmbStorage  # smbprotocol: only when used

        opts = ctx.options.smb
        if opts is None or not (opts.server and opts.share and opts.paths):
            raise ConfigurationError("source=smb needs smb_server, smb_share and smb_paths",
                                     what_to_do="set all three options")
        self._server = opts.server
        self._share = opts.share
        self._paths = list(opts.paths)
        endpoints: Dict[str, Tuple[str, int]] = {}
        if opts.address or opts.port:
            endpoints[self._server] = (opts.address or self._server, opts.port or SMB_PORT)
        smb_options = SmbOptions(encrypt=ctx.options.connection.smb_encrypt)
        self._storage = SmbStorage.from_credentials(ctx.credentials(), endpoints=endpoints, options=smb_options)
        self._where: Dict[str, SmbLocation] = {}

    def _add(self, out: List[FileEntry], loc: SmbLocation) -> None:
        st = self._storage.stat(loc)
        if st.is_dir:
            for entry in self._storage.listdir(loc):
                self._add(out, loc.child(entry.name))
            return
        name = f"{SMB_PREFIX}/{loc.server}/{loc.share}/{loc.path.replace(chr(92), '/')}"
        if name in self._where:
            return
        self._where[name] = loc
        out.append(FileEntry(name=name, size=st.size, mtime=int(st.mtime), mode=DEFAULT_MODE))

    def list_files(self) -> List[FileEntry]:
        """Stat (and walk) every configured path on the share (one batch)."""
        if self._where:
            return []
        self._where = {}
        out: List[FileEntry] = []
        for path in self._paths:
            self._add(out, SmbLocation(self._server, self._share, path))
        return out

    def open(self, entry: FileEntry) -> FileReader:
        """Open a listed file for pipelined reading."""
        return self._storage.open_read(self._where[entry.name])

    def file_done(self, entry: FileEntry, size: int, sha256: str) -> None:
        """Nothing to record."""

    def close(self) -> None:
        """Log off from the server."""
        self._storage.close()


SourceFactory = Callable[[SourceContext], Source]
def _hyperv(ctx: SourceContext) -> Source:
    # Imported on use: the Hyper-V stack (lxml, pywinrm) is not needed by the other sources.
    from bareos_hyperv.backup.hyperv import HyperVBackupSource

    return HyperVBackupSource(ctx)


SOURCES: Dict[str, SourceFactory] = {"hyperv": _hyperv, "files": FilesSource, "smb": SmbSource}


def make_source(name: str, ctx: SourceContext) -> Source:
    """The producer called ``name`` for this job."""
    factory: Optional[SourceFactory] = SOURCES.get(name)
    if factory is None:
        raise ConfigurationError(f"unknown source {name!r}", what_to_do=f"use one of {', '.join(sorted(SOURCES))}")
    return factory(ctx)
