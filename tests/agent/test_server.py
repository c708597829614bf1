"""The agent's protocol loop, in a real process: handshake, backup and restore streams, failures."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from bareos_hyperv.model.options import FilesOptions, JobOptions
from bareos_hyperv.protocol.framing import ChannelClosed
from bareos_hyperv.protocol.messages import (
    CloseFile,
    CreateFile,
    EndJob,
    ErrorReply,
    FileDone,
    FileList,
    Hello,
    JobDone,
    JobKind,
    JobStarted,
    ListFiles,
    LogRecord,
    OpenFile,
    PipeReady,
    StartJob,
    WireCredentials,
)

from .conftest import AgentFactory

SECRET = "Wire-Secret-0451"


def _read_all(fd: int) -> bytes:
    parts = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _files(*paths: str) -> JobOptions:
    """The typed options of a ``source=files`` job (the fd sends them so)."""
    return JobOptions(files=FilesOptions(paths=paths))


def _start(agent, kind: JobKind, source: str = "files", paths: str = ""):  # type: ignore[no-untyped-def]
    agent.hello()
    got, _ = agent.ask(StartJob(kind=kind, source=source, jobid=1, job_name="t",
                                options=_files(paths) if paths else JobOptions()))
    return got[-1]


def test_handshake_reports_pid_and_refuses_other_versions(spawn_agent: AgentFactory) -> None:
    agent = spawn_agent()
    assert agent.hello().pid == agent.proc.pid
    other = spawn_agent()
    other.channel.send(Hello(version=99, fd_pid=0))
    reply = other.channel.recv(timeout=30)
    assert isinstance(reply, ErrorReply) and reply.kind == "protocol" and "sent 99" in reply.message
    assert other.proc.wait(10) == 4


def test_backup_streams_each_file_through_its_pipe(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    data = {"a.bin": os.urandom(3 * 1024 * 1024 + 17), "b.txt": b"hello\n", "empty": b""}
    (tmp_path / "src" / "sub").mkdir(parents=True)
    for name, content in data.items():
        (tmp_path / "src" / ("sub/" + name if name == "b.txt" else name)).write_bytes(content)
    agent = spawn_agent()
    assert isinstance(_start(agent, JobKind.BACKUP, paths=str(tmp_path / "src")), JobStarted)
    got, _ = agent.ask(ListFiles())
    assert isinstance(got[0], LogRecord) and "3 item(s)" in got[0].text  # logs travel before the reply
    listing = got[-1]
    assert isinstance(listing, FileList)
    names = [f.name for f in listing.files]
    assert names == [f"@files{tmp_path}/src/a.bin", f"@files{tmp_path}/src/empty", f"@files{tmp_path}/src/sub/b.txt"]
    for entry in listing.files:
        got, fds = agent.ask(OpenFile(name=entry.name))
        assert isinstance(got[-1], PipeReady) and got[-1].size == entry.size and len(fds) == 1
        content = _read_all(fds[0])
        os.close(fds[0])
        done, _ = agent.ask(CloseFile(name=entry.name))
        assert isinstance(done[-1], FileDone)
        expected = data[entry.name.rsplit("/", 1)[1]]
        assert content == expected
        assert done[-1].bytes == len(expected) and done[-1].sha256 == hashlib.sha256(expected).hexdigest()
    got, _ = agent.ask(EndJob())
    assert isinstance(got[-1], JobDone) and got[-1].files == 3 and got[-1].bytes == sum(map(len, data.values()))
    assert got[-1].peak_rss_kib > 1000
    assert agent.proc.wait(10) == 0


def test_file_that_grows_after_listing_is_an_error(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x" * 1000)
    agent = spawn_agent()
    _start(agent, JobKind.BACKUP, paths=str(src))
    entry = agent.ask(ListFiles())[0][-1].files[0]  # type: ignore[attr-defined]
    src.write_bytes(b"x" * 5000)
    _, fds = agent.ask(OpenFile(name=entry.name))
    assert len(_read_all(fds[0])) == 5000
    os.close(fds[0])
    reply = agent.ask(CloseFile(name=entry.name))[0][-1]
    assert isinstance(reply, ErrorReply) and reply.kind == "storage"
    assert "changed size while it was saved: announced 1000 bytes, read 5000" in reply.message


def test_requests_out_of_order_get_protocol_errors(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    agent = spawn_agent()
    agent.hello()
    reply = agent.ask(ListFiles())[0][-1]
    assert isinstance(reply, ErrorReply) and "StartJob missing" in reply.message
    (tmp_path / "f").write_bytes(b"1")
    agent.ask(StartJob(kind=JobKind.BACKUP, source="files", jobid=1, job_name="t", options=_files(str(tmp_path))))
    reply = agent.ask(OpenFile(name="@files/etc/passwd"))[0][-1]
    assert isinstance(reply, ErrorReply) and reply.kind == "protocol"


def test_bad_source_options_are_configuration_errors(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    agent = spawn_agent()
    assert isinstance(_start(agent, JobKind.BACKUP, paths=str(tmp_path / "missing")), JobStarted)
    reply = agent.ask(ListFiles())[0][-1]
    assert isinstance(reply, ErrorReply) and reply.kind == "configuration"
    assert f"the path {tmp_path}/missing given in paths= does not exist" == reply.message
    other = spawn_agent()
    reply = _start(other, JobKind.BACKUP, source="tape")
    assert isinstance(reply, ErrorReply) and "unknown source 'tape'" in reply.message


def _create(agent, target: Path, size: int, replace: bool = True):  # type: ignore[no-untyped-def]
    return agent.ask(CreateFile(name=str(target), target=str(target), size=size, mtime=1_600_000_000,
                                mode=0o100604, replace=replace))


def test_restore_writes_through_a_temporary_name(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    target = tmp_path / "out" / "deep" / "disk.vhdx"
    agent = spawn_agent()
    _start(agent, JobKind.RESTORE)
    got, fds = _create(agent, target, len(data))
    assert isinstance(got[-1], PipeReady) and len(fds) == 1
    os.write(fds[0], data[:1000])
    assert not target.exists()  # nothing in place until complete
    os.write(fds[0], data[1000:])
    os.close(fds[0])
    done = agent.ask(CloseFile(name=str(target)))[0][-1]
    assert isinstance(done, FileDone) and done.sha256 == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    st = target.stat()
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o604, 1_600_000_000)
    assert sorted(p.name for p in target.parent.iterdir()) == ["disk.vhdx"]


def test_short_restore_leaves_nothing_behind(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    agent = spawn_agent()
    _start(agent, JobKind.RESTORE)
    _, fds = _create(agent, target, 100)
    os.write(fds[0], b"x" * 60)
    os.close(fds[0])
    reply = agent.ask(CloseFile(name=str(target)))[0][-1]
    assert isinstance(reply, ErrorReply) and "received 60 of 100 bytes" in reply.message
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_not_replaced_unasked(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    target = tmp_path / "keep"
    target.write_bytes(b"precious")
    agent = spawn_agent()
    _start(agent, JobKind.RESTORE)
    reply = _create(agent, target, 3, replace=False)[0][-1]
    assert isinstance(reply, ErrorReply) and reply.kind == "storage" and "already exists" in reply.message
    assert target.read_bytes() == b"precious"


def test_sigterm_mid_restore_removes_the_partial_file(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    agent = spawn_agent()
    _start(agent, JobKind.RESTORE)
    _, fds = _create(agent, target, 10_000_000)
    os.write(fds[0], b"x" * 100_000)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 143
    os.close(fds[0])
    assert list(tmp_path.iterdir()) == []


def test_agent_exits_when_the_fd_goes_away(spawn_agent: AgentFactory) -> None:
    agent = spawn_agent()
    agent.hello()
    agent.channel.close()
    assert agent.proc.wait(10) == 3


def test_passwords_are_redacted_from_errors(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    # A path that happens to contain the password must not carry it back to the job log.
    agent = spawn_agent()
    agent.hello()
    start = StartJob(kind=JobKind.BACKUP, source="files", jobid=1, job_name="t",
                     options=_files(f"{tmp_path}/{SECRET}"), credentials=WireCredentials("u", SECRET))
    agent.ask(start)
    reply = agent.ask(ListFiles())[0][-1]
    assert isinstance(reply, ErrorReply) and SECRET not in reply.message and "***" in reply.message


def test_killed_agent_closes_the_data_pipe_early(spawn_agent: AgentFactory, tmp_path: Path) -> None:
    src = tmp_path / "big"
    with open(src, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)  # sparse: free to create, long to stream
    agent = spawn_agent()
    _start(agent, JobKind.BACKUP, paths=str(src))
    entry = agent.ask(ListFiles())[0][-1].files[0]  # type: ignore[attr-defined]
    _, fds = agent.ask(OpenFile(name=entry.name))
    first = os.read(fds[0], 1 << 20)
    assert first
    agent.proc.kill()
    deadline = time.monotonic() + 30
    total = len(first)
    while time.monotonic() < deadline:
        chunk = os.read(fds[0], 1 << 20)
        if not chunk:
            break
        total += len(chunk)
    os.close(fds[0])
    assert total < entry.size  # EOF came early, the reader was not left hanging
    with pytest.raises(ChannelClosed):
        agent.ask(CloseFile(name=entry.name))
