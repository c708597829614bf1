"""Rights as Windows enforces them (hvsim.rights), through fdsim, pywinrm and Samba.

An account that is not a full administrator of a node is refused ``root/MSCluster`` and the admin
shares: Hyper-V Administrators is not enough, and UAC filters a *local* administrator's token over
the network unless LocalAccountTokenFilterPolicy=1.  The job's message names the right that is
missing and how to grant it, and the job leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from fdsim.fd import FdSim, JobResult
from hvsim.rights import AccountRights
from hvsim.simulation import Simulation
from hvsim.world.scenario import MiB, default_world
from tests.e2e.conftest import Estate


def _estate(tmp_path: Path, rights: AccountRights) -> Iterator[Estate]:
    world = default_world(tmp_path / "estate", disk_size=8 * MiB)
    for node in world.nodes.values():
        node.rights = AccountRights(**vars(rights))
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield Estate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


@pytest.fixture
def local_admin(tmp_path: Path) -> Iterator[Estate]:
    """The account is a local administrator of every node, and UAC filters its token (the default)."""
    yield from _estate(tmp_path, AccountRights(local_account=True))


@pytest.fixture
def hyperv_admin(tmp_path: Path) -> Iterator[Estate]:
    """The account is in Hyper-V Administrators (and Remote Management Users), not in Administrators."""
    yield from _estate(tmp_path, AccountRights(administrators=False, hyperv_administrators=True))


def _fatal(job: JobResult) -> str:
    fatals = [m.text for m in job.messages if m.type_name == "M_FATAL" and m.source == "plugin"]
    assert len(fatals) == 1, job.log()
    return fatals[0]


def _nothing_left(estate: Estate, job: JobResult) -> None:
    world = estate.sim.world
    assert job.status == "f", job.log()
    for vm in world.vms.values():
        assert world.snapshots(vm.id) == [] and world.reference_points(vm.id) == [], vm.name
    texts = [m.text for m in job.messages] + [t for _lvl, t in job.debug_messages]
    assert all(estate.sim.password not in t for t in texts)


def test_a_filtered_local_administrator_is_told_about_the_cluster_right_and_the_token_policy(
        local_admin: Estate) -> None:
    job = local_admin.backup(host="HVCLUSTER01", vm="web01")
    fatal = _fatal(job)
    assert "root/MSCluster" in fatal and "HVCLUSTER01" in fatal, fatal
    assert "local Administrator on every cluster node" in fatal, fatal
    assert "LocalAccountTokenFilterPolicy=1" in fatal and "domain account" in fatal, fatal
    _nothing_left(local_admin, job)


def test_hyperv_administrators_alone_cannot_read_the_admin_share(hyperv_admin: Estate) -> None:
    # A standalone host: WMI (root/virtualization/v2) works for Hyper-V Administrators, the admin share does not.
    job = hyperv_admin.backup(host="HVSTANDALONE01", vm="legacy01")
    fatal = _fatal(job)
    assert "\\\\HVSTANDALONE01\\D$" in fatal and "administrative share" in fatal, fatal
    assert "local Administrators group of HVSTANDALONE01" in fatal, fatal
    assert "Hyper-V Administrators is not enough" in fatal and "LocalAccountTokenFilterPolicy=1" in fatal, fatal
    # the checkpoint it had taken is gone again (WMI still works for this account)
    _nothing_left(hyperv_admin, job)


def test_a_local_administrator_with_the_token_policy_set_backs_up(tmp_path: Path) -> None:
    rights = AccountRights(local_account=True, local_account_token_filter_policy=1)
    for estate in _estate(tmp_path, rights):
        job = estate.backup(host="HVCLUSTER01", vm="db01")
        assert job.status == "T", job.log()
