"""Framing between the fdsim host (main interpreter) and a job's sub-interpreter.

Sub-interpreters share nothing but the process, so the two sides talk over OS pipes whose
file descriptors are process-wide.  A frame is a 4-byte big-endian length and a ``marshal``
payload (tuples of str/int/bytes/None/bool/dict/list), the one serializer that is in both
interpreters, needs no import and handles ``bytes`` buffers without copies into text.
"""

from __future__ import annotations

import marshal
import os
import struct
from typing import Any

_HEADER = struct.Struct(">I")


class WireClosed(EOFError):
    """The other side closed its end of the pipe."""


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise WireClosed("fdsim: peer closed the pipe")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def send(fd: int, obj: Any) -> None:
    """Write one frame."""
    payload = marshal.dumps(obj)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv(fd: int) -> Any:
    """Read one frame (blocks; releases the GIL while waiting)."""
    (length,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    # The payload comes from our own other half over a private pipe, never from outside.
    return marshal.loads(_read_exact(fd, length))  # noqa: S302
