"""Fixtures for the fd emulation tests: a store, and a plugin directory holding the test plugin.

The test plugin (``bareos-fd-testfiles.py``, standard library only) backs up the items of a
JSON spec file, restores them below ``where``, and appends one JSON line per thing it saw
(events, options, packets, restore objects, thread ids) to a log file the test reads back.
Options select its behaviour: ``spec`` (items, and names check_file keeps), ``log``,
``restore_io`` (plugin|core), ``create``
(extract|core), ``keep`` ``fail_at``, ``misbehave``.  Restore-side entries carry
``GetValue(bVarWhere)`` as ``where`` (``var_where`` in ``create_file``, whose ``where`` is the packet's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from fdsim.fd import FdSim

TEST_PLUGIN = r'''
import json
import os
import stat
import threading
import time

import bareosfd
from bareosfd import *
import BareosFdWrapper
from BareosFdWrapper import *  # noqa: F401,F403
from BareosFdPluginBaseclass import BareosFdPluginBaseclass


def make_data(item):
    pattern = item.get("pattern", item["name"]).encode()
    size = item.get("size", 0)
    return (pattern * (size // max(1, len(pattern)) + 1))[:size]


@BareosPlugin
class TestFiles(BareosFdPluginBaseclass):
    def __init__(self, plugindef):
        self.options = {}
        self.logpath = None
        self.parse_strings = []
        super().__init__(plugindef)
        RegisterEvents([bEventCancelCommand, bEventEndRestoreJob])
        self.job_thread = threading.get_ident()
        self.items = None
        self.cur = None
        self.file = None
        self.feeder = None
        self.stop_feeding = threading.Event()
        self.fed = 0  # bytes a do-in-core feeder wrote into its pipe
        self.log_early = [("init", plugindef)]
        self.init_where = GetValue(bVarWhere)

    # -- logging ---------------------------------------------------------------------------
    def log(self, kind, **fields):
        fields["kind"] = kind
        if self.logpath is None:
            self.log_early.append((kind, fields))
            return
        with open(self.logpath, "a") as fh:
            fh.write(json.dumps(fields) + "\n")

    def parse_plugin_definition(self, plugindef):
        self.parse_strings.append(plugindef)
        rc = super().parse_plugin_definition(plugindef)
        if self.logpath is None and "log" in self.options:
            self.logpath = self.options["log"]
            for kind, fields in getattr(self, "log_early", []):
                if kind == "init":
                    self.log("init", plugindef=fields, level=GetValue(bVarLevel), type=GetValue(bVarType),
                             where=self.init_where)
        self.log("parse", plugindef=plugindef, options=dict(self.options), where=GetValue(bVarWhere))
        if self.options.get("misbehave") == "slow_parse" and len(self.parse_strings) == 1:
            self.log("slow_parse")
            time.sleep(1.0)  # long enough for a test to cancel the job during the fileset
        if self.options.get("fail_at") == "parse":
            JobMessage(M_FATAL, "parse refused on purpose\n")
            return bRC_Error
        return rc

    def handle_plugin_event(self, event):
        on_job_thread = threading.get_ident() == self.job_thread
        self.log("event", event=event, thread=threading.get_ident(), job_thread=self.job_thread,
                 since=GetValue(bVarSinceTime), level=GetValue(bVarLevel), type=GetValue(bVarType),
                 where=GetValue(bVarWhere) if on_job_thread else "n/a")
        if event == bEventCancelCommand:
            if self.options.get("misbehave") == "slow_cancel":
                # a handler that takes a while (e.g. stops a helper process): the job thread goes on
                self.log("cancel_start", fed=self.fed)
                time.sleep(0.5)
                self.log("cancel_end", fed=self.fed)
            self.stop_feeding.set()
            return bRC_OK
        if event == bEventEndRestoreJob and self.options.get("fail_at") == "end_restore_job_fatal":
            JobMessage(M_FATAL, "end_restore_job failed on purpose\n")
            return bRC_OK
        if event == bEventEndRestoreJob and self.options.get("fail_at") == "end_restore_job_error":
            JobMessage(M_ERROR, "end_restore_job error on purpose\n")
            return bRC_OK
        if event == bEventStartRestoreJob and self.options.get("fail_at") == "start_restore_job_error":
            JobMessage(M_ERROR, "start_restore_job error on purpose\n")
            return bRC_OK
        if event == bEventEndFileSet and self.options.get("fail_at") == "end_fileset":
            JobMessage(M_FATAL, "end_fileset failed on purpose\n")
            return bRC_OK
        if event == bEventStartBackupJob and self.options.get("fail_at") == "start_backup_job":
            JobMessage(M_FATAL, "start_backup_job failed on purpose\n")
            return bRC_OK
        if event == bEventStartBackupJob and self.options.get("fail_at") == "start_backup_job_error":
            JobMessage(M_ERROR, "start_backup_job error on purpose\n")
            return bRC_OK
        if event == bEventStartBackupJob and self.options.get("misbehave") == "thread_message":
            errors = []
            def worker():
                try:
                    JobMessage(M_INFO, "from a plugin thread\n")
                except RuntimeError as exc:
                    errors.append(str(exc))
            t = threading.Thread(target=worker)
            t.start()
            t.join()
            self.log("thread_message", errors=errors)
        return super().handle_plugin_event(event)

    def start_backup_job(self):
        self.load_spec()
        return bRC_OK

    def load_spec(self):
        with open(self.options["spec"]) as fh:
            spec = json.load(fh)
        self.items = spec["items"]
        self.keep = spec.get("keep", [])

    # -- backup ----------------------------------------------------------------------------
    def start_backup_file(self, savepkt):
        if self.items is None:  # estimate: no bEventStartBackupJob
            self.load_spec()
        if not self.items:
            return bRC_Stop
        it = self.cur = self.items[0]
        kind = it.get("kind", "file")
        mis = self.options.get("misbehave", "")
        self.log("start_backup_file", name=it["name"], flags=list(savepkt.flags), cmd=savepkt.cmd,
                 portable=savepkt.portable, fname=savepkt.fname, statp=repr(savepkt.statp))
        if mis == "return_none":
            return None
        if mis == "readonly_cmd":
            savepkt.cmd = "x"
        if mis == "int_no_read":
            savepkt.no_read = 1
        savepkt.fname = it["name"]
        if kind == "object":
            data = it["data"].encode() if "data" in it else make_data(it)
            savepkt.type = it.get("type", FT_RESTORE_FIRST)
            savepkt.object_name = it["name"]
            savepkt.object = bytes(data) if mis == "bytes_object" else bytearray(data)
            savepkt.object_len = len(data)
            savepkt.object_index = it.get("index", 1)
            savepkt.statp = StatPacket()
            return bRC_OK
        if kind == "dir":
            savepkt.type = FT_DIREND
            savepkt.link = it["name"].rstrip("/") + "/"
            savepkt.no_read = True
            savepkt.statp = StatPacket(mode=stat.S_IFDIR | 0o755, size=0, mtime=it.get("mtime", 1000),
                                       ctime=it.get("mtime", 1000))
            return bRC_OK
        savepkt.type = 0 if mis == "zero_type" else FT_REG
        if mis != "no_statp":
            savepkt.statp = StatPacket(size=it.get("size", 0), mtime=it.get("mtime", 1000),
                                       ctime=it.get("mtime", 1000), mode=stat.S_IFREG | 0o640)
        if it.get("sparse"):
            savepkt.flags[0] |= 1 << 5
        return bRC_OK

    def end_backup_file(self):
        self.items.pop(0)
        return bRC_More if self.items else bRC_OK

    def plugin_io(self, iop):
        self.log("io", func=iop.func, count=iop.count, flags=iop.flags, mode=iop.mode,
                 fname=iop.fname, filedes=iop.filedes, offset=iop.offset)
        if iop.func == IO_OPEN:
            self.fname = iop.fname
            if iop.flags & (os.O_WRONLY | os.O_CREAT):
                os.makedirs(os.path.dirname(iop.fname), exist_ok=True)
                if self.options.get("restore_io") == "core":
                    self.fd = os.open(iop.fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    iop.filedes = self.fd
                    iop.status = iostat_do_in_core
                else:
                    self.file = open(iop.fname, "wb")
                    iop.status = iostat_do_in_plugin
                return bRC_OK
            it = self.cur
            self.data = make_data(it)
            self.pos = 0
            if it.get("io") == "core":
                r, w = os.pipe()
                data, endless = self.data, it.get("endless", False)
                throttle = it.get("throttle", False)
                stop = self.stop_feeding
                def feed():
                    with os.fdopen(w, "wb", buffering=0) as out:
                        if endless:
                            while not stop.is_set():
                                out.write(b"x" * 65536)
                                self.fed += 65536
                                if throttle:
                                    time.sleep(0.005)
                        else:
                            out.write(data)
                self.feeder = threading.Thread(target=feed)
                self.feeder.start()
                self.fd = r
                iop.filedes = r
                iop.status = iostat_do_in_core
                self.log("core_open", fd=r)
            else:
                iop.status = iostat_do_in_plugin
            return bRC_OK
        if iop.func == IO_READ:
            mis = self.options.get("misbehave", "")
            if self.cur.get("endless"):  # plugin mode: data for as long as the core asks
                time.sleep(0.005)
                iop.buf = bytearray(b"y" * iop.count)
                iop.status = iop.count
                return bRC_OK
            chunk = self.data[self.pos:self.pos + iop.count]
            self.pos += len(chunk)
            if mis == "str_buf" and chunk:
                iop.buf = "not bytes"
            elif mis == "short_buf" and chunk:
                iop.buf = bytearray(chunk[:1])
            else:
                iop.buf = bytearray(chunk)
            iop.status = len(chunk)
            return bRC_OK
        if iop.func == IO_WRITE:
            self.file.write(iop.buf)
            iop.status = iop.count
            return bRC_OK
        if iop.func == IO_SEEK:
            if self.file is not None:
                self.file.seek(iop.offset, iop.whence)
            else:
                os.lseek(self.fd, iop.offset, iop.whence)
            return bRC_OK
        if iop.func == IO_CLOSE:
            if self.feeder is not None:
                self.stop_feeding.set()
                os.close(self.fd)
                self.feeder.join()
                self.feeder = None
            elif self.file is not None:
                self.file.close()
                self.file = None
            elif iop.flags == 0 and self.options.get("restore_io") == "core" and iop.filedes > 0:
                os.close(iop.filedes)
            return bRC_OK
        return bRC_OK

    def get_acl(self, acl):
        if self.cur and self.cur.get("acl"):
            acl.content = bytearray(self.cur["acl"].encode())
        return bRC_OK

    def get_xattr(self, xattr):
        if self.cur and self.cur.get("xattr") and not getattr(self, "xattr_done", False):
            xattr.name = bytearray(b"user.test")
            xattr.value = bytearray(self.cur["xattr"].encode())
            self.xattr_done = True
            return bRC_More
        self.xattr_done = False
        return bRC_OK

    def check_file(self, fname):
        keep = getattr(self, "keep", [])
        self.log("check_file", fname=fname)
        return bRC_Seen if fname in keep else bRC_OK

    # -- restore ---------------------------------------------------------------------------
    def restore_object_data(self, rop):
        self.log("restore_object", name=rop.object_name, data=bytes(rop.object).decode("latin-1"),
                 jobid=rop.jobid, plugin_name=rop.plugin_name, object_len=rop.object_len,
                 compression=rop.object_compression, type=rop.object_type,
                 is_bytearray=isinstance(rop.object, bytearray), level=GetValue(bVarLevel),
                 index=rop.object_index, where=GetValue(bVarWhere))
        return bRC_OK

    def start_restore_file(self, cmd):
        self.log("start_restore_file", cmd=cmd, options=dict(self.options), where=GetValue(bVarWhere))
        if self.options.get("misbehave") == "slow_restore":
            time.sleep(0.3)  # long enough for a test to cancel the restore
        return bRC_OK

    def create_file(self, restorepkt):
        self.log("create_file", ofname=restorepkt.ofname, where=restorepkt.where, type=restorepkt.type,
                 replace=restorepkt.replace, size=restorepkt.statp.st_size, olname=restorepkt.olname,
                 create_status=restorepkt.create_status, regexwhere=restorepkt.regexwhere,
                 var_where=GetValue(bVarWhere))
        if self.options.get("create", "extract") == "core":
            restorepkt.create_status = CF_CORE
        elif restorepkt.type == FT_DIREND:
            os.makedirs(restorepkt.ofname, exist_ok=True)
            restorepkt.create_status = CF_CREATED
        else:
            restorepkt.create_status = CF_EXTRACT
        return bRC_OK

    def set_file_attributes(self, restorepkt):
        self.log("set_file_attributes", ofname=restorepkt.ofname)
        return bRC_OK

    def set_acl(self, acl):
        self.log("set_acl", fname=acl.fname, content=bytes(acl.content).decode())
        return bRC_OK

    def set_xattr(self, xattr):
        self.log("set_xattr", fname=xattr.fname, name=bytes(xattr.name).decode(),
                 value=bytes(xattr.value).decode())
        return bRC_OK

    def end_restore_file(self):
        self.log("end_restore_file")
        return bRC_OK
'''


def make_data(item: Dict[str, Any]) -> bytes:
    """The bytes the test plugin produces for a spec item."""
    pattern = str(item.get("pattern", item["name"])).encode()
    size = int(item.get("size", 0))
    return (pattern * (size // max(1, len(pattern)) + 1))[:size]


class Env:
    """A store, a plugin dir with the test plugin, spec and log files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plugin_dir = root / "plugins"
        self.plugin_dir.mkdir()
        (self.plugin_dir / "bareos-fd-testfiles.py").write_text(TEST_PLUGIN)
        self.spec = root / "spec.json"
        self.logfile = root / "plugin-log.jsonl"
        self.where = root / "restored"
        self.sim = FdSim(root / "store")

    def cmd(self, **extra: str) -> str:
        opts = {"spec": str(self.spec), "log": str(self.logfile)}
        opts.update(extra)
        return "python3:module_name=bareos-fd-testfiles:" + ":".join(f"{k}={v}" for k, v in opts.items())

    def write_spec(self, items: List[Dict[str, Any]], keep: Sequence[str] = ()) -> None:
        self.spec.write_text(json.dumps({"items": items, "keep": list(keep)}))

    def log(self) -> List[Dict[str, Any]]:
        if not self.logfile.exists():
            return []
        return [json.loads(line) for line in self.logfile.read_text().splitlines()]

    def log_of(self, kind: str) -> List[Dict[str, Any]]:
        return [e for e in self.log() if e["kind"] == kind]

    def clear_log(self) -> None:
        if self.logfile.exists():
            self.logfile.unlink()

    def wait_for(self, kind: str, timeout: float = 20.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.log_of(kind)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"plugin never logged {kind!r}")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)
