"""The Bareos python3-fd plugin class: drives the agent process, hands pipe ends to the core.

Runs inside bareos-fd, in a fresh sub-interpreter per job: it imports only the standard library,
``bareosfd`` and this package's ``protocol``/``errors`` (see ``DESIGN.md``, "Why two
processes").  Everything that needs third-party code happens in the agent.

Backup: the first ``start_backup_file`` starts the agent and asks for the item list; each item is
one FT_REG file whose data the core reads from a pipe the agent fills (``plugin_io`` IO_OPEN sets
``iostat_do_in_core`` and the pipe's read end).  Restore: ``create_file`` asks the agent for a
pipe into the destination and IO_OPEN gives its write end to the core.  The plugin never copies
data in Python.

Cleanup after a dead agent: every batch the agent lists carries what the job has changed on the
Hyper-V side so far (a recovery checkpoint, a staging folder); the plugin keeps the latest.  An
agent that ends normally, or after SIGTERM, reports in JobDone what it could not undo.  When the
job ends with something not undone (agent killed or crashed, or a leftover in JobDone), a fresh
agent is started in cleanup mode to remove exactly that, bounded by :data:`CLEANUP_DEADLINE`;
what still remains is reported as M_ERROR and the next job's stale-checkpoint sweep removes it.

Errors: every failure is a :class:`~bareos_hyperv.errors.BareosHyperVError` (the agent's arrive
as :class:`~bareos_hyperv.fd.agent_process.RemoteError`); :meth:`BareosFdHyperV._fail` turns the
first one into the job's single M_FATAL and the callback returns bRC_Error.  After a cancel,
errors caused by stopping the agent are reported as information only.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import signal
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Set, TypeVar, cast

import bareosfd

from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, ProtocolError, StorageError
from bareos_hyperv.fd.agent_process import AgentProcess, close_fds
from bareos_hyperv.fd.joblog import DEBUG_TRACE, JobLog
from bareos_hyperv.fd.options import PluginOptions
from bareos_hyperv.protocol.messages import (
    AddBase,
    Cleanup,
    CleanupDone,
    CleanupRecord,
    CloseFile,
    CreateFile,
    FileDone,
    FileEntry,
    FileList,
    FileSkipped,
    FinishRestore,
    JobKind,
    JobStarted,
    ListFiles,
    Message,
    OpenFile,
    PipeReady,
    PlanRestore,
    RestoreFinished,
    RestoreObject,
    RestoreOptions,
    RestorePlanned,
    RestoreTarget,
    StartJob,
    WireCredentials,
)

__all__ = ["BareosFdHyperV"]

# Events beyond the ones python3-fd registers itself (reference §5.3).
EVENTS = (
    bareosfd.bEventJobEnd,
    bareosfd.bEventStartBackupJob,
    bareosfd.bEventEndBackupJob,
    bareosfd.bEventStartRestoreJob,
    bareosfd.bEventEndRestoreJob,
    bareosfd.bEventCancelCommand,
    bareosfd.bEventEndFileSet,
)
END_EVENTS = frozenset({bareosfd.bEventEndBackupJob, bareosfd.bEventEndRestoreJob, bareosfd.bEventJobEnd})
# Levels as GetValue(bVarLevel) returns them (character codes).
LEVEL_NAMES = {"F": "Full", "I": "Incremental", "D": "Differential", " ": "restore"}
# Restore replace codes the director sends (not exported by bareosfd).
REPLACE_ALWAYS, REPLACE_IFNEWER, REPLACE_NEVER, REPLACE_IFOLDER = ord("a"), ord("w"), ord("n"), ord("o")
# Stands for where= when the restore relocates with regexwhere= (bVarWhere None): not empty, so a directory.
RELOCATED_WHERE = "(regexwhere)"
ENV_USERNAME = "BAREOS_HYPERV_USERNAME"
ENV_PASSWORD = "BAREOS_HYPERV_PASSWORD"  # noqa: S105 - a variable name
ENV_DOMAIN = "BAREOS_HYPERV_DOMAIN"
# Name ending of the restore object that carries a VM's final manifest (digests included).
MANIFEST_OBJECT_SUFFIX = "/manifest.object.xml"
# Name ending of the restore objects that carry a disk file's base for the next incremental.
BASE_OBJECT_SUFFIX = ".object.json"
# Restore objects of the previous job go to the agent in batches of about this many bytes
# (a protocol frame holds at most 16 MiB).
BASE_BATCH_BYTES = 8 * 1024 * 1024
# Cleanup agent: seconds per Hyper-V operation (and of silence), and for the whole cleanup.
CLEANUP_TIMEOUT = 60
CLEANUP_DEADLINE = 120.0

F = TypeVar("F", bound=Callable[..., int])


def _callback(func: F) -> F:
    """Turn any failure of a core callback into the job's fatal error and bRC_Error."""

    @functools.wraps(func)
    def wrapper(self: BareosFdHyperV, *args: Any) -> int:
        try:
            return func(self, *args)
        except BareosHyperVError as exc:
            self._fail(exc)
        except Exception as exc:
            self.log.debug(DEBUG_TRACE, traceback.format_exc())
            self._fail(ProtocolError(f"internal error in {func.__name__}: {type(exc).__name__}: {exc}",
                                     what_to_do="report this as a bug with the job log at debug level 100"))
        return int(bareosfd.bRC_Error)

    return cast(F, wrapper)


def _env_credentials(username: Optional[str] = None) -> Optional[WireCredentials]:
    """Credentials from the fd's environment, to be passed over the socket (never inherited).

    ``username`` (the ``username=`` option) names the account when the FileSet gives it; the
    password always comes from the environment, never from the plugin definition.
    """
    username = username or os.environ.get(ENV_USERNAME)
    password = os.environ.get(ENV_PASSWORD)
    if not username or password is None:
        return None
    return WireCredentials(username=username, password=password, domain=os.environ.get(ENV_DOMAIN) or None)


def _batches(objects: List[RestoreObject]) -> List[List[RestoreObject]]:
    """Split restore objects into protocol-sized batches (each at most BASE_BATCH_BYTES, but never empty)."""
    out: List[List[RestoreObject]] = []
    size = 0
    for obj in objects:
        weight = len(obj.data) + len(obj.name) + 64
        if not out or size + weight > BASE_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(obj)
        size += weight
    return out


def _ended(code: Optional[int]) -> str:
    """How an agent ended, for the job log."""
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class BareosFdHyperV:
    """One job's plugin object (created by ``load_bareos_plugin``)."""

    def __init__(self, plugindef: str) -> None:
        self.log = JobLog()
        self.options = PluginOptions()
        self.agent: Optional[AgentProcess] = None
        self.kind: Optional[JobKind] = None
        self.files: List[FileEntry] = []
        self.listed = False
        self.index = 0
        self.io_fd = -1
        self.io_name = ""
        self.pending: Dict[str, int] = {}
        self.canceled = False
        self.failed = False
        self.in_progress: Optional[CleanupRecord] = None  # what to undo if the agent dies now
        self._warned: Set[str] = set()
        self._lock = threading.Lock()
        self.objects: List[RestoreObject] = []  # restore: manifests received before the data
        self.base_objects: List[RestoreObject] = []  # Incr/Diff backup: the previous job's objects
        self.object_index = 0  # backup: ObjectIndex of the restore objects saved so far
        self.restore: Optional[RestoreOptions] = None  # restore: set at bEventStartRestoreJob
        bareosfd.RegisterEvents(list(EVENTS))
        self.jobid = int(bareosfd.GetValue(bareosfd.bVarJobId) or 0)
        self.job_name = str(bareosfd.GetValue(bareosfd.bVarJobName) or "")
        self.level = chr(int(bareosfd.GetValue(bareosfd.bVarLevel) or ord(" ")))
        # bconsole estimate runs the job as JobId 0 (dird ua_cmds.cc EstimateCmd; filed estimate.cc,
        # fd_plugins.cc PluginEstimate: start/end_backup_file, never plugin_io; reference §12): the
        # agent then only says what a backup would save, changing nothing on any host.
        self.estimating = self.jobid == 0
        self._checks_off = False

    # -- error handling --------------------------------------------------------------------------

    def _fail(self, exc: BareosHyperVError) -> None:
        """Report the job's first failure as M_FATAL (later ones only to the debug output)."""
        with self._lock:
            first = not self.failed
            self.failed = True
        if self.canceled:
            self.log.debug(DEBUG_TRACE, f"after cancel: {exc}")
        elif first:
            self.log.fatal(str(exc))
        else:
            self.log.debug(DEBUG_TRACE, f"after the first error: {exc}")

    def _agent(self) -> AgentProcess:
        if self.agent is None:
            raise ProtocolError("the agent is not running")
        return self.agent

    def _ensure_agent(self, kind: JobKind) -> AgentProcess:
        """Start the agent and the job on first use."""
        if self.agent is not None:
            return self.agent
        if self.canceled:
            raise ProtocolError("the job was canceled")
        self.options.check()
        self.kind = kind
        agent = AgentProcess(self.options.get_str("agent_python"), self.log,
                             timeout=self.options.get_int("agent_timeout"))
        self.agent = agent  # before start(): a cancel during start-up must find it
        try:
            agent.start()
        except BaseException:
            self.agent = None
            raise
        if self.canceled:  # cancel arrived while the agent was starting
            agent.abort("the job was canceled")
            raise ProtocolError("the job was canceled")
        where = str(bareosfd.GetValue(bareosfd.bVarWhere) or "")
        level, since = "", 0
        batches: List[List[RestoreObject]] = []
        if kind in (JobKind.BACKUP, JobKind.ESTIMATE):
            level = self.level
            since = int(bareosfd.GetValue(bareosfd.bVarSinceTime) or 0) if level in ("I", "D") else 0
            batches = _batches(self.base_objects)
        first = batches.pop(0) if batches else []
        agent.request(StartJob(kind=kind, source=self.options.source, jobid=self.jobid, job_name=self.job_name,
                               options=self.options.job_options(), credentials=self._credentials(), where=where,
                               restore=self.restore, level=level, since=since, base=first),
                      JobStarted, what="starting the job")
        for batch in batches:
            agent.request(AddBase(objects=batch), JobStarted, what="handing over the previous backup's records")
        return agent

    def _credentials(self) -> Optional[WireCredentials]:
        """The fd environment's account, sent over the socket, unless credentials_file= names one."""
        if self.options.get_str("credentials_file"):
            return None
        return _env_credentials(self.options.get_str("username"))

    def _finish(self) -> None:
        """End of job: stop the agent and report its totals."""
        close_fds([fd for fd in (self.io_fd, *self.pending.values()) if fd >= 0])
        self.io_fd = -1
        self.pending.clear()
        agent, self.agent = self.agent, None
        if agent is None:
            return
        done = agent.stop()
        if done is not None and not (self.failed or self.canceled):
            self.log.info(f"agent finished: {done.files} file(s), {done.bytes} bytes in {done.seconds:.1f} s; "
                          f"agent peak memory (VmHWM) {done.peak_rss_kib} KiB")
        final = done if done is not None else agent.farewell
        left = self.in_progress if final is None else final.cleanup
        self.in_progress = None
        if left is not None:
            self._clean_up_after(left, agent)

    def _clean_up_after(self, record: CleanupRecord, dead: AgentProcess) -> None:
        """A fresh agent removes what the job's agent left on Hyper-V; bounded, never raises."""
        self.log.warning(f"the {'restore' if record.restore else 'backup'} changed Hyper-V ({record.describe()}) and "
                         f"the agent {_ended(dead.returncode)} without undoing it; starting a fresh agent to remove it")
        left: Optional[CleanupRecord] = record
        agent: Optional[AgentProcess] = None
        timer: Optional[threading.Timer] = None
        try:
            agent = AgentProcess(self.options.get_str("agent_python"), self.log, timeout=CLEANUP_TIMEOUT)
            timer = threading.Timer(CLEANUP_DEADLINE, agent.abort,
                                    args=(f"the cleanup took longer than {CLEANUP_DEADLINE:.0f} s",))
            timer.daemon = True
            timer.start()
            agent.start()
            options = self.options.job_options()
            options = dataclasses.replace(options, timeout=min(options.timeout, CLEANUP_TIMEOUT))
            agent.request(StartJob(kind=JobKind.CLEANUP, source=self.options.source, jobid=self.jobid,
                                   job_name=self.job_name, options=options, credentials=self._credentials(),
                                   cleanup=record), JobStarted, what="starting the cleanup")
            reply, _ = agent.request(Cleanup(), CleanupDone, what="removing what the backup left on Hyper-V")
            left = reply.left
        except BareosHyperVError as exc:
            self.log.error(f"the cleanup after the agent failed: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
            if agent is not None:
                agent.stop()
        if left is None:
            if record.restore:
                self.log.info("cleanup done: nothing the restore created is left on Hyper-V")
            else:
                self.log.info(f"cleanup done: nothing of this job is left on {record.node} for VM {record.vm_name}")
        else:
            if record.restore:
                self.log.error(f"left behind on Hyper-V by the restore: {left.describe()} ({', '.join(left.files)}); "
                               "remove them by hand")
                return
            self.log.error(f"left behind on Hyper-V: {left.describe()}; the next backup of this VM with this "
                           "plugin removes the checkpoint; delete the staging folder on the host")

    # -- options and events ----------------------------------------------------------------------

    @_callback
    def parse_plugin_definition(self, plugindef: str) -> int:
        """Add the definition's options (first value wins).

        Problems (unknown options, bad values) are remembered and reported once, before the agent
        starts: an M_FATAL while a real fd parses the fileset cancels the job before its storage
        handshake and adds three fatal lines and half a minute (reference §12).
        """
        for warning in self.options.collect_definition(plugindef):
            if warning not in self._warned:
                self._warned.add(warning)
                self.log.warning(warning)
        if self.level in ("I", "D") and self.options.source == "hyperv" and not self._checks_off:
            # The hyperv source finds what changed itself (change tracking, digests) and lists only
            # that; the core's mtime check would drop items it cannot judge (reference §3.2 "Opt
            # out").  The diagnostic sources keep the core's check.
            bareosfd.SetValue(bareosfd.bVarCheckChanges, False)
            self._checks_off = True
        return int(bareosfd.bRC_OK)

    def handle_plugin_event(self, event: int) -> int:
        """Cancel (any thread) stops the agent; the end events stop it cleanly."""
        try:
            if event == bareosfd.bEventCancelCommand:
                self.canceled = True
                agent = self.agent
                if agent is not None:
                    agent.abort("the job was canceled")
            elif event == bareosfd.bEventStartRestoreJob:
                self._start_restore()
            elif event in END_EVENTS:
                if event == bareosfd.bEventEndRestoreJob:
                    self._finish_restore()
                self._finish()
        except BareosHyperVError as exc:
            self._fail(exc)
            if event == bareosfd.bEventStartRestoreJob:
                return int(bareosfd.bRC_Error)
        except Exception as exc:
            self.log.debug(DEBUG_TRACE, traceback.format_exc())
            self._fail(ProtocolError(f"internal error at event {event}: {type(exc).__name__}: {exc}",
                                     what_to_do="report this as a bug with the job log at debug level 100"))
        return int(bareosfd.bRC_OK)

    # -- backup ----------------------------------------------------------------------------------

    def _next_batch(self) -> bool:
        """Ask the agent for the next batch of items; False when the source is done."""
        agent = self._ensure_agent(JobKind.ESTIMATE if self.estimating else JobKind.BACKUP)
        reply, _ = agent.request(ListFiles(), FileList, what="listing what to back up")
        self.in_progress = reply.cleanup
        self.files.extend(reply.files)
        return bool(reply.files)

    @_callback
    def start_backup_file(self, savepkt: Any) -> int:
        """Describe the next item; the first call starts the agent and fetches the first batch."""
        if not self.listed:
            try:
                self.options.check()
            except ConfigurationError as exc:
                # The configuration's one fatal line; bRC_Stop (not bRC_Error) keeps the core from
                # adding "startBackupFile failed" (filed fd_plugins.cc PluginSave).
                self._fail(exc)
                return int(bareosfd.bRC_Stop)
            self.listed = True
            if not self._next_batch():
                self.log.warning(f"source {self.options.source} has nothing to back up")
                return int(bareosfd.bRC_Stop)
        entry = self.files[self.index]
        savepkt.fname = entry.name
        if entry.restore_object is not None:
            # Saved in the catalog, delivered to every restore before the data (reference §7, §12).
            data = bytearray(entry.restore_object.encode("utf-8"))
            self.object_index += 1
            savepkt.type = bareosfd.FT_RESTORE_FIRST
            savepkt.object_name = entry.name
            savepkt.object = data
            savepkt.object_len = len(data)
            savepkt.object_index = self.object_index
            savepkt.statp = bareosfd.StatPacket(mode=entry.mode, size=len(data), atime=entry.mtime,
                                                mtime=entry.mtime, ctime=entry.mtime)
            return int(bareosfd.bRC_OK)
        savepkt.type = bareosfd.FT_REG
        savepkt.no_read = False
        savepkt.statp = bareosfd.StatPacket(mode=entry.mode, size=entry.size, atime=entry.mtime,
                                            mtime=entry.mtime, ctime=entry.mtime)
        return int(bareosfd.bRC_OK)

    @_callback
    def end_backup_file(self) -> int:
        """More items follow until the source has no further batch.

        Sources that work in stages (one VM at a time) finish a stage when asked for the next
        batch, so that request comes only after every item of the stage reached the core.
        """
        self.index += 1
        if self.failed or self.canceled:
            return int(bareosfd.bRC_OK)
        if self.index < len(self.files) or self._next_batch():
            return int(bareosfd.bRC_More)
        return int(bareosfd.bRC_OK)

    # -- data ------------------------------------------------------------------------------------

    def plugin_io(self, iop: Any) -> int:
        """IO_OPEN hands a pipe end to the core (do_io_in_core); IO_CLOSE finishes the item."""
        try:
            if iop.func == bareosfd.IO_OPEN:
                self._io_open(iop)
            elif iop.func == bareosfd.IO_CLOSE:
                self._io_close()
                iop.status = 0
            elif iop.func == bareosfd.IO_SEEK:
                raise StorageError(f"the core asked to seek in the data pipe of {self.io_name}",
                                   what_to_do="do not enable sparse=yes in the FileSet Options of this plugin")
            else:
                raise ProtocolError(f"plugin_io function {iop.func} called though the core does the I/O")
            return int(bareosfd.bRC_OK)
        except BareosHyperVError as exc:
            self._fail(exc)
        except Exception as exc:
            self.log.debug(DEBUG_TRACE, traceback.format_exc())
            self._fail(ProtocolError(f"internal error in plugin_io: {type(exc).__name__}: {exc}"))
        iop.status = -1
        iop.io_errno = errno.EIO
        return int(bareosfd.bRC_Error)

    def _io_open(self, iop: Any) -> None:
        if self.kind is JobKind.BACKUP:
            entry = self.files[self.index]
            _reply, fds = self._agent().request(OpenFile(name=entry.name), PipeReady, what=f"opening {entry.name}")
            if len(fds) != 1:
                close_fds(fds)
                raise ProtocolError(f"the agent sent {len(fds)} descriptors for {entry.name}, expected 1")
            name, fd = entry.name, fds[0]
        else:
            name = str(iop.fname)
            fd = self.pending.pop(name, -1)
            if fd < 0:
                raise ProtocolError(f"IO_OPEN for {name}, which create_file did not prepare")
        self.io_fd, self.io_name = fd, name
        iop.filedes = fd
        iop.status = bareosfd.iostat_do_in_core

    def _io_close(self) -> None:
        fd, self.io_fd = self.io_fd, -1
        if fd >= 0:
            # Restore: closing the write end is the EOF the agent waits for; backup: we are done reading.
            os.close(fd)
        if self.canceled or self.failed or self.agent is None:
            return
        done, _ = self.agent.request(CloseFile(name=self.io_name), FileDone, what=f"finishing {self.io_name}")
        if self.restore is not None and self.restore.target is RestoreTarget.HYPERV:
            self.in_progress = done.cleanup
        self.log.debug(DEBUG_TRACE, f"{done.name}: {done.bytes} bytes in {done.seconds:.1f} s, "
                                    f"sha256 {done.sha256}")

    # -- restore ---------------------------------------------------------------------------------

    def _start_restore(self) -> None:
        """bEventStartRestoreJob: where= is known; a restore into Hyper-V is planned before any data.

        With regexwhere=, strip_prefix= or add_prefix= the fd rewrites each file name itself and
        leaves bVarWhere None, where where= empty or / gives "" (reference §12): the administrator
        asked for a directory, so that is the default then (restore_to= still decides).
        """
        value = bareosfd.GetValue(bareosfd.bVarWhere)
        self.restore = self.options.restore_options(RELOCATED_WHERE if value is None else str(value))
        if self.restore.target is not RestoreTarget.HYPERV:
            return
        if not self.objects:
            raise ConfigurationError(
                "this restore has no VM manifest among its restore objects, so it cannot be restored into "
                "Hyper-V (the backup was made by an older bareos-hyperv, or no VM of this plugin was selected)",
                what_to_do="restore the files into a directory (a where= other than /) and import them by hand")
        agent = self._ensure_agent(JobKind.RESTORE)
        # Restore objects arrive ordered by ObjectIndex, not by job (reference §12): sort by job.
        objects = sorted(self.objects, key=lambda o: (o.jobid, o.name))
        reply, _ = agent.request(PlanRestore(objects=objects), RestorePlanned, what="planning the restore")
        if self.restore.dry_run:
            self.log.info("restore_dry_run=yes: the plan above was printed; nothing will be written")
        for name in reply.refused:
            self.log.error(f"VM {name} will not be restored: its plan has blocking problems (see above)")

    def _finish_restore(self) -> None:
        """bEventEndRestoreJob: import the VMs; any failure is fatal (an M_ERROR here leaves the job OK)."""
        restore = self.restore
        if restore is None or restore.target is not RestoreTarget.HYPERV or self.agent is None:
            return
        if self.failed or self.canceled:
            return
        reply, _ = self.agent.request(FinishRestore(), RestoreFinished, what="importing the restored VMs")
        self.in_progress = None  # the agent undid what failed itself
        if reply.failed:
            names = "; ".join(f"{vm}: {why}" for vm, why in reply.failed.items())
            done = f" (restored: {', '.join(reply.restored)})" if reply.restored else ""
            raise BareosHyperVError(f"restore into Hyper-V failed for {names}{done}",
                                    what_to_do="the plan and the errors above say why")

    @_callback
    def start_restore_file(self, cmd: str) -> int:
        """Start the agent for the restore on the first item."""
        self._ensure_agent(JobKind.RESTORE)
        return int(bareosfd.bRC_OK)

    def end_restore_file(self) -> int:
        """Nothing left to do per item (IO_CLOSE finished it)."""
        return int(bareosfd.bRC_OK)

    def _replace_allowed(self, target: str, replace: int, mtime: int) -> bool:
        """Bareos's replace policy for an existing target; False means skip the item."""
        try:
            existing = os.lstat(target).st_mtime
        except FileNotFoundError:
            return True
        if replace == REPLACE_NEVER:
            self.log.info(f"File skipped. Already exists: {target}")
            return False
        if replace == REPLACE_IFNEWER and mtime <= existing:
            self.log.info(f"File skipped. Not newer: {target}")
            return False
        if replace == REPLACE_IFOLDER and mtime >= existing:
            self.log.info(f"File skipped. Not older: {target}")
            return False
        return True

    @_callback
    def create_file(self, restorepkt: Any) -> int:
        """Ask the agent for a pipe into the destination; the core extracts into it."""
        agent = self._ensure_agent(JobKind.RESTORE)
        target = str(restorepkt.ofname)
        if restorepkt.type != bareosfd.FT_REG:
            self.log.warning(f"{target}: only regular files are restored by this plugin; skipped")
            restorepkt.create_status = bareosfd.CF_SKIP
            return int(bareosfd.bRC_OK)
        statp = restorepkt.statp
        into_hyperv = self.restore is not None and self.restore.target is RestoreTarget.HYPERV
        if not into_hyperv and not self._replace_allowed(target, int(restorepkt.replace), int(statp.st_mtime)):
            restorepkt.create_status = bareosfd.CF_SKIP
            return int(bareosfd.bRC_OK)
        msg = CreateFile(name=target, target=target, size=int(statp.st_size), mtime=int(statp.st_mtime),
                         mode=int(statp.st_mode), replace=True)
        reply: Message
        reply, fds = agent.request(msg, Message, what=f"preparing the restore of {target}")
        if isinstance(reply, FileSkipped):
            close_fds(fds)
            if reply.reason:
                self.log.debug(DEBUG_TRACE, f"{target}: skipped ({reply.reason})")
            restorepkt.create_status = bareosfd.CF_SKIP
            return int(bareosfd.bRC_OK)
        if not isinstance(reply, PipeReady):
            close_fds(fds)
            raise ProtocolError(f"the agent answered {reply.TYPE} to the restore of {target}")
        if into_hyperv:
            self.in_progress = reply.cleanup
        if len(fds) != 1:
            close_fds(fds)
            raise ProtocolError(f"the agent sent {len(fds)} descriptors for {target}, expected 1")
        close_fds([self.pending.pop(target, -1)])
        self.pending[target] = fds[0]
        restorepkt.create_status = bareosfd.CF_EXTRACT
        return int(bareosfd.bRC_OK)

    def set_file_attributes(self, restorepkt: Any) -> int:
        """The agent sets mode and mtime when it completes the file."""
        return int(bareosfd.bRC_OK)

    # -- callbacks with nothing to do ------------------------------------------------------------

    def check_file(self, fname: str) -> int:
        """Accurate mode: items of earlier jobs are not reported deleted."""
        return int(bareosfd.bRC_Seen)

    def get_acl(self, aclpkt: Any) -> int:
        """No ACLs for plugin items."""
        return int(bareosfd.bRC_OK)

    def set_acl(self, aclpkt: Any) -> int:
        """No ACLs for plugin items."""
        return int(bareosfd.bRC_OK)

    def get_xattr(self, xattrpkt: Any) -> int:
        """No extended attributes for plugin items."""
        return int(bareosfd.bRC_OK)

    def set_xattr(self, xattrpkt: Any) -> int:
        """No extended attributes for plugin items."""
        return int(bareosfd.bRC_OK)

    @_callback
    def restore_object_data(self, rop: Any) -> int:
        """Keep the restore objects this plugin saved.

        Restore: each VM's final manifest (they arrive before bEventStartRestoreJob).
        Incremental/Differential backup: the manifests and disk bases of the job it builds on
        (after bEventEndFileSet, before bEventStartBackupJob; reference §12); they go to the
        agent with StartJob.
        """
        name = str(rop.object_name or "")
        backup = self.level in ("I", "D")
        if not (name.endswith(MANIFEST_OBJECT_SUFFIX) or (backup and name.endswith(BASE_OBJECT_SUFFIX))):
            return int(bareosfd.bRC_OK)
        data = rop.object
        raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else str(data).encode("utf-8")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(f"the restore object {name} of job {rop.jobid} is not UTF-8 text",
                                     what_to_do="the catalog or the save set is damaged; restore the files "
                                                "into a directory instead") from None
        (self.base_objects if backup else self.objects).append(RestoreObject(jobid=int(rop.jobid), name=name,
                                                                              data=text))
        return int(bareosfd.bRC_OK)

    def handle_backup_file(self, savepkt: Any) -> int:
        """Not an Options-block plugin."""
        return int(bareosfd.bRC_OK)
