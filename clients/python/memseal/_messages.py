"""The messages of PROTOCOL.md section 6: requests out, responses in.

Requests are built by the ``*_request`` functions, each returning the
encoded message (the frame's fd_count byte is the channel's business).
Responses are small classes, one per variant, listed in :data:`RESPONSES`
in wire order; :func:`decode_response` turns a frame's message into one of
them. A new request type is one more function here, one more response
class if it has its own reply, and one more method on the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, NamedTuple, Optional, Sequence, Type, Union

from ._errors import ProtocolError
from ._wire import Decoder, Encoder

#: The protocol version this package speaks (section 11).
PROTOCOL_VERSION = 1

#: A content hash: 32 raw bytes, or 64 hexadecimal digits.
HashLike = Union[bytes, str]


# ---------------------------------------------------------------------------
# Structures (section 6.4)
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
    """Publication time, milliseconds since the Unix epoch."""
    publisher_uid: int

    @property
    def hash_hex(self) -> str:
        """The hash as 64 lower-case hexadecimal digits, as the CLI prints it."""
        return self.hash.hex()

    @classmethod
    def decode(cls, d: Decoder) -> AssetInfo:
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
    def decode(cls, d: Decoder) -> Limits:
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
    def decode(cls, d: Decoder) -> ServerStatus:
        return cls(d.string(), d.u64(), d.u64(), d.u64(), d.u64(), d.u64(), d.u64())


class Event(NamedTuple):
    """One change seen by a watch: ``kind`` is "published" or "removed"."""

    kind: str
    info: AssetInfo


# ---------------------------------------------------------------------------
# Requests (section 6.1)
# ---------------------------------------------------------------------------

# Request variant indices.
_HELLO, _PUBLISH, _FETCH, _STAT, _LIST, _REMOVE, _STATUS, _WATCH = range(8)
# PublishSource and Selector variant indices (section 6.3).
_STREAM, _DESCRIPTOR = 0, 1
_LATEST, _VERSION, _HASH = 0, 1, 2


def parse_hash(value: HashLike) -> bytes:
    """A hash given as 32 bytes or 64 hexadecimal digits, as 32 bytes."""
    raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError("a hash is 32 bytes (64 hexadecimal digits), not %d bytes" % len(raw))
    return raw


def _selector(e: Encoder, version: Optional[int], hash: Optional[HashLike]) -> Encoder:
    if version is not None and hash is not None:
        raise ValueError("choose a version or a hash, not both")
    if version is not None:
        return e.varint(_VERSION).varint(version)
    if hash is not None:
        return e.varint(_HASH).raw(parse_hash(hash))
    return e.varint(_LATEST)


def hello_request(client_name: str) -> bytes:
    return Encoder().varint(_HELLO).u32(PROTOCOL_VERSION).string(client_name).bytes()


def publish_request(name: str, size: int, with_descriptor: bool) -> bytes:
    source = _DESCRIPTOR if with_descriptor else _STREAM
    return Encoder().varint(_PUBLISH).string(name).varint(size).varint(source).bytes()


def fetch_request(name: str, version: Optional[int], hash: Optional[HashLike]) -> bytes:
    return _selector(Encoder().varint(_FETCH).string(name), version, hash).bytes()


def stat_request(name: str, version: Optional[int], hash: Optional[HashLike]) -> bytes:
    return _selector(Encoder().varint(_STAT).string(name), version, hash).bytes()


def list_request(prefix: str, start_after: Optional[str]) -> bytes:
    e = Encoder().varint(_LIST).string(prefix)
    return e.option(start_after, e.string).bytes()


def remove_request(name: str, version: Optional[int]) -> bytes:
    e = Encoder().varint(_REMOVE).string(name)
    return e.option(version, e.varint).bytes()


def status_request() -> bytes:
    return Encoder().varint(_STATUS).bytes()


def watch_request(prefix: str) -> bytes:
    return Encoder().varint(_WATCH).string(prefix).bytes()


# ---------------------------------------------------------------------------
# Responses (section 6.2)
# ---------------------------------------------------------------------------


class Response:
    """A decoded response. ``FDS`` is how many descriptors its frame carries."""

    FDS: ClassVar[int] = 0
    KIND: ClassVar[str] = ""

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        """The variant's content; unit variants have none."""
        return cls()


@dataclass(frozen=True)
class Welcome(Response):
    KIND = "welcome"
    version: int
    server: str
    limits: Limits

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.u32(), d.string(), Limits.decode(d))


@dataclass(frozen=True)
class Continue(Response):
    KIND = "continue"


@dataclass(frozen=True)
class _WithInfo(Response):
    """A response whose content is one AssetInfo."""

    info: AssetInfo

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(AssetInfo.decode(d))


class Published(_WithInfo):
    KIND = "published"


class AssetReply(_WithInfo):
    FDS = 1
    KIND = "asset"


class Info(_WithInfo):
    KIND = "info"


@dataclass(frozen=True)
class Listing(Response):
    KIND = "listing"
    assets: List[AssetInfo]
    next: Optional[str]

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.vec(AssetInfo.decode), d.option(d.string))


@dataclass(frozen=True)
class Removed(Response):
    KIND = "removed"
    versions: int

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.u64())


@dataclass(frozen=True)
class StatusReply(Response):
    KIND = "status"
    status: ServerStatus

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(ServerStatus.decode(d))


@dataclass(frozen=True)
class ErrorReply(Response):
    KIND = "error"
    code: int
    message: str

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.u32(), d.string())


@dataclass(frozen=True)
class Watching(Response):
    KIND = "watching"


#: Event variants by index (section 6.3).
_EVENT_KINDS = ("published", "removed")


@dataclass(frozen=True)
class EventReply(Response):
    KIND = "event"
    event: Event

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        index = d.u32()
        if index >= len(_EVENT_KINDS):
            raise ProtocolError("unknown event variant %d (is the daemon newer than this client?)" % index)
        return cls(Event(_EVENT_KINDS[index], AssetInfo.decode(d)))


#: Response variants in wire order: the index of each is its variant index.
RESPONSES: Sequence[Type[Response]] = (
    Welcome,
    Continue,
    Published,
    AssetReply,
    Info,
    Listing,
    Removed,
    StatusReply,
    ErrorReply,
    Watching,
    EventReply,
)


def decode_response(message: bytes) -> Response:
    """Decode one response message; it must fill the frame exactly."""
    d = Decoder(message)
    index = d.u32()
    if index >= len(RESPONSES):
        raise ProtocolError("unknown response variant %d (is the daemon newer than this client?)" % index)
    response = RESPONSES[index].decode(d)
    d.finish()
    return response
