r"""A real Samba ``smbd`` serving simulated nodes' drives, for tests and benchmarks.

Each simulated node gets its own ``smbd`` on its own ephemeral port on 127.0.0.1, so the product
connects to ``(host, port)`` per node exactly as it would to ``\\NODE\C$`` on a real cluster.
Everything the daemon writes (smb.conf, pid/lock/state/cache/private directories, the tdbsam
password database, the log) lives in a private temporary directory; the system's own Samba
(running or not) is never touched.

The test account exists only in the private password database.  Samba needs a Unix account behind
every SMB account, so the database holds ``root`` and a ``username map`` maps the test user name
onto it; every share also forces ``root`` so files are created as the test process can read them.

Only processes this module started are ever signalled: the daemon is started in its own session,
so its process-group id is its pid, and ``stop()`` signals that group (``smbd`` forks one child per
client connection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Tuple

log = logging.getLogger(__name__)

SMBD = "/usr/sbin/smbd"
SMBPASSWD = "/usr/bin/smbpasswd"
LOOPBACK = "127.0.0.1"
DEFAULT_USER = "hvadmin"
# The Unix account every SMB session runs as (we run as root here and in CI).
UNIX_ACCOUNT = "root"
# A cold first start (creating secrets.tdb, loading modules from a cold page cache) can take
# several seconds on a slow CI machine; a warm start takes ~0.1 s.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# How often to retry when the ephemeral port we picked was taken before smbd bound it.
PORT_ATTEMPTS = 5


class SambaError(RuntimeError):
    """smbd could not be set up, started or stopped."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _conf_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise SambaError(f"smb.conf value must be one line: {value!r}")
    return value


class SambaServer:
    r"""One ``smbd`` serving ``shares`` (share name -> directory) on 127.0.0.1:<ephemeral port>.

    :param shares: share name (e.g. ``C$``) -> local directory.
    :param user: SMB user name the tests log in with (exists only in the private passdb).
    :param password: that user's password (default: a random one, see :attr:`password`).
    :param encrypt: require SMB3 encryption on every share.
    :param encrypted_shares: share names that require encryption even when ``encrypt`` is false.
    :param read_only_shares: share names served read-only (writes fail with access denied).
    :param denied_shares: share names the account may not connect to: the tree connect fails with
        STATUS_ACCESS_DENIED, as Windows answers a non-administrator (or a local administrator whose
        token UAC filters) on an admin share (:mod:`hvsim.rights`).
    :param workdir: parent for the private state directory (default: the system temp dir).
    """

    def __init__(
        self,
        shares: Mapping[str, Path],
        user: str = DEFAULT_USER,
        password: str | None = None,
        *,
        encrypt: bool = False,
        encrypted_shares: Iterable[str] = (),
        read_only_shares: Iterable[str] = (),
        denied_shares: Iterable[str] = (),
        workdir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if not shares:
            raise SambaError("SambaServer needs at least one share")
        self.shares: Dict[str, Path] = {name: Path(p).resolve() for name, p in shares.items()}
        self.user = user
        # A fresh random password per server: nothing guessable in a fixture.
        self._password = password if password is not None else secrets.token_urlsafe(18)
        self.encrypt = encrypt
        self.encrypted_shares = frozenset(encrypted_shares)
        self.read_only_shares = frozenset(read_only_shares)
        self.denied_shares = frozenset(denied_shares)
        unknown = (self.encrypted_shares | self.read_only_shares | self.denied_shares) - set(self.shares)
        if unknown:
            raise SambaError(f"encrypted_shares/read_only_shares/denied_shares name unknown shares: "
                             f"{sorted(unknown)}")
        self._workdir_parent = workdir
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def __repr__(self) -> str:
        return (
            f"SambaServer(port={self.port}, pid={self.pid}, user={self.user!r}, "
            f"shares={sorted(self.shares)}, encrypt={self.encrypt})"
        )

    @property
    def password(self) -> str:
        """The test account's password (tests need it; never logged by this module)."""
        return self._password

    @property
    def pid(self) -> int | None:
        """Process id of the smbd parent, or None when not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` clients connect to."""
        return (self.host, self.port)

    @property
    def log_path(self) -> Path | None:
        """smbd's log file (in the private directory)."""
        return self.dir / "log.smbd" if self.dir else None

    # -- configuration ---------------------------------------------------------------------------

    def _write_config(self, port: int) -> Path:
        assert self.dir is not None
        d = self.dir
        for sub in ("run", "lock", "state", "cache", "private", "ncalrpc"):
            (d / sub).mkdir(exist_ok=True)
        (d / "usermap").write_text(f"{UNIX_ACCOUNT} = {_conf_value(self.user)}\n", encoding="utf-8")
        lines: List[str] = [
            "[global]",
            "server role = standalone server",
            f"smb ports = {port}",
            f"interfaces = {LOOPBACK}",
            "bind interfaces only = yes",
            "disable netbios = yes",
            f"pid directory = {d / 'run'}",
            f"lock directory = {d / 'lock'}",
            f"state directory = {d / 'state'}",
            f"cache directory = {d / 'cache'}",
            f"private dir = {d / 'private'}",
            f"ncalrpc dir = {d / 'ncalrpc'}",
            f"log file = {d / 'log.smbd'}",
            "max log size = 0",
            "log level = 1",
            f"passdb backend = tdbsam:{d / 'private' / 'passdb.tdb'}",
            f"username map = {d / 'usermap'}",
            "map to guest = never",
            "restrict anonymous = 2",
            "idmap config * : backend = tdb",
            "idmap config * : range = 3000-7999",
            # What the product negotiates with Windows: SMB 3.x, signing always on.
            "server min protocol = SMB3",
            "server signing = mandatory",
            f"server smb encrypt = {'required' if self.encrypt else 'if_required'}",
            # The CSV tree is a symlink out of each node's C drive; Windows clients see it as a
            # directory, so Samba must follow it and present it as one.
            "unix extensions = no",
            "allow insecure wide links = yes",
            "load printers = no",
            "printing = bsd",
            "printcap name = /dev/null",
            "disable spoolss = yes",
            # No xattr dependence: the temporary directory may be on a filesystem without them.
            "store dos attributes = no",
            "ea support = no",
            "map archive = no",
            "kernel oplocks = no",
            "",
        ]
        for name, path in self.shares.items():
            if not path.is_dir():
                raise SambaError(f"share {name!r}: {path} is not a directory")
            lines += [
                f"[{_conf_value(name)}]",
                f"path = {_conf_value(str(path))}",
                f"read only = {'yes' if name in self.read_only_shares else 'no'}",
                "browseable = yes",
                f"valid users = {UNIX_ACCOUNT} {_conf_value(self.user)}",
                f"force user = {UNIX_ACCOUNT}",
                # smbd checks "invalid users" against the mapped account at tree connect and answers
                # NT_STATUS_ACCESS_DENIED, the status Windows gives a non-administrator on C$.
                *([f"invalid users = {UNIX_ACCOUNT}"] if name in self.denied_shares else []),
                "follow symlinks = yes",
                "wide links = yes",
                "create mask = 0644",
                "directory mask = 0755",
            ]
            if name in self.encrypted_shares:
                lines.append("server smb encrypt = required")
            lines.append("")
        conf = d / "smb.conf"
        conf.write_text("\n".join(lines), encoding="utf-8")
        return conf

    def _add_user(self, conf: Path) -> None:
        # -s reads the password twice from stdin: nothing secret in argv.
        secret = f"{self._password}\n{self._password}\n".encode()
        res = subprocess.run(
            [SMBPASSWD, "-c", str(conf), "-a", "-s", UNIX_ACCOUNT],
            input=secret,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise SambaError(
                f"smbpasswd could not add the test account (rc={res.returncode}): "
                f"{res.stderr.decode(errors='replace').strip()}"
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SambaServer:
        """Write the private configuration, start smbd and wait until its port accepts connections."""
        if self._proc is not None:
            raise SambaError("smbd already started")
        if not os.access(SMBD, os.X_OK):
            raise SambaError(f"{SMBD} not found: install the Debian package 'samba'")
        parent = str(self._workdir_parent) if self._workdir_parent else None
        self.dir = Path(tempfile.mkdtemp(prefix="hvsim-smbd-", dir=parent))
        try:
            conf = self._write_config(445)  # the port is not used by smbpasswd
            self._add_user(conf)
            last_error = ""
            for _attempt in range(PORT_ATTEMPTS):
                port = self.port or _free_port()
                conf = self._write_config(port)
                if self._spawn(conf, port):
                    return self
                last_error = self._log_tail()
                if self.port:
                    break  # a restart must keep its port; don't wander off to another one
            raise SambaError(f"smbd did not start; log tail:\n{last_error}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, conf: Path, port: int) -> bool:
        t0 = time.monotonic()
        assert self.dir is not None
        out = open(self.dir / "smbd.stdout", "ab")  # noqa: SIM115 - handed to the child
        try:
            # start_new_session: smbd's process group is ours alone (its id is smbd's pid), so
            # stop() can signal the parent and every per-connection child without touching anything
            # else; -F keeps it in the foreground so this pid is the daemon.
            proc = subprocess.Popen(
                [SMBD, "-F", "--no-process-group", "-s", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = t0 + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.debug("smbd exited with %s while starting on port %d", proc.returncode, port)
                return False
            if _port_open(port):
                self._proc = proc
                self.port = port
                self.start_seconds = time.monotonic() - t0
                log.debug("smbd pid %d on %s:%d after %.2fs", proc.pid, LOOPBACK, port, self.start_seconds)
                return True
            time.sleep(0.02)
        self._terminate(proc)
        raise SambaError(
            f"smbd did not accept connections on {LOOPBACK}:{port} within {self.start_timeout:.0f}s; "
            f"log tail:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        texts = []
        for name in ("log.smbd", "smbd.stdout"):
            p = self.dir / name if self.dir else None
            if p is not None and p.exists():
                texts += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        def group_signal(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

        if proc.poll() is None:
            group_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("smbd pid %d ignored SIGTERM; killing it", proc.pid)
                group_signal(signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        # Per-connection children may outlive the parent by a moment.
        group_signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the daemon this object started (SIGTERM, wait, SIGKILL) and remove its private state."""
        if self._proc is not None:
            self._terminate(self._proc)
            self._proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def restart(self) -> None:
        """Stop and start again on the same port (drops every client connection)."""
        if self._proc is not None:
            self._terminate(self._proc)
            self._proc = None
        assert self.dir is not None
        if not self._spawn(self.dir / "smb.conf", self.port):
            raise SambaError(f"smbd did not restart on port {self.port}; log tail:\n{self._log_tail()}")

    def connection_pids(self) -> List[int]:
        """Pids of smbd's per-client-connection children (Linux /proc)."""
        if self._proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": helpers rename themselves (smbd-notifyd, cleanupd),
            # per-connection children keep the name "smbd".
            comm = stat[stat.find("(") + 1 : stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2 :].split()
            # A killed child stays a zombie until smbd reaps it: it no longer serves anyone.
            if int(fields[1]) == self._proc.pid and comm == "smbd" and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def drop_connections(self) -> int:
        """Kill every per-connection child (the daemon keeps listening); returns how many."""
        pids = self.connection_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def __enter__(self) -> SambaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SambaCluster:
    r"""One :class:`SambaServer` per simulated node, each serving that node's ``C$``.

    :param nodes: node name -> directory served as ``C$`` (``ClusterFileSystem.share_dir``).
    :param extra_shares: node name -> {share name -> directory} (for share-map tests).
    :param denied_shares: node name -> share names the account may not connect to (:mod:`hvsim.rights`).
    :param read_only_shares: server name -> share names the account may only read (a file share of
        Hyper-V over SMB that grants the backup account Read, :mod:`hvsim.fs`).
    """

    def __init__(
        self,
        nodes: Mapping[str, Path],
        user: str = DEFAULT_USER,
        password: str | None = None,
        *,
        extra_shares: Mapping[str, Mapping[str, Path]] | None = None,
        encrypt: bool = False,
        denied_shares: Mapping[str, Iterable[str]] | None = None,
        read_only_shares: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.servers: Dict[str, SambaServer] = {}
        extra = extra_shares or {}
        denied = {k.upper(): frozenset(v) for k, v in (denied_shares or {}).items()}
        read_only = {k.upper(): frozenset(v) for k, v in (read_only_shares or {}).items()}
        # Every node accepts the same account, as a domain account would be accepted cluster-wide.
        password = password if password is not None else secrets.token_urlsafe(18)
        for node, cdrive in nodes.items():
            shares: Dict[str, Path] = {"C$": cdrive}
            shares.update(extra.get(node, {}))
            self.servers[node.upper()] = SambaServer(shares, user, password, encrypt=encrypt,
                                                     denied_shares=denied.get(node.upper(), ()),
                                                     read_only_shares=read_only.get(node.upper(), ()))
        for node in extra:
            if node.upper() not in self.servers:
                self.servers[node.upper()] = SambaServer(dict(extra[node]), user, password, encrypt=encrypt,
                                                         denied_shares=denied.get(node.upper(), ()),
                                                         read_only_shares=read_only.get(node.upper(), ()))

    def start(self) -> SambaCluster:
        """Start every node's smbd (stopping the ones already started if one fails)."""
        try:
            for server in self.servers.values():
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node's smbd."""
        for server in self.servers.values():
            server.stop()

    def endpoint(self, node: str) -> Tuple[str, int]:
        """``(host, port)`` serving ``\\\\node\\...``."""
        return self.servers[node.upper()].address

    def endpoints(self) -> Dict[str, Tuple[str, int]]:
        """Node name -> ``(host, port)`` for every node."""
        return {n: s.address for n, s in self.servers.items()}

    def __enter__(self) -> SambaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
