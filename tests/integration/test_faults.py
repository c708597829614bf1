"""Each fault the simulator can inject, seen through the full product stack.

pywinrm over NTLM-encrypted HTTP (or HTTPS), CimClient, JobFollower; the fault plan
arms server, dispatcher and world faults; the assertions are on what the product
reports and on what did (not) happen on the simulated host.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bareos_hyperv.hyperv import cluster as clustermod
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.jobs import JobFailedError, JobState, JobTimeoutError, MethodFailedError
from bareos_hyperv.wsman.cim import CimInstance, EmbeddedInstance, EndpointReference
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import (
    AuthenticationError,
    InternalErrorFault,
    NotFoundFault,
    TimedOutFault,
    WsmanConnectionError,
)
from hvsim import faults as F
from hvsim.simulation import Simulation

from .helpers import JOB_TIMEOUT, NS_VIRT, connector, follower, one, quick_sim, service, vm_instance

SNAPSHOTS = "Msvm_VirtualSystemSnapshotService"
VSSD = "Msvm_VirtualSystemSettingData"
RECOVERY = 32768


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Simulation]:
    """A fresh estate per test, HTTPS included."""
    with quick_sim(tmp_path, https=True) as simulation:
        yield simulation


@pytest.fixture
def conn(estate: Simulation) -> Iterator[Connector]:
    """Product connector (NTLM over HTTP) to every node."""
    with connector(estate) as c:
        yield c


def _epr(inst: CimInstance) -> EndpointReference:
    assert inst.epr is not None
    return inst.epr


def _snapshot(client: CimClient, vm: CimInstance, *, timeout: float = JOB_TIMEOUT) -> Any:
    settings = CimInstance("Msvm_VirtualSystemSnapshotSettingData", {"ConsistencyLevel": 2},
                           types={"ConsistencyLevel": "uint8"})
    return follower(client).call(service(client, SNAPSHOTS), "CreateSnapshot",
                                 [("AffectedSystem", _epr(vm)), ("SnapshotSettings", EmbeddedInstance(settings)),
                                  ("SnapshotType", RECOVERY)], timeout=timeout)


# ---------------------------------------------------------------------------- dispatcher: WSMAN_FAULT


def test_wsman_fault_on_the_nth_call_of_a_method(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    rule = estate.faults.add(F.WSMAN_FAULT, "CreateSnapshot", nth=2, subcode="w:InternalError",
                             reason="The WS-Management service cannot process the request.",
                             wsman_code=2150859010,
                             wmi_status={"Description": "Checkpoint operation failed.", "Operation": "ExecMethod",
                                         "ParameterInfo": "Msvm_VirtualSystemSnapshotService",
                                         "ProviderName": "WMI Provider", "StatusCode": 2147749889})
    first = _snapshot(hv01, web)  # the first call is not affected
    assert first.job is not None
    with pytest.raises(InternalErrorFault) as info:
        _snapshot(hv01, web)
    fault = info.value
    assert rule.fired == 1
    assert fault.subcode_name == "InternalError"
    assert fault.wsman_code == 2150859010
    assert fault.machine == "HV01"
    assert fault.wmi_error is not None
    assert fault.wmi_error.description == "Checkpoint operation failed."
    assert fault.wmi_error.operation == "ExecMethod"
    assert fault.wmi_error.status_code == 2147749889
    assert "Checkpoint operation failed." in str(fault)
    assert len(estate.world.snapshots("web01")) == 1  # the faulted call did nothing
    assert estate.log.count("Invoke", "CreateSnapshot", outcome="w:InternalError") == 1


def test_timed_out_pulls_are_pulled_again(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    whole = hv01.enumerate(NS_VIRT, "CIM_ResourceAllocationSettingData")
    estate.faults.add(F.WSMAN_FAULT, "Pull", times=2, subcode="w:TimedOut", provider=False,
                      reason="The WS-Management service cannot complete the operation within the time "
                             "specified in OperationTimeout.")
    again = hv01.enumerate(NS_VIRT, "CIM_ResourceAllocationSettingData", max_elements=3)
    assert {i.str("InstanceID") for i in again} == {i.str("InstanceID") for i in whole}
    assert estate.log.count("Pull", outcome="w:TimedOut") == 2
    estate.faults.add(F.WSMAN_FAULT, "Pull", times=0, subcode="w:TimedOut", provider=False)
    with pytest.raises(TimedOutFault):
        hv01.enumerate(NS_VIRT, "CIM_ResourceAllocationSettingData", max_elements=3)


# ---------------------------------------------------------------------------- world: JOB_FAIL / JOB_HANG


def test_job_fail_reports_code_description_and_errors(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    text = "Could not create backup checkpoint for virtual machine 'web01': Element not found. (0x80070490)"
    estate.faults.add(F.JOB_FAIL, "CreateSnapshot", error_code=32768, error_description=text)
    with pytest.raises(JobFailedError) as info:
        _snapshot(hv01, web)
    err = info.value
    assert err.job_state == JobState.EXCEPTION
    assert err.error_code == 32768
    assert err.error_description == text
    assert err.errors and err.errors[0].message == text  # read with GetErrorEx
    assert text in str(err) and "CreateSnapshot" in str(err)
    assert estate.log.count("Invoke", "GetErrorEx") == 1
    assert estate.world.snapshots("web01") == []


def test_job_hang_hits_the_deadline_and_is_cancelled(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    rule = estate.faults.add(F.JOB_HANG, "CreateSnapshot")
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as info:
        _snapshot(hv01, web, timeout=0.6)
    assert time.monotonic() - started < 5
    err = info.value
    assert err.cancelled and "was cancelled" in str(err) and "0.6" in str(err)
    assert err.job_state == JobState.RUNNING
    assert estate.log.count("Invoke", "RequestStateChange") == 1
    job = hv01.get(EndpointReference.build(NS_VIRT, "Msvm_ConcreteJob", {"InstanceID": str(err.job_id)}))
    assert job.int("JobState") == JobState.TERMINATED
    time.sleep(0.1)
    assert estate.world.snapshots("web01") == []  # a cancelled job leaves nothing behind
    estate.faults.remove(rule)
    done = _snapshot(hv01, web)
    assert done.job is not None and done.job.int("JobState") == JobState.COMPLETED
    assert len(estate.world.snapshots("web01")) == 1


# ---------------------------------------------------------------------------- world: MIGRATE_VM


def test_vm_migrates_before_the_method_runs(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    guid = web.str("Name")
    estate.faults.add(F.MIGRATE_VM, "CreateSnapshot", to="HV02")
    with pytest.raises(NotFoundFault) as info:
        _snapshot(hv01, web)
    assert "moved to another node" in str(info.value)
    with pytest.raises(NotFoundFault):
        hv01.get(_epr(web))
    # the cluster namespace (same on every node) knows the new owner
    owner = clustermod.owner_node(hv01, guid)
    assert owner == "HV02"
    hv02 = conn.client(owner)
    moved = hv02.get(_epr(web))
    assert moved.str("ElementName") == "web01"
    res = _snapshot(hv02, moved)
    snap = one(res.resulting("ResultingSnapshot", VSSD), "snapshot")
    assert snap.str("VirtualSystemIdentifier") == guid
    assert estate.world.vm("web01").node == "HV02"


# ---------------------------------------------------------------------------- world: RETURN_CODE


def test_return_code_is_named_per_method(conn: Connector, estate: Simulation) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    estate.faults.add(F.RETURN_CODE, "RequestStateChange", code=32775)
    with pytest.raises(MethodFailedError) as info:
        follower(hv02).call(_epr(db01), "RequestStateChange", [("RequestedState", 2)], timeout=JOB_TIMEOUT)
    err = info.value
    assert err.return_value == 32775
    assert err.return_name == "Invalid state for this operation"
    assert "32775 (Invalid state for this operation)" in str(err)
    assert "Msvm_ComputerSystem.RequestStateChange" in str(err)
    assert estate.world.vm("db01").state == 3  # nothing happened
    estate.faults.add(F.RETURN_CODE, "ImportSystemDefinition", code=32779)
    with pytest.raises(MethodFailedError) as imp:
        follower(hv02).call(service(hv02, "Msvm_VirtualSystemManagementService"), "ImportSystemDefinition",
                            [("SystemDefinitionFile", "C:\\x.vmcx"), ("GenerateNewSystemIdentifier", True)],
                            timeout=JOB_TIMEOUT)
    assert imp.value.return_name == "File in Use"


# ---------------------------------------------------------------------------- server: DROP_CONNECTION


def test_dropped_get_is_retried(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    rule = estate.faults.add(F.DROP_CONNECTION, "Get")
    sent = hv01.request_count
    again = hv01.get(_epr(web))
    assert again.str("ElementName") == "web01"
    assert rule.fired == 1
    assert hv01.request_count - sent == 2  # the dropped attempt and the retry
    assert estate.log.count("Get") == 1  # only the retry reached the dispatcher


@pytest.mark.parametrize("after_dispatch", [False, True])
def test_dropped_invoke_is_not_retried(conn: Connector, estate: Simulation, after_dispatch: bool) -> None:
    hv02 = conn.client("HV02")
    db01 = vm_instance(hv02, "db01")
    estate.faults.add(F.DROP_CONNECTION, "Invoke", dispatch=after_dispatch)
    jobs_before = len(estate.world.jobs("HV02"))
    with pytest.raises(WsmanConnectionError) as info:
        follower(hv02).call(_epr(db01), "RequestStateChange", [("RequestedState", 2)], timeout=JOB_TIMEOUT)
    text = str(info.value)
    assert "RequestStateChange" in text or "Invoke" in text
    assert "may or may not have been carried out" in text
    assert "attempts" not in text
    ran = estate.log.count("Invoke", "RequestStateChange")
    assert ran == (1 if after_dispatch else 0)  # at most once, never retried
    assert len(estate.world.jobs("HV02")) - jobs_before == ran
    # the connection is usable again afterwards
    assert hv02.get(_epr(db01)).str("ElementName") == "db01"


# ---------------------------------------------------------------------------- server: SLOW_RESPONSE


def test_answer_slower_than_the_read_timeout(estate: Simulation) -> None:
    estate.faults.add(F.SLOW_RESPONSE, "Get", times=0, seconds=3.0)
    with connector(estate, operation_timeout=1.0, read_timeout=1.5, connect_attempts=1) as conn:
        hv01 = conn.client("HV01")
        web = vm_instance(hv01, "web01")
        started = time.monotonic()
        with pytest.raises(WsmanConnectionError) as info:
            hv01.get(_epr(web))
        elapsed = time.monotonic() - started
    assert elapsed < 2.9
    text = str(info.value).lower()
    assert "timed out" in text and "get" in text
    assert estate.password not in str(info.value)


def test_slow_answer_within_the_read_timeout_is_fine(estate: Simulation) -> None:
    estate.faults.add(F.SLOW_RESPONSE, "Enumerate", seconds=0.5)
    with connector(estate, operation_timeout=1.0, read_timeout=3.0, connect_attempts=1) as conn:
        assert vm_instance(conn.client("HV01"), "web01").str("ElementName") == "web01"


# ---------------------------------------------------------------------------- server: AUTH_FAILURE


def test_injected_auth_failure(conn: Connector, estate: Simulation, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    estate.faults.add(F.AUTH_FAILURE)
    with pytest.raises(AuthenticationError) as info:
        conn.client("HV01").identify()
    assert estate.user in str(info.value) and "401" in str(info.value)
    assert estate.password not in str(info.value)
    assert all(estate.password not in r.getMessage() for r in caplog.records)
    assert estate.log.count() == 0
    # once the fault is spent a new session authenticates again
    with connector(estate) as fresh:
        assert fresh.client("HV01").identify().product_vendor == "Microsoft Corporation"


def test_auth_failure_on_an_established_session(conn: Connector, estate: Simulation) -> None:
    hv01 = conn.client("HV01")
    web = vm_instance(hv01, "web01")
    estate.faults.add(F.AUTH_FAILURE, "Get")
    with pytest.raises(AuthenticationError):
        hv01.get(_epr(web))


@pytest.mark.parametrize("https", [False, True])
def test_wrong_password_is_refused_without_leaking_it(estate: Simulation, caplog: pytest.LogCaptureFixture,
                                                      https: bool) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "N0t-The-Right-0ne!"
    with connector(estate, https=https, password=secret) as conn, pytest.raises(AuthenticationError) as info:
        vm_instance(conn.client("HV01"), "web01")
    err = info.value
    assert estate.user in str(err) and "password" in str(err)
    for text in (str(err), repr(err), repr(err.__dict__)):
        assert secret not in text
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert estate.log.count() == 0  # nothing unauthenticated reached the dispatcher
