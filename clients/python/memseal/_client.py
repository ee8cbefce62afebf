"""The client: the conversations of PROTOCOL.md section 7.

A :class:`Client` is one connection, handshake done. Each public method
builds a request (``_messages``), sends it and reads the one reply it
expects through :meth:`Client._call`, which turns an ``Error`` reply into
:class:`ServerError` and anything unexpected into :class:`ProtocolError`
(closing the connection, whose position in the stream is then unknown).

The handshake asks for protocol version 2, whose ``Greeting`` announces
the session's limits; a daemon that speaks only version 1 refuses it, and
is greeted again on a new connection in version 1 (section 7.1). A batch
fetch uses ``FetchMany`` when the greeting announced room for more than one
item, and single fetches otherwise.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat as _stat
import struct
from typing import IO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from . import _messages as m
from ._channel import MAX_FDS_PER_FRAME, MAX_FRAME_LEN, Channel, Trace, close_all
from ._endpoint import Endpoint, resolve_socket
from ._errors import ConnectError, ErrorCode, MemsealError, ProtocolError, ServerError, VerifyError
from ._messages import AssetInfo, Event, FetchItem, HashLike, Limits, ServerStatus, SessionLimits
from ._sealed import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, Asset, check_sealed

#: Default timeout for each read and write on the socket, in seconds.
DEFAULT_TIMEOUT = 30.0

#: Bytes read from a reader per write in a streamed publish.
_UPLOAD_CHUNK = 1 << 20

R = TypeVar("R", bound=m.Response)

#: A path to a file, or an open binary file.
FileLike = Union[str, "os.PathLike[str]", IO[bytes]]

#: One result of :meth:`Client.fetch_many`: the asset, verified and mapped,
#: or the error that its item alone met.
FetchResult = Union[Asset, MemsealError]


def sealed_memfd(data: bytes, name: str = "memseal") -> int:
    """A new memfd holding ``data``, sealed with WRITE, GROW, SHRINK and
    SEAL: ready for :meth:`Client.publish_sealed`. The caller closes it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Client:
    """A connection to memseald, handshake done.

    ``path`` names the socket; without it the default rule applies
    (:func:`~memseal.resolve_socket`), and ``endpoint`` says which socket
    was chosen and why. The daemon must run as a uid the rule trusts, or as
    exactly ``expect_server_uid`` when given, before a byte is sent.
    ``timeout`` bounds each read and write, in seconds (None waits
    forever). ``trace``, if given, is called as ``trace(direction,
    frame_bytes, fd_count)`` for every frame sent or received.

    ``server`` and ``limits`` are what the daemon announced in the
    handshake, ``session`` the limits of this connection (None from a
    daemon that speaks only protocol version 1), ``protocol_version`` the
    version agreed on.

    A client holds one conversation at a time: share it between threads
    only behind a lock. Assets it fetched stay valid after it is closed.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        client_name: str = "memseal-python",
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        expect_server_uid: Optional[int] = None,
        trace: Optional[Trace] = None,
    ):
        self.endpoint: Endpoint = resolve_socket(path, expect_server_uid)
        self.path = self.endpoint.path
        self._timeout = timeout
        self._trace = trace
        self._watching = False
        self._connect()
        try:
            welcome = self._handshake(client_name)
        except BaseException:
            self.close()
            raise
        self.server: str = welcome.server
        self.limits: Limits = welcome.limits
        self._session = welcome.session if isinstance(welcome, m.Greeting) else None

    @property
    def session(self) -> Optional[SessionLimits]:
        """This connection's limits, as the daemon's version-2 greeting
        announced them; None from a daemon that speaks only version 1."""
        return self._session

    @property
    def protocol_version(self) -> int:
        """The protocol version of this connection: 2, or 1 with a daemon
        that speaks only that."""
        return m.PROTOCOL_VERSION if self._session is not None else m.PROTOCOL_VERSION_1

    def _connect(self) -> None:
        """Open a connection and check who serves it, before a byte is sent."""
        self._closed = True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            try:
                sock.connect(self.path)
            except OSError as e:
                raise ConnectError(self.path, self.endpoint.reason, e) from None
            # Before a byte goes out: a name is only as trustworthy as whoever answers.
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
            _, self.server_uid, _ = struct.unpack("iII", creds)
            self.endpoint.check_peer(self.server_uid)
        except BaseException:
            sock.close()
            raise
        self._channel = Channel(sock, self._trace)
        self._closed = False

    def _handshake(self, client_name: str) -> m.Welcome:
        """Greet in version 2; a daemon that refuses it has closed the
        connection, and is greeted again on a new one in version 1."""
        try:
            return self._greet(client_name, m.PROTOCOL_VERSION)
        except ServerError as refused:
            if refused.code != ErrorCode.UNSUPPORTED_VERSION:
                raise
        self._connect()
        return self._greet(client_name, m.PROTOCOL_VERSION_1)

    def _greet(self, client_name: str, version: int) -> m.Welcome:
        """One hello; the answer is a Welcome (version 1) or a Greeting
        (version 2), each saying its own version."""
        try:
            self._channel.write_frame(m.hello_request(client_name, version))
        except (BrokenPipeError, ConnectionResetError):
            # A busy daemon closes right after accept, leaving one frame to
            # read that says so (section 7.1).
            pass
        welcome, _ = self._receive(m.Welcome)
        says = m.PROTOCOL_VERSION if isinstance(welcome, m.Greeting) else m.PROTOCOL_VERSION_1
        if welcome.version != says:
            self.close()
            raise ProtocolError(
                "memseald answered with a '%s' of protocol version %d; this client speaks %d and %d"
                % (welcome.KIND, welcome.version, m.PROTOCOL_VERSION_1, m.PROTOCOL_VERSION)
            )
        return welcome

    def close(self) -> None:
        """Close the connection. Assets already fetched stay valid."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<memseal.Client %s (%s), %s>" % (self.path, self.endpoint.reason, self.server)

    # -- one request, one reply -----------------------------------------------

    def _receive(self, want: Type[R]) -> Tuple[R, List[int]]:
        """Read one reply of type ``want``, with the descriptors it carries."""
        try:
            response, fds = self._channel.receive()
        except ProtocolError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProtocolError("cannot read from memseald: %s" % (e.strerror or e)) from None
        if isinstance(response, want):
            return response, fds
        close_all(fds)
        if isinstance(response, m.ErrorReply):
            # In place of a welcome or an event, a refusal ends the connection.
            ending = want in (m.Welcome, m.EventReply)
            error = ServerError(response.code, response.message, ending)
            if error.closes_connection:
                self.close()
            raise error
        self.close()
        raise ProtocolError("expected a '%s' reply, got '%s'" % (want.KIND, response.KIND))

    def _send(self, send: Callable[[], None]) -> None:
        """Run one send; any failure leaves the stream position unknown, so close."""
        if self._closed:
            raise ProtocolError("the connection to memseald is closed; open a new Client")
        if self._watching:
            raise ProtocolError("this connection is watching; open another Client for requests")
        try:
            send()
        except ProtocolError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProtocolError("cannot send to memseald: %s" % (e.strerror or e)) from None

    def _exchange(self, request: bytes, want: Type[R], fd: Optional[int] = None) -> Tuple[R, List[int]]:
        """Send ``request`` (with ``fd`` riding on it) and read its reply,
        with the descriptors the reply carries."""
        self._send(lambda: self._channel.write_frame(request, fd))
        return self._receive(want)

    def _call(self, request: bytes, want: Type[R], fd: Optional[int] = None) -> R:
        """:meth:`_exchange` for replies that carry no descriptor."""
        return self._exchange(request, want, fd)[0]

    # -- publishing -----------------------------------------------------------

    def _publish_stream(self, name: str, size: int, upload: Callable[[], None]) -> AssetInfo:
        # Continue, or an Error that means: do not send the bytes.
        self._call(m.publish_request(name, size, with_descriptor=False), m.Continue)
        self._send(upload)
        return self._receive(m.Published)[0].info

    def publish_bytes(self, name: str, data: bytes) -> AssetInfo:
        """Publish ``data`` (any bytes-like object) as the next version of
        ``name``, streaming it over the socket."""
        view = memoryview(data).cast("B")
        return self._publish_stream(name, len(view), lambda: self._channel.write_raw(view))

    def publish_reader(self, name: str, reader: IO[bytes], size: int) -> AssetInfo:
        """Publish exactly ``size`` bytes read from ``reader``.

        If the reader ends early the publish is abandoned, and so is the
        connection, since the daemon still expects the rest."""

        def upload() -> None:
            left = size
            while left > 0:
                try:
                    chunk = reader.read(min(left, _UPLOAD_CHUNK))
                except OSError as e:
                    self.close()
                    raise MemsealError("cannot read the bytes to publish: %s; nothing was published" % e) from e
                if not chunk:
                    self.close()
                    raise MemsealError(
                        "the reader ended after %d of %d bytes; nothing was published" % (size - left, size)
                    )
                self._channel.write_raw(memoryview(chunk)[:left])
                left -= len(chunk)

        return self._publish_stream(name, size, upload)

    def publish_fd(self, name: str, fd: int) -> AssetInfo:
        """Publish the file behind ``fd``: a sealed memfd is adopted, any
        other regular file is copied by the daemon. ``fd`` stays open and
        is the caller's to close."""
        size = os.fstat(fd).st_size
        return self._call(m.publish_request(name, size, with_descriptor=True), m.Published, fd).info

    def publish_file(self, name: str, file: FileLike) -> AssetInfo:
        """Publish the whole of a regular file, given by path or as an open
        file: the daemon copies it kernel-side (or adopts a sealed memfd).
        The file must not change while the daemon copies it."""
        if isinstance(file, (str, os.PathLike)):
            with open(file, "rb") as opened:
                return self.publish_file(name, opened)
        fd = file.fileno()
        mode = os.fstat(fd).st_mode
        if not _stat.S_ISREG(mode):
            raise MemsealError("publish_file needs a regular file, not mode 0o%o; use publish_reader" % mode)
        return self.publish_fd(name, fd)

    def publish_sealed(self, name: str, memfd: int) -> AssetInfo:
        """Publish a memfd already sealed against writing, growing and
        shrinking (see :func:`sealed_memfd`); the daemon adopts it without
        copying a byte. The seals are checked here first, as a fetch checks
        them, so a memfd the daemon would refuse raises :class:`VerifyError`
        without a round trip. ``memfd`` stays the caller's to close."""
        check_sealed(memfd)
        return self.publish_fd(name, memfd)

    # -- reading --------------------------------------------------------------

    def fetch(self, name: str, version: Optional[int] = None, hash: Optional[HashLike] = None) -> Asset:
        """Fetch the latest version of ``name`` (or the given version or
        hash), check its descriptor and map it read-only."""
        return self._fetch(m.selection(name, version, hash))

    def _fetch(self, picked: bytes) -> Asset:
        reply, fds = self._exchange(m.fetch_request(picked), m.AssetReply)
        self._expect_answer([picked], [reply.info], fds)
        (fd,) = fds  # the channel checked that an Asset reply carries one
        return Asset(reply.info, fd)

    def _expect_answer(self, asked: Sequence[bytes], infos: Sequence[AssetInfo], fds: List[int]) -> None:
        """Raise :class:`ProtocolError` (closing ``fds`` and the connection)
        unless each of ``infos`` is the asset its selection in ``asked``
        named."""
        for picked, info in zip(asked, infos):
            why = m.mismatch(picked, info)
            if why is not None:
                close_all(fds)
                self.close()
                raise ProtocolError(why)

    def fetch_many(self, items: Iterable[FetchItem]) -> List[FetchResult]:
        """Fetch several assets, in as few round trips as the daemon allows.

        Each item is a name (its latest version) or a pair ``(name,
        version)`` or ``(name, hash)``, the hash as 32 bytes or 64
        hexadecimal digits. Returns one result per item, in order: the
        :class:`Asset`, checked and mapped exactly as :meth:`fetch` does,
        or the exception that this item alone met, not raised:
        :class:`ServerError` (``NOT_FOUND``, ``INVALID_NAME``, ...) or
        :class:`VerifyError`. Raise it, or look at it, as you like.

        Errors of the connection itself (:class:`ProtocolError`, a daemon
        that closes it) are raised, after every asset already fetched by
        this call has been closed; so are ``TypeError`` and ``ValueError``
        for an item that cannot be asked for, before anything is sent.

        The items go in ``FetchMany`` requests of at most
        ``session.max_fetch_many`` items each (split further only if a
        request would not fit one frame); with a daemon that announced no
        room for batches, or speaks only protocol version 1, each item is a
        fetch of its own.
        """
        wanted = [_batch_item(item) for item in items]
        per_request = self._batch_size()
        results: List[FetchResult] = []
        try:
            if per_request is None:
                results.extend(self._fetch_alone(picked) for picked in wanted)
            else:
                for batch in _batches(wanted, per_request):
                    results.extend(self._fetch_batch(batch))
        except BaseException:
            _close_assets(results)
            raise
        return results

    def _batch_size(self) -> Optional[int]:
        """Items per ``FetchMany`` request, if the daemon takes batches:
        its announced limit, never more than one frame's descriptors."""
        if self._session is None or self._session.max_fetch_many <= 1:
            return None
        return min(self._session.max_fetch_many, MAX_FDS_PER_FRAME)

    def _fetch_alone(self, picked: bytes) -> FetchResult:
        """One item of a batch as a fetch of its own; an error that leaves
        the connection usable is the item's result."""
        try:
            return self._fetch(picked)
        except ServerError as refused:
            if refused.closes_connection:
                raise
            return refused
        except VerifyError as failed:
            return failed

    def _fetch_batch(self, batch: Sequence[bytes]) -> List[FetchResult]:
        """One ``FetchMany`` round trip."""
        reply, fds = self._exchange(m.fetch_many_request(batch), m.Assets)
        if len(reply.items) != len(batch):
            close_all(fds)
            self.close()
            raise ProtocolError("memseald answered %d result(s) to a batch of %d" % (len(reply.items), len(batch)))
        answered = [(picked, result) for picked, result in zip(batch, reply.items) if isinstance(result, AssetInfo)]
        self._expect_answer([p for p, _ in answered], [info for _, info in answered], fds)
        return _open_each(reply.items, fds)

    def stat(self, name: str, version: Optional[int] = None, hash: Optional[HashLike] = None) -> AssetInfo:
        """What a fetch would return, without the descriptor."""
        picked = m.selection(name, version, hash)
        info = self._call(m.stat_request(picked), m.Info).info
        self._expect_answer([picked], [info], [])
        return info

    def list(self, prefix: str = "") -> List[AssetInfo]:
        """The latest version of every name starting with ``prefix``,
        following every page."""
        assets: List[AssetInfo] = []
        after: Optional[str] = None
        while True:
            page = self._call(m.list_request(prefix, after), m.Listing)
            assets.extend(page.assets)
            after = page.next
            if after is None:
                return assets

    # -- administration -------------------------------------------------------

    def remove(self, name: str, version: Optional[int] = None) -> int:
        """Remove one version of ``name``, or all of them; returns how many went."""
        return self._call(m.remove_request(name, version), m.Removed).versions

    def status(self) -> ServerStatus:
        """The daemon's counters."""
        return self._call(m.status_request(), m.StatusReply).status

    def watch(self, prefix: str = "") -> Iterator[Event]:
        """Turn this connection into a stream of changes to names under ``prefix``.

        Returns once the daemon has confirmed the watch, so every change
        made after that is seen. Iterating yields :class:`Event` tuples
        ``(kind, info)``, kind "published" or "removed", in the order the
        changes happened, waiting as long as it takes for the next one. The
        connection does nothing else afterwards: close the client to stop.
        A watcher that falls too far behind gets :class:`ServerError` with
        code ``BUSY``: watch again and re-read what matters.
        """
        self._call(m.watch_request(prefix), m.Watching)
        self._watching = True
        # Changes may be hours apart; from now on only the daemon's own
        # deadlines apply.
        self._channel.sock.settimeout(None)
        return self._events()

    def _events(self) -> Iterator[Event]:
        while True:
            yield self._receive(m.EventReply)[0].event


def _batch_item(item: FetchItem) -> bytes:
    """One item of :meth:`Client.fetch_many`, encoded; ValueError if no
    request could carry it (a name of tens of kilobytes)."""
    picked = m.item_selection(item)
    if m.FETCH_MANY_OVERHEAD + len(picked) > MAX_FRAME_LEN:
        raise ValueError("a fetch_many item of %d bytes does not fit a %d-byte frame" % (len(picked), MAX_FRAME_LEN))
    return picked


def _batches(items: Sequence[bytes], most: int) -> Iterator[Sequence[bytes]]:
    """``items`` cut into consecutive runs of at most ``most``, each run
    small enough for one ``FetchMany`` frame."""
    start, size = 0, 0
    for end, picked in enumerate(items):
        if end > start and (end - start == most or m.FETCH_MANY_OVERHEAD + size + len(picked) > MAX_FRAME_LEN):
            yield items[start:end]
            start, size = end, 0
        size += len(picked)
    if start < len(items):
        yield items[start:]


def _open_each(results: Sequence[Union[AssetInfo, m.ErrorReply]], fds: List[int]) -> List[FetchResult]:
    """The results of one batch answer: each asset checked and mapped as
    :meth:`Client.fetch` does, taking its descriptor in order, or the error
    of its item. Takes ownership of ``fds``: on any failure that escapes,
    the descriptors not yet taken and the assets already made are closed."""
    opened: List[FetchResult] = []
    taken = 0
    try:
        for result in results:
            if isinstance(result, m.ErrorReply):
                opened.append(ServerError(result.code, result.message))
                continue
            fd, taken = fds[taken], taken + 1
            try:
                opened.append(Asset(result, fd))  # closes fd if a check fails
            except VerifyError as failed:
                opened.append(failed)
    except BaseException:
        close_all(fds[taken:])
        _close_assets(opened)
        raise
    return opened


def _close_assets(results: Iterable[FetchResult]) -> None:
    for result in results:
        if isinstance(result, Asset):
            result.close()
