"""Frames and descriptors on the socket (PROTOCOL.md sections 3 and 4).

:class:`Channel` moves whole frames with their descriptors. Every receive
goes through one ``recvmsg`` helper: with a control buffer, with
``MSG_CMSG_CLOEXEC``, checking ``MSG_CTRUNC``, and never for more bytes
than the current frame still owes (the "exact reads" of section 4), so a
descriptor is always tied to the frame it rode on.

A frame's descriptors all ride on its first byte, so they arrive together
with the call that returns it, however many there are (a batch answer
carries up to 253); a second batch for the same frame, on any later byte,
breaks the protocol. Every descriptor received is closed on every path that
does not hand it to the caller.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Callable, Iterable, List, Optional, Tuple

from ._errors import ProtocolError
from ._messages import Response, decode_response

#: Largest frame length either side accepts, prefix excluded (section 3).
MAX_FRAME_LEN = 65536

#: Most descriptors one frame may carry: SCM_MAX_FD, what the kernel lets
#: one message carry (section 3).
MAX_FDS_PER_FRAME = 253

#: Room for this many descriptors in every receive (CMSG_SPACE of it is
#: 1,040 bytes), more than any frame may carry, so that surplus ones are
#: seen and closed instead of silently dropped by the kernel.
_FD_ROOM = 256

#: Called as ``trace(direction, frame_bytes, fd_count)`` for every frame.
Trace = Callable[[str, bytes, int], None]


def close_all(fds: Iterable[int]) -> None:
    """Close every descriptor, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One connected socket, moving whole frames with their descriptors."""

    def __init__(self, sock: socket.socket, trace: Optional[Trace] = None):
        self.sock = sock
        self.trace = trace

    def close(self) -> None:
        self.sock.close()

    def _recv(self, want: int) -> Tuple[bytes, List[int]]:
        """One recvmsg of at most ``want`` bytes: data and descriptors."""
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(
                want, socket.CMSG_SPACE(_FD_ROOM * 4), socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionResetError:
            # The daemon closed with our bytes unread (section 7.1).
            data, ancillary, flags = b"", [], 0
        except socket.timeout:
            raise ProtocolError("memseald did not answer in time") from None
        fds: List[int] = []
        foreign = False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack("%di" % (usable // 4), payload[:usable]))
            else:
                foreign = True
        if flags & socket.MSG_CTRUNC:
            close_all(fds)
            raise ProtocolError("too many descriptors arrived at once (control message truncated)")
        if foreign:
            close_all(fds)
            raise ProtocolError("an unexpected kind of ancillary message arrived")
        return data, fds

    def read_frame(self) -> Tuple[bytes, List[int]]:
        """Read one frame: its payload (fd_count byte first) and descriptors."""
        header = b""
        fds: List[int] = []
        try:
            while len(header) < 4:
                data, got = self._recv(4 - len(header))
                if got and header:
                    close_all(got)
                    raise ProtocolError("a descriptor arrived on a byte that does not start a frame")
                fds += got
                if not data:
                    if header:
                        raise ProtocolError("memseald closed the connection in the middle of a frame")
                    raise ProtocolError("memseald closed the connection")
                header += data
            (length,) = struct.unpack("<I", header)
            if length == 0:
                raise ProtocolError("memseald sent an empty frame")
            if length > MAX_FRAME_LEN:
                raise ProtocolError(
                    "memseald sent a frame of %d bytes, above the %d-byte limit" % (length, MAX_FRAME_LEN)
                )
            payload = bytearray()
            while len(payload) < length:
                data, got = self._recv(length - len(payload))
                if got:
                    close_all(got)
                    raise ProtocolError("a descriptor arrived on a byte that does not start a frame")
                if not data:
                    raise ProtocolError("memseald closed the connection in the middle of a frame")
                payload += data
        except BaseException:
            close_all(fds)
            raise
        if self.trace:
            self.trace("recv", header + bytes(payload), len(fds))
        return bytes(payload), fds

    def write_frame(self, message: bytes, fd: Optional[int] = None) -> None:
        """Send one frame; ``fd`` rides on its first byte."""
        payload = bytes([1 if fd is not None else 0]) + message
        if len(payload) > MAX_FRAME_LEN:
            raise ValueError("the request is %d bytes, above the frame limit" % len(payload))
        frame = struct.pack("<I", len(payload)) + payload
        if self.trace:
            self.trace("send", frame, 0 if fd is None else 1)
        try:
            if fd is None:
                self.sock.sendall(frame)
                return
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            sent = self.sock.sendmsg([frame], rights)
            if sent < len(frame):
                self.sock.sendall(frame[sent:])
        except socket.timeout:
            raise ProtocolError("memseald did not take the request in time") from None

    def write_raw(self, data: memoryview) -> None:
        """Send raw bytes outside any frame (a streamed upload)."""
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProtocolError("memseald stopped taking the upload") from None

    def receive(self) -> Tuple[Response, List[int]]:
        """Read and decode one response, with the descriptors it carries,
        in the order they rode; they are the caller's to close."""
        payload, fds = self.read_frame()
        try:
            declared = payload[0]
            if declared > MAX_FDS_PER_FRAME or declared != len(fds):
                raise ProtocolError("frame declared %d descriptor(s) but %d arrived" % (declared, len(fds)))
            response = decode_response(payload[1:])
            if response.fd_count() != declared:
                raise ProtocolError(
                    "a '%s' reply carries %d descriptor(s) but the frame declared %d"
                    % (response.KIND, response.fd_count(), declared)
                )
        except BaseException:
            close_all(fds)
            raise
        return response, fds
