"""One job's Python sub-interpreter, seen from the host (the emulated fd core).

The real python3-fd calls ``Py_NewInterpreter`` per job; extension modules built with PyO3
(cryptography) or with Cython's one-interpreter guard (lxml) then refuse the second job's
import.  We use CPython's own ``_xxsubinterpreters`` (3.8-3.12; ``_interpreters`` on 3.13) to
get the same kind of interpreter (legacy, shared GIL) in this process.

Mechanism: the interpreter runs a single ``run_string`` for the whole job on a host thread
(``fdsim/pyfiles/_fdsim_guest.serve``).  Requests ("call start_backup_file with this packet")
and replies travel over two OS pipes in marshal frames (``_fdsim_wire``); while the guest runs
a callback, its ``bareosfd`` functions send ``core`` frames that the host answers on the same
pipe, so the conversation is strictly nested and cannot deadlock.  A second pipe pair serves a
guest thread that delivers ``bEventCancelCommand`` concurrently, like the fd's cancel thread.
One ``run_string`` per job, rather than one per callback, matters: on 3.11 ``run_string``
borrows the interpreter's newest thread state, which would be a thread the plugin started.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

from fdsim.pyfiles import _fdsim_wire as wire

GUEST_DIR = str(Path(__file__).resolve().parent / "pyfiles")
CoreHandler = Callable[[str, Tuple[Any, ...]], Any]


class SubInterpreterUnavailable(RuntimeError):
    """This Python has no usable sub-interpreter API."""


class GuestDied(RuntimeError):
    """The sub-interpreter's job thread ended without answering."""


def _interpreters_module() -> ModuleType:
    for name in ("_xxsubinterpreters", "_interpreters"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise SubInterpreterUnavailable(
        f"fdsim needs CPython's _xxsubinterpreters (CPython 3.8-3.12) or _interpreters (3.13) to run "
        f"each job in a sub-interpreter as the Bareos fd does; {sys.implementation.name} "
        f"{sys.version.split()[0]} at {sys.executable} has neither. Run the tests with CPython 3.11.")


def _create(mod: ModuleType) -> Any:
    # Bareos uses Py_NewInterpreter: a legacy interpreter sharing the GIL; ask for that kind.
    if mod.__name__ == "_interpreters":
        return mod.create("legacy")
    try:
        return mod.create(isolated=False)
    except TypeError:
        return mod.create()


class SubInterpreter:
    """A fresh sub-interpreter running the fdsim guest loop for one job."""

    def __init__(self, extra_sys_path: List[str] | None = None) -> None:
        self._mod = _interpreters_module()
        self.iid = _create(self._mod)
        h2g_r, h2g_w = os.pipe()
        g2h_r, g2h_w = os.pipe()
        c2g_r, c2g_w = os.pipe()
        g2c_r, g2c_w = os.pipe()
        self._host_fds = (h2g_w, g2h_r, c2g_w, g2c_r)
        self._guest_fds = (h2g_r, g2h_w, c2g_r, g2c_w)
        self._wfd, self._rfd, self._cwfd, self._crfd = self._host_fds
        self.failure: BaseException | None = None
        self.cancel_lock = threading.Lock()
        self._closed = False
        self._finished = False
        # Decided by close(): destroy only when no plugin thread is left in the interpreter.
        self._may_destroy = False
        self._decided = threading.Event()
        # PY3MODDIR is appended by the fd's loadPlugin; the plugin dir goes first at load time.
        script = (
            "import sys\n"
            f"sys.path.append({GUEST_DIR!r})\n"
            f"sys.path.extend({list(extra_sys_path or [])!r})\n"
            "import _fdsim_guest\n"
            f"_fdsim_guest.serve({h2g_r}, {g2h_w}, {c2g_r}, {g2c_w})\n"
        )
        self._thread = threading.Thread(target=self._run, args=(script,), name=f"fdsim-job-interp-{self.iid}",
                                        daemon=True)
        self._thread.start()

    def _run(self, script: str) -> None:
        try:
            self._mod.run_string(self.iid, script)
        except BaseException as exc:  # reported to the job through GuestDied
            self.failure = exc
        finally:
            for fd in self._guest_fds:
                os.close(fd)
        # Destroy on the OS thread that ran the interpreter: on 3.11, destroying from another
        # thread after the guest started threads of its own hangs in Py_EndInterpreter.
        self._decided.wait()
        if self._may_destroy:
            self._mod.destroy(self.iid)

    # -- requests ------------------------------------------------------------------------------
    def _exchange(self, wfd: int, rfd: int, msg: Tuple[Any, ...], core: CoreHandler) -> Dict[str, Any]:
        try:
            wire.send(wfd, msg)
            while True:
                reply = wire.recv(rfd)
                if reply[0] == "ret":
                    return reply[1]  # type: ignore[no-any-return]
                if reply[0] == "core":
                    try:
                        value = core(reply[1], tuple(reply[2]))
                    except Exception as exc:
                        wire.send(wfd, ("coreerr", f"{reply[1]}: {exc}"))
                    else:
                        wire.send(wfd, ("coreret", value))
        except (wire.WireClosed, BrokenPipeError) as exc:
            self._thread.join(5)
            raise GuestDied(f"fdsim: the job's sub-interpreter stopped: {self.failure or exc}") from exc

    def request(self, msg: Tuple[Any, ...], core: CoreHandler) -> Dict[str, Any]:
        """Run one operation on the job thread, answering the guest's core calls meanwhile."""
        if self._finished:
            raise GuestDied("fdsim: the job's sub-interpreter was already stopped and closed")
        return self._exchange(self._wfd, self._rfd, msg, core)

    def cancel_request(self, msg: Tuple[Any, ...], core: CoreHandler) -> Dict[str, Any] | None:
        """Run one operation on the guest's cancel-delivery thread (called from any host thread)."""
        with self.cancel_lock:
            if self._closed:
                return None
            return self._exchange(self._cwfd, self._crfd, msg, core)

    def close(self, core: CoreHandler) -> List[str]:
        """End the guest loop and destroy the interpreter; returns names of threads left running.

        If plugin threads are still alive the interpreter is not destroyed: Py_EndInterpreter
        would abort the whole process ("not the last thread"), the real fd with it.
        """
        with self.cancel_lock:
            self._closed = True
            with contextlib.suppress(OSError):  # the guest may already be gone
                wire.send(self._cwfd, ("stop",))
        leftover: List[str] = []
        try:
            result = self.request(("stop",), core)
            leftover = list(result.get("threads", []))
            self._may_destroy = not leftover
        except GuestDied:
            leftover = ["<guest died: interpreter state unknown, not destroyed>"]
        self._decided.set()
        self._thread.join()
        self._finished = True
        for fd in self._host_fds:
            os.close(fd)
        return leftover
