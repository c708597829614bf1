"""Length-prefixed JSON frames over a Unix stream socket, with file descriptors (SCM_RIGHTS).

A frame is a 4-byte big-endian body length followed by the UTF-8 JSON body (see
:func:`bareos_hyperv.protocol.messages.encode`).  A frame that carries file descriptors says
how many in its ``"fds"`` key; the descriptors travel as ancillary data with the frame's first
bytes (``socket.send_fds``), and the receiver takes that many from the descriptors that have
arrived so far, so the stream framing and the fd passing never depend on segment boundaries.

Standard library only: the fd side runs inside bareos-fd.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any, Deque, List, Optional, Sequence, Tuple

from bareos_hyperv.errors import ProtocolError
from bareos_hyperv.protocol.messages import Message, decode, encode

__all__ = ["MAX_FDS_PER_FRAME", "MAX_FRAME", "Channel", "ChannelClosed", "ChannelTimeout"]

_HEADER = struct.Struct(">I")
# Large enough for the file list of a VM with many disks, small enough that a corrupt length
# cannot make either side allocate gigabytes.
MAX_FRAME = 16 * 1024 * 1024
MAX_FDS_PER_FRAME = 4
_RECV_SIZE = 256 * 1024


class ChannelClosed(ProtocolError):
    """The other side closed the socket (or died) before a whole frame arrived."""


class ChannelTimeout(ProtocolError):
    """Nothing arrived from the other side within the time allowed."""


class Channel:
    """One end of the fd <-> agent socket pair: send and receive whole messages (and fds).

    Not thread-safe: each side uses its channel from one thread only.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: Deque[int] = deque()
        self._eof = False

    def fileno(self) -> int:
        """The socket's descriptor (for poll)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket and any descriptors received but never claimed."""
        while self._fds:
            os.close(self._fds.popleft())
        self.sock.close()

    # -- sending -------------------------------------------------------------------------------

    def send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        """Send one message, with ``fds`` attached (the caller keeps and later closes its copies)."""
        if len(fds) > MAX_FDS_PER_FRAME:
            raise ProtocolError(f"a protocol frame may carry at most {MAX_FDS_PER_FRAME} descriptors")
        frame = encode(msg)
        if fds:
            frame["fds"] = len(fds)
        body = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(body) > MAX_FRAME:
            raise ProtocolError(f"protocol message {msg.TYPE} is {len(body)} bytes, more than {MAX_FRAME}")
        data = _HEADER.pack(len(body)) + body
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], list(fds))
                data = data[sent:]
            if data:
                self.sock.sendall(data)
        except OSError as exc:
            raise ChannelClosed(f"cannot send {msg.TYPE} to the other process: {exc.strerror or exc}") from None

    # -- receiving -----------------------------------------------------------------------------

    def _fill(self, deadline: Optional[float]) -> None:
        if self._eof:
            raise ChannelClosed("the other process closed the connection")
        if deadline is not None:
            remaining = deadline - time.monotonic()
            # poll, not select: inside bareos-fd descriptors above FD_SETSIZE are normal.
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise ChannelTimeout("no message from the other process in time")
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, _RECV_SIZE, MAX_FDS_PER_FRAME * 2)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            return
        except OSError as exc:
            raise ChannelClosed(f"connection to the other process failed: {exc.strerror or exc}") from None
        for fd in fds:
            os.set_inheritable(fd, False)
            self._fds.append(fd)
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            raise ProtocolError("file descriptors were lost in transit (ancillary data truncated)")
        if not data:
            self._eof = True
            raise ChannelClosed("the other process closed the connection")
        self._buf += data

    def recv_with_fds(self, timeout: Optional[float] = None) -> Tuple[Message, List[int]]:
        """The next message and the descriptors it carries (now owned by the caller).

        :raises ChannelClosed: end of stream (also in the middle of a frame).
        :raises ChannelTimeout: ``timeout`` seconds passed without a whole frame.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._buf) < _HEADER.size:
            self._fill(deadline)
        (length,) = _HEADER.unpack_from(self._buf)
        if length > MAX_FRAME:
            raise ProtocolError(f"protocol frame of {length} bytes announced, more than {MAX_FRAME}: "
                                "the stream is corrupt")
        while len(self._buf) < _HEADER.size + length:
            self._fill(deadline)
        body = bytes(self._buf[_HEADER.size:_HEADER.size + length])
        del self._buf[:_HEADER.size + length]
        try:
            frame: Any = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"protocol frame is not JSON: {exc}") from None
        wanted = frame.get("fds", 0) if isinstance(frame, dict) else 0
        if not isinstance(wanted, int) or wanted < 0 or wanted > MAX_FDS_PER_FRAME:
            raise ProtocolError("protocol frame announces an invalid number of descriptors")
        if len(self._fds) < wanted:
            raise ProtocolError(f"protocol frame announces {wanted} descriptors but "
                                f"{len(self._fds)} arrived")
        fds = [self._fds.popleft() for _ in range(wanted)]
        try:
            msg = decode(frame)
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        return msg, fds

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message; a message that carries descriptors is a protocol error here."""
        msg, fds = self.recv_with_fds(timeout)
        if fds:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"unexpected descriptors with {msg.TYPE}")
        return msg
