"""A peer that answers as a test script says, for what memseald never does.

The real daemon speaks version 2, puts every descriptor where it belongs
and sends only sealed memfds, so the client's other paths (a daemon that
speaks only version 1, descriptors that do not match the message, a batch
cut short, an unsealed descriptor) need a peer that misbehaves on purpose.
:class:`ScriptedDaemon` listens on a socket in a temporary directory and
runs one function per connection, in a thread; the helpers below build the
frames byte for byte, as PROTOCOL.md sections 3 to 6 lay them out.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import memseal
from memseal._wire import Decoder, Encoder

#: Request and response variant indices (PROTOCOL.md sections 6.1, 6.2).
HELLO, FETCH, FETCH_MANY = 0, 2, 8
WELCOME, ASSET, ERROR, GREETING, ASSETS = 0, 3, 8, 11, 12

#: Serves one accepted connection.
Serve = Callable[[socket.socket], None]


class ScriptedDaemon:
    """Accepts one connection per function in ``script``, in order, and
    runs it; the connection is closed when the function returns."""

    def __init__(self, script: Sequence[Serve]):
        self._dir = tempfile.TemporaryDirectory(prefix="memseal-scripted-")
        self.socket = Path(self._dir.name) / "scripted.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket))
        self._listener.listen(len(script))
        self._errors: List[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(list(script),), daemon=True)
        self._thread.start()

    def _run(self, script: List[Serve]) -> None:
        try:
            for serve in script:
                conn, _ = self._listener.accept()
                with conn:
                    conn.settimeout(10)
                    serve(conn)
        except BaseException as e:  # reported by finish()
            self._errors.append(e)

    def finish(self) -> None:
        """Wait for the script to end, closing every socket of the peer,
        and re-raise what went wrong in it."""
        self._thread.join(15)
        assert not self._thread.is_alive(), "the scripted peer did not finish"
        self._listener.close()
        self._dir.cleanup()
        if self._errors:
            raise self._errors[0]


# -- frames -------------------------------------------------------------------


def read_request(conn: socket.socket) -> Decoder:
    """A decoder over the next request frame's message (which this client
    never sends with a descriptor); EOFError if the client closed."""
    header = _exactly(conn, 4)
    (length,) = struct.unpack("<I", header)
    payload = _exactly(conn, length)
    assert payload[0] == 0, "a request of this client carried a descriptor"
    return Decoder(payload[1:])


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("the client closed the connection")
        data += chunk
    return data


def frame(message: bytes, fd_count: int) -> bytes:
    payload = bytes([fd_count]) + message
    return struct.pack("<I", len(payload)) + payload


def send(conn: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send ``data`` in one sendmsg, ``fds`` riding on its first byte, and
    close this side's ``fds``: the client's count of open descriptors then
    shows only what it kept."""
    try:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
        sent = conn.sendmsg([data], rights)
        if sent < len(data):
            conn.sendall(data[sent:])
    finally:
        for fd in fds:
            os.close(fd)


def wait_for_close(conn: socket.socket) -> None:
    """Read until the client closes its end."""
    while conn.recv(4096):
        pass


# -- messages -----------------------------------------------------------------


def hello_version(conn: socket.socket) -> int:
    """Read the client's Hello and return the version it asks for."""
    d = read_request(conn)
    assert d.u32() == HELLO, "the first request is not a Hello"
    version = d.u32()
    d.string()
    d.finish()
    return version


def _limits(e: Encoder) -> Encoder:
    return e.u32(65536).varint(1 << 30).varint(1 << 32).u32(255).u32(1)


def welcome() -> bytes:
    return _limits(Encoder().varint(WELCOME).u32(1).string("scripted 1")).bytes()


def greeting(max_fetch_many: int, version: int = 2) -> bytes:
    e = _limits(Encoder().varint(GREETING).u32(version).string("scripted 2"))
    return e.u32(max_fetch_many).u32(max_fetch_many).bytes()


def error(code: memseal.ErrorCode, message: str) -> bytes:
    return Encoder().varint(ERROR).u32(code).string(message).bytes()


def asset_info(e: Encoder, name: str, size: int) -> Encoder:
    return e.string(name).varint(1).varint(size).raw(bytes(32)).varint(0).u32(os.geteuid())


def asset(name: str, size: int) -> bytes:
    return asset_info(Encoder().varint(ASSET), name, size).bytes()


#: One item of an Assets answer: (name, size) found, or an error code.
Item = Union[Tuple[str, int], memseal.ErrorCode]


def assets(items: Sequence[Item]) -> bytes:
    e = Encoder().varint(ASSETS).varint(len(items))
    for item in items:
        if isinstance(item, tuple):
            asset_info(e.varint(0), *item)
        else:
            e.varint(1).u32(item).string("scripted refusal")
    return e.bytes()


def fetch_name(conn: socket.socket) -> Optional[str]:
    """Read a Fetch of the latest version and return its name; None when
    the client closed the connection instead."""
    try:
        d = read_request(conn)
    except EOFError:
        return None
    assert d.u32() == FETCH, "expected a Fetch"
    name = d.string()
    assert d.u32() == 0, "expected the latest version"
    d.finish()
    return name


def fetch_many_count(conn: socket.socket) -> int:
    """Read a FetchMany and return how many items it names."""
    d = read_request(conn)
    assert d.u32() == FETCH_MANY, "expected a FetchMany"
    count = d.u64()
    for _ in range(count):
        d.string()
        selector = d.u32()
        if selector == 1:
            d.u64()  # a version
        elif selector == 2:
            d.raw(32)  # a hash
        else:
            assert selector == 0, "unknown selector %d" % selector
    d.finish()
    return count


def memfd(data: bytes, sealed: bool = True) -> int:
    """A memfd holding ``data``: sealed as memseald seals, or not at all."""
    if sealed:
        return memseal.sealed_memfd(data)
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd
