"""Pure-Python stand-in for the Bareos 25.1 ``bareosfd`` extension module.

fdsim places this directory on the sys.path of every job's sub-interpreter, so a plugin's
``import bareosfd`` finds this file the way it finds ``bareosfd.<EXT_SUFFIX>`` in PY3MODDIR
under the real fd.  Constants, packet types and member semantics follow
the team reference ``shared/reference/bareos-python-fd.md`` §4 and §5 (read from
``core/src/plugins/filed/python/module/bareosfd.{h,cc}`` of Release/25.1.0).

The functions that reach the core (``JobMessage``, ``GetValue``, ...) go through a per-thread
link installed by ``_fdsim_guest``: like the real module, which keeps the plugin context in a
thread-local variable set only on the job thread, calling them from a thread the plugin
started raises ``RuntimeError("...: plugin_ctx is unset")``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, List, Protocol, Tuple

# --- return codes (lib/plugins.h) --------------------------------------------------------------
bRC_OK = 0
bRC_Stop = 1
bRC_Error = 2
bRC_More = 3
bRC_Term = 4
bRC_Seen = 5
bRC_Core = 6
bRC_Skip = 7
bRC_Cancel = 8
bRCs = {
    b"bRC_OK": bRC_OK,
    b"bRC_Stop": bRC_Stop,
    b"bRC_Error": bRC_Error,
    b"bRC_More": bRC_More,
    b"bRC_Term": bRC_Term,
    b"bRC_Seen": bRC_Seen,
    b"bRC_Core": bRC_Core,
    b"bRC_Skip": bRC_Skip,
    b"bRC_Cancel": bRC_Cancel,
}

# --- job message types (lib/message_severity.h; M_AUDIT is not exported) ---------------------
M_ABORT = 1
M_DEBUG = 2
M_FATAL = 3
M_ERROR = 4
M_WARNING = 5
M_INFO = 6
M_SAVED = 7
M_NOTSAVED = 8
M_SKIPPED = 9
M_MOUNT = 10
M_ERROR_TERM = 11
M_TERM = 12
M_RESTORED = 13
M_SECURITY = 14
M_ALERT = 15
M_VOLMGMT = 16
bJobMessageType = {
    b"M_ABORT": M_ABORT,
    b"M_DEBUG": M_DEBUG,
    b"M_FATAL": M_FATAL,
    b"M_ERROR": M_ERROR,
    b"M_WARNING": M_WARNING,
    b"M_INFO": M_INFO,
    b"M_SAVED": M_SAVED,
    b"M_NOTSAVED": M_NOTSAVED,
    b"M_SKIPPED": M_SKIPPED,
    b"M_MOUNT": M_MOUNT,
    b"M_ERROR_TERM": M_ERROR_TERM,
    b"M_TERM": M_TERM,
    b"M_RESTORED": M_RESTORED,
    b"M_SECURITY": M_SECURITY,
    b"M_ALERT": M_ALERT,
    b"M_VOLMGMT": M_VOLMGMT,
}

# --- variables (filed/fd_plugins.h) ----------------------------------------------------------
bVarJobId = 1
bVarFDName = 2
bVarLevel = 3
bVarType = 4
bVarClient = 5
bVarJobName = 6
bVarJobStatus = 7
bVarSinceTime = 8
bVarAccurate = 9
bVarFileSeen = 10
bVarVssClient = 11
bVarWorkingDir = 12
bVarWhere = 13
bVarRegexWhere = 14
bVarExePath = 15
bVarVersion = 16
bVarDistName = 17
bVarPrevJobName = 18
bVarPrefixLinks = 19
bVarCheckChanges = 20
bVarUsedConfig = 21
bVariable = {
    b"bVarJobId": bVarJobId,
    b"bVarFDName": bVarFDName,
    b"bVarLevel": bVarLevel,
    b"bVarType": bVarType,
    b"bVarClient": bVarClient,
    b"bVarJobName": bVarJobName,
    b"bVarJobStatus": bVarJobStatus,
    b"bVarSinceTime": bVarSinceTime,
    b"bVarAccurate": bVarAccurate,
    b"bVarFileSeen": bVarFileSeen,
    b"bVarVssClient": bVarVssClient,
    b"bVarWorkingDir": bVarWorkingDir,
    b"bVarWhere": bVarWhere,
    b"bVarRegexWhere": bVarRegexWhere,
    b"bVarExePath": bVarExePath,
    b"bVarVersion": bVarVersion,
    b"bVarDistName": bVarDistName,
    b"bVarPrevJobName": bVarPrevJobName,
    b"bVarPrefixLinks": bVarPrefixLinks,
    b"bVarCheckChanges": bVarCheckChanges,
    b"bVarUsedConfig": bVarUsedConfig,
}

# --- events (filed/fd_plugins.h; FD_NR_EVENTS = 31) -------------------------------------------
bEventJobStart = 1
bEventJobEnd = 2
bEventStartBackupJob = 3
bEventEndBackupJob = 4
bEventStartRestoreJob = 5
bEventEndRestoreJob = 6
bEventStartVerifyJob = 7
bEventEndVerifyJob = 8
bEventBackupCommand = 9
bEventRestoreCommand = 10
bEventEstimateCommand = 11
bEventLevel = 12
bEventSince = 13
bEventCancelCommand = 14
bEventRestoreObject = 15
bEventEndFileSet = 16
bEventPluginCommand = 17
bEventOptionPlugin = 18
bEventHandleBackupFile = 19
bEventNewPluginOptions = 20
bEventVssInitializeForBackup = 21
bEventVssInitializeForRestore = 22
bEventVssSetBackupState = 23
bEventVssPrepareForBackup = 24
bEventVssBackupAddComponents = 25
bEventVssPrepareSnapshot = 26
bEventVssCreateSnapshots = 27
bEventVssRestoreLoadComponentMetadata = 28
bEventVssRestoreSetComponentsSelected = 29
bEventVssCloseRestore = 30
bEventVssBackupComplete = 31
bEventType = {
    b"bEventJobStart": bEventJobStart,
    b"bEventJobEnd": bEventJobEnd,
    b"bEventStartBackupJob": bEventStartBackupJob,
    b"bEventEndBackupJob": bEventEndBackupJob,
    b"bEventStartRestoreJob": bEventStartRestoreJob,
    b"bEventEndRestoreJob": bEventEndRestoreJob,
    b"bEventStartVerifyJob": bEventStartVerifyJob,
    b"bEventEndVerifyJob": bEventEndVerifyJob,
    b"bEventBackupCommand": bEventBackupCommand,
    b"bEventRestoreCommand": bEventRestoreCommand,
    b"bEventEstimateCommand": bEventEstimateCommand,
    b"bEventLevel": bEventLevel,
    b"bEventSince": bEventSince,
    b"bEventCancelCommand": bEventCancelCommand,
    b"bEventRestoreObject": bEventRestoreObject,
    b"bEventEndFileSet": bEventEndFileSet,
    b"bEventPluginCommand": bEventPluginCommand,
    b"bEventOptionPlugin": bEventOptionPlugin,
    b"bEventHandleBackupFile": bEventHandleBackupFile,
    b"bEventNewPluginOptions": bEventNewPluginOptions,
    b"bEventVssInitializeForBackup": bEventVssInitializeForBackup,
    b"bEventVssInitializeForRestore": bEventVssInitializeForRestore,
    b"bEventVssSetBackupState": bEventVssSetBackupState,
    b"bEventVssPrepareForBackup": bEventVssPrepareForBackup,
    b"bEventVssBackupAddComponents": bEventVssBackupAddComponents,
    b"bEventVssPrepareSnapshot": bEventVssPrepareSnapshot,
    b"bEventVssCreateSnapshots": bEventVssCreateSnapshots,
    b"bEventVssRestoreLoadComponentMetadata": bEventVssRestoreLoadComponentMetadata,
    b"bEventVssRestoreSetComponentsSelected": bEventVssRestoreSetComponentsSelected,
    b"bEventVssCloseRestore": bEventVssCloseRestore,
    b"bEventVssBackupComplete": bEventVssBackupComplete,
}

# --- file types (include/filetypes.h) --------------------------------------------------------
FT_LNKSAVED = 1
FT_REGE = 2
FT_REG = 3
FT_LNK = 4
FT_DIREND = 5
FT_SPEC = 6
FT_NOACCESS = 7
FT_NOFOLLOW = 8
FT_NOSTAT = 9
FT_NOCHG = 10
FT_DIRNOCHG = 11
FT_ISARCH = 12
FT_NORECURSE = 13
FT_NOFSCHG = 14
FT_NOOPEN = 15
FT_RAW = 16
FT_FIFO = 17
FT_DIRBEGIN = 18
FT_INVALIDFS = 19
FT_INVALIDDT = 20
FT_REPARSE = 21
FT_PLUGIN = 22
FT_DELETED = 23
FT_BASE = 24
FT_RESTORE_FIRST = 25
FT_JUNCTION = 26
FT_PLUGIN_CONFIG = 27
FT_PLUGIN_CONFIG_FILLED = 28
bFileType = {
    b"FT_LNKSAVED": FT_LNKSAVED,
    b"FT_REGE": FT_REGE,
    b"FT_REG": FT_REG,
    b"FT_LNK": FT_LNK,
    b"FT_DIREND": FT_DIREND,
    b"FT_SPEC": FT_SPEC,
    b"FT_NOACCESS": FT_NOACCESS,
    b"FT_NOFOLLOW": FT_NOFOLLOW,
    b"FT_NOSTAT": FT_NOSTAT,
    b"FT_NOCHG": FT_NOCHG,
    b"FT_DIRNOCHG": FT_DIRNOCHG,
    b"FT_ISARCH": FT_ISARCH,
    b"FT_NORECURSE": FT_NORECURSE,
    b"FT_NOFSCHG": FT_NOFSCHG,
    b"FT_NOOPEN": FT_NOOPEN,
    b"FT_RAW": FT_RAW,
    b"FT_FIFO": FT_FIFO,
    b"FT_DIRBEGIN": FT_DIRBEGIN,
    b"FT_INVALIDFS": FT_INVALIDFS,
    b"FT_INVALIDDT": FT_INVALIDDT,
    b"FT_REPARSE": FT_REPARSE,
    b"FT_PLUGIN": FT_PLUGIN,
    b"FT_DELETED": FT_DELETED,
    b"FT_BASE": FT_BASE,
    b"FT_RESTORE_FIRST": FT_RESTORE_FIRST,
    b"FT_JUNCTION": FT_JUNCTION,
    b"FT_PLUGIN_CONFIG": FT_PLUGIN_CONFIG,
    b"FT_PLUGIN_CONFIG_FILLED": FT_PLUGIN_CONFIG_FILLED,
}

# --- create_file outcomes (include/bc_types.h) -----------------------------------------------
CF_SKIP = 1
CF_ERROR = 2
CF_EXTRACT = 3
CF_CREATED = 4
CF_CORE = 5
bCFs = {
    b"CF_SKIP": CF_SKIP,
    b"CF_ERROR": CF_ERROR,
    b"CF_EXTRACT": CF_EXTRACT,
    b"CF_CREATED": CF_CREATED,
    b"CF_CORE": CF_CORE,
}

# --- plugin_io functions and status ----------------------------------------------------------
IO_OPEN = 1
IO_READ = 2
IO_WRITE = 3
IO_CLOSE = 4
IO_SEEK = 5
bIOPS = {b"IO_OPEN": IO_OPEN, b"IO_READ": IO_READ, b"IO_WRITE": IO_WRITE, b"IO_CLOSE": IO_CLOSE,
         b"IO_SEEK": IO_SEEK}
iostat_error = -1
iostat_do_in_plugin = 0
iostat_do_in_core = 1
bIOPstatus = {b"iostat_error": iostat_error, b"iostat_do_in_plugin": iostat_do_in_plugin,
              b"iostat_do_in_core": iostat_do_in_core}

# --- levels: string values, while GetValue(bVarLevel) returns the int char code ---------------
L_FULL = "F"
L_INCREMENTAL = "I"
L_DIFFERENTIAL = "D"
L_SINCE = "S"
L_VERIFY_CATALOG = "C"
L_VERIFY_INIT = "V"
L_VERIFY_VOLUME_TO_CATALOG = "O"
L_VERIFY_DISK_TO_CATALOG = "d"
L_VERIFY_DATA = "A"
L_BASE = "B"
L_NONE = " "
L_VIRTUAL_FULL = "f"
bLevels = {
    b"L_FULL": L_FULL,
    b"L_INCREMENTAL": L_INCREMENTAL,
    b"L_DIFFERENTIAL": L_DIFFERENTIAL,
    b"L_SINCE": L_SINCE,
    b"L_VERIFY_CATALOG": L_VERIFY_CATALOG,
    b"L_VERIFY_INIT": L_VERIFY_INIT,
    b"L_VERIFY_VOLUME_TO_CATALOG": L_VERIFY_VOLUME_TO_CATALOG,
    b"L_VERIFY_DISK_TO_CATALOG": L_VERIFY_DISK_TO_CATALOG,
    b"L_VERIFY_DATA": L_VERIFY_DATA,
    b"L_BASE": L_BASE,
    b"L_NONE": L_NONE,
    b"L_VIRTUAL_FULL": L_VIRTUAL_FULL,
}

# FOPTS_BYTES: SavePacket.flags is a bytearray of this many bytes (34 option bits).
FOPTS_BYTES = 5

_S_IFREG = 0o100000
_U16, _U32, _U64 = 1 << 16, 1 << 32, 1 << 64


# --- CPython member emulation ----------------------------------------------------------------
class _Member:
    """A struct member with CPython ``PyMemberDef`` semantics (T_OBJECT/T_INT/T_BOOL/T_STRING)."""

    def __init__(self, kind: str, bits: int = 0, unsigned: bool = False) -> None:
        self.kind = kind
        self.bits = bits
        self.unsigned = unsigned
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.__dict__.get(self.name)

    def convert(self, value: Any) -> Any:
        """Value as the C struct would store it; TypeError like CPython's member setter."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError("attribute value type must be bool")
            return value
        if self.kind == "int":
            if not isinstance(value, int):
                raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
            v = int(value)
            if self.unsigned and self.bits:
                return v % (1 << self.bits)
            return v
        if self.kind == "str":
            if value is not None and not isinstance(value, str):
                raise TypeError("readonly attribute")
            return value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        if self.kind == "str":
            raise TypeError("readonly attribute")
        obj.__dict__[self.name] = self.convert(value)

    def __delete__(self, obj: Any) -> None:
        if self.kind == "object":
            obj.__dict__[self.name] = None
            return
        if self.kind == "str":
            raise TypeError("readonly attribute")
        raise TypeError("can't delete numeric/char attribute")


def _obj() -> _Member:
    return _Member("object")


def _int(bits: int = 0, unsigned: bool = False) -> _Member:
    return _Member("int", bits, unsigned)


def _bool() -> _Member:
    return _Member("bool")


def _rostr() -> _Member:
    return _Member("str")


class _Packet:
    """Common base: members live in ``__dict__``; unknown attributes are refused like C types."""

    _fields: Tuple[str, ...] = ()

    def _init(self, **values: Any) -> None:
        for name, value in values.items():
            member = type(self).__dict__[name]
            self.__dict__[name] = member.convert(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)

    @classmethod
    def _fdsim_make(cls, **values: Any) -> Any:
        """Build a packet the way the C side does, read-only members included."""
        pkt = cls.__new__(cls)
        pkt._init(**values)
        return pkt


def _repr_str(v: Any) -> str:
    return '""' if v is None else f'"{v}"'


def _flag_bits(flags: Any) -> str:
    if not isinstance(flags, (bytes, bytearray)):
        return ""
    return "".join("1" if flags[n >> 3] & (1 << (n & 7)) else "0" for n in range(min(34, len(flags) * 8)))


class StatPacket(_Packet):
    """``bareosfd.StatPacket``: constructor keywords lack the ``st_`` prefix."""

    _fields = ("st_dev", "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
               "st_atime", "st_mtime", "st_ctime", "st_blksize", "st_blocks")
    st_dev = _int(32, True)
    st_ino = _int(64, True)
    st_mode = _int(16, True)
    st_nlink = _int(16, True)
    st_uid = _int(32, True)
    st_gid = _int(32, True)
    st_rdev = _int(32, True)
    st_size = _int(64, True)
    st_atime = _int()
    st_mtime = _int()
    st_ctime = _int()
    st_blksize = _int(32, True)
    st_blocks = _int(64, True)

    def __init__(self, dev: int = 0, ino: int = 0, mode: int = _S_IFREG | 0o700, nlink: int = 0,  # noqa: PLR0917
                 uid: int = 0, gid: int = 0, rdev: int = 0, size: int = -1, atime: int | None = None,
                 mtime: int | None = None, ctime: int | None = None, blksize: int = 4096,
                 blocks: int = 1) -> None:
        now = int(time.time())
        self._init(st_dev=dev, st_ino=ino, st_mode=mode, st_nlink=nlink, st_uid=uid, st_gid=gid,
                   st_rdev=rdev, st_size=size, st_atime=now if atime is None else atime,
                   st_mtime=now if mtime is None else mtime, st_ctime=now if ctime is None else ctime,
                   st_blksize=blksize, st_blocks=blocks)

    def __repr__(self) -> str:
        return (f"StatPacket(dev={self.st_dev}, ino={self.st_ino}, mode={self.st_mode & 0o7777:04o}, "
                f"nlink={self.st_nlink}, uid={self.st_uid}, gid={self.st_gid}, rdev={self.st_rdev}, "
                f"size={self.st_size}, atime={self.st_atime}, mtime={self.st_mtime}, "
                f"ctime={self.st_ctime}, blksize={self.st_blksize}, blocks={self.st_blocks})")


class SavePacket(_Packet):
    """``bareosfd.SavePacket`` (no ``statp`` constructor keyword, ``cmd`` read-only)."""

    _fields = ("fname", "link", "statp", "type", "flags", "no_read", "portable", "accurate_found",
               "cmd", "save_time", "delta_seq", "object_name", "object", "object_len", "object_index")
    fname = _obj()
    link = _obj()
    statp = _obj()
    type = _int()
    flags = _obj()
    no_read = _bool()
    portable = _bool()
    accurate_found = _bool()
    cmd = _rostr()
    save_time = _int(64, True)
    delta_seq = _int(32, True)
    object_name = _obj()
    object = _obj()
    object_len = _int()
    object_index = _int()

    def __init__(self, fname: Any = None, link: Any = None, type: int = 0, flags: Any = None,  # noqa: PLR0917
                 no_read: bool = False, portable: bool = False, accurate_found: bool = False,
                 cmd: str | None = None, save_time: int = 0, delta_seq: int = 0,
                 object_name: Any = None, object: Any = None, object_len: int = 0,
                 object_index: int = 0) -> None:
        self._init(fname=fname, link=link, statp=None, type=type, flags=flags, no_read=no_read,
                   portable=portable, accurate_found=accurate_found, cmd=cmd, save_time=save_time,
                   delta_seq=delta_seq, object_name=object_name, object=object, object_len=object_len,
                   object_index=object_index)

    def __repr__(self) -> str:
        return (f"SavePacket(fname={_repr_str(self.fname)}, link={_repr_str(self.link)}, type={self.type}, "
                f"flags={_flag_bits(self.flags)}, no_read={int(self.no_read)}, "
                f"portable={int(self.portable)}, accurate_found={int(self.accurate_found)}, "
                f"cmd={_repr_str(self.cmd)}, save_time={self.save_time}, delta_seq={self.delta_seq}, "
                f"object_name={_repr_str(self.object_name)}, object={self.object!r}, "
                f"object_len={self.object_len}, object_index={self.object_index})")


class RestorePacket(_Packet):
    """``bareosfd.RestorePacket`` with the odd spellings ``linkFI``, ``attrEX``, ``regexwhere``."""

    _fields = ("stream", "data_stream", "type", "file_index", "linkFI", "uid", "statp", "attrEX",
               "ofname", "olname", "where", "regexwhere", "replace", "create_status", "filedes")
    stream = _int()
    data_stream = _int()
    type = _int()
    file_index = _int()
    linkFI = _int()
    uid = _int(32, True)
    statp = _obj()
    attrEX = _rostr()
    ofname = _rostr()
    olname = _rostr()
    where = _rostr()
    regexwhere = _rostr()
    replace = _int()
    create_status = _int()
    filedes = _int()

    def __init__(self, stream: int = 0, data_stream: int = 0, type: int = 0,  # noqa: PLR0917
                 file_index: int = 0, linkFI: int = 0, uid: int = 0, statp: Any = None,
                 attrEX: str | None = None, ofname: str | None = None,
                 olname: str | None = None, where: str | None = None,
                 regexwhere: str | None = None, replace: int = 0, create_status: int = 0) -> None:
        self._init(stream=stream, data_stream=data_stream, type=type, file_index=file_index,
                   linkFI=linkFI, uid=uid, statp=statp, attrEX=attrEX, ofname=ofname, olname=olname,
                   where=where, regexwhere=regexwhere, replace=replace, create_status=create_status,
                   filedes=0)

    def __repr__(self) -> str:
        return (f"RestorePacket(stream={self.stream}, data_stream={self.data_stream}, type={self.type}, "
                f"file_index={self.file_index}, linkFI={self.linkFI}, uid={self.uid}, "
                f"statp={self.statp!r}, attrEx={_repr_str(self.attrEX)}, ofname={_repr_str(self.ofname)}, "
                f"olname={_repr_str(self.olname)}, where={_repr_str(self.where)}, "
                f"RegexWhere={_repr_str(self.regexwhere)}, replace={self.replace}, "
                f"create_status={self.create_status}, filedes={self.filedes})")


class IoPacket(_Packet):
    """``bareosfd.IoPacket``; do-in-core is requested through ``status`` (no separate field)."""

    _fields = ("func", "count", "flags", "mode", "buf", "fname", "status", "io_errno", "lerror",
               "whence", "offset", "win32", "filedes")
    func = _int(16, True)
    count = _int()
    flags = _int()
    mode = _int()
    buf = _obj()
    fname = _rostr()
    status = _int()
    io_errno = _int()
    lerror = _int()
    whence = _int()
    offset = _int()
    win32 = _bool()
    filedes = _int()

    def __init__(self, func: int = 0, count: int = 0, flags: int = 0, mode: int = 0, buf: Any = None,  # noqa: PLR0917
                 fname: str | None = None, status: int = 0, io_errno: int = 0, lerror: int = 0,
                 whence: int = 0, offset: int = 0, win32: bool = False, filedes: int = -1) -> None:
        self._init(func=func, count=count, flags=flags, mode=mode, buf=buf, fname=fname, status=status,
                   io_errno=io_errno, lerror=lerror, whence=whence, offset=offset, win32=win32,
                   filedes=filedes)

    def __repr__(self) -> str:
        return (f"IoPacket(func={self.func}, count={self.count}, flags={self.flags}, mode={self.mode:04o}, "
                f"buf={self.buf!r}, fname={_repr_str(self.fname)}, status={self.status}, "
                f"io_errno={self.io_errno}, lerror={self.lerror}, whence={self.whence}, "
                f"offset={self.offset}, win32={int(self.win32)}, filedes={self.filedes})")


class AclPacket(_Packet):
    """``bareosfd.AclPacket``: ``content`` must be a bytearray when the core reads it back."""

    _fields = ("fname", "content")
    fname = _rostr()
    content = _obj()

    def __init__(self, fname: str | None = None, content: Any = None) -> None:
        self._init(fname=fname, content=content)

    def __repr__(self) -> str:
        return f"AclPacket(fname={_repr_str(self.fname)}, content={self.content!r})"


class XattrPacket(_Packet):
    """``bareosfd.XattrPacket``: one name/value pair per ``get_xattr``/``set_xattr`` call."""

    _fields = ("fname", "name", "value")
    fname = _rostr()
    name = _obj()
    value = _obj()

    def __init__(self, fname: str | None = None, name: Any = None, value: Any = None) -> None:
        self._init(fname=fname, name=name, value=value)

    def __repr__(self) -> str:
        return f"XattrPacket(fname={_repr_str(self.fname)}, name={self.name!r}, value={self.value!r})"


class RestoreObject(_Packet):
    """``bareosfd.RestoreObject`` as delivered to ``restore_object_data``."""

    _fields = ("object_name", "object", "plugin_name", "object_type", "object_len", "object_full_len",
               "object_index", "object_compression", "stream", "jobid")
    object_name = _obj()
    object = _obj()
    plugin_name = _rostr()
    object_type = _int()
    object_len = _int()
    object_full_len = _int()
    object_index = _int()
    object_compression = _int()
    stream = _int()
    jobid = _int(32, True)

    def __init__(self, object_name: Any = None, object: Any = None,  # noqa: PLR0917
                 plugin_name: str | None = None, object_type: int = 0, object_len: int = 0,
                 object_full_len: int = 0, object_index: int = 0, object_compression: int = 0,
                 stream: int = 0, jobid: int = 0) -> None:
        self._init(object_name=object_name, object=object, plugin_name=plugin_name,
                   object_type=object_type, object_len=object_len, object_full_len=object_full_len,
                   object_index=object_index, object_compression=object_compression, stream=stream,
                   jobid=jobid)

    def __repr__(self) -> str:
        return (f"RestoreObject(object_name={_repr_str(self.object_name)}, object={self.object!r}, "
                f"plugin_name={_repr_str(self.plugin_name)}, object_type={self.object_type}, "
                f"object_len={self.object_len}, object_full_len={self.object_full_len}, "
                f"object_index={self.object_index}, object_compression={self.object_compression}, "
                f"stream={self.stream}, jobid={self.jobid})")


# --- link to the core ------------------------------------------------------------------------
class _CoreLink(Protocol):
    def core(self, name: str, *args: Any) -> Any: ...


_context = threading.local()


def _fdsim_bind(link: _CoreLink | None) -> None:
    """Attach (or detach) the calling thread to the job's core link (fdsim guest only)."""
    _context.link = link


def _core(func: str, *args: Any) -> Any:
    link: _CoreLink | None = getattr(_context, "link", None)
    if link is None:
        raise RuntimeError(f"{func}: plugin_ctx is unset")
    return link.core(func, *args)


def _need_int(func: str, value: Any, what: int) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{func}() argument {what} must be int, not {type(value).__name__}")
    return int(value)


def _opt_str(func: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{func}() argument 2 must be str or None, not {type(value).__name__}")
    return value


def GetValue(var: int) -> Any:
    """Read a core variable (bVariable); unknown ids give None."""
    return _core("GetValue", _need_int("GetValue", var, 1))


def SetValue(var: int, value: Any) -> int:
    """Set bVarSinceTime (int), bVarCheckChanges (True/False) or bVarFileSeen (str)."""
    var = _need_int("SetValue", var, 1)
    if var == bVarCheckChanges:
        return int(_core("SetValue", var, value is True))
    if var == bVarSinceTime:
        return int(_core("SetValue", var, _need_int("SetValue", value, 2)))
    if var == bVarFileSeen:
        if not isinstance(value, str):
            raise TypeError("SetValue() bVarFileSeen needs a str")
        return int(_core("SetValue", var, value))
    _core("DebugMessage", 150, f"SetValue: unknown variable {var}\n")
    return bRC_Error


def DebugMessage(level: int, msg: str | None = None) -> None:
    """Debug/trace output of the fd (kept by fdsim with its level)."""
    _core("DebugMessage", _need_int("DebugMessage", level, 1), _opt_str("DebugMessage", msg) or "")


def JobMessage(type: int, msg: str | None = None) -> None:
    """Job log message; M_FATAL fails the job, M_ERROR/M_WARNING count errors/warnings."""
    _core("JobMessage", _need_int("JobMessage", type, 1), _opt_str("JobMessage", msg) or "")


def _event_ids(func: str, seq: Iterable[Any]) -> List[int]:
    return [_need_int(func, e, 1) for e in seq]


def RegisterEvents(seq: Iterable[Any]) -> int:
    """Register event ids; out-of-range ids are silently skipped."""
    return int(_core("RegisterEvents", _event_ids("RegisterEvents", seq)))


def UnRegisterEvents(seq: Iterable[Any]) -> int:
    """Unregister event ids."""
    return int(_core("UnRegisterEvents", _event_ids("UnRegisterEvents", seq)))


def GetInstanceCount() -> int | None:
    """Number of instances of this plugin."""
    return _core("GetInstanceCount")  # type: ignore[no-any-return]


def AddExclude(path: str) -> int:
    """Add an exclude entry to the fd-side fileset."""
    return int(_core("AddExclude", str(path)))


def AddInclude(path: str) -> int:
    """Add an include entry to the fd-side fileset."""
    return int(_core("AddInclude", str(path)))


def AddOptions(opts: str) -> int:
    """Add fileset option letters."""
    return int(_core("AddOptions", str(opts)))


def AddRegex(item: str, type: int) -> int:
    """Add a regex to the current options block."""
    return int(_core("AddRegex", str(item), _need_int("AddRegex", type, 2)))


def AddWild(item: str, type: int) -> int:
    """Add a wildcard to the current options block."""
    return int(_core("AddWild", str(item), _need_int("AddWild", type, 2)))


def NewOptions() -> int:
    """Start a new options block."""
    return int(_core("NewOptions"))


def NewInclude() -> int:
    """Start a new include block."""
    return int(_core("NewInclude"))


def NewPreInclude() -> int:
    """Start a new pre-include block."""
    return int(_core("NewPreInclude"))


def CheckChanges(savepkt: SavePacket) -> int:
    """The core's change check; like 25.1 it ignores ``statp`` (acknowledged bug)."""
    if not isinstance(savepkt, SavePacket):
        raise TypeError("CheckChanges() argument must be SavePacket")
    rc, delta_seq, found = _core("CheckChanges", savepkt.type, savepkt.fname, savepkt.link,
                                 savepkt.save_time)
    savepkt.__dict__["delta_seq"] = delta_seq
    savepkt.__dict__["accurate_found"] = bool(found)
    return int(rc)


def AcceptFile(savepkt: SavePacket) -> int:
    """bRC_OK if the Include/Exclude rules would save the file, else bRC_Skip."""
    if not isinstance(savepkt, SavePacket) or not isinstance(savepkt.statp, StatPacket):
        raise TypeError("AcceptFile() needs a SavePacket with fname and statp")
    return int(_core("AcceptFile", savepkt.fname))


def SetSeenBitmap(all: Any, fname: str | None = None) -> int:
    """Mark all names (all=True) or one name as seen (accurate jobs only)."""
    return int(_core("SetSeenBitmap", bool(all), fname))


def ClearSeenBitmap(all: Any, fname: str | None = None) -> int:
    """Clear the seen mark of all names or of one name (accurate jobs only)."""
    return int(_core("ClearSeenBitmap", bool(all), fname))


# The real module exports a capsule for its C API; plugins never use it.
_C_API = object()

__all__ = [name for name in list(globals()) if not name.startswith("_")
           and name not in {"annotations", "threading", "time", "Any", "Iterable", "List",
                            "Optional", "Protocol", "Tuple"}]
