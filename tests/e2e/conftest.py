"""End to end: fdsim (the Bareos fd) drives the real plugin against hvsim (WinRM) and real Samba."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "packaging"


def _escape(value: str) -> str:
    """A plugin-string value: ``:`` separates options, so a colon inside a value is written ``\\:``."""
    return value.replace(":", "\\:")


@dataclass
class Estate:
    """A running simulated estate with Samba, an fd emulation, and the plugin options to reach them."""

    sim: Simulation
    fd: FdSim
    tmp: Path
    credentials_file: Path

    def options(self, **extra: str) -> str:
        base = {
            "credentials_file": str(self.credentials_file),
            "host_map": self.sim.host_map_option(),
            "smb_host_map": ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(self.sim.smb_map().items())),
            "timeout": "120",
        }
        base.update(extra)
        # An empty value removes a default option (e.g. credentials_file="" to use the environment).
        return ":".join(f"{k}={_escape(v)}" for k, v in base.items() if v != "")

    def backup(self, level: str = "F", **options: str) -> JobResult:
        return self.fd.backup(f"python3:module_name=bareos-fd-hyperv:{self.options(**options)}", level=level,
                              plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])

    def restore_to(self, where: Path, jobid: int | None = None, *, upto: int | None = None,
                   files: list[str] | None = None) -> JobResult:
        return self.fd.restore(None, jobid=jobid, where=str(where), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO],
                               upto=upto, files=files)


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Simulation(tmp_path / "sim", samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


def agent_processes() -> list[int]:
    """Agent processes that are children of this test process (none may outlive a job)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me and \
                        b"bareos_hyperv.agent" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


@pytest.fixture
def no_agent_left() -> Iterator[None]:
    """Fails the test when an agent process outlives the jobs it served."""
    yield
    assert agent_processes() == [], "an agent process outlived its job"
