"""Shared plumbing of the end-to-end tests: clients on a running simulation and small look-ups.

Everything goes through the product's :class:`CimClient` (pywinrm, real HTTP with NTLM
message encryption, or HTTPS); the simulator's world is read only to check what the
client reported, never to short-cut the protocol.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.constants import NS_CLUSTER, NS_VIRT
from bareos_hyperv.hyperv.jobs import JobFollower
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.transport import TransportOptions
from hvsim.faults import FaultPlan
from hvsim.simulation import Simulation
from hvsim.world.scenario import MiB, default_world

__all__ = [
    "JOB_TIMEOUT",
    "NS_CLUSTER",
    "NS_VIRT",
    "SMALL_DISK",
    "connector",
    "follower",
    "object_path",
    "one",
    "quick_sim",
    "service",
    "vm_instance",
    "vm_settings",
    "vssd_of",
]

# Long enough for any simulated job (0.05-0.2 s) on a loaded CI machine, short enough to fail fast.
JOB_TIMEOUT = 20.0
# Small disks keep world construction (and qemu-img) fast; large enough for several RCT blocks.
SMALL_DISK = 8 * MiB


def connector(sim: Simulation, *, https: bool = False, password: str | None = None,
              **options: Any) -> Connector:
    """A product Connector for every node of ``sim`` (NTLM; HTTPS validated with the sim's CA)."""
    creds = Credentials(sim.user, password if password is not None else sim.password)
    opts = TransportOptions(transport="ntlm", ca_trust_path=sim.ca_path, **options)
    return Connector(creds, opts, https=https, host_map=sim.host_map(https=https))


def follower(client: CimClient) -> JobFollower:
    """A JobFollower polling fast enough for the simulator's short jobs."""
    return JobFollower(client, initial_interval=0.02, max_interval=0.2)


@contextlib.contextmanager
def quick_sim(root: Path, *, job_duration: float = 0.05, time_before_removal: float = 300.0,
              https: bool = False, faults: FaultPlan | None = None) -> Iterator[Simulation]:
    """A running default estate with small disks and short jobs (for timing-sensitive tests)."""
    plan = faults if faults is not None else FaultPlan()
    world = default_world(root / "estate", faults=plan, job_duration=job_duration,
                          time_before_removal=time_before_removal, disk_size=SMALL_DISK)
    with Simulation(root, world=world, https=https, faults=plan) as simulation:
        yield simulation


def one(items: list[CimInstance], what: str) -> CimInstance:
    """The single element of ``items`` (assertion message names ``what``)."""
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}"
    return items[0]


def service(client: CimClient, class_name: str) -> EndpointReference:
    """EPR of a singleton Hyper-V service, as enumerated (never hand-built)."""
    found = client.enumerate(NS_VIRT, class_name)
    inst = one(found, class_name)
    assert inst.epr is not None
    return inst.epr


def vm_instance(client: CimClient, name: str, *, planned: bool = False) -> CimInstance:
    """The Msvm_ComputerSystem (or planned system) named ``name`` on the client's host."""
    cls = "Msvm_PlannedComputerSystem" if planned else "Msvm_ComputerSystem"
    return one(client.query(NS_VIRT, f"SELECT * FROM {cls} WHERE ElementName = '{name}'"), f"{cls} {name}")


def vssd_of(client: CimClient, vm: CimInstance) -> CimInstance:
    """The live (or planned) VSSD of a VM, through Msvm_SettingsDefineState."""
    assert vm.epr is not None
    return one(client.associators(vm.epr, assoc_class="Msvm_SettingsDefineState",
                                  result_class="Msvm_VirtualSystemSettingData"), "VSSD")


def object_path(host: str, epr: EndpointReference) -> str:
    r"""The WMI object path string Hyper-V uses in ``Parent``/``HostResource`` (``\\HOST\ns:Class.Key="v"``)."""
    return f"\\\\{host}\\{epr.namespace.replace('/', chr(92))}:{epr.wql_path()}"


def vm_settings(client: CimClient, vssd: CimInstance) -> list[CimInstance]:
    """Every device setting of a VSSD, through Msvm_VirtualSystemSettingDataComponent."""
    assert vssd.epr is not None
    return client.associators(vssd.epr, assoc_class="Msvm_VirtualSystemSettingDataComponent")
