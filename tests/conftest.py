"""Fixtures shared by every test directory: a running simulated estate and clients for it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hvsim.simulation import Simulation

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulation]:
    """The default simulated estate (cluster HVCLUSTER01 + HVSTANDALONE01), WinRM on HTTP and HTTPS."""
    with Simulation(tmp_path) as simulation:
        yield simulation


@pytest.fixture
def sim_with_samba(tmp_path: Path) -> Iterator[Simulation]:
    """The default estate with one real smbd per node serving C$ and D$."""
    with Simulation(tmp_path, samba=True) as simulation:
        yield simulation
