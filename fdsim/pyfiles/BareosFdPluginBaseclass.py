# mypy: disable-error-code="no-any-return"
# (bareosfd is typed as Any for mypy: its constants are Any here.)
"""fdsim's rendition of Bareos' ``BareosFdPluginBaseclass`` pyfile (Release/25.1.0 behaviour).

Reproduced from the reference (§1.3, §5.3) rather than copied: option parsing with ``\\:``
escapes, first-wins accumulation across calls, ``defaults_file``/``overrides_file`` relative to
the fd config dir, ``key#enc`` base85 values, mandatory options, the events it registers and
the default answers of each callback (``start_backup_file`` -> bRC_Stop, ``create_file`` ->
CF_CORE, ...), including its quirk of returning ``False`` (== bRC_OK) when an options file
cannot be read.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from base64 import b85decode
from typing import Any, Dict, List

import bareosfd

# The real base class star-imports bareosfd, so plugins that star-import the base class module
# get every constant through it; keep that.
from bareosfd import *  # noqa: F403
from bareosfd import (
    CF_CORE,
    IO_CLOSE,
    IO_OPEN,
    IO_READ,
    IO_SEEK,
    IO_WRITE,
    M_ERROR,
    M_FATAL,
    M_WARNING,
    bEventEndBackupJob,
    bEventEndFileSet,
    bEventHandleBackupFile,
    bEventJobEnd,
    bEventStartBackupJob,
    bEventStartRestoreJob,
    bRC_Error,
    bRC_OK,
    bRC_Stop,
    bVarClient,
    bVarFDName,
    bVarJobId,
    bVarJobName,
    bVarLevel,
    bVarSinceTime,
    bVarUsedConfig,
    bVarWorkingDir,
)


def parse_plugindef_string(plugindef: str) -> Dict[str, str]:
    """Split ``k=v:k2=v2:`` into a dict; ``\\:`` continues a value, first occurrence wins."""
    options: Dict[str, str] = {}
    parts = plugindef.split(":")
    while parts:
        raw_key, _, raw_val = parts.pop(0).partition("=")
        key, val = raw_key.strip(), raw_val.strip()
        if not key:
            continue
        if not val:
            bareosfd.JobMessage(M_WARNING, f"ignoring option '{key}' with no value!\n")
            continue
        while val.endswith("\\"):
            val = val[:-1] + ":" + parts.pop(0)
        options.setdefault(key, val)
    return options


def parse_options_file(path: str) -> Dict[str, str]:
    """Read ``key=value`` lines; comments ``#``/``;``/``[``, trailing ``\\`` continues a line."""
    bareosfd.DebugMessage(100, f'reading options from file "{path}"\n')
    options: Dict[str, str] = {}
    with open(path) as fp:
        lines = fp.readlines()
    while lines:
        line = lines.pop(0)
        raw_key, _, raw_val = line.partition("=")
        key, val = raw_key.strip(), raw_val.strip()
        if not key and not val:
            continue
        if key.startswith(("#", ";", "[")):
            continue
        if not key or not val:
            bareosfd.JobMessage(M_FATAL, f"error parsing '{line.strip()}' (found no key or value)!\n")
            return {}
        while val.endswith("\\"):
            val = val[:-1] + lines.pop(0).strip()
        if key in options:
            bareosfd.JobMessage(M_WARNING, f"duplicate option '{key}' overriding previous value!\n")
        options[key] = val
    return options


def get_config_path() -> str:
    """Directory that options files are relative to, derived from ``bVarUsedConfig``."""
    used_config = bareosfd.GetValue(bVarUsedConfig)
    if used_config.endswith("/*/*.conf"):
        path = used_config[:-8]
    elif os.path.isfile(used_config):
        path = os.path.dirname(used_config)
    else:
        return "/"
    return path if os.path.isdir(path) else "/"


def transform_value(value: str, transform: str) -> str:
    """Decode ``key#enc=<base85>`` values."""
    if transform == "enc":
        return b85decode(value).decode("utf-8")
    raise NameError("unknown transformation")


class BareosFdPluginBaseclass:
    """Bareos python plugin base class."""

    def __init__(self, plugindef: str, mandatory_options: List[str] | None = None) -> None:
        bareosfd.DebugMessage(100, f"Constructor called in module {__name__} with plugindef={plugindef}\n")
        bareosfd.DebugMessage(100, f"{__name__}::__init__:  sys.path={sys.path}\n")
        bareosfd.RegisterEvents([bEventJobEnd, bEventEndBackupJob, bEventEndFileSet, bEventHandleBackupFile,
                                 bEventStartBackupJob, bEventStartRestoreJob])
        self.fdname = bareosfd.GetValue(bVarFDName)
        self.jobId = bareosfd.GetValue(bVarJobId)
        self.client = bareosfd.GetValue(bVarClient)
        self.since = bareosfd.GetValue(bVarSinceTime)
        self.level = bareosfd.GetValue(bVarLevel)
        self.jobName = bareosfd.GetValue(bVarJobName)
        # Job names look like myName.2020-05-12_11.35.27_05: the short name is left of the date.
        self.shortName = self.jobName.rsplit(".", 3)[0]
        self.workingdir = bareosfd.GetValue(bVarWorkingDir)
        self.configdir = get_config_path()
        self.startTime = int(time.time())
        self.FNAME = "undef"
        self.filetype = "undef"
        self.file: Any = None
        self.mandatory_options = mandatory_options
        bareosfd.DebugMessage(100, f"FDName = {self.fdname}\n")
        bareosfd.DebugMessage(100, f"WorkingDir: {self.workingdir}\n")
        bareosfd.DebugMessage(100, f"JobId: {self.jobId}\n")

    def __str__(self) -> str:
        return (f"<{self.__class__}:fdname={self.fdname} jobId={self.jobId} client={self.client} "
                f"since={self.since} level={chr(self.level)} jobName={self.jobName} "
                f"workingDir={self.workingdir}>")

    # -- options ---------------------------------------------------------------------------------
    def _load_options_from_file(self, option_dict: Dict[str, str], key: str) -> Dict[str, str]:
        if key not in option_dict:
            return {}
        if not hasattr(self, "configdir"):
            self.configdir = get_config_path()
            bareosfd.JobMessage(M_WARNING, "Plugin did not call BareosFdPluginBaseclass.__init__()")
        path = os.path.join(self.configdir, option_dict[key])
        try:
            options = parse_options_file(path)
        except OSError as e:
            bareosfd.JobMessage(M_FATAL, f"While loading options file '{option_dict[key]}': {e}")
            raise
        del option_dict[key]
        return options

    def _add_options(self, options: Dict[str, str]) -> None:
        for raw_key, raw_value in options.items():
            key, value = raw_key, raw_value
            key_name, _, transform = raw_key.partition("#")
            if transform:
                key = key_name
                try:
                    value = transform_value(raw_value, transform)
                except Exception as e:
                    raise ValueError(f"Transformation {transform} of value '{raw_value}' for key "
                                     f"{key_name} failed: {e}") from e
            if key not in self.options:
                bareosfd.DebugMessage(100, f'key:value = "{key}:{value}"\n')
                self.options[key] = value

    def parse_plugin_definition(self, plugindef: str) -> int:
        """Accumulate options (earlier values are never overwritten), then check them."""
        bareosfd.DebugMessage(100, f'plugin def parser called with "{plugindef}"\n')
        if not hasattr(self, "options"):
            self.options: Dict[str, str] = {}
        plugindef_options = parse_plugindef_string(plugindef)
        try:
            default_options = self._load_options_from_file(plugindef_options, "defaults_file")
            override_options = self._load_options_from_file(plugindef_options, "overrides_file")
        except OSError:
            return False  # the real base class returns False (== bRC_OK); the M_FATAL fails the job
        effective = {}
        effective.update(default_options)
        effective.update(plugindef_options)
        effective.update(override_options)
        try:
            self._add_options(effective)
        except ValueError as e:
            bareosfd.JobMessage(M_FATAL, str(e))
            return False
        return self.check_options(self.mandatory_options)

    def check_options(self, mandatory_options: List[str] | None = None) -> int:
        """Verify that the mandatory options are set."""
        if mandatory_options is None:
            return bRC_OK
        for option in mandatory_options:
            if option not in self.options:
                bareosfd.DebugMessage(100, f"Mandatory option '{option}' not defined.\n")
                bareosfd.JobMessage(M_FATAL, f"Mandatory option '{option}' not defined.\n")
                return bRC_Error
            bareosfd.DebugMessage(100, f"Using Option {option}={self.options[option]}\n")
        return bRC_OK

    # -- I/O on local files --------------------------------------------------------------------
    def plugin_io_open(self, IOP: Any) -> int:
        self.FNAME = IOP.fname
        if os.path.isdir(self.FNAME):
            self.fileType = "FT_DIR"
            return bRC_OK
        if os.path.islink(self.FNAME):
            self.fileType = "FT_LNK"
            return bRC_OK
        if os.path.exists(self.FNAME) and stat.S_ISFIFO(os.stat(self.FNAME).st_mode):
            self.fileType = "FT_FIFO"
            return bRC_OK
        self.fileType = "FT_REG"
        try:
            if IOP.flags & (os.O_CREAT | os.O_WRONLY):
                dirname = os.path.dirname(self.FNAME)
                if not os.path.exists(dirname):
                    os.makedirs(dirname)
                self.file = open(self.FNAME, "wb")  # noqa: SIM115  # closed in plugin_io_close
            else:
                self.file = open(self.FNAME, "rb")  # noqa: SIM115  # closed in plugin_io_close
        except Exception:
            IOP.status = -1
            return bRC_Error
        return bRC_OK

    def plugin_io_close(self, IOP: Any) -> int:
        if self.fileType == "FT_REG":
            self.file.close()
        return bRC_OK

    def plugin_io_seek(self, IOP: Any) -> int:
        return bRC_OK

    def plugin_io_read(self, IOP: Any) -> int:
        if self.fileType == "FT_REG":
            IOP.buf = bytearray(IOP.count)
            try:
                IOP.status = self.file.readinto(IOP.buf)
                IOP.io_errno = 0
            except OSError as e:
                bareosfd.JobMessage(M_ERROR, f'Could net read {IOP.count} bytes from file '
                                            f'{self.FNAME}. "{e}"')
                IOP.io_errno = e.errno or 0
                return bRC_Error
        else:
            IOP.buf = bytearray()
            IOP.status = 0
            IOP.io_errno = 0
        return bRC_OK

    def plugin_io_write(self, IOP: Any) -> int:
        try:
            self.file.write(IOP.buf)
        except OSError as e:
            bareosfd.JobMessage(M_ERROR, f'Could net write to file {self.FNAME}. "{e}"')
            IOP.io_errno = e.errno or 0
            IOP.status = 0
            return bRC_Error
        IOP.status = IOP.count
        IOP.io_errno = 0
        return bRC_OK

    def plugin_io(self, IOP: Any) -> Any:
        """Dispatch on ``IOP.func``; ``IOP.fname`` is only set on open, hence ``self.FNAME``."""
        if IOP.func == IO_OPEN:
            return self.plugin_io_open(IOP)
        if IOP.func == IO_CLOSE:
            return self.plugin_io_close(IOP)
        if IOP.func == IO_SEEK:
            return self.plugin_io_seek(IOP)
        if IOP.func == IO_READ:
            return self.plugin_io_read(IOP)
        if IOP.func == IO_WRITE:
            return self.plugin_io_write(IOP)
        return None

    # -- events ----------------------------------------------------------------------------------
    def handle_plugin_event(self, event: int) -> int:
        if event == bEventJobEnd:
            return self.end_job()
        if event == bEventEndBackupJob:
            return self.end_backup_job()
        if event == bEventEndFileSet:
            return self.end_fileset()
        if event == bEventStartBackupJob:
            return self.start_backup_job()
        if event == bEventStartRestoreJob:
            return self.start_restore_job()
        bareosfd.DebugMessage(100, f"handle_plugin_event called with event {event}\n")
        return bRC_OK

    def start_backup_job(self) -> int:
        return bRC_OK

    def end_job(self) -> int:
        return bRC_OK

    def end_backup_job(self) -> int:
        return bRC_OK

    def start_backup_file(self, savepkt: Any) -> int:
        bareosfd.DebugMessage(100, "start_backup called\n")
        return bRC_Stop

    def end_backup_file(self) -> int:
        return bRC_OK

    def end_fileset(self) -> int:
        return bRC_OK

    def start_restore_job(self) -> int:
        return bRC_OK

    def start_restore_file(self, cmd: str) -> int:
        return bRC_OK

    def end_restore_file(self) -> int:
        return bRC_OK

    def restore_object_data(self, ROP: Any) -> int:
        bareosfd.DebugMessage(100, f"restore_object_data called with {ROP}\n")
        return bRC_OK

    def create_file(self, restorepkt: Any) -> int:
        # File creation is left to the core by default.
        restorepkt.create_status = CF_CORE
        return bRC_OK

    def set_file_attributes(self, restorepkt: Any) -> int:
        return bRC_OK

    def check_file(self, fname: str) -> int:
        return bRC_OK

    def handle_backup_file(self, savepkt: Any) -> int:
        return bRC_OK

    def get_acl(self, acl: Any) -> int:
        return bRC_OK

    def set_acl(self, acl: Any) -> int:
        bareosfd.JobMessage(bareosfd.M_INFO, f"my set_acl() entry point in Python called with {acl}\n")
        return bRC_OK

    def get_xattr(self, xattr: Any) -> int:
        return bRC_OK

    def set_xattr(self, xattr: Any) -> int:
        bareosfd.JobMessage(bareosfd.M_INFO, f"my set_xattr() entry point in Python called with {xattr}\n")
        return bRC_OK
