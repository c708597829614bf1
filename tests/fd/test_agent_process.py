"""Agent process management with real processes: spawn, handshake, bounded stop, death and silence."""

from __future__ import annotations

import os
import signal
import stat
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import pytest

from bareos_hyperv.errors import ConfigurationError, ProtocolError
from bareos_hyperv.fd.agent_process import AgentDied, AgentProcess, default_agent_python
from bareos_hyperv.protocol.messages import PROTOCOL_VERSION, JobDone, ListFiles, LogRecord, Progress

REPO = Path(__file__).resolve().parents[2]
SECRET = "Env-Secret-9f8e7d"


class Recorder:
    """A Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: List[Tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def debug(self, level: int, text: str) -> None:
        self.lines.append(("debug", text))

    def agent_log(self, record: LogRecord) -> None:
        self.lines.append((f"agent-{record.level.value}", record.text))

    def progress(self, record: Progress) -> None:
        self.lines.append(("progress", record.name))

    def of(self, kind: str) -> List[str]:
        return [t for k, t in self.lines if k == kind]


def fake_agent(tmp_path: Path, mode: str) -> str:
    """An executable that speaks the protocol and then misbehaves as ``mode`` says."""
    script = tmp_path / f"fake-{mode}"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, signal, socket, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from bareos_hyperv.protocol.framing import Channel
        from bareos_hyperv.protocol.messages import PROTOCOL_VERSION, HelloReply, JobDone
        mode = {mode!r}
        if "ignore-term" in mode:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ch = Channel(socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1])))
        ch.recv()
        ch.send(HelloReply(version=999 if "old" in mode else PROTOCOL_VERSION, pid=os.getpid(), package_version="x",
                           python=sys.executable))
        if "silent" in mode:
            time.sleep(60)
        ch.recv()
        ch.send(JobDone(files=0, bytes=0, peak_rss_kib=1, seconds=0.0))
        if "linger" in mode:
            time.sleep(60)
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_real_agent_handshake_and_clean_stop() -> None:
    rec = Recorder()
    agent = AgentProcess(sys.executable, rec, timeout=30)
    hello = agent.start()
    assert hello.pid == agent.pid and hello.version == PROTOCOL_VERSION
    cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-m", b"bareos_hyperv.agent", b"--fd"]
    done = agent.stop()
    assert isinstance(done, JobDone) and done.peak_rss_kib > 0
    assert agent.proc is not None and agent.proc.returncode == 0
    assert rec.of("warning") == []


def test_secret_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAREOS_HYPERV_PASSWORD", SECRET)
    agent = AgentProcess(sys.executable, Recorder(), timeout=30)
    agent.start()
    try:
        environ = Path(f"/proc/{agent.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes()
        assert SECRET.encode() not in environ and SECRET.encode() not in cmdline
        assert b"BAREOS_HYPERV_PASSWORD" not in environ
    finally:
        agent.stop()


def test_missing_interpreter_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        AgentProcess(str(tmp_path / "nope" / "python3"), Recorder(), timeout=5)
    assert "does not exist or is not executable" in str(info.value)
    assert "set agent_python=" in str(info.value)


def test_interpreter_that_is_not_python_fails_the_handshake_clearly() -> None:
    agent = AgentProcess("/bin/true", Recorder(), timeout=10)
    with pytest.raises(ConfigurationError) as info:
        agent.start()
    assert "exited with status 0 before answering" in str(info.value)
    assert "set agent_python=" in str(info.value)


def test_python_without_the_package_shows_its_error(tmp_path: Path) -> None:
    # -I -S: no PYTHONPATH, no site-packages: this interpreter cannot import bareos_hyperv.
    wrapper = tmp_path / "isolated-python"
    wrapper.write_text(f"#!/bin/sh\ncd /\nexec {sys.executable} -I -S \"$@\"\n")
    wrapper.chmod(0o755)
    with pytest.raises(ConfigurationError) as info:
        AgentProcess(str(wrapper), Recorder(), timeout=10).start()
    text = str(info.value)
    assert "exited with status 1" in text and "No module named" in text and "set agent_python=" in text


def test_protocol_version_mismatch_is_refused(tmp_path: Path) -> None:
    agent = AgentProcess(fake_agent(tmp_path, "old"), Recorder(), timeout=10)
    with pytest.raises(ProtocolError, match="protocol version 999"):
        agent.start()
    assert agent.proc is not None and agent.proc.poll() is not None


def test_stop_escalates_with_a_message_at_each_step(tmp_path: Path) -> None:
    rec = Recorder()
    agent = AgentProcess(fake_agent(tmp_path, "linger-ignore-term"), rec, timeout=10, exit_grace=0.3,
                         term_grace=0.3)
    agent.start()
    assert agent.stop() is not None
    warnings = rec.of("warning")
    assert any("has not exited 0 s after the end of the job; sending it SIGTERM" in w for w in warnings)
    assert any("ignored SIGTERM for 0 s; killing it" in w for w in warnings)
    assert agent.proc is not None and agent.proc.returncode == -signal.SIGKILL


def test_abort_terminates_then_kills(tmp_path: Path) -> None:
    rec = Recorder()
    agent = AgentProcess(fake_agent(tmp_path, "silent-ignore-term"), rec, timeout=10, term_grace=0.3)
    agent.start()
    agent.abort("the job was canceled")
    assert any("because the job was canceled: sending SIGTERM" in t for t in rec.of("info"))
    assert any("killing it" in w for w in rec.of("warning"))
    assert agent.proc is not None and agent.proc.returncode == -signal.SIGKILL
    agent.stop()  # after abort: nothing more to say, no hang


def test_killed_agent_is_a_clear_error_not_a_hang() -> None:
    agent = AgentProcess(sys.executable, Recorder(), timeout=30)
    agent.start()
    os.kill(agent.pid, signal.SIGKILL)
    with pytest.raises(AgentDied) as info:
        agent.request(ListFiles(), JobDone, what="listing what to back up")
    assert f"the agent process (pid {agent.pid}) was killed by SIGKILL while listing what to back up" in str(
        info.value)
    agent.stop()


def test_silent_agent_times_out(tmp_path: Path) -> None:
    agent = AgentProcess(fake_agent(tmp_path, "silent"), Recorder(), timeout=0.5, term_grace=2)
    agent.start()
    with pytest.raises(AgentDied, match="sent nothing for 0 s while listing"):
        agent.request(ListFiles(), JobDone, what="listing")
    agent.abort("it stopped answering")
    assert agent.proc is not None and agent.proc.returncode == -signal.SIGTERM


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_default_interpreter_from_a_virtualenv_site_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "venv/lib/python3.11/site-packages/bareos_hyperv"
    pkg.mkdir(parents=True)
    exact = _exe(tmp_path / "venv/bin/python3.11")
    assert default_agent_python(str(pkg)) == str(exact)
    exact.unlink()
    generic = _exe(tmp_path / "venv/bin/python3")
    assert default_agent_python(str(pkg)) == str(generic)


def test_default_interpreter_for_debian_dist_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "usr/lib/python3/dist-packages/bareos_hyperv"
    pkg.mkdir(parents=True)
    python3 = _exe(tmp_path / "usr/bin/python3")
    assert default_agent_python(str(pkg)) == str(python3)


def test_default_interpreter_for_a_source_checkout(tmp_path: Path) -> None:
    pkg = tmp_path / "checkout/bareos_hyperv"
    pkg.mkdir(parents=True)
    assert default_agent_python(str(pkg)) is None
    venv_python = _exe(tmp_path / "checkout/.venv/bin/python3")
    assert default_agent_python(str(pkg)) == str(venv_python)


def test_this_checkout_resolves_to_its_virtualenv() -> None:
    assert default_agent_python() == str(REPO / ".venv" / "bin" / "python3")
