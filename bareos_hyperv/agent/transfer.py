"""Pipes between the agent and the Bareos core, and the threads that fill or drain them.

Backup: the agent creates a pipe, hands the read end to the fd (which gives it to the core with
``do_io_in_core``) and a :class:`Pump` thread copies the source file into the write end.  Restore:
the fd gets the write end, the core writes the item's data into it and a :class:`Drain` thread
copies from the read end into the destination.  Either way the bytes never pass through the fd's
Python code, and the agent never holds more than one buffer of a file in memory.

The pipe is enlarged to :data:`PIPE_SIZE` because the core reads 256 KiB at a time and a 64 KiB
default pipe caps every read at 64 KiB (``reference/performance-notes.md``: 760 -> 2211 MB/s).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import threading
import time
from typing import Callable, Optional, Tuple

from bareos_hyperv.errors import BareosHyperVError, StorageError
from bareos_hyperv.storage.base import Buffer, FileReader, FileWriter

__all__ = ["BUFFER_SIZE", "PIPE_SIZE", "Drain", "Pump", "make_pipe"]

log = logging.getLogger(__name__)

# F_SETPIPE_SZ is in fcntl from Python 3.10 only; the Linux value is stable ABI.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024
# One read from the source / one write to the destination; a multiple of the core's 256 KiB.
BUFFER_SIZE = 1024 * 1024
# Buffers in flight between reading, writing to the pipe and hashing (see _Hasher).
HASH_BUFFERS = 4
# How often a running transfer reports its progress (bytes).
PROGRESS_EVERY = 256 * 1024 * 1024


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 0


def make_pipe() -> tuple[int, int]:
    """A close-on-exec pipe ``(read_fd, write_fd)`` enlarged to 1 MiB where the kernel permits."""
    rfd, wfd = os.pipe()  # non-inheritable since Python 3.4: no other child of ours gets an end
    for size in (PIPE_SIZE, min(PIPE_SIZE, _pipe_max_size())):
        if size <= 0:
            continue
        try:
            fcntl.fcntl(wfd, F_SETPIPE_SZ, size)
            break
        except OSError as exc:
            # EPERM: above pipe-max-size for an unprivileged user, or the user's pipe quota is used.
            log.debug("F_SETPIPE_SZ %d refused: %s", size, exc)
    return rfd, wfd


ProgressSink = Callable[[str, int], None]


class _Transfer:
    """Common part of a transfer thread: result, error, byte count and digest."""

    def __init__(self, name: str, expected: int, progress: Optional[ProgressSink]) -> None:
        self.name = name
        self.expected = expected
        self.bytes = 0
        self.sha256 = hashlib.sha256()
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self._progress = progress
        self._next_report = PROGRESS_EVERY
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"transfer {name}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def abort(self) -> None:
        """Ask the thread to stop at its next buffer."""
        self._abort.set()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the thread; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _count(self, n: int, data: Buffer) -> None:
        self.sha256.update(data)
        self._counted(n)

    def _counted(self, n: int) -> None:
        self.bytes += n
        if self._progress is not None and self.bytes >= self._next_report:
            self._next_report += PROGRESS_EVERY
            self._progress(self.name, self.bytes)

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # reported to the fd by the main thread
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            self._finish()

    def _work(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class _Hasher:
    """SHA-256 of a stream on a thread of its own, over a small pool of buffers.

    hashlib releases the GIL on large updates, so hashing one buffer runs while the next is read and
    this one is written to the pipe; serially, the digest (~1-1.5 GB/s here) would add its whole cost
    to the copy.  A buffer comes back to the pool only when it has been hashed, and the caller takes
    the next one only after writing the previous, so no buffer is refilled while in use.
    """

    def __init__(self, sha256: hashlib._Hash, buffers: int, size: int) -> None:
        self.sha256 = sha256
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        self._work: queue.SimpleQueue[Optional[Tuple[bytearray, int]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def take(self) -> bytearray:
        """A buffer to fill (waits while every buffer is still being hashed)."""
        return self._free.get()

    def submit(self, buf: bytearray, n: int) -> None:
        """Hash the first ``n`` bytes of ``buf``, then return it to the pool."""
        self._work.put((buf, n))

    def finish(self) -> None:
        """Wait until everything submitted is hashed."""
        self._work.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            buf, n = item
            with memoryview(buf) as view:
                self.sha256.update(view[:n])
            self._free.put(buf)


class Pump(_Transfer):
    """Backup: copy ``reader`` into the pipe's write end, then close it (EOF for the core)."""

    def __init__(self, name: str, reader: FileReader, wfd: int, expected: int,
                 progress: Optional[ProgressSink] = None) -> None:
        super().__init__(name, expected, progress)
        self.reader = reader
        self.wfd = wfd

    def _work(self) -> None:
        hasher = _Hasher(self.sha256, HASH_BUFFERS, BUFFER_SIZE)
        try:
            self._copy(hasher)
        finally:
            hasher.finish()

    def _copy(self, hasher: _Hasher) -> None:
        while not self._abort.is_set():
            buf = hasher.take()
            n = self.reader.readinto(buf)
            if n == 0:
                hasher.submit(buf, 0)
                break
            hasher.submit(buf, n)
            self._counted(n)
            with memoryview(buf) as view:
                chunk = view[:n]
                while chunk:
                    try:
                        written = os.write(self.wfd, chunk)
                    except BrokenPipeError:
                        raise StorageError(
                            f"the Bareos core stopped reading {self.name} after {self.bytes} bytes",
                            what_to_do="see the job log for the reason (cancel or a storage daemon error)",
                        ) from None
                    chunk = chunk[written:]
                del chunk
        if self._abort.is_set():
            raise StorageError(f"streaming {self.name} was stopped after {self.bytes} bytes")
        if self.bytes != self.expected:
            raise StorageError(
                f"{self.name} changed size while it was saved: announced {self.expected} bytes, "
                f"read {self.bytes}",
                what_to_do="make sure nothing writes to the file during the backup and run the job again",
            )

    def _finish(self) -> None:
        # Closing the write end is what tells the core the item is complete (or cut short).
        try:
            os.close(self.wfd)
        except OSError as exc:  # pragma: no cover - only if closed twice
            log.debug("closing the pipe of %s: %s", self.name, exc)
        try:
            self.reader.close()
        except (OSError, BareosHyperVError) as exc:
            log.debug("closing the source of %s: %s", self.name, exc)


class Drain(_Transfer):
    """Restore: copy the pipe's read end into ``writer`` until EOF (the fd closed the write end)."""

    def __init__(self, name: str, rfd: int, writer: FileWriter, expected: int,
                 progress: Optional[ProgressSink] = None) -> None:
        super().__init__(name, expected, progress)
        self.rfd = rfd
        self.writer = writer

    def _work(self) -> None:
        # Hash on a thread of its own (as Pump does) while this one writes: serially the digest
        # would add its whole cost to the restore's write rate.
        hasher = _Hasher(self.sha256, HASH_BUFFERS, BUFFER_SIZE)
        try:
            while not self._abort.is_set():
                buf = hasher.take()
                n = self._fill(buf)
                hasher.submit(buf, n)
                if n == 0:
                    break
                with memoryview(buf) as view:
                    self.writer.write(view[:n])
                self._counted(n)
                if n < len(buf):
                    break  # end of the stream
        finally:
            hasher.finish()
        if self._abort.is_set():
            raise StorageError(f"restoring {self.name} was stopped after {self.bytes} bytes")
        if self.bytes != self.expected:
            raise StorageError(
                f"restore of {self.name} received {self.bytes} of {self.expected} bytes",
                what_to_do="see the job log for the reason the data stream ended early; "
                           "the partial file was removed",
            )

    def _fill(self, buf: bytearray) -> int:
        """Read the pipe until ``buf`` is full or the writer closed its end; the bytes read.

        A pipe read returns what is there (often a fraction of the buffer); a full buffer per
        write keeps the destination's requests large."""
        n = 0
        with memoryview(buf) as view:
            while n < len(buf) and not self._abort.is_set():
                try:
                    got = os.readv(self.rfd, [view[n:]])
                except OSError as exc:
                    if exc.errno == errno.EINTR:  # pragma: no cover - PEP 475 retries
                        continue
                    raise
                if got == 0:
                    break
                n += got
        return n

    def _finish(self) -> None:
        try:
            os.close(self.rfd)
        except OSError as exc:  # pragma: no cover - only if the fd was closed twice
            log.debug("closing the restore pipe of %s: %s", self.name, exc)
