"""Helpers for tests and demos that drive a NodeRepository the way a WS-Man client would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvsim.cim import NS_CLUSTER, NS_VIRT, CimInstance, CimRef, MethodOutcome
from hvsim.faults import FaultPlan
from hvsim.world import NodeRepository, World, default_world
from hvsim.world.jobs import JOB_COMPLETED, JOB_EXCEPTION, JOB_TERMINATED

TERMINAL = (JOB_COMPLETED, JOB_EXCEPTION, JOB_TERMINATED, 32768)


class Clock:
    """A clock the test moves by hand, so job timing is exact and fast."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


def make_world(root: Path, clock: Clock, *, files: bool = False, faults: FaultPlan | None = None,
               **kw: Any) -> World:
    """The default scenario with a hand-moved clock: jobs take 1 s, vanish 30 s after finishing."""
    kw.setdefault("job_duration", 1.0)
    kw.setdefault("time_before_removal", 30.0)
    kw.setdefault("disk_size", 16 << 20)
    return default_world(root, files=files, faults=faults, clock=clock, **kw)


def service(repo: NodeRepository, cls: str) -> CimRef:
    """The EPR of a singleton service, found by enumeration as a client does."""
    (inst,) = list(repo.instances(NS_VIRT, cls))
    assert inst.path is not None
    return inst.path


def vm_inst(repo: NodeRepository, name: str) -> CimInstance:
    """A VM's Msvm_ComputerSystem instance on this node, by ElementName."""
    found = [i for i in repo.instances(NS_VIRT, "Msvm_ComputerSystem")
             if i.get("Caption") == "Virtual Machine" and i.get("ElementName") == name]
    assert len(found) == 1, f"{name}: {len(found)} VMs on {repo.hostname}"
    return found[0]


def associated(repo: NodeRepository, obj: CimRef, assoc_class: str, result_class: str | None = None,
               namespace: str = NS_VIRT) -> list[CimInstance]:
    """ASSOCIATORS OF {obj} WHERE AssocClass = assoc_class [ResultClass = result_class]."""
    out: list[CimInstance] = []
    for a in repo.instances(namespace, assoc_class):
        refs = [v for v in a.properties.values() if isinstance(v, CimRef)]
        if not any(r.same_as(obj) for r in refs):
            continue
        for r in refs:
            if r.same_as(obj):
                continue
            if result_class and not repo.is_a(namespace, r.class_name, result_class):
                continue
            out.append(repo.get(r))
    return out


def settings_of(repo: NodeRepository, vm: CimInstance) -> CimInstance:
    """The VM's current VSSD (Msvm_SettingsDefineState)."""
    assert vm.path is not None
    (vssd,) = associated(repo, vm.path, "Msvm_SettingsDefineState")
    return vssd


def devices(repo: NodeRepository, vssd: CimInstance, cls: str = "CIM_ResourceAllocationSettingData"
            ) -> list[CimInstance]:
    """Device settings of a VSSD (Msvm_VirtualSystemSettingDataComponent)."""
    assert vssd.path is not None
    return associated(repo, vssd.path, "Msvm_VirtualSystemSettingDataComponent", cls)


def wait_job(repo: NodeRepository, clock: Clock, outcome: MethodOutcome, *, step: float = 0.5,
             limit: float = 60.0) -> CimInstance:
    """Poll the job of a 4096 outcome until it is terminal; returns the last job instance."""
    assert outcome.return_value == 4096, outcome
    ref = outcome.out["Job"]
    waited = 0.0
    while True:
        job = repo.get(ref)
        if job.get("JobState") in TERMINAL:
            return job
        assert waited < limit, "job did not finish"
        clock.tick(step)
        waited += step


def call(repo: NodeRepository, clock: Clock, target: CimRef, method: str, **params: Any
         ) -> tuple[MethodOutcome, CimInstance | None]:
    """Invoke and, for 4096, wait for the job."""
    outcome = repo.invoke(target, method, params)
    if outcome.return_value != 4096:
        return outcome, None
    return outcome, wait_job(repo, clock, outcome)


def ok(repo: NodeRepository, clock: Clock, target: CimRef, method: str, **params: Any) -> MethodOutcome:
    """Invoke, wait, and assert success (ReturnValue 0, or job Completed)."""
    outcome, job = call(repo, clock, target, method, **params)
    if job is None:
        assert outcome.return_value == 0, f"{method} returned {outcome.return_value}"
    else:
        assert job.get("JobState") == JOB_COMPLETED, (method, job.get("ErrorDescription"))
    return outcome


def job_results(repo: NodeRepository, outcome: MethodOutcome, result_class: str) -> list[CimInstance]:
    """Results of a finished job through Msvm_AffectedJobElement."""
    return associated(repo, outcome.out["Job"], "Msvm_AffectedJobElement", result_class)


def cluster_inst(repo: NodeRepository, cls: str, name: str) -> CimInstance:
    """An MSCluster object by Name."""
    return repo.get(CimRef(NS_CLUSTER, cls, (("Name", name),)))


def embedded(cls: str, **props: Any) -> CimInstance:
    """An embedded instance parameter."""
    return CimInstance(cls, NS_VIRT, dict(props))
