"""A memseal client for Python 3, built from PROTOCOL.md and the standard library.

memseald keeps immutable assets in sealed memfds and hands out read-only
descriptors to them over a Unix socket. This module speaks that protocol
(version 1) and returns the bytes of an asset as a read-only memory map, so
a Python program reads a shared copy of a 4 GiB model without copying it.

Layout of this file, in the order data flows through it:

- default socket path and the error classes a caller catches;
- ``_Encoder`` and ``_Decoder``: the bincode rules of PROTOCOL.md section 5;
- the message types (``AssetInfo``, ``Limits``, ``ServerStatus``) and the
  encoders and decoders of requests and responses (section 6);
- ``_Channel``: frames and descriptors on the socket (sections 3 and 4);
- ``map_sealed`` and ``Sealed``: checking a descriptor before mapping it
  (section 8);
- ``Client``: the conversations of section 7, watching for changes included.

Typical use::

    import memseal
    with memseal.Client() as client:
        client.publish_bytes("dicts/en", b"...")
        with client.fetch("dicts/en") as asset:
            print(asset.info.version, bytes(asset.view[:16]))
"""

import enum
import errno
import fcntl
import mmap
import os
import socket
import stat as _stat
import struct
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_LEN",
    "ErrorCode",
    "AssetInfo",
    "Limits",
    "ServerStatus",
    "MemsealError",
    "ConnectError",
    "PeerRejected",
    "ServerError",
    "ProtocolError",
    "VerifyError",
    "Sealed",
    "Asset",
    "Client",
    "default_socket_path",
    "map_sealed",
    "fd_variable",
]

#: The protocol version this module speaks (PROTOCOL.md section 11).
PROTOCOL_VERSION = 1

#: Largest frame length either side accepts, prefix excluded (section 3).
MAX_FRAME_LEN = 65536

#: Most descriptors one frame may carry in version 1.
MAX_FDS_PER_FRAME = 1

#: Room for this many descriptors in every receive, so that surplus ones
#: are seen and closed instead of silently dropped by the kernel.
_FD_ROOM = 8

#: The environment variable that overrides the default socket path.
SOCKET_ENV = "MEMSEAL_SOCKET"

#: The system service's socket, used by root.
SYSTEM_SOCKET = "/run/memseal/memseald.sock"

#: Default timeout for each read and write on the socket, in seconds.
DEFAULT_TIMEOUT = 30.0

# Seal bits, fixed by the kernel ABI (<linux/fcntl.h>). The fcntl module
# exports the first four since Python 3.8; all six are named here so that
# error messages can say which seals a descriptor has and lacks.
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)

#: The seals that make a file immutable: nobody can write, grow or shrink it.
IMMUTABLE_SEALS = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK

_SEAL_NAMES = [
    (F_SEAL_SEAL, "SEAL"),
    (F_SEAL_SHRINK, "SHRINK"),
    (F_SEAL_GROW, "GROW"),
    (F_SEAL_WRITE, "WRITE"),
    (F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"),
    (F_SEAL_EXEC, "EXEC"),
]


def default_socket_path() -> str:
    """Where memseald listens by default (PROTOCOL.md section 2.1)."""
    override = os.environ.get(SOCKET_ENV)
    if override:
        return override
    uid = os.geteuid()
    if uid == 0:
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "memseal", "memseald.sock")
    return "/tmp/memseal-%d/memseald.sock" % uid


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ErrorCode(enum.IntEnum):
    """Why the daemon refused a request; the values are the wire values."""

    NOT_FOUND = 0
    INVALID_NAME = 1
    TOO_LARGE = 2
    OVER_BUDGET = 3
    PERMISSION_DENIED = 4
    PROTOCOL_ERROR = 5
    BUSY = 6
    INTERNAL = 7
    UNSUPPORTED_VERSION = 8
    INVALID_SOURCE = 9


#: Codes after which the daemon closes the connection (section 6.3).
_CLOSING_CODES = {ErrorCode.PROTOCOL_ERROR, ErrorCode.BUSY, ErrorCode.UNSUPPORTED_VERSION}


class MemsealError(Exception):
    """Base class of every error this module raises."""


class ConnectError(MemsealError):
    """The daemon's socket could not be reached."""

    def __init__(self, path: str, cause: OSError):
        self.path = path
        self.cause = cause
        super().__init__(
            "cannot reach memseald at %s: %s; is it running? Start it with `memseald`, "
            "or set %s to its socket" % (path, cause.strerror or cause, SOCKET_ENV)
        )


class PeerRejected(MemsealError):
    """The process behind the socket runs as a user this client does not trust."""

    def __init__(self, uid: int, expected: str):
        self.uid = uid
        self.expected = expected
        super().__init__(
            "the socket is served by uid %d, but memseald must run as %s; "
            "refusing to trust it" % (uid, expected)
        )


class ServerError(MemsealError):
    """The daemon answered a request with an Error frame.

    ``code`` is an :class:`ErrorCode` (or a plain int for a code this module
    does not know yet); ``message`` explains it for people.
    """

    def __init__(self, code, message: str):
        try:
            code = ErrorCode(code)
        except ValueError:
            pass
        self.code = code
        self.message = message
        label = code.name if isinstance(code, ErrorCode) else "code %d" % code
        super().__init__("memseald refused the request: %s [%s]" % (message, label))


class ProtocolError(MemsealError):
    """The peer broke the protocol, or the connection ended mid-conversation.

    The connection is closed: its position in the stream is unknown.
    """


class VerifyError(MemsealError):
    """A received descriptor failed the checks of PROTOCOL.md section 8.

    The descriptor has been closed and nothing is mapped.
    """


def _seal_names(bits: int) -> str:
    names = [name for bit, name in _SEAL_NAMES if bits & bit]
    return "|".join(names) if names else "none"


# ---------------------------------------------------------------------------
# Encoding (PROTOCOL.md section 5)
# ---------------------------------------------------------------------------


class _Encoder:
    """Appends bincode-encoded values to a buffer."""

    def __init__(self):
        self.out = bytearray()

    def varint(self, value: int) -> "_Encoder":
        if value < 0 or value > 0xFFFFFFFFFFFFFFFF:
            raise ValueError("%d does not fit an unsigned 64-bit integer" % value)
        if value <= 250:
            self.out.append(value)
        elif value <= 0xFFFF:
            self.out += b"\xfb" + struct.pack("<H", value)
        elif value <= 0xFFFFFFFF:
            self.out += b"\xfc" + struct.pack("<I", value)
        else:
            self.out += b"\xfd" + struct.pack("<Q", value)
        return self

    def u32(self, value: int) -> "_Encoder":
        if value > 0xFFFFFFFF:
            raise ValueError("%d does not fit an unsigned 32-bit integer" % value)
        return self.varint(value)

    def u8(self, value: int) -> "_Encoder":
        self.out.append(value)
        return self

    def string(self, text: str) -> "_Encoder":
        data = text.encode("utf-8")
        self.varint(len(data))
        self.out += data
        return self

    def raw(self, data: bytes) -> "_Encoder":
        self.out += data
        return self

    def option(self, value, write: Callable) -> "_Encoder":
        if value is None:
            return self.u8(0)
        self.u8(1)
        write(value)
        return self


class _Decoder:
    """Reads bincode-encoded values from one frame's message bytes."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if n > len(self.data) - self.pos:
            raise ProtocolError(
                "malformed reply: needs %d more byte(s) than the frame holds"
                % (n - (len(self.data) - self.pos))
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def varint(self, bits: int = 64) -> int:
        first = self.u8()
        if first <= 250:
            return first
        forms = {0xFB: (2, "<H", 16), 0xFC: (4, "<I", 32), 0xFD: (8, "<Q", 64)}
        if first not in forms or forms[first][2] > bits:
            raise ProtocolError("malformed reply: invalid %d-bit integer tag 0x%02x" % (bits, first))
        size, fmt, _ = forms[first]
        return struct.unpack(fmt, self._take(size))[0]

    def u32(self) -> int:
        return self.varint(32)

    def u64(self) -> int:
        return self.varint(64)

    def string(self) -> str:
        length = self.u64()
        try:
            return bytes(self._take(length)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("malformed reply: a string is not UTF-8 (%s)" % e) from None

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def option(self, read: Callable):
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return read()
        raise ProtocolError("malformed reply: option tag %d" % tag)

    def finish(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise ProtocolError("malformed reply: %d unexpected byte(s) after the message" % extra)


# ---------------------------------------------------------------------------
# Messages (PROTOCOL.md section 6)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetInfo:
    """One version of one asset, as the daemon describes it."""

    name: str
    version: int
    size: int
    hash: bytes
    """BLAKE3 of the bytes, 32 bytes, computed by the daemon."""
    published_ms: int
    publisher_uid: int

    @property
    def hash_hex(self) -> str:
        """The hash as 64 lower-case hexadecimal digits, as the CLI prints it."""
        return self.hash.hex()

    @classmethod
    def _decode(cls, d: _Decoder) -> "AssetInfo":
        return cls(
            name=d.string(),
            version=d.u64(),
            size=d.u64(),
            hash=d.raw(32),
            published_ms=d.u64(),
            publisher_uid=d.u32(),
        )


@dataclass(frozen=True)
class Limits:
    """What the daemon announced in its handshake."""

    max_frame_len: int
    max_asset_size: int
    max_total_bytes: int
    max_name_len: int
    keep_versions: int

    @classmethod
    def _decode(cls, d: _Decoder) -> "Limits":
        return cls(d.u32(), d.u64(), d.u64(), d.u32(), d.u32())


@dataclass(frozen=True)
class ServerStatus:
    """The daemon's counters."""

    server: str
    uptime_ms: int
    names: int
    versions: int
    blobs: int
    bytes: int
    connections: int

    @classmethod
    def _decode(cls, d: _Decoder) -> "ServerStatus":
        return cls(d.string(), d.u64(), d.u64(), d.u64(), d.u64(), d.u64(), d.u64())


# Request variant indices (section 6.1).
_HELLO, _PUBLISH, _FETCH, _STAT, _LIST, _REMOVE, _STATUS, _WATCH = range(8)
# PublishSource and Selector variant indices (section 6.3).
_STREAM, _DESCRIPTOR = 0, 1
_LATEST, _VERSION, _HASH = 0, 1, 2


def _selector(e: _Encoder, version: Optional[int], hash: Optional[bytes]) -> None:
    if version is not None and hash is not None:
        raise ValueError("choose a version or a hash, not both")
    if version is not None:
        e.varint(_VERSION).varint(version)
    elif hash is not None:
        if isinstance(hash, str):
            hash = bytes.fromhex(hash)
        if len(hash) != 32:
            raise ValueError("a hash is 32 bytes (64 hexadecimal digits), not %d" % len(hash))
        e.varint(_HASH).raw(hash)
    else:
        e.varint(_LATEST)


# Response variants by index (section 6.2): kind, and how to read the content.
_RESPONSES = [
    ("welcome", lambda d: (d.u32(), d.string(), Limits._decode(d))),
    ("continue", lambda d: None),
    ("published", AssetInfo._decode),
    ("asset", AssetInfo._decode),
    ("info", AssetInfo._decode),
    ("listing", lambda d: (_read_vec(d, AssetInfo._decode), d.option(d.string))),
    ("removed", lambda d: d.u64()),
    ("status", ServerStatus._decode),
    ("error", lambda d: (d.u32(), d.string())),
    ("watching", lambda d: None),
    ("event", lambda d: _read_event(d)),
]

#: Event variants by index (section 6.3).
_EVENTS = ["published", "removed"]

#: Descriptors each response kind carries.
_RESPONSE_FDS = {"asset": 1}


def _read_vec(d: _Decoder, read: Callable) -> list:
    return [read(d) for _ in range(d.u64())]


def _read_event(d: _Decoder) -> Tuple[str, AssetInfo]:
    index = d.u32()
    if index >= len(_EVENTS):
        raise ProtocolError("unknown event variant %d (is the daemon newer than this client?)" % index)
    return _EVENTS[index], AssetInfo._decode(d)


def _decode_response(message: bytes) -> Tuple[str, object]:
    d = _Decoder(message)
    index = d.u32()
    if index >= len(_RESPONSES):
        raise ProtocolError("unknown response variant %d (is the daemon newer than this client?)" % index)
    kind, read = _RESPONSES[index]
    value = read(d)
    d.finish()
    return kind, value


# ---------------------------------------------------------------------------
# Frames and descriptors (PROTOCOL.md sections 3 and 4)
# ---------------------------------------------------------------------------


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Channel:
    """One socket, moving whole frames with their descriptors.

    Every receive goes through ``_recv``: recvmsg with a control buffer and
    MSG_CMSG_CLOEXEC, never for more bytes than the current frame owes.
    """

    def __init__(self, sock: socket.socket, trace: Optional[Callable] = None):
        self.sock = sock
        self.trace = trace

    def close(self) -> None:
        self.sock.close()

    def _recv(self, want: int) -> Tuple[bytes, List[int]]:
        """One recvmsg of at most ``want`` bytes, returning data and descriptors."""
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(
                want, socket.CMSG_SPACE(_FD_ROOM * 4), socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionResetError:
            # The daemon closed with our bytes unread (see section 7.1).
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
            _close_all(fds)
            raise ProtocolError("too many descriptors arrived at once (control message truncated)")
        if foreign:
            _close_all(fds)
            raise ProtocolError("an unexpected kind of ancillary message arrived")
        return data, fds

    def read_frame(self) -> Tuple[bytes, List[int]]:
        """Read one frame; return its payload (fd_count byte first) and descriptors."""
        header = b""
        fds: List[int] = []
        try:
            while len(header) < 4:
                data, got = self._recv(4 - len(header))
                if got and header:
                    _close_all(got)
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
                    _close_all(got)
                    raise ProtocolError("a descriptor arrived on a byte that does not start a frame")
                if not data:
                    raise ProtocolError("memseald closed the connection in the middle of a frame")
                payload += data
        except BaseException:
            _close_all(fds)
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

    def write_raw(self, data) -> None:
        """Send raw bytes outside any frame (a streamed upload)."""
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProtocolError("memseald stopped taking the upload") from None

    def receive(self) -> Tuple[str, object, Optional[int]]:
        """Read and decode one response; returns (kind, value, descriptor)."""
        payload, fds = self.read_frame()
        try:
            declared = payload[0]
            if declared > MAX_FDS_PER_FRAME or declared != len(fds):
                raise ProtocolError(
                    "frame declared %d descriptor(s) but %d arrived" % (declared, len(fds))
                )
            kind, value = _decode_response(payload[1:])
            expected = _RESPONSE_FDS.get(kind, 0)
            if expected != declared:
                raise ProtocolError(
                    "a '%s' reply carries %d descriptor(s) but the frame declared %d"
                    % (kind, expected, declared)
                )
        except BaseException:
            _close_all(fds)
            raise
        return kind, value, (fds[0] if fds else None)


# ---------------------------------------------------------------------------
# Checking and mapping a descriptor (PROTOCOL.md section 8)
# ---------------------------------------------------------------------------


class Sealed:
    """A verified, sealed descriptor and a private read-only mapping of it.

    ``view`` is a read-only memoryview of the bytes; ``fd`` stays open until
    :meth:`close` (use it to hand the asset to a child, section 13). Read
    through the view or with ``os.pread``, never with ``os.read``: the file
    offset is shared with every other holder.
    """

    def __init__(self, fd: int, size: int, mapping: Optional[mmap.mmap]):
        self.fd = fd
        self.size = size
        self._mapping = mapping
        self.view = memoryview(mapping if mapping is not None else b"")

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Unmap and close. Memoryviews sliced from ``view`` must be released first."""
        if self.fd < 0:
            return
        self.view.release()
        if self._mapping is not None:
            self._mapping.close()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def map_sealed(fd: int, expected_size: Optional[int] = None) -> Sealed:
    """Check ``fd`` as PROTOCOL.md section 8 requires and map it read-only.

    Takes ownership of ``fd``: on any failure it is closed and
    :class:`VerifyError` says why; on success it belongs to the returned
    :class:`Sealed`.
    """
    return Sealed(fd, *_verify_and_map(fd, expected_size))


def _verify_and_map(fd: int, expected_size: Optional[int]) -> Tuple[int, Optional[mmap.mmap]]:
    """The checks of section 8, in order; returns the size and the mapping.

    Closes ``fd`` on any failure.
    """
    try:
        info = os.fstat(fd)
        if not _stat.S_ISREG(info.st_mode):
            raise VerifyError("the descriptor is not a regular file (mode 0o%o)" % info.st_mode)
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise VerifyError("the descriptor is not a sealable file (F_GET_SEALS: EINVAL)") from None
            raise VerifyError("cannot read the seals of the descriptor: %s" % e) from None
        missing = IMMUTABLE_SEALS & ~seals
        if missing:
            raise VerifyError(
                "the descriptor is not sealed against changes: it has seals %s and lacks %s"
                % (_seal_names(seals), _seal_names(missing))
            )
        # fstat again, after the seal check: only now is the size frozen.
        size = os.fstat(fd).st_size
        if expected_size is not None and size != expected_size:
            raise VerifyError(
                "the descriptor holds %d bytes but the daemon announced %d" % (size, expected_size)
            )
        mapping = None
        if size > 0:
            try:
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            except (OSError, ValueError) as e:
                raise VerifyError("cannot map the descriptor: %s" % e) from None
        return size, mapping
    except BaseException:
        os.close(fd)
        raise


class Asset(Sealed):
    """A fetched asset: its :class:`AssetInfo` and its verified bytes."""

    def __init__(self, info: AssetInfo, fd: int):
        """Verify ``fd`` against ``info`` and map it; takes ownership of ``fd``."""
        self.info = info
        super().__init__(fd, *_verify_and_map(fd, info.size))

    def __repr__(self) -> str:
        return "Asset(name=%r, version=%d, size=%d)" % (self.info.name, self.info.version, self.size)


def fd_variable(name: str) -> str:
    """The environment variable that carries ``name``'s descriptor to a child (section 13)."""
    return "MEMSEAL_FD_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper())


# ---------------------------------------------------------------------------
# The client (PROTOCOL.md section 7)
# ---------------------------------------------------------------------------


class Client:
    """A connection to memseald, handshake done.

    ``path`` defaults to :func:`default_socket_path`. The daemon must run as
    root or as the caller's own user, or as exactly ``expect_server_uid``
    when given. ``timeout`` bounds each read and write, in seconds (None
    waits forever). ``trace``, if given, is called as
    ``trace(direction, frame_bytes, fd_count)`` for every frame sent or
    received, to compare a conversation with PROTOCOL.md.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        client_name: str = "memseal-python",
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        expect_server_uid: Optional[int] = None,
        trace: Optional[Callable] = None,
    ):
        self.path = path or default_socket_path()
        self._closed = False
        self._watching = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError as e:
                raise ConnectError(self.path, e) from None
            self._check_peer(sock, expect_server_uid)
        except BaseException:
            sock.close()
            raise
        self._channel = _Channel(sock, trace)
        try:
            self.server, self.limits = self._handshake(client_name)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check_peer(sock: socket.socket, expected: Optional[int]) -> None:
        # Before a byte goes out: a name is only as trustworthy as whoever answers.
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        _, uid, _ = struct.unpack("iII", creds)
        me = os.geteuid()
        if expected is not None:
            if uid != expected:
                raise PeerRejected(uid, "uid %d" % expected)
        elif uid not in (0, me):
            raise PeerRejected(uid, "root" if me == 0 else "root or uid %d" % me)

    def _handshake(self, client_name: str) -> Tuple[str, Limits]:
        hello = _Encoder().varint(_HELLO).u32(PROTOCOL_VERSION).string(client_name).out
        try:
            self._channel.write_frame(bytes(hello))
        except (BrokenPipeError, ConnectionResetError):
            # A busy daemon closes right after accept, leaving one frame to
            # read that says so (section 7.1).
            pass
        kind, value = self._expect(("welcome",))
        version, server, limits = value
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                "memseald answered with protocol version %d; this client speaks %d"
                % (version, PROTOCOL_VERSION)
            )
        return server, limits

    def close(self) -> None:
        """Close the connection. Assets already fetched stay valid."""
        self._closed = True
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _expect(self, kinds, fd_ok: bool = False):
        """Read one reply; raise ServerError for Error, ProtocolError for a wrong kind."""
        try:
            kind, value, fd = self._channel.receive()
        except ProtocolError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProtocolError("cannot read from memseald: %s" % (e.strerror or e)) from None
        if kind == "error":
            code, message = value
            error = ServerError(code, message)
            if error.code in _CLOSING_CODES:
                self.close()
            raise error
        if kind not in kinds:
            if fd is not None:
                os.close(fd)
            self.close()
            raise ProtocolError("expected a '%s' reply, got '%s'" % ("' or '".join(kinds), kind))
        if fd_ok:
            return kind, value, fd
        return kind, value

    def _send(self, send: Callable, *args) -> None:
        """Run one send; any failure leaves the stream position unknown, so close."""
        if self._closed:
            raise ProtocolError("the connection to memseald is closed; open a new Client")
        if self._watching:
            raise ProtocolError("this connection is watching; open another Client for requests")
        try:
            send(*args)
        except ProtocolError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProtocolError("cannot send to memseald: %s" % (e.strerror or e)) from None

    def _request(self, message: _Encoder, fd: Optional[int] = None) -> None:
        self._send(self._channel.write_frame, bytes(message.out), fd)

    # -- publishing -----------------------------------------------------------

    def publish_bytes(self, name: str, data) -> AssetInfo:
        """Publish ``data`` (any bytes-like object) as the next version of ``name``."""
        view = memoryview(data).cast("B")
        request = _Encoder().varint(_PUBLISH).string(name).varint(len(view)).varint(_STREAM)
        self._request(request)
        # Continue, or an Error that means: do not send the bytes.
        self._expect(("continue",))
        self._send(self._channel.write_raw, view)
        return self._expect(("published",))[1]

    def publish_fd(self, name: str, fd: int) -> AssetInfo:
        """Publish the file behind ``fd``: a sealed memfd is adopted, anything
        else regular is copied by the daemon. ``fd`` stays open and is the
        caller's to close."""
        size = os.fstat(fd).st_size
        request = _Encoder().varint(_PUBLISH).string(name).varint(size).varint(_DESCRIPTOR)
        self._request(request, fd)
        return self._expect(("published",))[1]

    # -- reading --------------------------------------------------------------

    def fetch(self, name: str, version: Optional[int] = None, hash=None) -> Asset:
        """Fetch the latest version of ``name`` (or the given version or hash),
        check its descriptor and map it read-only."""
        request = _Encoder().varint(_FETCH).string(name)
        _selector(request, version, hash)
        self._request(request)
        _, info, fd = self._expect(("asset",), fd_ok=True)
        return Asset(info, fd)

    def stat(self, name: str, version: Optional[int] = None, hash=None) -> AssetInfo:
        """What a fetch would return, without the descriptor."""
        request = _Encoder().varint(_STAT).string(name)
        _selector(request, version, hash)
        self._request(request)
        return self._expect(("info",))[1]

    def list(self, prefix: str = "") -> List[AssetInfo]:
        """The latest version of every name starting with ``prefix``, following every page."""
        assets: List[AssetInfo] = []
        after: Optional[str] = None
        while True:
            request = _Encoder().varint(_LIST).string(prefix)
            request.option(after, request.string)
            self._request(request)
            page, after = self._expect(("listing",))[1]
            assets.extend(page)
            if after is None:
                return assets

    # -- administration -------------------------------------------------------

    def remove(self, name: str, version: Optional[int] = None) -> int:
        """Remove one version of ``name``, or all of them; returns how many went."""
        request = _Encoder().varint(_REMOVE).string(name)
        request.option(version, request.varint)
        self._request(request)
        return self._expect(("removed",))[1]

    def status(self) -> ServerStatus:
        """The daemon's counters."""
        self._request(_Encoder().varint(_STATUS))
        return self._expect(("status",))[1]

    def watch(self, prefix: str = "") -> Iterator[Tuple[str, AssetInfo]]:
        """Turn this connection into a stream of changes to names under ``prefix``.

        Returns once the daemon has confirmed the watch, so every change
        made after that is seen. Iterating yields ``("published", info)``
        and ``("removed", info)`` in the order the changes happened, waiting
        as long as it takes for the next one. The connection does nothing
        else afterwards: close the client to stop. A watcher that falls too
        far behind gets ``ServerError`` with code ``BUSY``: watch again and
        re-read what matters.
        """
        request = _Encoder().varint(_WATCH).string(prefix)
        self._request(request)
        self._expect(("watching",))
        self._watching = True
        # Changes may be hours apart; from now on only the daemon's own
        # deadlines apply.
        self._channel.sock.settimeout(None)
        return self._events()

    def _events(self) -> Iterator[Tuple[str, AssetInfo]]:
        while True:
            yield self._expect(("event",))[1]
