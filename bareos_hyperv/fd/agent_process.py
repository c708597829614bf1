"""Start, talk to and stop the per-job agent process (runs inside bareos-fd: standard library only).

The agent is ``<agent_python> -m bareos_hyperv.agent --fd N`` where ``N`` is one end of a Unix
socket pair.  ``agent_python`` defaults to the interpreter the package was installed for, derived
from where this package was imported (``sys.executable`` inside the fd is the fd binary itself) and
checked: it must import this same package and find the agent's dependencies
(:func:`find_agent_python`).

Nothing secret goes on the command line or into the agent's environment: credentials travel
in ``StartJob`` over the socket, and the variables that could hold a password are removed from
the environment the agent inherits.

Stopping is bounded: wait, then SIGTERM, then SIGKILL, with an operator message at each step,
so a stuck agent can never hang the fd.  The agent's stderr goes to an unlinked temporary file
whose tail is shown when the agent fails to start or dies.  Once the process is gone, log
records it left on the socket (what its cleanup after SIGTERM did) are read and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
from typing import IO, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Type, TypeVar

from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, ProtocolError
from bareos_hyperv.protocol.framing import Channel, ChannelClosed, ChannelTimeout
from bareos_hyperv.protocol.messages import (
    PROTOCOL_VERSION,
    EndJob,
    ErrorReply,
    Hello,
    HelloReply,
    JobDone,
    LogRecord,
    Message,
    Progress,
    expect,
)

__all__ = [
    "SECRET_ENV",
    "AgentDied",
    "AgentProcess",
    "RemoteError",
    "Reporter",
    "agent_environment",
    "agent_python_candidates",
    "default_agent_python",
    "find_agent_python",
    "probe_agent_python",
]

# Environment variables that may carry a password; the agent never inherits them.
SECRET_ENV = ("BAREOS_HYPERV_PASSWORD",)
AGENT_MODULE = "bareos_hyperv.agent"
# Seconds for each step of stopping: exit after EndJob, exit after SIGTERM, exit after SIGKILL.
EXIT_GRACE = 10.0
TERM_GRACE = 10.0
KILL_GRACE = 5.0
STDERR_TAIL = 2000
# Seconds to wait for each log record an exited agent left on the socket (EOF follows at once).
DRAIN_TIMEOUT = 1.0
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE_DIRS = ("site-packages", "dist-packages")
SYSTEM_BIN = "/usr/bin"  # where the distribution's python3 lives (Debian, RHEL)
# Top-level modules the agent imports (setup.cfg install_requires; pyspnego is "spnego").
AGENT_DEPENDENCIES = ("winrm", "lxml", "smbprotocol", "spnego", "requests", "cryptography")
PROBE_TIMEOUT = 30.0
SET_AGENT_PYTHON = ("set agent_python= to the python3 of the environment where bareos-hyperv and its "
                    "dependencies are installed (e.g. agent_python=/opt/bareos-hyperv/bin/python3)")

M = TypeVar("M", bound=Message)


class Reporter(Protocol):
    """Where the agent process reports to (the plugin's job log)."""

    def info(self, text: str) -> None:
        """An operator message."""

    def warning(self, text: str) -> None:
        """A warning for the operator."""

    def debug(self, level: int, text: str) -> None:
        """A trace line for the fd's debug output."""

    def agent_log(self, record: LogRecord) -> None:
        """A log record the agent sent."""

    def progress(self, record: Progress) -> None:
        """A progress report the agent sent."""


class RemoteError(BareosHyperVError):
    """An error the agent reported, with the kind, hint and context it gave."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.message, what_to_do=reply.what_to_do, context=reply.context)
        self.kind = reply.kind


class AgentDied(ProtocolError):
    """The agent process ended (or stopped answering) in the middle of the job."""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def agent_python_candidates(package_dir: str = _PACKAGE_DIR, *, system_bin: str = SYSTEM_BIN) -> List[str]:
    """Interpreters that may run the agent, most likely first, derived from where the package was imported.

    * ``<prefix>/lib/pythonX.Y/site-packages/bareos_hyperv``: a virtual environment (pip into a venv,
      the Debian package's private ``/usr/lib/bareos-hyperv``, the RPM's ``%{_libdir}/bareos-hyperv``)
      or a system prefix (RHEL's ``/usr/lib64/python3.9``) -> ``<prefix>/bin/pythonX.Y``, ``python3``,
      ``python``;
    * ``/usr/local/lib/pythonX.Y/dist-packages`` (Debian: ``pip install --break-system-packages`` as
      root) and ``~/.local/lib/pythonX.Y/site-packages`` (``pip --user``): directories the system
      interpreter reads, so also ``/usr/bin/pythonX.Y`` and ``/usr/bin/python3``;
    * ``/usr/lib/python3/dist-packages`` (a Debian package of the module) -> ``/usr/bin/python3``;
    * anything else (a source checkout, ``module_path=``) -> its ``.venv`` or ``venv``.
    """
    site = os.path.dirname(package_dir)
    candidates: List[str] = []
    if os.path.basename(site) in SITE_DIRS:
        lib = os.path.dirname(site)  # .../lib/python3.11, .../lib64/python3.9 or /usr/lib/python3
        version = os.path.basename(lib)
        prefix = os.path.dirname(os.path.dirname(lib))
        names = [version, "python3", "python"]
        candidates += [os.path.join(prefix, "bin", n) for n in names]
        if os.path.normpath(prefix) != os.path.normpath(os.path.dirname(system_bin)):
            candidates += [os.path.join(system_bin, n) for n in names[:2]]
    else:
        candidates += [os.path.join(site, env, "bin", n) for env in (".venv", "venv") for n in ("python3", "python")]
    return list(dict.fromkeys(candidates))


def default_agent_python(package_dir: str = _PACKAGE_DIR, *, system_bin: str = SYSTEM_BIN) -> Optional[str]:
    """The first executable of :func:`agent_python_candidates` (not checked further); None when none is."""
    return next((c for c in agent_python_candidates(package_dir, system_bin=system_bin) if _is_executable(c)), None)


def agent_environment(package_dir: str = _PACKAGE_DIR) -> Dict[str, str]:
    """The agent's environment: the fd's, without secrets, and with the package's parent directory on
    PYTHONPATH when it is not a site directory (source checkout, ``module_path=``), so that fd and agent
    run the same code and speak the same protocol."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    if os.path.basename(os.path.dirname(package_dir)) not in SITE_DIRS:
        parent = os.path.dirname(package_dir)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = parent + (os.pathsep + old if old else "")
    return env


# Run by a candidate interpreter: where it finds bareos_hyperv, and which agent dependencies it lacks.
# find_spec only looks (no import): quick, and harmless for whatever the candidate is.
_PROBE = ("import importlib.util, json, sys\n"
          "spec = importlib.util.find_spec('bareos_hyperv')\n"
          "where = list(spec.submodule_search_locations or []) if spec else []\n"
          "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n"
          "print(json.dumps({'where': where, 'missing': missing, 'version': sys.version.split()[0]}))\n")


def probe_agent_python(python: str, package_dir: str = _PACKAGE_DIR) -> Optional[str]:
    """Why ``python`` cannot run the agent for the package at ``package_dir`` (None: it can).

    It must import ``bareos_hyperv`` from that same directory (fd and agent speak one protocol
    version) and find every module the agent needs.
    """
    try:
        done = subprocess.run([python, "-c", _PROBE, *AGENT_DEPENDENCIES], env=agent_environment(package_dir),
                              cwd="/", stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot be run: {exc}"
    try:
        found = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        where, missing = list(found["where"]), list(found["missing"])
    except (ValueError, IndexError, KeyError, TypeError):
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"is not a working python3 ({err[-1] if err else f'exit status {done.returncode}'})"
    if not where:
        return "does not find bareos_hyperv"
    same = os.path.realpath(package_dir)
    if all(os.path.realpath(w) != same for w in where):
        return f"finds another bareos_hyperv, in {where[0]}"
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


def find_agent_python(package_dir: str = _PACKAGE_DIR, *, system_bin: str = SYSTEM_BIN,
                      probe: Callable[[str, str], Optional[str]] = probe_agent_python) -> str:
    """The interpreter that runs the agent when ``agent_python=`` is not set: the first candidate
    (:func:`agent_python_candidates`) that imports this very package and has its dependencies.

    :raises ConfigurationError: none fits; the message lists each interpreter tried and why it was passed over.
    """
    tried: List[str] = []
    for candidate in agent_python_candidates(package_dir, system_bin=system_bin):
        if not _is_executable(candidate):
            if os.path.lexists(candidate):
                tried.append(f"{candidate} (not executable)")
            continue
        problem = probe(candidate, package_dir)
        if problem is None:
            return candidate
        tried.append(f"{candidate} ({problem})")
    if not tried:
        tried = [f"none of {', '.join(agent_python_candidates(package_dir, system_bin=system_bin))} exists"]
    raise ConfigurationError(
        f"cannot tell which python3 has bareos-hyperv installed: bareos_hyperv was imported from {package_dir}; "
        f"tried {'; '.join(tried)}", what_to_do=SET_AGENT_PYTHON)


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class AgentProcess:
    """One agent process and the fd's end of its socket.

    ``request`` is used from the job thread only; ``abort`` may come from the cancel thread.
    """

    def __init__(self, python: Optional[str], reporter: Reporter, *, timeout: float,
                 exit_grace: float = EXIT_GRACE, term_grace: float = TERM_GRACE) -> None:
        chosen = python or find_agent_python()
        if not _is_executable(chosen):
            raise ConfigurationError(f"agent_python {chosen} does not exist or is not executable",
                                     what_to_do=SET_AGENT_PYTHON)
        self.python = chosen
        self.reporter = reporter
        self.timeout = float(timeout)
        self.exit_grace = exit_grace
        self.term_grace = term_grace
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.channel: Optional[Channel] = None
        self.pid = 0
        self._stderr: Optional[IO[bytes]] = None
        self._lock = threading.Lock()
        self._stopping = False
        # JobDone an agent sent on its own as it ended after SIGTERM: what its cleanup left.
        self.farewell: Optional[JobDone] = None

    # -- start -----------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        return agent_environment()

    def start(self) -> HelloReply:
        """Spawn the agent and do the version handshake."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Kept open until the agent is gone (its tail explains failures): no context manager.
        self._stderr = tempfile.TemporaryFile(prefix="bareos-hyperv-agent-")  # noqa: SIM115
        argv = [self.python, "-m", AGENT_MODULE, "--fd", str(theirs.fileno())]
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
                pass_fds=(theirs.fileno(),), env=self._environment(), close_fds=True, start_new_session=True,
                # `python -m` puts the working directory first on sys.path: the fd's directory must not
                # be able to shadow the package or its dependencies.
                cwd="/")
        except OSError as exc:
            ours.close()
            raise ConfigurationError(f"cannot start the agent with agent_python {self.python}: "
                                     f"{exc.strerror or exc}", what_to_do=SET_AGENT_PYTHON) from None
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.channel = Channel(ours)
        self.reporter.debug(100, f"agent started: pid {self.pid}, {' '.join(argv)}")
        try:
            self.channel.send(Hello(version=PROTOCOL_VERSION, fd_pid=os.getpid()))
            reply = self.channel.recv(timeout=self.timeout)
        except (ChannelClosed, ChannelTimeout) as exc:
            self.abort("it did not answer the handshake", quiet=True)
            tail = self.stderr_tail()
            self._close()
            raise ConfigurationError(
                f"the agent started with agent_python {self.python} {_describe_exit(self._returncode())} "
                f"before answering ({exc.message})" + (f"; its last output: {tail}" if tail else ""),
                what_to_do=SET_AGENT_PYTHON) from None
        if isinstance(reply, ErrorReply):
            self.abort("the handshake failed", quiet=True)
            self._close()
            raise RemoteError(reply)
        hello = expect(reply, HelloReply)
        if hello.version != PROTOCOL_VERSION:
            self.abort("the handshake failed", quiet=True)
            self._close()
            raise ProtocolError(f"the agent speaks protocol version {hello.version}, this plugin "
                                f"{PROTOCOL_VERSION}", what_to_do="install the same bareos-hyperv version for "
                                                                  "the fd plugin and for agent_python")
        self.reporter.debug(100, f"agent pid {hello.pid} ready: bareos-hyperv {hello.package_version}, "
                                 f"{hello.python}")
        return hello

    # -- talk ------------------------------------------------------------------------------------

    def _returncode(self, wait: float = 0.0) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return None

    def stderr_tail(self) -> str:
        """The last lines the agent wrote to stderr, on one line."""
        if self._stderr is None:
            return ""
        try:
            self._stderr.flush()
            size = os.fstat(self._stderr.fileno()).st_size
            data = os.pread(self._stderr.fileno(), STDERR_TAIL, max(0, size - STDERR_TAIL))
        except OSError:
            return ""
        return " | ".join(line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip())

    def _died(self, what: str, exc: ProtocolError) -> AgentDied:
        code = self._returncode(wait=1.0)
        tail = self.stderr_tail()
        detail = f"sent nothing for {self.timeout:.0f} s" if isinstance(exc, ChannelTimeout) else _describe_exit(code)
        return AgentDied(
            f"the agent process (pid {self.pid}) {detail} while {what}"
            + (f"; its last output: {tail}" if tail else ""),
            what_to_do="look for the cause above and in the system log (OOM killer, segfault); "
                       "raise agent_timeout= if the source is just slow")

    def request(self, msg: Message, reply_type: Type[M], *, what: str) -> Tuple[M, List[int]]:
        """Send ``msg`` and return the reply of ``reply_type`` with the descriptors it carries.

        Log and progress messages in front of the reply go to the reporter.  An agent error
        raises :class:`RemoteError`; a dead or silent agent raises :class:`AgentDied`.
        """
        if self.channel is None:
            raise ProtocolError("the agent is not running")
        try:
            self.channel.send(msg)
            while True:
                reply, fds = self.channel.recv_with_fds(timeout=self.timeout)
                if isinstance(reply, LogRecord):
                    self.reporter.agent_log(reply)
                elif isinstance(reply, Progress):
                    self.reporter.progress(reply)
                elif isinstance(reply, ErrorReply):
                    raise RemoteError(reply)
                elif isinstance(reply, JobDone) and reply_type is not JobDone:
                    self.farewell = reply  # stopped by SIGTERM while we waited; EOF follows
                else:
                    try:
                        return expect(reply, reply_type), fds
                    except ProtocolError:
                        for fd in fds:
                            os.close(fd)
                        raise
        except (ChannelClosed, ChannelTimeout) as exc:
            raise self._died(what, exc) from None

    # -- stop ------------------------------------------------------------------------------------

    def stop(self) -> Optional[JobDone]:
        """End the job: EndJob, collect the statistics, then make sure the process is gone."""
        done: Optional[JobDone] = None
        if self.channel is not None and self._returncode() is None and not self._stopping:
            try:
                done, _ = self.request(EndJob(), JobDone, what="ending the job")
            except (AgentDied, RemoteError, ProtocolError) as exc:
                self.reporter.debug(100, f"agent did not end cleanly: {exc}")
        self._reap()
        return done

    @property
    def returncode(self) -> Optional[int]:
        """The exit status (negative: killed by that signal), None while it runs or before start."""
        return self._returncode()

    def _reap(self) -> None:
        with self._lock:
            if self.proc is not None and self._returncode(wait=self.exit_grace) is None:
                self.reporter.warning(f"the agent (pid {self.pid}) has not exited {self.exit_grace:.0f} s after "
                                      "the end of the job; sending it SIGTERM")
                self._escalate()
            if self._returncode() is not None:
                self._drain()
            self._close()

    def _drain(self) -> None:
        """Report the log records an exited agent left on the socket (then EOF ends the loop)."""
        if self.channel is None:
            return
        try:
            while True:
                msg = self.channel.recv(timeout=DRAIN_TIMEOUT)
                if isinstance(msg, LogRecord):
                    self.reporter.agent_log(msg)
                elif isinstance(msg, JobDone):
                    self.farewell = msg
                else:
                    self.reporter.debug(100, f"agent left a {msg.TYPE} message after it ended")
        except ProtocolError:
            return

    def abort(self, reason: str, *, quiet: bool = False) -> None:
        """Stop the agent now (cancel, fatal error): SIGTERM, then SIGKILL.  Any thread."""
        with self._lock:
            self._stopping = True
            if self.proc is not None and self.proc.poll() is None:
                if not quiet:
                    self.reporter.info(f"stopping the agent (pid {self.pid}) because {reason}: sending SIGTERM")
                self._escalate(quiet=quiet)

    def _escalate(self, *, quiet: bool = False) -> None:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            self.proc.terminate()
        if self._returncode(wait=self.term_grace) is not None:
            return
        if not quiet:
            self.reporter.warning(f"the agent (pid {self.pid}) ignored SIGTERM for {self.term_grace:.0f} s; "
                                  "killing it")
        with contextlib.suppress(OSError):
            self.proc.kill()
        if self._returncode(wait=KILL_GRACE) is None:
            self.reporter.warning(f"the agent (pid {self.pid}) is still there {KILL_GRACE:.0f} s after SIGKILL; "
                                  "giving up on it")

    def _close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def close_fds(fds: Sequence[int]) -> None:
    """Close descriptors, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
