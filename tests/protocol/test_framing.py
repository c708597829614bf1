"""Framing over a real socket pair: whole messages, pipe ends passed with SCM_RIGHTS, clean failures."""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Iterator, Tuple

import pytest

from bareos_hyperv.errors import ProtocolError
from bareos_hyperv.protocol.framing import MAX_FRAME, Channel, ChannelClosed, ChannelTimeout
from bareos_hyperv.protocol.messages import FileEntry, FileList, ListFiles, OpenFile, PipeReady


@pytest.fixture
def pair() -> Iterator[Tuple[Channel, Channel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = Channel(a), Channel(b)
    yield left, right
    left.close()
    right.close()


def test_messages_arrive_whole_and_in_order(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send(ListFiles())
    left.send(OpenFile(name="x"))
    assert right.recv(timeout=5) == ListFiles()
    assert right.recv(timeout=5) == OpenFile(name="x")


def test_a_frame_larger_than_the_socket_buffer_is_reassembled(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    files = [FileEntry(name=f"@files/dir/{i:06d}-{'x' * 80}", size=i, mtime=i) for i in range(20000)]
    sender = threading.Thread(target=left.send, args=(FileList(files=files),))
    sender.start()
    got = right.recv(timeout=30)
    sender.join()
    assert isinstance(got, FileList) and got.files == files


def test_pipe_end_passes_and_carries_data(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    rfd, wfd = os.pipe()
    left.send(PipeReady(name="a", size=3), [rfd])
    os.close(rfd)  # the receiver has its own copy now
    msg, fds = right.recv_with_fds(timeout=5)
    assert msg == PipeReady(name="a", size=3) and len(fds) == 1
    assert not os.get_inheritable(fds[0])
    os.write(wfd, b"abc")
    os.close(wfd)
    assert os.read(fds[0], 10) == b"abc"
    assert os.read(fds[0], 10) == b""
    os.close(fds[0])


def test_descriptors_of_consecutive_frames_stay_with_their_frame(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    pipes = [os.pipe() for _ in range(3)]
    for i, (r, _) in enumerate(pipes):
        left.send(PipeReady(name=str(i), size=0), [r])
        left.send(ListFiles())
    for i, (_, w) in enumerate(pipes):
        msg, fds = right.recv_with_fds(timeout=5)
        assert msg == PipeReady(name=str(i), size=0)
        os.write(w, str(i).encode())
        assert os.read(fds[0], 1) == str(i).encode()
        os.close(fds[0])
        assert right.recv(timeout=5) == ListFiles()
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_end_of_stream_mid_frame_is_channel_closed(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    left.sock.sendall(struct.pack(">I", 100) + b'{"type":')
    left.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelClosed):
        right.recv(timeout=5)
    with pytest.raises(ChannelClosed):
        right.recv(timeout=5)


def test_silence_is_a_timeout(pair: Tuple[Channel, Channel]) -> None:
    with pytest.raises(ChannelTimeout):
        pair[1].recv(timeout=0.2)


def test_corrupt_length_is_refused_without_allocating(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    left.sock.sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="corrupt"):
        right.recv(timeout=5)


def test_frame_announcing_missing_descriptors_is_refused(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    body = b'{"type":"list_files","body":{},"fds":1}'
    left.sock.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match="announces 1 descriptors but 0 arrived"):
        right.recv(timeout=5)


def test_plain_recv_refuses_and_closes_unexpected_descriptors(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    rfd, wfd = os.pipe()
    left.send(PipeReady(name="a", size=0), [rfd])
    os.close(rfd)
    with pytest.raises(ProtocolError, match="unexpected descriptors"):
        right.recv(timeout=5)
    # The received copy was closed, so the pipe has no reader left: writing fails.
    with pytest.raises(BrokenPipeError):
        os.write(wfd, b"x")
    os.close(wfd)


def test_sending_to_a_closed_peer_is_channel_closed(pair: Tuple[Channel, Channel]) -> None:
    left, right = pair
    right.sock.close()
    with pytest.raises(ChannelClosed):
        for _ in range(100):
            left.send(ListFiles())
