"""Replacing reference points through the product's Hyper-V layer and the simulator (CheckpointManager)."""

from __future__ import annotations

from bareos_hyperv.hyperv import vms as vmmod
from bareos_hyperv.hyperv.checkpoints import CheckpointManager, Consistency, ReferencePoint
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim import faults as F
from hvsim.simulation import Simulation
from hvsim.world.state import VST_RECOVERY


def _setup(sim: Simulation, node: str, name: str) -> tuple[Connector, CheckpointManager, vmmod.VmSummary]:
    conn = Connector(Credentials(sim.user, sim.password), TransportOptions(), host_map=sim.host_map())
    client = conn.client(node)
    (vm,) = vmmod.select_vms(vmmod.list_vms(client), [name])
    return conn, CheckpointManager(HostServices(client, node), timeout=60), vm


def _full(mgr: CheckpointManager, vm: vmmod.VmSummary, job_id: int) -> ReferencePoint:
    cp = mgr.create(vm.epr, vm.ref.guid, vm.state, Consistency.APPLICATION, job_id=job_id)
    return mgr.to_reference_point(cp)


def _theirs(sim: Simulation, name: str) -> str:
    world = sim.world
    vm = world.vm(name)
    with world.lock:
        snap = world.take_snapshot(vm, VST_RECOVERY, 2)
        rp = world.convert_to_reference_point(vm, snap)
    return f"Microsoft:{rp.id}"


def _listed(mgr: CheckpointManager, vm: vmmod.VmSummary) -> set[str]:
    return {rp.str("InstanceID") for rp in mgr.reference_points(vm.epr)}


def test_only_recorded_reference_points_are_destroyed(sim: Simulation) -> None:
    conn, mgr, vm = _setup(sim, "HV01", "web01")
    with conn:
        theirs = _theirs(sim, "web01")
        first = _full(mgr, vm, 1)
        second = _full(mgr, vm, 2)
        assert _listed(mgr, vm) == {theirs, first.instance_id, second.instance_id}
        # ids compare case-insensitively; one recorded id is already gone from the host
        result = mgr.replace_reference_points(vm.epr, keep=[second.instance_id],
                                              ours=[first.instance_id.lower(), "Microsoft:GONE"])
        assert result.destroyed == [first.instance_id]
        assert result.others == [theirs]
        assert result.gone == ["Microsoft:GONE"] and result.failed == {}
        assert _listed(mgr, vm) == {theirs, second.instance_id}
        # what is kept is kept even when recorded as ours (a differential chain's base)
        third = _full(mgr, vm, 3)
        result = mgr.replace_reference_points(vm.epr, keep=[second.instance_id, third.instance_id],
                                              ours=[second.instance_id])
        assert result.destroyed == [] and _listed(mgr, vm) == {theirs, second.instance_id, third.instance_id}


def test_a_failed_destroy_is_reported_not_raised(sim: Simulation) -> None:
    conn, mgr, vm = _setup(sim, "HV01", "web01")
    with conn:
        first = _full(mgr, vm, 1)
        second = _full(mgr, vm, 2)
        sim.faults.add(F.JOB_FAIL, "DestroyReferencePoint", error_code=32768, error_description="Busy (injected).")
        result = mgr.replace_reference_points(vm.epr, keep=[second.instance_id], ours=[first.instance_id])
        assert list(result.failed) == [first.instance_id] and "Busy (injected)." in result.failed[first.instance_id]
        assert _listed(mgr, vm) == {first.instance_id, second.instance_id}
        result = mgr.replace_reference_points(vm.epr, keep=[second.instance_id], ours=[first.instance_id])
        assert result.destroyed == [first.instance_id] and _listed(mgr, vm) == {second.instance_id}
