"""Checkpoints as real hosts make them, through pywinrm against hvsim: an application-consistent request
that ends crash-consistent (with a warning, or silently), and merges that outlive their job."""

from __future__ import annotations

import logging

import pytest

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.checkpoints import Achieved, CheckpointManager, Consistency, device_key
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim.simulation import Simulation


def _setup(sim: Simulation, node: str, name: str) -> tuple[Connector, HostServices, vmmod.VmSummary]:
    conn = Connector(Credentials(sim.user, sim.password), TransportOptions(), host_map=sim.host_map())
    client = conn.client(node)
    (vm,) = vmmod.select_vms(vmmod.list_vms(client), [name])
    return conn, HostServices(client, node), vm


def test_a_checkpoint_completed_with_warnings_is_crash_consistent(sim: Simulation) -> None:
    web = sim.world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = "degrade_warning"
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        with pytest.raises(HyperVError) as info:
            mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION_REQUIRED, job_id=1)
        text = str(info.value)
        assert "completed the application-consistent checkpoint with warnings" in text
        assert "not application consistent" in text  # Hyper-V's own words are kept
        assert vm.ref.guid in text and "HV01" in text
        assert sim.world.snapshots(web.id) == []  # nothing left behind
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=2)
        assert cp.achieved is Achieved.CRASH
        assert "recorded as crash-consistent" in cp.warnings[0]
        rp = mgr.to_reference_point(cp)
        assert rp.consistency_level == 2 and rp.achieved is Achieved.CRASH


def test_a_silently_degraded_checkpoint_is_told_by_its_reference_point(sim: Simulation) -> None:
    web = sim.world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = "degrade_silent"
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION_REQUIRED, job_id=3)
        assert cp.achieved is Achieved.APPLICATION and cp.warnings == []  # the job said nothing
        rp = mgr.to_reference_point(cp)
        assert rp.achieved is Achieved.CRASH
        web.guest_vss = True
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=4)
        assert mgr.to_reference_point(cp).achieved is Achieved.APPLICATION


def test_the_checkpoint_names_the_file_it_froze_for_each_drive(sim: Simulation) -> None:
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        client = conn.client("HV01")
        settings = vmmod.read_settings(client, vm)
        drives = [d for d in vmmod.normalise(vm, settings, []).drives if d.path]
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.CRASH, job_id=5)
        try:
            assert {device_key(d.settings_id): d.path for d in drives} == cp.frozen_by_device
            assert sorted(cp.frozen_by_device.values()) == sorted(cp.frozen_disks)
        finally:
            mgr.destroy(cp.epr)


def test_waiting_for_a_merge_that_outlives_its_job(sim: Simulation, caplog: pytest.LogCaptureFixture) -> None:
    web = sim.world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 1.5
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        client = conn.client("HV01")
        mgr = CheckpointManager(services, timeout=60)
        assert vmmod.wait_for_merges(client, vm, timeout=5) == 0.0
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=6)
        mgr.destroy(cp.epr)
        assert sim.world.snapshots(web.id) == [] and vmmod.merge_in_progress(client, vm) == "merging disks"
        with caplog.at_level(logging.INFO, logger="bareos_hyperv.hyperv.vms"):
            waited = vmmod.wait_for_merges(client, vm, timeout=30)
        assert 0.5 < waited < 10
        assert any("waiting for it to finish" in r.getMessage() for r in caplog.records)
        assert not sim.world.merging(web.id)


def test_a_merge_longer_than_the_bound_is_an_error_naming_the_vm(sim: Simulation) -> None:
    web = sim.world.vm("web01")
    web.checkpoints.merge = "async"
    web.checkpoints.merge_seconds = 3600.0
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        client = conn.client("HV01")
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=7)
        mgr.destroy(cp.epr)
        with pytest.raises(HyperVError) as info:
            vmmod.wait_for_merges(client, vm, timeout=1.0)
        text = str(info.value)
        assert "still merging disks" in text and "web01" in text and "HV01" in text and "timeout=" in text


def test_a_warned_checkpoint_that_cannot_be_removed_is_named_for_the_next_job(sim: Simulation) -> None:
    from hvsim.faults import WSMAN_FAULT

    web = sim.world.vm("web01")
    web.guest_vss = False
    web.checkpoints.vss_failure = "degrade_warning"
    rule = sim.faults.add(WSMAN_FAULT, "DestroySnapshot", reason="Provider is busy.")
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        with pytest.raises(HyperVError) as info:
            mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION_REQUIRED, job_id=8)
        assert rule.fired == 1
        assert "could not be removed; the next job of this plugin removes it" in str(info.value)
        assert mgr.remove_stale(vm.epr) == ["bareos-hyperv job 8"]
        assert sim.world.snapshots(web.id) == []


def test_a_drive_the_checkpoint_did_not_freeze_is_an_error(sim: Simulation, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from bareos_hyperv.backup.hyperv import HyperVBackupSource

    conn, _services, vm = _setup(sim, "HV01", "web01")
    with conn:
        config = vmmod.normalise(vm, vmmod.read_settings(conn.client("HV01"), vm), [])
    drive = next(d for d in config.drives if d.path)
    assert drive.path is not None
    key = device_key(drive.settings_id)
    frozen = "C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system_X.avhdx"
    with caplog.at_level(logging.INFO, logger="bareos_hyperv.backup.hyperv"):
        assert HyperVBackupSource._frozen_path(config, drive, {key: frozen}) == frozen
    assert any("the checkpoint froze" in r.getMessage() for r in caplog.records)
    # ids that do not match, but the same file: that file
    assert HyperVBackupSource._frozen_path(config, drive, {"other": drive.path.upper()}) == drive.path
    assert HyperVBackupSource._frozen_path(config, drive, None) == drive.path  # an estimate: the file now
    moved = dataclasses.replace(drive, path="D:\\elsewhere.vhdx")
    with pytest.raises(HyperVError) as info:
        HyperVBackupSource._frozen_path(config, moved, {"other": drive.path})
    assert "the checkpoint has no virtual hard disk for a drive" in str(info.value)
    assert "web01" in str(info.value) and "D:\\elsewhere.vhdx" in str(info.value)
