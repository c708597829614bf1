"""Recovery checkpoints, export, image facts and RCT through the product's Hyper-V layer and the simulator."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.checkpoints import Achieved, CheckpointManager, Consistency
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.exporter import BACKUP_INTENT_PRESERVE_CHAIN, export_configuration, export_template
from bareos_hyperv.hyperv.images import ImageService
from bareos_hyperv.hyperv.jobs import JobFollower
from bareos_hyperv.hyperv.paths import object_path
from bareos_hyperv.hyperv.schema import to_typed_cimxml
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.disk import DiskFormat, DiskType
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim.simulation import Simulation


def _setup(sim: Simulation, node: str, name: str) -> tuple[Connector, HostServices, vmmod.VmSummary]:
    conn = Connector(Credentials(sim.user, sim.password), TransportOptions(), host_map=sim.host_map())
    client = conn.client(node)
    (vm,) = vmmod.select_vms(vmmod.list_vms(client), [name])
    return conn, HostServices(client, node), vm


def _live_disks(conn: Connector, mgr: CheckpointManager, vm: vmmod.VmSummary, node: str) -> list[str]:
    epr = vmmod.read_settings(conn.client(node), vm).system.epr
    assert epr is not None
    return mgr.disk_paths(epr)


def test_recovery_checkpoint_freezes_disks_and_becomes_a_reference_point(sim: Simulation) -> None:
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        live_before = _live_disks(conn, mgr, vm, "HV01")
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=42)
        assert cp.achieved is Achieved.APPLICATION and not cp.warnings
        assert cp.frozen_disks == live_before  # the checkpoint references the frozen parents
        live_after = _live_disks(conn, mgr, vm, "HV01")
        assert all(p.lower().endswith(".avhdx") for p in live_after)
        assert [s.opt_str("ElementName") for s in mgr.list_ours(vm.epr)] == ["bareos-hyperv job 42"]

        images = ImageService(services, timeout=60)
        info = images.info(cp.frozen_disks[0])
        assert (info.format, info.type) == (DiskFormat.VHDX, DiskType.DYNAMIC)
        local = sim.world.local("HV01", cp.frozen_disks[0])
        qemu = subprocess.run(["qemu-img", "info", "--output=json", str(local)], capture_output=True, text=True,
                              check=True).stdout
        assert f'"virtual-size": {info.virtual_size}' in qemu
        chain = images.chain(live_after[0])
        assert [c.type for c in chain] == [DiskType.DIFFERENCING, DiskType.DYNAMIC]

        rp = mgr.to_reference_point(cp)
        assert len(rp.rct_ids) == 2
        assert mgr.list_ours(vm.epr) == []
        live_final = _live_disks(conn, mgr, vm, "HV01")
        assert live_final == live_before  # merged back

        sim.world.guest_write(vm.ref.guid, 0, 3 * 1024 * 1024, b"\x11" * 65536)
        rct = next(iter(rp.rct_ids.values()))
        changed = images.changed_ranges(live_final[0], rct, info.virtual_size)
        assert changed and all(o <= 3 * 1024 * 1024 < o + n for o, n in changed[:1])
        mgr.destroy_reference_point(rp.epr)
        assert mgr.reference_points(vm.epr) == []


def test_application_consistency_falls_back_or_fails_as_asked(sim: Simulation) -> None:
    web = sim.world.vm("web01")
    web.guest_vss = False  # the guest's backup integration service is not answering
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        with pytest.raises(HyperVError) as info:
            mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION_REQUIRED, job_id=1)
        assert "application-consistent" in str(info.value)
        assert mgr.list_ours(vm.epr) == [] and sim.world.snapshots(vm.ref.guid) == []
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=2)
        assert cp.achieved is Achieved.CRASH and "fell back" in cp.warnings[0]
        mgr.destroy(cp.epr)
        assert sim.world.snapshots(vm.ref.guid) == []


def test_stale_checkpoints_of_this_plugin_are_removed_but_not_others(sim: Simulation) -> None:
    conn, services, vm = _setup(sim, "HV02", "db01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=7)
        assert cp.achieved is Achieved.COLD  # db01 is off
        removed = mgr.remove_stale(vm.epr)
        assert removed == ["bareos-hyperv job 7"]
        assert sim.world.snapshots(vm.ref.guid) == []


def test_configuration_only_export_writes_native_files(sim: Simulation) -> None:
    conn, services, vm = _setup(sim, "HV01", "web01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.CRASH, job_id=3)
        staging = "C:\\ClusterStorage\\Volume1\\bareos-staging\\job3"
        export_configuration(services, vm.epr, cp.epr, staging, timeout=60)
        target = Path(sim.world.local("HV01", staging)) / "Virtual Machines"
        names = sorted(p.name for p in target.iterdir())
        assert names == [f"{vm.ref.guid}.vmcx", f"{vm.ref.guid}.vmgs", f"{vm.ref.guid}.vmrs"]
        mgr.destroy(cp.epr)


def test_a_failed_cold_checkpoint_is_not_blamed_on_the_guest(sim: Simulation) -> None:
    """db01 is off: no application consistency is attempted, so a failure is Hyper-V's job error."""
    from bareos_hyperv.hyperv.jobs import JobFailedError
    from hvsim.faults import JOB_FAIL

    sim.faults.add(JOB_FAIL, "CreateSnapshot", error_code=32768, error_description="Disk full on the CSV")
    conn, services, vm = _setup(sim, "HV02", "db01")
    with conn:
        mgr = CheckpointManager(services, timeout=60)
        with pytest.raises(JobFailedError) as info:
            mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION_REQUIRED, job_id=5)
    assert "application-consistent" not in str(info.value)
    assert sim.world.snapshots(vm.ref.guid) == []


def test_export_names_the_host_as_wmi_does_when_reached_by_an_address(sim: Simulation) -> None:
    """Issue 9 point 7: the job may reach a node by an address or alias; the snapshot's object path
    must name the machine as Hyper-V does, and the settings start from the host's own template."""

    alias = "10.20.30.41"
    host_map = {**sim.host_map(), alias: sim.host_map()["HV01"]}
    conn = Connector(Credentials(sim.user, sim.password), TransportOptions(), host_map=host_map)
    with conn:
        client = conn.client(alias)
        (vm,) = vmmod.select_vms(vmmod.list_vms(client), ["web01"])
        services = HostServices(client, alias)
        assert services.computer_name.upper() == "HV01"
        template = export_template(services, vm.epr)
        assert template is not None and template.class_name == "Msvm_VirtualSystemExportSettingData"
        mgr = CheckpointManager(services, timeout=60)
        cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.CRASH, job_id=8)
        try:
            assert services.path_of(cp.epr).upper().startswith("\\\\HV01\\ROOT\\VIRTUALIZATION\\V2:")
            # A path assembled from the address names no machine Hyper-V knows as itself.
            assembled = object_path(alias, cp.epr)
            with pytest.raises(HyperVError):
                settings = CimInstance("Msvm_VirtualSystemExportSettingData", {
                    "CopySnapshotConfiguration": 3, "CopyVmStorage": False, "CopyVmRuntimeInformation": False,
                    "CreateVmExportSubdirectory": False, "SnapshotVirtualSystem": assembled})
                JobFollower(client).call(services.management, "ExportSystemDefinition",
                                         [("ComputerSystem", vm.epr), ("ExportDirectory", "C:\\x"),
                                          ("ExportSettingData", EmbeddedInstance(to_typed_cimxml(settings)))],
                                         timeout=60)
            staging = "C:\\ClusterStorage\\Volume1\\bareos-staging\\job8"
            intent = export_configuration(services, vm.epr, cp.epr, staging, timeout=60)
            assert intent == BACKUP_INTENT_PRESERVE_CHAIN == 0
            target = Path(sim.world.local("HV01", staging)) / "Virtual Machines"
            assert (target / f"{vm.ref.guid}.vmcx").exists()
        finally:
            mgr.destroy(cp.epr)
