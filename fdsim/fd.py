"""The emulated Bareos 25.1 file daemon core: drives a python3-fd plugin through backup and
restore jobs in the order the real fd does (reference §1-§8), one fresh sub-interpreter per job.

Usage::

    sim = FdSim(store_dir)
    r = sim.backup("python3:module_name=bareos-fd-hyperv:host=...", level="F", plugin_dir=...)
    r = sim.restore(None, where="/tmp/bareos-restores", pluginoptions="python3:restore_local=yes")
    sim.cancel(jobid)  # from another thread while a job runs

Where fdsim knowingly differs from the fd (no hard-link detection, no Options-block plugins)
the docstrings say so.
"""

from __future__ import annotations

import os
import select
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple, Union

from fdsim.breg import BRegexp, apply_bregexps, build_where, parse_bregexps
from fdsim.dirconf import fileset_plugin_strings
from fdsim.interp import GuestDied, SubInterpreter
from fdsim.plugstring import (
    PluginDefinition,
    PluginStringError,
    is_python_plugin,
    merge_override,
    parse_definition,
)
from fdsim.pyfiles import bareosfd as bfd
from fdsim.store import FileRecord, JobRecord, JobWriter, SaveSetStore, StoredObject

# --- sizes and codes the core uses (reference §3.3, §3.4, §8) ---------------------------------
DEFAULT_BUFFER_SIZE = 262144  # Client "Maximum Network Buffer Size" default
SPARSE_HEADER_SIZE = 8  # the file address in front of each sparse/offsets block
RESTORE_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # 577 on Linux
EXTRACT_OPEN_MODE = 0o600
STREAM_UNIX_ATTRIBUTES = 1
STREAM_FILE_DATA = 2
STREAM_SPARSE_DATA = 6
REPLACE_CODES = {"always": ord("a"), "ifnewer": ord("w"), "never": ord("n"), "ifolder": ord("o")}
# python3-fd registers these itself in newPlugin (§5.3).
AUTO_EVENTS = frozenset({12, 13, 20, 17, 1, 10, 11, 9, 15})
# GeneratePluginEvent still delivers these after a cancel or a fatal error (§3.7).
CALL_IF_CANCELED = frozenset({bfd.bEventEndBackupJob, bfd.bEventEndRestoreJob, bfd.bEventEndVerifyJob})
FATAL_TYPES = frozenset({bfd.M_FATAL, bfd.M_ABORT, bfd.M_ERROR_TERM})
OBJECT_TYPES = frozenset({bfd.FT_RESTORE_FIRST, bfd.FT_PLUGIN_CONFIG, bfd.FT_PLUGIN_CONFIG_FILLED})
SAVED_TYPES = frozenset({bfd.FT_LNKSAVED, bfd.FT_REGE, bfd.FT_REG, bfd.FT_LNK, bfd.FT_DIREND, bfd.FT_SPEC,
                         bfd.FT_RAW, bfd.FT_FIFO, bfd.FT_REPARSE, bfd.FT_JUNCTION, bfd.FT_DELETED})
NOT_ACCESSIBLE_TYPES = frozenset({bfd.FT_NOACCESS, bfd.FT_NOFOLLOW, bfd.FT_NOSTAT, bfd.FT_NOOPEN})
MAX_XATTR_CALLS = 10000
# How often a core read waiting on an empty do-in-core pipe looks for a cancel (the real fd's
# TIMEOUT_SIGNAL interrupts it at once).
CANCEL_POLL_MS = 50

# FO bit numbers inside SavePacket.flags (include/fileopts.h)
FO_PORTABLE_DATA, FO_SPARSE, FO_MTIMEONLY, FO_ACL, FO_NOATIME = 0, 5, 11, 14, 22
FO_XATTR, FO_DELTA, FO_PLUGIN, FO_OFFSETS = 27, 28, 29, 30
PLUGIN_SETTABLE_BITS = (FO_DELTA, FO_OFFSETS, FO_SPARSE, FO_PORTABLE_DATA)

MESSAGE_NAMES = {v: k.decode() for k, v in bfd.bJobMessageType.items()}
LOG_PREFIX = {bfd.M_FATAL: "Fatal error: ", bfd.M_ERROR: "Error: ", bfd.M_WARNING: "Warning: "}

# -- the storage-daemon phase of a backup (reference §12) ------------------------------------------
# dird backup.cc DoNativeBackup sends the fd "storage address=..." after the fileset, the
# pluginoptions and the previous job's restore objects, and before the runscripts, the accurate
# list and the "backup" command.  filed dir_cmd.cc StorageCmd connects to the SD and authenticates
# (AuthenticateWithStoragedaemon); lib/bsock.cc BareosSocket::TwoWayAuthenticate refuses at once with
# an M_FATAL when the job is canceled, i.e. after any M_FATAL of the job (lib/message.cc Jmsg: M_FATAL
# sets JS_FatalError, and JobCanceled() is true from then on).  StorageCmd logs its own fatal line and
# answers "2902 Bad storage"; the director's response() (dird getmsg.cc) logs the third line and
# DoNativeBackup bails out: no "backup" command, so no bEventStartBackupJob and no bEventEndBackupJob;
# filed process_director_commands still raises bEventJobEnd, which GeneratePluginEvent suppresses
# for the canceled job.
SD_AUTH_CANCELED = "TwoWayAuthenticate failed, because job was canceled.\n"
SD_AUTH_FAILED = "Failed to authenticate Storage daemon.\n"
DIR_BAD_STORAGE = "Bad response to Storage command: wanted 2000 OK storage, got 2902 Bad storage\n"
# Measured on a real 25.1 director + SD + fd (reference §12): a job canceled before its SD
# handshake takes about 36 s to end (director and SD giving up on the session).  fdsim records this
# time in JobResult.modelled_seconds instead of sleeping.
CANCELED_BEFORE_STORAGE_SECONDS = 36.0


# The fd's umask (reference §12: a real 25.1 fd's child process creates folders 0751).  bareos-fd.service
# is Type=forking and starts bareos-fd without -f, so lib/daemon.cc daemon_start runs
# ``umask(umask(0) | S_IWGRP | S_IROTH | S_IWOTH)``: the inherited umask (systemd's 022) plus 026.
# Everything the fd and its children (the plugin's helper processes) create is subject to it.
FD_UMASK_BITS = 0o026


class _DaemonUmask:
    """Gives this process the fd's umask while any emulated job runs (umask is per process, so one
    count covers concurrent jobs); the umask from before comes back once the last job ended."""

    _lock = threading.Lock()
    _users = 0
    _saved = 0

    def __enter__(self) -> None:
        with _DaemonUmask._lock:
            if _DaemonUmask._users == 0:
                old = os.umask(0)
                _DaemonUmask._saved = old
                os.umask(old | FD_UMASK_BITS)
            _DaemonUmask._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with _DaemonUmask._lock:
            _DaemonUmask._users -= 1
            if _DaemonUmask._users == 0:
                os.umask(_DaemonUmask._saved)


class FdSimError(RuntimeError):
    """fdsim cannot run the job at all (bad arguments, no backup to restore)."""


def _bit(flags: bytes, n: int) -> bool:
    return bool(flags[n >> 3] & (1 << (n & 7)))


def _set_bit(flags: bytearray, n: int, on: bool) -> None:
    if on:
        flags[n >> 3] |= 1 << (n & 7)
    else:
        flags[n >> 3] &= ~(1 << (n & 7)) & 0xFF


@dataclass
class FileSetOptions:
    """The Include block's Options that matter to plugin items (director defaults: ACL, XATTR on)."""

    acl: bool = True
    xattr: bool = True
    sparse: bool = False
    noatime: bool = False
    mtimeonly: bool = False
    accurate: str = "mcs"

    def flags(self) -> bytes:
        out = bytearray(bfd.FOPTS_BYTES)
        _set_bit(out, FO_ACL, self.acl)
        _set_bit(out, FO_XATTR, self.xattr)
        _set_bit(out, FO_SPARSE, self.sparse)
        _set_bit(out, FO_NOATIME, self.noatime)
        _set_bit(out, FO_MTIMEONLY, self.mtimeonly)
        return bytes(out)


@dataclass(frozen=True)
class JobMessage:
    """One job log line."""

    type: int
    text: str
    # "plugin" for bareosfd.JobMessage, "core" for the fd's own, "director" for the director's
    source: str = "core"

    @property
    def type_name(self) -> str:
        return MESSAGE_NAMES.get(self.type, str(self.type))

    def render(self, jobid: int) -> str:
        prefix = "python3-fd-mod: " if self.source == "plugin" else ""
        daemon = "fdsim-dir" if self.source == "director" else "fdsim-fd"
        return f"{daemon} JobId {jobid}: {LOG_PREFIX.get(self.type, '')}{prefix}{self.text}".rstrip("\n")


# -- the director's job report (dird backup.cc NativeBackupCleanup/GenerateBackupSummary, dird
# restore.cc NativeRestoreCleanup/GenerateRestoreSummary) ---------------------------------------------
# lib/util.cc JobstatusToAscii: the report's "FD termination status" of the fd's JobStatus ("" when the
# director never heard from the fd: FDJobStatus keeps its initial 0).
JOB_STATUS_TEXT = {"T": "OK", "W": "OK -- with warnings", "E": "Error", "f": "Fatal Error", "A": "Canceled",
                   "": ""}
LEVEL_TEXT = {"F": "Full", "I": "Incremental", "D": "Differential"}  # lib/util.cc job_level_to_str
BACKUP_TERMINATION = {"T": "Backup OK", "W": "Backup OK -- with warnings", "E": "*** Backup Error ***",
                      "f": "*** Backup Error ***", "A": "Backup Canceled"}
RESTORE_TERMINATION = {"T": "Restore OK", "W": "Restore OK -- with warnings", "E": "*** Restore Error ***",
                       "f": "*** Restore Error ***", "A": "Restore Canceled"}
# dird backup.cc WaitForJobTermination, when no EndJob came from the fd (after a cancel, dird
# fd_cmds.cc CancelFileDaemonJob terminates the job's fd connection and signals the waiting thread).
NO_FD_STATUS = "No Job status returned from FD.\n"


def _commas(n: int) -> str:
    """lib/edit.cc edit_uint64_with_commas."""
    return f"{n:,}"


def _owner(uid: int, gid: int) -> Tuple[str, str]:
    """lib/guid_to_name.cc: user and group names, the number when the name is unknown."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return user, group


def ls_line(pkt: Dict[str, Any]) -> str:
    """One ``estimate listing`` line: lib/attr.cc PrintLsOutput of the save packet (attr_stat_to_str:
    lib/util.cc encode_mode, ``"  %2d "`` links, ``"%-8.8s %-8.8s"`` owner, ``"%12.12s "`` size, encode_time
    of st_ctime in local time; then two spaces and the packet's fname, ``" -> link"`` for FT_LNK)."""
    st = pkt["statp"]
    user, group = _owner(st.get("st_uid", 0), st.get("st_gid", 0))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.get("st_ctime", 0)))
    line = (f"{stat.filemode(st['st_mode'])}  {st.get('st_nlink', 0):2d} {user:<8.8} {group:<8.8}"
            f"{st['st_size']!s:>12.12} {when}  {pkt['fname']}")
    if pkt["type"] == bfd.FT_LNK:
        line += f" -> {pkt['link']}"
    return line


@dataclass
class JobReport:
    """The director's end-of-job report, what an administrator reads in the job log or the mail.

    ``job_status`` is the Job's final JobStatus in the catalog (``W`` for a backup that ended OK
    with errors counted); ``errors`` is the director's jcr->JobErrors: its own plus, once the fd's
    EndJob arrived, the fd's (backup.cc WaitForJobTermination), printed as "Non-fatal FD errors"
    (backup) or "FD Errors" (restore).  ``files``/``bytes`` are the fd's JobFiles/JobBytes from its
    EndJob ("FD Files Written" / "Files Restored"): 0 when no EndJob arrived (canceled jobs).
    ``messages`` are the lines the director logs when the job ends, before the report (they are not
    in :attr:`JobResult.messages`, which holds what was logged while the job ran).
    """

    jobid: int
    job: str
    job_type: str  # 'B' or 'R'
    level: str
    job_status: str
    termination: str
    fd_termination: str
    errors: int
    files: int
    bytes: int
    expected_files: int = 0  # restores: "Files Expected", the files the bootstrap selects
    messages: List[JobMessage] = field(default_factory=list)

    @property
    def fields(self) -> Dict[str, str]:
        """The report's lines that fdsim knows, label -> value, in the director's order."""
        head = {"JobId": str(self.jobid), "Job": self.job}
        if self.job_type == "R":
            return {**head, "Files Expected": _commas(self.expected_files), "Files Restored": _commas(self.files),
                    "Bytes Restored": _commas(self.bytes), "FD Errors": str(self.errors),
                    "FD termination status": self.fd_termination, "Termination": self.termination}
        return {**head, "Backup Level": LEVEL_TEXT.get(self.level, self.level),
                "FD Files Written": _commas(self.files), "FD Bytes Written": _commas(self.bytes),
                "Non-fatal FD errors": str(self.errors), "FD termination status": self.fd_termination,
                "Termination": self.termination}

    @property
    def text(self) -> str:
        """The director's closing lines and the report, as the job log shows them."""
        lines = [m.render(self.jobid) for m in self.messages]
        lines.append(f"fdsim-dir JobId {self.jobid}: Bareos fdsim-dir 25.1.0 (fdsim):")
        lines.extend(f"  {label + ':':<24}{value}" for label, value in self.fields.items())
        return "\n".join(lines)


@dataclass
class FileResult:
    """An item the job saved or restored."""

    fname: str
    type: int
    size: int  # st_size from the attributes
    bytes: int  # data bytes moved for this item
    ofname: str = ""
    seconds: float = 0.0  # backup: from the data stream's open to its end of file, as the core saw it


@dataclass
class JobResult:
    """Outcome of one job: Bareos JobStatus, job log, debug output, items, bytes, the store JobId."""

    jobid: int
    job_type: str
    level: str
    status: str  # T ok, E error, f fatal, A canceled
    messages: List[JobMessage] = field(default_factory=list)
    debug_messages: List[Tuple[int, str]] = field(default_factory=list)
    files: List[FileResult] = field(default_factory=list)
    bytes: int = 0
    errors: int = 0  # M_ERROR messages and items the core counted as errors
    warnings: int = 0
    # "FD Errors" of the job report: the fd's jcr->JobErrors, i.e. ``errors`` plus, once a fatal
    # error occurred, at least 1 (lib/message.cc Jmsg: M_FATAL sets JobErrors to 1 if it is 0).
    fd_errors: int = 0
    # The director's own jcr->JobErrors (its M_FATAL/M_ERROR lines, lib/message.cc rules); the
    # backup report's "Non-fatal FD errors" is this plus the fd's (dird backup.cc
    # WaitForJobTermination: jcr->JobErrors += JobErrors of the fd's EndJob).
    director_errors: int = 0
    calls: List[str] = field(default_factory=list)
    jobids: List[int] = field(default_factory=list)  # restores: the backup jobs read
    elapsed: float = 0.0  # wall-clock seconds the emulated job took
    # Time the real daemons would add that fdsim does not spend (e.g. CANCELED_BEFORE_STORAGE_SECONDS).
    modelled_seconds: float = 0.0
    # The director's report at the end of a backup or restore (None for estimates).
    report: JobReport | None = None
    # Estimates: what bconsole prints, line by line (messages without severity, the ``listing`` lines,
    # and the fd's closing ``2000 OK estimate files=N bytes=M``).
    console: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "T"

    @property
    def non_fatal_fd_errors(self) -> int:
        """What the director's backup report prints as "Non-fatal FD errors"."""
        return self.fd_errors + self.director_errors

    @property
    def run_time(self) -> float:
        """Seconds the job would take on a real director, SD and fd (elapsed + modelled)."""
        return self.elapsed + self.modelled_seconds

    def texts(self, msg_type: int | None = None) -> List[str]:
        """Message texts, optionally of one M_* type."""
        return [m.text for m in self.messages if msg_type is None or m.type == msg_type]

    def log(self) -> str:
        """The job log as the director would print it (with the director's report at the end);
        for an estimate, what bconsole prints."""
        if self.jobid == 0:
            return "\n".join(self.console)
        lines = [m.render(self.jobid) for m in self.messages]
        if self.report is not None:
            lines.append(self.report.text)
        return "\n".join(lines)


JobHandle = Union[int, JobResult, None]


class _Job:
    """State of one running job: the core side of the plugin context."""

    def __init__(self, sim: FdSim, record: JobRecord, level: str, plugin_dir: str,  # noqa: PLR0917
                 extra_sys_path: Sequence[str], accurate: bool, options: FileSetOptions) -> None:
        self.sim = sim
        self.record = record
        self.level = level
        self.plugin_dir = plugin_dir
        self.extra_sys_path = list(extra_sys_path)
        self.accurate = accurate
        self.options = options
        self.job_type = "I"  # JT_SYSTEM until the backup/restore command (§5.2)
        self.since = 0
        self.prev_job = ""
        # jcr->where, what GetValue(bVarWhere) answers: None until filed dir_cmd.cc RestoreCmd takes
        # it from the restore command, None again once RestoreCmd frees it (see _restore_job).
        self.where: str | None = None
        # the restore's where ("" for where= empty or "/"): relocation, rp.where; None with a regexwhere
        self.restore_where: str | None = ""
        self.regexwhere: str | None = None  # the restore command's regexwhere= (lib/breg.cc syntax)
        self.where_bregexp: List[BRegexp] | None = None  # jcr->where_bregexp, compiled by RestoreCmd
        self.error_terminated = False  # the restore's JobErrors check (filed dir_cmd.cc RestoreCmd) failed
        # False once the director stops waiting for the fd's EndJob (a cancel, or no backup command).
        self.fd_reported = True
        self.restored_files = 0  # the fd's JobFiles at restore: items that reached create_file
        self.expected_files = 0  # restores: the files the bootstrap selects (the report's Files Expected)
        self.prefix_links = 0
        self.check_changes = True
        self.lock = threading.RLock()
        self.events: Set[int] = set(AUTO_EVENTS)
        self.loaded = False
        self.override: str | None = None
        self.fatal = False
        self.cancel_requested = False  # a cancel command arrived (its plugin event may still run)
        self.canceled = False  # JS_Canceled: set once the plugin's bEventCancelCommand returned
        self.walk_aborted = False
        self.result = JobResult(jobid=record.jobid, job_type=record.job_type, level=level, status="R")
        self.accurate_state: Dict[str, FileRecord] = {}
        self.seen: Set[str] = set()
        self.excludes: List[str] = []
        self.interp: SubInterpreter | None = None
        # Estimates: bconsole stops reading at the fd's EOD after "2000 OK estimate" (dird ua_cmds.cc
        # EstimateCmd); what the plugin says later (at bEventJobEnd) is never printed.
        self.console_closed = False

    # -- bookkeeping ---------------------------------------------------------------------------
    def message(self, msg_type: int, text: str, source: str = "core") -> None:
        with self.lock:
            self.result.messages.append(JobMessage(msg_type, text, source))
            if self.record.jobid == 0:
                # lib/message.cc Jmsg: "Special case for the console, which has a dir_bsock and JobId
                # == 0": the text goes straight back to the director (bconsole prints it as it is, with
                # no daemon, JobId or severity), before any JobStatus or JobErrors bookkeeping: an
                # M_FATAL during an estimate neither fails nor stops it.
                prefix = "python3-fd-mod: " if source == "plugin" else ""
                if not self.console_closed:
                    self.result.console.append(f"{prefix}{text}".rstrip("\n"))
                return
            if msg_type in FATAL_TYPES:
                self.fatal = True
                self.result.fd_errors = max(self.result.fd_errors, 1)
            elif msg_type == bfd.M_ERROR:
                self.count_error()
            elif msg_type == bfd.M_WARNING:
                self.result.warnings += 1

    def count_error(self) -> None:
        """One more job error (jcr->JobErrors++)."""
        with self.lock:
            self.result.errors += 1
            self.result.fd_errors += 1

    def director_message(self, msg_type: int, text: str) -> None:
        """A line the director itself logs; counted in the director's JobErrors (lib/message.cc Jmsg)."""
        with self.lock:
            self.result.messages.append(JobMessage(msg_type, text, "director"))
            if msg_type in FATAL_TYPES:
                self.result.director_errors = max(self.result.director_errors, 1)
            elif msg_type == bfd.M_ERROR:
                self.result.director_errors += 1

    def is_canceled(self) -> bool:
        return self.fatal or self.canceled

    def trace(self, call: str) -> None:
        with self.lock:
            self.result.calls.append(call)

    # -- core functions called from bareosfd ---------------------------------------------------
    def core(self, name: str, args: Tuple[Any, ...]) -> Any:
        handler: Callable[..., Any] | None = getattr(self, "_core_" + name, None)
        if handler is None:
            raise RuntimeError(f"fdsim core has no function {name}")
        with self.lock:
            return handler(*args)

    def _core_JobMessage(self, msg_type: int, text: str) -> None:
        self.message(msg_type, text, "plugin")
        if msg_type in (bfd.M_ABORT, bfd.M_ERROR_TERM):
            self.message(bfd.M_FATAL, f"fdsim: JobMessage type {MESSAGE_NAMES[msg_type]} would abort the "
                                      "whole Bareos fd daemon; use M_FATAL to fail a job\n")

    def _core_DebugMessage(self, level: int, text: str) -> None:
        self.result.debug_messages.append((level, text))

    def _core_GetValue(self, var: int) -> Any:
        rec = self.record
        values: Dict[int, Any] = {
            bfd.bVarJobId: rec.jobid,
            bfd.bVarFDName: self.sim.fd_name,
            bfd.bVarLevel: ord(self.level),
            bfd.bVarType: ord(self.job_type),
            bfd.bVarClient: self.sim.fd_name,
            bfd.bVarJobName: rec.name,
            bfd.bVarJobStatus: ord("R"),
            bfd.bVarSinceTime: self.since,
            bfd.bVarAccurate: int(self.accurate),
            bfd.bVarWorkingDir: str(self.sim.working_dir),
            bfd.bVarWhere: self.where,
            bfd.bVarExePath: self.sim.exe_path,
            bfd.bVarVersion: self.sim.version,
            bfd.bVarPrevJobName: self.prev_job,
            bfd.bVarPrefixLinks: self.prefix_links,
            bfd.bVarCheckChanges: self.check_changes,
            bfd.bVarUsedConfig: f"{self.sim.config_dir}/*/*.conf",
        }
        return values.get(var)

    def _core_SetValue(self, var: int, value: Any) -> int:
        if var == bfd.bVarSinceTime:
            self.since = int(value)
        elif var == bfd.bVarCheckChanges:
            self.check_changes = bool(value)
        elif var == bfd.bVarFileSeen:
            if self.accurate:
                self.seen.add(str(value))
        else:
            return bfd.bRC_Error
        return bfd.bRC_OK

    def _core_RegisterEvents(self, events: List[int]) -> int:
        rc = bfd.bRC_Error
        for event in events:
            if 1 <= event <= 31:
                self.events.add(event)
                rc = bfd.bRC_OK
        return rc

    def _core_UnRegisterEvents(self, events: List[int]) -> int:
        rc = bfd.bRC_Error
        for event in events:
            if 1 <= event <= 31:
                self.events.discard(event)
                rc = bfd.bRC_OK
        return rc

    def _core_GetInstanceCount(self) -> int:
        return 1

    def _core_AddExclude(self, path: str) -> int:
        self.excludes.append(path)
        return bfd.bRC_OK

    def _fileset_noop(self, *args: Any) -> int:
        # Only File= entries are affected, and fdsim has none: accepted and without effect.
        return bfd.bRC_OK

    _core_AddInclude = _core_AddOptions = _core_AddRegex = _core_AddWild = _fileset_noop
    _core_NewOptions = _core_NewInclude = _core_NewPreInclude = _fileset_noop

    def _core_CheckChanges(self, ftype: int, fname: str, link: str, save_time: int) -> Tuple[int, int, bool]:
        # 25.1 passes no statp to the core: compare with an all-zero stat, as the fd does.
        zero = dict.fromkeys(("st_mode", "st_mtime", "st_ctime", "st_size", "st_ino", "st_nlink",
                              "st_uid", "st_gid", "st_atime"), 0)
        changed, found, delta_seq = self.changed(fname, link, zero, save_time)
        return (bfd.bRC_OK if changed else bfd.bRC_Seen), delta_seq, found

    def _core_AcceptFile(self, fname: str) -> int:
        import fnmatch

        return bfd.bRC_Skip if any(fnmatch.fnmatchcase(fname, p) for p in self.excludes) else bfd.bRC_OK

    def _core_SetSeenBitmap(self, all_names: bool, fname: str | None) -> int:
        if not self.accurate:
            return bfd.bRC_Error
        if all_names:
            self.seen.update(self.accurate_state)
        elif fname is not None:
            self.seen.add(fname)
        return bfd.bRC_OK

    def _core_ClearSeenBitmap(self, all_names: bool, fname: str | None) -> int:
        if not self.accurate:
            return bfd.bRC_Error
        if all_names:
            self.seen.clear()
        elif fname is not None:
            self.seen.discard(fname)
        return bfd.bRC_OK

    # -- change detection (PFD startBackupFile + FIND CheckChanges + ACC) ----------------------
    def changed(self, fname: str, link: str, st: Dict[str, int], save_time: int) -> Tuple[bool, bool, int]:
        """(changed, accurate_found, delta_seq) for an item at Incr/Diff."""
        if not self.accurate:
            unchanged = st["st_mtime"] < save_time and (
                st["st_ctime"] < save_time or self.options.mtimeonly)
            return not unchanged, False, 0
        name = link if stat.S_ISDIR(st["st_mode"]) else fname
        prev = self.accurate_state.get(name)
        if prev is None:
            return True, False, 0
        self.seen.add(name)
        old = prev.statp
        letters = self.options.accurate
        checks = {"i": "st_ino", "p": "st_mode", "n": "st_nlink", "u": "st_uid", "g": "st_gid",
                  "s": "st_size", "a": "st_atime", "m": "st_mtime", "c": "st_ctime"}
        changed = "A" in letters or any(
            letter in letters and old.get(key, 0) != st.get(key, 0) for letter, key in checks.items())
        if "d" in letters and st.get("st_size", 0) < old.get("st_size", 0):
            changed = True
        return changed, True, prev.delta_seq

    # -- calling the plugin --------------------------------------------------------------------
    def py(self, label: str, op: Tuple[Any, ...], func: str) -> Dict[str, Any]:
        """One request to the guest with python-fd.cc's error handling; result has ``rc``."""
        assert self.interp is not None
        self.trace(label)
        try:
            res = self.interp.request(op, self.core)
        except GuestDied as exc:
            self.message(bfd.M_FATAL, f"{exc}\n")
            return {"st": "died", "rc": bfd.bRC_Error}
        return self.interpret(res, func)

    def interpret(self, res: Dict[str, Any], func: str) -> Dict[str, Any]:
        st = res["st"]
        if st == "ok":
            return res
        if st in ("exc", "convert"):
            self.message(bfd.M_FATAL, f"bareosfd: {res['tb']}")
            res["rc"] = bfd.bRC_Error
        elif st == "badret":
            # PyLong_AsLong(None) -> -1 with a pending TypeError; fdsim makes that error visible.
            self.message(bfd.M_FATAL, f"bareosfd: TypeError: {func}() returned {res['type']}, but the fd "
                                      "needs an int bRC_* value (the C side reads -1)\n")
            res["rc"] = -1
        elif st == "nofunc":
            self.result.debug_messages.append((150, f"python3-fd: Failed to find function named {func}()\n"))
            res["rc"] = bfd.bRC_Error
        return res

    def call(self, func: str, *args: Any) -> int:
        label = f"{func}({', '.join(repr(a) for a in args)})"
        return int(self.py(label, ("call", func, args), func)["rc"])

    # -- python-fd handlePluginEvent -----------------------------------------------------------
    def _load_and_parse(self, defn: PluginDefinition) -> int:
        if not self.loaded:
            if not defn.module_name:
                return bfd.bRC_Error
            res = self.py(f"load({defn.module_name!r})",
                          ("load", self.plugin_dir, defn.module_path, defn.module_name, defn.options),
                          "load_bareos_plugin")
            if res["st"] in ("ok", "badret"):
                self.loaded = True
            if res["st"] != "ok" or res["rc"] != bfd.bRC_OK:
                # load_bareos_plugin's non-zero answer skips the immediate parse (PFD).
                return int(res["rc"])
        return self.call("parse_plugin_definition", defn.options)

    def _c_parse(self, cmd: str) -> PluginDefinition | None:
        merged = cmd
        first_wins = False
        if not self.loaded and self.override is not None:
            merged = merge_override(self.override, cmd)
            first_wins = True
        try:
            return parse_definition(merged, first_wins=first_wins)
        except PluginStringError as exc:
            self.message(bfd.M_FATAL, f"{exc}\n")
            return None

    def event(self, event: int, value: Any = None) -> int:
        """GeneratePluginEvent + python-fd handlePluginEvent for the python3 plugin."""
        if self.is_canceled() and event not in CALL_IF_CANCELED:
            return bfd.bRC_OK
        if event not in self.events:
            return bfd.bRC_OK
        if event in (bfd.bEventLevel, bfd.bEventSince, bfd.bEventJobStart):
            return bfd.bRC_OK  # stored by the C side only (§1.5)
        if event in (bfd.bEventPluginCommand, bfd.bEventBackupCommand, bfd.bEventRestoreCommand,
                     bfd.bEventEstimateCommand):
            defn = self._c_parse(value)
            if defn is None:
                return bfd.bRC_Error if value != "*all*" else bfd.bRC_Skip
            return self._load_and_parse(defn)
        if event == bfd.bEventNewPluginOptions:
            self.override = None
            defn = self._c_parse(value)
            if defn is None:
                return bfd.bRC_Error
            self.override = value
            return self._load_and_parse(defn)
        if event == bfd.bEventRestoreObject:
            if value is None:
                return bfd.bRC_OK
            rop: StoredObject = value
            if not self.loaded:
                if not rop.plugin_name:
                    return bfd.bRC_OK
                defn = self._c_parse(rop.plugin_name)
                if defn is None:
                    return bfd.bRC_Error
                self._load_and_parse(defn)
                if not self.loaded:
                    return bfd.bRC_Error
            data = rop.inflated()
            values = {"object_name": rop.object_name, "object": data, "plugin_name": rop.plugin_name,
                      "object_type": rop.object_type, "object_len": rop.object_len,
                      "object_full_len": rop.object_full_len, "object_index": rop.object_index,
                      "object_compression": rop.object_compression, "stream": 0, "jobid": rop.jobid}
            return int(self.py(f"restore_object_data({rop.object_name!r})",
                               ("restore_object_data", values), "restore_object_data")["rc"])
        if not self.loaded:
            return bfd.bRC_OK
        return self.call("handle_plugin_event", event)


class FdSim:
    """The emulated file daemon: runs backup and restore jobs against a save-set store."""

    def __init__(self, store_dir: Union[str, Path], *, fd_name: str = "fdsim-fd",
                 buffer_size: int = DEFAULT_BUFFER_SIZE, config_dir: Union[str, Path] | None = None) -> None:
        self.store = SaveSetStore(Path(store_dir))
        self.fd_name = fd_name
        self.buffer_size = buffer_size
        self.working_dir = Path(store_dir) / "working"
        self.working_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir = Path(config_dir) if config_dir else Path(store_dir) / "bareos-fd.d"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.exe_path = str(Path(__file__).resolve().parent)
        self.version = "25.1.0 (fdsim)"
        self._running: Dict[int, _Job] = {}
        self._running_lock = threading.Lock()

    # -- public API ----------------------------------------------------------------------------
    def backup(self, plugin_string: Union[str, Sequence[str]], level: str = "F", *,
               plugin_dir: Union[str, Path] = "", accurate: bool = False,
               extra_sys_path: Sequence[Union[str, Path]] = (), pluginoptions: str | None = None,
               options: FileSetOptions | None = None, job_name: str = "backup-fdsim",
               on_start: Callable[[int], None] | None = None) -> JobResult:
        """Run a backup job of one or more ``Plugin =`` lines at level F, I or D.

        ``on_start(jobid)`` is called once the job is running and can be canceled.
        """
        cmds = [plugin_string] if isinstance(plugin_string, str) else list(plugin_string)
        if level not in ("F", "I", "D"):
            raise FdSimError(f"fdsim backup: level {level!r} is not one of F, I, D")
        if not cmds:
            raise FdSimError("fdsim backup: give at least one plugin string")
        opts = options or FileSetOptions()
        start = int(time.time())
        prev: JobRecord | None = None
        messages: List[JobMessage] = []
        if level in ("I", "D"):
            if self.store.last_full(cmds) is None:
                messages.append(JobMessage(bfd.M_INFO, "No prior Full backup Job record found.\n"))
                messages.append(JobMessage(bfd.M_INFO, "No prior or suitable Full backup found in catalog. "
                                                       "Doing FULL backup.\n"))
                level = "F"
            else:
                prev = self.store.previous_job(level, cmds)
        record = self.store.new_job(job_name, "B", level, start)
        record.fileset = cmds
        job = _Job(self, record, level, str(plugin_dir), [str(p) for p in extra_sys_path], accurate, opts)
        job.result.messages.extend(messages)
        if prev is not None:
            job.since = prev.start_time
            job.prev_job = prev.name
            record.since = prev.start_time
            record.prev_job = prev.name
        writer = self.store.writer(record)
        try:
            self._run(job, lambda: self._backup_job(job, cmds, prev, pluginoptions, writer), on_start)
        finally:
            record.files = len(job.result.files)
            record.bytes = job.result.bytes
            self.store.commit(record, writer)
        return job.result

    def backup_fileset(self, fileset_conf: str, level: str = "F", **kwargs: Any) -> JobResult:
        """:meth:`backup` of the ``Plugin = "..."`` lines of a FileSet as written in bareos-dir.conf,
        read with the director's lexer rules (:func:`fdsim.dirconf.fileset_plugin_strings`)."""
        return self.backup(fileset_plugin_strings(fileset_conf), level, **kwargs)

    def restore(self, plugin_string: Union[str, Sequence[str]] | None = None, jobid: int | None = None, *,
                where: str = "/tmp/bareos-restores", replace: str = "always",  # noqa: S108  # Bareos default
                pluginoptions: str | None = None, files: Sequence[str] | None = None,
                plugin_dir: Union[str, Path] = "", extra_sys_path: Sequence[Union[str, Path]] = (),
                prefix_links: bool = False, job_name: str = "restore-fdsim", upto: int | None = None,
                regexwhere: str | None = None, strip_prefix: str | None = None, add_prefix: str | None = None,
                add_suffix: str | None = None, on_start: Callable[[int], None] | None = None) -> JobResult:
        """Restore the most recent backup (of these plugin strings) or one job's files.

        ``regexwhere``, or ``strip_prefix``/``add_prefix``/``add_suffix`` (which the director turns
        into a regexwhere, dird ua_restore.cc with lib/breg.cc bregexp_build_where, taking the place
        of an explicit regexwhere), relocate each name instead of ``where``, which is then ignored
        (dird restore.cc sends ``regexwhere=`` instead of ``where=``): the fd applies them to every
        ``ofname`` and leaves ``jcr->where`` NULL, so ``rp.where``, ``rp.regexwhere``, bVarWhere and
        bVarRegexWhere are all None (reference §12; :mod:`fdsim.breg`).

        ``upto=N`` restores the point of job N: the chain as it was when job N had just run.

        ``jobid=N`` restores job N's files with job N's restore objects only; otherwise the chain
        :meth:`SaveSetStore.most_recent_jobids` picks (of the FileSet of these plugin strings, or of
        the newest successful backup) is restored: its files in (JobId, FileIndex) order, each name
        from the newest job, and the objects of every job of the chain, even when ``files`` marks
        only some files.  ``files`` are fnmatch patterns (a pattern ending in ``/`` marks a whole
        tree), like marking files in bconsole's restore tree.
        """
        if replace not in REPLACE_CODES:
            raise FdSimError(f"fdsim restore: replace={replace!r} is not one of {sorted(REPLACE_CODES)}")
        if jobid is not None:
            self.store.job(jobid)
            jobids = [jobid]
        else:
            fileset = None
            if plugin_string is not None:
                fileset = [plugin_string] if isinstance(plugin_string, str) else list(plugin_string)
            try:
                jobids = self.store.most_recent_jobids(fileset, upto=upto)
            except Exception as exc:
                raise FdSimError(str(exc)) from exc
        selected = self.store.select_files(jobids, files)
        record = self.store.new_job(job_name, "R", " ", int(time.time()))
        job = _Job(self, record, " ", str(plugin_dir), [str(p) for p in extra_sys_path], False,
                   FileSetOptions())
        job.result.jobids = list(jobids)
        job.expected_files = len(selected)
        # RestoreCmd turns "/" into nothing; bVarWhere stays None until bEventStartRestoreJob.
        job.restore_where = where if where not in ("", "/") else ""
        if strip_prefix is not None or add_prefix is not None or add_suffix is not None:
            regexwhere = build_where(strip_prefix, add_prefix, add_suffix)
        if regexwhere is not None:
            job.regexwhere = regexwhere if regexwhere != "/" else ""
            job.restore_where = None
        job.prefix_links = int(prefix_links)
        code = REPLACE_CODES[replace]
        try:
            self._run(job, lambda: self._restore_job(job, jobids, selected, pluginoptions, code), on_start)
        finally:
            record.files = len(job.result.files)
            record.bytes = job.result.bytes
            self.store.commit(record, None)
        return job.result

    def estimate(self, plugin_string: Union[str, Sequence[str]], level: str = "F", *, listing: bool = False,
                 plugin_dir: Union[str, Path] = "", extra_sys_path: Sequence[Union[str, Path]] = ()) -> JobResult:
        """bconsole ``estimate [listing] level=...``: the plugin lists its items, nothing is read.

        dird ua_cmds.cc EstimateCmd connects to the fd as JobId 0 and sends the job, level (and since)
        and fileset commands - so the plugin sees bEventPluginCommand and bEventEndFileSet, but no
        pluginoptions, no restore objects, no storage command and no bEventStartBackupJob - then
        ``estimate listing=N``.  filed dir_cmd.cc EstimateCmd runs estimate.cc MakeEstimate, whose
        fd_plugins.cc PluginEstimate raises bEventEstimateCommand (python-fd: parse_plugin_definition)
        and loops start_backup_file/end_backup_file without plugin_io; the fd answers ``2000 OK estimate
        files=<num_files_examined> bytes=<JobBytes>`` and, leaving its command loop, raises bEventJobEnd
        (no EndJob: JobId 0).  Every message goes to bconsole as it is (:meth:`_Job.message`).

        ``files`` holds every item examined, ``bytes`` the sum of ``st_size`` of regular-mode items,
        ``console`` what bconsole prints and ``log()`` the same text.  Not recorded in the catalog.
        """
        cmds = [plugin_string] if isinstance(plugin_string, str) else list(plugin_string)
        record = JobRecord(jobid=0, name="estimate-fdsim", job_type="B", level=level, start_time=int(time.time()))
        job = _Job(self, record, level, str(plugin_dir), [str(p) for p in extra_sys_path], False, FileSetOptions())
        prev = self.store.previous_job(level, cmds) if level in ("I", "D") else None
        if prev is not None:
            job.since = prev.start_time
        self._run(job, lambda: self._estimate_job(job, cmds, listing))
        return job.result

    def running(self) -> List[int]:
        """JobIds of the jobs running now."""
        with self._running_lock:
            return sorted(self._running)

    def cancel(self, job: JobHandle = None) -> bool:
        """Cancel a running job (JobId, or the only running job) from any thread, like bconsole
        ``cancel``; returns once the fd has marked the job canceled.

        filed dir_cmd.cc CancelCmd, on the thread of the director's cancel connection: first
        GeneratePluginEvent(bEventCancelCommand) - the plugin's handler runs while the job thread goes
        on, reading and sending data as before -, then JS_Canceled, the job's storage-daemon
        connection terminated (the next data send fails, backup.cc SendDataToSd, without a message
        once canceled) and TIMEOUT_SIGNAL to the job thread (a core read blocked on a pipe returns).
        The job thread stops at its next cancel check (see :meth:`FdSim._send_data`)."""
        with self._running_lock:
            if isinstance(job, JobResult):
                job = job.jobid
            if job is None:
                if len(self._running) != 1:
                    return False
                target = next(iter(self._running.values()))
            else:
                found = self._running.get(job)
                if found is None:
                    return False
                target = found
        with target.lock:
            if target.cancel_requested:
                return True
            target.cancel_requested = True
        target.message(bfd.M_INFO, "Job marked to be canceled.\n")
        interp = target.interp
        if interp is not None and target.loaded and bfd.bEventCancelCommand in target.events:
            target.trace(f"handle_plugin_event({bfd.bEventCancelCommand}) [cancel thread]")
            try:
                res = interp.cancel_request(("call", "handle_plugin_event", (bfd.bEventCancelCommand,)),
                                            target.core)
            except GuestDied:
                res = None
            if res is not None:
                target.interpret(res, "handle_plugin_event")
        with target.lock:
            target.canceled = True  # cjcr->setJobStatus(JS_Canceled), after the plugin's event
        return True

    def list_jobs(self) -> List[JobRecord]:
        """Catalog jobs, oldest first."""
        return self.store.jobs()

    def list_files(self, jobid: int) -> List[str]:
        """Like bconsole ``list files jobid=N``."""
        return self.store.list_files(jobid)

    # -- job frame -----------------------------------------------------------------------------
    def start(self, kind: str, *args: Any, **kwargs: Any) -> BackgroundJob:
        """Run ``backup``/``restore`` on a job thread of its own, e.g. to cancel it from this one."""
        if kind not in ("backup", "restore"):
            raise FdSimError(f"fdsim start: kind {kind!r} is not 'backup' or 'restore'")
        return BackgroundJob(getattr(self, kind), args, kwargs)

    def _run(self, job: _Job, body: Callable[[], None], on_start: Callable[[int], None] | None = None) -> None:
        umask = _DaemonUmask()
        umask.__enter__()
        with self._running_lock:
            self._running[job.record.jobid] = job
        if on_start is not None:
            on_start(job.record.jobid)
        started = time.monotonic()
        try:
            job.interp = SubInterpreter(job.extra_sys_path)
            try:
                body()
            finally:
                leftover = job.interp.close(job.core)
                if leftover:
                    job.message(bfd.M_ERROR, f"fdsim: plugin threads still running at the end of the job: "
                                             f"{', '.join(leftover)}; Py_EndInterpreter would abort the "
                                             "real fd. The interpreter was left alive.\n")
                    if job.record.job_type == "R":
                        job.error_terminated = True  # fdsim's own diagnosis (the real fd would die)
        finally:
            umask.__exit__(None, None, None)
            with self._running_lock:
                del self._running[job.record.jobid]
            result = job.result
            result.elapsed = time.monotonic() - started
            if job.interp is None:
                result.status = "f"  # no interpreter: the exception tells why
            elif job.record.jobid == 0:
                result.status = "T"  # an estimate has no JobStatus: the fd always ends "2000 OK estimate"
            elif job.canceled:
                result.status = "A"
            elif job.fatal:
                result.status = "f"
            elif job.walk_aborted or job.error_terminated:
                result.status = "E"
            else:
                result.status = "T"
            job.record.status = result.status
            if job.record.jobid:  # not for estimates
                result.report = self._report(job)
                job.record.status = result.report.job_status
            job.record.end_time = int(time.time())

    @staticmethod
    def _report(job: _Job) -> JobReport:
        """The director's end of the job: WaitForJobTermination, then Native{Backup,Restore}Cleanup.

        dird backup.cc WaitForJobTermination takes the fd's JobStatus, JobFiles, JobBytes and
        JobErrors from its EndJob message (``jcr->JobErrors += JobErrors``).  Without an EndJob (the
        job was canceled: fd_cmds.cc CancelFileDaemonJob terminates the job's fd connection) it logs
        M_FATAL "No Job status returned from FD." (JobErrors becomes at least 1, lib/message.cc Jmsg)
        and sets FDJobStatus to JS_ErrorTerminated, and the counts stay 0.  A backup refused at the
        storage command never gets that far (backup.cc DoNativeBackup bails out): FDJobStatus keeps 0.
        NativeBackupCleanup turns T with JobErrors into W; NativeRestoreCleanup warns "File count
        mismatch" and turns T into W when the fd's JobFiles differ from the bootstrap's count, but
        leaves T with FD errors "Restore OK".
        """
        result = job.result
        restore = job.record.job_type == "R"
        closing: List[JobMessage] = []
        errors = result.director_errors
        if not job.fd_reported:  # refused at the storage command: no backup command, no EndJob
            status, fd_status, files, nbytes = "A" if job.canceled else "f", "", 0, 0
            errors = result.non_fatal_fd_errors  # as measured on a real 25.1 (reference §12)
        elif job.canceled:
            status, fd_status, files, nbytes = "A", "E", 0, 0
            closing.append(JobMessage(bfd.M_FATAL, NO_FD_STATUS, "director"))
            errors = max(errors, 1)
        else:
            status = fd_status = result.status
            files = job.restored_files if restore else len(result.files)
            nbytes = result.bytes
            errors += result.fd_errors
        if restore and files != job.expected_files:
            closing.append(JobMessage(bfd.M_WARNING, f"File count mismatch: expected={job.expected_files} , "
                                                     f"restored={files}\n", "director"))
            if status == "T":
                status = "W"
        elif not restore and status == "T" and errors:
            status = "W"
        termination = (RESTORE_TERMINATION if restore else BACKUP_TERMINATION)[status]
        return JobReport(jobid=job.record.jobid, job=job.record.name, job_type=job.record.job_type,
                         level=job.level, job_status=status, termination=termination,
                         fd_termination=JOB_STATUS_TEXT[fd_status], errors=errors, files=files, bytes=nbytes,
                         expected_files=job.expected_files if restore else 0, messages=closing)

    # -- backup --------------------------------------------------------------------------------
    def _backup_job(self, job: _Job, cmds: List[str], prev: JobRecord | None, pluginoptions: str | None,
                    writer: JobWriter) -> None:
        for cmd in cmds:  # 'fileset' command: one bEventPluginCommand per Plugin= line
            if is_python_plugin(cmd) or cmd == "*all*":
                job.event(bfd.bEventPluginCommand, cmd)
        job.event(bfd.bEventEndFileSet)
        if pluginoptions:
            self._plugin_options(job, pluginoptions)
        if prev is not None:
            for rop in self.store.objects([prev.jobid]):
                job.event(bfd.bEventRestoreObject, rop)
            job.event(bfd.bEventRestoreObject, None)
        if not self._storage_command(job):
            job.event(bfd.bEventJobEnd)  # suppressed: the job is canceled
            return
        if job.accurate and job.level in ("I", "D"):
            base = self.store.most_recent_jobids(cmds) if job.level == "I" else [prev.jobid] if prev else []
            job.accurate_state = self.store.current_state(base)
        job.job_type = "B"
        job.event(bfd.bEventStartBackupJob)
        for cmd in cmds:
            if job.is_canceled() or job.walk_aborted:
                break
            self._plugin_save(job, cmd, writer)
        if job.accurate and job.level in ("I", "D") and not job.is_canceled():
            self._accurate_finish(job, writer)
        job.event(bfd.bEventEndBackupJob)
        job.event(bfd.bEventJobEnd)

    @staticmethod
    def _storage_command(job: _Job) -> bool:
        """The director's "storage" command: False when the job was canceled (or failed) before it.

        See SD_AUTH_CANCELED above: a fatal error (or a cancel) during the fileset, the
        pluginoptions or the previous job's restore objects makes the fd refuse the SD handshake;
        three more fatal lines follow, the job ends without a backup command, and the real daemons
        take about 36 s to give up (recorded, not slept).
        """
        if not job.is_canceled():
            return True
        job.fd_reported = False
        job.message(bfd.M_FATAL, SD_AUTH_CANCELED)
        job.message(bfd.M_FATAL, SD_AUTH_FAILED)
        job.director_message(bfd.M_FATAL, DIR_BAD_STORAGE)
        job.result.modelled_seconds += CANCELED_BEFORE_STORAGE_SECONDS
        return False

    def _estimate_job(self, job: _Job, cmds: List[str], listing: bool) -> None:
        for cmd in cmds:  # 'fileset' command: one bEventPluginCommand per Plugin= line
            if is_python_plugin(cmd) or cmd == "*all*":
                job.event(bfd.bEventPluginCommand, cmd)
        job.event(bfd.bEventEndFileSet)
        examined = 0
        for cmd in cmds:
            examined += self._plugin_estimate(job, cmd, listing)
        # filed dir_cmd.cc EstimateCmd: OKest with lib/edit.cc edit_uint64_with_commas
        job.result.console.append(f"2000 OK estimate files={_commas(examined)} bytes={_commas(job.result.bytes)}")
        job.console_closed = True
        job.event(bfd.bEventJobEnd)

    def _plugin_estimate(self, job: _Job, cmd: str, listing: bool) -> int:
        """filed fd_plugins.cc PluginEstimate for one Plugin= line; returns the items examined."""
        if not is_python_plugin(cmd):
            job.message(bfd.M_FATAL, f'Command plugin "{cmd}" not found.\n')
            return 0
        if job.event(bfd.bEventEstimateCommand, cmd) != bfd.bRC_OK:
            return 0
        examined = 0
        while not job.is_canceled():
            values = {"fname": "", "link": "", "type": 0, "flags": bytearray(job.options.flags()),
                      "no_read": False, "portable": True, "accurate_found": False, "cmd": cmd, "save_time": 0,
                      "delta_seq": 0, "object_name": None, "object": None, "object_len": 0,
                      "object_index": 0, "statp": None}
            res = job.py("start_backup_file", ("start_backup_file", values), "start_backup_file")
            if int(res["rc"]) != bfd.bRC_OK:
                break  # any other answer ends the plugin's listing silently
            pkt = res["pkt"]
            if not pkt["type"]:
                job.message(bfd.M_FATAL, f'Command plugin "{cmd}": no type in startBackupFile packet.\n')
                break
            if pkt["type"] not in OBJECT_TYPES:
                if not pkt["fname"]:
                    job.message(bfd.M_FATAL, f'Command plugin "{cmd}": no fname in startBackupFile packet.\n')
                    break
                st = pkt["statp"]
                examined += 1  # jcr->num_files_examined: what "files=" counts
                job.result.files.append(FileResult(self._catalog_name(pkt), pkt["type"], st["st_size"], 0))
                if pkt["type"] != bfd.FT_LNKSAVED and stat.S_ISREG(st["st_mode"]) and st["st_size"] > 0:
                    job.result.bytes += st["st_size"]
                if listing:
                    job.result.console.append(ls_line(pkt))  # M_RESTORED via Jmsg: printed as it is
            if job.call("end_backup_file") != bfd.bRC_More:
                break
        return examined

    def _plugin_options(self, job: _Job, pluginoptions: str) -> None:
        if ":" not in pluginoptions or not is_python_plugin(pluginoptions):
            return  # taken as a plugin name that matches nothing: silently dropped (§1.6)
        job.event(bfd.bEventNewPluginOptions, pluginoptions)

    def _plugin_save(self, job: _Job, cmd: str, writer: JobWriter) -> None:
        if not is_python_plugin(cmd):
            if ":" not in cmd and " " in cmd:
                job.message(bfd.M_ERROR, f"Malformed plugin command: {cmd}\n")
            else:
                job.message(bfd.M_FATAL, f'Command plugin "{cmd}" not found.\n')
            return
        rc = job.event(bfd.bEventBackupCommand, cmd)
        if rc != bfd.bRC_OK:
            job.walk_aborted = True
            return
        fileset_flags = self._fileset_flags(job)
        while not job.is_canceled():
            values = {"fname": "", "link": "", "type": 0, "flags": bytearray(fileset_flags), "no_read": False,
                      "portable": True, "accurate_found": False, "cmd": cmd, "save_time": 0, "delta_seq": 0,
                      "object_name": None, "object": None, "object_len": 0, "object_index": 0, "statp": None}
            res = job.py("start_backup_file", ("start_backup_file", values), "start_backup_file")
            rc = int(res["rc"])
            if rc == bfd.bRC_Stop:
                return
            if rc == bfd.bRC_Skip:
                continue
            if rc == bfd.bRC_Error:
                job.message(bfd.M_FATAL, f'Command plugin "{cmd}": startBackupFile failed.\n')
                return
            if rc != bfd.bRC_OK:
                job.message(bfd.M_ERROR, f'Command plugin "{cmd}": unhandled returncode from '
                                         f"startBackupFile: {rc}\n")
                return
            pkt: Dict[str, Any] = res["pkt"]
            if job.level in ("I", "D") and job.check_changes:
                if not pkt.get("save_time"):
                    pkt["save_time"] = job.since
                changed, found, delta_seq = job.changed(pkt["fname"], pkt["link"] or "", pkt["statp"],
                                                        pkt.get("save_time", job.since))
                pkt["delta_seq"] = delta_seq if found else pkt.get("delta_seq", 0)
                if not changed:
                    pkt["type"] = bfd.FT_DIRNOCHG if pkt["type"] == bfd.FT_DIRBEGIN else bfd.FT_NOCHG
            if pkt["type"] == 0:
                job.message(bfd.M_FATAL, f'Command plugin "{cmd}": no type in startBackupFile packet.\n')
                return
            if pkt["type"] not in OBJECT_TYPES and not pkt["fname"]:
                job.message(bfd.M_FATAL, f'Command plugin "{cmd}": no filename in startBackupFile packet.\n')
                return
            pkt["flags"] = self._merge_flags(fileset_flags, pkt["flags"])
            self._save_file(job, cmd, pkt, writer)
            erc = job.call("end_backup_file")
            if erc in (bfd.bRC_More, bfd.bRC_OK) and job.accurate:
                job.seen.add(self._catalog_name(pkt))
            if erc != bfd.bRC_More:
                return

    @staticmethod
    def _fileset_flags(job: _Job) -> bytes:
        flags = bytearray(job.options.flags())
        return bytes(flags)

    @staticmethod
    def _merge_flags(fileset: bytes, plugin: bytes) -> bytes:
        out = bytearray(fileset)
        for bit in PLUGIN_SETTABLE_BITS:
            _set_bit(out, bit, _bit(plugin, bit))
        _set_bit(out, FO_PLUGIN, True)
        return bytes(out)

    @staticmethod
    def _catalog_name(pkt: Dict[str, Any]) -> str:
        if pkt["type"] in (bfd.FT_DIREND, bfd.FT_DIRNOCHG) and pkt.get("link"):
            return str(pkt["link"])
        return str(pkt["fname"])

    def _save_file(self, job: _Job, cmd: str, pkt: Dict[str, Any], writer: JobWriter) -> None:
        ftype = pkt["type"]
        name = self._catalog_name(pkt)
        mode = pkt["statp"]["st_mode"]
        if ftype in (bfd.FT_NOCHG, bfd.FT_DIRNOCHG):
            job.message(bfd.M_SKIPPED, f"     Unchanged file skipped: {name}\n")
            return
        if ftype == bfd.FT_DIRBEGIN:
            return  # the directory itself is saved with its FT_DIREND record
        if ftype in NOT_ACCESSIBLE_TYPES:
            job.message(bfd.M_NOTSAVED, f"     Could not access \"{name}\"\n")
            job.count_error()
            return
        if ftype == bfd.FT_ISARCH:
            job.message(bfd.M_NOTSAVED, f"     Archive file not saved: {name}\n")
            return
        if ftype == bfd.FT_SPEC and stat.S_ISSOCK(mode):
            job.message(bfd.M_SKIPPED, f"     Socket file skipped: {name}\n")
            return
        if ftype not in SAVED_TYPES and ftype not in OBJECT_TYPES:
            job.message(bfd.M_NOTSAVED, f"     Unknown file type {ftype}: {name}\n")
            return
        file_index = writer.new_file_index()
        delta_seq = pkt.get("delta_seq", 0) + (1 if _bit(pkt["flags"], FO_DELTA) else 0)
        record = FileRecord(jobid=job.record.jobid, file_index=file_index, fname=name, type=ftype,
                            statp=dict(pkt["statp"]), cmd=cmd, delta_seq=delta_seq)
        if ftype in OBJECT_TYPES:
            writer.add_catalog_only(record)
            writer.add_object(job.record.jobid, file_index, pkt, cmd)
            job.result.files.append(FileResult(name, ftype, record.size, len(pkt["object"])))
            return
        sparse = _bit(pkt["flags"], FO_SPARSE) or _bit(pkt["flags"], FO_OFFSETS)
        attrs = {"fname": pkt["fname"], "link": pkt["link"], "type": ftype, "statp": pkt["statp"],
                 "cmd": cmd, "file_index": file_index, "delta_seq": delta_seq,
                 "data_stream": STREAM_SPARSE_DATA if sparse else STREAM_FILE_DATA}
        writer.begin_item(record, attrs)
        moved = 0
        seconds = 0.0
        if not pkt.get("no_read"):
            moved, seconds = self._send_data(job, pkt, writer, sparse)
            if _bit(pkt["flags"], FO_ACL) and ftype != bfd.FT_LNK and not job.is_canceled():
                self._get_acl(job, pkt["fname"], writer)
            if _bit(pkt["flags"], FO_XATTR) and not job.is_canceled():
                self._get_xattr(job, pkt["fname"], writer)
        writer.end_item()
        job.result.files.append(FileResult(name, ftype, record.size, moved, seconds=seconds))
        job.result.bytes += moved

    @staticmethod
    def _io(func: int, **fields: Any) -> Dict[str, Any]:
        values = {"func": func, "count": 0, "flags": 0, "mode": 0, "buf": None, "fname": None, "status": 0,
                  "io_errno": 0, "lerror": 0, "whence": 0, "offset": 0, "win32": False, "filedes": -1}
        values.update(fields)
        return values

    def _io_call(self, job: _Job, label: str, values: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        res = job.py(f"plugin_io({label})", ("plugin_io", values), "plugin_io")
        io = res.get("io")
        if res["st"] != "ok" and io is None:
            return int(res["rc"]), {"status": -1, "io_errno": 0, "filedes": -1, "buf": None}
        return int(res["rc"]), io or {"status": -1, "filedes": -1, "buf": None}

    def _open(self, job: _Job, fname: str, flags: int, mode: int) -> Tuple[bool, int | None]:
        """IO_OPEN; returns (opened, core fd or None for plugin mode)."""
        rc, io = self._io_call(job, "open", self._io(bfd.IO_OPEN, fname=fname, flags=flags, mode=mode))
        if rc == bfd.bRC_Error or io["status"] < 0:
            return False, None
        if io["status"] == bfd.iostat_do_in_core:
            if io["filedes"] == -1:
                return False, None
            return True, int(io["filedes"])
        return True, None

    def _send_data(self, job: _Job, pkt: Dict[str, Any], writer: JobWriter, sparse: bool) -> Tuple[int, float]:
        """The item's data from the plugin to the volume; (bytes, seconds from open to end of data).

        filed backup.cc reads and sends until end of file without a cancel check: after a cancel the
        read in flight returns (a core read blocked on a pipe is interrupted by the TIMEOUT_SIGNAL
        of dir_cmd.cc CancelCmd) and its send to the terminated storage-daemon connection fails
        (SendDataToSd, no message once canceled); reads made while the plugin's bEventCancelCommand
        runs are sent as usual.  After a fatal error fdsim stops before the next read (the real fd
        would read on to the end of the file).
        """
        fname = pkt["fname"]
        flags = os.O_RDONLY | (getattr(os, "O_NOATIME", 0) if job.options.noatime else 0)
        opened, core_fd = self._open(job, fname, flags, 0)
        if not opened:
            job.message(bfd.M_NOTSAVED, f'     Cannot open "{fname}": ERR=plugin open failed.\n')
            job.count_error()
            return 0, 0.0
        started = time.perf_counter()
        count = self.buffer_size - (SPARSE_HEADER_SIZE if sparse else 0)
        st_size = pkt["statp"]["st_size"]
        address = moved = 0
        # One buffer for the whole item, as the core's bsock buffer: reads land in it and the volume
        # write takes a view of it, so no bytes object is made per block.
        block = bytearray(count)
        block_view = memoryview(block)
        zeros = bytes(count) if sparse else b""
        data: Union[bytes, memoryview]
        while not job.fatal:
            if core_fd is not None:
                n = _read_full_into(core_fd, block_view, lambda: job.canceled)
                if n is None:
                    job.message(bfd.M_ERROR, f"Read error on file {fname}. ERR=read from core fd failed\n")
                    break
                if n < 0:  # blocked on the pipe and interrupted by the cancel's TIMEOUT_SIGNAL
                    break
                data = block_view[:n]
            else:
                _, io = self._io_call(job, "read", self._io(bfd.IO_READ, count=count, filedes=0))
                status = int(io["status"])
                if status > 0:
                    buf = io.get("buf")
                    if buf is None:
                        job.message(bfd.M_FATAL,
                                    f"fdsim: plugin_io IO_READ of {fname} returned status {status} with buf "
                                    f"of type {io.get('buftype')}; the real fd would send stale buffer "
                                    "content. Set iop.buf to a bytearray.\n")
                        break
                    if io.get("buflen", 0) > count or status > count:
                        status = -1
                    elif status > len(buf):
                        job.message(bfd.M_FATAL,
                                    f"fdsim: plugin_io IO_READ of {fname} returned status {status} but "
                                    f"only {len(buf)} bytes in buf; the real fd would copy memory past "
                                    "the buffer.\n")
                        break
                if status < 0:
                    job.message(bfd.M_ERROR, f"Read error on file {fname}. ERR=status {status}\n")
                    break
                data = bytes(io["buf"][:status]) if status > 0 else b""
            if not data:
                break
            if job.canceled:
                break  # the send to the storage daemon fails: the job's SD connection was terminated
            skip = (sparse and len(data) == count and data == zeros and address + len(data) < st_size)
            if not skip:
                writer.data(address, data)
            address += len(data)
            moved += len(data)
        seconds = time.perf_counter() - started
        self._io_call(job, "close", self._io(bfd.IO_CLOSE, filedes=core_fd if core_fd is not None else 0))
        return moved, seconds

    def _get_acl(self, job: _Job, fname: str, writer: JobWriter) -> None:
        res = job.py("get_acl", ("get_acl", fname), "get_acl")
        if res["st"] == "ok" and res["rc"] == bfd.bRC_OK:
            if res.get("content"):
                writer.acl(res["content"])
        elif res["st"] in ("ok", "nofunc"):
            job.message(bfd.M_ERROR, f"     Cannot read ACL of \"{fname}\"\n")

    def _get_xattr(self, job: _Job, fname: str, writer: JobWriter) -> None:
        for _ in range(MAX_XATTR_CALLS):
            res = job.py("get_xattr", ("get_xattr", fname), "get_xattr")
            rc = int(res["rc"])
            if res["st"] == "ok" and rc in (bfd.bRC_OK, bfd.bRC_More) and res.get("name"):
                writer.xattr(res["name"], res["value"])
            if rc == bfd.bRC_More and res["st"] == "ok":
                continue
            if rc != bfd.bRC_OK and res["st"] in ("ok", "nofunc"):
                job.message(bfd.M_ERROR, f"     Cannot read extended attributes of \"{fname}\"\n")
            return

    def _accurate_finish(self, job: _Job, writer: JobWriter) -> None:
        for name in list(job.accurate_state):
            if name in job.seen:
                continue
            rc = job.call("check_file", name) if job.loaded else bfd.bRC_OK
            if rc == bfd.bRC_Seen:
                continue
            prev = job.accurate_state[name]
            writer.add_catalog_only(FileRecord(jobid=job.record.jobid, file_index=writer.new_file_index(),
                                               fname=name, type=bfd.FT_DELETED, statp=dict(prev.statp),
                                               cmd=prev.cmd))

    # -- restore -------------------------------------------------------------------------------
    def _restore_job(self, job: _Job, jobids: List[int], selected: List[FileRecord],
                     pluginoptions: str | None, replace: int) -> None:
        """Director order (dird restore.cc): ``pluginoptions``, restore objects, ``restore``, data.

        ``pluginoptions`` (bEventNewPluginOptions) only store the override, unless they name a
        module themselves; the first trigger that loads the module - the first restore object,
        else the first item's bEventRestoreCommand - gets ``<override>`` + backup-time string
        (python-fd.cc ``parse_plugin_definition`` merges while ``python_loaded`` is false, see
        :meth:`_Job._c_parse`); every later bEventRestoreCommand gets the backup-time string alone.

        The storage/bootstrap commands come before all of this at restore (reference §3.4, dird
        restore.cc), so a fatal error while the objects load has no storage-daemon cascade (compare
        :meth:`FdSim._storage_command` for backups).
        """
        if pluginoptions:
            self._plugin_options(job, pluginoptions)
        # dird fd_cmds.cc SendGlobalRestoreObjects: every JobId's objects, ordered by ObjectIndex.
        for rop in self.store.restore_objects(jobids):
            job.event(bfd.bEventRestoreObject, rop)
        job.event(bfd.bEventRestoreObject, None)
        # filed dir_cmd.cc RestoreCmd: jcr->where from the restore command, then
        # GeneratePluginEvent(bEventStartRestoreJob), DoRestore.
        job.job_type = "R"
        if job.regexwhere is not None:
            job.where_bregexp = parse_bregexps(job.regexwhere)
            if job.where_bregexp is None:  # RestoreCmd refuses the restore command
                job.message(bfd.M_FATAL, f"Bad where regexp. where={job.regexwhere}\n")
                job.event(bfd.bEventJobEnd)  # suppressed: the job failed
                return
        job.where = job.restore_where
        job.event(bfd.bEventStartRestoreJob)
        open_item = False
        for rec in selected:
            if job.is_canceled():
                break
            if not is_python_plugin(rec.cmd):
                job.message(bfd.M_WARNING, f"Plugin={rec.cmd} not found.\n")
                continue
            open_item = self._restore_item(job, rec, replace)
            if open_item and not job.is_canceled():
                rc = job.call("end_restore_file")
                open_item = False
                if rc == -1:
                    job.message(bfd.M_FATAL, "Return value of endRestoreFile invalid\n")
        # RestoreCmd's bail_out: BfreeAndNull(jcr->where); "if (jcr->JobErrors)
        # setJobStatus(JS_ErrorTerminated)"; only then EndRestoreCmd raises bEventEndRestoreJob. An
        # M_ERROR from event 6 or later is counted (fd_errors) but leaves the job "Restore OK"; an
        # M_FATAL there still makes it "f" (JS_FatalError wins) and suppresses bEventJobEnd.
        job.where = None
        if job.result.fd_errors:
            job.error_terminated = True
        if bfd.bEventEndRestoreJob in job.events:
            if open_item:
                job.call("end_restore_file")
            job.event(bfd.bEventEndRestoreJob)
        job.event(bfd.bEventJobEnd)

    def _relocate(self, job: _Job, name: str) -> str:
        """lib/attr.cc BuildAttrOutputFnames: the where-regexps, else where + name."""
        if job.where_bregexp is not None:
            return apply_bregexps(name, job.where_bregexp)
        if not job.restore_where:
            return name
        return job.restore_where.rstrip("/") + ("" if name.startswith("/") else "/") + name

    def _restore_item(self, job: _Job, rec: FileRecord, replace: int) -> bool:
        """One item from its start record to its last data; True when start_restore_file ran."""
        item = self.store.read_item(rec)
        attrs = item.attrs
        started = False
        if job.event(bfd.bEventRestoreCommand, rec.cmd) == bfd.bRC_OK and not job.is_canceled():
            started = job.call("start_restore_file", rec.cmd) == bfd.bRC_OK
        if job.is_canceled():
            return started
        if not started:
            job.message(bfd.M_FATAL, "Unbalanced call to createFile\n")
            return False
        ftype = int(attrs["type"])
        fname = str(attrs["fname"]) if ftype != bfd.FT_DIREND else str(attrs["link"] or attrs["fname"])
        link = str(attrs["link"] or "")
        ofname = self._relocate(job, fname)
        olname = link
        if ftype == bfd.FT_LNKSAVED or (ftype == bfd.FT_LNK and job.prefix_links and (
                link.startswith("/") or job.where_bregexp is not None)):
            olname = self._relocate(job, link)
        rp = {"stream": STREAM_UNIX_ATTRIBUTES, "data_stream": int(attrs["data_stream"]), "type": ftype,
              "file_index": int(attrs["file_index"]), "linkFI": 0, "uid": attrs["statp"]["st_uid"],
              "statp": attrs["statp"], "attrEX": "", "ofname": ofname, "olname": olname,
              "where": job.restore_where, "regexwhere": None, "replace": replace,
              "create_status": bfd.CF_ERROR, "filedes": -1}
        res = job.py(f"create_file({ofname!r})", ("create_file", rp), "create_file")
        job.restored_files += 1  # filed restore.cc: JobFiles++ for every outcome of create_file
        status = int(res.get("create_status", bfd.CF_ERROR))
        if int(res["rc"]) != bfd.bRC_OK:
            if res["st"] == "ok":
                job.message(bfd.M_ERROR, f"Plugin createFile call failed. Stat={res['rc']} file={ofname}\n")
            status = bfd.CF_ERROR
        moved = 0
        extracted = False
        if status == bfd.CF_ERROR:
            job.message(bfd.M_ERROR, f"Plugin createFile call failed. Returned CF_ERROR file={ofname}\n")
            return True
        if status == bfd.CF_SKIP:
            job.result.files.append(FileResult(fname, ftype, rec.size, 0, ofname))
            return True
        if status == bfd.CF_CREATED:
            job.py("set_file_attributes", ("set_file_attributes", rp), "set_file_attributes")
        elif status in (bfd.CF_EXTRACT, bfd.CF_CORE):
            if status == bfd.CF_CORE and not self._core_create(job, ftype, ofname, olname, rec, replace):
                job.result.files.append(FileResult(fname, ftype, rec.size, 0, ofname))
                return True
            if status == bfd.CF_EXTRACT or ftype in (bfd.FT_REG, bfd.FT_REGE):
                mode = EXTRACT_OPEN_MODE if status == bfd.CF_EXTRACT else 0
                opened, core_fd = self._open(job, ofname, RESTORE_OPEN_FLAGS, mode)
                if not opened:
                    job.message(bfd.M_ERROR, f"     Cannot open {ofname}: plugin open failed\n")
                else:
                    extracted = True
                    moved = self._extract_data(job, rec, item.data, ofname, core_fd)
                    job.py("set_file_attributes", ("set_file_attributes", rp), "set_file_attributes")
                    self._io_call(job, "close",
                                  self._io(bfd.IO_CLOSE, filedes=core_fd if core_fd is not None else 0))
            else:
                job.py("set_file_attributes", ("set_file_attributes", rp), "set_file_attributes")
        if extracted or ftype == bfd.FT_DIREND:
            if item.acl:
                res = job.py("set_acl", ("set_acl", ofname, item.acl), "set_acl")
                if res["st"] in ("ok", "nofunc") and res["rc"] != bfd.bRC_OK:
                    job.message(bfd.M_ERROR, f"     Cannot restore ACL of {ofname}\n")
            for name, value in item.xattrs:
                res = job.py("set_xattr", ("set_xattr", ofname, name, value), "set_xattr")
                if res["st"] in ("ok", "nofunc") and res["rc"] != bfd.bRC_OK:
                    job.message(bfd.M_ERROR, f"     Cannot restore extended attributes of {ofname}\n")
        job.result.files.append(FileResult(fname, ftype, rec.size, moved, ofname))
        job.result.bytes += moved
        return True

    def _core_create(self, job: _Job, ftype: int, ofname: str, olname: str, rec: FileRecord,  # noqa: PLR0917
                     replace: int) -> bool:
        """CF_CORE: the core's CreateFile (replace policy, unlink, parents, dirs/links natively)."""
        path = Path(ofname)
        if os.path.lexists(ofname) and ftype != bfd.FT_DIREND:
            existing = os.lstat(ofname).st_mtime
            if replace == REPLACE_CODES["never"]:
                job.message(bfd.M_INFO, f"File skipped. Already exists: {ofname}\n")
                return False
            if replace == REPLACE_CODES["ifnewer"] and rec.mtime <= existing:
                job.message(bfd.M_INFO, f"File skipped. Not newer: {ofname}\n")
                return False
            if replace == REPLACE_CODES["ifolder"] and rec.mtime >= existing:
                job.message(bfd.M_INFO, f"File skipped. Not older: {ofname}\n")
                return False
            if not path.is_dir() or path.is_symlink():
                path.unlink()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if ftype == bfd.FT_DIREND:
                path.mkdir(parents=True, exist_ok=True)
            elif ftype == bfd.FT_LNK:
                os.symlink(olname, ofname)
        except OSError as exc:
            job.message(bfd.M_ERROR, f"     Could not create {ofname}: ERR={exc}\n")
            return False
        return True

    def _extract_data(self, job: _Job, rec: FileRecord, data: List[Tuple[int, int]], ofname: str,
                      core_fd: int | None) -> int:
        position = moved = 0
        for address, chunk in self.store.read_data(rec.jobid, data):
            if job.is_canceled():
                break
            if address != position:
                self._io_call(job, "seek", self._io(bfd.IO_SEEK, offset=address, whence=os.SEEK_SET,
                                                    filedes=core_fd if core_fd is not None else 0))
                position = address
            if core_fd is not None:
                try:
                    _write_full(core_fd, chunk)
                except OSError as exc:
                    job.message(bfd.M_ERROR, f"Write error on {ofname}: ERR={exc}\n")
                    break
            else:
                values = self._io(bfd.IO_WRITE, buf=bytearray(chunk), count=len(chunk), filedes=0)
                _, io = self._io_call(job, "write", values)
                if io["status"] != len(chunk):
                    job.message(bfd.M_ERROR, f"Write error on {ofname}: status {io['status']} for "
                                             f"{len(chunk)} bytes\n")
                    break
            position += len(chunk)
            moved += len(chunk)
        return moved


class BackgroundJob:
    """A job running on its own thread (see :meth:`FdSim.start`)."""

    def __init__(self, run: Callable[..., JobResult], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        self._started = threading.Event()
        self._jobid = 0
        self._result: JobResult | None = None
        self._error: BaseException | None = None

        def started(jobid: int) -> None:
            self._jobid = jobid
            self._started.set()

        def body() -> None:
            try:
                self._result = run(*args, on_start=started, **kwargs)
            except BaseException as exc:  # handed to wait()
                self._error = exc
            finally:
                self._started.set()

        self._thread = threading.Thread(target=body, name="fdsim-job", daemon=True)
        self._thread.start()

    @property
    def jobid(self) -> int:
        """The JobId (waits until the job has started)."""
        self._started.wait()
        return self._jobid

    def wait(self, timeout: float | None = None) -> JobResult:
        """The job's result; raises what the job raised, or TimeoutError."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"fdsim: job {self._jobid} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _read_full_into(fd: int, buf: memoryview, canceled: Callable[[], bool]) -> int | None:
    """The core's bread on a do-in-core fd: fill ``buf`` or stop at EOF; bytes read, None on error,
    -1 when the read waited on an empty pipe and the job was canceled meanwhile (the real fd's
    TIMEOUT_SIGNAL makes the blocked read() return with EINTR)."""
    have = 0
    count = len(buf)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while have < count:
        if not poller.poll(CANCEL_POLL_MS):
            if canceled():
                return -1
            continue
        try:
            n = os.readv(fd, [buf[have:]])
        except OSError:
            return None
        if not n:
            break
        have += n
    return have


def _write_full(fd: int, data: Union[bytes, memoryview]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
