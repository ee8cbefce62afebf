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
from typing import ClassVar, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

from ._errors import ProtocolError
from ._wire import Decoder, Encoder

#: The newest protocol version this package speaks, the one it asks for
#: first (section 11).
PROTOCOL_VERSION = 2

#: The version it falls back to with a daemon that refuses version 2.
PROTOCOL_VERSION_1 = 1

#: A content hash: 32 raw bytes, or 64 hexadecimal digits.
HashLike = Union[bytes, str]

#: What picks the version of a name in :meth:`Client.fetch_many`: None for
#: the latest, an int for that version number, a hash for that content.
SelectorLike = Union[None, int, HashLike]

#: One item of :meth:`Client.fetch_many`: a name (its latest version), or a
#: name and a :data:`SelectorLike`.
FetchItem = Union[str, Tuple[str, SelectorLike]]


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
class SessionLimits:
    """What one connection may do at most, announced in a version-2
    greeting (section 6.4)."""

    max_unread_descriptors: int
    """Descriptors the connection may leave unread before the daemon holds
    back replies that carry more (section 9)."""
    max_fetch_many: int
    """Items one batch fetch may name; never more than
    ``max_unread_descriptors``."""

    @classmethod
    def decode(cls, d: Decoder) -> SessionLimits:
        return cls(d.u32(), d.u32())


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

# Request variant indices (those a resolver sends are not used here).
_HELLO, _PUBLISH, _FETCH, _STAT, _LIST, _REMOVE, _STATUS, _WATCH, _FETCH_MANY = range(9)
# PublishSource and Selector variant indices (section 6.3).
_STREAM, _DESCRIPTOR = 0, 1
_LATEST, _VERSION, _HASH = 0, 1, 2


def parse_hash(value: HashLike) -> bytes:
    """A hash given as 32 bytes or 64 hexadecimal digits, as 32 bytes."""
    raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError("a hash is 32 bytes (64 hexadecimal digits), not %d bytes" % len(raw))
    return raw


def selection(name: str, version: Optional[int] = None, hash: Optional[HashLike] = None) -> bytes:
    """``name`` and the selector that ``version`` or ``hash`` (or neither,
    for the latest) make: the content of ``Fetch`` and ``Stat``, and one
    ``FetchItem`` of ``FetchMany``. Raises ValueError for both at once, or
    for a version or hash that cannot be encoded."""
    e = Encoder().string(name)
    if version is not None and hash is not None:
        raise ValueError("choose a version or a hash, not both")
    if version is not None:
        e.varint(_VERSION).varint(version)
    elif hash is not None:
        e.varint(_HASH).raw(parse_hash(hash))
    else:
        e.varint(_LATEST)
    return e.bytes()


def mismatch(picked: bytes, info: AssetInfo) -> Optional[str]:
    """Why ``info`` does not answer the :func:`selection` ``picked`` (the
    name, and the version or hash it named), or None if it does. A daemon
    that answers with another asset breaks the protocol, however well
    sealed that asset is."""
    d = Decoder(picked)
    name = d.string()
    kind = d.varint(32)
    if kind == _VERSION:
        wanted = d.u64()
        picked_ok, said = info.version == wanted, "version %d" % wanted
    elif kind == _HASH:
        wanted_hash = d.raw(32)
        picked_ok, said = info.hash == wanted_hash, "hash %s" % wanted_hash.hex()
    else:
        picked_ok, said = True, "latest"
    if info.name == name and picked_ok:
        return None
    return "asked for %r (%s), the daemon answered with %r version %d" % (name, said, info.name, info.version)


def item_selection(item: FetchItem) -> bytes:
    """The :func:`selection` of one :data:`FetchItem`."""
    if isinstance(item, str):
        return selection(item)
    if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str):
        raise TypeError("a fetch_many item is a name or a (name, version or hash) pair, not %r" % (item,))
    name, selector = item
    if selector is None:
        return selection(name)
    if isinstance(selector, bool) or not isinstance(selector, (int, bytes, bytearray, memoryview, str)):
        raise TypeError("select %r by a version number or a hash, not %r" % (name, selector))
    if isinstance(selector, int):
        return selection(name, version=selector)
    return selection(name, hash=selector)


def hello_request(client_name: str, version: int) -> bytes:
    return Encoder().varint(_HELLO).u32(version).string(client_name).bytes()


def publish_request(name: str, size: int, with_descriptor: bool) -> bytes:
    source = _DESCRIPTOR if with_descriptor else _STREAM
    return Encoder().varint(_PUBLISH).string(name).varint(size).varint(source).bytes()


def fetch_request(picked: bytes) -> bytes:
    """A fetch of the :func:`selection` ``picked``."""
    return Encoder().varint(_FETCH).raw(picked).bytes()


def stat_request(picked: bytes) -> bytes:
    """A stat of the :func:`selection` ``picked``."""
    return Encoder().varint(_STAT).raw(picked).bytes()


def fetch_many_request(items: Sequence[bytes]) -> bytes:
    """A batch fetch of these :func:`selection` items, in order."""
    e = Encoder().varint(_FETCH_MANY).varint(len(items))
    for picked in items:
        e.raw(picked)
    return e.bytes()


#: The most bytes a ``FetchMany`` frame adds to its items: the fd_count
#: byte, the variant index and the item count (a varint of up to 3 bytes
#: for any count a frame can carry).
FETCH_MANY_OVERHEAD = 5


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
    """A decoded response. ``FDS`` is how many descriptors its frame
    carries, for the kinds where that is fixed; :meth:`fd_count` says it
    for this one."""

    FDS: ClassVar[int] = 0
    KIND: ClassVar[str] = ""

    def fd_count(self) -> int:
        """How many descriptors the frame of this response must carry."""
        return self.FDS

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
class Greeting(Welcome):
    """The answer to a version-2 hello: a :class:`Welcome` and the
    session's limits."""

    KIND = "greeting"
    session: SessionLimits

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.u32(), d.string(), Limits.decode(d), SessionLimits.decode(d))


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
    def decode(cls, d: Decoder) -> ErrorReply:
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


#: FetchResult variant indices (section 6.3).
_FOUND, _FAILED = 0, 1


def _fetch_result(d: Decoder) -> Union[AssetInfo, ErrorReply]:
    index = d.u32()
    if index == _FOUND:
        return AssetInfo.decode(d)
    if index == _FAILED:
        return ErrorReply.decode(d)
    raise ProtocolError("unknown fetch result variant %d (is the daemon newer than this client?)" % index)


@dataclass(frozen=True)
class Assets(Response):
    """The answer to a batch fetch: one result per item, in the order
    asked; a descriptor rides on the frame for each :class:`AssetInfo`."""

    KIND = "assets"
    items: List[Union[AssetInfo, ErrorReply]]

    def fd_count(self) -> int:
        return sum(isinstance(item, AssetInfo) for item in self.items)

    @classmethod
    def decode(cls, d: Decoder) -> Response:
        return cls(d.vec(_fetch_result))


#: Response variants in wire order: the index of each is its variant index.
#: The two that only a resolver receives (Resolving, Wanted) are left out:
#: this client never asks to resolve, so either one is as unexpected as an
#: unknown variant.
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
    Greeting,
    Assets,
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
