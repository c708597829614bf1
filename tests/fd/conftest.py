"""fdsim driving packaging/bareos-fd-hyperv.py, and a watcher for the agent processes it starts."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from fdsim.fd import FdSim, JobResult

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "packaging"
AGENT_MARK = b"bareos_hyperv.agent"


def agent_pids() -> List[int]:
    """Agent processes started by this (test) process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and AGENT_MARK in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def proc_field(pid: int, name: str, key: str) -> int:
    """A numeric field of /proc/<pid>/<name> (``io`` or ``status``); 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Seen:
    """What the watcher saw of one agent process."""

    pid: int
    cmdline: bytes = b""
    environ: bytes = b""
    peak_rss_kib: int = 0


@dataclass
class AgentWatch:
    """Polls for agent processes during a job; ``action(pid)`` returning True ends its duty."""

    action: Optional[Callable[[int], bool]] = None
    seen: Dict[int, Seen] = field(default_factory=dict)
    acted: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in agent_pids():
                if pid not in self.seen:
                    try:
                        self.seen[pid] = Seen(pid, Path(f"/proc/{pid}/cmdline").read_bytes(),
                                              Path(f"/proc/{pid}/environ").read_bytes())
                    except OSError:
                        continue
                hwm = proc_field(pid, "status", "VmHWM")
                self.seen[pid].peak_rss_kib = max(self.seen[pid].peak_rss_kib, hwm)
                if self.action is not None and not self.acted and self.action(pid):
                    self.acted = True
            time.sleep(0.002)

    def __enter__(self) -> AgentWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)


@dataclass
class FdEnv:
    sim: FdSim
    tmp: Path

    def backup(self, options: str, **kw: object) -> JobResult:
        return self.sim.backup(f"python3:module_name=bareos-fd-hyperv:{options}", plugin_dir=PLUGIN_DIR,
                               extra_sys_path=[REPO], **kw)  # type: ignore[arg-type]

    def restore(self, where: Path, **kw: object) -> JobResult:
        return self.sim.restore(None, where=str(where), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO],
                                **kw)  # type: ignore[arg-type]


def plugin_fatals(result: JobResult) -> List[str]:
    """M_FATAL texts the plugin itself sent."""
    return [m.text for m in result.messages if m.source == "plugin" and m.type_name == "M_FATAL"]


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[FdEnv]:
    yield FdEnv(FdSim(tmp_path / "store"), tmp_path)
    assert agent_pids() == [], "an agent process outlived its job"
