"""A real agent process on a socket pair, driven by the test as the fd would drive it."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, List

import pytest

from bareos_hyperv.protocol.framing import Channel
from bareos_hyperv.protocol.messages import PROTOCOL_VERSION, Hello, HelloReply, Message


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    channel: Channel

    def hello(self) -> HelloReply:
        self.channel.send(Hello(version=PROTOCOL_VERSION, fd_pid=0))
        reply = self.channel.recv(timeout=30)
        assert isinstance(reply, HelloReply), reply
        return reply

    def ask(self, msg: Message) -> tuple[List[Message], List[int]]:
        """Send a request; all messages up to and including the reply, and the reply's fds."""
        self.channel.send(msg)
        got: List[Message] = []
        while True:
            reply, fds = self.channel.recv_with_fds(timeout=60)
            got.append(reply)
            if reply.TYPE not in ("log", "progress"):
                return got, fds


AgentFactory = Callable[[], Agent]


@pytest.fixture
def spawn_agent() -> Iterator[AgentFactory]:
    made: List[Agent] = []

    def make() -> Agent:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen([sys.executable, "-m", "bareos_hyperv.agent", "--fd", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
        theirs.close()
        agent = Agent(proc, Channel(ours))
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.channel.close()
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.proc.wait(10)
        if agent.proc.stderr is not None:
            agent.proc.stderr.close()
