r"""Samba's ``smbclient`` as the data mover for sequential reads of large files over SMB3.

smbprotocol verifies signatures and parses messages in Python and sends one request at a time;
on the machines this product is measured on it reads at about half the rate of Samba's own client,
which keeps two 8 MiB reads in flight in C (``reference/performance-notes.md``).  For the one access
pattern where that matters - a disk file read once from its start to its end - :class:`MoverReader`
lets ``smbclient -c 'get "<path>" -'`` stream the file into a pipe that the agent reads, while an
smbprotocol handle (opened first, and kept open) answers everything else: size and time, ranged
reads, seeks, and the rest of the stream when the mover fails.

Credentials: the password goes into an authentication file (``-A``) of mode 0600 in a private 0700
directory made for this one process, and the directory is removed as soon as the process has the
data flowing (and in any case when the reader closes).  Nothing secret is in argv or the
environment, so ``ps`` and ``/proc/<pid>/environ`` show none of it.  The process gets its own
``smb.conf`` in that directory too, so neither the system's Samba configuration nor its state
directories are read or written.

Failure handling: the reader counts the bytes it has delivered; if smbclient exits with an error,
stalls for ``timeout`` seconds, or ends short, the process is stopped and the smbprotocol handle
continues from the first byte not yet delivered (smbprotocol reconnects by itself).  A log line says
so; the stream the caller sees is unchanged.

Choice of mover (:func:`mover_setting`): ``smbprotocol`` (the default) never starts a process;
``auto`` uses smbclient when it is installed and the file is large enough to be worth a process;
``smbclient`` uses it for every sequential read it can.  The environment variable
:data:`MOVER_ENV` overrides the default for diagnostics and benchmarks.

Why smbprotocol stays the default: on the 2-core machines this is measured on, a full backup through
the fd emulation was no faster with smbclient moving the data (``bench/backup_full.py``: 325 vs
341 MB/s) - smbclient must write into a pipe of at most 1 MiB (``pipe-max-size`` for a process
without CAP_SYS_RESOURCE), which blocks its 8 MiB writes and undoes its two reads in flight, and it
competes for the same two cores with smbd, the agent's SHA-256 and the core.  It does lower the
agent's memory (57 vs 89 MiB peak).  Where cores are plentiful, ``auto`` is worth measuring.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import shutil
import subprocess
import tempfile
from types import TracebackType
from typing import List, Optional, Protocol, Type

from bareos_hyperv.storage.base import Buffer, read_through

__all__ = [
    "DEFAULT_MOVER",
    "MIN_SIZE",
    "MOVERS",
    "MOVER_ENV",
    "MoverReader",
    "SmbclientCommand",
    "SmbclientStream",
    "find_smbclient",
    "mover_setting",
    "path_is_movable",
]

log = logging.getLogger(__name__)

# Diagnostic override of the default mover (``auto``, ``smbclient`` or ``smbprotocol``).
MOVER_ENV = "BAREOS_HYPERV_SMB_MOVER"
MOVERS = ("auto", "smbclient", "smbprotocol")
DEFAULT_MOVER = "smbprotocol"
# Below this size a process start (~50 ms with authentication) costs more than it saves.
MIN_SIZE = 64 * 1024 * 1024
# The pipe smbclient writes into: as for the core's pipe, a 64 KiB default pipe caps every read.
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Seconds to wait for smbclient to exit once it has been asked to stop.
STOP_TIMEOUT = 5.0
# smbclient's stderr is kept for the log line on failure; more than this is not useful.
STDERR_KEEP = 4096
# smbclient's -c splits commands at ';' without regard to quotes, and quotes cannot be escaped.
_UNMOVABLE = frozenset(';"\r\n\0')


def mover_setting(value: Optional[str] = None) -> str:
    """The mover to use: ``value`` if given, else :data:`MOVER_ENV`, else :data:`DEFAULT_MOVER`."""
    chosen = (value or os.environ.get(MOVER_ENV) or DEFAULT_MOVER).strip().lower()
    if chosen not in MOVERS:
        log.warning("SMB mover %s is not one of %s; using %s", chosen, ", ".join(MOVERS), DEFAULT_MOVER)
        return DEFAULT_MOVER
    return chosen


def find_smbclient() -> Optional[str]:
    """Path of Samba's ``smbclient`` on ``PATH``, None when it is not installed (smbprotocol then moves the data)."""
    return shutil.which("smbclient")


def path_is_movable(path: str) -> bool:
    """Whether smbclient's command line can name ``path`` (no ``;``, quote or line break in it)."""
    return not any(c in _UNMOVABLE for c in path)


class _Fallback(Protocol):
    """What :class:`MoverReader` needs of the smbprotocol reader it wraps."""

    @property
    def size(self) -> int: ...

    @property
    def mtime(self) -> float: ...

    def readinto(self, buf: Buffer) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def seek(self, offset: int, whence: int = 0) -> int: ...

    def close(self) -> None: ...


class SmbclientCommand:
    """Everything needed to start smbclient for one file (the password is kept in this object only).

    :param executable: path of smbclient.
    :param server: server name as the share's UNC path names it.
    :param host: address to connect to.
    :param port: TCP port.
    :param share: share name.
    :param path: path inside the share (backslashes).
    :param username: account name (``DOMAIN\\user`` is split into domain and user).
    :param password: its password.
    :param encrypt: require SMB3 encryption (else signing is required).
    :param kerberos: ``desired``, ``required`` or ``off`` (smbclient's ``--use-kerberos``).
    """

    def __init__(self, executable: str, *, server: str, host: str, port: int, share: str, path: str,
                 username: str, password: str, encrypt: bool = False, kerberos: str = "desired") -> None:
        self.executable = executable
        self.server = server
        self.host = host
        self.port = port
        self.share = share
        self.path = path
        self.domain, _, self.username = username.rpartition("\\")
        self._password = password
        self.encrypt = encrypt
        self.kerberos = kerberos

    def __repr__(self) -> str:
        return f"SmbclientCommand(//{self.server}/{self.share}/{self.path} via {self.host}:{self.port})"

    def argv(self, private_dir: str) -> List[str]:
        """The command line (no secret in it)."""
        return [
            self.executable,
            f"//{self.server}/{self.share}",
            "-s", os.path.join(private_dir, "smb.conf"),
            "-A", os.path.join(private_dir, "auth"),
            "-I", self.host,
            "-p", str(self.port),
            "-m", "SMB3",
            f"--client-protection={'encrypt' if self.encrypt else 'sign'}",
            f"--use-kerberos={self.kerberos}",
            "-d", "0",
            "-c", f'get "{self.path}" -',
        ]

    def write_private_files(self, private_dir: str) -> None:
        """The 0600 authentication file and a configuration that keeps smbclient inside ``private_dir``."""
        auth = f"username = {self.username}\npassword = {self._password}\n"
        if self.domain:
            auth += f"domain = {self.domain}\n"
        _write_private(os.path.join(private_dir, "auth"), auth)
        conf = "[global]\n" + "".join(
            f"    {key} = {private_dir}\n"
            for key in ("lock directory", "state directory", "cache directory", "private dir",
                        "ncalrpc dir", "pid directory")
        )
        _write_private(os.path.join(private_dir, "smb.conf"), conf)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


class SmbclientStream:
    """One smbclient process streaming a file into a pipe whose read end this object holds."""

    def __init__(self, command: SmbclientCommand) -> None:
        self.command = command
        self._dir: Optional[str] = tempfile.mkdtemp(prefix="bareos-hyperv-smbclient-")
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._rfd = -1
        self.delivered = 0
        try:
            command.write_private_files(self._dir)
            stderr_path = os.path.join(self._dir, "stderr")
            self._stderr = open(stderr_path, "w+b")  # noqa: SIM115  # closed in close()
            os.unlink(stderr_path)  # smbclient inherits the open file; nothing stays behind a killed agent
            rfd, wfd = os.pipe()
            self._rfd = rfd
            try:
                try:
                    fcntl.fcntl(wfd, _F_SETPIPE_SZ, PIPE_SIZE)
                except OSError as exc:  # above pipe-max-size for this user: still correct, only slower
                    log.debug("F_SETPIPE_SZ %d refused for the smbclient pipe: %s", PIPE_SIZE, exc)
                self._proc = subprocess.Popen(
                    command.argv(self._dir), stdin=subprocess.DEVNULL, stdout=wfd, stderr=self._stderr,
                    close_fds=True, cwd=self._dir, env=_clean_environment())
            finally:
                os.close(wfd)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        """Process id of smbclient (0 before it started)."""
        return self._proc.pid if self._proc is not None else 0

    def readinto(self, buf: Buffer, timeout: float) -> int:
        """Bytes from smbclient; 0 at its end of output.  TimeoutError after ``timeout`` s of silence."""
        if self._rfd < 0:
            return 0
        if not select.select([self._rfd], [], [], timeout)[0]:
            raise TimeoutError(f"smbclient sent nothing for {timeout:.0f} s")
        n = os.readv(self._rfd, [buf])
        if n and self.delivered == 0:
            self._forget_secret()  # data flows: authentication is over, the file is not needed
        self.delivered += n
        return n

    def wait(self, timeout: float) -> int:
        """Exit status of smbclient (after its output ended)."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def stderr_text(self) -> str:
        """What smbclient said on stderr (tail), for the log."""
        try:
            self._stderr.seek(0)
            data = self._stderr.read()[-STDERR_KEEP:]
        except (OSError, ValueError, AttributeError):
            return ""
        return data.decode("utf-8", "replace").strip()

    def _forget_secret(self) -> None:
        """Data flows, so smbclient has read its files: remove them and the directory now, so that
        not even an agent killed mid-stream leaves them behind."""
        if self._dir is None:
            return
        for name in ("auth", "smb.conf"):
            try:
                os.unlink(os.path.join(self._dir, name))
            except OSError as exc:
                log.debug("removing the smbclient %s file: %s", name, exc)
        try:
            os.rmdir(self._dir)
            self._dir = None
        except OSError as exc:  # smbclient put something there after all: close() removes it
            log.debug("removing the smbclient directory: %s", exc)

    def close(self) -> None:
        """Stop smbclient if it still runs, close the pipe, remove the private directory (idempotent)."""
        proc, self._proc = self._proc, None
        if self._rfd >= 0:
            os.close(self._rfd)  # a still-writing smbclient gets EPIPE and stops
            self._rfd = -1
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr = getattr(self, "_stderr", None)
        if stderr is not None:
            stderr.close()
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def _clean_environment() -> dict[str, str]:
    """The agent's environment without anything that would change smbclient's credentials or config."""
    drop = ("USER", "LOGNAME", "PASSWD", "PASSWD_FD", "PASSWD_FILE", "KRB5CCNAME_OVERRIDE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["LC_ALL"] = "C"
    return env


class MoverReader:
    """A sequential reader whose stream comes from smbclient while it can, else from ``fallback``.

    ``fallback`` is an open smbprotocol reader of the same file, positioned at 0; it gives the size
    and time, serves :meth:`read_at`, and takes over the stream at the first byte not delivered if
    smbclient fails or the caller seeks.
    """

    def __init__(self, fallback: _Fallback, command: SmbclientCommand, *, timeout: float) -> None:
        self._fb = fallback
        self._command = command
        self._timeout = timeout
        self._stream: Optional[SmbclientStream] = None
        self._pos = 0
        self._moving = True  # False once the stream has been handed to smbprotocol
        self.fallbacks = 0

    def __repr__(self) -> str:
        return f"MoverReader({self._command!r}, size={self.size}, pos={self._pos})"

    @property
    def size(self) -> int:
        """File size when it was opened."""
        return self._fb.size

    @property
    def mtime(self) -> float:
        """Last write time when it was opened."""
        return self._fb.mtime

    @property
    def mover_pid(self) -> int:
        """Process id of the running smbclient, 0 when none runs."""
        return self._stream.pid if self._stream is not None else 0

    def readinto(self, buf: Buffer) -> int:
        """The next bytes of the file into ``buf``; 0 at end of file."""
        if self._moving:
            if self._pos >= self.size:
                return 0  # the size at open bounds the stream, as for SmbReader
            try:
                return self._from_mover(buf)
            except (OSError, subprocess.SubprocessError) as exc:  # TimeoutError is an OSError
                self._give_up(f"{type(exc).__name__}: {exc}")
        n = self._fb.readinto(buf)
        self._pos += n
        return n

    def _from_mover(self, buf: Buffer) -> int:
        if self._stream is None:
            self._stream = SmbclientStream(self._command)
        with memoryview(buf) as view:
            want = min(len(view), self.size - self._pos)
            n = self._stream.readinto(view[:want] if want < len(view) else view, self._timeout)
        if n:
            self._pos += n
            if self._pos == self.size:
                self._finish_stream()
            return n
        # End of output before the end of the file: say why, then continue with smbprotocol.
        status = self._stream.wait(self._timeout)
        self._give_up(f"smbclient ended after {self._stream.delivered} bytes with exit status {status}")
        return self.readinto(buf)

    def _finish_stream(self) -> None:
        """The whole file (as large as at open) has arrived; stop smbclient.

        Every byte smbclient wrote passed its signature (or decryption) check before it was
        written, so its exit status after the last byte changes nothing about the data.
        """
        assert self._stream is not None
        try:
            status = self._stream.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None  # the file grew after it was opened, and smbclient is still writing
        if status:
            log.debug("smbclient exited with %s after sending all of %s", status, self._command)
        self._stop()

    def _give_up(self, why: str) -> None:
        detail = self._stream.stderr_text() if self._stream is not None else ""
        log.warning("smbclient stopped streaming %s at offset %d (%s%s); continuing with smbprotocol",
                    self._command, self._pos, why, f": {detail}" if detail else "")
        self._stop()
        self._moving = False
        self.fallbacks += 1
        self._fb.seek(self._pos)

    def _stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the stream (-1: to the end of the file)."""
        return read_through(self.readinto, max(0, self.size - self._pos) if size < 0 else size)

    def read_at(self, offset: int, length: int) -> bytes:
        """A range through smbprotocol; the stream is not disturbed."""
        return self._fb.read_at(offset, length)

    def set_limit(self, end: int | None) -> None:
        """Read ahead no further than ``end`` once smbprotocol has the stream (see ``SmbReader.set_limit``)."""
        set_limit = getattr(self._fb, "set_limit", None)
        if set_limit is not None:
            set_limit(end)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the stream; anything but staying put hands the stream to smbprotocol."""
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError("negative seek position")
        if target != self._pos:
            self._stop()
            self._moving = False
            self._pos = self._fb.seek(target)
        return self._pos

    def tell(self) -> int:
        """The stream position."""
        return self._pos

    def close(self) -> None:
        """Stop smbclient and close the smbprotocol handle (idempotent)."""
        try:
            self._stop()
        finally:
            self._fb.close()

    def __enter__(self) -> MoverReader:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()
