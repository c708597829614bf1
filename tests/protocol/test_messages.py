"""Protocol messages: every type survives the wire, malformed bodies are refused, secrets stay hidden."""

from __future__ import annotations

import json
from typing import List

import pytest

from bareos_hyperv.errors import ProtocolError, StorageError
from bareos_hyperv.model.backup import ConsistencyMode
from bareos_hyperv.model.options import (
    BackupOptions,
    ConnectionOptions,
    DataPlane,
    FilesOptions,
    HostEndpoint,
    JobOptions,
    MapEntry,
    SmbMover,
    SmbShareOptions,
    WinrmTransport,
)
from bareos_hyperv.protocol.messages import (
    Cleanup,
    CleanupDone,
    CleanupRecord,
    CloseFile,
    CreateFile,
    EndJob,
    ErrorReply,
    FileDone,
    FileEntry,
    FileList,
    Hello,
    HelloReply,
    JobDone,
    JobKind,
    JobStarted,
    ListFiles,
    LogLevel,
    LogRecord,
    Message,
    OpenFile,
    PipeReady,
    Progress,
    StartJob,
    WireCredentials,
    decode,
    encode,
    error_from_exception,
    expect,
)

SECRET = "S3cret-Pa55word!"
RECORD = CleanupRecord(host="HVCLUSTER01", node="HV02", vm_guid="0A1B2C3D-0000-4000-8000-000000000001",
                       vm_name="web 01 ü", job_id=12, checkpoint_id="Microsoft:5E1F", staging="C:\\CS\\stage")

# Every field of the typed options set to something other than its default.
CONNECTION = ConnectionOptions(
    transport=WinrmTransport.KERBEROS, https=True, port=15986, ca_trust_path="/etc/ssl/hv-ca.pem",
    cert_validation=False, host_map=(HostEndpoint("HV01", "10.0.0.5", 5985), HostEndpoint("HV02", "hv02.lab")),
    data=DataPlane.LOCAL,
    share_map=(MapEntry("C:\\ClusterStorage", "\\\\fs\\csv"), MapEntry("D:\\VMs", "\\\\hv01\\vms", "HV01")),
    path_map=(MapEntry("C:\\ClusterStorage\\Volume1", "/mnt/csv1"),),
    smb_host_map=(HostEndpoint("HV01", "10.0.0.5", 445),), smb_encrypt=True, smb_mover=SmbMover.SMBCLIENT,
    operation_timeout=90.5)
JOB_OPTIONS = JobOptions(
    connection=CONNECTION,
    backup=BackupOptions(host="HVCLUSTER01", vms=("web01", "Finance, Paris", "db*"), exclude=("db-test",),
                         consistency=ConsistencyMode.APPLICATION_REQUIRED, staging_path="C:\\ClusterStorage\\stage"),
    files=FilesOptions(paths=("/a b/ü", "/c")),
    smb=SmbShareOptions(server="HV01", share="C$", paths=("VMs\\web01",), address="127.0.0.1", port=4455),
    timeout=600, credentials_file="/etc/bareos/hyperv.cred", debug=True)

EXAMPLES: List[Message] = [
    Hello(version=1, fd_pid=42),
    StartJob(kind=JobKind.BACKUP, source="smb", jobid=7, job_name="j.2026", options=JOB_OPTIONS,
             credentials=WireCredentials("admin", SECRET, "CORP"), where="/tmp/r"),
    StartJob(kind=JobKind.RESTORE, source="files", jobid=8, job_name="r"),
    ListFiles(),
    OpenFile(name="@files/a b/ü.bin"),
    CreateFile(name="n", target="/t/n", size=2**40, mtime=1700000000, mode=0o100640, replace=False),
    CloseFile(name="n"),
    EndJob(),
    HelloReply(version=1, pid=9, package_version="0.1.0", python="/usr/bin/python3"),
    JobStarted(),
    FileList(files=[FileEntry("a", 1, 2, 0o100600), FileEntry("b", 0, 0)]),
    PipeReady(name="a", size=5),
    FileDone(name="a", bytes=5, sha256="ab" * 32, seconds=0.25),
    JobDone(files=1, bytes=5, peak_rss_kib=20000, seconds=1.0),
    LogRecord(level=LogLevel.WARNING, text="careful"),
    Progress(name="a", bytes=3),
    ErrorReply(kind="storage", message="m", what_to_do="w", context={"path": "/x"}),
    StartJob(kind=JobKind.CLEANUP, source="hyperv", jobid=9, job_name="c",
             options=JobOptions(backup=BackupOptions(host="HVCLUSTER01", vms=("web01",)), timeout=60),
             cleanup=RECORD),
    Cleanup(),
    CleanupDone(left=None),
    CleanupDone(left=RECORD),
    FileList(files=[FileEntry("@hyperv/C/vm/manifest.xml", 10, 1)], cleanup=RECORD),
    JobDone(files=0, bytes=0, peak_rss_kib=1, seconds=0.5, cleanup=RECORD),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_json(msg: Message) -> None:
    wire = json.loads(json.dumps(encode(msg)))
    assert decode(wire) == msg
    assert wire["type"] == msg.TYPE


def test_every_message_type_has_a_distinct_wire_name() -> None:
    names = [type(m).TYPE for m in EXAMPLES]
    assert len(set(names)) == len({type(m) for m in EXAMPLES})


def test_password_is_not_in_reprs() -> None:
    creds = WireCredentials("admin", SECRET)
    start = EXAMPLES[1]
    assert SECRET not in repr(creds)
    assert SECRET not in repr(start) and SECRET not in str(start)
    assert "admin" in repr(creds)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ({"type": "nonsense", "body": {}}, "unknown protocol message type 'nonsense'"),
        ({"body": {}}, "no message type"),
        ({"type": "open_file", "body": {}}, "lacks the field name"),
        ({"type": "open_file", "body": {"name": 5}}, "open_file.name should be a string"),
        ({"type": "pipe_ready", "body": {"name": "a", "size": True}}, "should be an integer"),
        ({"type": "log", "body": {"level": "loud", "text": "x"}}, "one of"),
        ({"type": "file_list", "body": {"files": [{"name": "a"}]}}, "lacks the field size"),
        ({"type": "start_job", "body": {"kind": "backup", "source": "s", "jobid": 1, "job_name": "j",
                                        "options": {"timeout": "1800"}}},
         "start_job.options.timeout should be an integer"),
        ({"type": "start_job", "body": {"kind": "backup", "source": "s", "jobid": 1, "job_name": "j",
                                        "options": {"connection": {"host_map": [{"node": "HV01", "address": 5}]}}}},
         "start_job.options.connection.host_map[0].address should be a string"),
        ({"type": "start_job", "body": {"kind": "backup", "source": "s", "jobid": 1, "job_name": "j",
                                        "options": {"connection": {"share_map": "C:=x"}}}},
         "start_job.options.connection.share_map should be a list"),
        ({"type": "start_job", "body": {"kind": "backup", "source": "s", "jobid": 1, "job_name": "j",
                                        "options": {"connection": {"transport": "digest"}}}},
         "start_job.options.connection.transport should be one of"),
        ({"type": "start_job", "body": {"kind": "backup", "source": "s", "jobid": 1, "job_name": "j",
                                        "options": {"backup": {"consistency": "vss"}}}},
         "start_job.options.backup.consistency should be one of"),
        ({"type": "hello", "body": []}, "should be an object"),
    ],
)
def test_malformed_messages_are_refused_with_the_field_named(frame: object, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert fragment in str(info.value)


def test_error_reply_keeps_kind_hint_and_context_of_our_errors() -> None:
    reply = error_from_exception(StorageError("cannot read x", what_to_do="check y", context={"path": "/x", "n": 3}))
    assert (reply.kind, reply.message, reply.what_to_do) == ("storage", "cannot read x", "check y")
    assert reply.context == {"path": "/x", "n": "3"}


def test_unexpected_exceptions_become_internal_errors() -> None:
    reply = error_from_exception(KeyError("boom"))
    assert reply.kind == "internal"
    assert "KeyError" in reply.message and reply.what_to_do


def test_expect_names_both_types() -> None:
    assert expect(ListFiles(), ListFiles) == ListFiles()
    with pytest.raises(ProtocolError, match="expected file_done, got list_files"):
        expect(ListFiles(), FileDone)


def test_typed_job_options_cross_the_wire_typed() -> None:
    """StartJob.options arrive as the same nested dataclasses: tuples, enums, ints and bools, not strings."""
    wire = json.loads(json.dumps(encode(EXAMPLES[1])))
    assert wire["body"]["options"]["connection"]["transport"] == "kerberos"
    assert wire["body"]["options"]["connection"]["host_map"][1] == {"node": "HV02", "address": "hv02.lab",
                                                                   "port": None}
    got = decode(wire)
    assert isinstance(got, StartJob) and got.options == JOB_OPTIONS
    conn = got.options.connection
    assert conn.transport is WinrmTransport.KERBEROS and conn.data is DataPlane.LOCAL
    assert conn.smb_mover is SmbMover.SMBCLIENT and conn.port == 15986 and conn.https is True
    assert isinstance(conn.host_map, tuple) and conn.host_map[0] == HostEndpoint("HV01", "10.0.0.5", 5985)
    assert isinstance(conn.share_map, tuple) and conn.share_map[1].node == "HV01"
    assert got.options.backup is not None and got.options.backup.consistency is ConsistencyMode.APPLICATION_REQUIRED
    assert got.options.backup.vms == ("web01", "Finance, Paris", "db*")
    assert got.options.smb is not None and got.options.smb.port == 4455


def test_start_job_defaults_to_the_default_options() -> None:
    """A StartJob without options (an older or minimal peer) means the product's defaults."""
    got = decode({"type": "start_job", "body": {"kind": "restore", "source": "files", "jobid": 1, "job_name": "j"}})
    assert isinstance(got, StartJob) and got.options == JobOptions()
    assert got.options.connection.transport is WinrmTransport.NTLM and got.options.timeout == 1800
