"""``bareos-hyperv check`` against nodes where the account lacks the rights a backup needs (hvsim.rights).

A local administrator whose token UAC filters (LocalAccountTokenFilterPolicy unset), or a member of
Hyper-V Administrators only, is refused ``root/MSCluster`` and the admin shares; ``check`` names the
missing right and how to grant it on each probe that meets the refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from bareos_hyperv.cli.__main__ import main
from hvsim.rights import AccountRights
from hvsim.simulation import Simulation
from hvsim.world.scenario import MiB, add_legacy_vm, default_world


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    root = tmp_path_factory.mktemp("rights")
    world = default_world(root / "estate", disk_size=8 * MiB)
    # HV02: a local administrator with the token filtered; HVSTANDALONE01: Hyper-V Administrators only
    world.node("HV02").rights = AccountRights(local_account=True)
    world.node("HVSTANDALONE01").rights = AccountRights(administrators=False, hyperv_administrators=True)
    with Simulation(root / "sim", world=world, samba=True) as s:
        yield s


def _run(capsys: pytest.CaptureFixture[str], sim: Simulation, tmp_path: Path, *argv: str) -> Tuple[int, str]:
    creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
    smb = ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))
    code = main(["check", *argv, "--credentials-file", str(creds), "--host-map", sim.host_map_option(),
                 "--smb-host-map", smb])
    return code, capsys.readouterr().out


def _lines(out: str, status: str) -> List[str]:
    return [line for line in out.splitlines() if line.startswith(status)]


def test_check_names_the_cluster_right_and_the_token_policy(sim: Simulation, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, sim, tmp_path, "--host", "HV02")
    assert code == 2, out
    (fail,) = _lines(out, "FAIL")
    assert "cluster" in fail and "root/MSCluster" in fail, out
    assert "local Administrators group of every node" in out and "LocalAccountTokenFilterPolicy=1" in out, out


def test_check_names_the_admin_share_right_for_hyperv_administrators(sim: Simulation, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, sim, tmp_path, "--host", "HVSTANDALONE01")
    assert code == 2, out
    fails = _lines(out, "FAIL")
    # WMI works for Hyper-V Administrators: the hyperv probe passes, the admin share does not
    assert any(line.split()[1] == "hyperv" for line in _lines(out, "OK")), out
    assert any("smb" in f and "HVSTANDALONE01" in f and "administrative share" in f for f in fails), out
    assert "local Administrators group of HVSTANDALONE01" in out and "Hyper-V Administrators is not enough" in out


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    root = tmp_path_factory.mktemp("legacy")
    world = default_world(root / "estate", disk_size=8 * MiB)
    add_legacy_vm(world, "old2012")
    with Simulation(root / "sim", world=world, samba=True) as s:
        yield s


def test_check_warns_about_a_5_0_vm(legacy: Simulation, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, legacy, tmp_path, "--host", "HVCLUSTER01", "--vm", "old2012")
    warns = [w for w in _lines(out, "WARN") if "version" in w]
    assert len(warns) == 1 and "5.0" in warns[0] and "reference points" in warns[0], out
    assert "Update-VMVersion old2012" in out
    assert code == 1 and not _lines(out, "FAIL"), out
