"""Asynchronous jobs (``Msvm_ConcreteJob`` / ``Msvm_StorageJob``) that progress with the clock.

A job is created by a method that returned 4096.  Its effect (``work``) runs
when the job's duration has elapsed, the first time anything looks at the
world after that instant (every repository call advances the engine), so a
client sees the result only once the job reports Completed, as on Windows.
A finished job disappears ``time_before_removal`` seconds after it ended.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from hvsim.cim import CimRef
from hvsim.faults import JOB_FAIL, JOB_HANG, JOB_WARNING, FaultPlan, FaultRule

# JobState values (hyperv-wmi.md 6.2)
JOB_NEW = 2
JOB_STARTING = 3
JOB_RUNNING = 4
JOB_COMPLETED = 7
JOB_TERMINATED = 8
JOB_EXCEPTION = 10
# Hyper-V's "Completed with warnings": the work was done and GetErrorEx returns the warnings
# (Microsoft's WmiUtilities.cs JobState enum; the ValidatePlannedSystem page's sample prints the
# Msvm_Errors of a job that succeeded:
# https://learn.microsoft.com/windows/win32/hyperv_v2/validateplannedsystem-msvm-virtualsystemmanagementservice).
JOB_COMPLETED_WITH_WARNINGS = 32768

# JobType codes Hyper-V reports (informational; clients must not depend on them).
JOB_TYPES: dict[str, int] = {
    "RequestStateChange": 2, "DefineSystem": 12, "DestroySystem": 13, "ModifySystemSettings": 14,
    "AddResourceSettings": 15, "ModifyResourceSettings": 16, "RemoveResourceSettings": 17,
    "CreateSnapshot": 70, "DestroySnapshot": 71, "ConvertToReferencePoint": 74,
    "DestroyReferencePoint": 75, "ExportSystemDefinition": 40, "ImportSystemDefinition": 41,
    "ValidatePlannedSystem": 42, "RealizePlannedSystem": 43, "ValidateVirtualHardDisk": 96,
    "GetVirtualDiskChanges": 100, "GetVirtualHardDiskSettingData": 101, "GetVirtualHardDiskState": 102,
}


class JobFailure(Exception):
    """Raised by a job's work: the job ends in Exception with these details."""

    def __init__(self, code: int, description: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.errors = errors or []


Work = Callable[[], list[CimRef]]


@dataclass
class Job:
    """One job and its progress."""

    instance_id: str
    node: str
    class_name: str
    method: str
    description: str
    submitted: float
    submitted_wall: _dt.datetime
    duration: float
    work: Work | None
    affected: list[CimRef] = field(default_factory=list)
    state: int = JOB_NEW
    percent: int = 0
    error_code: int = 0
    error_description: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    finished_wall: _dt.datetime | None = None
    hang_rule: FaultRule | None = None
    fail_rule: FaultRule | None = None
    warn_rule: FaultRule | None = None
    cancellable: bool = True
    storage_parent: str = ""
    storage_child: str = ""
    rollback: Callable[[], None] | None = None  # undoes an effect applied at invoke time
    # warnings the work itself reported: the job ends "Completed with warnings" (32768) and
    # GetErrorEx returns them (e.g. a checkpoint that fell back to crash consistency)
    warnings: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.finished_at is not None

    @property
    def job_type(self) -> int:
        """Hyper-V's JobType code for the method (0 when unknown)."""
        return JOB_TYPES.get(self.method, 0)


class JobEngine:
    """Every job of every node of one world; not thread-safe (the world lock covers it)."""

    def __init__(self, clock: Callable[[], float], faults: FaultPlan, *, duration: float,
                 time_before_removal: float) -> None:
        self.clock = clock
        self.faults = faults
        self.duration = duration
        self.time_before_removal = time_before_removal
        self.jobs: dict[str, Job] = {}

    def start(self, node: str, method: str, description: str, work: Work | None, *,
              affected: list[CimRef] | None = None, storage: bool = False,
              failure: JobFailure | None = None, duration: float | None = None,
              rollback: Callable[[], None] | None = None) -> Job:
        """Create a job for ``method`` (consults JOB_FAIL / JOB_HANG / JOB_WARNING rules targeted at it).

        ``failure`` makes a job that ends in Exception without running any work
        (for failures Windows reports through the job rather than the return value).
        """
        job = Job(
            instance_id=str(uuid.uuid4()).upper(),
            node=node.upper(),
            class_name="Msvm_StorageJob" if storage else "Msvm_ConcreteJob",
            method=method,
            description=description,
            submitted=self.clock(),
            submitted_wall=_dt.datetime.now(_dt.timezone.utc),
            duration=self.duration if duration is None else duration,
            work=work,
            affected=list(affected or []),
            rollback=rollback,
        )
        job.fail_rule = self.faults.fire(JOB_FAIL, method)
        job.hang_rule = self.faults.fire(JOB_HANG, method)
        job.warn_rule = self.faults.fire(JOB_WARNING, method)
        if failure is not None:
            job.work = _raiser(failure)
        self.jobs[job.instance_id] = job
        return job

    def advance(self) -> None:
        """Move every job forward to the present; run work of jobs that are due; purge old ones."""
        now = self.clock()
        for job in list(self.jobs.values()):
            if job.finished:
                assert job.finished_at is not None
                if now >= job.finished_at + self.time_before_removal:
                    del self.jobs[job.instance_id]
                continue
            elapsed = now - job.submitted
            hanging = job.hang_rule is not None and self.faults.active(job.hang_rule)
            if hanging or elapsed < job.duration:
                frac = 0.5 if hanging or job.duration <= 0 else min(elapsed / job.duration, 0.99)
                job.state = JOB_NEW if frac < 0.1 and not hanging else JOB_RUNNING
                job.percent = int(frac * 100)
                continue
            self._finish(job, now)

    def _finish(self, job: Job, now: float) -> None:
        job.finished_at = now
        job.finished_wall = _dt.datetime.now(_dt.timezone.utc)
        if job.fail_rule is not None:
            params = job.fail_rule.params
            job.state = JOB_EXCEPTION
            job.error_code = int(params.get("error_code", 32768))
            job.error_description = str(params.get(
                "error_description", f"'{job.method}' failed: injected failure (simulator fault plan)."))
            job.errors = [error_instance(job.error_description, job.error_code)]
            if job.rollback is not None:
                job.rollback()
            return
        try:
            results = job.work() if job.work is not None else []
        except JobFailure as exc:
            job.state = JOB_EXCEPTION
            job.error_code = exc.code
            job.error_description = exc.description
            job.errors = exc.errors or [error_instance(exc.description, exc.code)]
            return
        job.affected.extend(r for r in results if not any(r.same_as(a) for a in job.affected))
        job.state = JOB_COMPLETED
        job.percent = 100
        if job.warnings:
            job.state = JOB_COMPLETED_WITH_WARNINGS
            job.errors = [error_instance(text, 0, severity=3) for text in job.warnings]
        if job.warn_rule is not None:
            params = job.warn_rule.params
            job.state = JOB_COMPLETED_WITH_WARNINGS
            job.errors = [error_instance(
                str(params.get("message", f"'{job.method}' completed with a warning (simulator fault plan).")),
                0, message_id=str(params.get("message_id", "32768")), severity=3)]

    def cancel(self, job: Job) -> bool:
        """RequestStateChange(5/Terminate): stop a running job without applying its effect."""
        if job.finished or not job.cancellable:
            return False
        job.finished_at = self.clock()
        job.finished_wall = _dt.datetime.now(_dt.timezone.utc)
        job.state = JOB_TERMINATED
        job.error_code = 32768
        job.error_description = f"The operation '{job.method}' was cancelled."
        job.errors = [error_instance(job.error_description, job.error_code)]
        return True

    def on_node(self, node: str) -> list[Job]:
        """Jobs that live on a node."""
        return [j for j in self.jobs.values() if j.node == node.upper()]


def _raiser(failure: JobFailure) -> Work:
    def work() -> list[CimRef]:
        raise failure
    return work


def error_instance(message: str, code: int = 32768, *, source: str = "", message_id: str = "32768",
                   arguments: list[str] | None = None, severity: int = 5,
                   error_type: int = 4) -> dict[str, Any]:
    """Property values of one ``Msvm_Error`` (PerceivedSeverity 5 = major, ErrorType 4 = software)."""
    return {
        "ErrorType": error_type,
        "OtherErrorType": None,
        "OwningEntity": "Microsoft-Windows-Hyper-V-VMMS",
        "MessageID": message_id,
        "Message": message,
        "MessageArguments": list(arguments or []),
        "PerceivedSeverity": severity,
        "ProbableCause": 0,
        "ProbableCauseDescription": None,
        "RecommendedActions": [],
        "ErrorSource": source,
        "ErrorSourceFormat": 2 if source else 0,
        "OtherErrorSourceFormat": None,
        "CIMStatusCode": 1,
        "CIMStatusCodeDescription": None,
        "ErrorCode": code,
    }
