"""Cluster role operations in cases the simulator does not produce: a WS-Man timeout during a move,
a move that never completes, a role name that is not a VM role (the core cluster group)."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import pytest

from bareos_hyperv.hyperv.cluster import ClusterRoleError, move_role, remove_vm_role
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference
from bareos_hyperv.wsman.client import InvokeResult
from bareos_hyperv.wsman.errors import TimedOutFault


class FakeCluster:
    """Answers Get of one MSCluster_ResourceGroup and records Invokes (duck-typed CimClient)."""

    host = "HV01"

    def __init__(self, owners: Sequence[str], *, group_type: int = 111, state: int = 0,
                 invoke_error: Optional[Exception] = None) -> None:
        self.owners = list(owners)
        self.group_type = group_type
        self.state = state
        self.invoke_error = invoke_error
        self.invoked: List[Tuple[str, List[Tuple[str, Any]]]] = []

    def get(self, ref: EndpointReference) -> CimInstance:
        owner = self.owners.pop(0) if len(self.owners) > 1 else self.owners[0]
        return CimInstance("MSCluster_ResourceGroup", {"Name": ref.selector("Name"), "OwnerNode": owner,
                                                       "GroupType": self.group_type, "State": self.state}, epr=ref)

    def invoke(self, ref: EndpointReference, method: str, params: Sequence[Tuple[str, Any]] = ()) -> InvokeResult:
        self.invoked.append((method, list(params)))
        if self.invoke_error is not None:
            raise self.invoke_error
        return InvokeResult(method=method, return_value=0, outputs=CimInstance(f"{method}_OUTPUT"), target=ref)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def _timed_out() -> TimedOutFault:
    return TimedOutFault(host="HV01", action="MoveToNewNode", resource_uri=None, reason="The operation timed out.")


def test_move_role_waits_for_the_owner_after_a_wsman_timeout() -> None:
    client = FakeCluster(["HV01", "HV01", "HV01", "HV02"], invoke_error=_timed_out())
    clock = Clock()
    move_role(client, "web01", "hv02", timeout=60, sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert client.invoked == [("MoveToNewNode", [("NodeName", "HV02"), ("TimeOut", 60)])]
    assert clock.t == 2.0


def test_move_role_gives_up_after_its_timeout() -> None:
    client = FakeCluster(["HV01"], invoke_error=_timed_out())
    clock = Clock()
    with pytest.raises(ClusterRoleError) as info:
        move_role(client, "web01", "HV02", timeout=5, sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert "owned by HV01, not HV02" in str(info.value) and info.value.what_to_do


def test_remove_vm_role_never_touches_another_kind_of_role() -> None:
    client = FakeCluster(["HV01"], group_type=9999)
    with pytest.raises(ClusterRoleError) as info:
        remove_vm_role(client, "Cluster Group")  # type: ignore[arg-type]
    assert "not a virtual machine role" in str(info.value)
    assert client.invoked == []


def test_remove_vm_role_skips_take_offline_when_offline_or_failed() -> None:
    for state, expected in ((1, ["DestroyGroup"]), (2, ["DestroyGroup"]), (0, ["TakeOffline", "DestroyGroup"])):
        client = FakeCluster(["HV01"], state=state)
        remove_vm_role(client, "web01")  # type: ignore[arg-type]
        assert [m for m, _p in client.invoked] == expected
        assert client.invoked[-1][1] == [("Options", 1)]
