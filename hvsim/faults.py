"""Fault injection for the simulator, switchable per test.

One :class:`FaultPlan` is shared by every layer of a simulation: the HTTP server
(dropped connections, slow responses, authentication failures), the WS-Man
dispatcher (a fault on the Nth call of an operation or method) and the Hyper-V
world (jobs that fail or hang, a VM that live-migrates during an operation).

Each layer asks ``plan.fire(kind, target)`` at the point where the fault would
happen; the plan counts matching calls and answers with the rule when it fires.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional

# Kinds, and which layer honours them.
DROP_CONNECTION = "drop_connection"  # server: close the TCP connection without answering
SLOW_RESPONSE = "slow_response"  # server: sleep params["seconds"] before answering
AUTH_FAILURE = "auth_failure"  # server: answer HTTP 401 although the credentials are right
WSMAN_FAULT = "wsman_fault"  # dispatcher: SOAP fault (params: subcode, reason, wsman_code, wmi_status)
QUOTA_LIMIT = "quota_limit"  # dispatcher: WinRM's per-user quota fault (params: quota = "operations"
#                              (default) | "shells", shape = "wmierror" (default) | "wsmanfault"); see
#                              hvsim.wsman.Dispatcher._quota_fault for the shapes and their sources
JOB_FAIL = "job_fail"  # world: the job started by `target` method ends in Exception (params: error_code,
#                        error_description)
JOB_HANG = "job_hang"  # world: the job started by `target` method stays Running until disarmed
JOB_WARNING = "job_warning"  # world: the job started by `target` method does its work, then ends in
#                              JobState 32768 (Completed with warnings) with one Msvm_Error of
#                              PerceivedSeverity 3 that GetErrorEx returns (params: message, message_id)
MIGRATE_VM = "migrate_vm"  # world: before `target` method runs, the VM in params["vm"] (name or GUID;
#                            default: the VM the call is about) moves to params.get("to") or another node
RETURN_CODE = "return_code"  # world: method returns params["code"] without doing anything


@dataclass
class FaultRule:
    """Fire ``kind`` on the ``nth`` matching call of ``target`` (case-insensitive), ``times`` times.

    ``target`` is an operation name (``Identify``, ``Get``, ``Enumerate``, ``Pull``,
    ``Invoke``) or a method name (``CreateSnapshot``); ``None`` matches any call.
    ``times=0`` keeps firing for every later matching call.
    """

    kind: str
    target: Optional[str] = None
    nth: int = 1
    times: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    seen: int = 0
    fired: int = 0

    def matches(self, kind: str, target: Optional[str]) -> bool:
        if kind != self.kind:
            return False
        if self.target is None:
            return True
        return target is not None and target.lower() == self.target.lower()


class FaultPlan:
    """Thread-safe list of armed fault rules."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, kind: str, target: Optional[str] = None, *, nth: int = 1, times: int = 1,
            **params: Any) -> FaultRule:
        """Arm a rule and return it (tests may inspect ``fired``)."""
        rule = FaultRule(kind=kind, target=target, nth=nth, times=times, params=dict(params))
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Disarm everything."""
        with self._lock:
            self._rules.clear()

    def remove(self, rule: FaultRule) -> None:
        """Disarm one rule (for example a JOB_HANG, to let the job finish)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def active(self, rule: FaultRule) -> bool:
        """Whether a rule is still armed."""
        with self._lock:
            return rule in self._rules

    def fire(self, kind: str, target: Optional[str] = None) -> Optional[FaultRule]:
        """Count this call against matching rules; return the rule that fires, if any."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(kind, target):
                    continue
                rule.seen += 1
                if rule.seen < rule.nth:
                    continue
                if rule.times and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                return rule
        return None
