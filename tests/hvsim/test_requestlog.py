"""Request log used by tests and benchmarks to count round trips."""

from __future__ import annotations

import threading

from hvsim.requestlog import RequestLog, RequestRecord


def test_count_filters_case_insensitively() -> None:
    log = RequestLog()
    log.add(RequestRecord("Enumerate", "root/virtualization/v2", "Msvm_ComputerSystem", items=3))
    log.add(
        RequestRecord(
            "Invoke",
            "root/virtualization/v2",
            "Msvm_VirtualSystemSnapshotService",
            method="CreateSnapshot",
            user="HV01\\backup",
        )
    )
    log.add(
        RequestRecord(
            "Invoke",
            "root/virtualization/v2",
            "Msvm_VirtualSystemSnapshotService",
            method="CreateSnapshot",
            outcome="w:InternalError",
        )
    )
    log.add(RequestRecord("Get", class_name="Msvm_ConcreteJob", outcome="a:DestinationUnreachable"))
    assert len(log) == 4
    assert log.count() == 4
    assert log.count("invoke") == 2
    assert log.count(method="createsnapshot") == 2
    assert log.count("Invoke", outcome="ok") == 1
    assert log.count(outcome="fault") == 2
    assert log.count(outcome="w:internalerror") == 1
    assert log.count(cls="MSVM_COMPUTERSYSTEM") == 1
    assert log.count("Get", cls="Msvm_ComputerSystem") == 0
    assert [r.ok for r in log.records()] == [True, True, False, False]


def test_records_is_a_snapshot_and_clear_empties() -> None:
    log = RequestLog()
    log.add(RequestRecord("Identify"))
    snap = log.records()
    log.add(RequestRecord("Get"))
    assert [r.operation for r in snap] == ["Identify"]
    log.clear()
    assert log.records() == []
    assert log.count() == 0


def test_thread_safe_appends() -> None:
    log = RequestLog()

    def writer(n: int) -> None:
        for i in range(500):
            log.add(RequestRecord("Pull", items=i, user=f"u{n}"))
            log.count("Pull")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count("Pull") == 4000
    assert {r.user for r in log.records()} == {f"u{n}" for n in range(8)}
