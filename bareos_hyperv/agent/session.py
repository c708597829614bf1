"""Per-job context of the agent: options, credentials, the source, open transfers, the log outbox.

One :class:`Session` lives from ``StartJob`` to ``EndJob``.  It owns everything the job opened,
and :meth:`Session.close` releases all of it on every path (normal end, error, cancel, the fd
vanishing), removing partially restored files.

Log records and progress produced by any thread go to the :class:`Outbox`; the protocol loop
sends them in front of its next reply, because the fd reads the socket only when it asks
something (while the core moves data, no plugin code runs).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

from bareos_hyperv.agent.connections import Connections, connect
from bareos_hyperv.agent.sources import Estimating, Source, make_source
from bareos_hyperv.agent.transfer import Drain, Pump, make_pipe
from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, ManifestError, ProtocolError, StorageError
from bareos_hyperv.manifest.document import from_xml
from bareos_hyperv.manifest.layout import (
    DELTA_MARKER,
    DISKS_DIR,
    MANIFEST_FILE,
    ROOT,
    SPARSE_MARKER,
    EntryKind,
    parse_path,
)
from bareos_hyperv.model.backup import PartKind
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.options import JobOptions
from bareos_hyperv.protocol.messages import (
    CleanupRecord,
    FileDone,
    FileEntry,
    JobDone,
    JobKind,
    LogLevel,
    LogRecord,
    Message,
    Progress,
    RestoreFinished,
    RestoreObject,
    RestorePlanned,
    RestoreTarget,
    StartJob,
)
from bareos_hyperv.storage.base import FileWriter, StorageExists
from bareos_hyperv.storage.delta import DeltaApplier, DeltaBaseMismatch, FilePatchTarget, ImageHashes
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocalLocation

if TYPE_CHECKING:  # the restore machinery is imported only by restores into Hyper-V
    from bareos_hyperv.restore.execute import HyperVRestore, ItemTarget

__all__ = ["MAX_OUTBOX", "Outbox", "OutboxHandler", "Redactor", "Session", "Undoing", "peak_rss_kib"]

log = logging.getLogger(__name__)

# Records kept while the fd is not listening; beyond this they are counted and dropped, so a
# chatty failure cannot grow the agent's memory without bound.
MAX_OUTBOX = 1000
# Seconds to wait for a transfer thread at CloseFile before calling it stuck.
JOIN_TIMEOUT = 120.0
# Restored data is written under this suffix and renamed into place only when complete.
PARTIAL_SUFFIX = ".bareos-hyperv-partial"
# Modes of what a restore to a directory creates, whatever the umask (a real fd runs with 026, so
# its children would make folders 0751; a shell started agent 0755).  The files carry a VM's disks
# and configuration: folders are the owner's and the fd's group's only; a file is written as 0600
# and gets the mode saved with it (0640 for this plugin's items) once complete.
RESTORE_DIR_MODE = 0o750
PARTIAL_FILE_MODE = 0o600
# The last item of a VM's tree in each job (after its disks): where a restore checks the point.
TRAILER_NAME = "SHA256SUMS"
# A long step inside one request (a backup reading whole disks to plan deltas) tells the fd it is
# alive at most this often (seconds); the fd's agent_timeout counts silence.
HEARTBEAT_INTERVAL = 10.0


def _make_restore_dirs(folder: PurePosixPath) -> None:
    """``mkdir -p`` of a restore target's folder: the folders it creates get :data:`RESTORE_DIR_MODE`
    (set after mkdir, so the umask does not decide); folders that exist are left as they are."""
    missing: List[PurePosixPath] = []
    current = folder
    while not os.path.isdir(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, RESTORE_DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise StorageError(f"cannot create the folder {path}: a file of that name is in the way",
                                   what_to_do="restore to another where= directory, or move the file") from None
            continue  # made meanwhile by another item: keep its mode
        except OSError as exc:
            raise StorageError(f"cannot create the folder {path}: {exc.strerror}",
                               what_to_do="check the restore directory (where=) and its permissions") from None
        os.chmod(path, RESTORE_DIR_MODE)


def peak_rss_kib() -> int:
    """The process's peak resident memory (VmHWM) in KiB, 0 where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _delta_image(name: str, target: str) -> Optional[str]:
    """For a disk delta of a bareos-hyperv save set: the path of the disk file it applies to.

    Judged by the last two components of the restore target (``disks/<n>-<file>+I+<jobid>``), so
    where=, regexwhere= or strip_prefix= do not hide a delta.
    """
    path = PurePosixPath(target)
    if path.parent.name != DISKS_DIR or DELTA_MARKER not in path.name:
        return None
    try:
        parsed = parse_path(f"{ROOT}/scope/vm/{DISKS_DIR}/{path.name}")
    except ManifestError:
        return None
    if parsed.kind is not EntryKind.DELTA:
        return None
    return target[: -len(f"{DELTA_MARKER}{parsed.job_id}")]


def _sparse_image(target: str) -> Optional[str]:
    """For a sparse full of a bareos-hyperv save set (``disks/<n>-<file>+S``): the disk file it restores to."""
    path = PurePosixPath(target)
    if path.parent.name != DISKS_DIR or not path.name.endswith(SPARSE_MARKER):
        return None
    try:
        parsed = parse_path(f"{ROOT}/scope/vm/{DISKS_DIR}/{path.name}")
    except ManifestError:
        return None
    if parsed.kind is not EntryKind.SPARSE:
        return None
    return target[: -len(SPARSE_MARKER)]


class Redactor:
    """Replaces known secrets by ``***`` in text that leaves the agent."""

    def __init__(self) -> None:
        self._secrets: List[str] = []

    def add(self, secret: str) -> None:
        """Remember a secret (ignored when too short to be recognised safely)."""
        if len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class Outbox:
    """Thread-safe queue of messages for the fd, bounded by :data:`MAX_OUTBOX`."""

    def __init__(self, redact: Redactor) -> None:
        self._lock = threading.Lock()
        self._items: List[Message] = []
        self._dropped = 0
        self._redact = redact

    def log(self, level: LogLevel, text: str) -> None:
        """Queue a log line (secrets removed)."""
        self.put(LogRecord(level=level, text=self._redact(text)))

    def put(self, msg: Message) -> None:
        """Queue a message, or count it as dropped when the queue is full."""
        with self._lock:
            if len(self._items) >= MAX_OUTBOX:
                self._dropped += 1
            else:
                self._items.append(msg)

    def take(self) -> List[Message]:
        """Everything queued so far (and a warning about dropped records)."""
        with self._lock:
            items, self._items = self._items, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            items.append(LogRecord(level=LogLevel.WARNING,
                                   text=f"{dropped} agent log records were dropped (too many at once)"))
        return items


_LEVELS = ((logging.ERROR, LogLevel.ERROR), (logging.WARNING, LogLevel.WARNING), (logging.INFO, LogLevel.INFO))


class OutboxHandler(logging.Handler):
    """Python logging -> :class:`Outbox` (DEBUG only when the job asked for agent debugging)."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(logging.DEBUG)
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted record with its protocol level."""
        level = next((lv for threshold, lv in _LEVELS if record.levelno >= threshold), LogLevel.DEBUG)
        try:
            text = self.format(record)
        except Exception:  # never let logging break a transfer
            text = str(record.msg)
        self.outbox.log(level, text)


@runtime_checkable
class Undoing(Protocol):
    """A source that changes the far side during a backup and can say, and undo, what it changed."""

    def pending_cleanup(self) -> Optional[CleanupRecord]:
        """What must be undone if the job ended now (None: nothing)."""

    def cleanup(self, record: CleanupRecord) -> Optional[CleanupRecord]:
        """Undo what a dead agent left; returns what is still left (None: all gone)."""


@dataclass
class _Restore:
    entry: FileEntry
    target: str
    temp: str
    replace: bool
    writer: FileWriter
    drain: Drain
    hyperv: Optional[ItemTarget] = None  # restore into Hyper-V: where the item goes and what it must be
    delta: Optional[DeltaApplier] = None  # a disk delta applied to the file restored before it


class Session:
    """Everything one job holds in the agent."""

    def __init__(self, start: StartJob, outbox: Outbox, redact: Redactor) -> None:
        self.start = start
        self.kind = start.kind
        self.outbox = outbox
        self.redact = redact
        self._options: JobOptions = start.options
        self._credentials: Optional[Credentials] = None
        if start.credentials is not None:
            wire = start.credentials
            self._credentials = Credentials(wire.username, wire.password, wire.domain)
            redact.add(wire.password)
        self.started = time.monotonic()
        self.files_done = 0
        self.bytes_done = 0
        self.source: Optional[Source] = None
        self._listed: Dict[str, FileEntry] = {}
        self._pumps: Dict[str, Pump] = {}
        self._restores: Dict[str, _Restore] = {}
        self._local = LocalStorage()
        self.left: Optional[CleanupRecord] = None  # set by close(): what the source could not undo
        self.hyperv: Optional[HyperVRestore] = None
        self._connections: Optional[Connections] = None
        self._finished = False
        self._base: List[RestoreObject] = list(start.base)
        self._estimated = False  # estimate: the one listing was given
        # Restore to a directory: chunk digests of the disk files deltas were applied to in this job,
        # so that the next delta of the chain need not read the whole file again.
        self._images: Dict[str, ImageHashes] = {}
        # Restore to a directory: where each item of a VM tree went (name -> target), so that the
        # end of the VM's tree (SHA256SUMS) can prove each disk is at the chosen point.
        self._targets: Dict[str, str] = {}
        self._last_beat = time.monotonic()
        self.flush: Optional[Callable[[], None]] = None  # set by the server: sends the outbox now
        restore = start.restore
        if self.kind is JobKind.RESTORE and restore is not None and restore.target is RestoreTarget.HYPERV:
            from bareos_hyperv.restore.execute import HyperVRestore

            self._connections = self.connections()
            self.hyperv = HyperVRestore(restore, self._connections.connector, self._connections.storage,
                                        self._connections.resolver, job_id=start.jobid,
                                        timeout=float(self._options.timeout))
        elif self.kind is JobKind.CLEANUP and start.cleanup is not None and start.cleanup.restore:
            self._connections = self.connections()  # undo_record in run_cleanup
        elif self.kind in (JobKind.BACKUP, JobKind.CLEANUP, JobKind.ESTIMATE):
            self.source = make_source(start.source, self)
            if self.kind is JobKind.CLEANUP and not isinstance(self.source, Undoing):
                raise ConfigurationError(f"source={start.source} has nothing to clean up",
                                         what_to_do="report this as a bug with the job log")
        # A restore without restore options, or with target=directory, writes below where= (the fd
        # refused restore_to=hyperv / restore_local=no for other sources when it typed the options).

    # -- SourceContext ---------------------------------------------------------------------------

    @property
    def options(self) -> JobOptions:
        """The job's options, typed by the fd."""
        return self._options

    def connections(self) -> Connections:
        """New connections as the job's connection options describe them (the caller closes them)."""
        return connect(self._options.connection, self.credentials())

    @property
    def job_id(self) -> int:
        """The Bareos JobId."""
        return self.start.jobid

    @property
    def level(self) -> str:
        """Bareos level letter of a backup (F, I, D)."""
        return self.start.level

    @property
    def since(self) -> int:
        """Bareos since time of an Incremental or Differential (epoch seconds)."""
        return self.start.since

    @property
    def base_objects(self) -> List[RestoreObject]:
        """Restore objects of the job an Incremental or Differential builds on."""
        return self._base

    def add_base(self, objects: List[RestoreObject]) -> None:
        """More of those objects (AddBase), before the first ListFiles."""
        self._base.extend(objects)

    def heartbeat(self) -> None:
        """During a long request: send what the outbox holds, plus a progress note, every few seconds."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_INTERVAL or self.flush is None:
            return
        self._last_beat = now
        self.outbox.put(Progress(name=self.start.source, bytes=0))
        self.flush()

    def credentials(self) -> Credentials:
        """Credentials sent with StartJob, else those of ``credentials_file``."""
        if self._credentials is None:
            path = self._options.credentials_file
            if not path:
                raise ConfigurationError("this source needs credentials but none were given",
                                         what_to_do="set credentials_file= to a file with username= and "
                                                    "password= lines (mode 600)")
            self._credentials = Credentials.from_file(path)
            self.redact.add(self._credentials.password)
        return self._credentials

    def _progress(self, name: str, done: int) -> None:
        self.outbox.put(Progress(name=name, bytes=done))

    # -- backup ----------------------------------------------------------------------------------

    def list_files(self) -> List[FileEntry]:
        """The source's items (remembered for OpenFile)."""
        if self.source is None:
            raise ProtocolError("ListFiles is only valid in a backup job")
        if self.kind is JobKind.ESTIMATE:
            # An estimate changes nothing on any host (bconsole estimate runs the plugin as JobId 0):
            # a source that would change something for its listing says what it would produce instead.
            return self._estimate(self.source)
        files = self.source.list_files()
        for f in files:
            if f.name in self._listed:
                raise ProtocolError(f"source {self.start.source} listed {f.name!r} twice")
            self._listed[f.name] = f
        if files:
            log.info("%d item(s), %d bytes to save from source %s", len(files), sum(f.size for f in files),
                      self.start.source)
        return files

    def _estimate(self, source: Source) -> List[FileEntry]:
        """Estimate: the source's read-only listing, one batch ([] once listed); nothing can be opened."""
        if self._estimated:
            return []
        self._estimated = True
        files = source.estimate() if isinstance(source, Estimating) else source.list_files()
        log.info("estimate: %d item(s), %d bytes from source %s", len(files), sum(f.size for f in files),
                 self.start.source)
        return files

    def pending_cleanup(self) -> Optional[CleanupRecord]:
        """What the source (or the restore) would have to undo if the job ended now (None: nothing)."""
        if self.hyperv is not None:
            host = self._options.backup.host if self._options.backup is not None else ""
            return None if self._finished else self.hyperv.pending_cleanup(host, self.start.jobid)
        source = self.source
        return source.pending_cleanup() if isinstance(source, Undoing) else None

    def run_cleanup(self) -> Optional[CleanupRecord]:
        """Cleanup job: undo what StartJob.cleanup names; returns what is still left."""
        record = self.start.cleanup
        if self.kind is not JobKind.CLEANUP or record is None:
            raise ProtocolError("Cleanup is only valid in a cleanup job that names what to undo")
        if record.restore:
            from bareos_hyperv.restore.execute import undo_record

            assert self._connections is not None  # made in __init__
            timeout = float(self._options.timeout)
            return undo_record(record, self._connections.connector, self._connections.storage,
                               self._connections.resolver, timeout=timeout)
        source = self.source
        assert isinstance(source, Undoing)  # checked in __init__
        return source.cleanup(record)

    def entry(self, name: str) -> FileEntry:
        """A listed item by name."""
        try:
            return self._listed[name]
        except KeyError:
            raise ProtocolError(f"{name!r} is not an item ListFiles returned") from None

    def open_file(self, name: str) -> int:
        """Start streaming ``name``; returns the pipe's read end (the caller sends, then closes it)."""
        entry = self._listed.get(name)
        if self.source is None or entry is None or self.kind is JobKind.ESTIMATE:
            raise ProtocolError(f"OpenFile for {name!r}, which ListFiles did not return")
        if name in self._pumps:
            raise ProtocolError(f"{name} is already open")
        reader = self.source.open(entry)
        rfd, wfd = make_pipe()
        pump = Pump(name, reader, wfd, entry.size, self._progress)
        self._pumps[name] = pump
        pump.start()
        return rfd

    def _close_backup(self, name: str) -> FileDone:
        pump = self._pumps.pop(name)
        if not pump.join(JOIN_TIMEOUT):
            pump.abort()
            raise StorageError(f"streaming {name} did not finish {JOIN_TIMEOUT:.0f} s after the core "
                               f"stopped reading ({pump.bytes} bytes so far)",
                               what_to_do="check the connection to the source")
        if pump.error is not None:
            raise pump.error
        self.files_done += 1
        self.bytes_done += pump.bytes
        digest = pump.sha256.hexdigest()
        if self.source is not None:
            self.source.file_done(self._listed[name], pump.bytes, digest)
        return FileDone(name=name, bytes=pump.bytes, sha256=digest, seconds=pump.seconds)

    # -- restore ---------------------------------------------------------------------------------

    def plan_restore(self, objects: List[RestoreObject]) -> RestorePlanned:
        """Restore into Hyper-V: plan every VM before any data arrives."""
        if self.hyperv is None:
            raise ProtocolError("PlanRestore is only valid in a restore into Hyper-V")
        planned, refused = self.hyperv.plan(objects)
        return RestorePlanned(vms=planned, refused=refused)

    def finish_restore(self) -> RestoreFinished:
        """Restore into Hyper-V: every item arrived; import the VMs."""
        if self.hyperv is None:
            raise ProtocolError("FinishRestore is only valid in a restore into Hyper-V")
        if self._restores:
            raise ProtocolError(f"FinishRestore while {len(self._restores)} item(s) are still open")
        restored, failed = self.hyperv.finish()
        self._finished = True  # finish() undid what failed; a cancel before this point undoes everything
        return RestoreFinished(restored=restored, failed=failed)

    def _create_hyperv(self, entry: FileEntry) -> Tuple[Optional[int], str]:
        assert self.hyperv is not None
        if entry.name in self._restores:
            raise ProtocolError(f"{entry.name} is already being restored")
        target, reason = self.hyperv.open_item(entry.name, entry.size)
        if target is None:
            return None, reason
        rfd, wfd = make_pipe()
        drain = Drain(entry.name, rfd, target.writer, entry.size, self._progress)
        self._restores[entry.name] = _Restore(entry, target.record.final_path, "", True, target.writer, drain,
                                              hyperv=target)
        drain.start()
        return wfd, ""

    def create_item(self, entry: FileEntry, target: str, replace: bool) -> Tuple[Optional[int], str]:
        """Prepare restoring ``entry``: (write end of its pipe, "") or (None, why it is skipped)."""
        if self.hyperv is not None:
            return self._create_hyperv(entry)
        return self.create_file(entry, target, replace), ""

    def create_file(self, entry: FileEntry, target: str, replace: bool) -> int:
        """Prepare restoring ``entry`` to ``target``; returns the pipe's write end for the core."""
        if self.kind is not JobKind.RESTORE:
            raise ProtocolError("CreateFile is only valid in a restore job")
        path = PurePosixPath(target)
        if not path.is_absolute():
            raise ConfigurationError(f"restore target {target!r} is not an absolute path",
                                     what_to_do="give the restore job an absolute where= directory")
        if entry.name in self._restores:
            raise ProtocolError(f"{entry.name} is already being restored")
        image = _delta_image(entry.name, target)
        if image is not None:
            return self._create_delta(entry, image)
        sparse = _sparse_image(target)
        if sparse is not None:
            return self._create_sparse(entry, sparse, replace)
        if not replace and self._local.exists(LocalLocation(path)):
            raise StorageExists(f"{target} already exists and the restore job does not replace files",
                                what_to_do="restore with replace=always or to another where= directory")
        _make_restore_dirs(path.parent)
        temp = str(path.parent / f".{path.name}{PARTIAL_SUFFIX}")
        self._local.delete(LocalLocation(PurePosixPath(temp)), missing_ok=True)  # left by a killed agent
        writer = self._local.create(LocalLocation(PurePosixPath(temp)))
        try:
            os.chmod(temp, PARTIAL_FILE_MODE)
        except OSError as exc:
            writer.discard()
            raise StorageError(f"cannot restrict the access to {temp}: {exc.strerror}",
                               what_to_do="check the restore directory's file system") from None
        rfd, wfd = make_pipe()
        drain = Drain(entry.name, rfd, writer, entry.size, self._progress)
        self._restores[entry.name] = _Restore(entry, target, temp, replace, writer, drain)
        drain.start()
        return wfd

    def _create_sparse(self, entry: FileEntry, target: str, replace: bool) -> int:
        """A sparse full: written into a new empty file under a temporary name, restored as the plain disk file.

        The file is set to its final length (holes where the file system allows), the listed
        ranges are written, the image digest is checked, then the file takes its name.
        """
        path = PurePosixPath(target)
        if not replace and self._local.exists(LocalLocation(path)):
            raise StorageExists(f"{target} already exists and the restore job does not replace files",
                                what_to_do="restore with replace=always or to another where= directory")
        self._local.makedirs(LocalLocation(path.parent))
        temp = str(path.parent / f".{path.name}{PARTIAL_SUFFIX}")
        self._local.delete(LocalLocation(PurePosixPath(temp)), missing_ok=True)  # left by a killed agent
        self._local.create(LocalLocation(PurePosixPath(temp))).close()
        applier = DeltaApplier(FilePatchTarget(temp), name=entry.name)
        rfd, wfd = make_pipe()
        drain = Drain(entry.name, rfd, applier, entry.size, self._progress)
        self._restores[entry.name] = _Restore(entry, target, temp, True, applier, drain, delta=applier)
        drain.start()
        return wfd

    def _create_delta(self, entry: FileEntry, image: str) -> int:
        """A disk delta: applied to the disk file restored before it (``image``), under a temporary name.

        The delta refuses any file but its base (a missing, repeated or out-of-order part of the
        chain); the file goes back to its name only once the result digest matched, and is removed
        when the delta cannot be applied, so no disk is left half patched.
        """
        path = PurePosixPath(image)
        temp = str(path.parent / f".{path.name}{PARTIAL_SUFFIX}")
        if not self._local.exists(LocalLocation(path)):
            raise DeltaBaseMismatch(
                f"{entry.name} is a delta of {path.name}, which this restore did not restore before it",
                what_to_do="restore the whole chain (the full backup and every later incremental or "
                           "differential job up to the point wanted) in one restore job")
        self._local.delete(LocalLocation(PurePosixPath(temp)), missing_ok=True)  # left by a killed agent
        self._local.rename(LocalLocation(path), LocalLocation(PurePosixPath(temp)))
        try:
            applier = DeltaApplier(FilePatchTarget(temp), name=entry.name, base=self._images.pop(image, None))
        except BaseException:
            self._local.rename(LocalLocation(PurePosixPath(temp)), LocalLocation(path))
            raise
        rfd, wfd = make_pipe()
        drain = Drain(entry.name, rfd, applier, entry.size, self._progress)
        self._restores[entry.name] = _Restore(entry, image, temp, True, applier, drain, delta=applier)
        drain.start()
        return wfd

    def _close_delta(self, name: str, item: _Restore) -> FileDone:
        assert item.delta is not None
        temp = LocalLocation(PurePosixPath(item.temp))
        try:
            item.delta.close()
            self._local.rename(temp, LocalLocation(PurePosixPath(item.target)), replace=True)
        except BareosHyperVError as exc:
            self._local.delete(temp, missing_ok=True)
            raise type(exc)(f"{exc.message}; the restored disk file {item.target} was removed rather than "
                            "left half patched", what_to_do=exc.what_to_do, context=exc.context) from None
        except BaseException:
            self._local.delete(temp, missing_ok=True)
            raise
        if item.delta.result is not None:
            self._images[item.target] = item.delta.result
        self._targets[name.lstrip("/")] = item.target
        try:
            os.utime(item.target, (item.entry.mtime, item.entry.mtime))
        except OSError as exc:
            log.warning("restored %s but could not set its time: %s", item.target, exc.strerror)
        self.files_done += 1
        self.bytes_done += item.drain.bytes
        return FileDone(name=name, bytes=item.drain.bytes, sha256=item.drain.sha256.hexdigest(),
                        seconds=item.drain.seconds)

    def _check_point(self, name: str, trailer: str) -> None:
        """The end of a VM's tree (its newest job's ``SHA256SUMS``): every restored disk is at the chosen point.

        The manifest restored with the tree is the chosen point's (a name present in several jobs
        comes from the newest).  A disk whose chain ends with a delta must hold that delta's result
        image: when the final delta (or a later one) was not restored, the file would silently be
        an older image, so it is removed and the restore fails naming it.
        """
        directory = str(PurePosixPath(name.lstrip("/")).parent)
        manifest_target = self._targets.get(f"{directory}/{MANIFEST_FILE}")
        if manifest_target is None:
            log.warning("%s: its manifest was not restored; the disks of this VM cannot be checked "
                        "against the chosen point", directory)
            return
        try:
            with open(manifest_target, "rb") as fh:
                manifest = from_xml(fh.read(), source=manifest_target)
        except OSError as exc:
            raise StorageError(f"cannot read the restored manifest {manifest_target}: {exc.strerror}",
                               what_to_do="check the restore directory") from None
        wrong: List[str] = []
        for disk in manifest.disks:
            for file in disk.chain:
                if not file.chain:
                    continue  # a manifest of an older version: the disk is this job's full copy
                target = self._targets.get(f"{directory}/{file.chain[0].name}")
                if target is None:
                    continue  # the disk's full image was not selected: nothing of it was restored
                final = file.chain[-1]
                if final.kind is not PartKind.DELTA:
                    continue  # the full image is the point's: written as it is
                image = self._images.get(target)
                expected = file.image_digest or final.image_digest
                if image is not None and image.digest() == expected:
                    continue
                self._local.delete(LocalLocation(PurePosixPath(target)), missing_ok=True)
                self._images.pop(target, None)
                wrong.append(f"{PurePosixPath(target).name} (its last part, {final.name} of job {final.job_id}, "
                             "was not applied)")
        if wrong:
            raise DeltaBaseMismatch(
                f"{directory}: not every disk is at the point of job {manifest.backup.job_id}: "
                + "; ".join(wrong) + "; removed rather than left at an older point",
                what_to_do="restore the whole chain (the full backup and every later incremental or "
                           "differential job up to the point wanted) in one restore job")

    def _close_restore(self, name: str) -> FileDone:
        item = self._restores.pop(name)
        if not item.drain.join(JOIN_TIMEOUT):
            item.drain.abort()
            item.writer.discard()
            raise StorageError(f"writing {item.target} did not finish {JOIN_TIMEOUT:.0f} s after the core "
                               "closed the data stream", what_to_do="check the destination file system")
        if item.drain.error is not None:
            item.writer.discard()
            if item.delta is not None:
                self._local.delete(LocalLocation(PurePosixPath(item.temp)), missing_ok=True)
                log.error("the restored disk file %s was removed rather than left half patched", item.target)
            raise item.drain.error
        if item.hyperv is not None:
            return self._close_hyperv(name, item)
        if item.delta is not None:
            return self._close_delta(name, item)
        try:
            item.writer.close()
            self._local.rename(LocalLocation(PurePosixPath(item.temp)), LocalLocation(PurePosixPath(item.target)),
                               replace=item.replace)
        except BaseException:
            self._local.delete(LocalLocation(PurePosixPath(item.temp)), missing_ok=True)
            raise
        try:
            os.chmod(item.target, item.entry.mode & 0o7777)
            os.utime(item.target, (item.entry.mtime, item.entry.mtime))
        except OSError as exc:
            log.warning("restored %s but could not set its mode/time: %s", item.target, exc.strerror)
        self.files_done += 1
        self.bytes_done += item.drain.bytes
        self._targets[name.lstrip("/")] = item.target
        if PurePosixPath(name).name == TRAILER_NAME:
            self._check_point(name, item.target)
        return FileDone(name=name, bytes=item.drain.bytes, sha256=item.drain.sha256.hexdigest(),
                        seconds=item.drain.seconds)

    def _close_hyperv(self, name: str, item: _Restore) -> FileDone:
        assert self.hyperv is not None and item.hyperv is not None
        digest = item.drain.sha256.hexdigest()
        try:
            item.writer.close()
            self.hyperv.item_done(item.hyperv, item.drain.bytes, digest, item.drain.seconds)
        except BaseException:
            item.writer.discard()
            raise
        self.files_done += 1
        self.bytes_done += item.drain.bytes
        return FileDone(name=name, bytes=item.drain.bytes, sha256=digest, seconds=item.drain.seconds)

    # -- both ------------------------------------------------------------------------------------

    def close_file(self, name: str) -> FileDone:
        """Finish one item and report what moved (raises the transfer's error)."""
        if name in self._pumps:
            return self._close_backup(name)
        if name in self._restores:
            return self._close_restore(name)
        raise ProtocolError(f"CloseFile for {name!r}, which is not open")

    def job_done(self) -> JobDone:
        """Final statistics."""
        return JobDone(files=self.files_done, bytes=self.bytes_done, peak_rss_kib=peak_rss_kib(),
                       seconds=round(time.monotonic() - self.started, 3))

    def close(self) -> None:
        """Stop transfers, remove partial restores, release the source (idempotent)."""
        for pump in self._pumps.values():
            pump.abort()
        for item in self._restores.values():
            item.drain.abort()
            try:
                item.writer.discard()
                if item.delta is not None:  # the disk file being patched: never left half patched
                    self._local.delete(LocalLocation(PurePosixPath(item.temp)), missing_ok=True)
            except (OSError, StorageError) as exc:
                log.warning("could not remove the partial file %s: %s", item.temp, exc)
        self._pumps.clear()
        self._restores.clear()
        if self.hyperv is not None:
            hyperv, self.hyperv = self.hyperv, None
            try:
                if not self._finished:
                    hyperv.abort()
            finally:
                if self._connections is not None:
                    self._connections.close()
        elif self._connections is not None:
            self._connections.close()
        if self.source is not None:
            source, self.source = self.source, None
            try:
                source.close()
            finally:
                if isinstance(source, Undoing):
                    self.left = source.pending_cleanup()
