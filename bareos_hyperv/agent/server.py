"""The agent's protocol loop: answer the fd's requests for one job, then exit.

The loop is strictly request/response on the main thread; transfer threads never touch the
socket.  Every failure of a request becomes one :class:`~bareos_hyperv.protocol.messages.ErrorReply`
built from the :mod:`bareos_hyperv.errors` class of the cause, which the fd turns into the job's
fatal error.  When the socket closes (the fd went away) or SIGTERM arrives (cancel), the session
is closed (partial restores removed, an unfinished VM's checkpoint removed) and the process
exits; after SIGTERM the log records of that cleanup are still written to the socket (briefly,
never blocking the exit), where the fd reads them once the process is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import traceback
from types import FrameType
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

from bareos_hyperv import __version__
from bareos_hyperv.agent.session import Outbox, OutboxHandler, Redactor, Session, peak_rss_kib
from bareos_hyperv.errors import BareosHyperVError, ProtocolError
from bareos_hyperv.protocol.framing import Channel, ChannelClosed
from bareos_hyperv.protocol.messages import (
    PROTOCOL_VERSION,
    AddBase,
    Cleanup,
    CleanupDone,
    CleanupRecord,
    CloseFile,
    CreateFile,
    EndJob,
    ErrorReply,
    FileEntry,
    FileList,
    FileSkipped,
    FinishRestore,
    Hello,
    HelloReply,
    JobDone,
    JobStarted,
    ListFiles,
    LogLevel,
    Message,
    OpenFile,
    PipeReady,
    PlanRestore,
    StartJob,
    error_from_exception,
)

__all__ = ["EXIT_FD_GONE", "EXIT_OK", "EXIT_PROTOCOL", "EXIT_TERMINATED", "AgentServer", "Terminated"]

log = logging.getLogger("bareos_hyperv.agent")

EXIT_OK = 0
EXIT_FD_GONE = 3
EXIT_PROTOCOL = 4
EXIT_TERMINATED = 143  # as a shell reports death by SIGTERM
# Seconds the last log records may take to reach the socket when the fd is not reading.
FINAL_FLUSH_TIMEOUT = 2.0

Reply = Tuple[Message, List[int]]


class Terminated(BaseException):
    """SIGTERM arrived: stop the job and clean up (BaseException: no handler may swallow it)."""


class AgentServer:
    """Serve one job on ``channel``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.redact = Redactor()
        self.outbox = Outbox(self.redact)
        self.handler = OutboxHandler(self.outbox)
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.session: Optional[Session] = None
        self._handlers: Dict[Type[Message], Callable[[Message], Reply]] = {
            StartJob: self._start_job,
            AddBase: self._add_base,
            ListFiles: self._list_files,
            OpenFile: self._open_file,
            CreateFile: self._create_file,
            CloseFile: self._close_file,
            Cleanup: self._cleanup,
            PlanRestore: self._plan_restore,
            FinishRestore: self._finish_restore,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def _install(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(logging.INFO)

        def on_term(signum: int, frame: Optional[FrameType]) -> None:
            raise Terminated

        signal.signal(signal.SIGTERM, on_term)

    def serve(self) -> int:
        """Run until EndJob, EOF or SIGTERM; returns the process exit status."""
        self._install()
        try:
            if not self._handshake():
                return EXIT_PROTOCOL
            return self._loop()
        except Terminated:
            log.warning("agent stopped by SIGTERM (job canceled or fd shutting down)")
            session = self.session
            closed = self._close_session()
            self._final_flush(session if closed else None)
            return EXIT_TERMINATED
        except ChannelClosed:
            return EXIT_FD_GONE
        finally:
            self._close_session()
            self.channel.close()

    def _final_flush(self, closed: Optional[Session]) -> None:
        """Leave what the cleanup logged on the socket for the fd (best effort, bounded).

        When the session was closed completely, a last JobDone tells the fd what its cleanup
        could not undo; without it the fd assumes nothing was undone.
        """
        try:
            self.channel.sock.settimeout(FINAL_FLUSH_TIMEOUT)
            for queued in self.outbox.take():
                self.channel.send(queued)
            if closed is not None:
                self.channel.send(self._job_done(closed))
        except (ProtocolError, OSError):
            pass

    def _close_session(self) -> bool:
        """Close the session (idempotent); False when its cleanup failed half-way."""
        if self.session is not None:
            session, self.session = self.session, None
            try:
                session.close()
            except Exception as exc:  # cleanup must not mask how the job ended
                log.warning("cleanup after the job failed: %s", exc)
                return False
        return True

    def _handshake(self) -> bool:
        hello = self.channel.recv()
        if not isinstance(hello, Hello) or hello.version != PROTOCOL_VERSION:
            got = hello.version if isinstance(hello, Hello) else hello.TYPE
            self.channel.send(ErrorReply(
                kind=ProtocolError.kind,
                message=f"the agent speaks protocol version {PROTOCOL_VERSION}, the fd plugin sent {got}",
                what_to_do="install the same bareos-hyperv version for the fd plugin and for agent_python"))
            return False
        self.channel.send(HelloReply(version=PROTOCOL_VERSION, pid=os.getpid(), package_version=__version__,
                                     python=sys.executable))
        return True

    def _loop(self) -> int:
        while True:
            msg = self.channel.recv()
            if isinstance(msg, EndJob):
                self._end_job()
                return EXIT_OK
            handler = self._handlers.get(type(msg))
            fds: List[int] = []
            try:
                if handler is None:
                    raise ProtocolError(f"the agent does not accept {msg.TYPE} messages")
                reply, fds = handler(msg)
            except BareosHyperVError as exc:
                log.debug("%s failed: %s", msg.TYPE, traceback.format_exc())
                reply = error_from_exception(exc)
            except Exception as exc:
                # Unexpected: the traceback goes to the fd's debug output, the summary to the job log.
                self.outbox.log(LogLevel.DEBUG, traceback.format_exc())
                reply = error_from_exception(exc)
            self._send(reply, fds)

    def _send(self, reply: Message, fds: Sequence[int] = ()) -> None:
        try:
            for queued in self.outbox.take():
                self.channel.send(queued)
            if isinstance(reply, ErrorReply):
                reply = ErrorReply(kind=reply.kind, message=self.redact(reply.message),
                                   what_to_do=reply.what_to_do,
                                   context={k: self.redact(v) for k, v in reply.context.items()})
            self.channel.send(reply, fds)
        finally:
            for fd in fds:  # the fd now holds its own copy of each pipe end
                os.close(fd)

    @staticmethod
    def _job_done(session: Session, left: Optional[CleanupRecord] = None) -> JobDone:
        stats = session.job_done()
        return JobDone(files=stats.files, bytes=stats.bytes, peak_rss_kib=stats.peak_rss_kib,
                       seconds=stats.seconds, cleanup=left or session.left)

    def _end_job(self) -> None:
        session = self.session
        if session is None:
            self._send(JobDone(files=0, bytes=0, peak_rss_kib=peak_rss_kib(), seconds=0.0))
            return
        pending = session.pending_cleanup()
        # Close first: JobDone says what the cleanup could not undo (all of it if the cleanup broke).
        closed = self._close_session()
        self._send(self._job_done(session, None if closed else pending))

    # -- requests --------------------------------------------------------------------------------

    def _session(self) -> Session:
        if self.session is None:
            raise ProtocolError("no job has been started (StartJob missing)")
        return self.session

    def _start_job(self, msg: Message) -> Reply:
        assert isinstance(msg, StartJob)
        if self.session is not None:
            raise ProtocolError("the agent serves one job and it has already started")
        if msg.options.debug:
            logging.getLogger().setLevel(logging.DEBUG)
            # smbprotocol logs every packet at INFO/DEBUG: far too much for a job log.
            logging.getLogger("smbprotocol").setLevel(logging.WARNING)
        self.session = Session(msg, self.outbox, self.redact)
        self.session.flush = self._flush
        log.debug("job %s started: %r", msg.jobid, msg)
        return JobStarted(), []

    def _add_base(self, msg: Message) -> Reply:
        assert isinstance(msg, AddBase)
        self._session().add_base(msg.objects)
        return JobStarted(), []

    def _flush(self) -> None:
        """Send the queued log records and progress now: only called inside a request, while the
        fd reads the socket waiting for the reply (they reset its agent_timeout)."""
        for queued in self.outbox.take():
            self.channel.send(queued)

    def _list_files(self, msg: Message) -> Reply:
        session = self._session()
        files = session.list_files()
        return FileList(files=files, cleanup=session.pending_cleanup()), []

    def _cleanup(self, msg: Message) -> Reply:
        return CleanupDone(left=self._session().run_cleanup()), []

    def _open_file(self, msg: Message) -> Reply:
        assert isinstance(msg, OpenFile)
        session = self._session()
        rfd = session.open_file(msg.name)
        return PipeReady(name=msg.name, size=session.entry(msg.name).size), [rfd]

    def _create_file(self, msg: Message) -> Reply:
        assert isinstance(msg, CreateFile)
        entry = FileEntry(name=msg.name, size=msg.size, mtime=msg.mtime, mode=msg.mode)
        session = self._session()
        wfd, reason = session.create_item(entry, msg.target, msg.replace)
        if wfd is None:
            return FileSkipped(name=msg.name, reason=reason), []
        return PipeReady(name=msg.name, size=msg.size, cleanup=session.pending_cleanup()), [wfd]

    def _plan_restore(self, msg: Message) -> Reply:
        assert isinstance(msg, PlanRestore)
        return self._session().plan_restore(msg.objects), []

    def _finish_restore(self, msg: Message) -> Reply:
        return self._session().finish_restore(), []

    def _close_file(self, msg: Message) -> Reply:
        assert isinstance(msg, CloseFile)
        session = self._session()
        done = session.close_file(msg.name)
        if session.hyperv is not None:
            done = dataclasses.replace(done, cleanup=session.pending_cleanup())
        return done, []
