"""The error classes a caller catches, and the daemon's error codes.

Every exception the package raises on purpose derives from
:class:`MemsealError`, so one ``except memseal.MemsealError`` catches them
all. The subclasses say what went wrong and what happened to the
connection; :class:`ServerError` carries the daemon's :class:`ErrorCode`.
"""

from __future__ import annotations

import enum
from typing import Union

#: The environment variable that names the daemon's socket explicitly.
SOCKET_ENV = "MEMSEAL_SOCKET"


class ErrorCode(enum.IntEnum):
    """Why the daemon refused a request; the values are the wire values
    (PROTOCOL.md section 6.3)."""

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
    UNAVAILABLE = 10

    @property
    def closes_connection(self) -> bool:
        """True for the codes after which the daemon always closes the
        connection. ``BUSY`` closes it only where it refuses a new
        connection or ends a watch; as the answer to a request it leaves
        the connection open (PROTOCOL.md sections 6.3 and 7.10)."""
        return self in (ErrorCode.PROTOCOL_ERROR, ErrorCode.UNSUPPORTED_VERSION)


class MemsealError(Exception):
    """Base class of every error this package raises."""


class ConnectError(MemsealError):
    """The daemon's socket could not be reached.

    ``path`` is the socket tried and ``reason`` why that socket was chosen.
    """

    def __init__(self, path: str, reason: str, cause: OSError):
        self.path = path
        self.reason = reason
        self.cause = cause
        super().__init__(
            "cannot reach memseald at %s (%s): %s; is it running? Start it with `memseald`, "
            "or set %s to its socket" % (path, reason, cause.strerror or cause, SOCKET_ENV)
        )


class UntrustedSocket(MemsealError):
    """The per-user socket, or its directory, belongs to someone else or is
    writable by others: someone may have planted it. Nothing was sent."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(
            "refusing the socket %s: %s; someone else may have put it there. "
            "Remove it, or name a socket explicitly with %s" % (path, problem, SOCKET_ENV)
        )


class PeerRejected(MemsealError):
    """The process behind the socket runs as a user this client does not
    trust. Nothing was sent; the connection is closed."""

    def __init__(self, uid: int, expected: str, path: str = "", reason: str = ""):
        self.uid = uid
        self.expected = expected
        self.path = path
        self.reason = reason
        where = " at %s (%s)" % (path, reason) if path else ""
        super().__init__(
            "the socket%s is served by uid %d, but memseald must run as %s; "
            "refusing to trust it" % (where, uid, expected)
        )


class ServerError(MemsealError):
    """The daemon answered a request with an Error frame.

    ``code`` is an :class:`ErrorCode`, or a plain int for a code this
    package does not know yet (PROTOCOL.md section 11); ``message``
    explains it for people.
    """

    code: Union[ErrorCode, int]
    #: True when the daemon closed the connection after this error.
    closes_connection: bool

    def __init__(self, code: int, message: str, ending: bool = False):
        """``ending``: the error came where the daemon ends the connection
        with ``BUSY`` (instead of a welcome, or an event)."""
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = code
        self.message = message
        if isinstance(self.code, ErrorCode):
            self.closes_connection = self.code.closes_connection or (ending and self.code == ErrorCode.BUSY)
            label = self.code.name
        else:
            self.closes_connection = False
            label = "code %d" % code
        super().__init__("memseald refused the request: %s [%s]" % (message, label))


class ProtocolError(MemsealError):
    """The peer broke the protocol, or the connection ended mid-conversation.

    The connection is closed: its position in the stream is unknown.
    """


class VerifyError(MemsealError):
    """A descriptor failed the checks of PROTOCOL.md section 8.

    The descriptor has been closed and nothing is mapped.
    """


class ClosedError(MemsealError, ValueError):
    """An asset or a safetensors file was used after :meth:`close`."""


class LayoutError(MemsealError, ValueError):
    """A dtype, shape or offset does not fit the asset's bytes."""


class HeaderError(MemsealError, ValueError):
    """A safetensors header is malformed, or describes tensors that do not
    fit the asset. The header comes from whoever published the asset, so
    every field is checked before a view is made."""
