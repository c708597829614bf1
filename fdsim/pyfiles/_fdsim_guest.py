"""The half of fdsim that runs inside a job's sub-interpreter.

The host starts one long ``run_string`` per job whose body is :func:`serve`, so every call of
the job happens in that one interpreter on one thread, as on the real fd's job thread.  What
``python-fd.cc`` and ``bareosfd.cc`` do in C happens here: import the module, look callbacks up
by name in its ``__dict__`` on every call, build packets, convert return values with
``PyLong_AsLong`` rules and copy packet fields back with the checks of 25.1.0.  The host only
ever sees plain data (dicts of ints/str/bytes).

A second thread waits on a separate pipe for ``bEventCancelCommand`` so that a cancel reaches
``handle_plugin_event`` concurrently with whatever the job thread is doing, as in Bareos.
"""

from __future__ import annotations

import importlib
import sys
import threading
import traceback
from typing import Any, Dict, List, Tuple

import _fdsim_wire as wire  # type: ignore[import-not-found]  # top-level inside the guest
import bareosfd

Result = Dict[str, Any]
_STAT_FIELDS = ("st_dev", "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                "st_atime", "st_mtime", "st_ctime", "st_blksize", "st_blocks")
_OBJECT_TYPES = (bareosfd.FT_RESTORE_FIRST, bareosfd.FT_PLUGIN_CONFIG, bareosfd.FT_PLUGIN_CONFIG_FILLED)
_THREAD_JOIN_SECONDS = 10.0


class Link:
    """The thread's way to the core: a request frame out, a reply frame back."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd

    def core(self, name: str, *args: Any) -> Any:
        """Run one core function on the host and return its value."""
        wire.send(self.wfd, ("core", name, args))
        reply = wire.recv(self.rfd)
        if reply[0] == "coreret":
            return reply[1]
        raise RuntimeError(reply[1])


def _exc() -> Result:
    return {"st": "exc", "tb": traceback.format_exc()}


def _stat_to_dict(statp: Any) -> Dict[str, int]:
    return {name: int(getattr(statp, name)) for name in _STAT_FIELDS}


def _stat_from_dict(values: Dict[str, int]) -> Any:
    return bareosfd.StatPacket._fdsim_make(**values)


def save_packet_to_native(pkt: Any) -> Dict[str, Any]:
    """Copy a SavePacket back like ``PySavePacketToNative`` (command plugin), raising its errors."""
    fname = pkt.fname
    if fname is None:
        raise RuntimeError("fname is empty")
    if not isinstance(fname, str):
        raise TypeError('fname needs to be of type string "utf-8"')
    fname.encode("utf-8")
    link = pkt.link
    if link is not None:
        if not isinstance(link, str):
            raise TypeError('if given, link needs to be of type string "utf-8"')
        link.encode("utf-8")
    statp = pkt.statp
    if statp is None:
        raise RuntimeError("PyStatPacketToNative() failed")
    if not isinstance(statp, bareosfd.StatPacket):
        # The C code casts blindly and would read garbage; refuse it loudly instead.
        raise TypeError(f"statp needs to be of type StatPacket, not {type(statp).__name__}")
    flags = pkt.flags
    if not isinstance(flags, bytearray):
        raise TypeError("flags need to be of type bytearray")
    if len(flags) != bareosfd.FOPTS_BYTES:
        raise RuntimeError("PyByteArray_Size(flags) failed")
    out: Dict[str, Any] = {"fname": fname, "link": link, "type": int(pkt.type),
                           "statp": _stat_to_dict(statp), "flags": bytes(flags)}
    if pkt.type in _OBJECT_TYPES:
        if pkt.object_len <= 0:
            raise RuntimeError("pSavePkt->object_len is <=0")
        name, obj = pkt.object_name, pkt.object
        err = ""
        if name is None:
            err = "object name missing"
        elif not isinstance(name, str):
            err = "object name must be unicode type"
        if obj is None:
            err = "object missing"
        elif not isinstance(obj, bytearray):
            err = "object needs to be of type bytearray"
        if err:
            raise RuntimeError(err)
        if pkt.object_len > len(obj):
            raise RuntimeError("object_len is larger than the object")
        out.update(object_name=name, object=bytes(obj[: pkt.object_len]), object_len=int(pkt.object_len),
                   object_index=int(pkt.object_index))
    else:
        out.update(no_read=bool(pkt.no_read), delta_seq=int(pkt.delta_seq), save_time=int(pkt.save_time))
    return out


class Guest:
    """State of the python3-fd instance of one job: the loaded module and sys.path bookkeeping."""

    def __init__(self) -> None:
        self.module: Any | None = None
        self.plugin_dir_added = False
        self.lock = threading.Lock()

    # -- calling into the plugin -------------------------------------------------------------
    def _lookup(self, name: str) -> Any:
        if self.module is None:
            return None
        func = self.module.__dict__.get(name)
        return func if callable(func) else None

    def call(self, name: str, *args: Any) -> Tuple[Result, Any]:
        """Call a module-level callback; returns (result, raw return value)."""
        func = self._lookup(name)
        if func is None:
            return {"st": "nofunc"}, None
        try:
            ret = func(*args)
        except BaseException:
            return _exc(), None
        # PyLong_AsLong: True -> 1, False -> 0, None or any non-int -> -1 with a TypeError.
        if not isinstance(ret, int):
            return {"st": "badret", "type": type(ret).__name__, "rc": -1}, ret
        return {"st": "ok", "rc": int(ret)}, ret

    def load(self, plugin_dir: str, module_path: str, module_name: str, opts: str) -> Result:
        """``PyLoadModule``: extend sys.path, import, call ``load_bareos_plugin``."""
        if plugin_dir and not self.plugin_dir_added:
            sys.path.insert(0, plugin_dir)
            self.plugin_dir_added = True
        if module_path:
            sys.path.insert(0, module_path)
        try:
            module = importlib.import_module(module_name)
        except BaseException:
            return _exc()
        func = module.__dict__.get("load_bareos_plugin")
        if not callable(func):
            return {"st": "nofunc"}
        self.module = module
        result, _ = self.call("load_bareos_plugin", opts)
        if result["st"] == "exc":
            self.module = None
        return result

    # -- operations requested by the host ------------------------------------------------------
    def dispatch(self, msg: Tuple[Any, ...]) -> Result:
        """Run one host request and describe the outcome as plain data."""
        op = msg[0]
        if op == "load":
            return self.load(*msg[1:])
        if op == "call":
            return self.call(msg[1], *msg[2])[0]
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            return {"st": "exc", "tb": f"fdsim guest: unknown operation {op!r}\n"}
        try:
            return handler(*msg[1:])  # type: ignore[no-any-return]
        except Exception:
            # A fault of fdsim's own guest code: report it as a job error, keep serving.
            return {"st": "exc", "tb": "fdsim guest internal error:\n" + traceback.format_exc()}

    def op_start_backup_file(self, values: Dict[str, Any]) -> Result:
        statp = values.pop("statp")
        values["flags"] = bytearray(values["flags"])  # marshal carries it as bytes
        pkt = bareosfd.SavePacket._fdsim_make(**values)
        pkt.__dict__["statp"] = None if statp is None else _stat_from_dict(statp)
        result, _ = self.call("start_backup_file", pkt)
        if result["st"] == "ok" and result["rc"] == bareosfd.bRC_OK:
            try:
                result["pkt"] = save_packet_to_native(pkt)
            except Exception:
                return {"st": "convert", "tb": traceback.format_exc(), "rc": bareosfd.bRC_Error}
        return result

    def op_plugin_io(self, values: Dict[str, Any]) -> Result:
        if values.get("buf") is not None:
            values["buf"] = bytearray(values["buf"])
        pkt = bareosfd.IoPacket._fdsim_make(**values)
        result, _ = self.call("plugin_io", pkt)
        if result["st"] in ("exc", "nofunc"):
            return result
        out = {name: getattr(pkt, name) for name in ("status", "io_errno", "lerror", "filedes")}
        out["win32"] = bool(pkt.win32)
        if values["func"] == bareosfd.IO_READ:
            buf = pkt.buf
            if isinstance(buf, (bytes, bytearray)):
                out["buf"] = bytes(buf)
                out["buflen"] = len(buf)
            else:
                out["buf"] = None
                out["buftype"] = type(buf).__name__
        result["io"] = out
        return result

    def _restore_packet(self, values: Dict[str, Any]) -> Any:
        values = dict(values)
        values["statp"] = _stat_from_dict(values["statp"])
        return bareosfd.RestorePacket._fdsim_make(**values)

    def op_create_file(self, values: Dict[str, Any]) -> Result:
        pkt = self._restore_packet(values)
        result, _ = self.call("create_file", pkt)
        result["create_status"] = int(pkt.create_status)
        result["filedes"] = int(pkt.filedes)
        return result

    def op_set_file_attributes(self, values: Dict[str, Any]) -> Result:
        return self.call("set_file_attributes", self._restore_packet(values))[0]

    def op_get_acl(self, fname: str) -> Result:
        pkt = bareosfd.AclPacket._fdsim_make(fname=fname, content=None)
        result, _ = self.call("get_acl", pkt)
        content = pkt.content
        if content is not None and not isinstance(content, bytearray):
            # MOD PyAclPacketToNative uses PyByteArray_* on it: TypeError for bytes and the like.
            return {"st": "convert", "rc": bareosfd.bRC_Error,
                    "tb": f"TypeError: AclPacket.content needs to be of type bytearray, "
                          f"not {type(content).__name__}\n"}
        result["content"] = bytes(content) if content else None
        return result

    def op_set_acl(self, fname: str, content: bytes) -> Result:
        pkt = bareosfd.AclPacket._fdsim_make(fname=fname, content=bytearray(content))
        return self.call("set_acl", pkt)[0]

    def op_get_xattr(self, fname: str) -> Result:
        pkt = bareosfd.XattrPacket._fdsim_make(fname=fname, name=None, value=None)
        result, _ = self.call("get_xattr", pkt)
        name, value = pkt.name, pkt.value
        result["name"] = bytes(name) if isinstance(name, bytearray) and name else None
        result["value"] = bytes(value) if isinstance(value, bytearray) else b""
        return result

    def op_set_xattr(self, fname: str, name: bytes, value: bytes) -> Result:
        pkt = bareosfd.XattrPacket._fdsim_make(fname=fname, name=bytearray(name), value=bytearray(value))
        return self.call("set_xattr", pkt)[0]

    def op_restore_object_data(self, values: Dict[str, Any]) -> Result:
        values = dict(values)
        values["object"] = bytearray(values["object"])
        rop = bareosfd.RestoreObject._fdsim_make(**values)
        return self.call("restore_object_data", rop)[0]

    # -- threads -------------------------------------------------------------------------------
    def cancel_loop(self, link: Link) -> None:
        """Deliver cancel events on their own thread, concurrently with the job thread."""
        bareosfd._fdsim_bind(link)
        while True:
            try:
                msg = wire.recv(link.rfd)
            except wire.WireClosed:
                return
            if msg[0] == "stop":
                return
            wire.send(link.wfd, ("ret", self.dispatch(msg)))


def _leftover_threads() -> List[str]:
    """Join the plugin's non-daemon threads (as Py_EndInterpreter would) and name survivors."""
    # On 3.13 the interpreter's "main thread" object is not the serving thread: skip both.
    mine = {threading.current_thread(), threading.main_thread()}
    for thread in threading.enumerate():
        if thread not in mine and not thread.daemon:
            thread.join(_THREAD_JOIN_SECONDS)
    return [t.name for t in threading.enumerate() if t not in mine and t.is_alive()]


def serve(rfd: int, wfd: int, cancel_rfd: int, cancel_wfd: int) -> None:
    """Job thread: answer host requests until ``stop``."""
    guest = Guest()
    link = Link(rfd, wfd)
    bareosfd._fdsim_bind(link)
    canceler = threading.Thread(target=guest.cancel_loop, args=(Link(cancel_rfd, cancel_wfd),),
                                name="fdsim-cancel-delivery")
    canceler.start()
    try:
        while True:
            msg = wire.recv(rfd)
            if msg[0] == "stop":
                canceler.join()
                wire.send(wfd, ("ret", {"st": "ok", "threads": _leftover_threads()}))
                return
            wire.send(wfd, ("ret", guest.dispatch(msg)))
    finally:
        bareosfd._fdsim_bind(None)
