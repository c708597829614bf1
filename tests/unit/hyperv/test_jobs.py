"""JobFollower against a scripted WS-Man endpoint over real HTTP (tests/unit/wsman/replay_server.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest

from bareos_hyperv.hyperv.jobs import (
    JobCancelledError,
    JobFailedError,
    JobFollower,
    JobTimeoutError,
    JobVanishedError,
    MethodFailedError,
)
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference, to_cimxml
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.transport import Endpoint, TransportOptions

V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"
SNAP_SVC = EndpointReference.build(
    "root/virtualization/v2",
    "Msvm_VirtualSystemSnapshotService",
    {
        "CreationClassName": "Msvm_VirtualSystemSnapshotService",
        "Name": "vssnapsvc",
        "SystemCreationClassName": "Msvm_ComputerSystem",
        "SystemName": "HV01",
    },
)
VM = EndpointReference.build(
    "root/virtualization/v2",
    "Msvm_ComputerSystem",
    {"CreationClassName": "Msvm_ComputerSystem", "Name": "VM-1"},
)
MSVM_ERROR = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared/cim-xml"
              / "nova-hv12osdemo1-Msvm_Error-v2-migration-job.xml")


def _load() -> ModuleType:
    name = "bareos_hyperv_tests_replay_server"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "wsman" / "replay_server.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


rs = _load()


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class FakeHost:
    """Scripted host: a method returns ``return_value``; its job walks through ``states``."""

    def __init__(
        self,
        return_value: int = 4096,
        states: List[int] | None = None,
        error_code: int = 0,
        job_class: str = "Msvm_ConcreteJob",
        vanish_after: int | None = None,
        errors: List[str] | None = None,
    ) -> None:
        self.return_value = return_value
        self.states = states or [4, 4, 7]
        self.error_code = error_code
        self.job_class = job_class
        self.vanish_after = vanish_after
        self.errors = errors or []
        self.gets = 0
        self.invoked: List[str] = []

    def __call__(self, req: object) -> object:
        action: str = req.action  # type: ignore[attr-defined]
        if action.endswith("/Get"):
            self.gets += 1
            if self.vanish_after is not None and self.gets > self.vanish_after:
                return rs.Reply(
                    rs.envelope(
                        "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>a:DestinationUnreachable"
                        "</s:Value></s:Subcode></s:Code><s:Reason><s:Text>not found</s:Text></s:Reason>"
                        "</s:Fault>"
                    ),
                    status=500,
                )
            state = self.states[min(self.gets - 1, len(self.states) - 1)]
            final = state in (7, 8, 9, 10, 32768)
            props: Dict[str, object] = {
                "InstanceID": "JOB-1",
                "JobState": state,
                "PercentComplete": 100 if final else 10 * self.gets,
                "ErrorCode": self.error_code if final else 0,
                "ErrorDescription": "The snapshot failed." if self.error_code else None,
                "ErrorSummaryDescription": "Checkpoint operation failed." if self.error_code else None,
            }
            return rs.Reply(rs.envelope(rs.instance_xml(self.job_class, props)))
        if action.endswith("/Enumerate"):  # the association walk from the job
            item = rs.item_xml(
                "Msvm_VirtualSystemSettingData",
                {"InstanceID": "Microsoft:SNAP-1"},
                {"InstanceID": "Microsoft:SNAP-1"},
            )
            return rs.Reply(
                rs.envelope(
                    f"<n:EnumerateResponse><n:EnumerationContext/><w:Items>{item}</w:Items>"
                    "<w:EndOfSequence/></n:EnumerateResponse>"
                )
            )
        method = action.rsplit("/", 1)[-1]
        self.invoked.append(method)
        if method == "GetErrorEx":
            errs = "".join(f"<p:Errors>{_esc(e)}</p:Errors>" for e in self.errors)
            return rs.Reply(
                rs.envelope(
                    f'<p:GetErrorEx_OUTPUT xmlns:p="{V2}/{self.job_class}">{errs}'
                    "<p:ReturnValue>0</p:ReturnValue></p:GetErrorEx_OUTPUT>"
                )
            )
        if method == "RequestStateChange":
            return rs.Reply(
                rs.envelope(
                    f'<p:RequestStateChange_OUTPUT xmlns:p="{V2}/{self.job_class}">'
                    "<p:ReturnValue>0</p:ReturnValue></p:RequestStateChange_OUTPUT>"
                )
            )
        job = (
            f"<p:Job>{rs.epr_xml(self.job_class, {'InstanceID': 'JOB-1'})}</p:Job>"
            if self.return_value == 4096
            else ""
        )
        return rs.Reply(
            rs.envelope(
                f'<p:{method}_OUTPUT xmlns:p="{V2}/Msvm_VirtualSystemSnapshotService">{job}'
                f'<p:ResultingSnapshot xsi:nil="true"/><p:ReturnValue>{self.return_value}'
                f"</p:ReturnValue></p:{method}_OUTPUT>"
            )
        )


@pytest.fixture
def host_server():
    servers = []

    def start(host: FakeHost):
        server = rs.ReplayServer(host).__enter__()
        servers.append(server)
        client = CimClient(
            Endpoint("127.0.0.1", server.port),
            Credentials(rs.ReplayServer.username, rs.ReplayServer.password),
            TransportOptions(transport="basic", allow_unencrypted_basic=True, operation_timeout=5),
        )
        return server, client

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _call(client: CimClient, **kw: object):
    follower = JobFollower(client, initial_interval=0.001, max_interval=0.004)
    return follower.call(
        SNAP_SVC,
        "CreateSnapshot",
        [("AffectedSystem", VM), ("SnapshotType", 32768)],
        timeout=kw.pop("timeout", 5.0),
        **kw,
    )  # type: ignore[arg-type]


def test_job_completes_and_affected_elements(host_server) -> None:
    host = FakeHost(states=[3, 4, 4, 7])
    server, client = host_server(host)
    seen: List[int] = []
    result = _call(client, progress=seen.append)
    assert result.return_value == 4096 and not result.synchronous and not result.warning
    assert result.job_id == "JOB-1" and result.job is not None and result.job.int("JobState") == 7
    assert host.gets == 4 and seen == [10, 20, 30, 100]
    snaps = result.resulting("ResultingSnapshot", "Msvm_VirtualSystemSettingData")
    assert [s.str("InstanceID") for s in snaps] == ["Microsoft:SNAP-1"]
    enum = server.requests[-1]
    assert enum.text(".//b:AssociationClassName") == "Msvm_AffectedJobElement"
    assert enum.text(".//b:Object/a:ReferenceParameters/w:ResourceURI") == f"{V2}/Msvm_ConcreteJob"


def test_synchronous_completion_returns_immediately(host_server) -> None:
    host = FakeHost(return_value=0)
    _, client = host_server(host)
    result = _call(client)
    assert result.synchronous and result.return_value == 0 and host.gets == 0
    assert client.request_count == 1
    with pytest.raises(Exception, match="without a job"):
        result.affected_elements()


def test_completed_with_warnings_is_success(host_server) -> None:
    _, client = host_server(FakeHost(states=[4, 32768], job_class="Msvm_StorageJob"))
    result = _call(client)
    assert result.warning and result.job is not None and result.job.class_name == "Msvm_StorageJob"


def test_failed_job_collects_geterrorex(host_server) -> None:
    second = to_cimxml(
        CimInstance(
            "Msvm_Error",
            {"Message": "Could not create backup checkpoint.", "MessageID": "32768", "ErrorSource": "VM-1"},
        )
    )
    host = FakeHost(states=[4, 10], error_code=32768, errors=[MSVM_ERROR.read_text(), second])
    _, client = host_server(host)
    with pytest.raises(JobFailedError) as info:
        _call(client)
    err = info.value
    assert err.job_id == "JOB-1" and err.job_state == 10 and err.error_code == 32768
    assert err.error_description == "The snapshot failed."
    assert err.error_summary == "Checkpoint operation failed."
    assert [e.message_id for e in err.errors] == ["21024", "32768"]
    assert err.errors[1].error_source == "VM-1"
    text = str(err)
    assert "CreateSnapshot" in text and "127.0.0.1" in text and "10 (Exception)" in text
    assert "Could not create backup checkpoint." in text and "JOB-1" in text
    assert host.invoked == ["CreateSnapshot", "GetErrorEx"]


def test_completed_with_error_code_is_failure(host_server) -> None:
    _, client = host_server(FakeHost(states=[7], error_code=5))
    with pytest.raises(JobFailedError) as info:
        _call(client)
    assert info.value.job_state == 7 and info.value.error_code == 5


@pytest.mark.parametrize(
    ("method", "code", "name"),
    [
        ("ImportSystemDefinition", 32779, "File in Use"),
        ("GetVirtualHardDiskSettingData", 32779, "File not found"),
        ("CreateSnapshot", 32775, "Invalid state for this operation"),
        ("CreateSnapshot", 5, "Invalid State"),
    ],
)
def test_other_return_values_raise_with_method_name(host_server, method: str, code: int, name: str) -> None:
    _, client = host_server(FakeHost(return_value=code))
    with pytest.raises(MethodFailedError) as info:
        JobFollower(client).call(SNAP_SVC, method, [], timeout=1)
    assert info.value.return_value == code and info.value.return_name == name
    assert f"{code} ({name})" in str(info.value) and method in str(info.value)


def test_timeout_cancels_the_job(host_server) -> None:
    host = FakeHost(states=[4])
    _, client = host_server(host)
    with pytest.raises(JobTimeoutError) as info:
        _call(client, timeout=0.05)
    assert info.value.cancelled and info.value.job_state == 4
    assert host.invoked == ["CreateSnapshot", "RequestStateChange"]
    host2 = FakeHost(states=[4])
    _, client2 = host_server(host2)
    with pytest.raises(JobTimeoutError) as info:
        _call(client2, timeout=0.02, cancel_on_timeout=False)
    assert not info.value.cancelled and host2.invoked == ["CreateSnapshot"]


def test_cancel_request_kills_the_job(host_server) -> None:
    host = FakeHost(states=[4])
    server, client = host_server(host)
    polls = {"n": 0}

    def should_cancel() -> bool:
        polls["n"] += 1
        return polls["n"] >= 2

    with pytest.raises(JobCancelledError) as info:
        _call(client, should_cancel=should_cancel)
    assert info.value.cancelled
    kill = server.requests[-1]
    assert kill.action.endswith("/Msvm_ConcreteJob/RequestStateChange")
    assert kill.text(".//*[local-name()='RequestedState']") == "5"


def test_vanished_job_is_reported(host_server) -> None:
    _, client = host_server(FakeHost(states=[4], vanish_after=2))
    with pytest.raises(JobVanishedError) as info:
        _call(client)
    assert info.value.last_state == 4 and "TimeBeforeRemoval" in str(info.value)


def test_poll_delay_follows_the_jobs_age_up_to_the_cap(host_server) -> None:
    _, client = host_server(FakeHost(states=[4] * 30 + [7]))
    sleeps: List[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    follower = JobFollower(client, initial_interval=0.05, max_interval=0.4, sleep=sleep, clock=lambda: now[0])
    follower.call(SNAP_SVC, "CreateSnapshot", [], timeout=60)
    assert sleeps[:5] == [0.05] * 5  # a short job is polled at the shortest delay
    elapsed = 0.0
    for seconds in sleeps:
        assert seconds == pytest.approx(min(max(0.05, elapsed / 4), 0.4))
        elapsed += seconds
    assert sleeps[-1] == 0.4 and sleeps == sorted(sleeps)
