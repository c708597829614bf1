"""Messages of the fd <-> agent protocol (standard library only).

The fd (inside bareos-fd) and the agent (a separate ``python3 -m bareos_hyperv.agent``
process) exchange these over a socket pair, framed by :mod:`bareos_hyperv.protocol.framing`.
Every message is a frozen dataclass with a wire name (``TYPE``); the body is its fields as JSON.

Conversation, always started by the fd (the agent never speaks unasked, so the socket never
fills while the Bareos core, not the plugin, is running)::

    fd: Hello(version)                      agent: HelloReply(version, pid)
    fd: StartJob(...)                       agent: JobStarted
    Incr/Diff backup, when the previous job's records did not fit StartJob.base:
             fd: AddBase(objects)           agent: JobStarted   (repeated)
    backup:  fd: ListFiles                  agent: FileList(files)
             fd: OpenFile(name)             agent: PipeReady(name, size) + read end (SCM_RIGHTS)
             fd: CloseFile(name)            agent: FileDone(name, bytes, sha256)
    cleanup: fd: StartJob(kind=cleanup, cleanup=record) ... fd: Cleanup   agent: CleanupDone(left)
    restore: fd: CreateFile(name, target..) agent: PipeReady(name, size) + write end
             fd: CloseFile(name)            agent: FileDone(...)
    restore into Hyper-V (StartJob.restore): first
             fd: PlanRestore(objects)       agent: RestorePlanned(vms, refused)
             then per item CreateFile ... agent: PipeReady + write end, or FileSkipped(reason)
             fd: FinishRestore              agent: RestoreFinished(restored, failed)
    fd: EndJob                              agent: JobDone(stats) and exits

Any request may instead be answered by :class:`ErrorReply`.  Log records and progress the
agent produced since the last reply travel in front of the reply as :class:`LogRecord` and
:class:`Progress` messages.

Cleanup records: a backup whose source changes the Hyper-V side (a recovery checkpoint, a
staging folder) reports in every :class:`FileList` what would have to be undone if the job
ended now (:class:`CleanupRecord`, ``None`` when nothing).  The fd keeps the latest one; when
the agent dies or is killed without undoing it, the fd starts a fresh agent with
``JobKind.CLEANUP`` that removes exactly that (``JobDone.cleanup`` likewise names what an agent
that ended normally could not undo).  New fields are optional, so older peers still decode.

Secrets: :class:`WireCredentials` is the only message that carries one; its ``repr`` is
redacted and the framing never logs message bodies.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union, get_type_hints

from bareos_hyperv.errors import BareosHyperVError, ProtocolError
from bareos_hyperv.model.options import JobOptions
from bareos_hyperv.model.restore import (
    DiskMapping,
    MissingSwitch,
    RestoreOptions,
    RestoreTarget,
    SwitchMapping,
    parse_pairs,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AddBase",
    "Cleanup",
    "CleanupDone",
    "CleanupRecord",
    "CloseFile",
    "CreateFile",
    "DiskMapping",
    "EndJob",
    "ErrorReply",
    "FileDone",
    "FileEntry",
    "FileList",
    "FileSkipped",
    "FinishRestore",
    "Hello",
    "HelloReply",
    "JobDone",
    "JobKind",
    "JobOptions",
    "JobStarted",
    "ListFiles",
    "LogLevel",
    "LogRecord",
    "Message",
    "MissingSwitch",
    "OpenFile",
    "PipeReady",
    "PlanRestore",
    "Progress",
    "RestoreFinished",
    "RestoreObject",
    "RestoreOptions",
    "RestorePlanned",
    "RestoreTarget",
    "StartJob",
    "SwitchMapping",
    "WireCredentials",
    "decode",
    "encode",
    "error_from_exception",
    "parse_pairs",
]

# Bump on any incompatible change; fd and agent refuse to talk across versions.
# 2: StartJob.options is the typed JobOptions (was a dict of option strings).
PROTOCOL_VERSION = 2


class JobKind(str, enum.Enum):
    """What the agent is asked to do for this job."""

    BACKUP = "backup"
    RESTORE = "restore"
    CLEANUP = "cleanup"  # undo what a dead agent left (see CleanupRecord)
    # bconsole estimate (JobId 0): list the items a backup would produce, changing nothing on any host
    ESTIMATE = "estimate"


class LogLevel(str, enum.Enum):
    """Severity of an agent log record; the fd maps it to a Bareos message type."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Message:
    """Base of every protocol message."""

    TYPE: ClassVar[str] = ""


@dataclass(frozen=True)
class WireCredentials:
    """An account for the Hyper-V hosts/shares, handed over the socket (never argv or env)."""

    username: str
    password: str = field(repr=False)
    domain: Optional[str] = None

    def __repr__(self) -> str:
        return f"WireCredentials(username={self.username!r}, password='***', domain={self.domain!r})"


@dataclass(frozen=True)
class FileEntry:
    """One item of the save set: its name in the catalog and its attributes."""

    name: str
    size: int
    mtime: int
    mode: int = 0o100640
    # Backup: the item is a restore object (FT_RESTORE_FIRST) with this text as its data, no I/O.
    restore_object: Optional[str] = None


@dataclass(frozen=True)
class CleanupRecord:
    """What a backup in progress has changed on the Hyper-V side and must undo if the job ends now.

    ``host`` is the job's ``host=`` (host or cluster name, used to find the VM's owner again if
    it migrated), ``node`` the node that held the VM when the checkpoint was taken,
    ``checkpoint_id`` the checkpoint's InstanceID (empty when none), ``staging`` the host path of
    the staging folder (empty when none).
    """

    host: str
    node: str
    vm_guid: str
    vm_name: str
    job_id: int
    checkpoint_id: str = ""
    staging: str = ""
    # Restore into Hyper-V: what this job wrote ("NODE|file|path", "NODE|dir|path"), and the VM name an import
    # under way would give a planned VM (planned VMs of that name are this job's).
    restore: bool = False
    files: List[str] = field(default_factory=list)
    planned_name: str = ""

    def describe(self) -> str:
        """One line for the job log."""
        parts = []
        if self.checkpoint_id:
            parts.append(f"recovery checkpoint {self.checkpoint_id}")
        if self.staging:
            parts.append(f"staging folder {self.staging}")
        if self.files:
            parts.append(f"{len(self.files)} restored file(s)")
        if self.planned_name:
            parts.append(f"a planned VM '{self.planned_name}'")
        return f"VM {self.vm_name} ({self.vm_guid}) on {self.node}: " + (" and ".join(parts) or "nothing")


# -- fd -> agent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """First message of the fd: its protocol version."""

    TYPE: ClassVar[str] = "hello"
    version: int
    fd_pid: int


@dataclass(frozen=True)
class RestoreObject:
    """A restore object the fd received from Bareos: a VM's final manifest or a disk file's base.

    Delivered before a restore (every job of it) and before an Incremental or Differential
    backup (the job it builds on); ``jobid`` is the job that saved it.
    """

    jobid: int
    name: str
    data: str


@dataclass(frozen=True)
class StartJob(Message):
    """The job: kind, the source (producer) and its options, credentials if any.

    ``options`` are the plugin options the fd parsed and typed (:class:`JobOptions`, nested
    dataclasses on the wire); the agent never parses option strings.
    """

    TYPE: ClassVar[str] = "start_job"
    kind: JobKind
    source: str
    jobid: int
    job_name: str
    options: JobOptions = field(default_factory=JobOptions)
    credentials: Optional[WireCredentials] = None
    where: str = ""
    cleanup: Optional[CleanupRecord] = None  # JobKind.CLEANUP: what to undo
    restore: Optional[RestoreOptions] = None  # JobKind.RESTORE: the typed restore_* options
    # Backup: Bareos's level letter (F, I, D), since time (epoch seconds; 0 for a Full), and the
    # restore objects Bareos delivered of the job an Incremental or Differential builds on.
    level: str = ""
    since: int = 0
    base: List[RestoreObject] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"StartJob(kind={self.kind.value}, source={self.source!r}, jobid={self.jobid}, "
                f"level={self.level!r}, since={self.since}, base={len(self.base)} object(s), "
                f"options={self.options!r}, credentials={self.credentials!r})")


@dataclass(frozen=True)
class AddBase(Message):
    """Backup: more restore objects of the job an Incremental or Differential builds on.

    Sent after StartJob (answered by JobStarted) when they do not fit one frame with it.
    """

    TYPE: ClassVar[str] = "add_base"
    objects: List[RestoreObject]


@dataclass(frozen=True)
class ListFiles(Message):
    """Backup: which items will be saved, in order."""

    TYPE: ClassVar[str] = "list_files"


@dataclass(frozen=True)
class OpenFile(Message):
    """Backup: start streaming one item into a new pipe and hand over its read end."""

    TYPE: ClassVar[str] = "open_file"
    name: str


@dataclass(frozen=True)
class CreateFile(Message):
    """Restore: make a pipe whose read end the agent writes to ``target`` and hand over the write end."""

    TYPE: ClassVar[str] = "create_file"
    name: str
    target: str
    size: int
    mtime: int
    mode: int
    replace: bool


@dataclass(frozen=True)
class PlanRestore(Message):
    """Restore into Hyper-V: plan every VM of these manifests against the destination, before any data."""

    TYPE: ClassVar[str] = "plan_restore"
    objects: List[RestoreObject]


@dataclass(frozen=True)
class FinishRestore(Message):
    """Restore into Hyper-V: every item arrived; import, verify and register the VMs."""

    TYPE: ClassVar[str] = "finish_restore"


@dataclass(frozen=True)
class CloseFile(Message):
    """End of one item: the agent finishes its side and reports what it moved."""

    TYPE: ClassVar[str] = "close_file"
    name: str


@dataclass(frozen=True)
class Cleanup(Message):
    """Cleanup job: undo what ``StartJob.cleanup`` names (bounded by the job's ``timeout``)."""

    TYPE: ClassVar[str] = "cleanup"


@dataclass(frozen=True)
class EndJob(Message):
    """Job over: clean up, report statistics and exit."""

    TYPE: ClassVar[str] = "end_job"


# -- agent -> fd -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelloReply(Message):
    """The agent's protocol version and process facts."""

    TYPE: ClassVar[str] = "hello_reply"
    version: int
    pid: int
    package_version: str
    python: str


@dataclass(frozen=True)
class JobStarted(Message):
    """The job is set up (source opened, credentials accepted)."""

    TYPE: ClassVar[str] = "job_started"


@dataclass(frozen=True)
class FileList(Message):
    """The items of this backup, in save order."""

    TYPE: ClassVar[str] = "file_list"
    files: List[FileEntry]
    cleanup: Optional[CleanupRecord] = None  # what to undo if the job ended now (None: nothing)


@dataclass(frozen=True)
class PipeReady(Message):
    """A pipe end accompanies this message (SCM_RIGHTS); ``size`` bytes will flow through it."""

    TYPE: ClassVar[str] = "pipe_ready"
    name: str
    size: int
    cleanup: Optional[CleanupRecord] = None  # restore into Hyper-V: what to undo if the job ended now


@dataclass(frozen=True)
class FileSkipped(Message):
    """Restore: the item is not written (not needed, dry run, or its VM's plan was refused)."""

    TYPE: ClassVar[str] = "file_skipped"
    name: str
    reason: str = ""


@dataclass(frozen=True)
class RestorePlanned(Message):
    """The VMs the restore will bring back (directory names in the save set) and those it refused."""

    TYPE: ClassVar[str] = "restore_planned"
    vms: List[str]
    refused: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreFinished(Message):
    """Outcome of a restore into Hyper-V: VMs restored, and VMs that failed with the reason."""

    TYPE: ClassVar[str] = "restore_finished"
    restored: List[str]
    failed: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileDone(Message):
    """One item finished: bytes moved and their SHA-256."""

    TYPE: ClassVar[str] = "file_done"
    name: str
    bytes: int
    sha256: str
    seconds: float
    cleanup: Optional[CleanupRecord] = None  # restore into Hyper-V: what to undo if the job ended now


@dataclass(frozen=True)
class JobDone(Message):
    """Final statistics; the agent exits after sending it."""

    TYPE: ClassVar[str] = "job_done"
    files: int
    bytes: int
    peak_rss_kib: int
    seconds: float
    cleanup: Optional[CleanupRecord] = None  # what the agent could not undo itself


@dataclass(frozen=True)
class CleanupDone(Message):
    """Cleanup job finished; ``left`` is what could still not be removed (None: all gone)."""

    TYPE: ClassVar[str] = "cleanup_done"
    left: Optional[CleanupRecord] = None


@dataclass(frozen=True)
class LogRecord(Message):
    """A log line of the agent, for the job log (or the fd's debug output for DEBUG)."""

    TYPE: ClassVar[str] = "log"
    level: LogLevel
    text: str


@dataclass(frozen=True)
class Progress(Message):
    """Bytes moved so far for one item."""

    TYPE: ClassVar[str] = "progress"
    name: str
    bytes: int


@dataclass(frozen=True)
class ErrorReply(Message):
    """The request failed; ``kind`` is the ``BareosHyperVError.kind`` of the cause."""

    TYPE: ClassVar[str] = "error"
    kind: str
    message: str
    what_to_do: Optional[str] = None
    context: Dict[str, str] = field(default_factory=dict)


_REGISTRY: Dict[str, Type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, StartJob, AddBase, ListFiles, OpenFile, CreateFile, CloseFile, Cleanup, EndJob, HelloReply,
                JobStarted, FileList, PipeReady, FileDone, JobDone, CleanupDone, LogRecord, Progress, ErrorReply,
                PlanRestore, FinishRestore, FileSkipped, RestorePlanned, RestoreFinished)
}

M = TypeVar("M", bound=Message)


def error_from_exception(exc: BaseException) -> ErrorReply:
    """Describe an exception for the wire: our own errors keep kind, hint and context."""
    if isinstance(exc, BareosHyperVError):
        return ErrorReply(kind=exc.kind, message=exc.message, what_to_do=exc.what_to_do,
                          context={k: str(v) for k, v in exc.context.items() if v is not None})
    return ErrorReply(kind="internal", message=f"unexpected {type(exc).__name__} in the agent: {exc}",
                      what_to_do="report this as a bug together with the job log at debug level 200")


# -- (de)serialisation -------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def encode(msg: Message) -> Dict[str, Any]:
    """The JSON-ready form of a message: ``{"type": ..., "body": {...}}``."""
    return {"type": msg.TYPE, "body": _to_json(msg)}


def _bad(where: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"malformed protocol message: {where} should be {expected}, got {type(value).__name__}",
                         what_to_do="make sure the fd plugin and the agent come from the same bareos-hyperv "
                                    "installation")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = getattr(tp, "__origin__", None)
    if origin is Union:
        args = tp.__args__
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        return [_convert(tp.__args__[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        # Only the homogeneous Tuple[X, ...] of the model's option classes is carried.
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        return tuple(_convert(tp.__args__[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return {str(k): _convert(tp.__args__[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _bad(where, f"one of {[m.value for m in tp]}", value) from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, "a boolean", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    raise ProtocolError(f"protocol field {where} has an unsupported type {tp!r}")


_HINTS: Dict[type, Dict[str, Any]] = {}


def _build(cls: Type[Any], body: Mapping[str, Any], where: str) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        # Types named in the class's own module (model classes carried by a message included).
        hints = get_type_hints(cls, vars(sys.modules[cls.__module__]))
        _HINTS[cls] = hints
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _convert(hints[f.name], body[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"malformed protocol message: {where} lacks the field {f.name}",
                                what_to_do="make sure the fd plugin and the agent come from the same "
                                           "bareos-hyperv installation")
    return cls(**kwargs)


def decode(frame: Any) -> Message:
    """Turn a decoded JSON frame back into its message, checking every field's type."""
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("malformed protocol frame: no message type")
    cls = _REGISTRY.get(frame["type"])
    if cls is None:
        raise ProtocolError(f"unknown protocol message type {frame['type']!r}",
                            what_to_do="make sure the fd plugin and the agent come from the same "
                                       "bareos-hyperv installation")
    body = frame.get("body", {})
    if not isinstance(body, dict):
        raise _bad(cls.TYPE, "an object", body)
    msg: Message = _build(cls, body, cls.TYPE)
    return msg


def expect(msg: Message, cls: Type[M]) -> M:
    """``msg`` if it is a ``cls``; a :class:`ProtocolError` naming both otherwise."""
    if not isinstance(msg, cls):
        raise ProtocolError(f"protocol out of step: expected {cls.TYPE}, got {msg.TYPE}",
                            what_to_do="make sure the fd plugin and the agent come from the same "
                                       "bareos-hyperv installation")
    return msg
