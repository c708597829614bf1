"""Fixtures shared by every test directory: a running simulated estate and clients for it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hvsim.simulation import Simulation

# Third-party fixtures (real Windows/Hyper-V data), copied from the team's shared folder with their
# licences and provenance, so that a clean clone runs every test (tests/fixtures/shared/PROVENANCE.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "shared"


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
