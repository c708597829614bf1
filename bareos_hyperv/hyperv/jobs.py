"""Follow Hyper-V method calls through their jobs to a final result (``reference/hyperv-wmi.md`` 6).

:class:`JobFollower` is used for every Invoke that can return 4096 ("job started"):

* return value 0: the method completed synchronously; a :class:`JobResult` is returned at once;
* 4096: the job EPR from the ``Job`` out parameter is polled with Get (back-off from
  50 ms doubling to 1 s) until ``JobState`` is final or the deadline passes (then the
  job is cancelled with ``RequestStateChange(5)`` unless told otherwise);
  success iff ``JobState`` is 7 (Completed) or 32768 (Completed with warnings) and
  ``ErrorCode`` is 0; on failure the job's ``GetErrorEx`` errors (embedded
  ``Msvm_Error`` CIM-XML) are collected into :class:`JobFailedError`;
* any other return value raises :class:`MethodFailedError` with the per-method name.

Works for any job class named by the EPR (``Msvm_ConcreteJob``, ``Msvm_StorageJob``,
``Msvm_MigrationJob``, cluster namespaces): nothing here hard-codes a job class.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from bareos_hyperv.errors import HyperVError, WsmanError
from bareos_hyperv.hyperv.returncodes import ReturnCode, describe, label
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference, ParamValue
from bareos_hyperv.wsman.client import CimClient, InvokeResult
from bareos_hyperv.wsman.errors import NotFoundFault

log = logging.getLogger("bareos_hyperv.hyperv.jobs")

AFFECTED_JOB_ELEMENT = "Msvm_AffectedJobElement"
REQUEST_STATE_KILL = 5  # RequestStateChange(RequestedState=5): "kill" a job (os-win stop_jobs)


class JobState(enum.IntEnum):
    """CIM_ConcreteJob.JobState plus Hyper-V's 32768 (hyperv-wmi.md 6.2)."""

    NEW = 2
    STARTING = 3
    RUNNING = 4
    SUSPENDED = 5
    SHUTTING_DOWN = 6
    COMPLETED = 7
    TERMINATED = 8
    KILLED = 9
    EXCEPTION = 10
    SERVICE = 11
    QUERY_PENDING = 12
    COMPLETED_WITH_WARNINGS = 32768


FINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.TERMINATED,
        JobState.KILLED,
        JobState.EXCEPTION,
        JobState.COMPLETED_WITH_WARNINGS,
    }
)
SUCCESS_STATES = frozenset({JobState.COMPLETED, JobState.COMPLETED_WITH_WARNINGS})


def state_name(state: int | None) -> str:
    """``"10 (Exception)"`` style label of a JobState value."""
    if state is None:
        return "unknown"
    try:
        return f"{state} ({JobState(state).name.replace('_', ' ').title()})"
    except ValueError:
        return str(state)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class JobErrorDetail:
    """One ``Msvm_Error`` from ``GetErrorEx`` (the fields operators need)."""

    message: str | None
    message_id: str | None
    error_source: str | None
    error_type: int | None
    owning_entity: str | None
    recommended_actions: Tuple[str, ...] = ()

    @classmethod
    def from_instance(cls, inst: CimInstance) -> JobErrorDetail:
        """Read the fields from a parsed ``Msvm_Error`` instance."""
        return cls(
            message=inst.opt_str("Message"),
            message_id=inst.opt_str("MessageID"),
            error_source=inst.opt_str("ErrorSource") or None,
            error_type=inst.opt_int("ErrorType"),
            owning_entity=inst.opt_str("OwningEntity"),
            recommended_actions=tuple(inst.strs("RecommendedActions")),
        )

    def __str__(self) -> str:
        text = self.message or "(no message)"
        return f"{text} [MessageID {self.message_id}]" if self.message_id else text


class JobError(HyperVError):
    """Base of the errors of a followed method call."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        host: str,
        what_to_do: str | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.method = method
        self.host = host
        ctx: Dict[str, object] = {"method": method, "host": host}
        ctx.update(context or {})
        super().__init__(message, what_to_do=what_to_do, context=ctx)


class MethodFailedError(JobError):
    """The method returned neither 0 nor 4096."""

    def __init__(self, *, method: str, host: str, target: str, return_value: int) -> None:
        self.return_value = return_value
        self.return_name = describe(method, return_value)
        super().__init__(
            f"{target}.{method} on {host} failed with return value {label(method, return_value)}",
            method=method,
            host=host,
            what_to_do="check the object's state and the Hyper-V-VMMS event log on the host",
        )


class JobFailedError(JobError):
    """The job ended in a state other than Completed, or with a non-zero ErrorCode."""

    def __init__(
        self,
        *,
        method: str,
        host: str,
        job_id: str | None,
        job_state: int | None,
        error_code: int | None,
        error_description: str | None,
        error_summary: str | None,
        errors: Sequence[JobErrorDetail],
    ) -> None:
        self.job_id = job_id
        self.job_state = job_state
        self.error_code = error_code
        self.error_description = error_description
        self.error_summary = error_summary
        self.errors: List[JobErrorDetail] = list(errors)
        reason = error_description or error_summary or (str(errors[0]) if errors else "no error text")
        details = [str(e) for e in self.errors if str(e) != reason]
        message = f"{method} on {host} failed: {reason}"
        if details:
            message += " | " + " | ".join(details)
        super().__init__(
            message,
            method=method,
            host=host,
            what_to_do="see the Hyper-V-VMMS Admin event log on the host for this job",
            context={
                "job": job_id,
                "state": state_name(job_state),
                "error_code": error_code,
                "summary": error_summary if error_summary != reason else None,
            },
        )


class JobTimeoutError(JobError):
    """The job did not finish before the deadline."""

    def __init__(
        self,
        *,
        method: str,
        host: str,
        job_id: str | None,
        job_state: int | None,
        percent: int | None,
        timeout: float,
        cancelled: bool,
    ) -> None:
        self.job_id = job_id
        self.job_state = job_state
        self.percent = percent
        self.cancelled = cancelled
        what = "the job was cancelled" if cancelled else "the job may still be running on the host"
        super().__init__(
            f"{method} on {host} did not finish within {timeout:g}s; {what}",
            method=method,
            host=host,
            what_to_do="raise the timeout for this step or check why the host is slow",
            context={"job": job_id, "state": state_name(job_state), "percent": percent},
        )


class JobCancelledError(JobError):
    """The caller asked to cancel while the job ran; the job was asked to stop."""

    def __init__(self, *, method: str, host: str, job_id: str | None, cancelled: bool) -> None:
        self.job_id = job_id
        self.cancelled = cancelled
        super().__init__(
            f"{method} on {host} was cancelled"
            + ("" if cancelled else " (the host refused to stop the job)"),
            method=method,
            host=host,
            context={"job": job_id},
        )


class JobVanishedError(JobError):
    """The job object disappeared before its final state was read."""

    def __init__(self, *, method: str, host: str, job_id: str | None, last_state: int | None) -> None:
        self.job_id = job_id
        self.last_state = last_state
        super().__init__(
            f"the job of {method} on {host} disappeared before its result was read (last state "
            f"{state_name(last_state)}); Hyper-V removes finished jobs after their TimeBeforeRemoval, "
            "so whether the operation succeeded is unknown",
            method=method,
            host=host,
            what_to_do="check the outcome on the host (Hyper-V-VMMS event log) before retrying",
            context={"job": job_id},
        )


# --------------------------------------------------------------------------- result


@dataclass
class JobResult:
    """Outcome of a followed call (also for synchronous completion, where ``job_ref`` is None)."""

    method: str
    return_value: int
    outputs: CimInstance
    job_ref: EndpointReference | None = None
    job: CimInstance | None = None
    warning: bool = False
    _client: CimClient | None = field(default=None, repr=False, compare=False)

    @property
    def synchronous(self) -> bool:
        """True when the method completed without a job (return value 0)."""
        return self.job_ref is None

    @property
    def job_id(self) -> str | None:
        """InstanceID of the job, when there was one."""
        if self.job_ref is None:
            return None
        value = self.job_ref.selector("InstanceID")
        return value if isinstance(value, str) else None

    def affected_elements(self, result_class: str | None = None) -> List[CimInstance]:
        """Objects the job affected, through ``Msvm_AffectedJobElement`` (hyperv-wmi.md 1.9).

        :raises JobError: the call completed synchronously, so there is no job to ask;
            read its out parameters (``outputs``) instead.
        """
        if self.job_ref is None or self._client is None:
            raise JobError(
                f"{self.method} completed without a job; its results are in its out parameters",
                method=self.method,
                host=self._client.host if self._client else "?",
            )
        return self._client.associators(
            self.job_ref, assoc_class=AFFECTED_JOB_ELEMENT, result_class=result_class
        )

    def resulting(self, out_param: str, result_class: str) -> List[CimInstance]:
        """The object(s) a call produced: from the REF out parameter when the host filled it
        (synchronous completion), else from the job's affected elements of ``result_class``."""
        refs = self.outputs.refs(out_param)
        if refs:
            if self._client is None:
                raise JobError("no client to fetch the result", method=self.method, host="?")
            return [self._client.get(ref) for ref in refs]
        if self.job_ref is None:
            return []
        return self.affected_elements(result_class)


# --------------------------------------------------------------------------- follower


# Poll delay as a fraction of the time a job has been running (see JobFollower.wait).
POLL_FRACTION = 0.25


class JobFollower:
    """Invoke methods and follow their jobs (see module docstring).

    :param client: the host's CIM client.
    :param initial_interval: first (and shortest) poll delay (s); later delays are a quarter of the
        job's run time so far, at most ``max_interval``.
    :param clock, sleep: injectable for tests of the deadline logic.
    """

    def __init__(
        self,
        client: CimClient,
        *,
        initial_interval: float = 0.05,
        max_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.initial_interval = initial_interval
        self.max_interval = max_interval
        self._clock = clock
        self._sleep = sleep

    def call(
        self,
        ref: EndpointReference,
        method: str,
        params: Sequence[Tuple[str, ParamValue]] = (),
        *,
        timeout: float,
        cancel_on_timeout: bool = True,
        should_cancel: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
        out_types: Mapping[str, str] | None = None,
    ) -> JobResult:
        """Invoke ``method`` on ``ref`` and return when it (and its job) finished successfully.

        :param timeout: seconds to wait for the job (the Invoke itself is bounded by the client).
        :param cancel_on_timeout: kill the job when the deadline passes.
        :param should_cancel: polled between job polls; True kills the job and raises
            :class:`JobCancelledError`.
        :param progress: called with PercentComplete after each poll.
        :raises MethodFailedError, JobFailedError, JobTimeoutError, JobCancelledError, JobVanishedError:
        """
        result = self.client.invoke(ref, method, params, out_types=out_types)
        return self.follow(
            result,
            timeout=timeout,
            cancel_on_timeout=cancel_on_timeout,
            should_cancel=should_cancel,
            progress=progress,
        )

    def follow(
        self,
        result: InvokeResult,
        *,
        timeout: float,
        cancel_on_timeout: bool = True,
        should_cancel: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> JobResult:
        """Follow the job of an Invoke result already obtained (see :meth:`call`)."""
        method = result.method
        if result.return_value == ReturnCode.COMPLETED:
            return JobResult(method, result.return_value, result.outputs, _client=self.client)
        if result.return_value != ReturnCode.JOB_STARTED:
            raise MethodFailedError(
                method=method,
                host=self.client.host,
                target=result.target.class_name,
                return_value=result.return_value,
            )
        job_ref = result.outputs.opt_ref("Job")
        if job_ref is None:
            raise JobError(
                f"{method} on {self.client.host} started a job but returned no Job reference",
                method=method,
                host=self.client.host,
                what_to_do="check the host's Hyper-V version; this is a host defect",
            )
        job = self.wait(
            job_ref,
            method=method,
            timeout=timeout,
            cancel_on_timeout=cancel_on_timeout,
            should_cancel=should_cancel,
            progress=progress,
        )
        state = job.opt_int("JobState")
        return JobResult(
            method,
            result.return_value,
            result.outputs,
            job_ref,
            job,
            warning=state == JobState.COMPLETED_WITH_WARNINGS,
            _client=self.client,
        )

    def wait(
        self,
        job_ref: EndpointReference,
        *,
        method: str,
        timeout: float,
        cancel_on_timeout: bool = True,
        should_cancel: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> CimInstance:
        """Poll ``job_ref`` until a final state; return the final job instance on success."""
        host = self.client.host
        job_id = job_ref.selector("InstanceID")
        job_id_text = job_id if isinstance(job_id, str) else None
        started = self._clock()
        deadline = started + timeout
        interval = self.initial_interval
        last_state: int | None = None
        while True:
            try:
                job = self.client.get(job_ref)
            except NotFoundFault:
                raise JobVanishedError(
                    method=method, host=host, job_id=job_id_text, last_state=last_state
                ) from None
            state = job.opt_int("JobState")
            percent = job.opt_int("PercentComplete")
            if state != last_state:
                log.debug(
                    "job %s of %s on %s: state %s, %s%%",
                    job_id_text,
                    method,
                    host,
                    state_name(state),
                    percent,
                )
            last_state = state
            if progress is not None and percent is not None:
                progress(percent)
            if state in FINAL_STATES:
                break
            if should_cancel is not None and should_cancel():
                cancelled = self._kill(job_ref, method)
                raise JobCancelledError(method=method, host=host, job_id=job_id_text, cancelled=cancelled)
            now = self._clock()
            if now >= deadline:
                cancelled = self._kill(job_ref, method) if cancel_on_timeout else False
                raise JobTimeoutError(
                    method=method,
                    host=host,
                    job_id=job_id_text,
                    job_state=state,
                    percent=percent,
                    timeout=timeout,
                    cancelled=cancelled,
                )
            self._sleep(min(interval, max(deadline - now, 0.0)))
            # The next poll after a quarter of the time the job has run so far: a job is seen
            # finished at most ~25 % (plus one poll) after it ended, short jobs are not made to
            # wait for a doubled interval, and a long one costs a poll per max_interval.
            interval = min(max(self.initial_interval, (self._clock() - started) * POLL_FRACTION),
                           self.max_interval)
        error_code = job.opt_int("ErrorCode")
        if state in SUCCESS_STATES and not error_code:
            if state == JobState.COMPLETED_WITH_WARNINGS:
                log.warning(
                    "%s on %s completed with warnings: %s",
                    method,
                    host,
                    job.opt_str("ErrorDescription") or job.opt_str("JobStatus") or "no details",
                )
            return job
        raise JobFailedError(
            method=method,
            host=host,
            job_id=job_id_text,
            job_state=state,
            error_code=error_code,
            error_description=job.opt_str("ErrorDescription") or None,
            error_summary=job.opt_str("ErrorSummaryDescription") or None,
            errors=self._errors(job_ref, method),
        )

    def errors(self, job_ref: EndpointReference, method: str) -> List[JobErrorDetail]:
        """The errors and warnings (``GetErrorEx``) of a job, e.g. one that completed with warnings; best effort."""
        return self._errors(job_ref, method)

    def _errors(self, job_ref: EndpointReference, method: str) -> List[JobErrorDetail]:
        """``GetErrorEx`` of a failed job; best effort (older job classes lack it)."""
        try:
            res = self.client.invoke(job_ref, "GetErrorEx", [])
        except WsmanError as exc:
            log.debug("GetErrorEx on the job of %s failed: %s", method, exc)
            return []
        if res.return_value != ReturnCode.COMPLETED:
            log.debug(
                "GetErrorEx on the job of %s returned %s", method, label("GetErrorEx", res.return_value)
            )
            return []
        try:
            return [JobErrorDetail.from_instance(inst) for inst in res.outputs.instances("Errors")]
        except WsmanError as exc:
            log.debug("GetErrorEx output of the job of %s is unreadable: %s", method, exc)
            return []

    def _kill(self, job_ref: EndpointReference, method: str) -> bool:
        """Ask the job to stop (``RequestStateChange(5)``); True when the host accepted."""
        try:
            res = self.client.invoke(job_ref, "RequestStateChange", [("RequestedState", REQUEST_STATE_KILL)])
        except WsmanError as exc:
            log.warning("could not cancel the job of %s on %s: %s", method, self.client.host, exc)
            return False
        if res.return_value not in (ReturnCode.COMPLETED, ReturnCode.JOB_STARTED):
            log.warning(
                "could not cancel the job of %s on %s: %s",
                method,
                self.client.host,
                label("RequestStateChange", res.return_value),
            )
            return False
        return True
